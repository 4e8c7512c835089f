//! The README's "Quick start: one sandbox", end to end: the real binary runs the real
//! `conf/quickstart.yaml` (only its listen ports, its upstream trust and the address
//! `api.openai.com` resolves to changed), the real OpenAI key in warden's environment alone;
//! a real shell sets itself up with `eval "$(warden env -c quickstart.yaml --client run-1)"`
//! and runs the README's commands: curl and the official OpenAI SDK reach api.openai.com
//! (a loopback stand-in on port 443) with the real key put in for whatever they sent, a host
//! off the allow list gets 403 `policy_denied_host`, and a shell set up by `warden ca`
//! (no login) gets 407. The key never reaches warden's log or the sandbox.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// The real key: only warden's environment holds it.
const REAL_KEY: &str = "sk-CANARY-quickstart-real-3b9d";

/// Bound on one sandbox command: Python importing the SDK on a busy 2-core machine.
const SANDBOX_WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- api.openai.com

/// What the stand-in saw of one request: `METHOD path` and its Authorization header.
type Calls = Arc<Mutex<Vec<(String, String)>>>;

/// api.openai.com's stand-in: HTTPS (a test-CA certificate for `api.openai.com`) on port 443
/// of a loopback address of its own. It answers `GET /v1/models` and `POST
/// /v1/chat/completions` as OpenAI does, and 401 `invalid_api_key` to any other key.
struct OpenAi {
    ip: Ipv4Addr,
    calls: Calls,
    _task: tokio::task::JoinHandle<()>,
}

/// Port 443 (the quick start's `api.openai.com` names no port) on 127.86.x.y, taken from the
/// process id so that concurrent runs of the suite do not collide; the next one when taken.
async fn listen_443() -> TcpListener {
    let pid = std::process::id();
    for i in 0..64u32 {
        let n = pid.wrapping_add(i);
        let ip = Ipv4Addr::new(127, 86, (n >> 8) as u8, (n as u8).max(1));
        match TcpListener::bind((ip, 443)).await {
            Ok(l) => return l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!(
                "binding {ip}:443 failed ({e}): the quick-start test serves api.openai.com on \
                 port 443, which needs root, CAP_NET_BIND_SERVICE or \
                 net.ipv4.ip_unprivileged_port_start <= 443"
            ),
        }
    }
    panic!("port 443 is taken on 64 loopback addresses");
}

impl OpenAi {
    async fn start() -> OpenAi {
        let listener = listen_443().await;
        let ip = match listener.local_addr().unwrap().ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("bound {other}"),
        };
        let acceptor = Arc::new(origin_acceptor(&origin_ca().issue(&["api.openai.com"])));
        let calls: Calls = Arc::default();
        let seen = calls.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| answer(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        OpenAi {
            ip,
            calls,
            _task: task,
        }
    }

    fn calls(&self) -> Vec<(String, String)> {
        self.calls.lock().unwrap().clone()
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    calls: Calls,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let call = format!("{} {}", req.method(), req.uri().path());
    calls.lock().unwrap().push((call.clone(), auth.clone()));
    let _ = req.into_body().collect().await;
    let (status, body) = if auth != format!("Bearer {REAL_KEY}") {
        let error = json!({"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"});
        (401, json!({ "error": error }))
    } else if call == "GET /v1/models" {
        let model = json!({"id": "gpt-5", "object": "model", "created": 1, "owned_by": "openai"});
        (200, json!({"object": "list", "data": [model]}))
    } else if call == "POST /v1/chat/completions" {
        let message = json!({"role": "assistant", "content": "hello from the stand-in"});
        let choice = json!({"index": 0, "message": message, "finish_reason": "stop"});
        let usage = json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9});
        let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-5", "choices": [choice], "usage": usage});
        (200, chat)
    } else {
        (
            404,
            json!({"error": {"message": "no such route", "type": "invalid_request_error"}}),
        )
    };
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

// ---------------------------------------------------------------- warden

/// `conf/quickstart.yaml` as the repository has it, with what a test must change: both
/// listen addresses (`proxy_port`, admin on port 0), the stand-in's CA trusted upstream
/// (`origin-ca.pem` beside the file), and `api.openai.com` resolved to the stand-in's
/// loopback address, which the private-network guard is told to allow. The CA files stay as
/// written: relative to the config's folder, a temp dir.
fn quickstart_yaml(proxy_port: u16, ip: Ipv4Addr) -> String {
    let text = std::fs::read_to_string(repo_dir().join("conf/quickstart.yaml"))
        .expect("conf/quickstart.yaml is readable");
    let swap = |text: String, from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "conf/quickstart.yaml no longer has one {from:?}"
        );
        text.replace(from, to)
    };
    let text = swap(
        text,
        "listen: \"127.0.0.1:9080\"",
        &format!("listen: \"127.0.0.1:{proxy_port}\""),
    );
    let text = swap(
        text,
        "listen: \"127.0.0.1:9090\"",
        "listen: \"127.0.0.1:0\"",
    );
    let text = swap(
        text,
        "\ntls:\n",
        "\ntls:\n  upstream_ca_file: origin-ca.pem\n",
    );
    swap(
        text,
        "\nnetwork:\n",
        &format!(
            "\nnetwork:\n  allow_cidrs: [\"{ip}/32\"]\n  resolve: {{ api.openai.com: \"{ip}\" }}\n"
        ),
    )
}

/// `warden run -c quickstart.yaml` in `dir`, the real key in its environment; killed on drop.
struct Warden(Launched);

impl Warden {
    fn start(dir: &Path) -> Warden {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["run", "-c", "quickstart.yaml"])
            .current_dir(dir)
            .env("OPENAI_API_KEY", REAL_KEY);
        Warden(tokio::task::block_in_place(|| Launched::start(cmd)))
    }

    /// The canonical line matching `pred`, among those already written or the next ones.
    fn line(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let canonical = |l: &str| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("kind").is_some())
        };
        if let Some(v) = self
            .0
            .drain()
            .iter()
            .filter_map(|l| canonical(l))
            .find(&pred)
        {
            return v;
        }
        let line = tokio::task::block_in_place(|| {
            self.0.wait_for(|l| canonical(l).is_some_and(|v| pred(&v)))
        });
        canonical(&line).unwrap()
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

// ---------------------------------------------------------------- the sandbox

/// `bash -c '<setup> && <commands>'` in `dir`: a shell with no proxy, trust or OpenAI
/// settings of the test's own, `warden` (the binary under test) and the venv's `python` on
/// its PATH.
async fn sandbox(dir: &Path, setup: &str, commands: &str) -> Output {
    let bin = Path::new(env!("CARGO_BIN_EXE_warden")).parent().unwrap();
    let venv = crate::clients::python();
    let path = format!(
        "{}:{}:{}",
        venv.parent().unwrap().display(),
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c")
        .arg(format!("{setup} && {commands}"))
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    without_client_env(&mut cmd);
    let child = cmd.spawn().expect("bash runs");
    tokio::time::timeout(SANDBOX_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`{commands}` did not finish within {SANDBOX_WAIT:?}"))
        .unwrap()
}

/// The sandbox's set-up, as the README has it.
const LOGGED_IN: &str = "eval \"$(warden env -c quickstart.yaml --client run-1)\"";

/// The same shell without the login: `warden ca` prints the proxy and CA settings alone.
const NO_LOGIN: &str = "eval \"$(warden ca -c quickstart.yaml)\"";

/// Runs `commands` in a sandbox and returns its stdout, failing the test if they failed.
async fn ok(dir: &Path, setup: &str, commands: &str) -> String {
    let out = sandbox(dir, setup, commands).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{commands}` failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_quick_start_injects_the_key_refuses_other_hosts_and_wants_the_login() {
    let openai = OpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("quickstart.yaml");
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    std::fs::write(&config, quickstart_yaml(0, openai.ip)).unwrap();
    let mut w = Warden::start(dir.path());
    // `warden env` reads the file warden runs, with the port it listens on.
    std::fs::write(&config, quickstart_yaml(w.0.proxy.port(), openai.ip)).unwrap();
    let d = dir.path();

    // The sandbox holds the login and the CA settings, never the key.
    let env = ok(d, LOGGED_IN, "env").await;
    assert!(
        env.contains(&format!(
            "HTTPS_PROXY=http://run-1:change-me-run-1@127.0.0.1:{}",
            w.0.proxy.port()
        )),
        "{env}"
    );
    assert!(
        !env.contains(REAL_KEY) && !env.contains("OPENAI_API_KEY"),
        "{env}"
    );

    // curl with no key, then with a dummy one: warden sets the real Authorization.
    for auth in ["", "-H 'Authorization: Bearer sk-dummy' "] {
        let cmd = format!("curl -sS {auth}https://api.openai.com/v1/models");
        let body = ok(d, LOGGED_IN, &cmd).await;
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{cmd}: {body}"));
        assert_eq!(v["data"][0]["id"], "gpt-5", "{cmd}: {v}");
    }
    let line = w.line(|v| v["path"] == "/v1/models" && v["status"].is_number());
    assert_eq!(line["client"], "run-1", "{line}");
    assert_eq!(line["host"], "api.openai.com", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["injected"], "authorization", "{line}");

    // The official SDK with a dummy key: the README's line, then a chat completion.
    let models = ok(
        d,
        LOGGED_IN,
        "OPENAI_API_KEY=dummy python -c 'import openai; print(openai.OpenAI().models.list().data[0].id)'",
    )
    .await;
    assert_eq!(models.trim(), "gpt-5");
    let chat = ok(
        d,
        LOGGED_IN,
        "OPENAI_API_KEY=dummy python -c 'import openai; r = openai.OpenAI().chat.completions.create(model=\"gpt-5\", messages=[{\"role\": \"user\", \"content\": \"hi\"}]); print(r.choices[0].message.content)'",
    )
    .await;
    assert_eq!(chat.trim(), "hello from the stand-in");
    let line = w.line(|v| v["path"] == "/v1/chat/completions" && v["status"].is_number());
    assert_eq!(line["client"], "run-1", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["injected"], "authorization", "{line}");

    // Every request reached api.openai.com with the real key, whatever the client sent.
    let calls = openai.calls();
    let want = [
        "GET /v1/models",
        "GET /v1/models",
        "GET /v1/models",
        "POST /v1/chat/completions",
    ];
    assert_eq!(
        calls.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        want
    );
    for (call, auth) in &calls {
        assert_eq!(auth, &format!("Bearer {REAL_KEY}"), "{call}");
    }

    // A host off the allow list: curl reports the CONNECT's 403, and -v shows the reason.
    let out = sandbox(
        d,
        LOGGED_IN,
        "curl -sS -v -w '%{http_connect}' https://example.com/",
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("CONNECT tunnel failed, response 403"),
        "{said}"
    );
    assert!(said.contains("details=\"policy_denied_host\""), "{said}");
    let line = w.line(|v| v["host"] == "example.com");
    assert_eq!(line["status"], 403, "{line}");
    assert_eq!(line["reason"], "policy_denied_host", "{line}");
    assert_eq!(line["client"], "run-1", "{line}");

    // Without the login: 407 auth_required, and api.openai.com sees nothing more.
    let out = sandbox(
        d,
        NO_LOGIN,
        "curl -sS -w '%{http_connect}' https://api.openai.com/v1/models",
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "407");
    let line = w.line(|v| v["reason"] == "auth_required");
    assert_eq!(line["status"], 407, "{line}");
    assert_eq!(line["host"], "api.openai.com", "{line}");
    assert_eq!(openai.calls().len(), want.len());

    let log = w.0.drain();
    assert!(log.iter().any(|l| l.contains("/v1/chat/completions")));
    for l in log {
        assert!(
            !l.contains(REAL_KEY),
            "the real key reached warden's log: {l}"
        );
    }
}
