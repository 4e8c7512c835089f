//! Hot reload: good configs apply to the next request, bad ones change nothing, what cannot
//! change live is reported, and state that should outlive a reload does.

use crate::common::*;
use tokio::io::AsyncWriteExt;

fn with_header(port: u16, value: &str, extra: &str) -> String {
    default_yaml(
        "auto",
        "",
        &format!(
            "headers:\n  - host: origin.test:{port}\n    set: {{ x-gen: \"{value}\" }}\n{extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_reload_applies_to_the_next_request_on_the_same_connection() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start_file(&with_header(port, "one", "")).await;
    let client = w.client();
    let url = format!("http://origin.test:{port}/echo");
    // Bodies are read to the end so the client reuses its one connection.
    client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(w.reload(&with_header(port, "two", "")).unwrap(), 2);
    client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let seen = origin.seen();
    assert_eq!(seen[0].header("x-gen"), Some("one"));
    assert_eq!(seen[1].header("x-gen"), Some("two"));
    assert_eq!(
        origin.connections(),
        1,
        "same kept-alive connection throughout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_changes_nothing_and_names_the_key_and_line() {
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start_file(&with_header(
        port,
        "good",
        "admin:\n  listen: 127.0.0.1:0\n",
    ))
    .await;
    let bad = with_header(port, "bad", "admin:\n  listen: 127.0.0.1:0\n").replace(
        "allow_cidrs: [127.0.0.0/8]",
        "allow_cidrs: [127.0.0.0/8]\n  deny: ['*bad.test']",
    );
    let errors = w.reload(&bad).unwrap_err();
    let err = errors.first();
    assert_eq!(err.key.as_deref(), Some("network.deny"), "{err}");
    assert!(err.line.is_some(), "{err}");
    let client = w.client();
    client
        .get(format!("http://origin.test:{port}/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(origin.seen()[0].header("x-gen"), Some("good"));
    let metrics = w.scrape().await;
    assert!(
        metrics.contains("warden_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_config_last_reload_success 0"),
        "{metrics}"
    );
    assert!(metrics.contains("warden_config_generation 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_changes_need_a_restart_and_the_leaf_cache_survives() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start_file(&default_yaml("all", "", "")).await;
    let get = || async {
        w.client()
            .get(format!("https://origin.test:{port}/echo"))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(get().await, 200);
    assert_eq!(w.mints(), 1);
    let moved = default_yaml("all", "", "").replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1");
    assert_eq!(w.reload(&moved).unwrap(), 2);
    // Still served on the old address, and the same CA's cached leaf is reused.
    assert_eq!(get().await, 200);
    assert_eq!(w.mints(), 1, "no new leaf after a reload with the same CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_client_is_refused_inside_an_already_open_tunnel() {
    let origin = Origin::https().await;
    let port = origin.port();
    let clients = |names: &[&str]| {
        let list: String = names
            .iter()
            .map(|n| {
                format!("      - {{ name: {n}, token: {{ type: static, value: tok-{n} }} }}\n")
            })
            .collect();
        default_yaml("all", "", "").replace(
            "proxy:\n  listen: 127.0.0.1:0\n",
            &format!("proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n{list}"),
        )
    };
    let w = TestWarden::start_file(&clients(&["alpha", "beta"])).await;
    let authority = format!("origin.test:{port}");
    let tcp = w
        .connect_with(&authority, "Proxy-Authorization: Bearer tok-alpha\r\n")
        .await;
    let mut s = tls_connect(tcp, "origin.test", &w.ca_pem).await;
    let req = format!("GET /echo HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert!(read_response(&mut s).await.0.starts_with("HTTP/1.1 200"));
    w.reload(&clients(&["beta"])).unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 407, "auth_invalid");
    assert_eq!(origin.seen().len(), 1);
}

/// The real binary, started on port 0; its listen addresses are read from its start-up line.
struct Binary {
    child: std::process::Child,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Binary {
    fn start(config: &std::path::Path) -> Binary {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["run", "-c"]).arg(config);
        let launched = Launched::start(cmd);
        Binary {
            proxy: launched.proxy,
            admin: launched.admin,
            child: launched.child,
        }
    }

    /// Waits (off the async workers) for the process to exit.
    async fn wait(self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let mut bin = self;
            bin.child.wait().expect("waiting for warden")
        })
        .await
        .expect("wait task")
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config file for the binary (proxy and admin on port 0, test names on loopback) plus
/// `extra` top-level keys; the folder must outlive the process.
fn binary_config(extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    std::fs::write(
        &path,
        format!(
            "proxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\nnetwork:\n  allow_cidrs: [127.0.0.0/8]\n  resolve: {{ origin.test: 127.0.0.1 }}\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    (dir, path)
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> u64 {
    metric_value(&scrape(admin).await, name).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sighups_under_load_drop_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let origin = Origin::http().await;
    let port = origin.port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warden.yaml");
    let config = |value: &str, bad: bool| {
        let deny = if bad {
            "\n  deny: ['*broken.test']"
        } else {
            ""
        };
        format!(
            "version: 1\nproxy:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: {0}/ca.crt\n  ca_key: {0}/ca.key\nnetwork:\n  allow_cidrs: [127.0.0.0/8]{deny}\n  resolve: {{ origin.test: 127.0.0.1 }}\nheaders:\n  - host: origin.test:{port}\n    set: {{ x-gen: \"{value}\" }}\n",
            dir.path().display()
        )
    };
    let write = |text: String| {
        let tmp = dir.path().join("warden.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(config("start", false));
    let bin = Binary::start(&path);
    let proxy_url = format!("http://{}", bin.proxy);
    // The load: kept-alive and fresh connections, alternately, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed, proxy_url) =
            (stop.clone(), ok.clone(), failed.clone(), proxy_url.clone());
        tokio::spawn(async move {
            let kept = reqwest::Client::builder()
                .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
                .build()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                let fresh;
                let client = if i.is_multiple_of(2) {
                    &kept
                } else {
                    fresh = reqwest::Client::builder()
                        .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
                        .build()
                        .unwrap();
                    &fresh
                };
                match client
                    .get(format!("http://origin.test:{port}/echo"))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                i += 1;
            }
        })
    };
    let probe = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
        .build()
        .unwrap();
    let (mut good, mut bad) = (0u64, 0u64);
    for i in 0..20u64 {
        let (value, is_bad) = match i % 3 {
            0 => ("alpha", false),
            1 => ("beta", false),
            _ => ("broken", true),
        };
        write(config(value, is_bad));
        bin.signal("-HUP");
        // Wait (bounded) until warden has processed this reload.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let done = metric(bin.admin, "warden_config_reloads_total{result=\"success\"}").await
                + metric(bin.admin, "warden_config_reloads_total{result=\"failure\"}").await;
            if done == i + 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "reload {i} not processed"
            );
            tokio::task::yield_now().await;
        }
        if is_bad {
            bad += 1;
        } else {
            good += 1;
        }
        // The config in force: the last good one.
        let id = format!("reload-probe-{i}");
        probe
            .get(format!("http://origin.test:{port}/echo"))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        let seen = origin.seen();
        let hit = seen
            .iter()
            .find(|s| s.header("x-request-id") == Some(id.as_str()))
            .unwrap();
        // A bad file always follows the "beta" one, which stays in force.
        let expected = if is_bad { "beta" } else { value };
        assert_eq!(hit.header("x-gen"), Some(expected), "after reload {i}");
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    assert!(ok.load(Ordering::SeqCst) > 20);
    assert_eq!(
        metric(bin.admin, "warden_config_reloads_total{result=\"failure\"}").await,
        bad
    );
    assert_eq!(
        metric(bin.admin, "warden_config_generation").await,
        1 + good
    );
    // SIGTERM drains and exits 0.
    bin.signal("-TERM");
    let status = bin.wait().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let origin = GatedOrigin::start().await;
    let (_dir, path) = binary_config("limits:\n  shutdown_grace: 8s\n");
    let bin = Binary::start(&path);
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{}", bin.proxy)).unwrap())
        .build()
        .unwrap();
    let port = origin.addr.port();
    let request = tokio::spawn(async move {
        client
            .get(format!("http://origin.test:{port}/slow"))
            .send()
            .await
    });
    tokio::time::timeout(WAIT, origin.received.notified())
        .await
        .expect("the request reached the origin");
    bin.signal("-TERM");
    // New connections are refused once warden stops accepting.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(bin.proxy).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    origin.release.notify_one();
    let response = tokio::time::timeout(WAIT, request)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    let started = std::time::Instant::now();
    let status = bin.wait().await;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "exited within the grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_at_once() {
    let (_dir, path) = binary_config("limits:\n  shutdown_grace: 60s\n");
    let bin = Binary::start(&path);
    // An idle kept-alive client connection does not hold a fast exit up.
    let _idle = tokio::net::TcpStream::connect(bin.proxy).await.unwrap();
    bin.signal("-INT");
    let started = std::time::Instant::now();
    let status = bin.wait().await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_dns_cache() {
    // `localhost` is the one name here that goes to the system resolver (its hosts file, not
    // the network): every other test name is a `network.resolve` override, which is config
    // and never cached.
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::start_file(&with_header(port, "one", "")).await;
    let client = w.client();
    let url = format!("http://localhost:{port}/echo");
    let get = || async {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    };
    get().await;
    assert_eq!(w.runtime().dns.lookups(), 1);
    assert_eq!(w.reload(&with_header(port, "two", "")).unwrap(), 2);
    assert_eq!(w.runtime().dns.lookups(), 1, "the reload kept the answers");
    get().await;
    assert_eq!(w.runtime().dns.lookups(), 1, "answered from the cache");
    assert_eq!(
        origin.seen()[1].header("x-gen"),
        None,
        "headers are for origin.test"
    );
}
