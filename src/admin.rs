//! The admin listener: liveness, readiness, the metrics scrape (Bearer `admin.metrics_token`
//! when set), and — with `admin.token` —
//! the clients API (`/v1/clients`), read from and written to the shared state. Served on its
//! own address by `server`; never reachable through the proxy.

use crate::registry::Refused;
use crate::secret::Secret;
use crate::state::Shared;
use async_trait::async_trait;
use http::{header, Method, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::SystemTime;

/// Largest clients API request body.
pub const MAX_BODY: usize = 1024 * 1024;

/// The admin listener's app: `/healthz` (alive), `/readyz` (config loaded, serving),
/// `/metrics` (Prometheus text) and `/v1/clients`. Never reachable through the proxy (loop
/// detection).
pub struct Admin {
    shared: Arc<Shared>,
}

type Answer = http::Response<Vec<u8>>;

fn answer(status: u16, content_type: &str, body: Vec<u8>) -> Answer {
    http::Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn json_answer(status: u16, body: &Value) -> Answer {
    let mut text = body.to_string().into_bytes();
    text.push(b'\n');
    answer(status, "application/json", text)
}

fn error(status: u16, message: &str) -> Answer {
    json_answer(status, &json!({ "error": message }))
}

fn refused(r: Refused) -> Answer {
    let mut body = json!({ "error": r.message });
    if let Some(pointer) = r.pointer {
        body["pointer"] = Value::String(pointer);
    }
    json_answer(r.status, &body)
}

fn rfc3339(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(humantime::format_rfc3339_seconds(t).to_string())
    })
}

/// A registration as `GET` shows it: name, expiry, then its sections (no token, no secret).
fn shown(name: &str, sections: Value, expires_at: Option<SystemTime>) -> Value {
    let mut out = json!({ "name": name, "expires_at": rfc3339(expires_at) });
    if let (Some(out), Value::Object(sections)) = (out.as_object_mut(), sections) {
        out.extend(sections);
    }
    out
}

impl Admin {
    /// An admin app reporting on `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn metrics_text(&self) -> Vec<u8> {
        let registered = self.shared.runtime.registry.len();
        self.shared
            .metrics
            .clients_registered
            .set(i64::try_from(registered).unwrap_or(i64::MAX));
        let budgets = &self.shared.runtime.budgets;
        self.shared
            .metrics
            .refresh_budget_windows(|client, key, window| budgets.used(client, key, window));
        let refreshers = &self.shared.runtime.sources.refreshers;
        let (ok, failed) = (&refreshers.succeeded, &refreshers.failed);
        let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        self.shared.metrics.refreshes_seen(load(ok), load(failed));
        self.shared.metrics.render(&self.shared.runtime.leaves)
    }

    /// Checks `Authorization: Bearer <token>` in constant time: `None` when it matches, else
    /// the `401`, counted and logged (naming `what` and the key, never a value).
    fn unauthorized(
        &self,
        session: &ServerSession,
        token: &Secret,
        what: &str,
        key: &str,
    ) -> Option<Answer> {
        let presented = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().as_bytes().to_vec());
        if presented.is_some_and(|t| token.matches(&t)) {
            return None;
        }
        self.shared.metrics.admin_request("unauthorized");
        let from = session
            .client_addr()
            .map_or_else(|| "-".to_string(), |a| a.to_string());
        log::warn!("{what}: a request from {from} without a valid {key} was refused");
        let mut a = error(401, &format!("send Authorization: Bearer <{key}>"));
        if let Ok(v) = header::HeaderValue::from_str("Bearer realm=\"warden\"") {
            a.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        Some(a)
    }

    /// `/metrics`, behind `admin.metrics_token` when it is set.
    fn metrics(&self, session: &ServerSession) -> Answer {
        let snap = self.shared.snapshot.load_full();
        if let Some(token) = &snap.metrics_token {
            if let Some(a) = self.unauthorized(session, token, "metrics", "admin.metrics_token") {
                return a;
            }
        }
        answer(200, "text/plain; version=0.0.4", self.metrics_text())
    }

    /// `/v1/clients[/{name}]`: `404` while `admin.token` is unset, `401` without it.
    async fn clients(&self, session: &mut ServerSession, rest: &str) -> Answer {
        let snap = self.shared.snapshot.load_full();
        let Some(token) = &snap.admin_token else {
            return error(404, "the clients API is off: set admin.token to enable it");
        };
        if let Some(a) = self.unauthorized(session, token, "clients API", "admin.token") {
            return a;
        }
        let method = session.req_header().method.clone();
        let name = rest.trim_start_matches('/');
        let a = match (method, name) {
            (Method::GET, "") => self.list(),
            (Method::GET, name) => self.get(name),
            (Method::PUT, "") | (Method::DELETE, "") => {
                error(405, "name the client: /v1/clients/{name}")
            }
            (Method::PUT, name) => match read_body(session).await {
                Ok(body) => self.put(name, &body).await,
                Err(a) => a,
            },
            (Method::DELETE, name) => self.delete(name).await,
            _ => error(405, "use GET, PUT or DELETE"),
        };
        let result = if a.status().is_success() {
            "ok"
        } else {
            "refused"
        };
        self.shared.metrics.admin_request(result);
        a
    }

    fn list(&self) -> Answer {
        let clients: Vec<Value> = self
            .shared
            .runtime
            .registry
            .list()
            .into_iter()
            .map(|(n, s, e)| shown(&n, s, e))
            .collect();
        json_answer(200, &json!({ "clients": clients }))
    }

    fn get(&self, name: &str) -> Answer {
        match self.shared.runtime.registry.show(name) {
            Some((s, e)) => json_answer(200, &shown(name, s, e)),
            None => error(404, &format!("no registered client `{name}`")),
        }
    }

    async fn put(&self, name: &str, body: &[u8]) -> Answer {
        let snap = self.shared.snapshot.load_full();
        match self.shared.runtime.registry.put(name, body, &snap).await {
            Ok(done) => {
                let mut out = json!({ "name": name, "expires_at": rfc3339(done.expires_at) });
                if let Some(token) = done.token {
                    // Shown once: only its hash is kept.
                    out["token"] = Value::String(token);
                }
                json_answer(if done.created { 201 } else { 200 }, &out)
            }
            Err(r) => refused(r),
        }
    }

    async fn delete(&self, name: &str) -> Answer {
        let snap = self.shared.snapshot.load_full();
        if snap.auth.as_ref().is_some_and(|a| a.get(name).is_some()) {
            return error(
                409,
                &format!("client `{name}` is defined in the config file; remove it there"),
            );
        }
        let registry = &self.shared.runtime.registry;
        match registry.delete(name, "deleted through the API").await {
            Ok(true) => answer(204, "application/json", Vec::new()),
            Ok(false) => error(404, &format!("no registered client `{name}`")),
            Err(e) => error(503, &format!("{e}; the client is unchanged")),
        }
    }
}

/// The request body, at most [`MAX_BODY`] bytes (`413` past it).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
    let too_large = || error(413, &format!("the body is larger than {MAX_BODY} bytes"));
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(too_large());
                }
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(error(400, &format!("the body could not be read: {e}"))),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Answer {
        let path = session.req_header().uri.path().to_string();
        if let Some(rest) = path.strip_prefix("/v1/clients") {
            if rest.is_empty() || rest.starts_with('/') {
                return self.clients(session, rest).await;
            }
        }
        match path.as_str() {
            "/healthz" => answer(200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => answer(200, "text/plain", b"ready\n".to_vec()),
            "/metrics" => self.metrics(session),
            _ => answer(
                StatusCode::NOT_FOUND.as_u16(),
                "text/plain",
                b"not found\n".to_vec(),
            ),
        }
    }
}
