//! The keep-alive upstream path's system calls, counted by `strace` around the `warden`
//! binary: requests on one intercepted tunnel reuse one pooled upstream connection without a
//! `getpeername` per reuse, and read each TLS response with one receive (PATCHES.md).

use crate::common::*;
use std::path::Path;
use std::process::Command;

/// Requests sent on the one tunnel; the tunnel's own set-up is noise next to them.
const REQUESTS: usize = 300;

/// Calls of each traced syscall in an `strace -c` summary.
fn calls(summary: &str, syscall: &str) -> usize {
    summary
        .lines()
        .find(|l| l.split_whitespace().last() == Some(syscall))
        .and_then(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // % time, seconds, usecs/call, calls, [errors,] syscall
            cols.get(3).and_then(|c| c.parse().ok())
        })
        .unwrap_or(0)
}

/// The pid of `parent`'s one child (warden under strace).
fn child_of(parent: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .expect("procfs lists strace's children");
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("strace runs warden as its child")
}

fn strace_warden(config: &Path, summary: &Path) -> Launched {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-c", "-e", "trace=getpeername,recvfrom,recvmsg"])
        .arg("-o")
        .arg(summary)
        .arg(env!("CARGO_BIN_EXE_warden"))
        .args(["run", "-c"])
        .arg(config);
    // Fails (no start-up line) when strace is missing: .ci/deps installs it.
    Launched::start(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_reuse_the_upstream_without_getpeername_or_split_reads() {
    let origin = Origin::https().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    let config = dir.path().join("w.yaml");
    let yaml = default_yaml("all", "", "admin:\n  listen: 127.0.0.1:0\n");
    std::fs::write(&config, fill(&yaml, &dir)).unwrap();
    let summary = dir.path().join("strace.txt");
    let mut warden = tokio::task::block_in_place(|| strace_warden(&config, &summary));

    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", warden.proxy)).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .pool_max_idle_per_host(1)
        .timeout(WAIT)
        .build()
        .unwrap();
    let url = format!("https://origin.test:{}/echo", origin.port());
    for _ in 0..REQUESTS {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // One pooled upstream connection per lane the client's tunnels landed on.
    let lanes = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        origin.connections() <= lanes,
        "{} upstream connections for {lanes} lanes",
        origin.connections()
    );

    // SIGTERM to warden; strace writes its summary when warden exits.
    let strace = warden.child.id();
    let status = Command::new("kill")
        .args(["-TERM", &child_of(strace).to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| warden.child.wait()).unwrap();
    assert!(exit.success(), "strace exits with warden's status: {exit}");
    let text = std::fs::read_to_string(&summary).unwrap();

    let getpeername = calls(&text, "getpeername");
    let receives = calls(&text, "recvfrom") + calls(&text, "recvmsg");
    let per_request = receives as f64 / REQUESTS as f64;
    // Unpatched pingora-core calls getpeername on every reuse (300 here) and reads every
    // upstream TLS record in two receives: about 4 socket receives a request, on both sides
    // together, against about 2 with the patch (one for the request, one for the response).
    assert!(
        getpeername < 10,
        "getpeername {getpeername} for {REQUESTS} requests\n{text}"
    );
    assert!(
        per_request < 3.0,
        "{per_request:.2} receives a request\n{text}"
    );
}
