//! Reload cost: request latency with and without a config reload every 20 ms, in one run,
//! as a ratio (p99 during reloads / p99 without). Run with `cargo bench --bench reload`;
//! under `cargo test` it only checks that it builds. Loopback only, bounded in count.

#[path = "../tests/integration/common.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

const REQUESTS: usize = 10_000;

fn config(port: u16, value: &str) -> String {
    default_yaml(
        "auto",
        "",
        &format!("headers:\n  - host: origin.test:{port}\n    set: {{ x-gen: \"{value}\" }}\n"),
    )
}

async fn measure(w: &TestWarden, port: u16) -> Vec<Duration> {
    let client = w.client();
    let url = format!("http://origin.test:{port}/bytes/1024");
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let r = client.get(&url).send().await.expect("request");
        r.bytes().await.expect("body");
        times.push(started.elapsed());
    }
    times.sort_unstable();
    times
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let Some(rt) = bench_runtime() else {
        return;
    };
    rt.block_on(async {
        let origin = Origin::http().await;
        let port = origin.port();
        let w = TestWarden::start_file(&config(port, "a")).await;
        measure(&w, port).await; // warm-up
        let quiet = measure(&w, port).await;
        let reloading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (flag, dir) = (reloading.clone(), w.dir.path().to_path_buf());
        let shared = w.running.as_ref().expect("running").shared().clone();
        let reloader = tokio::spawn(async move {
            let mut n = 0u64;
            while flag.load(std::sync::atomic::Ordering::SeqCst) && n < 10_000 {
                let path = dir.join("warden.yaml");
                let text = std::fs::read_to_string(&path).expect("config");
                let next = if n.is_multiple_of(2) {
                    text.replace("\"a\"", "\"b\"")
                } else {
                    text.replace("\"b\"", "\"a\"")
                };
                std::fs::write(&path, next).expect("write");
                warden::reload::reload_from(&path, &shared).expect("reload");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        });
        let busy = measure(&w, port).await;
        reloading.store(false, std::sync::atomic::Ordering::SeqCst);
        let reloads = reloader.await.expect("reloader");
        println!("requests per phase: {REQUESTS}, reloads during the second: {reloads}");
        for (name, t) in [
            ("without reloads", &quiet),
            ("reloading every 20 ms", &busy),
        ] {
            println!(
                "{name:>22}: p50 {:>8.3} ms  p99 {:>8.3} ms",
                pct(t, 0.5).as_secs_f64() * 1e3,
                pct(t, 0.99).as_secs_f64() * 1e3
            );
        }
        println!(
            "p99 ratio (reloading / without): {:.2}",
            pct(&busy, 0.99).as_secs_f64() / pct(&quiet, 0.99).as_secs_f64()
        );
    });
}
