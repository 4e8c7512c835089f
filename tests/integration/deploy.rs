//! The deployment files under deploy/: each one checked by the tool its platform ships
//! (`systemd-analyze verify` for the unit, the Kubernetes schemas through
//! `kubernetes-validate` for the manifests), and held to what the README promises of them.

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

/// Every manifest under deploy/kubernetes, by path relative to it, with its documents.
fn manifests() -> Vec<(String, Vec<serde_yaml::Value>)> {
    let root = repo_dir().join("deploy/kubernetes");
    let mut out = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs = serde_yaml::Deserializer::from_str(&text)
                    .map(|d| serde::Deserialize::deserialize(d).unwrap())
                    .collect();
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                out.push((rel, docs));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// The one document of `kind` in the base.
fn find<'a>(all: &'a [(String, Vec<serde_yaml::Value>)], want: &str) -> &'a serde_yaml::Value {
    let found: Vec<_> = all
        .iter()
        .filter(|(p, _)| !p.contains('/'))
        .flat_map(|(_, d)| d)
        .filter(|d| kind(d) == want)
        .collect();
    assert_eq!(found.len(), 1, "one {want} in the base");
    found[0]
}

#[test]
fn every_kubernetes_manifest_validates_against_the_schemas() {
    let all = manifests();
    assert!(
        all.len() >= 10,
        "{:?}",
        all.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    let validator = crate::clients::python().with_file_name("kubernetes-validate");
    let root = repo_dir().join("deploy/kubernetes");
    let out = Command::new(&validator)
        .arg("--strict")
        .args(all.iter().map(|(p, _)| root.join(p)))
        .output()
        .expect("kubernetes-validate runs (from tests/clients/requirements.txt)");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        // Kustomize files and the Prometheus Operator's ServiceMonitor have no core schema.
        let ok = line.starts_with("INFO ")
            || line.starts_with("WARN ")
                && (line.contains("kind Kustomization") || line.contains("kind ServiceMonitor"));
        assert!(ok, "{line}");
    }
    let passed = said.lines().filter(|l| l.contains(" passed ")).count();
    let core = all
        .iter()
        .flat_map(|(_, d)| d)
        .filter(|d| !matches!(kind(d), "Kustomization" | "ServiceMonitor"))
        .count();
    assert_eq!(passed, core, "{said}");
    // The validator does refuse a bad manifest.
    let bad = tempfile::tempdir().unwrap();
    let file = bad.path().join("deployment.yaml");
    let text = std::fs::read_to_string(root.join("deployment.yaml")).unwrap();
    std::fs::write(&file, text.replace("periodSeconds: 5", "periodSecond: 5")).unwrap();
    let out = Command::new(&validator)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_kustomize_bases_list_every_manifest_beside_them() {
    let all = manifests();
    for (path, docs) in all.iter().filter(|(_, d)| kind(&d[0]) == "Kustomization") {
        let dir = std::path::Path::new(path).parent().unwrap();
        let listed: Vec<String> = docs[0]["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| dir.join(r.as_str().unwrap()).display().to_string())
            .collect();
        let beside: Vec<&String> = all
            .iter()
            .map(|(p, _)| p)
            .filter(|p| std::path::Path::new(p).parent() == Some(dir) && *p != path)
            .collect();
        for p in &beside {
            assert!(listed.contains(p), "{path} does not list {p}");
        }
        assert_eq!(listed.len(), beside.len(), "{path}: {listed:?}");
    }
}

#[test]
fn the_deployment_runs_the_configmaps_config_with_probes_drain_and_reload() {
    let all = manifests();
    let config = find(&all, "ConfigMap")["data"]["warden.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    // The ConfigMap's warden.yaml is a working config (its CA and token stood in for).
    let dir = tempfile::tempdir().unwrap();
    let text = config
        .replace("/var/lib/warden/ca", dir.path().to_str().unwrap())
        .replace(
            "{ type: env, var: WARDEN_AGENT_TOKEN }",
            "{ type: static, value: t }",
        );
    let snap = warden::Config::parse(&text, dir.path())
        .unwrap()
        .compile(warden::CompileOptions { create_ca: true })
        .unwrap();
    let deployment = find(&all, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args, ["run", "-c", "/etc/warden/warden.yaml", "--watch"]);
    let port = |name: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert_eq!(port("proxy"), u64::from(snap.proxy_listen.port()));
    assert_eq!(port("admin"), u64::from(snap.admin_listen.unwrap().port()));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    let pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pause + snap.limits.shutdown_grace.as_secs(),
        "{grace} against {pause} + {:?}",
        snap.limits.shutdown_grace
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/warden"));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // The Service, the ServiceMonitor and the budget all select the Deployment's pods.
    let labels = &deployment["spec"]["selector"]["matchLabels"];
    let service = find(&all, "Service");
    assert_eq!(&service["spec"]["selector"], labels);
    let monitor = find(&all, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert!(service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "admin"));
    assert_eq!(
        &find(&all, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    assert_eq!(
        find(&all, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    // Agents may leave only through warden's proxy port (and DNS).
    let policy = find(&all, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"][0], "Egress");
    assert_eq!(
        policy["spec"]["egress"][0]["ports"][0]["port"].as_u64(),
        Some(u64::from(snap.proxy_listen.port()))
    );
}
