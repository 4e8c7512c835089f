//! Hot reload (SIGHUP): re-read and compile the whole config file. Success swaps the snapshot
//! atomically — new requests, and the next request on a kept-alive connection or tunnel, see
//! it while in-flight ones finish on theirs — and bumps the generation. Failure keeps the old
//! snapshot fully in force. Listen addresses cannot change live: they are reported as
//! requiring a restart and left as they are. Called by the binary's SIGHUP handler, and by
//! `run --watch` when the file changes ([`Watcher`]).

use crate::config::{CompileOptions, Config, ConfigErrors};
use crate::state::Shared;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often `run --watch` looks at the config file.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// One version of the config file: the file its path resolves to now (through every symlink,
/// so Kubernetes' swap of a mounted ConfigMap's `..data` link counts), its size and mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Watches the config file by looking at it every interval: portable, bounded, and blind to
/// how the file was replaced (written in place, renamed over, or a symlink swapped).
#[derive(Debug)]
pub struct Watcher {
    path: PathBuf,
    every: Duration,
    last: Option<Stamp>,
}

impl Watcher {
    /// A watcher of `path` as it is now.
    pub fn new(path: &Path, every: Duration) -> Self {
        Watcher {
            path: path.to_path_buf(),
            every,
            last: Stamp::of(path),
        }
    }

    /// Returns once the file has changed and then held still for one interval (so a file
    /// being written is read whole). A missing file is no change: the config in force stays.
    pub async fn changed(&mut self) {
        loop {
            tokio::time::sleep(self.every).await;
            let Some(now) = Stamp::of(&self.path) else {
                continue;
            };
            if self.last.as_ref() == Some(&now) {
                continue;
            }
            tokio::time::sleep(self.every).await;
            if Stamp::of(&self.path).as_ref() == Some(&now) {
                self.last = Some(now);
                return;
            }
        }
    }
}

/// Reloads `path` into `shared`; returns the new generation, or every error that left the
/// old config in force. Either way it is logged (each error on its own line) and counted.
pub fn reload_from(path: &Path, shared: &Shared) -> Result<u64, ConfigErrors> {
    let old = shared.snapshot.load_full();
    let compiled = Config::load(path)
        .map_err(ConfigErrors::from)
        .and_then(|cfg| {
            let mut snap = cfg.compile(CompileOptions { create_ca: true })?;
            let changes = [
                (
                    "proxy.listen",
                    Some(old.proxy_listen),
                    Some(snap.proxy_listen),
                ),
                ("admin.listen", old.admin_listen, snap.admin_listen),
            ];
            for (key, was, now) in changes {
                if was != now {
                    log::warn!(
                        "{key} requires restart: still serving {was:?}, the file now says {now:?}"
                    );
                }
            }
            snap.proxy_listen = old.proxy_listen;
            snap.admin_listen = old.admin_listen;
            // The files the process logger has open (in a process without warden's logger,
            // the ones the start named).
            let writing = crate::telemetry::log_destinations().unwrap_or(&old.log_files);
            for warning in crate::telemetry::destination_changes(writing, &snap.log_files) {
                log::warn!("{warning}");
            }
            snap.log_files = writing.clone();
            Ok((snap, cfg.findings().warnings))
        });
    match compiled {
        Ok((snap, warnings)) => {
            let snap = Arc::new(snap);
            shared.snapshot.store(snap.clone());
            shared.runtime.reloaded(&snap);
            shared.configured();
            let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
            shared.metrics.reloaded(true, generation);
            log::info!("config_reloaded generation={generation}");
            for w in warnings {
                log::warn!("config warning: {w}");
            }
            Ok(generation)
        }
        Err(e) => {
            let generation = shared.generation.load(Ordering::SeqCst);
            shared.metrics.reloaded(false, generation);
            let count = e.iter().count();
            for (i, one) in e.iter().enumerate() {
                log::error!(
                    "config reload failed ({} of {count}), generation {generation} stays in force: {one}",
                    i + 1
                );
            }
            Err(e)
        }
    }
}
