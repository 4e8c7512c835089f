//! warden: an egress proxy for AI agents, built on Pingora.
//!
//! Agents send all their traffic through one listener (`HTTPS_PROXY`). The front door reads
//! the first request head of each connection: absolute-form HTTP goes to the HTTP engine,
//! `CONNECT` is either tunnelled blind or intercepted (TLS terminated with a leaf minted from
//! warden's CA) and its decrypted stream goes to the same engine.
//!
//! Which module each phase calls:
//!
//! | phase / place            | module                                   |
//! |--------------------------|------------------------------------------|
//! | accept, drain            | [`server`]                               |
//! | SIGHUP                   | [`reload`] (swap the snapshot)           |
//! | front door (CONNECT)     | [`proxy`], [`target`], [`admission`], [`tls`] |
//! | `new_ctx`                | [`config`] (one snapshot per request)    |
//! | `request_filter`         | [`target`] (validation, host binding), [`admission`] ([`auth`], [`policy`], [`credentials`]) |
//! | `upstream_request_filter`| [`headers`], [`credentials`] (injection)  |
//! | `upstream_peer`          | [`policy`] (resolve), [`tls`] (trust)    |
//! | `request_filter` on an LLM API call | [`llm`] (model check; the exchange runs in `proxy::llm`) |
//! | `response_filter`, `response_body_filter` | [`scrub`] (echoed secrets masked), [`transform`], [`llm`] (WebSocket events) |
//! | `fail_to_proxy`          | [`reason`] (one error → reason map), [`refusal`] (the response) |
//! | `logging`                | [`telemetry`] (canonical line)           |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod auth;
pub mod compile_error;
pub mod config;
pub mod correlation;
pub mod credentials;
pub mod forward;
pub mod headers;
pub mod llm;
pub mod policy;
pub mod profile;
pub mod proxy;
pub mod reason;
pub mod refusal;
pub mod reload;
pub mod runtime;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod state;
pub mod substitution;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod transform;

pub use config::{CompileOptions, Config, ConfigError, ConfigErrors, Findings, Snapshot};
pub use server::{start, Running, StartError};
