//! Clients registered at runtime, through the admin API (`PUT /v1/clients/{name}`), beside
//! the ones in the file. A registration's body has exactly the per-client YAML schema
//! ([`ClientConfig`]) and is compiled by the same [`crate::profile::compile`], over the
//! snapshot's top-level sections; it is compiled again on every reload, so a SIGHUP never
//! drops a runtime client and each one inherits the new top level. Tokens are kept only as
//! SHA-256 hashes, looked up in a map: the request path costs the same with one client or
//! ten thousand. Revoking a client (DELETE, expiry) cancels its [`Client::revoked`] token,
//! which closes its live connections.

use crate::auth::{Client, ClientConfig, Presented, Token};
use crate::compile_error::CompileError;
use crate::config::Snapshot;
use crate::store::{Sealer, Store, StoredClient};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Bytes of a generated proxy token (256 bits).
const TOKEN_BYTES: usize = 32;

/// One registration as stored: the body as sent (without its token), its compiled client,
/// and when it ends.
#[derive(Clone)]
pub struct Registration {
    /// The compiled client (its profile over the current top level).
    pub client: Arc<Client>,
    /// The sections as sent, compiled again on reload.
    body: Arc<Value>,
    token_hash: [u8; 32],
    /// When the client is revoked by itself.
    pub expires_at: Option<SystemTime>,
}

/// Never shows the body: in memory it holds `static` secret values in plaintext.
impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("client", &self.client.name)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Default)]
struct Registered {
    by_token: HashMap<[u8; 32], Arc<Client>>,
    by_name: BTreeMap<Arc<str>, Registration>,
}

/// The runtime clients. Lookups take a shared lock on two hash maps (cost independent of how
/// many clients there are); writes are serialised, each written to the store before it
/// takes effect, and change one entry in place.
#[derive(Debug, Default)]
pub struct Registry {
    state: std::sync::RwLock<Registered>,
    write: tokio::sync::Mutex<()>,
    backing: arc_swap::ArcSwapOption<Backing>,
}

/// Where registrations are written, and how their secrets are sealed there.
#[derive(Debug)]
struct Backing {
    store: Arc<dyn Store>,
    sealer: Option<Arc<Sealer>>,
}

/// Why a registration was refused: the HTTP status, the JSON pointer of the bad field (when
/// one is to blame) and the message `warden check` gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// `400`, `409`, ...
    pub status: u16,
    /// The JSON pointer of the bad field.
    pub pointer: Option<String>,
    /// What is wrong with it.
    pub message: String,
}

impl Refused {
    fn new(status: u16, pointer: Option<String>, message: impl Into<String>) -> Self {
        Refused {
            status,
            pointer,
            message: message.into(),
        }
    }

    fn bad(pointer: &str, message: impl Into<String>) -> Self {
        Refused::new(400, Some(pointer.to_string()), message)
    }
}

/// What a successful `PUT` reports.
#[derive(Debug)]
pub struct PutOutcome {
    /// A new name (201), not a replacement (200).
    pub created: bool,
    /// The token warden generated, shown this once; `None` when the body carried one.
    pub token: Option<String>,
    /// When it is revoked by itself.
    pub expires_at: Option<SystemTime>,
}

/// Whether `name` is a valid client name: `[a-z0-9._-]{1,64}`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A config key (`network.allow[0]`) as a JSON pointer (`/network/allow/0`).
pub fn pointer_of(key: &str) -> String {
    let mut out = String::new();
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (head, indices) = part.split_once('[').map_or((part, ""), |(h, i)| (h, i));
        out.push('/');
        out.push_str(&head.replace('~', "~0").replace('/', "~1"));
        for index in indices.split('[') {
            let index = index.trim_end_matches(']');
            if !index.is_empty() {
                out.push('/');
                out.push_str(index);
            }
        }
    }
    out
}

/// The body as `GET` shows it: no token, and every `static` secret source without its value.
fn redacted(body: &Value) -> Value {
    match body {
        Value::Object(map) => {
            let is_static = map.get("type").and_then(Value::as_str) == Some("static");
            let mut out = Map::new();
            for (k, v) in map {
                if k == "token" || (is_static && k == "value") {
                    continue;
                }
                out.insert(k.clone(), redacted(v));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

/// The sections of `body` compiled for client `name` over `snap`'s top level.
fn compile(
    name: &str,
    body: &Value,
    snap: &Snapshot,
) -> Result<Arc<crate::profile::Profile>, Refused> {
    if let Some(pointer) = refreshing_source(body, String::new()) {
        // Either would let an API caller run a command on this host, or send requests and
        // write files from it: only the config file may configure them.
        return Err(Refused::bad(
            &pointer,
            "process and oauth2 sources are configured in the config file only; use an env, file or static source",
        ));
    }
    let mut fields = body.as_object().cloned().unwrap_or_default();
    fields.insert("name".into(), Value::String(name.into()));
    // The schema's token is a secret source; a registration's is handled apart.
    fields.insert(
        "token".into(),
        serde_json::json!({ "type": "static", "value": "-" }),
    );
    let config: ClientConfig =
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let path = e.path().to_string();
            let pointer = if path == "." {
                String::new()
            } else {
                pointer_of(&path)
            };
            Refused::bad(&pointer, e.into_inner().to_string())
        })?;
    let sections = config.sections();
    if sections.is_empty() {
        return Ok(snap.profile.clone());
    }
    crate::profile::compile(&sections, Some(&snap.profile), "", &snap.base_dir)
        .map(Arc::new)
        .map_err(|errors| {
            let CompileError { key, message } = errors
                .into_iter()
                .next()
                .unwrap_or_else(|| CompileError::new(String::new(), "does not compile".into()));
            Refused::bad(&pointer_of(&key), message)
        })
}

/// The JSON pointer of the first `process` or `oauth2` source in `body`, if any.
fn refreshing_source(body: &Value, at: String) -> Option<String> {
    match body {
        Value::Object(map) => {
            let kind = map.get("type").and_then(Value::as_str);
            if matches!(kind, Some("process" | "oauth2")) {
                return Some(at);
            }
            map.iter().find_map(|(k, v)| {
                let k = k.replace('~', "~0").replace('/', "~1");
                refreshing_source(v, format!("{at}/{k}"))
            })
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| refreshing_source(v, format!("{at}/{i}"))),
        _ => None,
    }
}

/// When a registration ends: `expires_in` (`"2h"`) or `expires_at` (RFC 3339), not both.
fn expiry(body: &Map<String, Value>, now: SystemTime) -> Result<Option<SystemTime>, Refused> {
    let text = |key: &str| -> Result<Option<&str>, Refused> {
        match body.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Refused::bad(&format!("/{key}"), "must be a string")),
        }
    };
    let at = match (text("expires_in")?, text("expires_at")?) {
        (Some(_), Some(_)) => {
            return Err(Refused::bad(
                "/expires_at",
                "give expires_in or expires_at, not both",
            ))
        }
        (Some(d), None) => {
            let d = humantime::parse_duration(d)
                .map_err(|e| Refused::bad("/expires_in", format!("not a duration: {e}")))?;
            now + d
        }
        (None, Some(t)) => humantime::parse_rfc3339_weak(t)
            .map_err(|e| Refused::bad("/expires_at", format!("not an RFC 3339 time: {e}")))?,
        (None, None) => return Ok(None),
    };
    if at <= now {
        return Err(Refused::bad(
            if body.contains_key("expires_at") {
                "/expires_at"
            } else {
                "/expires_in"
            },
            "is not in the future",
        ));
    }
    Ok(Some(at))
}

/// The token a body carries (`"token": "…"`), or a generated one.
fn token_of(body: &Map<String, Value>) -> Result<(Vec<u8>, bool), Refused> {
    match body.get("token") {
        None => {
            let mut raw = [0u8; TOKEN_BYTES];
            openssl::rand::rand_bytes(&mut raw)
                .map_err(|e| Refused::new(500, None, format!("no randomness: {e}")))?;
            let text = hex(&raw);
            Ok((text.into_bytes(), true))
        }
        Some(Value::String(t))
            if t.len() >= 16 && t.len() <= 4096 && !t.contains(char::is_whitespace) =>
        {
            Ok((t.clone().into_bytes(), false))
        }
        Some(Value::String(_)) => Err(Refused::bad(
            "/token",
            "a token is 16 to 4096 characters without spaces",
        )),
        Some(_) => Err(Refused::bad("/token", "must be a string")),
    }
}

impl Registry {
    /// Creates or replaces client `name` from a JSON `body`, compiled over `snap`. A name in
    /// the file is `409`; any bad field is `400` with its pointer. Replacing a client with a
    /// new token closes the old token's connections; with the same token they stay.
    pub async fn put(
        &self,
        name: &str,
        body: &[u8],
        snap: &Snapshot,
    ) -> Result<PutOutcome, Refused> {
        if !valid_name(name) {
            return Err(Refused::new(
                400,
                None,
                "a client name is 1 to 64 of a-z, 0-9, '.', '_' and '-'",
            ));
        }
        if snap.auth.as_ref().is_some_and(|a| a.get(name).is_some()) {
            return Err(Refused::new(
                409,
                None,
                format!("client `{name}` is defined in the config file"),
            ));
        }
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Refused::new(400, Some(String::new()), format!("not JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(Refused::bad("", "the body must be a JSON object"));
        };
        if let Some(n) = fields.remove("name") {
            if n.as_str() != Some(name) {
                return Err(Refused::bad("/name", "differs from the name in the URL"));
            }
        }
        let now = SystemTime::now();
        let expires_at = expiry(&fields, now)?;
        let (token, generated) = token_of(&fields)?;
        fields.remove("token");
        fields.remove("expires_in");
        fields.remove("expires_at");
        let body = Value::Object(fields);
        let profile = compile(name, &body, snap)?;
        let token_hash = openssl::sha::sha256(&token);
        let stored = self.stored(name, &body, &token_hash, expires_at)?;

        let _guard = self.write.lock().await;
        let taken = self
            .read()
            .by_token
            .get(&token_hash)
            .is_some_and(|t| &*t.name != name);
        if taken {
            return Err(Refused::bad("/token", "is another client's token"));
        }
        // Read before the write: with Redis, this instance's own follower may apply the
        // change it announces before the write returns, and a new name would look replaced.
        let previous = self.current(name);
        self.store()
            .put(&stored)
            .await
            .map_err(|e| Refused::new(503, None, e.to_string()))?;
        let created = previous.is_none();
        let revoked = match &previous {
            Some(p) if p.token_hash == token_hash => p.client.revoked.clone(),
            _ => CancellationToken::new(),
        };
        let client = Arc::new(Client::registered(
            name,
            Token::Hash(token_hash),
            profile,
            revoked,
        ));
        let registration = Registration {
            client,
            body: Arc::new(body),
            token_hash,
            expires_at,
        };
        self.publish(name, Some(registration));
        if let Some(p) = previous.filter(|p| p.token_hash != token_hash) {
            p.client.revoked.cancel();
        }
        log::info!("client `{name}` registered");
        Ok(PutOutcome {
            created,
            token: generated.then(|| String::from_utf8_lossy(&token).into_owned()),
            expires_at,
        })
    }

    /// The store registrations are written to (`memory` until [`Registry::attach`]).
    fn store(&self) -> Arc<dyn Store> {
        self.backing.load().as_ref().map_or_else(
            || Arc::new(crate::store::Memory) as Arc<dyn Store>,
            |b| b.store.clone(),
        )
    }

    /// What the store keeps for a registration: secret values sealed; refused when the store
    /// persists and there is no key to seal them with.
    fn stored(
        &self,
        name: &str,
        body: &Value,
        token_hash: &[u8; 32],
        expires_at: Option<SystemTime>,
    ) -> Result<StoredClient, Refused> {
        let backing = self.backing.load();
        let persists = backing.as_ref().is_some_and(|b| b.store.persists());
        let sealer = backing.as_ref().and_then(|b| b.sealer.clone());
        let body = match (&sealer, persists) {
            (Some(sealer), true) => crate::store::transform(body, name, sealer, true)
                .map_err(|e| Refused::new(500, None, e.to_string()))?,
            (None, true) if crate::store::has_static_value(body) => {
                return Err(Refused::bad(
                    "",
                    "a static secret value needs state.encryption_key to be kept by this state backend; use an env or file source, or set the key",
                ))
            }
            _ => body.clone(),
        };
        Ok(StoredClient {
            name: name.to_string(),
            token_hash: hex(token_hash),
            body,
            expires_at: expires_at.and_then(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs())
            }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registered> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_maps(&self) -> std::sync::RwLockWriteGuard<'_, Registered> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current registration of `name`.
    fn current(&self, name: &str) -> Option<Registration> {
        self.read().by_name.get(name).cloned()
    }

    /// Puts (`Some`) or removes (`None`) one registration in the in-memory maps.
    fn publish(&self, name: &str, registration: Option<Registration>) {
        let mut maps = self.write_maps();
        if let Some(old) = maps.by_name.remove(name) {
            maps.by_token.remove(&old.token_hash);
        }
        if let Some(r) = registration {
            maps.by_token.insert(r.token_hash, r.client.clone());
            maps.by_name.insert(Arc::from(name), r);
        }
    }

    /// Uses `store` from now on, and takes in every registration it holds, compiled over
    /// `snap` (an expired one is removed, one that does not compile is skipped and logged).
    pub async fn attach(
        &self,
        store: Arc<dyn Store>,
        sealer: Option<Arc<Sealer>>,
        snap: &Snapshot,
    ) -> Result<usize, crate::store::StoreError> {
        self.backing.store(Some(Arc::new(Backing {
            store: store.clone(),
            sealer: sealer.clone(),
        })));
        let stored = store.load().await?;
        let now = SystemTime::now();
        let mut loaded = 0;
        for c in stored {
            if c.expiry().is_some_and(|t| t <= now) {
                store.delete(&c.name).await?;
                continue;
            }
            match self.restore(&c, sealer.as_deref(), snap) {
                Ok(r) => {
                    self.publish(&c.name, Some(r));
                    loaded += 1;
                }
                Err(why) => {
                    log::warn!("state: the stored client `{}` is not loaded: {why}", c.name)
                }
            }
        }
        Ok(loaded)
    }

    /// A stored registration made live again.
    fn restore(
        &self,
        c: &StoredClient,
        sealer: Option<&Sealer>,
        snap: &Snapshot,
    ) -> Result<Registration, String> {
        let body = match sealer {
            Some(s) => {
                crate::store::transform(&c.body, &c.name, s, false).map_err(|e| e.to_string())?
            }
            None => c.body.clone(),
        };
        let mut token_hash = [0u8; 32];
        if c.token_hash.len() != 64 {
            return Err("its token hash is malformed".into());
        }
        for (i, byte) in token_hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&c.token_hash[2 * i..2 * i + 2], 16)
                .map_err(|_| "its token hash is malformed".to_string())?;
        }
        let profile = compile(&c.name, &body, snap).map_err(|r| r.message)?;
        Ok(Registration {
            client: Arc::new(Client::registered(
                &c.name,
                Token::Hash(token_hash),
                profile,
                CancellationToken::new(),
            )),
            body: Arc::new(body),
            token_hash,
            expires_at: c.expiry(),
        })
    }

    /// Revokes client `name` now: new requests get `407`, its live connections close.
    /// `Ok(false)` when there is no such runtime client; an error when the store failed
    /// (nothing changed).
    pub async fn delete(&self, name: &str, why: &str) -> Result<bool, crate::store::StoreError> {
        let _guard = self.write.lock().await;
        let Some(gone) = self.current(name) else {
            return Ok(false);
        };
        self.store().delete(name).await?;
        self.publish(name, None);
        gone.client.revoked.cancel();
        log::info!("client `{name}` revoked ({why})");
        Ok(true)
    }

    /// Revokes every registration whose expiry is at or before `now`; returns how many.
    pub async fn expire(&self, now: SystemTime) -> usize {
        let due: Vec<Arc<str>> = self
            .read()
            .by_name
            .iter()
            .filter(|(_, r)| r.expires_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut revoked = 0;
        for name in due {
            match self.delete(&name, "expired").await {
                Ok(true) => revoked += 1,
                Ok(false) => {}
                Err(e) => log::warn!("client `{name}` expired but is not revoked yet: {e}"),
            }
        }
        revoked
    }

    /// The client presenting `presented`, if a registration has its token.
    pub fn authenticate(&self, presented: &Presented) -> Option<Arc<Client>> {
        let hash = openssl::sha::sha256(&presented.token);
        let state = self.read();
        let client = state.by_token.get(&hash)?;
        presented
            .name
            .as_deref()
            .is_none_or(|n| n == &*client.name)
            .then(|| client.clone())
    }

    /// The registered client named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Client>> {
        self.read().by_name.get(name).map(|r| r.client.clone())
    }

    /// Every registration, by name: its sections as `GET` shows them and its expiry.
    pub fn list(&self) -> Vec<(Arc<str>, Value, Option<SystemTime>)> {
        self.read()
            .by_name
            .iter()
            .map(|(n, r)| (n.clone(), redacted(&r.body), r.expires_at))
            .collect()
    }

    /// One registration as `GET` shows it: its sections and expiry.
    pub fn show(&self, name: &str) -> Option<(Value, Option<SystemTime>)> {
        self.read()
            .by_name
            .get(name)
            .map(|r| (redacted(&r.body), r.expires_at))
    }

    /// How many clients are registered.
    pub fn len(&self) -> usize {
        self.read().by_name.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a reload: every registration compiled again over the new top level. One that no
    /// longer compiles keeps its previous profile, and the log says why.
    pub fn recompile(&self, snap: &Snapshot) {
        // Compiled outside the lock; an entry replaced or removed meanwhile is left as it is.
        let entries: Vec<(Arc<str>, Registration)> = self
            .read()
            .by_name
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let mut failed = Vec::new();
        let mut compiled = Vec::with_capacity(entries.len());
        for (name, reg) in entries {
            match compile(&name, &reg.body, snap) {
                Ok(profile) => compiled.push((name, reg, profile)),
                Err(e) => failed.push((name, e)),
            }
        }
        {
            let mut maps = self.write_maps();
            for (name, reg, profile) in compiled {
                let Some(cur) = maps.by_name.get_mut(&name) else {
                    continue;
                };
                if !Arc::ptr_eq(&cur.body, &reg.body) {
                    continue;
                }
                let client = Arc::new(Client::registered(
                    &name,
                    Token::Hash(reg.token_hash),
                    profile,
                    reg.client.revoked.clone(),
                ));
                cur.client = client.clone();
                maps.by_token.insert(reg.token_hash, client);
            }
        }
        for (name, e) in failed {
            log::warn!(
                "client `{name}` keeps its previous policy: after the reload {} {}",
                e.pointer.unwrap_or_default(),
                e.message
            );
        }
    }

    /// A registration another instance made (or changed) and the store announced: taken in
    /// unless it is what this instance already has. A new token closes the old one's
    /// connections, as a local `PUT` does.
    pub fn apply(&self, c: &StoredClient, snap: &Snapshot) {
        let sealer = self.backing.load().as_ref().and_then(|b| b.sealer.clone());
        let fresh = match self.restore(c, sealer.as_deref(), snap) {
            Ok(r) => r,
            Err(why) => return log::warn!("state: the client `{}` is not taken in: {why}", c.name),
        };
        let current = self.current(&c.name);
        let same = current.as_ref().is_some_and(|r| {
            r.token_hash == fresh.token_hash
                && r.body == fresh.body
                && r.expires_at == fresh.expires_at
        });
        if same {
            return;
        }
        let new_hash = fresh.token_hash;
        let kept = current
            .as_ref()
            .filter(|r| r.token_hash == new_hash)
            .map(|r| r.client.revoked.clone());
        let fresh = match kept {
            Some(revoked) => Registration {
                client: Arc::new(Client::registered(
                    &c.name,
                    Token::Hash(fresh.token_hash),
                    fresh.client.profile.clone(),
                    revoked,
                )),
                ..fresh
            },
            None => fresh,
        };
        self.publish(&c.name, Some(fresh));
        if let Some(old) = current.filter(|r| r.token_hash != new_hash) {
            old.client.revoked.cancel();
        }
    }

    /// A registration another instance removed: revoked here too.
    pub fn remove(&self, name: &str) {
        let Some(gone) = self.current(name) else {
            return;
        };
        self.publish(name, None);
        gone.client.revoked.cancel();
        log::info!("client `{name}` revoked (by another instance)");
    }

    /// Makes this instance's registrations exactly `all` (after a reconnect to the store).
    pub fn reconcile(&self, all: &[StoredClient], snap: &Snapshot) {
        for c in all {
            self.apply(c, snap);
        }
        let names: Vec<Arc<str>> = self.read().by_name.keys().cloned().collect();
        for name in names {
            if !all.iter().any(|c| *c.name == *name) {
                self.remove(&name);
            }
        }
    }

    /// The profiles of the registered clients (their correlation sections are kept across
    /// reloads).
    pub fn profiles(&self) -> Vec<Arc<crate::profile::Profile>> {
        self.read()
            .by_name
            .values()
            .map(|r| r.client.profile.clone())
            .collect()
    }
}

/// How often the server looks for expired registrations ([`Registry::expire`]).
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_tokens() {
        assert!(valid_name("run-42.a_b"));
        assert!(!valid_name(""));
        assert!(!valid_name("Run"));
        assert!(!valid_name("a b"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(valid_name(&"a".repeat(64)));
    }

    #[test]
    fn keys_become_json_pointers() {
        assert_eq!(pointer_of("network.allow[0]"), "/network/allow/0");
        assert_eq!(pointer_of("llm[1].deny_tools[2]"), "/llm/1/deny_tools/2");
        assert_eq!(
            pointer_of("correlation.session_header"),
            "/correlation/session_header"
        );
        assert_eq!(pointer_of(""), "");
    }

    #[test]
    fn refreshing_sources_are_refused_at_their_pointer() {
        let body = serde_json::json!({
            "credentials": [
                {"host": "a.test", "source": {"type": "env", "var": "A"}},
                {"host": "b.test", "source": {"type": "process", "command": ["id"]}}
            ]
        });
        assert_eq!(
            refreshing_source(&body, String::new()).as_deref(),
            Some("/credentials/1/source")
        );
        let fine =
            serde_json::json!({"substitutions": [{"source": {"type": "file", "path": "p"}}]});
        assert_eq!(refreshing_source(&fine, String::new()), None);
    }

    #[test]
    fn the_shown_body_has_no_token_and_no_static_value() {
        let body = serde_json::json!({
            "token": "t0ps3cret-token-value",
            "credentials": [
                {"host": "a.test", "source": {"type": "static", "value": "s3cret"}},
                {"host": "b.test", "source": {"type": "env", "var": "B"}}
            ]
        });
        let shown = redacted(&body).to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"type\":\"static\""), "{shown}");
        assert!(shown.contains("\"var\":\"B\""), "{shown}");
    }
}
