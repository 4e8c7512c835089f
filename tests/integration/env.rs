//! `warden env`: its output, sourced by a real shell, sends each real client through warden
//! unmodified — curl, `git clone` over smart HTTP, Python requests and httpx, Node 24's
//! `fetch`, Java's `HttpClient` — logged in as a `proxy.auth` client whose token is full of
//! shell and URL metacharacters; sh and fish give back every value byte for byte, and the
//! PowerShell form is checked; the warnings, `--no-proxy` and the token's only places.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// Bound on one client's run: a JVM compiling its source file on a busy 2-core machine.
const CLIENT_WAIT: Duration = Duration::from_secs(120);

/// The client's token: a canary with every kind of shell, URL and JVM metacharacter.
const TOKEN: &str = "CANARY-env-5e2 'q\"$(x)`;|&*?\\ ~:@/%#!";

/// The client the proxy URLs log in as.
const CLIENT: &str = "agent";

/// warden with `proxy.auth` (one client, [`TOKEN`]) or without, intercepting everything,
/// `origin.test` resolved to loopback; and the config file `warden env` reads: the same one
/// with the port warden is listening on.
struct Setup {
    w: TestWarden,
    env_config: PathBuf,
    /// The second client's token file (`unreadable`), removed by the test that needs it so.
    other_token: PathBuf,
    _tokens: tempfile::TempDir,
}

impl Setup {
    async fn start(auth: bool) -> Setup {
        // Compiling reads every token, so the second client's file exists until a test
        // removes it.
        let tokens = tempfile::tempdir().unwrap();
        let other_token = tokens.path().join("other.token");
        std::fs::write(&other_token, "other-token\n").unwrap();
        let mut yaml = default_yaml("all", "", "");
        if auth {
            let token = TOKEN.replace('\'', "''");
            yaml = yaml.replace(
                "proxy:\n  listen: 127.0.0.1:0\n",
                &format!(
                    "proxy:\n  listen: 127.0.0.1:0\n  auth:\n    clients:\n      - name: {CLIENT}\n        token: {{ type: static, value: '{token}' }}\n      - name: unreadable\n        token: {{ type: file, path: {} }}\n",
                    other_token.display()
                ),
            );
        }
        let w = TestWarden::start_file(&yaml).await;
        let text = std::fs::read_to_string(w.dir.path().join("warden.yaml")).unwrap();
        let env_config = w.dir.path().join("env.yaml");
        std::fs::write(
            &env_config,
            text.replace(
                "listen: 127.0.0.1:0",
                &format!("listen: 127.0.0.1:{}", w.addr.port()),
            ),
        )
        .unwrap();
        Setup {
            w,
            env_config,
            other_token,
            _tokens: tokens,
        }
    }

    /// `warden env -c <env config> [args]`, run to completion.
    fn warden_env(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("env")
            .arg("-c")
            .arg(&self.env_config)
            .args(args)
            .output()
            .expect("warden binary runs")
    }

    /// `warden env --client agent [args]` written to a file for `sh`; its path.
    fn env_script(&self, args: &[&str]) -> PathBuf {
        let mut all = vec!["--client", CLIENT];
        all.extend_from_slice(args);
        let out = self.warden_env(&all);
        assert!(
            out.status.success(),
            "warden env failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = self.w.dir.path().join("env.sh");
        std::fs::write(&file, &out.stdout).unwrap();
        file
    }

    /// The values `warden env` prints, from the library itself.
    fn expected(&self, request: &warden::client_env::EnvRequest) -> warden::client_env::ClientEnv {
        let cfg = warden::Config::load(&self.env_config).unwrap();
        let snap = cfg
            .compile(warden::CompileOptions { create_ca: true })
            .unwrap();
        let files = warden::client_env::write_ca_files(
            &snap,
            warden::client_env::DEFAULT_TRUSTSTORE_PASSWORD,
        )
        .unwrap();
        warden::client_env::client_env(&cfg, &snap, &files, request).unwrap()
    }
}

/// A command with no proxy or trust settings of the test process's own.
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    without_client_env(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `sh -c '. <env script> && exec program args…'`: the program, unmodified, in the
/// environment `warden env` printed.
fn sourced(script: &Path, program: &[&str]) -> Command {
    let mut cmd = clean("sh");
    cmd.arg("-c")
        .arg(". \"$0\" && exec \"$@\"")
        .arg(script)
        .args(program);
    cmd
}

async fn finish(mut cmd: Command, what: &str) -> Output {
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    tokio::time::timeout(CLIENT_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CLIENT_WAIT:?}"))
        .unwrap()
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The canonical line of `path`, asserted to be the intercepted, authenticated request.
async fn assert_through_warden(origin: &Origin, path: &str) -> Value {
    let want = path.to_string();
    let line = wait_log(move |v| v["path"] == want.as_str() && v["status"].is_number()).await;
    assert_eq!(line["client"], CLIENT, "{line}");
    assert_eq!(line["host"], "origin.test", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["intercepted"], true, "{line}");
    assert!(
        origin.seen().iter().any(|s| s.uri.contains(path)),
        "the origin did not see {path}"
    );
    assert!(
        !all_log_lines().iter().any(|l| l.contains(TOKEN)),
        "the token reached a log line"
    );
    line
}

fn url(origin: &Origin, path: &str) -> String {
    format!("https://origin.test:{}{path}", origin.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_only_the_url_goes_through_warden_as_the_client() {
    let origin = Origin::https().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let out = finish(
        sourced(&script, &["curl", &url(&origin, "/env/curl")]),
        "curl",
    )
    .await;
    assert_ok(&out, "curl");
    assert_through_warden(&origin, "/env/curl").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_and_httpx_go_through_warden_as_the_client() {
    let origin = Origin::https().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let python = crate::clients::python();
    for (lib, code) in [
        (
            "requests",
            "import requests, sys; print(requests.get(sys.argv[1]).status_code)",
        ),
        (
            "httpx",
            "import httpx, sys; print(httpx.get(sys.argv[1]).status_code)",
        ),
    ] {
        let path = format!("/env/python-{lib}");
        let target = url(&origin, &path);
        let cmd = sourced(&script, &[python.to_str().unwrap(), "-c", code, &target]);
        let out = finish(cmd, lib).await;
        assert_eq!(assert_ok(&out, lib).trim(), "200", "{lib}");
        assert_through_warden(&origin, &path).await;
    }
}

/// Node 24 from target/node24 (`.ci/deps` installs it from the npm registry).
fn node24() -> PathBuf {
    let node = repo_dir().join("target/node24/node_modules/.bin/node");
    let version = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        version.starts_with("v24."),
        "Node 24 is not installed at {} (found {version:?}): run `bash .ci/deps`",
        node.display()
    );
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_24_fetch_goes_through_warden_as_the_client() {
    let origin = Origin::https().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let program = s.w.dir.path().join("fetch.mjs");
    std::fs::write(
        &program,
        "const r = await fetch(process.argv[2]);\nawait r.text();\nconsole.log(r.status);\n",
    )
    .unwrap();
    let node = node24();
    let target = url(&origin, "/env/node");
    let cmd = sourced(
        &script,
        &[node.to_str().unwrap(), program.to_str().unwrap(), &target],
    );
    let out = finish(cmd, "node").await;
    assert_eq!(assert_ok(&out, "node").trim(), "200");
    assert_through_warden(&origin, "/env/node").await;
}

// ---------------------------------------------------------------- git

/// An HTTPS origin serving one bare repository through `git http-backend` as CGI.
struct GitOrigin {
    port: u16,
    _root: tempfile::TempDir,
    _task: tokio::task::JoinHandle<()>,
}

fn git(args: &[&str], dir: &Path) {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git is installed (`bash .ci/deps`)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl GitOrigin {
    async fn start() -> GitOrigin {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir(&work).unwrap();
        git(&["init", "-q", "-b", "main"], &work);
        std::fs::write(work.join("README"), "served by git http-backend\n").unwrap();
        git(&["add", "README"], &work);
        git(
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-qm",
                "one",
            ],
            &work,
        );
        git(&["clone", "-q", "--bare", "work", "repo.git"], root.path());
        let exec_path = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git is installed (`bash .ci/deps`)");
        let backend = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim())
            .join("git-http-backend");
        assert!(backend.is_file(), "no {}", backend.display());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = std::sync::Arc::new(origin_acceptor(&origin_ca().issue(ORIGIN_NAMES)));
        let project = root.path().to_path_buf();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, project, backend) =
                    (acceptor.clone(), project.clone(), backend.clone());
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut s = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut s).accept().await.is_err() {
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        cgi(req, project.clone(), backend.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        GitOrigin {
            port,
            _root: root,
            _task: task,
        }
    }
}

/// One request through `git http-backend` (RFC 3875 variables in, a CGI response out).
async fn cgi(
    req: hyper::Request<hyper::body::Incoming>,
    project: PathBuf,
    backend: PathBuf,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, encoding, protocol) = (
        header("content-type"),
        header("content-encoding"),
        header("git-protocol"),
    );
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut child = tokio::process::Command::new(backend)
        .env_clear()
        .env("GIT_PROJECT_ROOT", &project)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", encoding)
        .env("GIT_PROTOCOL", protocol)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .expect("a CGI head");
    let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
    let mut resp = hyper::Response::builder();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value.trim()[..3].parse().unwrap();
            resp = resp.status(code);
        } else {
            resp = resp.header(name.trim(), value.trim());
        }
    }
    let body = bytes::Bytes::copy_from_slice(&raw[split.0 + split.1..]);
    Ok(resp.body(http_body_util::Full::new(body)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_over_smart_http_goes_through_warden_as_the_client() {
    let origin = GitOrigin::start().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let dest = s.w.dir.path().join("clone");
    let repo = format!("https://origin.test:{}/repo.git", origin.port);
    let mut cmd = sourced(
        &script,
        &["git", "clone", "-q", &repo, dest.to_str().unwrap()],
    );
    // Only git's own settings are isolated; the proxy and trust come from `warden env`.
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", s.w.dir.path())
        .env("GIT_TERMINAL_PROMPT", "0");
    let out = finish(cmd, "git clone").await;
    assert_ok(&out, "git clone");
    assert_eq!(
        std::fs::read_to_string(dest.join("README")).unwrap(),
        "served by git http-backend\n"
    );
    for path in ["/repo.git/info/refs", "/repo.git/git-upload-pack"] {
        let line = wait_log(move |v| {
            v["path"].as_str().is_some_and(|p| p.starts_with(path)) && v["status"] == 200
        })
        .await;
        assert_eq!(line["client"], CLIENT, "{line}");
        assert_eq!(line["intercepted"], true, "{line}");
    }
    assert!(!all_log_lines().iter().any(|l| l.contains(TOKEN)));
}

// ---------------------------------------------------------------- Java

/// `java <File>.java URL` (single-file source launch), in `warden env`'s environment.
async fn java(script: &Path, dir: &Path, name: &str, source: &str, target: &str) -> Output {
    for tool in ["java", "javac"] {
        assert!(
            std::process::Command::new(tool)
                .arg("-version")
                .output()
                .is_ok(),
            "{tool} is not installed: run `bash .ci/deps`"
        );
    }
    let file = dir.join(format!("{name}.java"));
    std::fs::write(&file, source).unwrap();
    finish(
        sourced(script, &["java", file.to_str().unwrap(), target]),
        name,
    )
    .await
}

/// A stock `HttpClient`: nothing set but the URL.
const JAVA_STOCK: &str = r#"
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Stock {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newHttpClient();
        try {
            HttpResponse<String> r = client.send(
                HttpRequest.newBuilder(URI.create(args[0])).build(),
                HttpResponse.BodyHandlers.ofString());
            System.out.println(r.statusCode());
        } catch (java.io.IOException e) {
            System.out.println("failed: " + e.getMessage());
        }
    }
}
"#;

/// `HttpClient` with an `Authenticator` answering the proxy's challenge from the
/// `https.proxyUser`/`https.proxyPassword` properties: what Java needs beyond `warden env`.
const JAVA_AUTHENTICATOR: &str = r#"
import java.net.Authenticator;
import java.net.PasswordAuthentication;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class WithAuthenticator {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder()
            .authenticator(new Authenticator() {
                @Override
                protected PasswordAuthentication getPasswordAuthentication() {
                    if (getRequestorType() != RequestorType.PROXY) {
                        return null;
                    }
                    return new PasswordAuthentication(
                        System.getProperty("https.proxyUser"),
                        System.getProperty("https.proxyPassword").toCharArray());
                }
            })
            .build();
        HttpResponse<String> r = client.send(
            HttpRequest.newBuilder(URI.create(args[0])).build(),
            HttpResponse.BodyHandlers.ofString());
        System.out.println(r.statusCode());
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_httpclient_with_an_authenticator_from_the_properties_goes_through_as_the_client() {
    let origin = Origin::https().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let target = url(&origin, "/env/java-authenticator");
    let out = java(
        &script,
        s.w.dir.path(),
        "WithAuthenticator",
        JAVA_AUTHENTICATOR,
        &target,
    )
    .await;
    // The properties carried the token through JAVA_TOOL_OPTIONS' quoting intact: warden
    // accepted it.
    assert_eq!(assert_ok(&out, "java").trim(), "200");
    assert_through_warden(&origin, "/env/java-authenticator").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_java_httpclient_reaches_the_origin_through_warden_with_the_truststore() {
    // Without proxy.auth: the proxy properties and the truststore alone are enough.
    let origin = Origin::https().await;
    let s = Setup::start(false).await;
    let out = s.warden_env(&[]);
    assert!(out.status.success());
    let script = s.w.dir.path().join("env.sh");
    std::fs::write(&script, &out.stdout).unwrap();
    let target = url(&origin, "/env/java-stock");
    let out = java(&script, s.w.dir.path(), "Stock", JAVA_STOCK, &target).await;
    assert_eq!(assert_ok(&out, "java").trim(), "200");
    let line = wait_log(|v| v["path"] == "/env/java-stock" && v["status"] == 200).await;
    assert_eq!(line["intercepted"], true, "{line}");
    assert!(origin
        .seen()
        .iter()
        .any(|s| s.uri.contains("/env/java-stock")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_java_httpclient_cannot_log_in_from_system_properties() {
    // The JDK reads no proxy credentials from properties: a stock HttpClient has no
    // Authenticator, so its CONNECT is refused with 407 even with the login printed.
    let origin = Origin::https().await;
    let s = Setup::start(true).await;
    let script = s.env_script(&[]);
    let target = url(&origin, "/env/java-stock-auth");
    let out = java(&script, s.w.dir.path(), "Stock", JAVA_STOCK, &target).await;
    let printed = assert_ok(&out, "java");
    assert_ne!(printed.trim(), "200", "{printed}");
    let port = origin.port();
    let line = wait_log(move |v| {
        v["reason"] == "auth_required" && v["host"] == "origin.test" && v["port"] == port
    })
    .await;
    assert_eq!(line["status"], 407, "{line}");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_writes_a_java_truststore_that_keytool_reads_as_trusted_entries() {
    let s = Setup::start(false).await;
    let store = s.w.dir.path().join("custom.p12");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["ca", "-c"])
        .arg(&s.env_config)
        .arg("--java-truststore")
        .arg(&store)
        .args(["--password", "s3cret pass"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(store.to_str().unwrap()), "{stdout}");
    let list = std::process::Command::new("keytool")
        .args([
            "-list",
            "-storetype",
            "PKCS12",
            "-storepass",
            "s3cret pass",
            "-keystore",
        ])
        .arg(&store)
        .output()
        .expect("keytool is installed (`bash .ci/deps`)");
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(text.contains("warden-ca"), "{text}");
    let trusted = text.matches("trustedCertEntry").count();
    let roots = openssl::x509::X509::stack_from_pem(warden::tls::system_roots_pem().as_bytes())
        .unwrap_or_default()
        .len();
    assert_eq!(trusted, roots + 1, "{text}");
    // The wrong password is refused: the store is really keyed with the one given.
    let wrong = std::process::Command::new("keytool")
        .args([
            "-list",
            "-storetype",
            "PKCS12",
            "-storepass",
            "changeit",
            "-keystore",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}

// ---------------------------------------------------------------- shells and output

/// `env -0` in `shell` after it ran `source`: name → value.
async fn exported(shell: &str, source: &str) -> std::collections::HashMap<String, String> {
    let mut cmd = clean(shell);
    cmd.arg("-c").arg(format!("{source}; env -0"));
    let out = finish(cmd, shell).await;
    let text = assert_ok(&out, shell);
    text.split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sh_and_fish_give_back_every_value_and_powershell_quotes_each() {
    let s = Setup::start(true).await;
    let want = s.expected(&warden::client_env::EnvRequest {
        client: Some(CLIENT.into()),
        no_proxy: vec![],
    });
    assert!(want
        .get("JAVA_TOOL_OPTIONS")
        .unwrap()
        .contains("proxyPassword"));
    let dir = s.w.dir.path();
    for (shell, flag, file, source) in [
        ("sh", "sh", "env.sh", "."),
        ("bash", "sh", "env.bash", "."),
        ("fish", "fish", "env.fish", "source"),
    ] {
        let out = s.warden_env(&["--client", CLIENT, "--shell", flag]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = dir.join(file);
        std::fs::write(&path, &out.stdout).unwrap();
        let got = exported(shell, &format!("{source} '{}'", path.display())).await;
        for (name, value) in &want.vars {
            assert_eq!(got.get(*name), Some(value), "{shell}: {name}");
        }
    }
    // No pwsh on Debian's archive: each line is checked to be a verbatim string that
    // gives back the value.
    let out = s.warden_env(&["--client", CLIENT, "--shell", "powershell"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let mut assigned = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, quoted) = line
            .strip_prefix("$env:")
            .and_then(|l| l.split_once(" = "))
            .unwrap_or_else(|| panic!("not an assignment: {line}"));
        let inner = quoted
            .strip_prefix('\'')
            .and_then(|q| q.strip_suffix('\''))
            .unwrap_or_else(|| panic!("not a verbatim string: {line}"));
        let mut value = String::new();
        let mut chars = inner.chars().peekable();
        while let Some(c) = chars.next() {
            if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
                assert_eq!(
                    chars.next(),
                    Some(c),
                    "a lone quote ends the string: {line}"
                );
            }
            value.push(c);
        }
        assert_eq!(Some(value.as_str()), want.get(name), "{name}");
        assigned += 1;
    }
    assert_eq!(assigned, want.vars.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_client_under_proxy_auth_the_output_warns_of_407() {
    let s = Setup::start(true).await;
    let out = s.warden_env(&[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("# warning:") && l.contains("407") && l.contains("--client")),
        "{text}"
    );
    assert!(text.contains(&format!(
        "HTTPS_PROXY=http://127.0.0.1:{}\n",
        s.w.addr.port()
    )));
    // Without proxy.auth there is nothing to warn about.
    let open = Setup::start(false).await;
    let text = String::from_utf8(open.warden_env(&[]).stdout).unwrap();
    assert!(!text.contains("warning"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_extras_land_in_no_proxy_and_in_java_non_proxy_hosts() {
    let s = Setup::start(false).await;
    let env = s.expected(&warden::client_env::EnvRequest {
        client: None,
        no_proxy: vec!["internal.example".into(), ".corp.example,10.1.2.3".into()],
    });
    let list = "localhost,127.0.0.1,::1,internal.example,.corp.example,10.1.2.3";
    assert_eq!(env.get("NO_PROXY"), Some(list));
    assert_eq!(env.get("no_proxy"), Some(list));
    let java = env.get("JAVA_TOOL_OPTIONS").unwrap();
    assert!(
        java.contains(
            "-Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1]|internal.example|*.corp.example|10.1.2.3 "
        ),
        "{java}"
    );
    // The binary prints the same.
    let out = s.warden_env(&[
        "--no-proxy",
        "internal.example",
        "--no-proxy",
        ".corp.example,10.1.2.3",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("export NO_PROXY={list}\n")),
        "{text}"
    );
    assert!(
        text.contains("internal.example|*.corp.example|10.1.2.3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_appears_only_in_the_proxy_urls_and_java_password_never_in_errors() {
    let s = Setup::start(true).await;
    let out = s.warden_env(&["--client", CLIENT]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = s.expected(&warden::client_env::EnvRequest {
        client: Some(CLIENT.into()),
        no_proxy: vec![],
    });
    let encoded = warden::client_env::proxy_url(s.w.addr, Some((CLIENT, TOKEN)));
    let secret_bearing: Vec<&str> = env
        .vars
        .iter()
        .filter(|(_, v)| v.contains(TOKEN) || v.contains(encoded.as_str()) || v.contains("CANARY"))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        secret_bearing,
        [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "JAVA_TOOL_OPTIONS"
        ]
    );
    for proxy in ["HTTPS_PROXY", "http_proxy"] {
        assert_eq!(env.get(proxy), Some(encoded.as_str()));
    }
    let java = env.get("JAVA_TOOL_OPTIONS").unwrap();
    assert_eq!(java.matches("CANARY").count(), 2, "{java}");
    assert!(
        java.split("CANARY")
            .take(2)
            .all(|before| before.ends_with("proxyPassword=")),
        "{java}"
    );
    let comments = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!comments.contains("CANARY"), "{comments}");

    // Errors name the client or the source, never a token.
    let unknown = s.warden_env(&["--client", "nobody"]);
    assert!(!unknown.status.success());
    assert!(unknown.stdout.is_empty());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("`nobody` is not a client in proxy.auth.clients"),
        "{err}"
    );
    assert!(
        !err.contains("CANARY") && !err.contains("other-token"),
        "{err}"
    );

    std::fs::remove_file(&s.other_token).unwrap();
    let unreadable = s.warden_env(&["--client", "unreadable"]);
    assert!(!unreadable.status.success());
    assert!(unreadable.stdout.is_empty());
    let err = String::from_utf8_lossy(&unreadable.stderr);
    assert!(err.contains("other.token"), "{err}");
    assert!(
        !err.contains("CANARY") && !err.contains("other-token"),
        "{err}"
    );
}
