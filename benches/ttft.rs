//! Time to first token through warden with LLM policy on vs off, in one run, as a ratio
//! (median with policy / median without). Both configs intercept the same HTTPS fake provider,
//! which answers every call with an SSE stream whose first text delta comes at once; the client
//! stops timing when that delta arrives. Run with `cargo bench --bench ttft`; under
//! `cargo test` it only checks that it builds. Loopback only, bounded in count.

#[path = "../tests/integration/common.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

const CALLS: usize = 300;

fn config(port: u16, llm: bool) -> String {
    let llm = if llm {
        format!("llm:\n  - {{ host: \"anthropic.test:{port}\", provider: anthropic, allow_models: [\"claude-*\"], deny_tools: [bash] }}\n")
    } else {
        String::new()
    };
    default_yaml("all", "", &llm)
}

async fn first_token(client: &reqwest::Client, url: &str) -> Duration {
    let body = serde_json::json!({"model": "claude-x", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let started = Instant::now();
    let mut resp = client.post(url).json(&body).send().await.expect("call");
    let mut got = Vec::new();
    let mut elapsed = None;
    while let Some(chunk) = resp.chunk().await.expect("body") {
        got.extend_from_slice(&chunk);
        if elapsed.is_none() && got.windows(12).any(|w| w == b"Let me look.") {
            elapsed = Some(started.elapsed());
        }
    }
    elapsed.expect("the first delta arrived")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let Some(rt) = bench_runtime() else {
        return;
    };
    rt.block_on(async {
        let text = fixture("anthropic.sse", "read_file");
        let mut thinking = Script::sse_events(&text);
        thinking
            .steps
            .insert(0, Step::Pause(Duration::from_millis(20)));
        for (label, script) in [
            ("one event per write", Script::sse_events(&text)),
            ("64-byte writes", Script::sse(&text, 64)),
            ("20 ms before the first event", thinking),
        ] {
            run(label, script).await;
        }
    });
}

async fn run(label: &str, script: Script) {
    {
        let origin = LlmOrigin::start(script).await;
        let port = origin.port();
        let on = TestWarden::start(&config(port, true)).await;
        let off = TestWarden::start(&config(port, false)).await;
        let (c_on, c_off) = (on.client(), off.client());
        let url = format!("https://anthropic.test:{port}/v1/messages");
        for _ in 0..30 {
            first_token(&c_on, &url).await;
            first_token(&c_off, &url).await;
        }
        let (mut with, mut without) = (Vec::new(), Vec::new());
        // Alternate so drift on the machine hits both sides alike.
        for _ in 0..CALLS {
            with.push(first_token(&c_on, &url).await);
            without.push(first_token(&c_off, &url).await);
        }
        let (m_on, m_off) = (median(with), median(without));
        println!(
            "{label}: ttft median policy on {:.3} ms, off {:.3} ms, ratio {:.3} ({CALLS} calls each)",
            m_on.as_secs_f64() * 1e3,
            m_off.as_secs_f64() * 1e3,
            m_on.as_secs_f64() / m_off.as_secs_f64()
        );
    }
}
