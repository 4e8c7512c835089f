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

/// The Dockerfile's instructions in order, as (INSTRUCTION, arguments): continuation lines
/// joined, comments and blank lines dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_dir().join("Dockerfile")).expect("Dockerfile exists");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                let (op, args) = pending.split_once(' ').unwrap_or((&pending, ""));
                out.push((op.to_ascii_uppercase(), args.trim().to_string()));
                pending.clear();
            }
        }
    }
    out
}

/// deploy/docker/warden.yaml, the image's config, compiled with its token stood in for.
fn image_config(dir: &tempfile::TempDir) -> warden::Snapshot {
    let text = std::fs::read_to_string(repo_dir().join("deploy/docker/warden.yaml"))
        .expect("deploy/docker/warden.yaml exists")
        .replace("/var/lib/warden/ca", dir.path().to_str().unwrap())
        .replace(
            "{ type: env, var: WARDEN_AGENT_TOKEN }",
            "{ type: static, value: t }",
        );
    warden::Config::parse(&text, dir.path())
        .unwrap()
        .compile(warden::CompileOptions { create_ca: true })
        .unwrap()
}

#[test]
fn the_dockerfile_builds_locked_in_stages_and_runs_unprivileged_with_a_healthcheck() {
    let all = dockerfile();
    let froms: Vec<usize> = (0..all.len()).filter(|&i| all[i].0 == "FROM").collect();
    assert!(froms.len() >= 2, "a multi-stage build: {all:?}");
    assert!(
        all[froms[0]].1.ends_with(" AS build"),
        "{:?}",
        all[froms[0]]
    );
    let build = &all[froms[0]..froms[froms.len() - 1]];
    assert!(
        build
            .iter()
            .any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked")),
        "the build uses Cargo.lock as it is: {build:?}"
    );
    assert!(
        build.iter().any(|(op, a)| op == "RUN"
            && a.contains("objcopy --only-keep-debug")
            && a.contains("objcopy --strip-debug --add-gnu-debuglink")),
        "the image's binary leaves its line tables in a file of their own: {build:?}"
    );
    let runtime = &all[froms[froms.len() - 1]..];
    assert!(
        runtime[0].1.contains("-slim"),
        "a slim runtime: {:?}",
        runtime[0]
    );
    let one = |op: &str| -> &str {
        let found: Vec<&str> = runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one {op} in the runtime stage: {runtime:?}");
        found[0]
    };
    let user = one("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "non-root: {user}"
    );
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "COPY"
            && a.ends_with("deploy/docker/warden.yaml /etc/warden/warden.yaml")));
    assert_eq!(one("STOPSIGNAL"), "SIGTERM");
    // Exec form, so warden is PID 1 and gets SIGTERM (drain) and SIGHUP (reload) itself.
    assert!(one("ENTRYPOINT").starts_with('['), "{}", one("ENTRYPOINT"));
    assert_eq!(one("CMD"), r#"["run", "-c", "/etc/warden/warden.yaml"]"#);
    let dir = tempfile::tempdir().unwrap();
    let snap = image_config(&dir);
    let admin = snap
        .admin_listen
        .expect("the image's config serves the admin port");
    let health = one("HEALTHCHECK");
    assert!(
        health.contains(&format!("127.0.0.1:{}/healthz", admin.port())),
        "{health}"
    );
    let exposed = one("EXPOSE");
    for port in [snap.proxy_listen.port(), admin.port()] {
        assert!(
            exposed.split_whitespace().any(|p| p == port.to_string()),
            "{exposed} exposes {port}"
        );
    }
    assert!(snap.proxy_listen.ip().is_unspecified() && admin.ip().is_unspecified());
    // The CA lives in the volume, so a new container keeps the CA agents trust.
    let volume = one("VOLUME");
    let text = std::fs::read_to_string(repo_dir().join("deploy/docker/warden.yaml")).unwrap();
    assert!(volume.contains("/var/lib/warden/ca"), "{volume}");
    assert!(
        text.contains("ca_cert: /var/lib/warden/ca/")
            && text.contains("ca_key: /var/lib/warden/ca/")
    );
}

#[test]
fn the_compose_file_validates_and_leaves_the_agent_no_way_out_but_warden() {
    let out = Command::new("docker-compose")
        .args(["-f", "deploy/compose.yaml", "config"])
        .current_dir(repo_dir())
        .env("WARDEN_AGENT_TOKEN", "t")
        .output()
        .expect("docker-compose is installed (bash .ci/deps installs it)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let networks = |service: &str| -> Vec<String> {
        let n = &doc["services"][service]["networks"];
        match n {
            serde_yaml::Value::Sequence(s) => {
                s.iter().map(|v| v.as_str().unwrap().to_string()).collect()
            }
            serde_yaml::Value::Mapping(m) => {
                m.keys().map(|k| k.as_str().unwrap().to_string()).collect()
            }
            other => panic!("{service}'s networks: {other:?}"),
        }
    };
    let internal = |net: &str| doc["networks"][net]["internal"] == true;
    let agent = networks("agent");
    assert!(
        !agent.is_empty() && agent.iter().all(|n| internal(n)),
        "{agent:?}"
    );
    let warden_nets = networks("warden");
    assert!(agent.iter().all(|n| warden_nets.contains(n)));
    assert!(warden_nets.iter().any(|n| !internal(n)), "{warden_nets:?}");
    let dir = tempfile::tempdir().unwrap();
    let snap = image_config(&dir);
    let proxy = doc["services"]["agent"]["environment"]["HTTPS_PROXY"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        proxy,
        format!("http://agent:t@warden:{}", snap.proxy_listen.port())
    );
    assert_eq!(
        doc["services"]["agent"]["depends_on"]["warden"]["condition"],
        "service_healthy"
    );
    let grace = doc["services"]["warden"]["stop_grace_period"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse::<u64>().ok())
        .expect("a stop_grace_period in seconds");
    assert!(grace > snap.limits.shutdown_grace.as_secs());
}
