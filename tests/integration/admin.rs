//! The admin listener: health, readiness and Prometheus metrics from an owned registry.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_readiness_and_metrics() {
    let origin = Origin::https().await;
    let w = TestWarden::with("all", "admin:\n  listen: 127.0.0.1:0\n").await;
    let admin = w
        .running
        .as_ref()
        .unwrap()
        .admin_addr()
        .expect("admin bound");
    assert_ne!(admin.port(), 0);
    let r = w
        .client()
        .get(format!("https://origin.test:{}/echo", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // One refusal and one upstream failure, counted under the codes their bodies carried.
    let denied = w
        .client()
        .get(format!("http://{}/", w.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let failed = w
        .client()
        .get(format!("http://origin.test:{}/", closed_port().await))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str| direct.get(format!("http://{admin}{path}")).send();
    let health = get("/healthz").await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    assert_eq!(get("/nope").await.unwrap().status(), 404);
    let metrics = w.scrape().await;
    assert!(metrics.contains("warden_build_info{version="), "{metrics}");
    assert!(metrics.contains("warden_cert_mints_total 1"), "{metrics}");
    assert!(metrics.contains("warden_cert_cache_entries 1"), "{metrics}");
    assert!(
        metrics.contains("warden_denials_total{reason=\"loop_detected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("warden_upstream_errors_total{reason=\"upstream_connect_failed\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_listener_without_admin_listen() {
    let w = TestWarden::with("all", "").await;
    assert!(w.running.as_ref().unwrap().admin_addr().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_are_exported() {
    let w = TestWarden::with("all", "admin:\n  listen: 127.0.0.1:0\n").await;
    let metrics = w.scrape().await;
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = metric_value(&metrics, series).unwrap_or_else(|| panic!("{series}: {metrics}"));
        assert!(v >= 0.0, "{series} {v}");
    }
    assert!(metric_value(&metrics, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(metric_value(&metrics, "process_open_fds").unwrap() >= 3.0);
    assert!(
        metrics.contains("warden_accept_errors_total{cause=\"fds\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_guards_metrics_and_nothing_else() {
    const CANARY: &str = "metrics-canary-91c2";
    let w = TestWarden::with(
        "all",
        &format!(
            "admin:\n  listen: 127.0.0.1:0\n  metrics_token: {{ type: static, value: {CANARY} }}\n"
        ),
    )
    .await;
    let admin = w.running.as_ref().unwrap().admin_addr().unwrap();
    let direct = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut r = direct.get(format!("http://{admin}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    for token in [None, Some("wrong"), Some("")] {
        let r = get("/metrics", token).await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert!(r
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer")));
        let body = r.text().await.unwrap();
        assert!(
            body.contains("admin.metrics_token") && !body.contains(CANARY),
            "{body}"
        );
    }
    let ok = get("/metrics", Some(CANARY)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let text = ok.text().await.unwrap();
    assert!(text.contains("warden_build_info"), "{text}");
    assert!(
        text.contains("warden_admin_requests_total{result=\"unauthorized\"} 3"),
        "{text}"
    );
    assert!(!text.contains(CANARY));
    // Health and readiness stay open: probes carry no token.
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);
    assert!(all_log_lines().iter().all(|l| !l.contains(CANARY)));
}

#[test]
fn metrics_token_needs_the_admin_listener_and_a_readable_source() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, want) in [
        ("admin:\n  metrics_token: { type: static, value: t }\n", "needs admin.listen"),
        (
            "admin:\n  listen: 127.0.0.1:0\n  metrics_token: { type: env, var: WARDEN_TEST_METRICS_UNSET }\n",
            "WARDEN_TEST_METRICS_UNSET",
        ),
    ] {
        let text = fill(&default_yaml("all", "", yaml), &dir);
        let err = warden::Config::parse(&text, dir.path())
            .unwrap()
            .compile(warden::CompileOptions { create_ca: true })
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.metrics_token") && err.contains(want), "{err}");
    }
}
