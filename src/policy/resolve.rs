//! Name resolution for dialling: IP literals, `network.resolve` overrides, then DNS with a
//! short-lived cache. What the answers may be used for is the policy's call, not this module's.

use crate::reason::Reason;
use crate::target::{Authority, Host};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a DNS answer is reused. The system resolver gives no TTLs; this keeps one lookup
/// from costing every request (a lookup is a trip through the blocking pool) while following
/// changes within seconds. Every use of a cached answer is checked again (the SSRF guard).
const DNS_CACHE_TTL: Duration = Duration::from_secs(10);

/// Names whose answers are cached (least recently used beyond this are evicted).
const DNS_CACHE_ENTRIES: usize = 4096;

/// Resolves destinations: IP literals as they are, `network.resolve` overrides, then DNS
/// (answers cached in a [`DnsCache`]).
#[derive(Debug, Default)]
pub struct Resolver {
    overrides: HashMap<String, IpAddr>,
}

/// Answers from the system resolver, cached for [`DNS_CACHE_TTL`]; concurrent lookups of one
/// name share one query. Runtime state: kept across reloads, shared by every client's policy
/// (an override is config and never reaches it).
#[derive(Debug)]
pub struct DnsCache {
    lookups: AtomicU64,
    answers: quick_cache::sync::Cache<String, (Vec<IpAddr>, std::time::Instant)>,
}

impl Default for DnsCache {
    fn default() -> Self {
        DnsCache {
            lookups: AtomicU64::new(0),
            answers: quick_cache::sync::Cache::new(DNS_CACHE_ENTRIES),
        }
    }
}

impl DnsCache {
    /// Name lookups sent to DNS since start (overrides and IP literals are not lookups).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

impl Resolver {
    /// A resolver that answers the names in `overrides` (as `parse_host` spells them) before
    /// asking DNS.
    pub fn with_overrides(overrides: HashMap<String, IpAddr>) -> Self {
        Resolver { overrides }
    }

    /// Every address for `dest`, DNS answers from and into `dns`. DNS is bounded by
    /// `timeout`; no answer, an error or the timeout all yield [`Reason::DnsError`].
    pub async fn resolve_all(
        &self,
        dns: &DnsCache,
        dest: &Authority,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, Reason> {
        let name = match &dest.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, dest.port)]),
            Host::Name(name) => name,
        };
        if let Some(ip) = self.overrides.get(name) {
            return Ok(vec![SocketAddr::new(*ip, dest.port)]);
        }
        let with_port = |ips: &[IpAddr]| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, dest.port))
                .collect()
        };
        if let Some((ips, at)) = dns.answers.get(name.as_str()) {
            if at.elapsed() < DNS_CACHE_TTL {
                return Ok(with_port(&ips));
            }
            dns.answers.remove(name.as_str());
        }
        let (ips, _) = dns
            .answers
            .get_or_insert_async(name.as_str(), async {
                dns.lookups.fetch_add(1, Ordering::Relaxed);
                let lookup = tokio::net::lookup_host((name.as_str(), 0));
                match tokio::time::timeout(timeout, lookup).await {
                    Ok(Ok(addrs)) => {
                        let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                        if ips.is_empty() {
                            Err(Reason::DnsError)
                        } else {
                            Ok((ips, std::time::Instant::now()))
                        }
                    }
                    Ok(Err(_)) | Err(_) => Err(Reason::DnsError),
                }
            })
            .await?;
        Ok(with_port(&ips))
    }
}
