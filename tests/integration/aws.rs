//! AWS credentials end to end, against moto in server mode as STS and S3 on loopback (over
//! TLS, and checking every SigV4 signature and IAM permission once set up): the AWS CLI reads
//! the role's credentials from warden's container credentials endpoint; boto3 holding dummy
//! keys puts and gets an object and fetches a presigned URL through warden, which re-signs
//! them with the assumed role (and the same calls fail without it); wrong tokens, failing STS
//! and unsigned requests get their reason codes; and no secret leaks into the log, metrics,
//! error bodies or `warden check`.

use crate::clients::{python, run, script};
use crate::common::*;
use base64::Engine as _;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const S3_HOST: &str = "s3.us-east-1.amazonaws.com";
const STS_HOST: &str = "sts.us-east-1.amazonaws.com";
const ROLE: &str = "arn:aws:iam::123456789012:role/agent";
const TOKEN: &str = "agent-token-CANARY-7f3a";
const DUMMY_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const DUMMY_SECRET: &str = "dummy-secret-not-a-real-key";
const ADMIN_TOKEN: &str = "admin-token-aws-5e21";
/// moto imports every service it emulates: slow to start on a busy 2-core machine.
const MOTO_START: Duration = Duration::from_secs(90);

/// moto_server on TLS (a certificate from the test origin CA), set up by aws_setup.py.
struct Moto {
    port: u16,
    _child: Child,
    dir: tempfile::TempDir,
    /// The source keys and role aws_setup.py made.
    setup: Value,
}

impl Moto {
    async fn start() -> Moto {
        let dir = tempfile::tempdir().unwrap();
        let cert = origin_ca().issue(&[S3_HOST, STS_HOST, "localhost"]);
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, &cert.cert_pem).unwrap();
        std::fs::write(&k, &cert.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &origin_ca().pem).unwrap();
        let port = closed_port().await;
        let bin = python().with_file_name("moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .arg("-c")
            .arg(&c)
            .arg("-k")
            .arg(&k)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs (bash .ci/deps installs it): {e}", bin.display()));
        let deadline = tokio::time::Instant::now() + MOTO_START;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not listen within {MOTO_START:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut moto = Moto {
            port,
            _child: child,
            dir,
            setup: Value::Null,
        };
        let mut cmd = script("aws_setup.py");
        // Straight to moto: this side of the test has no resolver for the AWS names.
        cmd.arg(moto.url("localhost")).arg(moto.ca());
        moto.setup = run(cmd, "aws_setup.py").await;
        moto
    }

    fn url(&self, host: &str) -> String {
        format!("https://{host}:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn source_secret(&self) -> String {
        self.setup["secret_access_key"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Writes the source keys into `dir` (as `akid` and `secret`, or the given access key id).
    fn write_keys(&self, dir: &Path, name: &str, akid: Option<&str>) {
        let id = akid.unwrap_or_else(|| self.setup["access_key_id"].as_str().unwrap());
        std::fs::write(dir.join(format!("{name}.akid")), id).unwrap();
        std::fs::write(dir.join(format!("{name}.secret")), self.source_secret()).unwrap();
    }
}

/// An `aws` section whose source keys are the files `<name>.akid` and `<name>.secret` in `keys`.
fn aws_section(keys: &Path, name: &str, sts: &str, resign: &[String]) -> String {
    let k = keys.display();
    format!(
        "{{ role_arn: '{ROLE}', region: us-east-1, session_duration: 15m, sts_endpoint: '{sts}', resign: {resign:?}, source: {{ access_key_id: {{ type: file, path: '{k}/{name}.akid' }}, secret_access_key: {{ type: file, path: '{k}/{name}.secret' }} }} }}"
    )
}

/// warden with client `agent` (its own aws section), `bystander` (none) and `extra` clients.
fn config(agent_aws: &str, extra_clients: &str) -> String {
    format!(
        "version: 1
proxy:
  listen: 127.0.0.1:0
  auth:
    clients:
      - {{ name: agent, token: {{ type: static, value: {TOKEN} }}, aws: {agent_aws} }}
      - {{ name: bystander, token: {{ type: static, value: bystander-token }} }}
{extra_clients}admin:
  listen: 127.0.0.1:0
  token: {{ type: static, value: {ADMIN_TOKEN} }}
tls:
  ca_cert: {{dir}}/ca.crt
  ca_key: {{dir}}/ca.key
  upstream_ca_file: {{origin_ca}}
network:
  allow_cidrs: [127.0.0.0/8]
  resolve: {{ {S3_HOST}: 127.0.0.1, {STS_HOST}: 127.0.0.1, origin.test: 127.0.0.1 }}
"
    )
}

fn endpoint_url(w: &TestWarden) -> String {
    format!("http://{}/_warden/aws/credentials", w.addr)
}

/// GETs the credentials endpoint directly (no proxy) with `token`: (status, body).
async fn fetch_credentials(w: &TestWarden, token: Option<&str>) -> (u16, Value) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut req = client.get(endpoint_url(w));
    if let Some(t) = token {
        req = req.header("authorization", t);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A CA bundle for clients that reach both warden's intercepted hosts and moto directly.
fn bundle(w: &TestWarden, moto: &Moto) -> PathBuf {
    let path = moto
        .dir
        .path()
        .join(format!("bundle-{}.pem", w.addr.port()));
    std::fs::write(&path, format!("{}{}", w.ca_pem, origin_ca().pem)).unwrap();
    path
}

/// A command with none of the environment's AWS or proxy settings, and no config files.
fn clean(mut cmd: Command, home: &Path) -> Command {
    for (var, _) in std::env::vars() {
        if var.starts_with("AWS_") || var.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(var);
        }
    }
    cmd.env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Every form of `secret` a leak could take: raw, base64 and percent-encoded.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pct: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    vec![secret.to_string(), b64.encode(secret), pct]
}

fn assert_no_leak(haystack: &str, secret: &str, place: &str) {
    assert!(secret.len() >= 8, "a canary worth looking for: {secret}");
    for form in forms(secret) {
        assert!(!haystack.contains(&form), "{place} holds a secret ({form})");
    }
}

/// An `Authorization` header SigV4-shaped with the dummy key (its signature is zeros).
fn dummy_signature(signed_headers: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={DUMMY_KEY}/20261202/us-east-1/s3/aws4_request, SignedHeaders={signed_headers}, Signature={}",
        "0".repeat(64)
    )
}

/// `warden check` on `text`: its whole output.
fn check_output(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["check", "-c", file.to_str().unwrap()])
        .output()
        .expect("warden binary runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_gets_the_clients_role_from_the_credentials_endpoint() {
    let moto = Moto::start().await;
    let keys = tempfile::tempdir().unwrap();
    moto.write_keys(keys.path(), "agent", None);
    let aws = aws_section(keys.path(), "agent", &moto.url(STS_HOST), &[]);
    let w = TestWarden::start(&config(&aws, "")).await;
    let cli = python().with_file_name("aws");
    let home = tempfile::tempdir().unwrap();
    let mut cmd = clean(Command::new(&cli), home.path());
    cmd.args([
        "sts",
        "get-caller-identity",
        "--output",
        "json",
        "--region",
        "us-east-1",
    ])
    .arg("--endpoint-url")
    .arg(moto.url(STS_HOST))
    .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", endpoint_url(&w))
    .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", TOKEN)
    .env("AWS_CA_BUNDLE", bundle(&w, &moto))
    // The STS call goes through warden; the endpoint is reached directly.
    .env("HTTPS_PROXY", format!("http://agent:{TOKEN}@{}", w.addr))
    .env("NO_PROXY", "127.0.0.1")
    .kill_on_drop(true);
    for _ in 0..2 {
        // The CLI loads every service model it ships: slow to start on a busy machine.
        let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
            .await
            .expect("the AWS CLI finishes")
            .expect("the AWS CLI runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "aws sts get-caller-identity failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id: Value = serde_json::from_str(&stdout).unwrap();
        // moto checked the signature of the role's temporary keys and knows whose they are.
        assert_eq!(
            id["Arn"], "arn:aws:sts::123456789012:assumed-role/agent/warden-agent",
            "{id}"
        );
    }
    // Two CLI runs, one AssumeRole: the session is kept until it is due for refresh.
    assert_eq!(w.runtime().aws.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_with_dummy_keys_puts_gets_and_presigns_through_warden_re_signed() {
    let moto = Moto::start().await;
    let keys = tempfile::tempdir().unwrap();
    moto.write_keys(keys.path(), "agent", None);
    let sts = moto.url(STS_HOST);
    let resign = vec![format!("{S3_HOST}:{}", moto.port)];
    let w = TestWarden::start(&config(
        &aws_section(keys.path(), "agent", &sts, &resign),
        "",
    ))
    .await;
    let (status, role) = fetch_credentials(&w, Some(TOKEN)).await;
    assert_eq!(status, 200, "{role}");
    let (role_secret, role_token) = (
        role["SecretAccessKey"].as_str().unwrap().to_string(),
        role["Token"].as_str().unwrap().to_string(),
    );
    // The presigned URL goes to an origin that checks it with botocore (moto cannot while it
    // checks IAM); it needs the role's credentials, so it starts once warden has them.
    let cert = origin_ca().issue(&[S3_HOST]);
    let (c, k) = (moto.dir.path().join("p.pem"), moto.dir.path().join("p.key"));
    std::fs::write(&c, &cert.cert_pem).unwrap();
    std::fs::write(&k, &cert.key_pem).unwrap();
    let mut cmd = script("aws_presign_origin.py");
    cmd.arg(&c)
        .arg(&k)
        .env("ROLE_ACCESS_KEY_ID", role["AccessKeyId"].as_str().unwrap())
        .env("ROLE_SECRET_ACCESS_KEY", &role_secret)
        .env("ROLE_SESSION_TOKEN", &role_token);
    let mut presign_origin = crate::clients::Py::spawn(cmd, "aws_presign_origin.py");
    let port = presign_origin.line().await["port"].as_u64().unwrap();
    // The origin picked its own port: warden re-signs for that one too. The role's session
    // is runtime state, kept across the reload.
    let resign = vec![
        format!("{S3_HOST}:{}", moto.port),
        format!("{S3_HOST}:{port}"),
    ];
    let text = config(&aws_section(keys.path(), "agent", &sts, &resign), "");
    w.reload(&text).expect("reloads");
    let home = tempfile::tempdir().unwrap();
    let boto3 = |proxy: Option<String>, ca: PathBuf, presign: String| {
        let mut cmd = clean(script("aws_s3.py"), home.path());
        // Without warden the client resolves the name itself: moto by its loopback name.
        let host = if proxy.is_some() {
            S3_HOST
        } else {
            "localhost"
        };
        cmd.arg(moto.url(host))
            .arg(presign)
            .arg("agent-bucket")
            .arg("notes.txt")
            .env("AWS_ACCESS_KEY_ID", DUMMY_KEY)
            .env("AWS_SECRET_ACCESS_KEY", DUMMY_SECRET)
            .env("AWS_CA_BUNDLE", ca);
        if let Some(p) = proxy {
            cmd.env("HTTPS_PROXY", p);
        }
        cmd
    };
    // Dummy keys straight to moto, and through warden for a client without an aws section
    // (tunnelled blind): moto refuses both. It checks signatures.
    let direct = run(boto3(None, moto.ca(), "-".into()), "aws_s3.py").await;
    assert_eq!(direct["error"], "InvalidAccessKeyId", "{direct}");
    let blind = format!("http://bystander:bystander-token@{}", w.addr);
    let unsigned = run(
        boto3(Some(blind), bundle(&w, &moto), "-".into()),
        "aws_s3.py",
    )
    .await;
    assert_eq!(unsigned["error"], "InvalidAccessKeyId", "{unsigned}");
    // Through warden as the agent: re-signed with the role, the same calls pass.
    let proxy = format!("http://agent:{TOKEN}@{}", w.addr);
    let presign_url = format!("https://{S3_HOST}:{port}");
    let out = run(
        boto3(Some(proxy), bundle(&w, &moto), presign_url),
        "aws_s3.py",
    )
    .await;
    assert_eq!(out["put"], "ok", "{out}");
    assert_eq!(out["get_matches"], true, "{out}");
    let put = &out["sent"]["PUT"];
    // The current PutObject shape, carried through intact.
    assert_eq!(
        put["x-amz-content-sha256"], "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "{put}"
    );
    assert_eq!(put["content-encoding"], "aws-chunked", "{put}");
    assert_eq!(put["x-amz-trailer"], "x-amz-checksum-crc32", "{put}");
    assert!(
        put["authorization"].as_str().unwrap().contains(DUMMY_KEY),
        "{put}"
    );
    assert_eq!(out["presigned"]["status"], 200, "{out}");
    assert_eq!(out["presigned"]["body"], "presigned-ok", "{out}");
    assert_eq!(out["presigned_v2"]["status"], 403, "{out}");
    assert!(
        out["presigned_v2"]["body"]
            .as_str()
            .unwrap()
            .contains("aws_unsigned"),
        "{out}"
    );
    let checked = presign_origin.finish().await;
    assert_eq!(checked.len(), 1, "{checked:?}");
    assert_eq!(checked[0]["verified"], true);
    let put_line = wait_log(|v| {
        v["method"] == "PUT" && v["port"] == moto.port && v["path"] == "/agent-bucket/notes.txt"
    })
    .await;
    assert_eq!(put_line["status"], 200, "{put_line}");
    assert_eq!(put_line["injected"], "authorization", "{put_line}");
    assert_eq!(
        w.runtime().aws.calls(),
        1,
        "one AssumeRole for everything, across the reload"
    );
    // No secret anywhere: the source keys, the role's secret and session token.
    // A client registered through the clients API gets its own role the same way.
    let admin = w.running.as_ref().unwrap().admin_addr().unwrap();
    let section: Value =
        serde_yaml::from_str(&aws_section(keys.path(), "agent", &sts, &[])).unwrap();
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(format!("http://{admin}/v1/clients/registered"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "aws": section }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let registered: Value = resp.json().await.unwrap();
    let (status, theirs) = fetch_credentials(&w, registered["token"].as_str()).await;
    assert_eq!(status, 200, "{theirs}");
    // Another session name (warden-registered): another session.
    assert_ne!(theirs["AccessKeyId"], role["AccessKeyId"]);
    let logs = all_log_lines().join("\n");
    let metrics = w.scrape().await;
    let check = check_output(&fill(&text, &w.dir));
    for secret in [moto.source_secret(), role_secret, role_token] {
        assert_no_leak(&logs, &secret, "the log");
        assert_no_leak(&metrics, &secret, "the metrics");
        assert_no_leak(&check, &secret, "warden check");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_endpoint_refuses_wrong_tokens_and_names_sts_failures() {
    let moto = Moto::start().await;
    let keys = tempfile::tempdir().unwrap();
    moto.write_keys(keys.path(), "agent", None);
    moto.write_keys(keys.path(), "wrong", Some("AKIAWRONGWRONGWRONG1"));
    let down = format!("https://{STS_HOST}:{}", closed_port().await);
    let sts = moto.url(STS_HOST);
    let extra = format!(
        "      - {{ name: wrong-keys, token: {{ type: static, value: wrong-keys-token }}, aws: {} }}\n      - {{ name: sts-down, token: {{ type: static, value: sts-down-token }}, aws: {} }}\n",
        aws_section(keys.path(), "wrong", &sts, &[]),
        aws_section(keys.path(), "agent", &down, &[]),
    );
    // The agent's requests to an echoing origin are re-signed too.
    let origin = Origin::https().await;
    let resign = vec![format!("origin.test:{}", origin.port())];
    let text = config(&aws_section(keys.path(), "agent", &sts, &resign), &extra);
    let w = TestWarden::start(&text).await;
    // Concurrent first requests for one role: one AssumeRole call, one session for all.
    let fetches = (0..6).map(|_| fetch_credentials(&w, Some(TOKEN)));
    let got = futures_util::future::join_all(fetches).await;
    let keys_seen: std::collections::HashSet<String> = got
        .iter()
        .map(|(s, v)| format!("{s} {}", v["AccessKeyId"]))
        .collect();
    assert_eq!(keys_seen.len(), 1, "{got:?}");
    assert_eq!(w.runtime().aws.calls(), 1);
    let role = got[0].1.clone();
    let mut bodies = String::new();
    for (token, status, reason) in [
        (None, 401, "aws_token_invalid"),
        (Some("not-a-client-token"), 401, "aws_token_invalid"),
        (Some("bystander-token"), 404, "aws_not_configured"),
        (Some("wrong-keys-token"), 502, "credential_unavailable"),
        (Some("sts-down-token"), 502, "credential_unavailable"),
    ] {
        let (got, body) = fetch_credentials(&w, token).await;
        assert_eq!(
            (got, body["reason"].as_str()),
            (status, Some(reason)),
            "{token:?}: {body}"
        );
        bodies.push_str(&body.to_string());
    }
    // The STS error code, and an unreachable STS, are named in the log line.
    let refused = wait_log(|v| v["client"] == "wrong-keys" && v["status"] == 502).await;
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("InvalidClientTokenId"), "{refused}");
    let down = wait_log(|v| v["client"] == "sts-down" && v["status"] == 502).await;
    assert!(
        down["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot connect"),
        "{down}"
    );
    assert!(
        role["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{role}"
    );
    // A re-signed request reaches the origin signed by the role; what the origin echoes of
    // the new signature and session token comes back masked.
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://agent:{TOKEN}@{}", w.addr)).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    for path in ["/echo-header", "/"] {
        let resp = client
            .get(format!("https://origin.test:{}{path}", origin.port()))
            .header("authorization", dummy_signature("host;x-amz-date"))
            .header("x-amz-date", "20261202T000000Z")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        bodies.push_str(&format!("{:?}", resp.headers()));
        bodies.push_str(&resp.text().await.unwrap());
    }
    let seen = origin.seen();
    let auth = seen[0].header("authorization").unwrap();
    let akid = role["AccessKeyId"].as_str().unwrap();
    assert!(
        auth.starts_with(&format!("AWS4-HMAC-SHA256 Credential={akid}/")),
        "{auth}"
    );
    assert!(
        auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token"),
        "{auth}"
    );
    assert_eq!(
        seen[0].header("x-amz-security-token"),
        role["Token"].as_str()
    );
    let signature = auth.rsplit("Signature=").next().unwrap().to_string();
    assert!(bodies.contains("[redacted]"), "{bodies}");
    assert_no_leak(&bodies, &signature, "the echoed response");
    assert!(
        role["AccessKeyId"].as_str().unwrap().starts_with("ASIA"),
        "{role}"
    );
    let logs = all_log_lines().join("\n");
    let metrics = w.scrape().await;
    let check = check_output(&fill(&text, &w.dir));
    let role_secrets =
        [&role["SecretAccessKey"], &role["Token"]].map(|v| v.as_str().unwrap().to_string());
    for secret in role_secrets.into_iter().chain([moto.source_secret()]) {
        assert_no_leak(&logs, &secret, "the log");
        assert_no_leak(&metrics, &secret, "the metrics");
        assert_no_leak(&bodies, &secret, "the error bodies");
        assert_no_leak(&check, &secret, "warden check");
    }
}

#[tokio::test]
async fn requests_to_resign_hosts_must_be_sigv4_signed_without_chunk_signatures() {
    // Refused before any STS call or dial: nothing listens at either port.
    let port = closed_port().await;
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("a.akid"), "AKIASOURCE").unwrap();
    std::fs::write(keys.path().join("a.secret"), "source-secret-CANARY").unwrap();
    let sts = format!("https://{STS_HOST}:{}", closed_port().await);
    let resign = vec![format!("{S3_HOST}:{port}")];
    let w = TestWarden::start(&config(&aws_section(keys.path(), "a", &sts, &resign), "")).await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://agent:{TOKEN}@{}", w.addr)).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(w.ca_pem.as_bytes()).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap();
    let url = format!("https://{S3_HOST}:{port}/agent-bucket/k");
    let signed = dummy_signature("host;x-amz-content-sha256;x-amz-date");
    let cases = [
        (vec![], 403, "aws_unsigned"),
        (vec![("authorization", "Bearer abc")], 403, "aws_unsigned"),
        (
            vec![
                ("authorization", signed.as_str()),
                ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ],
            400,
            "aws_payload_unsupported",
        ),
    ];
    for (headers, status, reason) in cases {
        let mut req = client.put(&url).body("data");
        for (n, v) in &headers {
            req = req.header(*n, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status().as_u16(), status, "{headers:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["reason"], reason, "{headers:?}");
    }
    assert_eq!(
        w.runtime().aws.calls(),
        0,
        "no STS call for a refused request"
    );
}

#[test]
fn warden_check_warns_about_unreadable_aws_keys_without_showing_any() {
    let keys = tempfile::tempdir().unwrap();
    let canary = "static-aws-secret-CANARY-91c2";
    let agent = format!(
        "{{ role_arn: '{ROLE}', region: us-east-1, source: {{ access_key_id: {{ type: file, path: '{}/missing' }}, secret_access_key: {{ type: static, value: {canary} }} }} }}",
        keys.path().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let text = config(&agent, "")
        .replace("{dir}", dir.path().to_str().unwrap())
        .replace("  upstream_ca_file: {origin_ca}\n", "");
    let out = check_output(&text);
    assert!(
        out.contains("proxy.auth.clients[0].aws.source.access_key_id")
            && out.contains("cannot be read now")
            && out.contains("missing"),
        "{out}"
    );
    assert!(
        !out.contains("secret_access_key"),
        "a readable key is not warned about: {out}"
    );
    assert_no_leak(&out, canary, "warden check");
    // A bad key is an error naming it and its line.
    let bad = text.replace("region: us-east-1", "region: 'US East'");
    let out = check_output(&bad);
    assert!(out.contains("proxy.auth.clients[0].aws.region"), "{out}");
    assert_no_leak(&out, canary, "warden check");
}
