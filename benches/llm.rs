//! SSE tool-call policy cost, with criterion: throughput (MB/s) over a long recorded-shape
//! Anthropic stream, against a baseline that only copies the same chunks, and the added latency
//! of one text-delta chunk through the policy. `cargo bench --bench llm`.

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::sync::Arc;
use warden::llm::stream::SsePolicy;
use warden::llm::{compile, Api, LlmConfig, LlmPolicy};

fn policy() -> Arc<LlmPolicy> {
    let entries: Vec<LlmConfig> = serde_yaml::from_str(
        "- { host: api.test, provider: anthropic, deny_tools: [bash, 'computer_*'], deny_arguments: [{ tool: 'sh*', pattern: 'rm\\s+-rf' }] }",
    )
    .expect("bench config");
    let rules = compile(&entries, "llm").expect("bench config compiles");
    let dest = warden::target::parse_authority(b"api.test:443", None).expect("authority");
    rules.for_dest(&dest).expect("entry").clone()
}

fn delta(i: usize) -> String {
    format!(
        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of a long answer, \"}}}}\n\n"
    )
}

/// About 1 MB: text deltas with an allowed tool call (arguments in 20 pieces) every 500.
fn stream() -> Vec<u8> {
    let mut s = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n");
    let mut i = 0;
    while s.len() < 1 << 20 {
        s.push_str(&delta(i));
        if i % 500 == 499 {
            let idx = i / 500 + 1;
            s.push_str(&format!("event: content_block_start\ndata: {{\"type\":\"content_block_start\",\"index\":{idx},\"content_block\":{{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"read_file\",\"input\":{{}}}}}}\n\n"));
            for _ in 0..20 {
                s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":{idx},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"path/to/some/file\\\",\"}}}}\n\n"));
            }
            s.push_str(&format!("event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":{idx}}}\n\n"));
        }
        i += 1;
    }
    s.into_bytes()
}

fn throughput(c: &mut Criterion) {
    let data = stream();
    let mut group = c.benchmark_group("sse_stream");
    group.throughput(Throughput::Bytes(data.len() as u64));
    for chunk in [256usize, 4096] {
        let chunks: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
        group.bench_with_input(
            BenchmarkId::new("copy_baseline", chunk),
            &chunks,
            |b, chunks| {
                b.iter(|| {
                    let mut n = 0;
                    for c in chunks {
                        n += black_box(Bytes::copy_from_slice(c)).len();
                    }
                    n
                })
            },
        );
        let p = policy();
        group.bench_with_input(BenchmarkId::new("policy", chunk), &chunks, |b, chunks| {
            b.iter(|| {
                let mut sse = SsePolicy::new(Api::Messages, p.clone(), 10 << 20);
                let mut n = 0;
                for (i, c) in chunks.iter().enumerate() {
                    n += sse.feed(c, i + 1 == chunks.len()).len();
                }
                assert_eq!(n, data.len());
                n
            })
        });
    }
    group.finish();
}

fn per_chunk(c: &mut Criterion) {
    let one = Bytes::from(delta(7));
    let mut group = c.benchmark_group("sse_chunk");
    group.bench_function("copy_baseline", |b| {
        b.iter(|| black_box(Bytes::copy_from_slice(&one)))
    });
    let mut sse = SsePolicy::new(Api::Messages, policy(), 10 << 20);
    group.bench_function("policy_text_delta", |b| {
        b.iter(|| {
            let out = sse.feed(black_box(&one), false);
            debug_assert_eq!(out.len(), one.len());
            out
        })
    });
    group.finish();
}

criterion_group!(benches, throughput, per_chunk);
criterion_main!(benches);
