//! The `warden` binary: `check`, `ca`, start-up failures; and every bundled config compiles.

use crate::common::*;
use std::process::Command;

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .output()
        .expect("warden binary runs")
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
