//! Assumed-role sessions, kept in the runtime across reloads: one slot per [`RoleKey`], filled
//! by one AssumeRole call at a time (single flight: concurrent requests for the same role
//! wait for the call in progress) and refreshed on first use after [`RoleCredentials::refresh_at`].
//! A refresh that fails while the current credentials are still valid keeps them (logged).
//! Also keeps the HTTP client the STS calls go through. Called by `request_filter` (the
//! credentials endpoint and requests to be re-signed).

use super::sts::{assume_role, RoleCredentials, StsError};
use super::{Aws, RoleKey};
use openssl::x509::X509;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Most roles kept at once; past it, sessions not in use are dropped first.
const MAX_ROLES: usize = 1024;
/// Credentials closer to expiry than this are not handed out.
const MIN_VALIDITY: Duration = Duration::from_secs(60);

/// The trust roots and address an STS client was built for.
type ClientKey = (usize, String, SocketAddr);

/// The STS client, with what it was built for (the roots are held so their address, part of
/// the key, is not reused).
type KeptClient = (ClientKey, Option<Arc<Box<[X509]>>>, reqwest::Client);

/// Every role's session, and the STS client.
#[derive(Default)]
pub struct Sessions {
    slots: Mutex<HashMap<RoleKey, Arc<tokio::sync::Mutex<Option<RoleCredentials>>>>>,
    client: Mutex<Option<KeptClient>>,
    calls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let roles = self.slots.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("Sessions").field("roles", &roles).finish()
    }
}

/// Where and how the STS call goes.
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    /// The address the STS host resolved to (checked like any destination).
    pub addr: SocketAddr,
    /// Upstream trust roots (`tls.upstream_ca_file` plus the system's), `None`: system only.
    pub roots: &'a Option<Arc<Box<[X509]>>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-call timeout.
    pub timeout: Duration,
}

impl Sessions {
    /// Valid credentials for `aws`'s role: the kept ones, or fresh ones from STS.
    pub async fn credentials(
        &self,
        aws: &Aws,
        reach: Reach<'_>,
    ) -> Result<RoleCredentials, StsError> {
        let slot = self.slot(&aws.key);
        let mut current = slot.lock().await;
        let now = SystemTime::now();
        if let Some(c) = current.as_ref().filter(|c| now < c.refresh_at()) {
            return Ok(c.clone());
        }
        let http = self.client(aws, reach)?;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match assume_role(&http, aws, reach.timeout).await {
            Ok(fresh) => {
                *current = Some(fresh.clone());
                Ok(fresh)
            }
            Err(e) => match current
                .as_ref()
                .filter(|c| now + MIN_VALIDITY < c.expiration)
            {
                Some(kept) => {
                    log::warn!(
                        "refreshing {} failed, the current session is kept: {e}",
                        aws.key.role_arn
                    );
                    Ok(kept.clone())
                }
                None => Err(e),
            },
        }
    }

    /// How many AssumeRole calls were made (for tests of the cache).
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn slot(&self, key: &RoleKey) -> Arc<tokio::sync::Mutex<Option<RoleCredentials>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.get(key) {
            return s.clone();
        }
        if slots.len() >= MAX_ROLES {
            // Sessions nobody is waiting on go first; if every one is in use, any one.
            let idle: Vec<RoleKey> = slots
                .iter()
                .filter(|(_, s)| Arc::strong_count(s) == 1)
                .map(|(k, _)| k.clone())
                .take(MAX_ROLES / 4)
                .collect();
            for k in idle {
                slots.remove(&k);
            }
            if slots.len() >= MAX_ROLES {
                if let Some(k) = slots.keys().next().cloned() {
                    slots.remove(&k);
                }
            }
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// The STS HTTP client for these roots and this address (built once, rebuilt when they
    /// change).
    fn client(&self, aws: &Aws, reach: Reach<'_>) -> Result<reqwest::Client, StsError> {
        let host = aws.sts.host_str().unwrap_or_default().to_string();
        let roots_id = reach
            .roots
            .as_ref()
            .map_or(0, |r| Arc::as_ptr(r) as *const () as usize);
        let key = (roots_id, host.clone(), reach.addr);
        let mut kept = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, _, c)) = kept.as_ref() {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(reach.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .resolve(&host, reach.addr);
        for cert in reach.roots.iter().flat_map(|r| r.iter()) {
            let der = cert
                .to_der()
                .map_err(|e| StsError::Transport(e.to_string()))?;
            let cert = reqwest::Certificate::from_der(&der)
                .map_err(|e| StsError::Transport(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| StsError::Transport(e.to_string()))?;
        // The roots are kept alive with the client, so their address is not reused.
        *kept = Some((key, reach.roots.clone(), client.clone()));
        Ok(client)
    }
}
