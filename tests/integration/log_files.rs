//! `log.file` and `log.access_file`, through the `warden` binary (the logger is process-wide):
//! which lines go where, SIGUSR1 after a rotation under load, a file that cannot keep up, a
//! path that cannot be opened, a reload naming other files, the last lines at SIGTERM.

use crate::common::*;
use serde_json::Value;
use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// A folder with the test origins' CA and a config `w.yaml` from `log` keys (two-space
/// indented) and the usual loopback settings, plus an admin listener.
fn setup(log: &str) -> (tempfile::TempDir, PathBuf) {
    setup_with(log, "")
}

/// [`setup`] with more top-level keys.
fn setup_with(log: &str, extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("origin-ca.pem"), &origin_ca().pem).unwrap();
    let file = dir.path().join("w.yaml");
    write_config_with(&dir, &file, log, extra);
    (dir, file)
}

fn write_config(dir: &tempfile::TempDir, file: &Path, log: &str) {
    write_config_with(dir, file, log, "");
}

fn write_config_with(dir: &tempfile::TempDir, file: &Path, log: &str, extra: &str) {
    let yaml = default_yaml(
        "all",
        "",
        &format!("admin:\n  listen: 127.0.0.1:0\nlog:\n{log}{extra}"),
    );
    std::fs::write(file, fill(&yaml, dir)).unwrap();
}

/// `warden run` as a child; its stderr collected as it is written.
struct Warden {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Warden {
    fn start(file: &Path) -> Warden {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["run", "-c", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warden binary starts");
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Warden { child, stderr }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs: install procps");
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then waits (bounded) for the exit; returns everything warden wrote to stderr.
    fn terminate(mut self) -> Vec<String> {
        self.signal("TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "warden exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "warden did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The pipe closed with the process: the reader ends.
        let mut lines = Vec::new();
        while let Ok(line) = self.stderr.recv_timeout(WAIT) {
            lines.push(line);
        }
        lines
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `path` (none while it does not exist).
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Waits (bounded) until `pred` holds for the lines of `path`; there is no event for a file
/// growing, so it looks again every few milliseconds.
fn wait_file(path: &Path, what: &str, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = lines_of(path);
        if pred(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{}: no {what}; it has:\n{}",
            path.display(),
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The proxy and admin addresses from the start line in `log`.
fn listening(log: &Path) -> (String, String) {
    let lines = wait_file(log, "start line", |l| {
        l.iter().any(|l| l.contains("warden listening"))
    });
    let line = lines
        .iter()
        .find(|l| l.contains("warden listening"))
        .unwrap();
    let msg: Value = serde_json::from_str(line).unwrap();
    let msg = msg["msg"].as_str().unwrap().to_string();
    let field = |name: &str| {
        msg.split(' ')
            .find_map(|w| w.strip_prefix(name))
            .unwrap()
            .to_string()
    };
    (field("proxy="), field("admin="))
}

fn proxied(proxy: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{proxy}")).unwrap())
        .timeout(WAIT)
        .build()
        .unwrap()
}

fn is_canonical(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v.get("kind").is_some())
}

fn is_operational(line: &str) -> bool {
    serde_json::from_str::<Value>(line).is_ok_and(|v| v.get("msg").is_some())
}

fn request_id(line: &str) -> Option<String> {
    let v: Value = serde_json::from_str(line).ok()?;
    v["request_id"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_and_request_lines_go_to_their_files_and_stderr_keeps_neither() {
    let origin = Origin::https().await;
    // The origin echoes the injected credential: the line shows it masked, in the file too.
    let (dir, file) = setup_with(
        "  file: logs/warden.log\n  access_file: logs/access.log\n",
        &format!(
            "credentials:\n  - host: origin.test:{}\n    grant: canary\n    source: {{ type: static, value: CANARY-LOGFILE-9137 }}\n",
            origin.port()
        ),
    );
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let (log, access) = (
        dir.path().join("logs/warden.log"),
        dir.path().join("logs/access.log"),
    );
    let w = Warden::start(&file);
    let (proxy, _) = listening(&log);
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(format!("http://{proxy}")).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .timeout(WAIT)
        .build()
        .unwrap();
    for i in 0..5 {
        let r = client
            .get(format!(
                "https://origin.test:{}/echo?q=hidden",
                origin.port()
            ))
            .header("x-request-id", format!("split-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    drop(client);
    let stderr = w.terminate();
    assert!(stderr.is_empty(), "stderr: {stderr:?}");
    let ops = lines_of(&log);
    let requests = lines_of(&access);
    assert!(ops.iter().all(|l| is_operational(l)), "{ops:?}");
    assert!(ops
        .iter()
        .any(|l| l.contains("SIGTERM: no new connections")));
    assert!(
        ops.last().unwrap().contains("shutdown complete"),
        "the last line before exit is written: {ops:?}"
    );
    let ids: Vec<String> = requests.iter().filter_map(|l| request_id(l)).collect();
    assert_eq!(
        ids,
        (0..5).map(|i| format!("split-{i}")).collect::<Vec<_>>()
    );
    assert!(requests.iter().all(|l| is_canonical(l)), "{requests:?}");
    let injected = origin.seen().iter().all(|s| {
        s.headers
            .iter()
            .any(|(_, v)| v.contains("CANARY-LOGFILE-9137"))
    });
    assert!(injected, "the origin saw the credential (and echoed it)");
    for line in ops.iter().chain(&requests) {
        assert!(!line.contains("CANARY-LOGFILE"), "{line}");
    }
    use std::os::unix::fs::PermissionsExt;
    for path in [&log, &access] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "{}: {mode:o}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_log_file_request_lines_go_there_too() {
    let origin = Origin::http().await;
    let (dir, file) = setup("  file: warden.log\n");
    let log = dir.path().join("warden.log");
    let w = Warden::start(&file);
    let (proxy, _) = listening(&log);
    let r = proxied(&proxy)
        .get(format!("http://origin.test:{}/echo", origin.port()))
        .header("x-request-id", "only-file-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let stderr = w.terminate();
    assert!(stderr.is_empty(), "stderr: {stderr:?}");
    let lines = lines_of(&log);
    assert!(lines.iter().any(|l| l.contains("warden listening")));
    let requests: Vec<&String> = lines.iter().filter(|l| is_canonical(l)).collect();
    assert_eq!(requests.len(), 1, "{lines:?}");
    assert_eq!(request_id(requests[0]).as_deref(), Some("only-file-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_with_sigusr1_under_load_loses_and_repeats_no_line() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 500;
    const ROTATIONS: usize = 5;
    let origin = Origin::http().await;
    let (dir, file) = setup("  file: warden.log\n  access_file: access.log\n");
    let (log, access) = (dir.path().join("warden.log"), dir.path().join("access.log"));
    let w = Warden::start(&file);
    let (proxy, _) = listening(&log);
    let port = origin.port();
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let client = proxied(&proxy);
            tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    let r = client
                        .get(format!("http://origin.test:{port}/echo/{c}/{i}"))
                        .header("x-request-id", format!("rot-{c}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    // Rotate as logrotate does (rename, then SIGUSR1) while the load runs: each time the
    // current file has taken some lines, and the next one exists before the next rotation.
    // It stops early (counted below) if the load ends first.
    let (access2, log2) = (access.clone(), log.clone());
    let pid = w.child.id();
    let loaded = Arc::new(AtomicBool::new(false));
    let loaded2 = loaded.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        let mut rotated = Vec::new();
        for k in 0..ROTATIONS {
            let lines = wait_file(&access2, "request lines", |l| {
                l.len() >= 100 || loaded2.load(Ordering::SeqCst)
            });
            if lines.len() < 100 {
                break;
            }
            let old = access2.with_extension(format!("log.{k}"));
            std::fs::rename(&access2, &old).unwrap();
            if k == 0 {
                std::fs::rename(&log2, log2.with_extension("log.0")).unwrap();
            }
            let usr1 = Command::new("kill")
                .args(["-USR1", &pid.to_string()])
                .status()
                .unwrap();
            assert!(usr1.success());
            wait_file(&access2, "reopened file", |_| access2.exists());
            rotated.push(old);
        }
        rotated
    });
    let started = Instant::now();
    for task in load {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the load finishes in time")
            .unwrap();
    }
    let took = started.elapsed();
    loaded.store(true, Ordering::SeqCst);
    let rotated = rotated.await.unwrap();
    assert!(rotated.len() >= 3, "rotated only {} times", rotated.len());
    let stderr = w.terminate();
    assert!(stderr.is_empty(), "stderr: {stderr:?}");
    let mut seen = HashSet::new();
    let mut total = 0;
    for path in rotated.iter().chain([&access]) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{}",
            path.display()
        );
        let lines: Vec<&str> = text.lines().collect();
        if path != &access {
            assert!(!lines.is_empty(), "{} took no lines", path.display());
        }
        for line in lines {
            let id = request_id(line).unwrap_or_else(|| panic!("not a whole line: {line}"));
            assert!(seen.insert(id.clone()), "{id} written twice");
            total += 1;
        }
    }
    assert_eq!(total, CLIENTS * PER_CLIENT, "took {took:?}");
    for c in 0..CLIENTS {
        for i in 0..PER_CLIENT {
            assert!(seen.contains(&format!("rot-{c}-{i}")));
        }
    }
    // The operational file was rotated once: the reopen notice is in the new one.
    let reopened = lines_of(&log);
    assert!(
        reopened
            .iter()
            .any(|l| l.contains("SIGUSR1: reopening log.file and log.access_file")),
        "{reopened:?}"
    );
    assert!(lines_of(&log.with_extension("log.0"))
        .iter()
        .any(|l| l.contains("warden listening")));
    eprintln!(
        "{} requests through warden in {took:?} across {} rotations",
        CLIENTS * PER_CLIENT,
        rotated.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_file_nobody_reads_drops_lines_and_requests_never_wait() {
    const REQUESTS: usize = 600;
    const BODY: usize = 32 * 1024;
    let origin = Origin::http().await;
    let (dir, file) =
        setup("  file: warden.log\n  access_file: access.fifo\n  body_capture_bytes: 65536\n");
    let (log, fifo) = (
        dir.path().join("warden.log"),
        dir.path().join("access.fifo"),
    );
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo(1) runs: install coreutils");
    assert!(made.success());
    // A reader that never reads: warden's open of the FIFO succeeds, and its writer blocks
    // once the pipe's buffer is full.
    let fifo2 = fifo.clone();
    let (held_tx, held) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::fs::File::open(fifo2).unwrap();
        let _ = held_tx.send(reader);
    });
    let w = Warden::start(&file);
    let (proxy, admin) = listening(&log);
    let _reader = held.recv_timeout(WAIT).expect("warden opened the FIFO");
    let client = proxied(&proxy);
    let body = vec![b'x'; BODY];
    let mut slowest = Duration::ZERO;
    for i in 0..REQUESTS {
        let sent = Instant::now();
        let r = client
            .post(format!("http://origin.test:{}/echo", origin.port()))
            .header("x-request-id", format!("fifo-{i}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        slowest = slowest.max(sent.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(2),
        "a request waited {slowest:?} on a blocked log file"
    );
    let metrics = scrape(admin.parse().unwrap()).await;
    let dropped = metric_value(&metrics, "warden_log_lines_dropped_total{file=\"access\"}")
        .expect("the dropped counter is exported");
    // At most the pipe's buffer and the queue's bytes (about 8 MiB / 33 KiB lines) are taken.
    assert!(dropped >= 300.0, "dropped {dropped}\n{metrics}");
    assert_eq!(
        metric_value(&metrics, "warden_log_lines_dropped_total{file=\"log\"}"),
        Some(0.0)
    );
    eprintln!("{REQUESTS} requests with the access file blocked: slowest {slowest:?}, {dropped} lines dropped");
    // The exit waits for the stuck writer only so long, and says so.
    drop(client);
    let started = Instant::now();
    let stderr = w.terminate();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("log.access_file: lines still queued at exit were not written")),
        "{stderr:?}"
    );
}

#[test]
fn a_log_file_that_cannot_be_opened_stops_the_start_naming_the_key() {
    let (dir, file) = setup("  access_file: missing/access.log\n");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["run", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.access_file: cannot open"), "{err}");
    assert!(
        err.contains(&format!(
            "{} must exist",
            dir.path().join("missing").display()
        )),
        "{err}"
    );
    // A directory where the file should be: cannot be opened for writing, even by root.
    write_config(&dir, &file, "  file: logs\n");
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["run", "-c", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("log.file: cannot open"), "{err}");
    // `check` may run elsewhere: a missing directory is a warning there, --strict an error.
    write_config(&dir, &file, "  access_file: missing/access.log\n");
    let check = |strict: bool| {
        let mut args = vec!["check", "-c", file.to_str().unwrap()];
        if strict {
            args.push("--strict");
        }
        Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = check(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: ") && err.contains("log.access_file: the directory"),
        "{err}"
    );
    assert_eq!(check(true).status.code(), Some(1));
    // Both keys naming one file is a config error.
    write_config(&dir, &file, "  file: one.log\n  access_file: one.log\n");
    let out = check(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("log.access_file: is the same file as log.file"),
        "{err}"
    );
}

#[test]
fn a_reload_naming_other_log_files_warns_and_keeps_writing_the_first() {
    let (dir, file) = setup("  file: first.log\n");
    let first = dir.path().join("first.log");
    let w = Warden::start(&file);
    listening(&first);
    write_config(&dir, &file, "  file: second.log\n  level: info\n");
    w.signal("HUP");
    let lines = wait_file(&first, "generation 2", |l| {
        l.iter().any(|l| l.contains("config_reloaded generation=2"))
    });
    let warning = lines
        .iter()
        .find(|l| l.contains("log.file requires restart"))
        .expect("a warning for the changed destination");
    assert!(
        warning.contains(first.to_str().unwrap())
            && warning.contains(dir.path().join("second.log").to_str().unwrap())
            && warning.contains("\"level\":\"warn\""),
        "{warning}"
    );
    assert!(!dir.path().join("second.log").exists());
    // A second reload of the same file still warns: the first file is still the one in use.
    w.signal("HUP");
    let lines = wait_file(&first, "generation 3", |l| {
        l.iter().any(|l| l.contains("config_reloaded generation=3"))
    });
    let warnings = lines
        .iter()
        .filter(|l| l.contains("log.file requires restart"))
        .count();
    assert_eq!(warnings, 2, "{lines:?}");
    let stderr = w.terminate();
    assert!(stderr.is_empty(), "stderr: {stderr:?}");
}
