//! Integration tests over real sockets: warden in-process on 127.0.0.1:0, real origins, real
//! clients (reqwest, raw TCP/TLS, tokio-tungstenite, curl, git, Node, Java, and Python clients
//! from a venv).

mod admin;
mod auth;
mod aws;
mod budget;
mod capture;
mod cli;
mod clients;
mod clients_api;
mod common;
mod correlation;
mod credentials;
mod deploy;
mod env;
mod errors;
mod framing;
mod hardening;
mod headers;
mod hot_path;
mod http2;
mod intercept;
mod lanes;
mod layout;
mod llm;
mod log_files;
mod logs;
mod mcp;
mod metrics;
mod parent;
mod paths;
mod plain;
mod policy;
mod proxy_protocol;
mod quickstart;
mod relays;
mod reload;
mod sources;
mod substitutions;
mod transforms;
mod tunnel;
mod upstream_syscalls;
mod websocket;
