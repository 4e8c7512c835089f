//! The `warden` binary: `check`, `ca`, start-up failures; and every bundled config compiles.

use crate::common::*;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env_remove(UNSET)
        .output()
        .expect("warden binary runs")
}

/// An environment variable no test sets: a secret source that cannot be read.
const UNSET: &str = "WARDEN_CLI_TEST_UNSET_SECRET";

/// `warden check -c <text in a fresh file> [extra]`: (exit code, stdout + stderr).
fn check(text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, text).unwrap();
    let mut args = vec!["check", "-c", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = warden(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `warden run` as a child process, its stderr lines delivered as they are written.
pub(crate) struct Running {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    pub(crate) fn start(file: &std::path::Path) -> Running {
        Running::start_with(file, &[])
    }

    /// `warden run -c <file>` with `extra` arguments.
    pub(crate) fn start_with(file: &std::path::Path, extra: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["run", "-c", file.to_str().unwrap()])
            .args(extra)
            .env_remove(UNSET)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("warden binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `text`; every line read is kept in `seen`.
    pub(crate) fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn check_names_the_key_and_line_of_an_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "version: 1\nproxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 30s\n  cert_cache_entrys: 5\n",
    )
    .unwrap();
    let out = warden(&["check", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:6"), "{err}");
    assert!(err.contains("limits"), "{err}");
    assert!(err.contains("cert_cache_entrys"), "{err}");
}

#[test]
fn check_accepts_a_good_file_without_creating_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, "proxy:\n  listen: 127.0.0.1:0\n").unwrap();
    let out = warden(&["check", "-c", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("ca.key").exists());
}

#[test]
fn run_with_half_a_ca_pair_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "proxy:\n  listen: 127.0.0.1:0\ntls:\n  ca_cert: ca.crt\n  ca_key: ca.key\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.crt"), "-----BEGIN CERTIFICATE-----\n").unwrap();
    let out = warden(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.ca_key"), "{err}");
    assert!(err.contains("ca.key") && err.contains("does not"), "{err}");
}

#[test]
fn run_with_a_bad_ca_pem_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, "proxy:\n  listen: 127.0.0.1:0\n").unwrap();
    std::fs::write(dir.path().join("ca.crt"), "garbage").unwrap();
    std::fs::write(dir.path().join("ca.key"), "garbage").unwrap();
    let out = warden(&["run", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a PEM"), "{err}");
}

#[test]
fn ca_prints_the_certificate_path_and_client_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(
        &file,
        "proxy:\n  listen: 0.0.0.0:9999\n  allow_unauthenticated: true\n",
    )
    .unwrap();
    let out = warden(&["ca", "-c", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cert = std::fs::canonicalize(dir.path().join("ca.crt")).unwrap();
    assert!(text.contains(cert.to_str().unwrap()), "{text}");
    for var in [
        "SSL_CERT_FILE=",
        "REQUESTS_CA_BUNDLE=",
        "NODE_EXTRA_CA_CERTS=",
        "HTTPS_PROXY=http://127.0.0.1:9999",
        "HTTP_PROXY=http://127.0.0.1:9999",
    ] {
        assert!(text.contains(var), "{var} missing in {text}");
    }
    let bundle = std::fs::read_to_string(dir.path().join("ca-bundle.pem")).unwrap();
    assert!(bundle.contains(&std::fs::read_to_string(&cert).unwrap()));
}

#[test]
fn every_bundled_config_parses_and_compiles() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_dir().join("conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // conf/bench.yaml trusts the load harness's origin CA under /tmp/bench; stand one in.
        let bench = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bench.path().join("certs")).unwrap();
        std::fs::write(bench.path().join("certs/origin-ca.pem"), &origin_ca().pem).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/tmp/bench", bench.path().to_str().unwrap());
        let cfg = warden::Config::parse(&text, path.parent().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.compile(warden::CompileOptions { create_ca: false })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(
        seen >= 3,
        "conf/warden.yaml, warden.example.yaml and bench.yaml"
    );
}

#[test]
fn check_reports_every_error_in_one_run() {
    let (code, out) = check(
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  cert_cache_entries: 0\nllm:\n  - host: a.test\n    provider: openai\n    deny_tools: ['a[']\ntransforms:\n  - host: b.test\n    replace_body: [{ pattern: '(', with: x }]\nnetwork:\n  grants: [nosuch]\n",
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "w.yaml:4: limits.cert_cache_entries:",
        "w.yaml:8: llm[0].deny_tools[0]:",
        "w.yaml:11: transforms[0].replace_body[0].pattern:",
        "w.yaml:13: network.grants:",
        "4 errors",
    ] {
        assert!(out.contains(want), "{want} missing in:\n{out}");
    }
}

#[test]
fn check_puts_a_duplicate_top_level_key_on_its_own_line() {
    let (code, out) = check(
        "proxy:\n  listen: 127.0.0.1:0\nlog:\n  level: info\nproxy:\n  listen: 127.0.0.1:1\n",
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("w.yaml:5: duplicate field `proxy`"), "{out}");
}

#[test]
fn check_words_numbers_and_durations_for_people() {
    let (code, out) = check(
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  cert_cache_entries: many\n",
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("expected a whole number"), "{out}");
    assert!(!out.contains("usize"), "{out}");
    let (code, out) = check(
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 30\n",
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("w.yaml:4: limits.idle_timeout:")
            && out.contains("expected a duration such as 10s or 500ms"),
        "{out}"
    );
}

/// A credential from an unset variable next to one whose static value is a canary.
fn unreadable_source_yaml() -> String {
    format!(
        "proxy:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: canary.test\n    source: {{ type: static, value: CLI-CANARY-7731 }}\n  - host: api.example.test\n    source: {{ type: env, var: {UNSET} }}\n"
    )
}

#[test]
fn check_warns_about_an_unreadable_source_and_strict_makes_it_an_error() {
    let yaml = unreadable_source_yaml();
    let (code, out) = check(&yaml, &[]);
    assert_eq!(
        code,
        Some(0),
        "sources are read live, so only a warning:\n{out}"
    );
    for want in [
        "warden: warning: ",
        "w.yaml:7: credentials[1].source: cannot be read now",
        UNSET,
        "credential_unavailable",
        "ok, 1 warning",
    ] {
        assert!(out.contains(want), "{want} missing in:\n{out}");
    }
    let (code, strict) = check(&yaml, &["--strict"]);
    assert_eq!(code, Some(1), "{strict}");
    assert!(strict.contains("credentials[1].source"), "{strict}");
    assert!(strict.contains("--strict"), "{strict}");
    assert!(!strict.contains(": ok"), "{strict}");
    for text in [&out, &strict] {
        assert!(
            !text.contains("CLI-CANARY-7731"),
            "a secret value leaked:\n{text}"
        );
    }
}

#[test]
fn check_notes_a_portless_entry_whose_host_is_allowed_only_on_another_port() {
    let yaml = "proxy:\n  listen: 127.0.0.1:0\ncredentials:\n  - host: api.example.test\n    source: { type: static, value: s }\nnetwork:\n  policy: strict\n  allow:\n    - api.example.test:8443\n";
    for extra in [&[][..], &["--strict"][..]] {
        let (code, out) = check(yaml, extra);
        assert_eq!(code, Some(0), "a note is not a warning ({extra:?}):\n{out}");
        for want in [
            "note: ",
            "w.yaml:4: credentials[0].host:",
            "network.allow[0] `api.example.test:8443` (line 9)",
            "80 and 443",
        ] {
            assert!(out.contains(want), "{want} missing in:\n{out}");
        }
    }
}

#[test]
fn check_notes_a_relay_whose_target_the_network_section_refuses() {
    let yaml = "proxy:\n  listen: 127.0.0.1:0\nnetwork:\n  policy: strict\n  allow: [api.example.test]\nrelays:\n  - { name: ok, target: \"https://api.example.test/v1\" }\n  - { name: off, target: \"https://other.example.test:8443\" }\n";
    let (code, out) = check(yaml, &[]);
    assert_eq!(code, Some(0), "a note is not an error:\n{out}");
    assert!(
        out.contains("note: ")
            && out.contains("w.yaml:8: relays[1].target: names other.example.test:8443"),
        "{out}"
    );
    assert!(!out.contains("relays[0]"), "{out}");
}

#[test]
fn run_logs_an_unreadable_source_once_at_start_without_secret_values() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, unreadable_source_yaml()).unwrap();
    let mut w = Running::start(&file);
    w.wait_for("warden listening");
    let warnings: Vec<&String> = w
        .seen
        .iter()
        .filter(|l| l.contains("credentials[1].source"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", w.seen);
    assert!(
        warnings[0].contains("\"level\":\"warn\"")
            && warnings[0].contains("w.yaml:7")
            && warnings[0].contains(UNSET),
        "{}",
        warnings[0]
    );
    assert!(
        !w.seen.iter().any(|l| l.contains("CLI-CANARY-7731")),
        "{:?}",
        w.seen
    );
}

#[test]
fn a_reload_with_several_errors_logs_each_and_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, "proxy:\n  listen: 127.0.0.1:0\n").unwrap();
    let mut w = Running::start(&file);
    w.wait_for("warden listening");
    std::fs::write(
        &file,
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  cert_cache_entries: 0\nheaders:\n  - host: a.test\n    remove: ['bad name']\n",
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let first = w.wait_for("config reload failed (1 of 2)");
    assert!(
        first.contains("w.yaml:4: limits.cert_cache_entries"),
        "{first}"
    );
    let second = w.wait_for("config reload failed (2 of 2)");
    assert!(second.contains("w.yaml:7: headers[0].remove"), "{second}");
    assert!(second.contains("generation 1 stays in force"), "{second}");
    assert!(w.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn run_watch_reloads_a_file_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.yaml");
    std::fs::write(&file, "proxy:\n  listen: 127.0.0.1:0\n").unwrap();
    let mut w = Running::start_with(&file, &["--watch"]);
    w.wait_for("warden listening");
    std::fs::write(
        &file,
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 60s\n",
    )
    .unwrap();
    w.wait_for("config_reloaded generation=2");
    // A bad file keeps the config in force, as with SIGHUP.
    std::fs::write(
        &file,
        "proxy:\n  listen: 127.0.0.1:0\nlimits:\n  idle_timeout: 0s\n",
    )
    .unwrap();
    let failed = w.wait_for("config reload failed");
    assert!(failed.contains("generation 2 stays in force"), "{failed}");
    std::fs::write(&file, "proxy:\n  listen: 127.0.0.1:0\n").unwrap();
    w.wait_for("config_reloaded generation=3");
    assert!(w.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn run_watch_follows_a_kubernetes_configmap_symlink_swap() {
    // How the kubelet updates a mounted ConfigMap: each version in its own folder, `..data`
    // a symlink to the current one swapped by rename, and the file a symlink through it.
    let dir = tempfile::tempdir().unwrap();
    let version = |name: &str, text: &str| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("w.yaml"), text).unwrap();
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    version("..v1", "proxy:\n  listen: 127.0.0.1:0\n");
    let file = dir.path().join("w.yaml");
    std::os::unix::fs::symlink("..data/w.yaml", &file).unwrap();
    let mut w = Running::start_with(&file, &["--watch"]);
    w.wait_for("warden listening");
    // The same size and, possibly, the same mtime: only the file behind the links differs.
    version("..v2", "proxy:\n  listen: 127.0.0.1:0\n");
    w.wait_for("config_reloaded generation=2");
    version("..v3", "proxy:\n  listen: 127.0.0.1:0\nnope: 1\n");
    w.wait_for("config reload failed");
    version(
        "..v4",
        "proxy:\n  listen: 127.0.0.1:0\nlog:\n  level: info\n",
    );
    w.wait_for("config_reloaded generation=3");
    assert!(w.child.try_wait().unwrap().is_none(), "still running");
}
