//! Memory per idle intercepted tunnel and many tunnels held at once, against the real binary:
//! `warden run` on a config that intercepts everything; this process opens tunnels (CONNECT,
//! `200`, TLS handshake with warden's leaf) and leaves them idle, then reads warden's RSS from
//! `/proc`. Reports RSS per tunnel over 5,000 tunnels, then holds 10,000 and counts failures.
//! Run with `cargo bench --bench tunnels` (fd limit: each side needs one per tunnel, plus a
//! few). Loopback only; every wait is bounded.

#[path = "../tests/integration/common.rs"]
mod common;

use common::*;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

type Tunnel = tokio_openssl::SslStream<tokio::net::TcpStream>;

async fn open(proxy: std::net::SocketAddr, ca: String) -> Option<Tunnel> {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.ok()?;
    tcp.write_all(b"CONNECT idle.test:443 HTTP/1.1\r\nHost: idle.test:443\r\n\r\n")
        .await
        .ok()?;
    let head = read_head(&mut tcp).await;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(tls_connect(tcp, "idle.test", &ca).await)
}

/// Opens `n` tunnels, 64 handshakes at a time; returns those that succeeded.
async fn open_many(proxy: std::net::SocketAddr, ca: &str, n: usize) -> (Vec<Tunnel>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    let mut set = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < n || !set.is_empty() {
        while started < n && set.len() < 64 {
            set.spawn(tokio::time::timeout(WAIT, open(proxy, ca.to_string())));
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

fn main() {
    let Some(rt) = bench_runtime() else {
        return;
    };
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr").port()
        };
        let cfg = dir.path().join("warden.yaml");
        std::fs::write(
            &cfg,
            format!("version: 1\nproxy:\n  listen: 127.0.0.1:{port}\ntls:\n  ca_cert: ca.crt\n  ca_key: ca.key\n  intercept: all\nlog:\n  level: warn\nlimits:\n  idle_timeout: 600s\n"),
        )
        .expect("config");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("warden starts");
        let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(proxy).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "warden did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).expect("warden's CA");
        // Warm up: the leaf is minted and cached, buffers and pools exist.
        let (warm, _) = open_many(proxy, &ca, 64).await;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(child.id());
        let (held, failed) = open_many(proxy, &ca, 5_000).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(child.id());
        println!(
            "5,000 idle intercepted tunnels: RSS {before} KiB -> {after} KiB, {:.1} KiB per tunnel ({failed} failed)",
            (after.saturating_sub(before)) as f64 / held.len().max(1) as f64
        );
        let (more, failed_more) = open_many(proxy, &ca, 5_000).await;
        println!(
            "10,000 held at once: {} open, {} failed, warden RSS {} KiB",
            held.len() + more.len(),
            failed + failed_more,
            rss_kib(child.id())
        );
        drop(held);
        drop(more);
        let _ = child.kill();
        let _ = child.wait();
    });
}
