//! Metrics: exact deltas after known traffic, and a dashboard that only queries metrics that
//! exist.

use crate::common::*;
use serde_json::Value;

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_counter_deltas() {
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&network_yaml(
        "all",
        &format!("  allow_cidrs: [127.0.0.0/8]\n  deny: [\"b.test:{port}\"]\n"),
        &format!(
            "admin:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: a.test:{port}\n    grant: demo\n    source: {{ type: static, value: tok }}\n"
        ),
    ))
    .await;
    let client = w.client();
    for host in ["origin.test", "origin.test", "a.test"] {
        let r = client
            .get(format!("https://{host}:{port}/bytes/1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let denied = client.get(format!("https://b.test:{port}/")).send().await;
    assert!(denied.is_err(), "CONNECT to b.test is refused");
    // The log line of the last exchange is written after its response: wait for it.
    wait_log(move |v| v["reason"] == "policy_denied_host" && v["port"] == port).await;
    let m = w.scrape().await;
    assert_eq!(
        value(
            &m,
            "warden_requests_total{client=\"-\",http_version=\"1.1\",kind=\"intercepted\",status_class=\"2xx\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &m,
            "warden_requests_total{client=\"-\",http_version=\"-\",kind=\"connect\",status_class=\"4xx\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&m, "warden_denials_total{reason=\"policy_denied_host\"}"),
        1.0
    );
    assert_eq!(
        value(&m, "warden_credential_injections_total{grant=\"demo\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "warden_request_duration_seconds_count{kind=\"intercepted\"}"
        ),
        3.0
    );
    assert_eq!(value(&m, "warden_bytes_total{direction=\"out\"}"), 3000.0);
    assert_eq!(value(&m, "warden_cert_mints_total"), 2.0);
    assert_eq!(value(&m, "warden_cert_mint_duration_seconds_count"), 2.0);
    assert_eq!(value(&m, "warden_config_generation"), 1.0);
}

#[test]
fn every_metric_the_dashboard_queries_exists() {
    let text = std::fs::read_to_string(repo_dir().join("grafana/warden.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("valid JSON");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "datasource"));
    let metrics = warden::telemetry::Metrics::new();
    let known = metrics.names();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut queried = 0;
    for panel in panels {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            if expr.contains("rate(") {
                assert!(expr.contains("$__rate_interval"), "{expr}");
            }
            // Every series is read per job and instance: a fleet per instance or summed.
            assert!(
                expr.contains(r#"job=~"$job", instance=~"$instance""#),
                "{expr}"
            );
            let mut rest = expr;
            while let Some(at) = ["warden_", "process_"]
                .iter()
                .filter_map(|prefix| rest.find(prefix))
                .min()
            {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| {
                        name.strip_suffix(s)
                            .filter(|b| known.iter().any(|k| k == b))
                    })
                    .unwrap_or(&name);
                assert!(
                    known.iter().any(|k| k == base),
                    "{name} is not a metric warden exports"
                );
                queried += 1;
                rest = &rest[at + name.len()..];
            }
        }
    }
    assert!(queried >= 15);
}

#[test]
fn the_dashboard_reads_a_fleet_by_instance_and_keeps_its_panels_honest() {
    let text = std::fs::read_to_string(repo_dir().join("grafana/warden.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    let vars = dash["templating"]["list"].as_array().unwrap();
    for name in ["job", "instance"] {
        let v = vars
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} variable"));
        assert_eq!(v["type"], "query");
        assert_eq!(v["includeAll"], true);
        assert_eq!(v["multi"], true);
    }
    let panels = dash["panels"].as_array().unwrap();
    // Rows are whole: the widths on each row add up to the grid's 24.
    let mut rows: std::collections::BTreeMap<u64, u64> = Default::default();
    for p in panels {
        *rows.entry(p["gridPos"]["y"].as_u64().unwrap()).or_default() +=
            p["gridPos"]["w"].as_u64().unwrap();
    }
    assert!(rows.values().all(|w| *w == 24), "{rows:?}");
    let exprs = |p: &Value| -> Vec<String> {
        p["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["expr"].as_str().unwrap().to_string())
            .collect()
    };
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        for e in exprs(p) {
            // Request latency leaves out WebSocket and tunnel lifetimes, which last minutes.
            if e.contains("warden_request_duration_seconds") && !title.contains("lifetimes p99") {
                assert!(e.contains(r#"kind!~"websocket|tunnel""#), "{title}: {e}");
            }
            if e.contains("warden_llm_tokens_total") {
                assert!(unit.contains("tokens"), "{title}: {unit}");
            }
        }
        if p["type"] == "table" {
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["instant"], true, "{title}");
                assert_eq!(t["format"], "table", "{title}");
            }
        }
    }
    let all: Vec<String> = panels.iter().flat_map(exprs).collect();
    for metric in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "warden_log_lines_dropped_total",
    ] {
        assert!(
            all.iter().any(|e| e.contains(metric)),
            "no panel for {metric}"
        );
    }
}
