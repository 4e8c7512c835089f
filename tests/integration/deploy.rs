//! The deployment files under deploy/: each one checked by the tool its platform ships
//! (`systemd-analyze verify` for the unit), and held to what the README promises of it.

use crate::common::*;
use std::process::Command;

/// The unit with its binary path pointed at the one this build made.
fn unit_for_this_build(dir: &tempfile::TempDir) -> (std::path::PathBuf, String) {
    let text = std::fs::read_to_string(repo_dir().join("deploy/systemd/warden.service"))
        .expect("deploy/systemd/warden.service exists");
    let path = dir.path().join("warden.service");
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/warden", env!("CARGO_BIN_EXE_warden")),
    )
    .unwrap();
    (path, text)
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = unit_for_this_build(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (.ci/deps installs systemd)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "verify warned: {said}");
    // The check can fail: an unknown key is reported.
    let bad = dir.path().join("bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("[Service]\n", "[Service]\nNoSuchKey=1\n"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchKey"));
}

#[test]
fn the_systemd_unit_reloads_with_sighup_drains_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let (_, text) = unit_for_this_build(&dir);
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} is not set"))
            .to_string()
    };
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("ProtectSystem"), "strict");
    assert_eq!(value("User"), "warden");
    assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    assert!(value("ExecStart").ends_with("run -c /etc/warden/warden.yaml"));
    // The stop timeout outlasts the default drain.
    let stop: std::time::Duration = humantime::parse_duration(&value("TimeoutStopSec")).unwrap();
    let grace = warden::config::Limits::default().shutdown_grace;
    assert!(stop > grace, "{stop:?} against {grace:?}");
}
