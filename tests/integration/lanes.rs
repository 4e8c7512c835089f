//! The proxy's lanes, seen from outside the `warden` binary: one serving thread per core, and
//! concurrent client connections spread over all of them (src/server.rs, `Lanes`).

use crate::common::*;
use std::process::Command;

/// Concurrent keep-alive connections, and requests on each.
const CONNECTIONS: usize = 8;
const REQUESTS: usize = 150;

/// CPU ticks (user + system) of each of `pid`'s threads whose name starts with `prefix`.
fn thread_ticks(pid: u32, prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("procfs") {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name.trim().to_string();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is the 3rd, utime the 14th, stime the 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.push((name, tick(11) + tick(12)));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_are_served_on_every_lane() {
    let origin = Origin::https().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    let config = dir.path().join("w.yaml");
    let yaml = default_yaml("all", "", "admin:\n  listen: 127.0.0.1:0\n");
    std::fs::write(&config, fill(&yaml, &dir)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
    cmd.args(["run", "-c"]).arg(&config);
    let mut warden = tokio::task::block_in_place(|| Launched::start(cmd));
    let pid = warden.child.id();

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = thread_ticks(pid, "warden-");
    assert_eq!(lanes.len(), cores, "one lane per core: {lanes:?}");

    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let url = format!("https://origin.test:{}/echo", origin.port());
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let client = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(format!("http://{}", warden.proxy)).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .pool_max_idle_per_host(1)
            .timeout(WAIT)
            .build()
            .unwrap();
        let url = url.clone();
        clients.spawn(async move {
            for _ in 0..REQUESTS {
                let resp = client.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.bytes().await.unwrap();
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(origin.seen().len(), CONNECTIONS * REQUESTS);
    let after = thread_ticks(pid, "warden-");
    // The connections went to the lanes in turn: every lane did part of the work. Had one
    // lane taken them all, the others would show no CPU at all.
    assert!(after.iter().all(|(_, t)| *t > 0), "{after:?}");
    let _ = warden.child.kill();
    let _ = warden.child.wait();
}
