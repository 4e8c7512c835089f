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
