//! Clients at scale: 10,000 clients registered through the clients API on each state backend
//! (PUT p50 and p99), the request-path lookup with 10,000 registered clients against 1, the
//! RSS each registered client costs, and how long a registration on one instance takes to
//! reach another through Redis (p99). Run with `cargo bench --bench clients` (redis-server
//! must be installed: `.ci/deps` does it); under `cargo test` it only checks that it builds.
//! Loopback only; every loop is bounded in count.

#[path = "../tests/integration/common.rs"]
mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const CLIENTS: usize = 10_000;
const LOOKUPS: usize = 200_000;
const PROPAGATIONS: usize = 300;
const ADMIN_TOKEN: &str = "bench-admin-token";

fn yaml(state: &str) -> String {
    default_yaml(
        "all",
        "",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  token: {{ type: static, value: {ADMIN_TOKEN} }}\n{state}log:\n  level: warn\n"
        ),
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A small client body, as a platform would send per sandbox.
fn body(i: usize) -> String {
    json!({
        "token": format!("bench-token-{i:08}-padding"),
        "network": { "policy": "strict", "allow": [format!("api{i}.example.com")] },
    })
    .to_string()
}

/// Registers `n` clients on `w`; the PUT latencies, sorted.
async fn register(w: &TestWarden, n: usize) -> Vec<Duration> {
    let admin = w.running.as_ref().unwrap().admin_addr().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let r = http
            .put(format!("http://{admin}/v1/clients/c{i}"))
            .bearer_auth(ADMIN_TOKEN)
            .body(body(i))
            .send()
            .await
            .expect("PUT");
        assert!(r.status().is_success(), "PUT c{i}: {}", r.status());
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times
}

/// The mean cost of identifying a request by a registered client's token, in-process.
fn lookup_ns(w: &TestWarden, i: usize) -> f64 {
    let shared = w.running.as_ref().unwrap().shared();
    let snap = shared.snapshot.load_full();
    let basic =
        openssl::base64::encode_block(format!("c{i}:bench-token-{i:08}-padding").as_bytes());
    let value = format!("Basic {basic}").into_bytes();
    let started = Instant::now();
    for _ in 0..LOOKUPS {
        let found = warden::admission::identify(&snap, &shared.runtime.registry, None, &[&value]);
        assert!(matches!(found, Ok(Some(_))));
    }
    started.elapsed().as_nanos() as f64 / LOOKUPS as f64
}

fn main() {
    let Some(rt) = bench_runtime() else {
        return;
    };
    rt.block_on(async {
        let mut rows = Vec::new();

        // Memory: PUTs, RSS per client, lookup with 1 and with 10,000.
        let one = TestWarden::start(&yaml("")).await;
        register(&one, 1).await;
        let lookup_one = lookup_ns(&one, 0);
        drop(one);
        let w = TestWarden::start(&yaml("")).await;
        let before = rss_kib();
        let memory = register(&w, CLIENTS).await;
        let per_client = (rss_kib().saturating_sub(before)) as f64 / CLIENTS as f64;
        let lookup_many = lookup_ns(&w, CLIENTS / 2);
        rows.push(("memory", memory));
        drop(w);

        // Embedded: every PUT a committed redb transaction.
        let dir = tempfile::tempdir().unwrap();
        let state = format!("state:\n  backend: embedded\n  path: {}\n", dir.path().join("s.redb").display());
        let w = TestWarden::start(&yaml(&state)).await;
        rows.push(("embedded", register(&w, CLIENTS).await));
        drop(w);

        // Redis: PUTs, then propagation between two instances.
        let redis = RedisServer::start().await;
        let state = format!("state:\n  backend: redis\n  url: {}\n", redis.url());
        let a = TestWarden::start(&yaml(&state)).await;
        let b = TestWarden::start(&yaml(&state)).await;
        rows.push(("redis", register(&a, CLIENTS).await));
        let admin = a.running.as_ref().unwrap().admin_addr().unwrap();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut delays = Vec::with_capacity(PROPAGATIONS);
        for i in 0..PROPAGATIONS {
            let name = format!("p{i}");
            let started = Instant::now();
            let r = http
                .put(format!("http://{admin}/v1/clients/{name}"))
                .bearer_auth(ADMIN_TOKEN)
                .body(body(CLIENTS + i))
                .send()
                .await
                .expect("PUT");
            assert!(r.status().is_success());
            let registry = &b.running.as_ref().unwrap().shared().runtime.registry;
            while registry.get(&name).is_none() {
                assert!(started.elapsed() < Duration::from_secs(10), "{name} never arrived");
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            delays.push(started.elapsed());
        }
        delays.sort_unstable();

        println!("| backend | clients | PUT p50 | PUT p99 |");
        println!("|---|---:|---:|---:|");
        for (backend, times) in &rows {
            println!(
                "| {backend} | {CLIENTS} | {:.2} ms | {:.2} ms |",
                pct(times, 0.5).as_secs_f64() * 1e3,
                pct(times, 0.99).as_secs_f64() * 1e3
            );
        }
        println!();
        println!(
            "lookup per request: {lookup_one:.0} ns with 1 client, {lookup_many:.0} ns with {CLIENTS} ({:.2}x)",
            lookup_many / lookup_one
        );
        println!("RSS per registered client (memory backend): {per_client:.1} KiB");
        println!(
            "propagation A -> B through redis, PUT sent to visible on B: p50 {:.2} ms, p99 {:.2} ms ({PROPAGATIONS} registrations)",
            pct(&delays, 0.5).as_secs_f64() * 1e3,
            pct(&delays, 0.99).as_secs_f64() * 1e3
        );
    });
}
