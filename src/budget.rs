//! Client budgets: how many LLM tokens and calls a client may spend per minute, hour, day and
//! in its lifetime, and how many requests per second it may send at all. The limits are a
//! per-client profile section ([`BudgetConfig`] → [`Budget`]); the counts live in the runtime
//! ([`Budgets`], behind the [`BudgetStore`] trait), so a reload, or a client whose budget
//! changes, keeps them. Windows are fixed and aligned to the clock (UTC minutes, hours, days),
//! so counters can be shared by several instances later; `requests_per_second` is a token
//! bucket. Called by the glue before a request or an LLM call goes upstream (a refusal is an
//! [`Exceeded`]), and after a call with the tokens it used.

use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// `budget`, in a client's entry (`proxy.auth.clients[i].budget`). 0 or absent: unlimited.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// LLM tokens (input + output) per clock minute.
    #[serde(default)]
    pub llm_tokens_per_minute: u64,
    /// LLM tokens per clock hour.
    #[serde(default)]
    pub llm_tokens_per_hour: u64,
    /// LLM tokens per UTC day.
    #[serde(default)]
    pub llm_tokens_per_day: u64,
    /// LLM calls per clock minute.
    #[serde(default)]
    pub llm_requests_per_minute: u64,
    /// LLM tokens over the client's lifetime.
    #[serde(default)]
    pub llm_tokens_total: u64,
    /// Requests of any kind per second (a token bucket holding one second's worth).
    #[serde(default)]
    pub requests_per_second: u64,
}

/// One budget a client can have: the `budget` key it is configured by, and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetKey {
    /// `llm_tokens_per_minute`.
    TokensPerMinute,
    /// `llm_tokens_per_hour`.
    TokensPerHour,
    /// `llm_tokens_per_day`.
    TokensPerDay,
    /// `llm_requests_per_minute`.
    RequestsPerMinute,
    /// `llm_tokens_total`.
    TokensTotal,
    /// `requests_per_second`.
    RequestsPerSecond,
}

impl BudgetKey {
    /// Every budget, in the order windows are checked.
    pub const ALL: [BudgetKey; 6] = [
        BudgetKey::TokensTotal,
        BudgetKey::TokensPerDay,
        BudgetKey::TokensPerHour,
        BudgetKey::TokensPerMinute,
        BudgetKey::RequestsPerMinute,
        BudgetKey::RequestsPerSecond,
    ];

    /// The budgets that count LLM tokens.
    const TOKENS: [BudgetKey; 4] = [
        BudgetKey::TokensTotal,
        BudgetKey::TokensPerDay,
        BudgetKey::TokensPerHour,
        BudgetKey::TokensPerMinute,
    ];

    /// The config key, which is also the `budget` metric label.
    pub const fn name(self) -> &'static str {
        match self {
            BudgetKey::TokensPerMinute => "llm_tokens_per_minute",
            BudgetKey::TokensPerHour => "llm_tokens_per_hour",
            BudgetKey::TokensPerDay => "llm_tokens_per_day",
            BudgetKey::RequestsPerMinute => "llm_requests_per_minute",
            BudgetKey::TokensTotal => "llm_tokens_total",
            BudgetKey::RequestsPerSecond => "requests_per_second",
        }
    }

    /// The window's length in seconds; `None` for the lifetime total and the token bucket.
    pub const fn window_secs(self) -> Option<u64> {
        match self {
            BudgetKey::TokensPerMinute | BudgetKey::RequestsPerMinute => Some(60),
            BudgetKey::TokensPerHour => Some(3600),
            BudgetKey::TokensPerDay => Some(86_400),
            BudgetKey::TokensTotal | BudgetKey::RequestsPerSecond => None,
        }
    }

    /// The start (unix seconds) of the window holding `now_ms`; 0 for the lifetime total.
    pub fn window_at(self, now_ms: u64) -> u64 {
        match self.window_secs() {
            Some(w) => now_ms / 1000 / w * w,
            None => 0,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            BudgetKey::TokensPerMinute => "tokens per minute",
            BudgetKey::TokensPerHour => "tokens per hour",
            BudgetKey::TokensPerDay => "tokens per day",
            BudgetKey::RequestsPerMinute => "calls per minute",
            BudgetKey::TokensTotal => "tokens in all",
            BudgetKey::RequestsPerSecond => "requests per second",
        }
    }

    const fn index(self) -> usize {
        match self {
            BudgetKey::TokensPerMinute => 0,
            BudgetKey::TokensPerHour => 1,
            BudgetKey::TokensPerDay => 2,
            BudgetKey::RequestsPerMinute => 3,
            BudgetKey::TokensTotal => 4,
            BudgetKey::RequestsPerSecond => 5,
        }
    }
}

/// A client's compiled budget: the limits that are set (non-zero) and the config key they
/// came from, for the log line's `rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    limits: Vec<(BudgetKey, u64)>,
    key: String,
}

impl BudgetConfig {
    /// The budget under config key `key` (`proxy.auth.clients[0].budget`). Every value is
    /// valid (0 is unlimited), so compiling cannot fail.
    pub fn compile(&self, key: &str) -> Budget {
        let all = [
            (BudgetKey::TokensTotal, self.llm_tokens_total),
            (BudgetKey::TokensPerDay, self.llm_tokens_per_day),
            (BudgetKey::TokensPerHour, self.llm_tokens_per_hour),
            (BudgetKey::TokensPerMinute, self.llm_tokens_per_minute),
            (BudgetKey::RequestsPerMinute, self.llm_requests_per_minute),
            (BudgetKey::RequestsPerSecond, self.requests_per_second),
        ];
        Budget {
            limits: all.into_iter().filter(|(_, n)| *n > 0).collect(),
            key: key.to_string(),
        }
    }
}

impl Budget {
    /// The limit of `key`, when it is set.
    pub fn limit(&self, key: BudgetKey) -> Option<u64> {
        self.limits.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)
    }

    /// The config key of one of its budgets (`proxy.auth.clients[0].budget.llm_tokens_total`).
    pub fn rule(&self, key: BudgetKey) -> String {
        format!("{}.{}", self.key, key.name())
    }

    /// Whether any budget is set.
    pub fn is_unlimited(&self) -> bool {
        self.limits.is_empty()
    }
}

/// A budget that refuses a request: which one, its limit, and when it frees up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The budget spent.
    pub key: BudgetKey,
    /// Its configured limit.
    pub limit: u64,
    /// Seconds until the window frees up (at least 1); `None` for the lifetime total, which
    /// never does.
    pub retry_after: Option<u64>,
    /// The config key, for the log line's `rule`.
    pub rule: String,
}

impl Exceeded {
    /// The lifetime budget is spent: a quota, not a rate (OpenAI's `insufficient_quota`, and
    /// SDKs must not retry).
    pub fn is_quota(&self) -> bool {
        self.key == BudgetKey::TokensTotal
    }

    /// What the agent reads: the budget, its limit, and when to try again.
    pub fn message(&self, client: &str) -> String {
        let what = format!(
            "warden (the egress proxy) refused the request: client `{client}` has spent its budget {} ({} {})",
            self.key.name(),
            self.limit,
            self.key.unit()
        );
        match self.retry_after {
            Some(s) => format!("{what}; it frees up in {s} s (retry-after)."),
            None => format!("{what}; it does not renew: ask the operator to raise it."),
        }
    }
}

/// How much of one budget is left, for the `warden_budget_remaining_ratio` gauge: computed
/// when it is read, so a window that has ended reads as full without any traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Standing {
    /// A counted budget: `used` of `limit` until `ends_ms` (`u64::MAX`: never).
    Window {
        /// The limit.
        limit: u64,
        /// What the window has used.
        used: u64,
        /// When the window ends (unix ms).
        ends_ms: u64,
    },
    /// The token bucket: `tokens` of `rate` at `at_ms`, refilling `rate` per second.
    Bucket {
        /// Tokens in the bucket then.
        tokens: f64,
        /// Tokens per second, and the bucket's size.
        rate: u64,
        /// When it was read (unix ms).
        at_ms: u64,
    },
}

impl Standing {
    /// The share left at `now_ms`, 0 to 1.
    pub fn remaining_at(&self, now_ms: u64) -> f64 {
        match *self {
            Standing::Window {
                limit,
                used,
                ends_ms,
            } => {
                if now_ms >= ends_ms || limit == 0 {
                    1.0
                } else {
                    limit.saturating_sub(used) as f64 / limit as f64
                }
            }
            Standing::Bucket {
                tokens,
                rate,
                at_ms,
            } => {
                if rate == 0 {
                    return 1.0;
                }
                let rate = rate as f64;
                let refilled = tokens + now_ms.saturating_sub(at_ms) as f64 * rate / 1000.0;
                (refilled.min(rate) / rate).clamp(0.0, 1.0)
            }
        }
    }
}

/// Where budget counts are kept. The memory store is the one there is; a store shared by
/// several instances (Redis) implements the same calls: counters per (client, budget, window
/// start) with an atomic add that can refuse to pass a limit, and a token bucket per client.
pub trait BudgetStore: Send + Sync + std::fmt::Debug {
    /// The count of `key` for `client` in the window starting at `window` (unix seconds; 0
    /// for the lifetime total): 0 when nothing was counted in it.
    fn get(&self, client: &str, key: BudgetKey, window: u64) -> u64;

    /// Adds `n` to that count and returns the new one. With a `limit`, a sum that would pass
    /// it adds nothing and returns `Err` with the count as it is.
    fn add(
        &self,
        client: &str,
        key: BudgetKey,
        window: u64,
        n: u64,
        limit: Option<u64>,
    ) -> Result<u64, u64>;

    /// The client's token bucket of `rate` tokens per second (holding at most `rate`, full
    /// when new): whether a token is there at `now_ms` (taken when `take`), and the tokens
    /// left after.
    fn bucket(&self, client: &str, rate: u64, now_ms: u64, take: bool) -> (bool, f64);
}

/// The counts of one client in the memory store: per budget, the window they are for.
type Counts = [(u64, u64); 6];

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

/// Budget counts in this process's memory: one entry per client, holding only the current
/// window of each budget (an older window is replaced when a newer one is counted).
#[derive(Debug, Default)]
pub struct MemoryStore {
    counts: Mutex<HashMap<String, Counts>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl BudgetStore for MemoryStore {
    fn get(&self, client: &str, key: BudgetKey, window: u64) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get(client).map(|c| c[key.index()]) {
            Some((w, n)) if w == window => n,
            _ => 0,
        }
    }

    fn add(
        &self,
        client: &str,
        key: BudgetKey,
        window: u64,
        n: u64,
        limit: Option<u64>,
    ) -> Result<u64, u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match counts.get_mut(client) {
            Some(c) => c,
            None => counts.entry(client.to_string()).or_insert([(0, 0); 6]),
        };
        let slot = &mut entry[key.index()];
        if slot.0 != window {
            *slot = (window, 0);
        }
        let sum = slot.1.saturating_add(n);
        if limit.is_some_and(|l| sum > l) {
            return Err(slot.1);
        }
        slot.1 = sum;
        Ok(sum)
    }

    fn bucket(&self, client: &str, rate: u64, now_ms: u64, take: bool) -> (bool, f64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let size = rate as f64;
        let b = match buckets.get_mut(client) {
            Some(b) => b,
            None => buckets.entry(client.to_string()).or_insert(Bucket {
                tokens: size,
                at_ms: now_ms,
            }),
        };
        // A clock that went back refills nothing; a lowered rate shrinks the bucket.
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64;
        b.tokens = (b.tokens + elapsed * size / 1000.0).min(size);
        b.at_ms = b.at_ms.max(now_ms);
        let there = b.tokens >= 1.0;
        if there && take {
            b.tokens -= 1.0;
        }
        (there, b.tokens)
    }
}

/// The budget counts of every client, kept across reloads.
#[derive(Debug)]
pub struct Budgets {
    memory: Box<dyn BudgetStore>,
    /// A store shared by the fleet (`state.backend: redis`), once set at start.
    shared: std::sync::OnceLock<Arc<dyn BudgetStore>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets::new(Box::new(MemoryStore::default()))
    }
}

/// The current time in unix milliseconds, the clock budget windows are aligned to.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds from `now_ms` to the end of `key`'s window, at least 1.
fn until_next(key: BudgetKey, now_ms: u64) -> Option<u64> {
    let w = key.window_secs()?;
    let ends_ms = (key.window_at(now_ms) + w) * 1000;
    Some(ends_ms.saturating_sub(now_ms).div_ceil(1000).max(1))
}

impl Budgets {
    /// Budgets counted in `store`.
    pub fn new(store: Box<dyn BudgetStore>) -> Self {
        Budgets {
            memory: store,
            shared: std::sync::OnceLock::new(),
        }
    }

    /// Counts in `store` from now on (set once, at start).
    pub fn share(&self, store: Arc<dyn BudgetStore>) {
        let _ = self.shared.set(store);
    }

    /// What `client` has used of `key` in the window starting at `window`.
    pub fn used(&self, client: &str, key: BudgetKey, window: u64) -> u64 {
        self.store().get(client, key, window)
    }

    fn store(&self) -> &dyn BudgetStore {
        match self.shared.get() {
            Some(s) => s.as_ref(),
            None => self.memory.as_ref(),
        }
    }

    /// One request of any kind (`requests_per_second`): takes a token from the client's
    /// bucket, or with `take: false` (a CONNECT whose requests will each take one) only
    /// checks that one is there.
    pub fn admit_request(
        &self,
        client: &str,
        budget: &Budget,
        now_ms: u64,
        take: bool,
    ) -> Result<(), Exceeded> {
        let key = BudgetKey::RequestsPerSecond;
        let Some(rate) = budget.limit(key) else {
            return Ok(());
        };
        let (there, tokens) = self.store().bucket(client, rate, now_ms, take);
        if there {
            return Ok(());
        }
        let wait_ms = ((1.0 - tokens) * 1000.0 / rate as f64).ceil() as u64;
        Err(Exceeded {
            key,
            limit: rate,
            retry_after: Some(wait_ms.div_ceil(1000).max(1)),
            rule: budget.rule(key),
        })
    }

    /// Whether an LLM call may start: refused when a token budget's window is already spent
    /// (the lifetime total first, then the longest wait) or the calls per minute are at
    /// their limit. Counts nothing.
    pub fn check_call(
        &self,
        client: &str,
        budget: Option<&Budget>,
        now_ms: u64,
    ) -> Result<(), Exceeded> {
        let Some(budget) = budget else {
            return Ok(());
        };
        let mut worst: Option<Exceeded> = None;
        for key in BudgetKey::TOKENS
            .into_iter()
            .chain([BudgetKey::RequestsPerMinute])
        {
            let Some(limit) = budget.limit(key) else {
                continue;
            };
            if self.store().get(client, key, key.window_at(now_ms)) < limit {
                continue;
            }
            let e = Exceeded {
                key,
                limit,
                retry_after: until_next(key, now_ms),
                rule: budget.rule(key),
            };
            if e.retry_after.is_none() {
                return Err(e);
            }
            if worst.as_ref().is_none_or(|w| w.retry_after < e.retry_after) {
                worst = Some(e);
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// An LLM call about to go upstream: [`Budgets::check_call`], then the call is counted
    /// in the minute (refused if that would pass `llm_requests_per_minute`). Counted for
    /// clients without a budget too, so one set later starts from what they really did.
    pub fn admit_call(
        &self,
        client: &str,
        budget: Option<&Budget>,
        now_ms: u64,
    ) -> Result<(), Exceeded> {
        self.check_call(client, budget, now_ms)?;
        let key = BudgetKey::RequestsPerMinute;
        let limit = budget.and_then(|b| b.limit(key));
        match self
            .store()
            .add(client, key, key.window_at(now_ms), 1, limit)
        {
            Ok(_) => Ok(()),
            Err(_) => Err(Exceeded {
                key,
                limit: limit.unwrap_or(0),
                retry_after: until_next(key, now_ms),
                rule: budget.map(|b| b.rule(key)).unwrap_or_default(),
            }),
        }
    }

    /// Counts the tokens a call used in every token budget's current window. Never refuses:
    /// a call that was let through is counted whole.
    pub fn spend(&self, client: &str, tokens: u64, now_ms: u64) {
        if tokens == 0 {
            return;
        }
        for key in BudgetKey::TOKENS {
            let _ = self
                .store()
                .add(client, key, key.window_at(now_ms), tokens, None);
        }
    }

    /// How much of each of the client's set budgets is left, for the metrics.
    pub fn standing(
        &self,
        client: &str,
        budget: &Budget,
        now_ms: u64,
    ) -> Vec<(BudgetKey, Standing)> {
        budget
            .limits
            .iter()
            .map(|&(key, limit)| {
                let standing = match key {
                    BudgetKey::RequestsPerSecond => {
                        let (_, tokens) = self.store().bucket(client, limit, now_ms, false);
                        Standing::Bucket {
                            tokens,
                            rate: limit,
                            at_ms: now_ms,
                        }
                    }
                    _ => {
                        let window = key.window_at(now_ms);
                        Standing::Window {
                            limit,
                            used: self.store().get(client, key, window),
                            ends_ms: key.window_secs().map_or(u64::MAX, |w| (window + w) * 1000),
                        }
                    }
                };
                (key, standing)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(yaml: &str) -> Budget {
        let cfg: BudgetConfig = serde_yaml::from_str(yaml).unwrap();
        cfg.compile("proxy.auth.clients[0].budget")
    }

    /// 2026-01-01T10:00:00Z, in unix ms: the start of a minute, an hour and a day.
    const T0: u64 = 1_767_261_600_000;

    #[test]
    fn zero_and_absent_budgets_are_unlimited_and_unknown_keys_are_refused() {
        let b = budget("{ llm_tokens_per_minute: 0, llm_tokens_total: 5 }");
        assert_eq!(b.limit(BudgetKey::TokensPerMinute), None);
        assert_eq!(b.limit(BudgetKey::TokensTotal), Some(5));
        assert!(budget("{}").is_unlimited());
        let e = serde_yaml::from_str::<BudgetConfig>("{ llm_tokens_per_week: 1 }").unwrap_err();
        assert!(e.to_string().contains("llm_tokens_per_week"), "{e}");
        assert!(serde_yaml::from_str::<BudgetConfig>("{ requests_per_second: -1 }").is_err());
    }

    #[test]
    fn a_spent_minute_refuses_calls_until_the_next_minute_with_the_seconds_left() {
        let b = budget("{ llm_tokens_per_minute: 100 }");
        let budgets = Budgets::default();
        assert!(budgets.admit_call("a", Some(&b), T0 + 1_000).is_ok());
        budgets.spend("a", 99, T0 + 2_000);
        assert!(
            budgets.admit_call("a", Some(&b), T0 + 3_000).is_ok(),
            "99 < 100"
        );
        budgets.spend("a", 30, T0 + 4_000);
        let e = budgets.admit_call("a", Some(&b), T0 + 20_500).unwrap_err();
        assert_eq!(e.key, BudgetKey::TokensPerMinute);
        assert_eq!(e.retry_after, Some(40), "39.5 s rounded up");
        assert_eq!(e.rule, "proxy.auth.clients[0].budget.llm_tokens_per_minute");
        assert!(!e.is_quota());
        assert!(e.message("a").contains("40 s"), "{}", e.message("a"));
        // Another client is not affected, and the next minute starts from nothing.
        assert!(budgets.admit_call("b", Some(&b), T0 + 20_500).is_ok());
        assert!(budgets.admit_call("a", Some(&b), T0 + 60_000).is_ok());
    }

    #[test]
    fn the_longest_wait_is_reported_and_the_lifetime_total_wins() {
        let b = budget("{ llm_tokens_per_minute: 10, llm_tokens_per_hour: 10 }");
        let budgets = Budgets::default();
        budgets.spend("a", 10, T0);
        let e = budgets.check_call("a", Some(&b), T0 + 30_000).unwrap_err();
        assert_eq!(e.key, BudgetKey::TokensPerHour);
        assert_eq!(e.retry_after, Some(3570));
        let b = budget("{ llm_tokens_per_minute: 10, llm_tokens_total: 10 }");
        let e = budgets.check_call("a", Some(&b), T0 + 30_000).unwrap_err();
        assert_eq!(e.key, BudgetKey::TokensTotal);
        assert_eq!(e.retry_after, None);
        assert!(e.is_quota());
        assert!(e.message("a").contains("does not renew"));
        // The total outlives every window.
        let e = budgets
            .check_call("a", Some(&b), T0 + 86_400_000 * 400)
            .unwrap_err();
        assert_eq!(e.key, BudgetKey::TokensTotal);
    }

    #[test]
    fn calls_per_minute_count_only_calls_let_through() {
        let b = budget("{ llm_requests_per_minute: 2 }");
        let budgets = Budgets::default();
        assert!(budgets.admit_call("a", Some(&b), T0).is_ok());
        assert!(budgets.admit_call("a", Some(&b), T0 + 1).is_ok());
        for _ in 0..3 {
            let e = budgets.admit_call("a", Some(&b), T0 + 59_999).unwrap_err();
            assert_eq!(e.key, BudgetKey::RequestsPerMinute);
            assert_eq!(e.retry_after, Some(1));
        }
        let standing = budgets.standing("a", &b, T0 + 59_999);
        assert_eq!(
            standing,
            vec![(
                BudgetKey::RequestsPerMinute,
                Standing::Window {
                    limit: 2,
                    used: 2,
                    ends_ms: T0 + 60_000
                }
            )],
            "refused calls are not counted"
        );
        assert_eq!(standing[0].1.remaining_at(T0 + 59_999), 0.0);
        assert_eq!(standing[0].1.remaining_at(T0 + 60_000), 1.0, "a new window");
    }

    #[test]
    fn calls_of_clients_without_a_budget_are_counted_for_a_budget_set_later() {
        let budgets = Budgets::default();
        assert!(budgets.admit_call("a", None, T0).is_ok());
        budgets.spend("a", 50, T0);
        let b = budget("{ llm_tokens_per_minute: 50, llm_requests_per_minute: 5 }");
        assert_eq!(
            budgets.check_call("a", Some(&b), T0 + 1).unwrap_err().key,
            BudgetKey::TokensPerMinute
        );
        let standing = budgets.standing("a", &b, T0 + 1);
        assert!(standing.contains(&(
            BudgetKey::RequestsPerMinute,
            Standing::Window {
                limit: 5,
                used: 1,
                ends_ms: T0 + 60_000
            }
        )));
    }

    #[test]
    fn requests_per_second_is_a_bucket_of_one_seconds_worth() {
        let b = budget("{ requests_per_second: 2 }");
        let budgets = Budgets::default();
        assert!(budgets.admit_request("a", &b, T0, true).is_ok());
        assert!(budgets.admit_request("a", &b, T0, true).is_ok());
        // A CONNECT only looks: the bucket is empty, so it is refused too, and takes nothing.
        let e = budgets.admit_request("a", &b, T0, false).unwrap_err();
        assert_eq!(e.key, BudgetKey::RequestsPerSecond);
        assert_eq!(e.retry_after, Some(1));
        assert!(budgets.admit_request("a", &b, T0 + 100, true).is_err());
        // Half a second refills one token.
        assert!(budgets.admit_request("a", &b, T0 + 500, false).is_ok());
        assert!(
            budgets.admit_request("a", &b, T0 + 500, false).is_ok(),
            "looking takes nothing"
        );
        assert!(budgets.admit_request("a", &b, T0 + 500, true).is_ok());
        assert!(budgets.admit_request("a", &b, T0 + 500, true).is_err());
        // Idle for long, the bucket holds one second's worth only.
        assert!(budgets.admit_request("a", &b, T0 + 60_000, true).is_ok());
        assert!(budgets.admit_request("a", &b, T0 + 60_000, true).is_ok());
        assert!(budgets.admit_request("a", &b, T0 + 60_000, true).is_err());
        let standing = budgets.standing("a", &b, T0 + 60_000);
        let (_, s) = standing[0];
        assert_eq!(s.remaining_at(T0 + 60_000), 0.0);
        assert_eq!(s.remaining_at(T0 + 60_500), 0.5);
        assert_eq!(s.remaining_at(T0 + 70_000), 1.0);
        // No limit: nothing is asked of the store.
        assert!(budgets
            .admit_request("a", &budget("{}"), T0 + 60_000, true)
            .is_ok());
    }

    #[test]
    fn windows_are_aligned_to_the_clock() {
        let t = T0 + 3_725_500; // 11:02:05.5
        assert_eq!(
            BudgetKey::TokensPerMinute.window_at(t),
            (T0 + 3_720_000) / 1000
        );
        assert_eq!(
            BudgetKey::TokensPerHour.window_at(t),
            (T0 + 3_600_000) / 1000
        );
        assert_eq!(BudgetKey::TokensPerDay.window_at(t), T0 / 1000 - 36_000);
        assert_eq!(BudgetKey::TokensTotal.window_at(t), 0);
        assert_eq!(until_next(BudgetKey::TokensPerMinute, t), Some(55));
        assert_eq!(until_next(BudgetKey::TokensTotal, t), None);
    }
}
