//! warden: an egress proxy for AI agents, built on Pingora.
//!
//! Agents send all their traffic through one listener (`HTTPS_PROXY`). The front door reads
//! the first request head of each connection: absolute-form HTTP goes to the HTTP engine,
//! `CONNECT` is either tunnelled blind or intercepted (TLS terminated with a leaf minted from
//! warden's CA) and its decrypted stream goes to the same engine.
//!
//! Which module each phase calls. The phases live in `proxy::warden`; each reads the session,
//! calls one stage and applies its result. Stages are free of `Session` and never import
//! [`proxy`] (a test checks the module graph has no circles).
//!
//! | phase / place            | stage                                    |
//! |--------------------------|------------------------------------------|
//! | accept, drain            | [`server`]                               |
//! | front door (first bytes) | [`proxy_protocol`] (`proxy.proxy_protocol`: the client address from a load balancer's header) |
//! | SIGHUP                   | [`reload`] (compile, swap the snapshot; [`runtime`] stays) |
//! | SIGUSR1                  | [`telemetry`] (`reopen_log_files`: `log.file`, `log.access_file`) |
//! | front door (CONNECT)     | [`target`], [`admission`] (`admit_connect`), [`budget`] (`requests_per_second`), [`tls`] (leaves from [`runtime`]) |
//! | `new_ctx`                | [`config`] (one snapshot per request)    |
//! | `request_filter`         | [`admission`] (`admit_request` → a `RequestPlan`: [`target`] or [`relay`] (`/relay/{name}/…`), [`auth`], the client's [`profile`], [`policy`], [`credentials`], [`substitution`] (read through [`refresh`] for `process`/`oauth2`), [`correlation`]), then [`budget`] (`requests_per_second`), [`aws`] (the credentials endpoint before admission; role credentials for re-signed hosts after it) |
//! | `request_filter` on an LLM API call | [`llm`] (model check; the exchange runs in `proxy::llm`), [`budget`] (before the upstream call, and the tokens after) |
//! | `request_filter` on an MCP endpoint | [`mcp`] (the body's calls checked, headers against body; the exchange runs in `proxy::mcp`, filtering `tools/list` results) |
//! | `upstream_peer`          | [`policy`] (resolve through the [`runtime`] DNS cache, SSRF guard), [`tls`] (trust), [`parent`] (through `upstream_proxy`: the parent dialled, the origin asked for with `CONNECT`) |
//! | `request_filter`         | [`admission`] (`admit_request` → a `RequestPlan`: [`target`] or [`relay`] (`/relay/{name}/…`), [`auth`], the client's [`profile`], [`policy`], [`credentials`], [`substitution`] (read through [`refresh`] for `process`/`oauth2`), [`correlation`]), then [`budget`] (`requests_per_second`), [`aws`] (the credentials endpoint before admission; role credentials for re-signed hosts after it) |
//! | `response_filter`, `response_body_filter` | [`scrub`] (echoed secrets masked), [`transform`], [`llm`] (WebSocket events) |
//! | `fail_to_proxy`          | [`reason`] (one error → reason map), [`refusal`] (the response) |
//! | `logging`                | [`telemetry`] (the canonical line, filled as the request went) |
//! | admin listener           | [`admin`] (metrics, health), reading [`state`] |
//! | `warden env`, `warden ca` (no phase) | [`client_env`] (the variables a client process needs, the CA bundle and Java truststore) |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod auth;
pub mod aws;
pub mod budget;
pub mod client_env;
pub mod compile_error;
pub mod config;
pub mod correlation;
pub mod credentials;
pub mod forward;
pub mod grpc;
pub mod headers;
pub mod llm;
pub mod mcp;
pub mod parent;
pub mod policy;
pub mod profile;
pub mod proxy;
pub mod proxy_protocol;
pub mod reason;
pub mod refresh;
pub mod refusal;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod runtime;
pub mod scrub;
pub mod secret;
pub mod server;
pub mod state;
pub mod store;
pub mod substitution;
pub mod target;
pub mod telemetry;
pub mod tls;
pub mod transform;

pub use config::{CompileOptions, Config, ConfigError, ConfigErrors, Findings, Snapshot};
pub use server::{start, Running, StartError};
