//! Hot reload (SIGHUP): re-read and compile the whole config file. Success swaps the snapshot
//! atomically — new requests, and the next request on a kept-alive connection or tunnel, see
//! it while in-flight ones finish on theirs — and bumps the generation. Failure keeps the old
//! snapshot fully in force. Listen addresses cannot change live: they are reported as
//! requiring a restart and left as they are. Called by the binary's SIGHUP handler.

use crate::config::{CompileOptions, Config, ConfigErrors};
use crate::state::Shared;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

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
