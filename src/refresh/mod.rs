//! Refreshing secret sources (`process`, `oauth2`): each value is cached until 75% of its
//! lifetime, then refreshed in the background; a failed refresh keeps the old value until it
//! expires and retries with jittered backoff; one refresh is in flight per source however many
//! requests wait, and they wait without blocking a worker. An upstream 401 on a request that
//! carried a value evicts it and refreshes once. Read by `request_filter` (through admission)
//! and evicted from `upstream_response_filter`.

pub mod oauth2;
pub mod process;

use crate::secret::{Secret, SecretError, SecretSource};
use arc_swap::ArcSwapOption;
use openssl::x509::X509;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a request waits for a refresh in flight: longer than the command or token
/// request may take (10 s each).
const WAIT_FOR_REFRESH: Duration = Duration::from_secs(15);
/// The first retry after a failure; doubled per failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Refreshers kept before those no compiled config holds any more are dropped.
const KEPT_REFRESHERS: usize = 256;

/// Checks a refreshing source's fields when the config is compiled (credentials and
/// substitutions): the sub-key after the source's own key (e.g. `.token_url`) and the message
/// of the first bad field. Other sources pass.
pub fn validate(source: &SecretSource) -> Result<(), (&'static str, String)> {
    match source {
        SecretSource::Process { command, ttl } => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err((".command", "must name a program".into()));
            }
            if *ttl < Duration::from_secs(1) {
                return Err((".ttl", "must be at least 1s".into()));
            }
        }
        SecretSource::Oauth2 {
            token_url,
            client_id,
            client_secret,
            refresh_token,
            ..
        } => {
            oauth2::check_url(token_url).map_err(|m| (".token_url", m))?;
            if client_id.is_empty() {
                return Err((".client_id", "must not be empty".into()));
            }
            let nested = [
                (".client_secret", client_secret.as_deref()),
                (".refresh_token", Some(&**refresh_token)),
            ];
            for (key, source) in nested {
                if source.is_some_and(SecretSource::refreshes) {
                    return Err((key, "takes an env, file or static source".into()));
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// A value a source gave, and for how long it may be used.
#[derive(Debug)]
pub struct Fetched {
    /// The secret.
    pub secret: Secret,
    /// Its lifetime (`ttl`, or the token's `expires_in`).
    pub lifetime: Duration,
}

/// A trust list: the system roots plus `tls.upstream_ca_file`, or `None` for the system roots.
type Roots = Option<Arc<Box<[X509]>>>;

/// The refreshing sources by what they are (source and folder), so a reload that keeps a
/// source keeps its value; with the upstream trust list token requests use and the refresh
/// counts for the metrics.
#[derive(Debug, Default)]
pub struct Refreshers {
    by_source: Mutex<HashMap<(SecretSource, PathBuf), Arc<Refresher>>>,
    roots: ArcSwapOption<Box<[X509]>>,
    /// The token requests' client, built for the trust list it was built with.
    http: Mutex<Option<(Roots, reqwest::Client)>>,
    /// Refreshes that gave a value.
    pub succeeded: AtomicU64,
    /// Refreshes that failed.
    pub failed: AtomicU64,
}

impl Refreshers {
    /// The refresher for `source` read relative to `base_dir`, made on first use.
    pub(crate) fn get(&self, source: &SecretSource, base_dir: &Path) -> Arc<Refresher> {
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let key = (source.clone(), base_dir.to_path_buf());
        if let Some(r) = map.get(&key) {
            return r.clone();
        }
        if map.len() >= KEPT_REFRESHERS {
            // Only the map holds these: no compiled config reads them any more.
            map.retain(|_, r| Arc::strong_count(r) > 1);
        }
        let r = Arc::new(Refresher::new(source.clone(), base_dir.to_path_buf()));
        map.insert(key, r.clone());
        r
    }

    /// The trust list for `https` token endpoints: the system roots plus
    /// `tls.upstream_ca_file`, or `None` for the system roots alone. Set at start and reload.
    pub fn set_roots(&self, roots: Roots) {
        self.roots.store(roots);
    }

    /// The client for token requests over the current trust list, built again only when a
    /// reload changed it.
    fn http_client(&self) -> Result<reqwest::Client, String> {
        let roots = self.roots.load_full();
        let mut http = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_for, client)) = http.as_ref() {
            let same = match (built_for, &roots) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if same {
                return Ok(client.clone());
            }
        }
        let client = oauth2::client(roots.as_deref().map(|r| &r[..]))?;
        *http = Some((roots, client.clone()));
        Ok(client)
    }

    fn counted(&self, ok: bool) {
        let counter = if ok { &self.succeeded } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One refreshing source's cached value and refresh state.
pub struct Refresher {
    source: SecretSource,
    base_dir: PathBuf,
    state: Mutex<State>,
    /// Bumped when a refresh ends: the requests waiting for it look again.
    done: watch::Sender<u64>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Refresher({})", self.source.describe())
    }
}

#[derive(Default)]
struct State {
    value: Option<Held>,
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
    /// A rotated refresh token that could not be written back to its source.
    refresh_token: Option<Secret>,
    next_id: u64,
}

struct Held {
    secret: Secret,
    id: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Which value a request carried, so a 401 evicts that one and no newer.
#[derive(Debug, Clone)]
pub struct Lease {
    refresher: Arc<Refresher>,
    id: u64,
}

impl Lease {
    /// The upstream refused the value (401): evict it and refresh once. A burst of 401s on
    /// the same value refreshes once; one on a value already replaced does nothing.
    pub fn rejected(&self, refreshers: &Arc<Refreshers>) {
        let r = &self.refresher;
        let mut st = r.lock();
        if st.value.as_ref().is_some_and(|h| h.id == self.id) {
            log::info!(
                "credential source {} evicted: the upstream answered 401",
                r.source.describe()
            );
            st.value = None;
            st.retry_at = None;
            if !st.in_flight {
                r.start(&mut st, refreshers);
            }
        }
    }
}

impl Refresher {
    fn new(source: SecretSource, base_dir: PathBuf) -> Self {
        Refresher {
            source,
            base_dir,
            state: Mutex::new(State::default()),
            done: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value now: the cached one while it is valid (starting a background refresh past
    /// 75% of its lifetime), else the outcome of the refresh in flight, started if none is.
    /// Fails at once while backing off after a failure with no valid value left.
    pub(crate) async fn read(
        self: &Arc<Self>,
        refreshers: &Arc<Refreshers>,
    ) -> Result<(Secret, Lease), SecretError> {
        let mut done = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(held) = self.valid(&st, now) {
                if now >= st.value.as_ref().map_or(now, |h| h.refresh_at)
                    && !st.in_flight
                    && st.retry_at.is_none_or(|t| now >= t)
                {
                    self.start(&mut st, refreshers);
                }
                return Ok(held);
            }
            if !st.in_flight {
                if st.retry_at.is_some_and(|t| now < t) {
                    return Err(self.error(&st));
                }
                self.start(&mut st, refreshers);
            }
            // Subscribed under the lock: the end of the refresh cannot be missed.
            self.done.subscribe()
        };
        let _ = tokio::time::timeout(WAIT_FOR_REFRESH, done.changed()).await;
        let st = self.lock();
        self.valid(&st, Instant::now())
            .ok_or_else(|| self.error(&st))
    }

    fn valid(self: &Arc<Self>, st: &State, now: Instant) -> Option<(Secret, Lease)> {
        st.value.as_ref().filter(|h| now < h.expires_at).map(|h| {
            let lease = Lease {
                refresher: self.clone(),
                id: h.id,
            };
            (h.secret.clone(), lease)
        })
    }

    fn error(&self, st: &State) -> SecretError {
        SecretError::Refresh {
            source_name: self.source.describe(),
            cause: st
                .last_error
                .clone()
                .unwrap_or_else(|| "no value yet: the refresh is still running".into()),
        }
    }

    /// Marks a refresh in flight and runs it on the runtime (it outlives a request that
    /// stops waiting).
    fn start(self: &Arc<Self>, st: &mut State, refreshers: &Arc<Refreshers>) {
        st.in_flight = true;
        let rotated = st.refresh_token.clone();
        let me = self.clone();
        let refreshers = refreshers.clone();
        tokio::spawn(async move {
            let mut guard = Unfinished(Some((me.clone(), refreshers.clone())));
            let outcome = me.fetch(rotated, &refreshers).await;
            guard.0 = None;
            me.finish(outcome, &refreshers);
        });
    }

    async fn fetch(
        &self,
        rotated: Option<Secret>,
        refreshers: &Refreshers,
    ) -> Result<(Fetched, Option<Rotation>), String> {
        match &self.source {
            SecretSource::Process { command, ttl } => {
                let secret = process::run(command, &self.base_dir).await?;
                let fetched = Fetched {
                    secret,
                    lifetime: *ttl,
                };
                Ok((fetched, None))
            }
            SecretSource::Oauth2 {
                token_url,
                client_id,
                client_secret,
                refresh_token,
                scope,
            } => {
                let read = |s: &SecretSource| s.read(&self.base_dir).map_err(|e| e.to_string());
                let current = match rotated {
                    Some(token) => token,
                    None => read(refresh_token)?,
                };
                let client_secret = client_secret.as_deref().map(read).transpose()?;
                let request = oauth2::Request {
                    token_url,
                    client_id,
                    client_secret: client_secret.as_ref(),
                    refresh_token: &current,
                    scope: scope.as_deref(),
                };
                let client = refreshers.http_client()?;
                let answer = oauth2::exchange(&request, &client).await?;
                let rotation = answer
                    .refresh_token
                    .filter(|new| *new != current)
                    .map(|new| self.rotate(refresh_token, new));
                let fetched = Fetched {
                    secret: answer.access_token,
                    lifetime: answer.lifetime,
                };
                Ok((fetched, rotation))
            }
            other => Err(format!("{} does not refresh", other.describe())),
        }
    }

    /// Writes a rotated refresh token back to its `file` source; kept in memory otherwise,
    /// or when the write fails.
    fn rotate(&self, source: &SecretSource, new: Secret) -> Rotation {
        if let SecretSource::File { path } = source {
            let path = self.base_dir.join(path);
            match oauth2::write_back(&path, &new) {
                Ok(()) => return Rotation::Written,
                Err(e) => log::warn!(
                    "credential source {}: the rotated refresh token could not be written to {}: {} (kept in memory)",
                    self.source.describe(),
                    path.display(),
                    e.kind()
                ),
            }
        }
        Rotation::InMemory(new)
    }

    fn finish(
        &self,
        outcome: Result<(Fetched, Option<Rotation>), String>,
        refreshers: &Refreshers,
    ) {
        let mut st = self.lock();
        st.in_flight = false;
        let now = Instant::now();
        let name = self.source.describe();
        match outcome {
            Ok((fetched, rotation)) => {
                match rotation {
                    Some(Rotation::Written) => st.refresh_token = None,
                    Some(Rotation::InMemory(token)) => st.refresh_token = Some(token),
                    None => {}
                }
                st.next_id += 1;
                st.value = Some(Held {
                    secret: fetched.secret,
                    id: st.next_id,
                    refresh_at: now + fetched.lifetime.mul_f64(0.75),
                    expires_at: now + fetched.lifetime,
                });
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                refreshers.counted(true);
                log::info!(
                    "credential source {name} refreshed, valid for {}",
                    humantime::format_duration(fetched.lifetime)
                );
            }
            Err(cause) => {
                st.failures = st.failures.saturating_add(1);
                let wait = backoff(st.failures);
                st.retry_at = Some(now + wait);
                let kept = st.value.as_ref().is_some_and(|h| now < h.expires_at);
                refreshers.counted(false);
                log::warn!(
                    "credential source {name} refresh failed ({} in a row, next try in {}ms{}): {cause}",
                    st.failures,
                    wait.as_millis(),
                    if kept { ", the current value is kept until it expires" } else { "" }
                );
                st.last_error = Some(cause);
            }
        }
        drop(st);
        self.done.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Ends a refresh whose task was dropped before it finished (its runtime shut down): the
/// source is not left marked in flight, and its waiters are told.
struct Unfinished(Option<(Arc<Refresher>, Arc<Refreshers>)>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((refresher, refreshers)) = self.0.take() {
            refresher.finish(Err("the refresh was cancelled".into()), &refreshers);
        }
    }
}

enum Rotation {
    Written,
    InMemory(Secret),
}

/// The wait before retry `failures` (1 for the first): doubling from [`FIRST_BACKOFF`] up to
/// [`MAX_BACKOFF`], then a random half to all of it, so sources failing together spread out.
fn backoff(failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let ceiling = doubled.min(MAX_BACKOFF);
    let mut byte = [0u8; 1];
    let jitter = match openssl::rand::rand_bytes(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    ceiling.mul_f64(0.5 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.display().to_string()
    }

    fn process(command: &str, ttl: &str) -> SecretSource {
        serde_yaml::from_str(&format!(
            "{{ type: process, command: ['{command}'], ttl: {ttl} }}"
        ))
        .unwrap()
    }

    #[test]
    fn bad_refreshing_sources_name_their_field() {
        let field = |yaml: &str| {
            validate(&serde_yaml::from_str::<SecretSource>(yaml).unwrap())
                .unwrap_err()
                .0
        };
        assert_eq!(field("{ type: process, command: [] }"), ".command");
        assert_eq!(field("{ type: process, command: [x], ttl: 10ms }"), ".ttl");
        let oauth = |url: &str, id: &str, rt: &str| {
            format!(
                "{{ type: oauth2, token_url: '{url}', client_id: '{id}', refresh_token: {rt} }}"
            )
        };
        let env = "{ type: env, var: RT }";
        assert_eq!(field(&oauth("http://id.test/t", "c", env)), ".token_url");
        assert_eq!(
            field(&oauth("https://u:p@id.test/t", "c", env)),
            ".token_url"
        );
        assert_eq!(field(&oauth("not a url", "c", env)), ".token_url");
        assert_eq!(field(&oauth("https://id.test/t", "", env)), ".client_id");
        assert_eq!(
            field(&oauth(
                "https://id.test/t",
                "c",
                "{ type: process, command: [x] }"
            )),
            ".refresh_token"
        );
        let loopback: SecretSource =
            serde_yaml::from_str(&oauth("http://127.0.0.1:9/t", "c", env)).unwrap();
        assert!(validate(&loopback).is_ok());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for failures in 1..40 {
            let ceiling = FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            let b = backoff(failures);
            assert!(b >= ceiling / 2 && b <= ceiling, "{failures}: {b:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_reads_share_one_refresh_and_the_value_is_cached() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let cmd = script(
            dir.path(),
            "s",
            &format!("echo x >> {}; sleep 0.2; echo value-1", count.display()),
        );
        let refreshers = Arc::new(Refreshers::default());
        let r = refreshers.get(&process(&cmd, "1h"), dir.path());
        let reads = (0..20).map(|_| r.read(&refreshers));
        let results = futures_util::future::join_all(reads).await;
        for result in results {
            assert_eq!(result.unwrap().0.expose(), "value-1");
        }
        assert_eq!(r.read(&refreshers).await.unwrap().0.expose(), "value-1");
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1);
        assert_eq!(refreshers.succeeded.load(Ordering::Relaxed), 1);
        // The same source again (a reload that keeps it) is the same refresher.
        assert!(Arc::ptr_eq(
            &r,
            &refreshers.get(&process(&cmd, "1h"), dir.path())
        ));
    }

    #[tokio::test]
    async fn a_rejected_lease_refreshes_once_and_a_stale_one_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let cmd = script(
            dir.path(),
            "s",
            &format!("echo x >> {c}; wc -l < {c}", c = count.display()),
        );
        let refreshers = Arc::new(Refreshers::default());
        let r = refreshers.get(&process(&cmd, "1h"), dir.path());
        let (first, lease) = r.read(&refreshers).await.unwrap();
        assert_eq!(first.expose().trim(), "1");
        for _ in 0..5 {
            lease.rejected(&refreshers);
        }
        let (second, newer) = r.read(&refreshers).await.unwrap();
        assert_eq!(second.expose().trim(), "2");
        lease.rejected(&refreshers);
        assert_eq!(r.read(&refreshers).await.unwrap().0.expose().trim(), "2");
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
        drop(newer);
    }

    #[tokio::test]
    async fn a_failing_source_fails_closed_backs_off_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ok");
        let cmd = script(
            dir.path(),
            "s",
            &format!(
                "if [ -e {} ]; then echo good; else echo 'no session' >&2; exit 3; fi",
                flag.display()
            ),
        );
        let refreshers = Arc::new(Refreshers::default());
        let r = refreshers.get(&process(&cmd, "1h"), dir.path());
        let err = r.read(&refreshers).await.unwrap_err().to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("no session"),
            "{err}"
        );
        // Backing off: refused at once, without running the command.
        assert!(r.read(&refreshers).await.is_err());
        assert_eq!(refreshers.failed.load(Ordering::Relaxed), 1);
        std::fs::write(&flag, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match r.read(&refreshers).await {
                Ok((s, _)) => break assert_eq!(s.expose(), "good"),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("never recovered: {e}"),
            }
        }
    }
}
