//! Micro-benchmarks of the per-request work on warden's hot path, through the library API,
//! with criterion (`cargo bench --bench hot_path`). Each group names its unit: requests,
//! decisions, addresses, leaves or lines per second. SSE policy lives in `benches/llm.rs`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::net::IpAddr;
use std::sync::Arc;
use warden::policy::{classify_addr, GrantHosts, NetworkConfig};
use warden::target::{classify_connect, classify_request, parse_authority, parse_host};
use warden::telemetry::{CanonicalLog, Kind, LogFormat};
use warden::tls::{CertAuthority, Leaves};

fn heads(c: &mut Criterion) {
    let mut g = c.benchmark_group("front_door");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify_connect", |b| {
        b.iter(|| classify_connect(black_box(b"api.example.com:443")))
    });
    g.bench_function("classify_absolute_request", |b| {
        let hosts: [&[u8]; 1] = [b"api.example.com"];
        b.iter(|| {
            classify_request(
                black_box(b"http://api.example.com/v1/repos/a/b?page=2"),
                &hosts,
                None,
            )
        })
    });
    g.finish();
}

fn rules(c: &mut Criterion) {
    let mut yaml = String::from("policy: strict\nallow: ['*.example.com']\nrules:\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - \"allow GET,HEAD host{i}.example.com /repos/**\"\n"
        ));
    }
    yaml.push_str("  - \"deny * *.example.com /**\"\n");
    let cfg: NetworkConfig = serde_yaml::from_str(&yaml).expect("bench rules parse");
    let policy = cfg
        .compile(&GrantHosts::new())
        .expect("bench rules compile");
    let last = parse_authority(b"host999.example.com:443", None).expect("authority");
    let none = parse_authority(b"other.example.com:443", None).expect("authority");
    let mut g = c.benchmark_group("rules_1000");
    g.throughput(Throughput::Elements(1));
    g.bench_function("host_decision", |b| {
        b.iter(|| policy.decide_host(black_box(&last)))
    });
    g.bench_function("request_matching_rule_1000", |b| {
        b.iter(|| policy.decide_request("GET", black_box(&last), "/repos/a/%2e%2e/b"))
    });
    g.bench_function("request_falling_to_the_last_deny", |b| {
        b.iter(|| policy.decide_request("POST", black_box(&none), "/x"))
    });
    g.finish();
}

fn addresses(c: &mut Criterion) {
    let ips: Vec<IpAddr> = [
        "93.184.216.34",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "2606:4700::1111",
        "::ffff:127.0.0.1",
        "fd00::1",
        "64:ff9b::a9fe:a9fe",
    ]
    .iter()
    .map(|s| s.parse().expect("ip"))
    .collect();
    let mut g = c.benchmark_group("address_class");
    g.throughput(Throughput::Elements(ips.len() as u64));
    g.bench_function("classify_8", |b| {
        b.iter(|| {
            for ip in &ips {
                black_box(classify_addr(*ip));
            }
        })
    });
    g.finish();
}

fn leaves(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Arc::new(
        CertAuthority::load_or_create(&dir.path().join("ca.crt"), &dir.path().join("ca.key"), true)
            .expect("bench CA"),
    );
    let leaves = Leaves::new(10_000);
    let host = parse_host("api.example.com").expect("host");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(leaves.leaf_for(&ca, &host, |_| {}))
        .expect("first mint");
    let mut g = c.benchmark_group("leaf");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mint_ecdsa_p256", |b| {
        b.iter(|| ca.mint_leaf(black_box(&host)))
    });
    g.bench_function("cache_hit", |b| {
        b.iter(|| rt.block_on(leaves.leaf_for(&ca, black_box(&host), |_| {})))
    });
    g.finish();
}

fn log_lines(c: &mut Criterion) {
    let mut line = CanonicalLog::new(Kind::Intercepted);
    line.ts = "2026-11-22T20:27:40.760Z".into();
    line.request_id = Some("be679b528aa04c42bf709a54e4c2bf61".into());
    line.client = Some("run-42".into());
    line.client_addr = Some("127.0.0.1:43788".into());
    line.method = Some("GET".into());
    line.scheme = Some("https");
    line.host = Some("api.example.com".into());
    line.port = Some(443);
    line.path = Some("/v1/models?limit=[redacted]".into());
    line.status = Some(200);
    line.bytes_out = 616;
    line.intercepted = true;
    line.injected = Some("authorization".into());
    let mut g = c.benchmark_group("canonical_log");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_json", |b| {
        b.iter(|| black_box(&line).render(LogFormat::Json))
    });
    g.bench_function("render_logfmt", |b| {
        b.iter(|| black_box(&line).render(LogFormat::Text))
    });
    g.finish();
}

/// An agent's API request head, as the header benchmarks start from.
fn agent_head() -> pingora_http::RequestHeader {
    let mut head = pingora_http::RequestHeader::build("POST", b"/v1/messages", None).expect("head");
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "agent/1.0"),
        ("content-type", "application/json"),
        ("accept", "*/*"),
        ("x-debug", "1"),
    ] {
        head.insert_header(k, v).expect("header");
    }
    head
}

fn injection(c: &mut Criterion) {
    let entries: Vec<warden::headers::HeaderRuleConfig> = serde_yaml::from_str(
        "- { host: api.example.com, set: { anthropic-beta: tools, x-team: agents }, remove: [x-debug] }",
    )
    .expect("bench header rules");
    let rules = warden::headers::compile(&entries, "headers").expect("compile");
    let dest = parse_authority(b"api.example.com:443", None).expect("authority");
    let mut base = agent_head();
    base.insert_header("proxy-authorization", "Basic cnVuLTQyOnRva2Vu")
        .expect("header");
    let credential = http::HeaderValue::from_static("Bearer sk-real-secret-value");
    let mut g = c.benchmark_group("header_injection");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rules_and_credential", |b| {
        b.iter(|| {
            let mut req = base.clone();
            req.remove_header("proxy-authorization");
            for rule in rules.for_dest(&dest) {
                for name in &rule.remove {
                    req.remove_header(name);
                }
                for (name, value) in &rule.set {
                    req.insert_header(name.clone(), value.clone()).expect("set");
                }
            }
            req.insert_header(http::header::AUTHORIZATION, credential.clone())
                .expect("inject");
            req
        })
    });
    g.finish();
}

/// The plan of an admission that reads no refreshing source, so it never waits.
fn admitted(
    admission: impl std::future::Future<
        Output = Result<warden::admission::RequestPlan, warden::admission::Refusal>,
    >,
) -> warden::admission::RequestPlan {
    use futures_util::FutureExt;
    admission
        .now_or_never()
        .expect("a static credential is read without waiting")
        .expect("admitted")
}

/// A request's plan and its upstream head edits, as `request_filter` and
/// `upstream_request_filter` compute them: admission (target, identity, policy, the credential
/// read, the scrub set from the runtime's maskers) and `forward::upstream_edits`.
fn planning(c: &mut Criterion) {
    use warden::admission::{admit_request, RequestHead};
    use warden::forward::{upstream_edits, Incoming};
    use warden::target::TunnelIdentity;
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "proxy: {{ listen: 127.0.0.1:0 }}\ntls: {{ ca_cert: {0}/ca.crt, ca_key: {0}/ca.key }}\nnetwork: {{ rules: ['deny DELETE api.example.com /**'] }}\nheaders:\n  - {{ host: api.example.com, set: {{ anthropic-beta: tools, x-team: agents }}, remove: [x-debug] }}\ncredentials:\n  - {{ host: api.example.com, source: {{ type: static, value: sk-real-secret-value }} }}\n",
        dir.path().display()
    );
    let snap = warden::Config::parse(&yaml, dir.path())
        .expect("bench config")
        .compile(warden::CompileOptions { create_ca: true })
        .expect("compile");
    let runtime = warden::runtime::Runtime::new(&snap);
    let tunnel = TunnelIdentity {
        authority: parse_authority(b"api.example.com:443", None).expect("authority"),
        client: None,
        sni: Some("api.example.com".into()),
    };
    let raw = b"POST /v1/messages HTTP/1.1\r\nhost: api.example.com\r\nuser-agent: agent/1.0\r\ncontent-type: application/json\r\naccept: */*\r\nx-debug: 1\r\ncontent-length: 2\r\n\r\n";
    let hosts: [&[u8]; 1] = [b"api.example.com"];
    let head = RequestHead {
        method: "POST",
        raw_target: b"/v1/messages",
        hosts: &hosts,
        proxy_auth: &[],
        authorization: &[],
        raw,
        tunnel: Some(&tunnel),
        upgrade: false,
        scheme: None,
    };
    let req = agent_head();
    let mut g = c.benchmark_group("planning");
    g.throughput(Throughput::Elements(1));
    g.bench_function("admit_request", |b| {
        b.iter(|| admitted(admit_request(&snap, &runtime, &[], black_box(&head))))
    });
    let plan = admitted(admit_request(&snap, &runtime, &[], &head));
    g.bench_function("upstream_edits", |b| {
        b.iter(|| {
            let incoming = Incoming {
                uri: &req.uri,
                headers: &req.headers,
                upgrade: false,
                has_body: true,
                request_id: "be679b528aa04c42bf709a54e4c2bf61",
                checks_frames: false,
            };
            upstream_edits(black_box(&plan), incoming).expect("edits")
        })
    });
    g.finish();
}

/// Masking echoed secrets: building the masker for one request's credential (secret and header
/// value), and scanning a 64 KiB response that does not echo it, in 16 KiB reads and in
/// 128-byte reads cut anywhere (SSE events usually end in a newline, which is cheaper). `raw`
/// masks the two values as written; `encoded` masks both in every form `Replacer::masking`
/// knows, a superset of the needles warden uses (it adds only the base64 of the header value).
/// `lookup_cached` is what a request pays once its set is built: the snapshot's `Maskers`.
fn echo_mask(c: &mut Criterion) {
    use warden::scrub::{Maskers, Replacer};
    let secret = b"ghp_16C7e42F292c6912E7710c838347Ae178B4a".to_vec();
    let value = [b"Bearer ".as_slice(), &secret].concat();
    type Make = fn(Vec<Vec<u8>>) -> Replacer;
    let sets: [(&str, Make); 2] = [
        ("raw", |s| Replacer::masking_verbatim(s)),
        ("encoded", |s| Replacer::masking(s)),
    ];
    let line = b"{\"id\":\"msg_01\",\"text\":\"The quick brown fox 0123456789+/=\"},\n";
    let body: Vec<u8> = (0..64 * 1024).map(|i| line[i % line.len()]).collect();
    let mut g = c.benchmark_group("echo_mask");
    for (name, make) in sets {
        let secrets = vec![secret.clone(), value.clone()];
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("build_{name}"), |b| {
            b.iter(|| make(black_box(secrets.clone())))
        });
        g.throughput(Throughput::Bytes(body.len() as u64));
        for (read, label) in [(16 * 1024, "16k"), (128, "sse")] {
            g.bench_function(format!("scan_{name}_{label}"), |b| {
                b.iter_batched(
                    || make(secrets.clone()),
                    |mut r| {
                        let mut n = 0;
                        let mut chunks = body.chunks(read).peekable();
                        while let Some(chunk) = chunks.next() {
                            n += r.feed(chunk, chunks.peek().is_none()).len();
                        }
                        n
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    let maskers = Maskers::default();
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup_cached", |b| {
        b.iter(|| maskers.masking(vec![secret.clone()], vec![value.clone()]))
    });
    g.finish();
}

criterion_group!(
    benches, heads, rules, addresses, leaves, log_lines, injection, planning, echo_mask
);
criterion_main!(benches);
