//! Memory of tunnels against the real binary (`warden run`), blind and intercepted, each kind
//! on a warden of its own so that each has its own baseline (RSS after a warm-up):
//! - **Per idle tunnel**: RSS growth over 5,000 idle tunnels, against 16 KiB for blind tunnels
//!   (CONNECT to an echo origin, a few bytes each way, then idle) and 64 KiB for intercepted
//!   ones (CONNECT, TLS handshake with warden's leaf, idle). Judged half a second after the
//!   last one opened; shown again after 15 s more, once the allocator has returned what the
//!   handshakes freed.
//! - **After close**: more are opened (blind to 9,000, intercepted to 10,000; a blind tunnel
//!   takes two of warden's descriptors and the limit here is 20,000), then all close. Once
//!   warden's descriptors are back to the baseline's, RSS is sampled for 60 s; target: RSS 60 s
//!   after the last tunnel closed within 1.5× the baseline.
//!
//! `WARDEN_COMPARE=<path to another warden binary>` runs the same for that binary, then a
//! keep-alive load through intercepted tunnels (1 KiB and 1 MiB responses from a local HTTPS
//! origin) in five back-to-back pairs of runs, and reports warden's CPU per request and the
//! request rate as the median ratio within a pair.
//!
//! Run with `cargo bench --bench tunnels`. Loopback only; every count and wait is bounded.

#[path = "../tests/integration/common.rs"]
mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Tunnels over which RSS per idle tunnel is measured.
const MEASURED: usize = 5_000;
const BLIND_HELD: usize = 9_000;
const INTERCEPTED_HELD: usize = 10_000;
const BLIND_TARGET_KIB: f64 = 16.0;
const INTERCEPTED_TARGET_KIB: f64 = 64.0;
/// How long after the last close RSS is judged, and the bound on it against the baseline.
const AFTER_CLOSE: Duration = Duration::from_secs(60);
const AFTER_CLOSE_TARGET: f64 = 1.5;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How long idle tunnels are left before they are measured again.
const SETTLE: Duration = Duration::from_secs(15);
/// Handshakes or CONNECTs in flight at once while opening tunnels.
const OPENING: usize = 64;

/// A `warden run` child on a free loopback port, killed on drop.
struct Warden {
    child: Child,
    addr: SocketAddr,
    ca: String,
    _dir: tempfile::TempDir,
}

impl Warden {
    /// Starts `bin` with `body` (YAML: the rest of `tls:`, then any other sections; `{dir}` is
    /// replaced by its folder) and waits until it listens. Logging as in conf/bench.yaml.
    async fn start(bin: &Path, body: &str) -> Warden {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).expect("origin CA");
        let cfg = dir.path().join("warden.yaml");
        let yaml = format!(
            "version: 1\nproxy:\n  listen: 127.0.0.1:{port}\ntls:\n  ca_cert: ca.crt\n  ca_key: ca.key\n{}log:\n  level: warn\n  body_capture_bytes: 0\nlimits:\n  idle_timeout: 600s\n",
            body.replace("{dir}", dir.path().to_str().expect("utf-8 temp path"))
        );
        std::fs::write(&cfg, yaml).expect("config");
        let child = Command::new(bin)
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("warden starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "warden did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("warden's CA");
        Warden {
            child,
            addr,
            ca,
            _dir: dir,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }

    /// User plus system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces;
        // utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// An origin that echoes what it reads until EOF, then closes.
async fn echo_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(proxy: SocketAddr, authority: &str) -> Option<TcpStream> {
    let mut tcp = TcpStream::connect(proxy).await.ok()?;
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let head = read_head(&mut tcp).await;
    head.starts_with("HTTP/1.1 200").then_some(tcp)
}

/// A blind tunnel to the echo origin that has carried a few bytes each way.
async fn open_blind(proxy: SocketAddr, authority: String) -> Option<Tunnel> {
    let mut tcp = connect(proxy, &authority).await?;
    tcp.write_all(b"ping").await.ok()?;
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await.ok()?;
    (&back == b"ping").then_some(Tunnel::Blind(tcp))
}

async fn open_intercepted(proxy: SocketAddr, authority: String, ca: String) -> Option<Tunnel> {
    let tcp = connect(proxy, &authority).await?;
    let host = authority.split(':').next().unwrap_or_default().to_string();
    Some(Tunnel::Tls(Box::new(tls_connect(tcp, &host, &ca).await)))
}

/// An open tunnel, held to keep it open.
enum Tunnel {
    Blind(#[allow(dead_code)] TcpStream),
    Tls(Box<tokio_openssl::SslStream<TcpStream>>),
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Blind,
    Intercepted,
}

/// Opens `n` tunnels, [`OPENING`] at a time; returns those that succeeded and the number that
/// failed.
async fn open_many(w: &Warden, kind: Kind, target: &str, n: usize) -> (Vec<Tunnel>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < OPENING {
            let (proxy, target, ca) = (w.addr, target.to_string(), w.ca.clone());
            set.spawn(tokio::time::timeout(WAIT, async move {
                match kind {
                    Kind::Blind => open_blind(proxy, target).await,
                    Kind::Intercepted => open_intercepted(proxy, target, ca).await,
                }
            }));
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(Some(t)))) => held.push(t),
            Some(_) => failed += 1,
            None => break,
        }
    }
    (held, failed)
}

/// What one kind of tunnel cost on one binary.
struct Memory {
    per_tunnel_kib: f64,
    baseline_kib: u64,
    after_close_kib: u64,
}

/// Measures RSS per idle tunnel and RSS after close for `kind` on `bin`.
async fn memory(bin: &Path, label: &str, kind: Kind) -> Memory {
    let (name, body, target, held_total, target_kib) = match kind {
        Kind::Blind => {
            let origin = echo_origin().await;
            (
                "blind",
                "  intercept: none\nnetwork:\n  allow_cidrs: [127.0.0.0/8]\n  resolve:\n    blind.test: 127.0.0.1\n".to_string(),
                format!("blind.test:{}", origin.port()),
                BLIND_HELD,
                BLIND_TARGET_KIB,
            )
        }
        Kind::Intercepted => (
            "intercepted",
            "  intercept: all\n".to_string(),
            "idle.test:443".to_string(),
            INTERCEPTED_HELD,
            INTERCEPTED_TARGET_KIB,
        ),
    };
    let w = Warden::start(bin, &body).await;
    // Warm up: leaves minted and cached, buffers and pools exist.
    let (warm, _) = open_many(&w, kind, &target, OPENING).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = w.rss_kib();
    let baseline_fds = w.fds();
    let (mut held, mut failed) = open_many(&w, kind, &target, MEASURED).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = w.rss_kib();
    let per_tunnel = loaded.saturating_sub(baseline) as f64 / held.len().max(1) as f64;
    println!(
        "[{label}] {MEASURED} idle {name} tunnels: RSS {:.1} -> {:.1} MiB, {per_tunnel:.1} KiB per tunnel ({failed} failed); target <= {target_kib} KiB: {}",
        mib(baseline),
        mib(loaded),
        verdict(per_tunnel <= target_kib)
    );
    // Judged above as soon as they are open, as before; what they hold once the pages freed
    // by their handshakes have gone back (jemalloc's dirty decay is 10 s) is shown too.
    tokio::time::sleep(SETTLE).await;
    let settled = w.rss_kib();
    println!(
        "[{label}] the same, idle for {} s more: RSS {:.1} MiB, {:.1} KiB per tunnel",
        SETTLE.as_secs(),
        mib(settled),
        settled.saturating_sub(baseline) as f64 / held.len().max(1) as f64
    );
    let (more, failed_more) = open_many(&w, kind, &target, held_total - MEASURED).await;
    held.extend(more);
    failed += failed_more;
    println!(
        "[{label}] {held_total} {name} tunnels held at once: {} open, {failed} failed, RSS {:.1} MiB",
        held.len(),
        mib(w.rss_kib())
    );
    drop(held);
    // The tunnels have closed when warden holds no more descriptors than at the baseline.
    let deadline = Instant::now() + WAIT;
    while w.fds() > baseline_fds && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_at = Instant::now();
    let mut samples = vec![format!("0 s {:.1}", mib(w.rss_kib()))];
    let mut after_close = 0;
    let mut next = SAMPLE_EVERY;
    while next <= AFTER_CLOSE {
        tokio::time::sleep_until((closed_at + next).into()).await;
        after_close = w.rss_kib();
        samples.push(format!("{} s {:.1}", next.as_secs(), mib(after_close)));
        next += SAMPLE_EVERY;
    }
    let fds = w.fds();
    let ratio = after_close as f64 / baseline.max(1) as f64;
    println!(
        "[{label}] after all {name} tunnels closed ({fds} descriptors left, {baseline_fds} at the baseline), RSS MiB: {}",
        samples.join(", ")
    );
    println!(
        "[{label}] {name}: RSS {} s after the last close {:.1} MiB = {ratio:.2}x the {:.1} MiB baseline; target <= {AFTER_CLOSE_TARGET}x: {}",
        AFTER_CLOSE.as_secs(),
        mib(after_close),
        mib(baseline),
        verdict(ratio <= AFTER_CLOSE_TARGET)
    );
    Memory {
        per_tunnel_kib: per_tunnel,
        baseline_kib: baseline,
        after_close_kib: after_close,
    }
}

/// Requests and time of one keep-alive run.
struct Load {
    requests: u64,
    failed: u64,
    seconds: f64,
    cpu_seconds: f64,
}

const LOAD_CONNECTIONS: usize = 8;
/// (response bytes, requests per connection) for each load.
const LOADS: [(usize, u64); 2] = [(1024, 1_500), (1024 * 1024, 25)];
const LOAD_ROUNDS: usize = 5;
/// Bound on one load run.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

/// Requests `/bytes/{size}` `n` times on one intercepted keep-alive tunnel.
async fn keep_alive(proxy: SocketAddr, ca: String, port: u16, size: usize, n: u64) -> (u64, u64) {
    let Some(Tunnel::Tls(tls)) = open_intercepted(proxy, format!("origin.test:{port}"), ca).await
    else {
        return (0, n);
    };
    let mut s = BufReader::new(tls);
    let request = format!("GET /bytes/{size} HTTP/1.1\r\nHost: origin.test:{port}\r\n\r\n");
    let mut body = vec![0u8; size];
    let (mut ok, mut failed) = (0, 0);
    let deadline = Instant::now() + LOAD_LIMIT;
    for _ in 0..n {
        if Instant::now() > deadline || s.write_all(request.as_bytes()).await.is_err() {
            failed += 1;
            continue;
        }
        let (mut status, mut len) = (String::new(), None);
        if s.read_line(&mut status).await.is_err() {
            failed += 1;
            continue;
        }
        let mut line = String::new();
        loop {
            line.clear();
            match s.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse::<usize>().ok();
                        }
                    }
                }
            }
        }
        if !status.starts_with("HTTP/1.1 200")
            || len != Some(size)
            || s.read_exact(&mut body).await.is_err()
        {
            failed += 1;
            break;
        }
        ok += 1;
    }
    (ok, failed)
}

async fn load(bin: &Path, origin_port: u16, size: usize, per_connection: u64) -> Load {
    let w = Warden::start(
        bin,
        "  intercept: all\n  upstream_ca_file: {dir}/origin-ca.pem\nnetwork:\n  allow_cidrs: [127.0.0.0/8]\n  resolve:\n    origin.test: 127.0.0.1\n",
    )
    .await;
    // Warm up: the leaf is minted, upstream connections are pooled.
    keep_alive(w.addr, w.ca.clone(), origin_port, size, 2).await;
    let cpu_before = w.cpu_ticks();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..LOAD_CONNECTIONS {
        set.spawn(keep_alive(
            w.addr,
            w.ca.clone(),
            origin_port,
            size,
            per_connection,
        ));
    }
    let (mut requests, mut failed) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (ok, bad) = r.unwrap_or((0, per_connection));
        requests += ok;
        failed += bad;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = (w.cpu_ticks() - cpu_before) as f64 / clock_ticks_per_second();
    Load {
        requests,
        failed,
        seconds,
        cpu_seconds,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Keep-alive load alternated between `this` and `other`: CPU per request and request rate.
async fn compare_load(this: &Path, other: &Path) {
    let origin = Origin::https().await;
    for (size, per_connection) in LOADS {
        let mut rate = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for _ in 0..LOAD_ROUNDS {
            for (i, bin) in [this, other].into_iter().enumerate() {
                let l = load(bin, origin.port(), size, per_connection).await;
                if l.failed > 0 {
                    println!("[load] {}: {} requests failed", bin.display(), l.failed);
                }
                rate[i].push(l.requests as f64 / l.seconds);
                cpu[i].push(l.cpu_seconds * 1e6 / l.requests.max(1) as f64);
            }
        }
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "[load] {size}-byte responses, each round: req/s this {} / compared {}; us CPU per request this {} / compared {}",
            show(&rate[0]),
            show(&rate[1]),
            show(&cpu[0]),
            show(&cpu[1])
        );
        // Rounds run in pairs, one of each binary back to back: the ratio within each pair
        // leaves out most of what other work on the machine does to both.
        let paired =
            |v: &[Vec<f64>; 2]| median(v[0].iter().zip(&v[1]).map(|(a, b)| a / b).collect());
        let (rate_ratio, cpu_ratio) = (paired(&rate), paired(&cpu));
        let [rate_this, rate_other] = rate.map(median);
        let [cpu_this, cpu_other] = cpu.map(median);
        println!(
            "[load] {size}-byte responses, {LOAD_CONNECTIONS} keep-alive intercepted tunnels, medians of {LOAD_ROUNDS}: this {rate_this:.0} req/s at {cpu_this:.1} us CPU per request, compared {rate_other:.0} req/s at {cpu_other:.1} us; median ratio within a pair: rate {rate_ratio:.2}x, CPU per request {cpu_ratio:.2}x",
        );
    }
}

fn main() {
    let Some(rt) = bench_runtime() else {
        return;
    };
    let this = PathBuf::from(env!("CARGO_BIN_EXE_warden"));
    let other = std::env::var_os("WARDEN_COMPARE").map(PathBuf::from);
    rt.block_on(async {
        let mut runs = vec![("this", this.clone())];
        if let Some(other) = &other {
            runs.push(("compared", other.clone()));
        }
        let mut results = Vec::new();
        for (label, bin) in &runs {
            let blind = memory(bin, label, Kind::Blind).await;
            let intercepted = memory(bin, label, Kind::Intercepted).await;
            results.push((label, blind, intercepted));
        }
        println!("summary (RSS per idle tunnel; RSS {} s after close / baseline):", AFTER_CLOSE.as_secs());
        for (label, blind, intercepted) in &results {
            for (name, m, target) in [
                ("blind", blind, BLIND_TARGET_KIB),
                ("intercepted", intercepted, INTERCEPTED_TARGET_KIB),
            ] {
                let ratio = m.after_close_kib as f64 / m.baseline_kib.max(1) as f64;
                println!(
                    "  [{label}] {name}: {:.1} KiB per tunnel (<= {target}: {}); {:.1} / {:.1} MiB = {ratio:.2}x (<= {AFTER_CLOSE_TARGET}x: {})",
                    m.per_tunnel_kib,
                    verdict(m.per_tunnel_kib <= target),
                    mib(m.after_close_kib),
                    mib(m.baseline_kib),
                    verdict(ratio <= AFTER_CLOSE_TARGET)
                );
            }
        }
        if let Some(other) = &other {
            compare_load(&this, other).await;
        }
    });
}
