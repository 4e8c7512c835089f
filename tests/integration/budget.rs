//! Client budgets end to end: clients with a `budget` in the file, the fake LLM providers,
//! real clients through warden. A spent budget refuses the next call before it reaches the
//! origin (the origin's record shows it), in the provider's rate-limit shape; plain traffic
//! and CONNECTs over `requests_per_second` get warden's own 429; the metrics, the client-label
//! cap, the estimate for a stream without usage, a Responses WebSocket and a reload.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

/// A chat completion reporting 11 + 7 tokens.
pub(crate) const CHAT_JSON: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7}}"#;
/// An Anthropic message reporting 11 + 7 tokens.
pub(crate) const MESSAGE_JSON: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn","usage":{"input_tokens":11,"output_tokens":7}}"#;

/// warden with `llm` entries for `(provider, host, port)` and clients `(name, budget)`, each
/// with token `tok-<name>`; `extra` is appended (top-level keys).
pub(crate) fn budget_yaml(
    llm: &[(&str, &str, u16)],
    clients: &[(&str, &str)],
    extra: &str,
) -> String {
    let llm: String = llm
        .iter()
        .map(|(provider, host, port)| {
            format!("  - host: \"{host}:{port}\"\n    provider: {provider}\n")
        })
        .collect();
    let clients: String = clients
        .iter()
        .map(|(name, budget)| {
            format!("      - name: {name}\n        token: {{ type: static, value: tok-{name} }}\n        budget: {budget}\n")
        })
        .collect();
    let llm = if llm.is_empty() {
        String::new()
    } else {
        format!("llm:\n{llm}")
    };
    default_yaml(
        "auto",
        "",
        &format!("{llm}admin:\n  listen: 127.0.0.1:0\n{extra}"),
    )
    .replace(
        "proxy:\n  listen: 127.0.0.1:0\n",
        &format!("proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n{clients}"),
    )
}

/// A client of `w` authenticating as `name` (token `tok-<name>`).
fn client_as(w: &TestWarden, name: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .proxy(
            reqwest::Proxy::all(w.proxy_url())
                .unwrap()
                .basic_auth(name, &format!("tok-{name}")),
        )
        .build()
        .unwrap()
}

fn proxy_auth(name: &str) -> String {
    let basic = openssl::base64::encode_block(format!("{name}:tok-{name}").as_bytes());
    format!("Proxy-Authorization: Basic {basic}\r\n")
}

/// Budget windows are aligned to the clock: a test that spends a window and expects the next
/// call refused starts with at least `margin` of its window left, so it cannot turn under it
/// (waiting for the next window when less is left).
pub(crate) async fn clear_of_a_window_end(window: Duration, margin: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let window = window.as_millis();
    let left = window - now % window;
    if left < margin.as_millis() {
        tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
    }
}

/// [`clear_of_a_window_end`] for a minute, with 5 s to spare.
async fn clear_of_a_minute_boundary() {
    clear_of_a_window_end(Duration::from_secs(60), Duration::from_secs(5)).await;
}

/// One call to the fake provider at `url`, with request id `id`.
async fn call(c: &reqwest::Client, url: &str, id: &str) -> reqwest::Response {
    c.post(url)
        .header("x-request-id", id)
        .json(&json!({"model": "m-1", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The value of the series `name` whose labels include every `k="v"` of `labels`, summed over
/// the series that match (none: `None`).
fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((set, value)) = rest.split_once("} ") else {
            continue;
        };
        if labels
            .iter()
            .all(|(k, v)| set.split(',').any(|l| l == format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_window_spent_by_a_calls_usage_refuses_the_next_call_before_it_reaches_the_origin()
{
    for (i, key, window) in [
        (0, "llm_tokens_per_minute", 60),
        (1, "llm_tokens_per_hour", 3600),
        (2, "llm_tokens_per_day", 86_400),
    ] {
        clear_of_a_minute_boundary().await;
        let openai = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
        let anthropic = LlmOrigin::start(Script::json(200, MESSAGE_JSON)).await;
        let w = TestWarden::start(&budget_yaml(
            &[
                ("openai", "openai.test", openai.port()),
                ("anthropic", "anthropic.test", anthropic.port()),
            ],
            &[("run-a", &format!("{{ {key}: 10 }}")), ("run-b", "{}")],
            "",
        ))
        .await;
        let c = client_as(&w, "run-a");
        let chat = format!("https://openai.test:{}/v1/chat/completions", openai.port());
        let messages = format!("https://anthropic.test:{}/v1/messages", anthropic.port());
        // The first call is under the budget; its reported usage (18) spends the window.
        let ok = call(&c, &chat, &format!("budget-win-{i}-ok")).await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.text().await.unwrap(), CHAT_JSON);

        // The budget is the client's, across providers: Anthropic's shape.
        let id = format!("budget-win-{i}-anthropic");
        let refused = call(&c, &messages, &id).await;
        assert_eq!(refused.status(), 429, "{key}");
        let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
        assert!((1..=window).contains(&retry), "{key}: retry-after {retry}");
        assert!(
            header(&refused, "x-should-retry").is_none(),
            "a window may be retried"
        );
        assert!(
            header(&refused, "proxy-status")
                .unwrap()
                .contains("details=\"budget_exceeded\""),
            "{key}"
        );
        let v: Value = refused.json().await.unwrap();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(key) && message.contains("run-a"),
            "{message}"
        );
        let line = log_for(&id).await;
        assert_eq!(line["status"], 429);
        assert_eq!(line["reason"], "budget_exceeded");
        assert_eq!(line["client"], "run-a");
        assert_eq!(
            line["rule"],
            format!("proxy.auth.clients[0].budget.{key}"),
            "{line}"
        );

        // And OpenAI's.
        let refused = call(&c, &chat, &format!("budget-win-{i}-openai")).await;
        assert_eq!(refused.status(), 429);
        assert!(header(&refused, "retry-after").is_some());
        let v: Value = refused.json().await.unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded", "{v}");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");

        // Neither refused call reached an origin; another client is not held back.
        assert_eq!(openai.received().len(), 1, "{key}");
        assert_eq!(anthropic.received().len(), 0, "{key}");
        let other = call(&client_as(&w, "run-b"), &chat, &format!("budget-win-{i}-b")).await;
        assert_eq!(other.status(), 200);
        assert_eq!(openai.received().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_requests_per_minute_refuses_the_call_past_its_limit() {
    clear_of_a_minute_boundary().await;
    let origin = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[("openai", "openai.test", origin.port())],
        &[("run-a", "{ llm_requests_per_minute: 2 }")],
        "",
    ))
    .await;
    let c = client_as(&w, "run-a");
    let url = format!("https://openai.test:{}/v1/chat/completions", origin.port());
    for n in 0..2 {
        let resp = call(&c, &url, &format!("budget-rpm-{n}")).await;
        assert_eq!(resp.status(), 200);
    }
    let refused = call(&c, &url, "budget-rpm-2").await;
    assert_eq!(refused.status(), 429);
    let retry: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded", "{v}");
    assert_eq!(origin.received().len(), 2, "the third call was not sent");
    let line = log_for("budget-rpm-2").await;
    assert_eq!(
        line["rule"],
        "proxy.auth.clients[0].budget.llm_requests_per_minute"
    );
    // Other paths on the host are not LLM calls: not counted, not refused.
    let models = c
        .get(format!("https://openai.test:{}/v1/models", origin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_lifetime_total_is_insufficient_quota_and_must_not_be_retried() {
    let openai = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let anthropic = LlmOrigin::start(Script::json(200, MESSAGE_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[
            ("openai", "openai.test", openai.port()),
            ("anthropic", "anthropic.test", anthropic.port()),
        ],
        &[(
            "run-a",
            "{ llm_tokens_total: 18, llm_tokens_per_minute: 1000 }",
        )],
        "",
    ))
    .await;
    let c = client_as(&w, "run-a");
    let chat = format!("https://openai.test:{}/v1/chat/completions", openai.port());
    assert_eq!(call(&c, &chat, "budget-total-ok").await.status(), 200);
    let refused = call(&c, &chat, "budget-total-openai").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-should-retry"), Some("false"));
    assert!(
        header(&refused, "retry-after").is_none(),
        "it never frees up"
    );
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["type"], "insufficient_quota", "{v}");
    assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("llm_tokens_total"));
    let messages = format!("https://anthropic.test:{}/v1/messages", anthropic.port());
    let refused = call(&c, &messages, "budget-total-anthropic").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "x-should-retry"), Some("false"));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(openai.received().len(), 1);
    assert_eq!(anthropic.received().len(), 0);
    let line = log_for("budget-total-openai").await;
    assert_eq!(line["reason"], "budget_exceeded");
    assert_eq!(
        line["rule"],
        "proxy.auth.clients[0].budget.llm_tokens_total"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_second_refuses_plain_requests_connects_and_llm_calls_with_a_429() {
    let plain = Origin::http().await;
    let llm = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[("openai", "openai.test", llm.port())],
        &[("run-a", "{ requests_per_second: 1 }")],
        "",
    ))
    .await;
    let c = client_as(&w, "run-a");
    let url = format!("http://origin.test:{}/echo", plain.port());
    // The bucket holds one second's worth: one request, then the next is refused at once.
    let ok = c
        .get(&url)
        .header("x-request-id", "budget-rps-ok")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = c
        .get(&url)
        .header("x-request-id", "budget-rps-plain")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), Some("1"));
    assert!(header(&refused, "proxy-status")
        .unwrap()
        .contains("details=\"budget_exceeded\""));
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["reason"], "budget_exceeded", "{v}");
    assert_eq!(
        v["rule"],
        "proxy.auth.clients[0].budget.requests_per_second"
    );
    assert_eq!(v["request_id"], "budget-rps-plain");
    assert_eq!(plain.seen().len(), 1, "the refused request was not sent");

    // A CONNECT while the bucket is empty is refused at the CONNECT.
    let authority = format!("openai.test:{}", llm.port());
    let mut s = w.tcp().await;
    s.write_all(
        format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nX-Request-Id: budget-rps-connect\r\n{}\r\n",
            proxy_auth("run-a")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 429, "budget_exceeded");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{head}"
    );
    let line = log_for("budget-rps-connect").await;
    assert_eq!(line["kind"], "connect");
    assert_eq!(line["status"], 429);
    assert_eq!(line["client"], "run-a");

    // Once a token is back, an intercepted CONNECT takes none itself: the call inside takes
    // it, and the next call on the same tunnel gets the provider's shape.
    // Waiting for the bucket to refill is waiting for what retry-after said; a CONNECT that
    // comes too early (a loaded machine) is refused without taking a token, so try again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    let tcp = loop {
        let mut s = w.tcp().await;
        let connect = format!(
            "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{}\r\n",
            proxy_auth("run-a")
        );
        s.write_all(connect.as_bytes()).await.unwrap();
        let head = read_head(&mut s).await;
        if head.starts_with("HTTP/1.1 200") {
            break s;
        }
        assert!(
            started.elapsed() < WAIT,
            "the CONNECT stayed refused: {head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Both calls on this one tunnel, so the second cannot be refused at a CONNECT instead.
    let mut t = tls_connect(tcp, "openai.test", &w.ca_pem).await;
    let body = r#"{"model":"m-1","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let post = |id: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nX-Request-Id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    t.write_all(post("budget-rps-llm-ok").as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut t).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    t.write_all(post("budget-rps-llm").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut t).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 1\r\n"),
        "{head}"
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "rate_limit_exceeded", "{v}");
    assert_eq!(llm.received().len(), 1);
    let line = log_for("budget-rps-llm").await;
    assert_eq!(line["reason"], "budget_exceeded");
    assert_eq!(line["kind"], "intercepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_usage_is_counted_from_an_estimate_and_the_line_says_so() {
    clear_of_a_minute_boundary().await;
    let text = fixture("chat_completions.sse", "read_file");
    let without: String = text
        .split_inclusive("\n\n")
        .filter(|e| !e.contains("\"usage\""))
        .collect();
    assert_ne!(without, text);
    let origin = LlmOrigin::start(Script::sse_events(&without)).await;
    let w = TestWarden::start(&budget_yaml(
        &[("openai", "openai.test", origin.port())],
        &[("run-a", "{ llm_tokens_per_minute: 100 }")],
        "",
    ))
    .await;
    let c = client_as(&w, "run-a");
    let url = format!("https://openai.test:{}/v1/chat/completions", origin.port());
    let body =
        json!({"model": "m-1", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = c
        .post(&url)
        .header("x-request-id", "budget-estimate")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), without);
    let line = log_for("budget-estimate").await;
    assert_eq!(line["tokens_estimated"], true, "{line}");
    let sent = serde_json::to_vec(&body).unwrap().len() as u64;
    assert_eq!(line["input_tokens"], sent.div_ceil(4), "{line}");
    assert_eq!(
        line["output_tokens"],
        (without.len() as u64).div_ceil(4),
        "{line}"
    );
    // The estimate (well over 100 tokens) is what the budget counted.
    let refused = call(&c, &url, "budget-estimate-refused").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(origin.received().len(), 1);
    // A call whose usage was reported says it is not an estimate.
    let reported = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[("openai", "openai.test", reported.port())],
        &[("run-a", "{ llm_tokens_per_minute: 100 }")],
        "",
    ))
    .await;
    let url = format!(
        "https://openai.test:{}/v1/chat/completions",
        reported.port()
    );
    let resp = call(&client_as(&w, "run-a"), &url, "budget-reported").await;
    assert_eq!(resp.status(), 200);
    let line = log_for("budget-reported").await;
    assert_eq!(line["tokens_estimated"], false, "{line}");
    assert_eq!(line["input_tokens"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_share_left_and_the_denials_with_client_labels_capped() {
    clear_of_a_minute_boundary().await;
    let origin = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let w = TestWarden::start(&budget_yaml(
        &[("openai", "openai.test", origin.port())],
        &[
            (
                "run-a",
                "{ llm_tokens_per_minute: 100, llm_tokens_total: 1000 }",
            ),
            ("run-b", "{ llm_tokens_per_minute: 10 }"),
        ],
        "limits:\n  metric_clients: 1\n",
    ))
    .await;
    let metrics = w.scrape().await;
    let left = |m: &str, client: &str, budget: &str| {
        series(
            m,
            "warden_budget_remaining_ratio",
            &[("client", client), ("budget", budget)],
        )
    };
    assert_eq!(
        left(&metrics, "run-a", "llm_tokens_per_minute"),
        Some(1.0),
        "full from the start: {metrics}"
    );
    let url = format!("https://openai.test:{}/v1/chat/completions", origin.port());
    let a = client_as(&w, "run-a");
    assert_eq!(call(&a, &url, "budget-metrics-a").await.status(), 200);
    let b = client_as(&w, "run-b");
    assert_eq!(call(&b, &url, "budget-metrics-b1").await.status(), 200);
    assert_eq!(call(&b, &url, "budget-metrics-b2").await.status(), 429);

    let metrics = w.scrape().await;
    assert_eq!(left(&metrics, "run-a", "llm_tokens_per_minute"), Some(0.82));
    assert_eq!(left(&metrics, "run-a", "llm_tokens_total"), Some(0.982));
    // Past `limits.metric_clients`, a client is `other`, in every metric with a client label;
    // it has no share-left gauge, since shares of several clients do not add up.
    assert!(!metrics.contains("client=\"run-b\""), "{metrics}");
    assert_eq!(left(&metrics, "other", "llm_tokens_per_minute"), None);
    assert_eq!(
        series(
            &metrics,
            "warden_budget_denials_total",
            &[("client", "other"), ("budget", "llm_tokens_per_minute")]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "warden_requests_total", &[("client", "other")]),
        Some(2.0),
        "{metrics}"
    );
    assert!(series(&metrics, "warden_requests_total", &[("client", "run-a")]).is_some());
    assert_eq!(
        series(
            &metrics,
            "warden_denials_total",
            &[("reason", "budget_exceeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &metrics,
            "warden_llm_requests_total",
            &[("outcome", "denied")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_counts_and_applies_the_new_budget() {
    clear_of_a_minute_boundary().await;
    let origin = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let yaml = |limit: u64| {
        budget_yaml(
            &[("openai", "openai.test", origin.port())],
            &[("run-a", &format!("{{ llm_tokens_per_minute: {limit} }}"))],
            "",
        )
    };
    let w = TestWarden::start_file(&yaml(10)).await;
    let url = format!("https://openai.test:{}/v1/chat/completions", origin.port());
    let c = client_as(&w, "run-a");
    assert_eq!(call(&c, &url, "budget-reload-1").await.status(), 200);
    assert_eq!(call(&c, &url, "budget-reload-2").await.status(), 429);
    // A higher budget: the 18 tokens spent still count, so one more call fits, not two.
    w.reload(&yaml(30)).expect("the new budget compiles");
    assert_eq!(call(&c, &url, "budget-reload-3").await.status(), 200);
    assert_eq!(call(&c, &url, "budget-reload-4").await.status(), 429);
    assert_eq!(origin.received().len(), 2);
    let metrics = w.scrape().await;
    assert_eq!(
        series(
            &metrics,
            "warden_budget_remaining_ratio",
            &[("client", "run-a"), ("budget", "llm_tokens_per_minute")]
        ),
        Some(0.0),
        "36 of 30 spent: {metrics}"
    );
    // A budget removed by a reload stops refusing, and stops being reported.
    w.reload(&yaml(0)).expect("no budget compiles");
    assert_eq!(call(&c, &url, "budget-reload-5").await.status(), 200);
    let metrics = w.scrape().await;
    assert!(
        !metrics.contains("warden_budget_remaining_ratio{"),
        "{metrics}"
    );
}

mod websocket {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<tokio_openssl::SslStream<tokio::net::TcpStream>>;

    async fn open(
        w: &TestWarden,
        port: u16,
        id: &str,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let authority = format!("openai.test:{port}");
        let tcp = w.connect_with(&authority, &proxy_auth("run-a")).await;
        let tls = tls_connect(tcp, "openai.test", &w.ca_pem).await;
        let mut req = format!("wss://{authority}/v1/responses")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        tokio_tungstenite::client_async(req, tls)
            .await
            .map(|(ws, _)| ws)
    }

    async fn next(ws: &mut Ws) -> Message {
        tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("message in time")
            .expect("stream open")
            .expect("valid frame")
    }

    fn create() -> Message {
        Message::text(
            json!({"type": "response.create", "model": "gpt-5", "input": "hi"}).to_string(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_response_counts_and_a_spent_budget_refuses_the_next_create_and_the_upgrade() {
        clear_of_a_minute_boundary().await;
        // Each response reports 20 + 8 tokens.
        let events = sse_data(&fixture("responses.sse", "read_file"));
        let origin = ResponsesWsOrigin::start(events.clone()).await;
        let w = TestWarden::start(&budget_yaml(
            &[("openai", "openai.test", origin.addr.port())],
            &[("run-a", "{ llm_tokens_per_minute: 30 }")],
            "",
        ))
        .await;
        let mut ws = open(&w, origin.addr.port(), "budget-ws").await.unwrap();
        ws.send(create()).await.unwrap();
        for e in &events {
            assert_eq!(next(&mut ws).await.into_text().unwrap().as_str(), e);
        }
        // 28 of 30: the socket goes on; the next response is counted as it ends.
        ws.send(create()).await.unwrap();
        for e in &events {
            assert_eq!(next(&mut ws).await.into_text().unwrap().as_str(), e);
        }
        // 56 of 30: the third `response.create` is not forwarded.
        ws.send(create()).await.unwrap();
        let error: Value = serde_json::from_str(&next(&mut ws).await.into_text().unwrap()).unwrap();
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["status"], 429);
        assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{error}");
        let failed: Value =
            serde_json::from_str(&next(&mut ws).await.into_text().unwrap()).unwrap();
        assert_eq!(failed["type"], "response.failed");
        match next(&mut ws).await {
            Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Policy),
            other => panic!("expected close 1008, got {other:?}"),
        }
        drop(ws);
        let created = |m: &Vec<String>| m.iter().filter(|t| t.contains("response.create")).count();
        assert_eq!(created(&origin.messages.lock().unwrap()), 2);
        let line = log_for("budget-ws").await;
        assert_eq!(line["reason"], "budget_exceeded", "{line}");
        assert_eq!(line["tokens_estimated"], false, "{line}");
        // A new socket is refused before the 101, with retry-after.
        match open(&w, origin.addr.port(), "budget-ws-2").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 429);
                assert!(resp.headers().contains_key("retry-after"));
            }
            other => panic!("expected 429, got {:?}", other.map(|_| ())),
        }
        let line = log_for("budget-ws-2").await;
        assert_eq!(line["status"], 429, "{line}");
        assert_eq!(line["reason"], "budget_exceeded", "{line}");
    }
}

fn fleet_state(url: &str, prefix: &str, on_unavailable: &str) -> String {
    format!("state:\n  backend: redis\n  url: {url}\n  key_prefix: \"{prefix}\"\n  on_unavailable: {on_unavailable}\n")
}

/// What is left of `fleet`'s daily token budget on `w`, as its gauge says.
async fn left_on(w: &TestWarden) -> Option<f64> {
    series(
        &w.scrape().await,
        "warden_budget_remaining_ratio",
        &[("client", "fleet"), ("budget", "llm_tokens_per_day")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_spent_through_two_instances_on_one_redis_holds_in_total() {
    clear_of_a_window_end(Duration::from_secs(86_400), Duration::from_secs(60)).await;
    let redis = RedisServer::start().await;
    let openai = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let yaml = budget_yaml(
        &[("openai", "openai.test", openai.port())],
        &[("fleet", "{ llm_tokens_per_day: 40 }")],
        &fleet_state(&redis.url(), "budget1:", "local"),
    );
    let (a, b) = (
        TestWarden::start(&yaml).await,
        TestWarden::start(&yaml).await,
    );
    let chat = format!("https://openai.test:{}/v1/chat/completions", openai.port());
    let (ca, cb) = (client_as(&a, "fleet"), client_as(&b, "fleet"));
    // B follows the client's counters from its first CONNECT (which spends nothing).
    let _tunnel = b
        .connect_with(
            &format!("openai.test:{}", openai.port()),
            &proxy_auth("fleet"),
        )
        .await;
    // Each call reports 18 tokens. A spends 18; B learns it.
    assert_eq!(call(&ca, &chat, "fleet-1").await.status(), 200);
    crate::clients_api::eventually(async || left_on(&b).await == Some(22.0 / 40.0)).await;
    // B spends 18 more (36 < 40 still admits); A learns the total.
    assert_eq!(call(&cb, &chat, "fleet-2").await.status(), 200);
    crate::clients_api::eventually(async || left_on(&a).await == Some(4.0 / 40.0)).await;
    assert_eq!(call(&ca, &chat, "fleet-3").await.status(), 200);
    // 54 counted by the fleet: B refuses, though it spent only 18 itself.
    crate::clients_api::eventually(async || left_on(&b).await == Some(0.0)).await;
    let refused = call(&cb, &chat, "fleet-4").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        openai.received().len(),
        3,
        "the refused call never reached the origin"
    );
    assert_eq!(log_for("fleet-4").await["reason"], "budget_exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_budgets_count_locally_or_fail_closed() {
    clear_of_a_window_end(Duration::from_secs(86_400), Duration::from_secs(60)).await;
    let mut redis = RedisServer::start().await;
    let openai = LlmOrigin::start(Script::json(200, CHAT_JSON)).await;
    let chat = format!("https://openai.test:{}/v1/chat/completions", openai.port());
    let start = |mode: &str, prefix: &str| {
        budget_yaml(
            &[("openai", "openai.test", openai.port())],
            &[("fleet", "{ llm_tokens_per_day: 1000 }")],
            &fleet_state(&redis.url(), prefix, mode),
        )
    };
    let local = TestWarden::start(&start("local", "down-local:")).await;
    let closed = TestWarden::start(&start("fail_closed", "down-closed:")).await;
    let (cl, cc) = (client_as(&local, "fleet"), client_as(&closed, "fleet"));
    assert_eq!(call(&cl, &chat, "down-0").await.status(), 200);
    assert_eq!(call(&cc, &chat, "down-1").await.status(), 200);
    redis.stop().await;
    // fail_closed refuses what a budget governs once it knows Redis is gone; local goes on.
    let mut n = 0;
    crate::clients_api::eventually(async || {
        n += 1;
        call(&cc, &chat, &format!("down-closed-{n}")).await.status() == 429
    })
    .await;
    assert_eq!(call(&cl, &chat, "down-local-1").await.status(), 200);
    // Back: the local counts are handed over, and fail_closed admits again.
    redis.run().await;
    crate::clients_api::eventually(async || {
        n += 1;
        call(&cc, &chat, &format!("down-closed-{n}")).await.status() == 200
    })
    .await;
    crate::clients_api::eventually(async || left_on(&local).await == Some(1.0 - 36.0 / 1000.0))
        .await;
}
