//! The admin listener: liveness, readiness and the metrics scrape, read from the shared
//! state. Served on its own address by `server`; never reachable through the proxy.

use crate::state::Shared;
use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

/// The admin listener's app: `/healthz` (alive), `/readyz` (config loaded, serving) and
/// `/metrics` (Prometheus text). Never reachable through the proxy (loop detection).
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    /// An admin app reporting on `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    fn metrics_text(&self) -> Vec<u8> {
        self.shared.metrics.render(&self.shared.runtime.leaves)
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = match path.as_str() {
            "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            "/readyz" => (200, "text/plain", b"ready\n".to_vec()),
            "/metrics" => (200, "text/plain; version=0.0.4", self.metrics_text()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
