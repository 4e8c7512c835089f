//! Chaining through a parent proxy (`upstream_proxy`): a real Squid started per test on
//! loopback, resolving the test names from its own hosts file.

use crate::common::*;
use base64::Engine;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const SQUID: &str = "/usr/sbin/squid";
const NCSA: &str = "/usr/lib/squid/basic_ncsa_auth";
/// The parent's password: it must never show up in warden's lines, metrics or answers.
const CANARY: &str = "parent-canary-5b1e7c";

/// A Squid on 127.0.0.1, killed on drop.
struct Squid {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Squid {
    /// Starts Squid, open to loopback clients, or (`auth`) only to `alice:CANARY`.
    async fn start(auth: bool) -> Squid {
        assert!(
            Path::new(SQUID).exists() && Path::new(NCSA).exists(),
            "squid is not installed: run .ci/deps (apt package squid)"
        );
        let dir = tempfile::tempdir().unwrap();
        // Squid drops to its own user: it must write its logs here.
        set_mode(dir.path(), 0o777);
        let port = closed_port().await;
        let d = dir.path().display();
        let names = ORIGIN_NAMES.join(" ");
        std::fs::write(dir.path().join("hosts"), format!("127.0.0.1 {names}\n")).unwrap();
        let access = if auth {
            let hash = Command::new("openssl")
                .args(["passwd", "-apr1", CANARY])
                .output()
                .expect("openssl runs");
            assert!(hash.status.success());
            let hash = String::from_utf8(hash.stdout).unwrap();
            std::fs::write(
                dir.path().join("htpasswd"),
                format!("alice:{}", hash.trim()),
            )
            .unwrap();
            format!(
                "auth_param basic program {NCSA} {d}/htpasswd\nauth_param basic realm parent\nacl authed proxy_auth REQUIRED\nhttp_access allow authed\n"
            )
        } else {
            "acl loopback src 127.0.0.0/8\nhttp_access allow loopback\n".to_string()
        };
        let conf = format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log squid\nstrip_query_terms off\ncache deny all\ncache_mem 8 MB\nhosts_file {d}/hosts\ncoredump_dir {d}\nshutdown_lifetime 0 seconds\n{access}http_access deny all\n"
        );
        std::fs::write(dir.path().join("squid.conf"), conf).unwrap();
        for f in ["hosts", "squid.conf", "htpasswd"] {
            if dir.path().join(f).exists() {
                set_mode(&dir.path().join(f), 0o644);
            }
        }
        let child = Command::new(SQUID)
            .args(["-N", "-f"])
            .arg(dir.path().join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("squid starts");
        let mut squid = Squid { child, port, dir };
        squid.wait_ready().await;
        squid
    }

    /// Waits (bounded) until Squid accepts connections.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("squid exited ({status}): {}", self.cache_log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "squid did not listen: {}",
                self.cache_log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cache_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cache.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Waits (bounded) for an access.log line containing `needle` (Squid writes a line when
    /// a transaction ends).
    async fn wait_access(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(l) = self.access_log().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no access.log line with {needle}:\n{}",
                self.access_log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `upstream_proxy` text for `url`; `auth` adds `alice:CANARY` as a static source.
fn parent_yaml(url: &str, auth: bool, no_proxy: &str) -> String {
    let auth = if auth {
        format!(", auth: {{ type: static, value: \"alice:{CANARY}\" }}")
    } else {
        String::new()
    };
    format!("upstream_proxy: {{ url: \"{url}\"{auth}, no_proxy: [{no_proxy}] }}\n")
}

/// A client trusting only the test origins' CA (for blind tunnels).
fn origin_trusting_client(w: &TestWarden) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(w.proxy_url()).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(origin_ca().pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Sends a raw HTTP/1.1 request through warden and returns the head and body.
async fn raw_request(w: &TestWarden, request: &str) -> (String, Vec<u8>) {
    let mut s = w.tcp().await;
    tokio::io::AsyncWriteExt::write_all(&mut s, request.as_bytes())
        .await
        .unwrap();
    read_response(&mut s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intercepted_https_goes_through_the_parents_connect_with_h2_and_the_origin_verified() {
    let squid = Squid::start(true).await;
    let origin = Origin::https_h2().await;
    let port = origin.port();
    // Squid logs a tunnel when it closes: the pooled connection is let go after 1s idle.
    let extra = format!(
        "limits:\n  idle_timeout: 1s\n{}",
        parent_yaml(&squid.url(), true, "")
    );
    let w = TestWarden::with("all", &extra).await;
    for _ in 0..2 {
        let r = w
            .client()
            .get(format!("https://origin.test:{port}/through"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    // ALPN ran inside the parent's tunnel, and the h2 connection was pooled for the second.
    assert!(seen.iter().all(|s| s.version == "HTTP/2.0"), "{seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.header("proxy-authorization").is_none()));
    // One h2 connection per lane the two tunnels landed on.
    assert_eq!(origin.connections(), w.lanes().min(2));
    drop(w);
    let line = squid
        .wait_access(&format!("CONNECT origin.test:{port}"))
        .await;
    assert!(line.contains(" alice "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_origin_behind_the_parent_fails_verification() {
    let squid = Squid::start(false).await;
    let origin = Origin::https_untrusted().await;
    let port = origin.port();
    let w = TestWarden::with("all", &parent_yaml(&squid.url(), false, "")).await;
    let r = w
        .client()
        .get(format!("https://origin.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "upstream_tls_error");
    assert!(origin.seen().is_empty(), "nothing was sent to the origin");
    squid
        .wait_access(&format!("CONNECT origin.test:{port}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_tunnel_goes_through_the_parent() {
    let squid = Squid::start(true).await;
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start(&default_yaml(
        "all",
        &format!("  passthrough: [\"direct.test:{port}\"]\n"),
        &parent_yaml(&squid.url(), true, ""),
    ))
    .await;
    let client = origin_trusting_client(&w);
    let r = client
        .get(format!("https://direct.test:{port}/bytes/2000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 2000);
    assert_eq!(w.mints(), 0);
    drop(client);
    let line = wait_log(move |v| v["kind"] == "tunnel" && v["port"] == port).await;
    assert_eq!(line["status"], 200);
    squid
        .wait_access(&format!("CONNECT direct.test:{port}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_to_the_parent_in_absolute_form_with_warden_s_credentials() {
    let squid = Squid::start(true).await;
    let origin = Origin::http().await;
    let port = origin.port();
    let w = TestWarden::with("all", &parent_yaml(&squid.url(), true, "")).await;
    // The agent's own Proxy-Authorization (for warden) must not reach the parent: Squid would
    // refuse bob with 407.
    let (head, _) = raw_request(
        &w,
        &format!("GET http://a.test:{port}/abs/path?q=1 HTTP/1.1\r\nHost: a.test:{port}\r\nProxy-Authorization: Basic Ym9iOndyb25n\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/abs/path?q=1");
    assert!(seen[0].header("proxy-authorization").is_none());
    let line = squid
        .wait_access(&format!("GET http://a.test:{port}/abs/path?q=1"))
        .await;
    assert!(
        line.contains(" alice "),
        "warden's credentials, not the agent's: {line}"
    );
    assert!(!squid.access_log().contains("CONNECT a.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_wants_credentials_refuses_with_a_reason_of_its_own() {
    let squid = Squid::start(true).await;
    let tls_origin = Origin::https().await;
    let http_origin = Origin::http().await;
    let (tls_port, http_port) = (tls_origin.port(), http_origin.port());
    let w = TestWarden::with("all", &parent_yaml(&squid.url(), false, "")).await;
    let r = w
        .client()
        .get(format!("https://origin.test:{tls_port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()["proxy-status"],
        "warden; error=connection_refused; details=\"parent_proxy_refused\""
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["reason"], "parent_proxy_refused");
    wait_ops_line(|l| {
        l.contains("upstream_proxy") && l.contains(&format!("origin.test:{tls_port} with 407"))
    })
    .await;
    // A plain request: Squid's 407 is the parent's, never relayed as if warden asked.
    let (head, body) = raw_request(
        &w,
        &format!("GET http://a.test:{http_port}/ HTTP/1.1\r\nHost: a.test:{http_port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_refusal(&head, &body, 502, "parent_proxy_refused");
    assert!(!head.to_ascii_lowercase().contains("proxy-authenticate"));
    assert!(tls_origin.seen().is_empty() && http_origin.seen().is_empty());
    let line = wait_log(move |v| v["port"] == http_port).await;
    assert_eq!(line["reason"], "parent_proxy_refused");
    // The blind path too.
    let w = TestWarden::start(&default_yaml(
        "all",
        &format!("  passthrough: [\"direct.test:{tls_port}\"]\n"),
        &parent_yaml(&squid.url(), false, ""),
    ))
    .await;
    let mut s = w.tcp().await;
    let req =
        format!("CONNECT direct.test:{tls_port} HTTP/1.1\r\nHost: direct.test:{tls_port}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 502, "parent_proxy_refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_hosts_go_direct_under_the_full_address_check() {
    let squid = Squid::start(false).await;
    let origin = Origin::http().await;
    let port = origin.port();
    // No loopback exception: only the parent (named by the operator) may be on loopback.
    let w = TestWarden::start(&network_yaml(
        "all",
        "",
        &parent_yaml(&squid.url(), false, &format!("\"b.test:{port}\"")),
    ))
    .await;
    let client = w.client();
    let through = client
        .get(format!("http://a.test:{port}/via-parent"))
        .send()
        .await
        .unwrap();
    assert_eq!(through.status(), 200);
    // b.test bypasses the parent and gets the usual check: it resolves to loopback.
    let direct = client
        .get(format!("http://b.test:{port}/direct"))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 403);
    let body: serde_json::Value = direct.json().await.unwrap();
    assert_eq!(body["reason"], "private_address");
    // A literal private address is checked even through the parent: warden can see it.
    let literal = client
        .get("http://169.254.169.254/latest/meta-data/")
        .send()
        .await
        .unwrap();
    assert_eq!(literal.status(), 403);
    let body: serde_json::Value = literal.json().await.unwrap();
    assert_eq!(body["reason"], "private_address");
    squid
        .wait_access(&format!("GET http://a.test:{port}/via-parent"))
        .await;
    let log = squid.access_log();
    assert!(!log.contains("b.test"), "{log}");
    assert!(!log.contains("169.254.169.254"), "{log}");
    assert_eq!(origin.seen().len(), 1);

    // With the loopback exception, the no_proxy host is reached directly.
    let w = TestWarden::with(
        "all",
        &parent_yaml(&squid.url(), false, &format!("\"b.test:{port}\"")),
    )
    .await;
    let r = w
        .client()
        .get(format!("http://b.test:{port}/direct"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.seen().len(), 2);
    assert!(!squid.access_log().contains("b.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_that_is_down_is_a_502_with_its_reason() {
    let down = format!("http://127.0.0.1:{}", closed_port().await);
    let tls_origin = Origin::https().await;
    let http_origin = Origin::http().await;
    let (tls_port, http_port) = (tls_origin.port(), http_origin.port());
    let w = TestWarden::start(&default_yaml(
        "all",
        "  passthrough: [\"direct.test:443\"]\n",
        &parent_yaml(&down, true, ""),
    ))
    .await;
    let client = w.client();
    for url in [
        format!("https://origin.test:{tls_port}/"),
        format!("http://a.test:{http_port}/"),
    ] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 502, "{url}");
        assert_eq!(
            r.headers()["proxy-status"],
            "warden; error=connection_refused; details=\"parent_proxy_unreachable\""
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "parent_proxy_unreachable", "{url}");
    }
    let mut s = w.tcp().await;
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"CONNECT direct.test:443 HTTP/1.1\r\nHost: direct.test:443\r\n\r\n",
    )
    .await
    .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert_refusal(&head, &body, 502, "parent_proxy_unreachable");
    let line = wait_log(move |v| v["port"] == http_port).await;
    assert_eq!(line["reason"], "parent_proxy_unreachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parents_secret_appears_in_no_line_metric_or_answer() {
    let squid = Squid::start(true).await;
    let origin = Origin::https().await;
    let http_origin = Origin::http().await;
    let port = origin.port();
    let http_port = http_origin.port();
    let admin = closed_port().await;
    let extra = format!(
        "admin:\n  listen: 127.0.0.1:{admin}\n{}",
        parent_yaml(&squid.url(), true, "")
    );
    let w = TestWarden::with("all", &extra).await;
    let client = w.client();
    let mut answers = Vec::new();
    for url in [
        format!("https://origin.test:{port}/ok"),
        format!("http://a.test:{http_port}/ok"),
    ] {
        let r = client.get(&url).send().await.unwrap();
        answers.push(format!("{:?}", r.headers()));
        answers.push(r.text().await.unwrap());
    }
    // A failing path too: the parent down, with the same secret configured.
    let down = format!("http://127.0.0.1:{}", closed_port().await);
    let failing = TestWarden::with("all", &parent_yaml(&down, true, "")).await;
    let r = failing
        .client()
        .get(format!("https://origin.test:{port}/fail"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    answers.push(r.text().await.unwrap());
    wait_log(move |v| v["port"] == http_port).await;
    let metrics = w.scrape().await;
    assert_no_parent_secret(&[
        ("canonical lines", all_log_lines().join("\n")),
        ("operational lines", all_ops_lines().join("\n")),
        ("metrics", metrics),
        ("answers", answers.join("\n")),
    ]);
}

/// Asserts no `(what, text)` holds the parent's password, bare or Base64-encoded.
fn assert_no_parent_secret(haystacks: &[(&str, String)]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let forms = [
        CANARY.to_string(),
        b64.encode(format!("alice:{CANARY}")),
        b64.encode(CANARY),
    ];
    for (what, text) in haystacks {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} hold the parent's secret"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parents_login_from_a_process_source_reaches_squid_and_no_line() {
    use std::os::unix::fs::PermissionsExt;
    let squid = Squid::start(true).await;
    let origin = Origin::https().await;
    let http_origin = Origin::http().await;
    let (port, http_port) = (origin.port(), http_origin.port());
    // The script prints `user:password`, as `upstream_proxy.auth` takes it, and counts its runs.
    let dir = tempfile::tempdir().unwrap();
    let (script, runs) = (dir.path().join("parent.sh"), dir.path().join("runs"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho x >> \"$1\"\necho \"alice:{CANARY}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = format!(
        "{{ type: process, command: ['{}', '{}'], ttl: 1h }}",
        script.display(),
        runs.display()
    );
    // Squid logs a tunnel when it closes: the pooled connection is let go after 1s idle.
    let extra = format!(
        "admin:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 1s\nupstream_proxy: {{ url: \"{}\", auth: {source} }}\n",
        squid.url()
    );
    let w = TestWarden::with("all", &extra).await;
    let client = w.client();
    let mut answers = Vec::new();
    for url in [
        format!("http://a.test:{http_port}/proc"),
        format!("https://origin.test:{port}/proc"),
    ] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        answers.push(format!("{:?}", r.headers()));
        answers.push(r.text().await.unwrap());
    }
    assert_eq!(origin.seen().len() + http_origin.seen().len(), 2);
    let line = squid
        .wait_access(&format!("GET http://a.test:{http_port}/proc"))
        .await;
    assert!(line.contains(" alice "), "{line}");
    let runs = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(runs.lines().count(), 1, "one run, cached for its ttl");
    wait_log(move |v| v["port"] == port).await;
    let metrics = w.scrape().await;
    drop(client);
    drop(w);
    let line = squid
        .wait_access(&format!("CONNECT origin.test:{port}"))
        .await;
    assert!(line.contains(" alice "), "{line}");
    assert_no_parent_secret(&[
        ("canonical lines", all_log_lines().join("\n")),
        ("operational lines", all_ops_lines().join("\n")),
        ("metrics", metrics),
        ("answers", answers.join("\n")),
    ]);
}

#[test]
fn check_names_the_bad_upstream_proxy_keys() {
    let cases = [
        (
            "upstream_proxy: { url: \"https://corp:3128\" }",
            "upstream_proxy.url",
        ),
        (
            "upstream_proxy: { url: \"http://bob:pw-canary-9@corp:3128\" }",
            "upstream_proxy.url",
        ),
        (
            "upstream_proxy: { url: \"http://corp\", auth: { type: process, command: [] } }",
            "upstream_proxy.auth.command",
        ),
        (
            "upstream_proxy: { url: \"http://corp\", bypass: [] }",
            "bypass",
        ),
        (
            "upstream_proxy: { url: \"http://corp\", no_proxy: [\"*.*.x\"] }",
            "no_proxy",
        ),
    ];
    for (section, key) in cases {
        let (code, text) = check_config(&format!("proxy:\n  listen: 127.0.0.1:0\n{section}\n"));
        assert_eq!(code, Some(1), "{section}: {text}");
        assert!(text.contains(key), "{section}: {text}");
        assert!(
            !text.contains("pw-canary-9"),
            "the URL's password was echoed: {text}"
        );
    }
    let (code, text) = check_config(
        "proxy:\n  listen: 127.0.0.1:0\nupstream_proxy: { url: \"http://corp-proxy\", auth: { type: env, var: PARENT_AUTH }, no_proxy: [\"*.internal.test\"] }\n",
    );
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_direct_connection_is_not_reused_once_a_parent_carries_the_origin() {
    let squid = Squid::start(false).await;
    let origin = Origin::https().await;
    let port = origin.port();
    let w = TestWarden::start_file(&default_yaml("all", "", "limits:\n  idle_timeout: 1s\n")).await;
    let client = w.client();
    let url = format!("https://origin.test:{port}/");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(origin.connections(), 1);
    w.reload(&default_yaml(
        "all",
        "",
        &format!(
            "limits:\n  idle_timeout: 1s\n{}",
            parent_yaml(&squid.url(), false, "")
        ),
    ))
    .unwrap();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        origin.connections(),
        2,
        "the direct connection was not reused"
    );
    squid
        .wait_access(&format!("CONNECT origin.test:{port}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_websocket_upgrade_rides_the_parents_connect_and_echoes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let squid = Squid::start(true).await;
    let origin = WsOrigin::start(false).await;
    let port = origin.addr.port();
    let w = TestWarden::with("all", &parent_yaml(&squid.url(), true, "")).await;
    // ws:// in absolute form, the agent's own login for warden on it: Squid would refuse bob.
    let authority = format!("ws.test:{port}");
    let mut ws = crate::websocket::plain_ws_with(
        &w,
        &authority,
        "parent-ws",
        "Proxy-Authorization: Basic Ym9iOndyb25n\r\n",
    )
    .await;
    for msg in [
        Message::text("through the parent"),
        Message::binary(vec![5u8; 70_000]),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let echoed = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("echo arrived")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
    ws.close(None).await.unwrap();
    drop(ws);
    let line = log_for("parent-ws").await;
    assert_eq!(line["kind"], "websocket", "{line}");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["upgraded"], true, "{line}");
    // An upgrade is not a plain request: it rides a CONNECT, as warden, never in absolute form.
    let connect = squid.wait_access(&format!("CONNECT ws.test:{port}")).await;
    assert!(connect.contains(" alice "), "{connect}");
    assert!(!squid.access_log().contains("GET http://ws.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_reach_their_targets_through_the_parent() {
    let squid = Squid::start(false).await;
    let tls_origin = Origin::https().await;
    let http_origin = Origin::http().await;
    let (tls_port, http_port) = (tls_origin.port(), http_origin.port());
    let relays = format!(
        "relays:\n  - {{ name: secure, target: \"https://origin.test:{tls_port}/base\" }}\n  - {{ name: plain, target: \"http://a.test:{http_port}/api\" }}\n"
    );
    // Squid logs a tunnel when it closes: the pooled connection is let go after 1s idle.
    let extra = format!(
        "limits:\n  idle_timeout: 1s\n{relays}{}",
        parent_yaml(&squid.url(), false, "")
    );
    let w = TestWarden::with("auto", &extra).await;
    // The agent speaks to warden directly, as a NO_PROXY client does.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap();
    for (name, path) in [
        ("secure", "/relay/secure/x?q=1"),
        ("plain", "/relay/plain/y?q=2"),
    ] {
        let r = client
            .get(format!("http://{}{path}", w.addr))
            .header("x-request-id", format!("parent-relay-{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let line = log_for(&format!("parent-relay-{name}")).await;
        assert_eq!(line["kind"], "relay", "{line}");
        assert_eq!(line["relay"], name, "{line}");
        assert_eq!(line["status"], 200, "{line}");
    }
    assert_eq!(tls_origin.seen()[0].uri, "/base/x?q=1");
    assert_eq!(http_origin.seen()[0].uri, "/api/y?q=2");
    // The HTTPS target through a CONNECT (logged when the tunnel closes), the plain one in
    // absolute form.
    squid
        .wait_access(&format!("GET http://a.test:{http_port}/api/y?q=2"))
        .await;
    drop(client);
    drop(w);
    squid
        .wait_access(&format!("CONNECT origin.test:{tls_port}"))
        .await;
}
