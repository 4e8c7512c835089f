//! The `warden` command: parses the CLI and runs the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use warden::client_env::{EnvRequest, Shell};
use warden::{CompileOptions, Config, ConfigErrors};

// jemalloc, for Rust and (unprefixed malloc) for OpenSSL alike, with its background threads
// on: freed pages go back to the kernel on a timer (`dirty_decay_ms`, 10 s), so RSS follows
// the load even while the workers idle. mimalloc purged only when the freeing thread next
// allocated, and glibc's arenas, which held OpenSSL's buffers, were never trimmed: a minute
// after thousands of tunnels closed, RSS stayed at 11-12x its baseline, against 1.1-1.3x now
// (`cargo bench --bench tunnels`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "warden", version, about = "An egress proxy for AI agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "conf/warden.yaml")]
        config: PathBuf,
        /// Also reload when the config file changes (as SIGHUP does), including a symlink
        /// swap such as Kubernetes' update of a mounted ConfigMap.
        #[arg(long)]
        watch: bool,
    },
    /// Validate a config file: every error with its key and line (exit 1), then warnings
    /// (what will fail at request time, such as an unset secret variable) and notes.
    Check {
        /// Config file.
        #[arg(short, long, default_value = "conf/warden.yaml")]
        config: PathBuf,
        /// Treat warnings as errors (exit 1). Notes never fail the check.
        #[arg(long)]
        strict: bool,
    },
    /// Write the CA bundle and the Java truststore beside the CA certificate and print the
    /// environment a client needs (as `warden env` does, for sh).
    Ca {
        /// Config file.
        #[arg(short, long, default_value = "conf/warden.yaml")]
        config: PathBuf,
        /// Also write a PKCS12 truststore here for Java (warden's CA plus the system roots).
        #[arg(long, value_name = "FILE")]
        java_truststore: Option<PathBuf>,
        /// The Java truststore's password.
        #[arg(long, value_name = "P", default_value = warden::client_env::DEFAULT_TRUSTSTORE_PASSWORD)]
        password: String,
    },
    /// Print the environment that sends a client process through warden, in a shell's
    /// syntax: `eval "$(warden env --client NAME)"`. Writes the CA bundle and a Java
    /// truststore beside the CA certificate.
    Env {
        /// Config file.
        #[arg(short, long, default_value = "conf/warden.yaml")]
        config: PathBuf,
        /// The proxy.auth client whose login the proxy URLs carry (its token is read from its
        /// source in the config).
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// The shell whose syntax is printed.
        #[arg(long, value_enum, default_value_t = ShellArg::Sh)]
        shell: ShellArg,
        /// A host (or comma-separated hosts) that clients reach directly, added to loopback.
        #[arg(long = "no-proxy", value_name = "HOST")]
        no_proxy: Vec<String>,
    },
    /// Register, show, list and remove runtime clients through the clients API (the admin
    /// listener, `admin.token` and `admin.tls` are read from the config file).
    Client {
        /// Config file.
        #[arg(short, long, default_value = "conf/warden.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        action: ClientAction,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ShellArg {
    Sh,
    Fish,
    Powershell,
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create or replace a client; prints its generated token once.
    Add {
        /// The client name ([a-z0-9._-]{1,64}).
        name: String,
        /// The client's sections as JSON (the per-client YAML schema), or @FILE, or - for
        /// standard input. Default: no sections of its own.
        #[arg(long, default_value = "{}")]
        json: String,
        /// Revoke it after this long ("2h").
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Show one client.
    Get {
        /// The client name.
        name: String,
    },
    /// List the registered clients.
    List,
    /// Revoke a client now.
    Remove {
        /// The client name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, watch } => run(&config, watch),
        Command::Check { config, strict } => check(&config, strict),
        Command::Ca {
            config,
            java_truststore,
            password,
        } => ca(&config, java_truststore.as_deref(), &password),
        Command::Env {
            config,
            client,
            shell,
            no_proxy,
        } => {
            let shell = match shell {
                ShellArg::Sh => Shell::Sh,
                ShellArg::Fish => Shell::Fish,
                ShellArg::Powershell => Shell::PowerShell,
            };
            let request = EnvRequest { client, no_proxy };
            env(&config, &request, shell)
        }
        Command::Client { config, action } => client(&config, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ConfigErrors>() {
                Some(errors) => errors.iter().for_each(|e| eprintln!("warden: {e}")),
                None => eprintln!("warden: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path, strict: bool) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let compiled = cfg.compile(CompileOptions { create_ca: false });
    // Errors first, then what will fail later and what may surprise, all in one run.
    if let Err(errors) = &compiled {
        errors.iter().for_each(|e| eprintln!("warden: {e}"));
    }
    let findings = cfg.findings();
    for w in &findings.warnings {
        eprintln!("warden: warning: {w}");
    }
    for n in &findings.notes {
        eprintln!("warden: note: {n}");
    }
    if let Err(errors) = compiled {
        anyhow::bail!(
            "{}: {}",
            path.display(),
            count(errors.iter().count(), "error")
        );
    }
    if strict && !findings.warnings.is_empty() {
        anyhow::bail!(
            "{}: {} (--strict makes them errors)",
            path.display(),
            count(findings.warnings.len(), "warning")
        );
    }
    match findings.warnings.len() {
        0 => println!("{}: ok", path.display()),
        n => println!("{}: ok, {}", path.display(), count(n, "warning")),
    }
    Ok(())
}

fn client(path: &Path, action: ClientAction) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let target = warden::admin_client::Target::from_config(&cfg)?;
    let named = match &action {
        ClientAction::Add { name, .. }
        | ClientAction::Get { name }
        | ClientAction::Remove { name } => Some(name.as_str()),
        ClientAction::List => None,
    };
    if let Some(name) = named.filter(|n| !warden::registry::valid_name(n)) {
        anyhow::bail!("`{name}`: a client name is 1 to 64 of a-z, 0-9, '.', '_' and '-'");
    }
    let (method, url, body) = match action {
        ClientAction::Add {
            name,
            json,
            expires_in,
        } => {
            let text = match json.as_str() {
                "-" => std::io::read_to_string(std::io::stdin())?,
                j => match j.strip_prefix('@') {
                    Some(file) => {
                        std::fs::read_to_string(file).with_context(|| file.to_string())?
                    }
                    None => j.to_string(),
                },
            };
            let mut body: serde_json::Value =
                serde_json::from_str(&text).context("--json is not JSON")?;
            if let (Some(d), Some(map)) = (expires_in, body.as_object_mut()) {
                map.insert("expires_in".into(), serde_json::Value::String(d));
            }
            (
                "PUT",
                format!("/v1/clients/{name}"),
                Some(body.to_string().into_bytes()),
            )
        }
        ClientAction::Get { name } => ("GET", format!("/v1/clients/{name}"), None),
        ClientAction::List => ("GET", "/v1/clients".to_string(), None),
        ClientAction::Remove { name } => ("DELETE", format!("/v1/clients/{name}"), None),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, answer) = runtime.block_on(target.call(method, &url, body))?;
    if !answer.trim().is_empty() {
        println!("{}", answer.trim_end());
    }
    if !(200..300).contains(&status) {
        anyhow::bail!("the clients API answered {status}");
    }
    Ok(())
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn ca(path: &Path, java_truststore: Option<&Path>, password: &str) -> anyhow::Result<()> {
    if let Some(file) = java_truststore {
        let cfg = Config::load(path)?;
        let snap = cfg.compile(CompileOptions { create_ca: true })?;
        let roots = warden::tls::system_roots_pem();
        warden::client_env::write_java_truststore(snap.tls.ca.cert_pem(), &roots, file, password)?;
        println!("# Java truststore (PKCS12): {}", file.display());
    }
    env(path, &EnvRequest::default(), Shell::Sh)
}

fn env(path: &Path, request: &EnvRequest, shell: Shell) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let snap = cfg.compile(CompileOptions { create_ca: true })?;
    let files =
        warden::client_env::write_ca_files(&snap, warden::client_env::DEFAULT_TRUSTSTORE_PASSWORD)?;
    let vars = warden::client_env::client_env(&cfg, &snap, &files, request)?;
    print!("{}", vars.render(shell));
    Ok(())
}

fn run(path: &Path, watch: bool) -> anyhow::Result<()> {
    let cfg = Config::load(path)?;
    let snap = cfg.compile(CompileOptions { create_ca: true })?;
    warden::telemetry::init_logger(snap.log, &snap.log_files)?;
    // Sources are read per request, so an unreadable one does not stop the start; say so
    // once here rather than only in the 502s that follow.
    for w in cfg.findings().warnings {
        log::warn!("config warning: {w}");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("warden")
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(snap, path, watch));
    runtime.shutdown_timeout(Duration::from_millis(200));
    // The log files' queues, written before the process ends.
    log::logger().flush();
    result
}

async fn serve(snap: warden::Snapshot, path: &Path, watch: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Registered before the listeners open: SIGHUP's default action would kill the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut watcher = warden::reload::Watcher::new(path, warden::reload::WATCH_INTERVAL);
    let ca_path = snap.tls.ca.cert_path().display().to_string();
    let running = warden::start(snap).await?;
    log::info!(
        "warden listening proxy={} admin={} generation=1 ca={}",
        running.proxy_addr(),
        running
            .admin_addr()
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
        ca_path
    );
    loop {
        tokio::select! {
            _ = term.recv() => {
                let grace = running.shared().snapshot.load().limits.shutdown_grace;
                log::info!("SIGTERM: no new connections; draining for up to {grace:?}");
                let drained = running.shutdown(grace).await;
                log::info!("shutdown complete drained={drained}");
                return Ok(());
            }
            _ = int.recv() => {
                log::info!("SIGINT: exiting");
                return Ok(());
            }
            _ = hup.recv() => {
                // Logged and counted inside; a failure leaves the old config in force.
                let _ = warden::reload::reload_from(path, running.shared());
            }
            _ = usr1.recv() => warden::telemetry::reopen_log_files(),
            _ = watcher.changed(), if watch => {
                log::info!("{} changed: reloading", path.display());
                let _ = warden::reload::reload_from(path, running.shared());
            }
        }
    }
}
