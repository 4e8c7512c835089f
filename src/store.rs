//! Where registered clients are kept beyond warden's memory (`state.backend`): `memory` keeps
//! nothing (a restart forgets them), `embedded` writes each registration to a transactional
//! file store (redb) before it takes effect, so clients survive a restart or a crash. Secret
//! values a registration carries (`static` sources) are sealed with AES-256-GCM under a key
//! from `state.encryption_key` before they are written; without that key such values are
//! refused for a backend that writes.

use crate::secret::{Secret, SecretSource};
use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `state`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Where registered clients are kept.
    #[serde(default)]
    pub backend: Backend,
    /// `embedded`: the store file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Seals secret values of registered clients at rest.
    #[serde(default)]
    pub encryption_key: Option<SecretSource>,
    /// `redis`: the server (`redis://host:port/db`).
    #[serde(default)]
    pub url: Option<String>,
    /// `redis`: the prefix of every key and of the change channel.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// `redis`: what budgets do while Redis is down.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

fn default_prefix() -> String {
    "warden:".into()
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: Backend::Memory,
            path: None,
            encryption_key: None,
            url: None,
            key_prefix: default_prefix(),
            on_unavailable: OnUnavailable::Local,
        }
    }
}

/// `state.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In the process only.
    #[default]
    Memory,
    /// A file store on local disk (`state.path`).
    Embedded,
    /// A Redis server shared by a fleet (`state.url`).
    Redis,
}

/// One registration as a store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredClient {
    /// The client name.
    pub name: String,
    /// SHA-256 of its proxy token, hex.
    pub token_hash: String,
    /// Its sections, secret values sealed.
    pub body: Value,
    /// When it expires, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

impl StoredClient {
    /// The expiry as a time.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// A store failure, for a `503` and the log.
#[derive(Debug, thiserror::Error)]
#[error("the state store failed: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn of(e: impl std::fmt::Display) -> Self {
        StoreError(e.to_string())
    }
}

/// A place registrations are written to and read back from at start.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Every stored registration.
    async fn load(&self) -> Result<Vec<StoredClient>, StoreError>;
    /// Writes (or replaces) one, durably, before it takes effect.
    async fn put(&self, client: &StoredClient) -> Result<(), StoreError>;
    /// Removes one.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Whether values written are kept beyond the process (secrets must then be sealed).
    fn persists(&self) -> bool;
}

/// `memory`: nothing is written.
#[derive(Debug, Default)]
pub struct Memory;

#[async_trait]
impl Store for Memory {
    async fn load(&self) -> Result<Vec<StoredClient>, StoreError> {
        Ok(Vec::new())
    }
    async fn put(&self, _: &StoredClient) -> Result<(), StoreError> {
        Ok(())
    }
    async fn delete(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn persists(&self) -> bool {
        false
    }
}

const CLIENTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("clients");

/// `embedded`: a redb file. Each write is one committed transaction, so a crash leaves every
/// registration either whole or absent.
#[derive(Debug)]
pub struct Embedded {
    db: Arc<redb::Database>,
}

impl Embedded {
    /// Opens (or creates) the store at `path`, recovering it after a crash.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::of)?;
        }
        let db = redb::Database::create(path)
            .map_err(|e| StoreError(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(StoreError::of)?;
        tx.open_table(CLIENTS).map_err(StoreError::of)?;
        tx.commit().map_err(StoreError::of)?;
        Ok(Embedded { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(StoreError::of)?
    }
}

#[async_trait]
impl Store for Embedded {
    async fn load(&self) -> Result<Vec<StoredClient>, StoreError> {
        self.blocking(|db| {
            use redb::ReadableTable;
            let tx = db.begin_read().map_err(StoreError::of)?;
            let table = tx.open_table(CLIENTS).map_err(StoreError::of)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(StoreError::of)? {
                let (name, bytes) = row.map_err(StoreError::of)?;
                match serde_json::from_slice(bytes.value()) {
                    Ok(c) => out.push(c),
                    Err(e) => log::warn!(
                        "state: the stored client `{}` is unreadable: {e}",
                        name.value()
                    ),
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put(&self, client: &StoredClient) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(client).map_err(StoreError::of)?;
        let name = client.name.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(StoreError::of)?;
            {
                let mut table = tx.open_table(CLIENTS).map_err(StoreError::of)?;
                table
                    .insert(name.as_str(), bytes.as_slice())
                    .map_err(StoreError::of)?;
            }
            tx.commit().map_err(StoreError::of)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(StoreError::of)?;
            {
                let mut table = tx.open_table(CLIENTS).map_err(StoreError::of)?;
                table.remove(name.as_str()).map_err(StoreError::of)?;
            }
            tx.commit().map_err(StoreError::of)
        })
        .await
    }

    fn persists(&self) -> bool {
        true
    }
}

/// How long one Redis connection attempt or command may take: past it the store is down for
/// that request (`503`), and the request path never waits on it.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// `redis`: registrations under `{prefix}client:{name}` (JSON), their names in the set
/// `{prefix}clients`, and every change announced on the channel `{prefix}changes` (the name),
/// so each instance pointed at the server follows the others.
pub struct RedisStore {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisStore {
    /// A store on the server at `url` (not contacted yet).
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreError> {
        // The URL may carry a password: the error names the key, not the URL.
        let client = redis::Client::open(url)
            .map_err(|_| StoreError("state.url is not a usable redis:// URL".into()))?;
        Ok(RedisStore {
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: prefix.to_string(),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}client:{name}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}clients", self.prefix)
    }

    /// The channel changes are announced on.
    pub fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, StoreError> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let connect = redis::aio::ConnectionManager::new_with_config(self.client.clone(), config);
        let c = tokio::time::timeout(REDIS_TIMEOUT * 2, connect)
            .await
            .map_err(|_| StoreError("redis did not answer".into()))?
            .map_err(StoreError::of)?;
        *held = Some(c.clone());
        Ok(c)
    }

    /// A failed command drops the connection: the next one dials afresh rather than reuse
    /// one the server closed.
    async fn failed(&self, e: redis::RedisError) -> StoreError {
        *self.conn.lock().await = None;
        StoreError::of(e)
    }

    /// One registration, as the server has it now.
    pub async fn get(&self, name: &str) -> Result<Option<StoredClient>, StoreError> {
        let mut c = self.conn().await?;
        let raw: Option<Vec<u8>> = match redis::cmd("GET")
            .arg(self.key(name))
            .query_async(&mut c)
            .await
        {
            Ok(raw) => raw,
            Err(e) => return Err(self.failed(e).await),
        };
        raw.map(|b| serde_json::from_slice(&b).map_err(StoreError::of))
            .transpose()
    }

    /// A subscription to the change channel: each message is a client's name.
    pub async fn subscribe(
        &self,
    ) -> Result<impl futures_util::Stream<Item = redis::Msg> + use<>, StoreError> {
        let connect = self.client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT * 2, connect)
            .await
            .map_err(|_| StoreError("redis did not answer".into()))?
            .map_err(StoreError::of)?;
        pubsub
            .subscribe(self.channel())
            .await
            .map_err(StoreError::of)?;
        Ok(pubsub.into_on_message())
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn load(&self) -> Result<Vec<StoredClient>, StoreError> {
        let mut c = self.conn().await?;
        let names: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(self.index())
            .query_async(&mut c)
            .await
        {
            Ok(names) => names,
            Err(e) => return Err(self.failed(e).await),
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        let raws: Vec<Option<Vec<u8>>> =
            match redis::cmd("MGET").arg(&keys).query_async(&mut c).await {
                Ok(raws) => raws,
                Err(e) => return Err(self.failed(e).await),
            };
        Ok(raws
            .into_iter()
            .flatten()
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect())
    }

    async fn put(&self, client: &StoredClient) -> Result<(), StoreError> {
        let json = serde_json::to_vec(client).map_err(StoreError::of)?;
        let mut c = self.conn().await?;
        let done = redis::pipe()
            .atomic()
            .set(self.key(&client.name), json)
            .ignore()
            .sadd(self.index(), &client.name)
            .ignore()
            .publish(self.channel(), &client.name)
            .ignore()
            .query_async::<()>(&mut c)
            .await;
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(e).await),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let done = redis::pipe()
            .atomic()
            .del(self.key(name))
            .ignore()
            .srem(self.index(), name)
            .ignore()
            .publish(self.channel(), name)
            .ignore()
            .query_async::<()>(&mut c)
            .await;
        match done {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(e).await),
        }
    }

    fn persists(&self) -> bool {
        true
    }
}

impl RedisStore {
    /// Adds `by` to the counter `key` (0 just reads it) and returns its total; a counter with
    /// a `ttl` expires after it (its window has long ended by then).
    async fn count(&self, key: &str, by: u64, ttl: Option<u64>) -> Result<u64, StoreError> {
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic().incr(key, by);
        if let Some(ttl) = ttl {
            pipe.expire(key, i64::try_from(ttl).unwrap_or(i64::MAX))
                .ignore();
        }
        match pipe.query_async::<(u64,)>(&mut c).await {
            Ok((total,)) => Ok(total),
            Err(e) => Err(self.failed(e).await),
        }
    }
}

/// `state.on_unavailable`: what budgets do while the shared store is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// Count in this process, and hand the counts over when the store is back.
    #[default]
    Local,
    /// Refuse what a budget governs until the store is back.
    FailClosed,
}

/// One counter as this instance knows it: the fleet's total at the last sync, and what this
/// instance counted since.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    synced: u64,
    pending: u64,
}

/// Budget counts shared by a fleet through Redis. The request path only touches local
/// memory: each count is the fleet's total at the last sync plus this instance's own since;
/// [`SharedBudgets::sync`] (a few times a second) adds those to Redis (`INCRBY`, so
/// concurrent instances sum exactly) and reads the totals back. Token buckets
/// (`requests_per_second`) stay per instance.
pub struct SharedBudgets {
    redis: Arc<RedisStore>,
    cells: std::sync::Mutex<std::collections::HashMap<(String, BudgetKey, u64), Cell>>,
    local: crate::budget::MemoryStore,
    down: std::sync::atomic::AtomicBool,
    on_unavailable: OnUnavailable,
}

impl std::fmt::Debug for SharedBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBudgets").finish_non_exhaustive()
    }
}

use crate::budget::{BudgetKey, BudgetStore};

impl SharedBudgets {
    /// Counts shared through `redis`.
    pub fn new(redis: Arc<RedisStore>, on_unavailable: OnUnavailable) -> Self {
        SharedBudgets {
            redis,
            cells: Default::default(),
            local: Default::default(),
            down: Default::default(),
            on_unavailable,
        }
    }

    fn key(&self, client: &str, key: BudgetKey, window: u64) -> String {
        format!(
            "{}budget:{client}:{}:{window}",
            self.redis.prefix,
            key.name()
        )
    }

    /// Hands this instance's counts to Redis and takes the fleet's totals back. Counters of
    /// windows that have ended are forgotten once handed over.
    pub async fn sync(&self, now_secs: u64) -> Result<(), StoreError> {
        let cells: Vec<((String, BudgetKey, u64), Cell)> = self
            .cells
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, c)| (k.clone(), *c))
            .collect();
        for ((client, key, window), cell) in cells {
            let ttl = key.window_secs().map(|w| w * 2);
            let counter = self.key(&client, key, window);
            let total = match self.redis.count(&counter, cell.pending, ttl).await {
                Ok(total) => total,
                Err(e) => {
                    self.down.store(true, std::sync::atomic::Ordering::Relaxed);
                    return Err(e);
                }
            };
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            let ended = key.window_secs().is_some_and(|w| window + w < now_secs);
            let id = (client, key, window);
            if let Some(c) = cells.get_mut(&id) {
                c.synced = total;
                c.pending -= cell.pending.min(c.pending);
                if ended && c.pending == 0 {
                    cells.remove(&id);
                }
            }
        }
        self.down.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

impl BudgetStore for SharedBudgets {
    fn get(&self, client: &str, key: BudgetKey, window: u64) -> u64 {
        // A counter asked about is followed from now on: the next sync reads the fleet's total.
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let c = cells.entry((client.to_string(), key, window)).or_default();
        // fail_closed: while the fleet's count is unknown, every budget reads as spent.
        let down = self.down.load(std::sync::atomic::Ordering::Relaxed);
        if down && self.on_unavailable == OnUnavailable::FailClosed {
            return u64::MAX;
        }
        c.synced + c.pending
    }

    fn add(
        &self,
        client: &str,
        key: BudgetKey,
        window: u64,
        n: u64,
        limit: Option<u64>,
    ) -> Result<u64, u64> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        let cell = cells.entry((client.to_string(), key, window)).or_default();
        let now = cell.synced + cell.pending;
        let down = self.down.load(std::sync::atomic::Ordering::Relaxed);
        if limit.is_some() && down && self.on_unavailable == OnUnavailable::FailClosed {
            return Err(now);
        }
        let sum = now.saturating_add(n);
        if limit.is_some_and(|l| sum > l) {
            return Err(now);
        }
        cell.pending += n;
        Ok(sum)
    }

    fn bucket(&self, client: &str, rate: u64, now_ms: u64, take: bool) -> (bool, f64) {
        self.local.bucket(client, rate, now_ms, take)
    }
}

/// Seals and opens secret values with AES-256-GCM; the key is the SHA-256 of
/// `state.encryption_key`, and the client's name is bound in as associated data, so a sealed
/// value moved to another client does not open.
pub struct Sealer {
    key: [u8; 32],
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer")
    }
}

const NONCE: usize = 12;
const TAG: usize = 16;

impl Sealer {
    /// A sealer keyed by `secret`.
    pub fn new(secret: &Secret) -> Self {
        Sealer {
            key: openssl::sha::sha256(secret.expose().as_bytes()),
        }
    }

    fn seal_one(&self, name: &str, plain: &str) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE];
        openssl::rand::rand_bytes(&mut nonce).map_err(StoreError::of)?;
        let mut tag = [0u8; TAG];
        let ct = openssl::symm::encrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            name.as_bytes(),
            plain.as_bytes(),
            &mut tag,
        )
        .map_err(StoreError::of)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out.extend_from_slice(&tag);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn open_one(&self, name: &str, sealed: &str) -> Result<String, StoreError> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(StoreError::of)?;
        if raw.len() < NONCE + TAG {
            return Err(StoreError("a sealed value is too short".into()));
        }
        let (nonce, rest) = raw.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        let plain = openssl::symm::decrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &self.key,
            Some(nonce),
            name.as_bytes(),
            ct,
            tag,
        )
        .map_err(|_| StoreError("a sealed value does not open with state.encryption_key".into()))?;
        String::from_utf8(plain).map_err(StoreError::of)
    }
}

/// Whether `body` carries a secret value (a `static` source's `value`).
pub fn has_static_value(body: &Value) -> bool {
    match body {
        Value::Object(map) => {
            (map.get("type").and_then(Value::as_str) == Some("static") && map.contains_key("value"))
                || map.values().any(has_static_value)
        }
        Value::Array(items) => items.iter().any(has_static_value),
        _ => false,
    }
}

/// `body` with every `static` source's `value` sealed (`seal`) or opened again (`!seal`).
pub fn transform(
    body: &Value,
    name: &str,
    sealer: &Sealer,
    seal: bool,
) -> Result<Value, StoreError> {
    Ok(match body {
        Value::Object(map) => {
            let is_static = map.get("type").and_then(Value::as_str) == Some("static");
            let mut out = Map::new();
            for (k, v) in map {
                match (is_static, seal, k.as_str(), v) {
                    (true, true, "value", Value::String(plain)) => {
                        out.insert(
                            "sealed".into(),
                            Value::String(sealer.seal_one(name, plain)?),
                        );
                    }
                    (true, false, "sealed", Value::String(sealed)) => {
                        out.insert(
                            "value".into(),
                            Value::String(sealer.open_one(name, sealed)?),
                        );
                    }
                    _ => {
                        out.insert(k.clone(), transform(v, name, sealer, seal)?);
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| transform(v, name, sealer, seal))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_for_their_client() {
        let sealer = Sealer::new(&Secret::new("key-one"));
        let body = serde_json::json!({
            "credentials": [{"host": "a.test", "source": {"type": "static", "value": "s3cret-canary"}}],
            "substitutions": [{"host": "b.test", "source": {"type": "env", "var": "X"}}]
        });
        let sealed = transform(&body, "run-1", &sealer, true).unwrap();
        let text = sealed.to_string();
        assert!(!text.contains("s3cret-canary"), "{text}");
        assert!(text.contains("\"sealed\""), "{text}");
        assert!(!has_static_value(&sealed) && has_static_value(&body));
        assert_eq!(transform(&sealed, "run-1", &sealer, false).unwrap(), body);
        // Another key, or another client's name, does not open it.
        let other = Sealer::new(&Secret::new("key-two"));
        assert!(transform(&sealed, "run-1", &other, false).is_err());
        assert!(transform(&sealed, "run-2", &sealer, false).is_err());
    }

    #[tokio::test]
    async fn the_embedded_store_keeps_registrations_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/clients.redb");
        let c = StoredClient {
            name: "a".into(),
            token_hash: "00".repeat(32),
            body: serde_json::json!({"network": {"policy": "strict"}}),
            expires_at: Some(4_000_000_000),
        };
        {
            let store = Embedded::open(&path).unwrap();
            store.put(&c).await.unwrap();
            let mut b = c.clone();
            b.name = "b".into();
            store.put(&b).await.unwrap();
            store.delete("b").await.unwrap();
        }
        let store = Embedded::open(&path).unwrap();
        assert_eq!(store.load().await.unwrap(), vec![c]);
    }
}
