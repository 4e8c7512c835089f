//! The record of what warden did: the canonical log line — exactly one per request, per blind
//! tunnel, per CONNECT refused at the front door and per failed client handshake — rendered as
//! JSON or logfmt and emitted through the `log` crate, plus the process logger. Called from the
//! `logging` phase and from the front door.

use super::files::{describe, FileSink, LogFileError, LogFiles};
use crate::scrub::Replacer;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The `log` target canonical lines are emitted under; nothing else uses it.
pub const ACCESS_TARGET: &str = "warden::access";

/// The `log` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Minimum level.
    #[serde(default)]
    pub level: LogLevel,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
    /// Request and response body bytes kept for the log line (each); 0 = none.
    #[serde(default = "default_capture")]
    pub body_capture_bytes: usize,
    /// Also capture the bodies of LLM API calls (prompts and completions); off by default.
    #[serde(default)]
    pub capture_llm_bodies: bool,
    /// Operational lines go to this file (and request lines too, without `access_file`)
    /// instead of standard error; SIGUSR1 reopens it.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Request (canonical) lines go to this file; SIGUSR1 reopens it.
    #[serde(default)]
    pub access_file: Option<PathBuf>,
}

fn default_capture() -> usize {
    8192
}

/// `log.level`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Plus one canonical line per request.
    #[default]
    Info,
    /// Plus diagnostics.
    Debug,
}

/// `log.format`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// logfmt (`key=value key="quoted value"`).
    Text,
}

/// The compiled `log` section.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    /// Minimum level.
    pub level: log::LevelFilter,
    /// Line format.
    pub format: LogFormat,
    /// Body bytes kept for the log, per direction.
    pub body_capture_bytes: usize,
    /// LLM API calls' bodies are captured too.
    pub capture_llm_bodies: bool,
}

impl LogConfig {
    /// The runtime form.
    pub fn compile(&self) -> LogSettings {
        LogSettings {
            level: match self.level {
                LogLevel::Error => log::LevelFilter::Error,
                LogLevel::Warn => log::LevelFilter::Warn,
                LogLevel::Info => log::LevelFilter::Info,
                LogLevel::Debug => log::LevelFilter::Debug,
            },
            format: self.format,
            body_capture_bytes: self.body_capture_bytes,
            capture_llm_bodies: self.capture_llm_bodies,
        }
    }

    /// The destinations, paths resolved with `resolve`; or each `(key, message)` wrong with
    /// them. Whether the directories exist is not checked here (a reload does not reopen
    /// the files, and `check` may run elsewhere): [`init_logger`] fails on it at start.
    pub fn files(
        &self,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<LogFiles, Vec<(&'static str, String)>> {
        let mut errors = Vec::new();
        for (key, path) in [
            ("log.file", &self.file),
            ("log.access_file", &self.access_file),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                errors.push((key, "is empty: leave it out to log to stderr".to_string()));
            }
        }
        let files = LogFiles {
            file: self.file.as_deref().map(&resolve),
            access_file: self.access_file.as_deref().map(&resolve),
        };
        if files.file.is_some() && files.file == files.access_file {
            errors.push((
                "log.access_file",
                "is the same file as log.file: leave it out to write request lines to log.file"
                    .to_string(),
            ));
        }
        if errors.is_empty() {
            Ok(files)
        } else {
            Err(errors)
        }
    }
}

/// Keeps the first `limit` bytes of a body as they stream past, for the log line. Copies
/// only; never holds anything back. On an upgraded (WebSocket) connection it keeps a summary
/// of the frames instead ([`Capture::summarize_frames`]).
#[derive(Debug, Default)]
pub struct Capture {
    kept: Vec<u8>,
    limit: usize,
    total: usize,
    frames: Option<Box<Frames>>,
}

impl Capture {
    /// A capture of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Capture {
            kept: Vec::new(),
            limit,
            total: 0,
            frames: None,
        }
    }

    /// From now on the bytes are WebSocket frames (after a `101`): keep one short entry per
    /// frame — `text(11) "hello world"`, `binary(300)`, `close(2) 1000`, `ping(0)` — rather
    /// than raw (for client frames, masked) bytes. Texts are cut at [`FRAME_EXCERPT_BYTES`];
    /// the summary as a whole stays within the capture's limit.
    pub fn summarize_frames(&mut self) {
        if self.frames.is_none() {
            self.frames = Some(Box::default());
        }
    }

    /// Records a chunk that is passing through.
    pub fn record(&mut self, chunk: &[u8]) {
        self.total += chunk.len();
        if let Some(frames) = self.frames.as_mut() {
            if self.limit > 0 {
                frames.record(chunk, self.limit);
            }
            return;
        }
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&chunk[..room.min(chunk.len())]);
    }

    /// The captured text for the log (lossy UTF-8, `…` when cut), with every value
    /// `redactor` knows masked — including a masked value's start cut off at the limit.
    pub fn text(&self, redactor: Option<&Replacer>) -> Option<String> {
        if let Some(frames) = &self.frames {
            return frames.render(redactor, self.limit);
        }
        if self.kept.is_empty() {
            return None;
        }
        let cut = self.total > self.kept.len();
        let mut kept = self.kept.clone();
        if let Some(r) = redactor {
            if let Some(masked) = r.replace_value(&kept) {
                kept = masked;
            }
            if cut {
                let partial = r.partial_tail(&kept);
                kept.truncate(kept.len() - partial);
            }
        }
        let mut text = String::from_utf8_lossy(&kept).into_owned();
        if cut {
            text.push('…');
        }
        Some(text)
    }
}

/// Most bytes of a text frame (or a close frame's reason) kept in a frame summary.
pub const FRAME_EXCERPT_BYTES: usize = 128;

/// The frames of one direction of a WebSocket, summarized as they stream past. Only headers
/// (at most 14 bytes) and excerpts are kept, never a whole payload.
#[derive(Debug, Default)]
struct Frames {
    /// Header bytes of the next frame, until it is complete.
    head: Vec<u8>,
    /// The frame whose payload is streaming, with the payload bytes still to come.
    current: Option<(FrameEntry, u64)>,
    entries: Vec<FrameEntry>,
    /// What `entries` take rendered, about.
    size: usize,
    /// Frames were left out at the limit.
    dropped: bool,
}

#[derive(Debug)]
struct FrameEntry {
    head: crate::llm::frame::FrameHead,
    /// The first payload bytes, unmasked (text and close frames only).
    excerpt: Vec<u8>,
}

impl FrameEntry {
    fn label(&self) -> Cow<'static, str> {
        use crate::llm::frame::{BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT};
        Cow::Borrowed(match self.head.opcode {
            CONTINUATION => "continuation",
            TEXT => "text",
            BINARY => "binary",
            CLOSE => "close",
            PING => "ping",
            PONG => "pong",
            op => return Cow::Owned(format!("opcode{op}")),
        })
    }

    /// Whether the payload's start is worth showing: readable text, or a close's code.
    fn shown(head: &crate::llm::frame::FrameHead) -> bool {
        use crate::llm::frame::{CLOSE, TEXT};
        // RSV1 set: compressed (permessage-deflate), unreadable here.
        head.rsv & 0b100 == 0 && matches!(head.opcode, TEXT | CLOSE)
    }

    fn render(&self, redactor: Option<&Replacer>) -> String {
        let mut out = format!("{}({})", self.label(), self.head.payload_len);
        if self.head.rsv & 0b100 != 0 {
            out.push_str(" compressed");
            return out;
        }
        let mut text = self.excerpt.as_slice();
        if self.head.opcode == crate::llm::frame::CLOSE {
            let Some((code, reason)) = text.split_first_chunk::<2>() else {
                return out;
            };
            out.push_str(&format!(" {}", u16::from_be_bytes(*code)));
            if reason.is_empty() {
                return out;
            }
            text = reason;
        } else if self.head.opcode != crate::llm::frame::TEXT {
            return out;
        }
        // A secret may run on past the excerpt (or into the next fragment): its start goes too.
        let cut = (self.excerpt.len() as u64) < self.head.payload_len || !self.head.fin;
        let mut kept = text.to_vec();
        if let Some(r) = redactor {
            if let Some(masked) = r.replace_value(&kept) {
                kept = masked;
            }
            if cut {
                let partial = r.partial_tail(&kept);
                kept.truncate(kept.len() - partial);
            }
        }
        if cut {
            // Not half a character either.
            if let Err(e) = std::str::from_utf8(&kept) {
                if e.error_len().is_none() {
                    kept.truncate(e.valid_up_to());
                }
            }
        }
        let mut shown = String::from_utf8_lossy(&kept).into_owned();
        if cut {
            shown.push('…');
        }
        out.push(' ');
        out.push_str(&serde_json::Value::String(shown).to_string());
        out
    }
}

impl Frames {
    fn record(&mut self, mut data: &[u8], limit: usize) {
        while !data.is_empty() {
            if let Some((entry, remaining)) = self.current.as_mut() {
                let take = data
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                if FrameEntry::shown(&entry.head) {
                    let offset = entry.head.payload_len - *remaining;
                    let room = FRAME_EXCERPT_BYTES.saturating_sub(entry.excerpt.len());
                    let bytes = data[..take.min(room)].iter().enumerate();
                    entry
                        .excerpt
                        .extend(bytes.map(|(i, b)| match entry.head.mask {
                            Some(k) => b ^ k[((offset + i as u64) % 4) as usize],
                            None => *b,
                        }));
                }
                *remaining -= take as u64;
                data = &data[take..];
                if *remaining == 0 {
                    self.finish(limit);
                }
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if let Some(head) = crate::llm::frame::parse_head(&self.head) {
                self.head.clear();
                let entry = FrameEntry {
                    head,
                    excerpt: Vec::new(),
                };
                self.current = Some((entry, head.payload_len));
                if head.payload_len == 0 {
                    self.finish(limit);
                }
            }
        }
    }

    fn finish(&mut self, limit: usize) {
        let Some((entry, _)) = self.current.take() else {
            return;
        };
        if self.dropped {
            return;
        }
        // Label, length, quotes, separator; escapes may add a little, checked at render.
        let size = 24 + entry.excerpt.len();
        if self.size + size > limit {
            self.dropped = true;
            return;
        }
        self.size += size;
        self.entries.push(entry);
    }

    fn render(&self, redactor: Option<&Replacer>, limit: usize) -> Option<String> {
        if self.entries.is_empty() && !self.dropped {
            return None;
        }
        let mut out = String::new();
        let mut dropped = self.dropped;
        for entry in &self.entries {
            let text = entry.render(redactor);
            let sep = if out.is_empty() { "" } else { ", " };
            if out.len() + sep.len() + text.len() > limit {
                dropped = true;
                break;
            }
            out.push_str(sep);
            out.push_str(&text);
        }
        if dropped {
            out.push('…');
        }
        Some(out)
    }
}

/// What kind of exchange a canonical line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Absolute-form HTTP through the proxy.
    Plain,
    /// A request inside an intercepted CONNECT tunnel.
    Intercepted,
    /// An origin-form request through a relay (`/relay/{name}/…`).
    Relay,
    /// A blind CONNECT tunnel.
    Tunnel,
    /// A WebSocket (logged when it closes).
    Websocket,
    /// A CONNECT that ended at the front door (refused, or the client handshake failed).
    Connect,
}

impl Kind {
    /// The label value (`plain`, `intercepted`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Intercepted => "intercepted",
            Kind::Relay => "relay",
            Kind::Tunnel => "tunnel",
            Kind::Websocket => "websocket",
            Kind::Connect => "connect",
        }
    }
}

/// One canonical log line. Never holds a header value; `path` has its query redacted.
#[derive(Debug, Serialize)]
pub struct CanonicalLog {
    /// When the line was written (RFC 3339, UTC).
    pub ts: String,
    /// What was recorded.
    pub kind: Kind,
    /// The request id (also sent upstream and returned in `X-Request-Id`).
    pub request_id: Option<String>,
    /// The correlation sequence number sent upstream, when the request was a target.
    pub seq: Option<u64>,
    /// The authenticated client's name (`proxy.auth`).
    pub client: Option<String>,
    /// The client's address.
    pub client_addr: Option<String>,
    /// Request method (`CONNECT` for tunnels).
    pub method: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<&'static str>,
    /// The client's HTTP version: `1.0`, `1.1` or `2`.
    pub http_version: Option<&'static str>,
    /// Destination host.
    pub host: Option<String>,
    /// Destination port.
    pub port: Option<u16>,
    /// Path, query values redacted.
    pub path: Option<String>,
    /// Status sent to the client (101 for upgrades, 200 for tunnels).
    pub status: Option<u16>,
    /// From the first byte read to the log line, in milliseconds.
    pub duration_ms: f64,
    /// Body bytes from the client (tunnels: all bytes).
    pub bytes_in: u64,
    /// Body bytes to the client (tunnels: all bytes).
    pub bytes_out: u64,
    /// TLS was terminated by warden.
    pub intercepted: bool,
    /// The connection was upgraded (WebSocket).
    pub upgraded: bool,
    /// The stable reason code when warden refused or failed the exchange.
    pub reason: Option<&'static str>,
    /// The config entry that refused it, for policy denials.
    pub rule: Option<String>,
    /// In `network.mode: report`, the reason the request would have been denied.
    pub would_deny: Option<&'static str>,
    /// The name of the header a credential was injected into (never its value).
    pub injected: Option<String>,
    /// The injected credential's grant.
    pub grant: Option<String>,
    /// The relay a request came through (`/relay/{name}/…`).
    pub relay: Option<String>,
    /// The first `log.body_capture_bytes` of the request body as the agent sent it.
    pub request_body: Option<String>,
    /// The first `log.body_capture_bytes` of the response body as the agent received it.
    pub response_body: Option<String>,
    /// Something worth an operator's attention that did not stop the request, e.g.
    /// `placeholder_to_foreign_host`.
    pub alert: Option<&'static str>,
    /// Detail on a failure, for operators.
    pub error: Option<String>,
    /// LLM API calls: the provider.
    pub provider: Option<&'static str>,
    /// LLM API calls: the model the request named.
    pub model: Option<String>,
    /// LLM API calls: the tools the model called, in order.
    pub tools: Option<Vec<String>>,
    /// LLM API calls: prompt tokens the provider reported.
    pub input_tokens: Option<u64>,
    /// LLM API calls: generated tokens the provider reported.
    pub output_tokens: Option<u64>,
    /// LLM API calls: `true` when the call ended without usage and `input_tokens` and
    /// `output_tokens` are warden's estimate from the body bytes (about 4 bytes a token).
    pub tokens_estimated: Option<bool>,
    /// gRPC calls: the service (`package.Service`) from the path.
    pub grpc_service: Option<String>,
    /// gRPC calls: the method from the path.
    pub grpc_method: Option<String>,
    /// gRPC calls: the `grpc-status` the client received (from the trailers, or warden's own).
    pub grpc_status: Option<u32>,
    /// MCP requests: the JSON-RPC methods of the body (a batch's, comma-separated).
    pub mcp_method: Option<String>,
    /// MCP requests: the tools its `tools/call`s name, comma-separated.
    pub mcp_tool: Option<String>,
    /// LLM API calls: the metric labels (model label, outcome); not part of the line.
    #[serde(skip)]
    pub llm_labels: Option<(String, &'static str)>,
}

impl CanonicalLog {
    /// An empty line of `kind`, to be filled in.
    pub fn new(kind: Kind) -> Self {
        CanonicalLog {
            ts: String::new(),
            kind,
            request_id: None,
            seq: None,
            client: None,
            client_addr: None,
            method: None,
            scheme: None,
            http_version: None,
            host: None,
            port: None,
            path: None,
            status: None,
            duration_ms: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            intercepted: false,
            upgraded: false,
            reason: None,
            rule: None,
            would_deny: None,
            injected: None,
            grant: None,
            relay: None,
            request_body: None,
            response_body: None,
            alert: None,
            error: None,
            provider: None,
            model: None,
            tools: None,
            input_tokens: None,
            output_tokens: None,
            tokens_estimated: None,
            grpc_service: None,
            grpc_method: None,
            grpc_status: None,
            mcp_method: None,
            mcp_tool: None,
            llm_labels: None,
        }
    }

    /// Sets `duration_ms` from an elapsed time.
    pub fn took(&mut self, elapsed: Duration) {
        self.duration_ms = (elapsed.as_micros() as f64) / 1000.0;
    }

    /// The line as text in `format`.
    pub fn render(&self, format: LogFormat) -> String {
        let rendered = match format {
            // Straight to text: no intermediate JSON value on the hot path.
            LogFormat::Json => serde_json::to_string(self),
            LogFormat::Text => serde_json::to_value(self).map(|v| logfmt(&v)),
        };
        rendered.unwrap_or_else(|e| format!("{{\"error\":\"log line failed: {e}\"}}"))
    }

    /// Stamps `ts` and emits the line at info level on [`ACCESS_TARGET`], unless the config's
    /// `log.level` (checked per snapshot, so a reload applies it) is below info.
    pub fn emit(mut self, settings: LogSettings) {
        if settings.level < log::LevelFilter::Info
            || !log::log_enabled!(target: ACCESS_TARGET, log::Level::Info)
        {
            return;
        }
        self.ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        log::info!(target: ACCESS_TARGET, "{}", self.render(settings.format));
    }
}

fn logfmt(value: &serde_json::Value) -> String {
    let mut out = String::new();
    let Some(map) = value.as_object() else {
        return out;
    };
    for (k, v) in map {
        let text = match v {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => Cow::Borrowed(s.as_str()),
            other => Cow::Owned(other.to_string()),
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        push_logfmt_value(&mut out, &text);
    }
    out
}

fn push_logfmt_value(out: &mut String, v: &str) {
    let needs_quotes = v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '=' || c == '\\' || c.is_control());
    if !needs_quotes {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A Pingora error as the canonical line's `error` field: its non-empty parts joined —
/// `upstream ConnectRefused: context (cause: ...)` — with no leading or trailing space
/// (Pingora's own `Display` opens with the source, which is empty when unset). A cause that is
/// itself a Pingora error repeats only the parts that differ, as Pingora's `Display` does.
pub fn error_text(e: &pingora_error::Error) -> String {
    error_parts(e, None)
}

fn error_parts(e: &pingora_error::Error, previous: Option<&pingora_error::Error>) -> String {
    use pingora_error::ErrorSource;
    let mut out = String::new();
    let source = match e.esource {
        ErrorSource::Upstream => "upstream",
        ErrorSource::Downstream => "downstream",
        ErrorSource::Internal => "internal",
        ErrorSource::Unset => "",
    };
    let mut push = |part: &str, sep: &str| {
        let part = part.trim();
        if part.is_empty() {
            return;
        }
        if !out.is_empty() {
            out.push_str(sep);
        }
        out.push_str(part);
    };
    if previous.is_none_or(|p| p.esource != e.esource) {
        push(source, " ");
    }
    if previous.is_none_or(|p| p.etype != e.etype) {
        push(e.etype.as_str(), " ");
    }
    if let Some(context) = &e.context {
        push(&withhold_raw_bytes(&context.to_string()), ": ");
    }
    if let Some(cause) = &e.cause {
        let cause = match cause.downcast_ref::<pingora_error::BError>() {
            Some(inner) => error_parts(inner, Some(e)),
            None => cause.to_string().trim().to_string(),
        };
        if !cause.is_empty() {
            push(&format!("(cause: {cause})"), " ");
        }
    }
    out
}

/// A Pingora error context without the raw bytes some carry: a head that failed to parse is
/// quoted after `buf:` (request or response), and it may hold credentials, cookies or a
/// secret the origin echoed.
fn withhold_raw_bytes(context: &str) -> Cow<'_, str> {
    match context.find("buf:") {
        Some(at) => Cow::Owned(format!("{}[raw bytes withheld]", &context[..at])),
        None => Cow::Borrowed(context),
    }
}

/// `path` with every query value replaced by `[redacted]`; parameter names are kept.
pub fn redact_query(path: &str) -> Cow<'_, str> {
    let Some((base, query)) = path.split_once('?') else {
        return Cow::Borrowed(path);
    };
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) => {
                out.push_str(name);
                out.push_str("=[redacted]");
            }
            None => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

/// How long exiting waits for the log files' writers to write what is queued.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The process logger: lines rendered once, then written to standard error or queued for a
/// log file's writer thread.
struct Logger {
    filter: env_filter::Filter,
    format: LogFormat,
    /// `log.file`'s writer; standard error when `None`.
    ops: Option<Arc<FileSink>>,
    /// The request lines' writer (`log.access_file`'s, else `log.file`'s); stderr when `None`.
    access: Option<Arc<FileSink>>,
    files: LogFiles,
}

impl Logger {
    /// Each file's writer once (`access` is `ops` when only `log.file` is set).
    fn sinks(&self) -> impl Iterator<Item = &Arc<FileSink>> {
        let ops = self.ops.as_ref();
        let access = self
            .access
            .as_ref()
            .filter(|a| !ops.is_some_and(|o| Arc::ptr_eq(a, o)));
        ops.into_iter().chain(access)
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.filter.matches(record) {
            return;
        }
        let access = record.target() == ACCESS_TARGET;
        let mut line = if access {
            record.args().to_string()
        } else {
            render_record(record, self.format)
        };
        line.push('\n');
        match if access { &self.access } else { &self.ops } {
            Some(sink) => sink.send(line.into_bytes()),
            None => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    /// Waits (up to [`FLUSH_WAIT`] in all) for the files' writers to write what is queued.
    fn flush(&self) {
        let deadline = Instant::now() + FLUSH_WAIT;
        for sink in self.sinks() {
            if !sink.flush(deadline) {
                eprintln!(
                    "warden: {}: lines still queued at exit were not written in {FLUSH_WAIT:?}",
                    sink.key()
                );
            }
        }
    }
}

/// The installed logger. The `log` crate's logger is process-wide by design; this is that
/// one logger, kept where SIGUSR1 and the metrics scrape can reach its files. Set once.
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// An operational record as one line in `format`. Pingora's own records lose the raw head
/// bytes they quote.
fn render_record(record: &log::Record, format: LogFormat) -> String {
    let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let msg = record.args().to_string();
    // Pingora's own records quote unparsable heads the same way its errors do.
    let msg = if record.target().starts_with("pingora") {
        withhold_raw_bytes(&msg).into_owned()
    } else {
        msg
    };
    let level = record.level().as_str().to_ascii_lowercase();
    match format {
        LogFormat::Json => serde_json::json!({
            "ts": ts,
            "level": level,
            "target": record.target(),
            "msg": msg,
        })
        .to_string(),
        LogFormat::Text => {
            let mut line = format!("ts={ts} level={level} target={} msg=", record.target());
            push_logfmt_value(&mut line, &msg);
            line
        }
    }
}

/// Installs the process logger (the binary calls this once, before serving): canonical lines
/// are written as rendered, other records wrapped in the same format. Operational lines go
/// to `log.file`, request lines to `log.access_file`, else to `log.file`, else (each) to
/// standard error. Pingora's own records are kept at warn and above, since the canonical
/// line already covers each request. Fails, naming the key, when a file cannot be opened
/// for appending. A second call changes nothing.
pub fn init_logger(settings: LogSettings, files: &LogFiles) -> Result<(), LogFileError> {
    if LOGGER.get().is_some() {
        return Ok(());
    }
    let ops = match &files.file {
        Some(path) => Some(FileSink::open("log.file", "log", path)?),
        None => None,
    };
    let access = match &files.access_file {
        Some(path) => Some(FileSink::open("log.access_file", "access", path)?),
        None => ops.clone(),
    };
    let filter = env_filter::Builder::new()
        .filter_level(settings.level)
        .filter_module("pingora", settings.level.min(log::LevelFilter::Warn))
        .build();
    let logger = LOGGER.get_or_init(|| Logger {
        filter,
        format: settings.format,
        ops,
        access,
        files: files.clone(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(logger.filter.filter());
    }
    Ok(())
}

/// SIGUSR1: each log file is reopened at its configured path before its next lines are
/// written (after a rotation moved the old one away; lines queued before are in one file
/// or the other, never lost). Returns at once; logs what it reopens.
pub fn reopen_log_files() {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let mut keys = Vec::new();
    for sink in logger.sinks() {
        sink.reopen();
        keys.push(sink.key());
    }
    if keys.is_empty() {
        log::info!("SIGUSR1: no log files to reopen (logging to stderr)");
    } else {
        log::info!("SIGUSR1: reopening {}", keys.join(" and "));
    }
}

/// The destinations the process logger writes, once [`init_logger`] installed it: a reload
/// cannot move them (it logs a warning when the file names others).
pub fn log_destinations() -> Option<&'static LogFiles> {
    LOGGER.get().map(|l| &l.files)
}

/// Lines each log file dropped since start (its queue was full, or a write failed), by
/// `file` label: `log` (`log.file`, with request lines when it has them) and `access`
/// (`log.access_file`). Zero for standard error, which is written in place.
pub fn log_lines_dropped() -> [(&'static str, u64); 2] {
    let mut out = [("log", 0), ("access", 0)];
    for sink in LOGGER.get().into_iter().flat_map(Logger::sinks) {
        for (label, n) in &mut out {
            if *label == sink.label() {
                *n = sink.dropped();
            }
        }
    }
    out
}

/// A warning for each destination `now` names that differs from those in use (`writing`):
/// log destinations are opened once, at start.
pub fn destination_changes(writing: &LogFiles, now: &LogFiles) -> Vec<String> {
    [
        ("log.file", writing.file.as_deref(), now.file.as_deref()),
        (
            "log.access_file",
            writing.access_file.as_deref(),
            now.access_file.as_deref(),
        ),
    ]
    .into_iter()
    .filter(|(_, was, now)| was != now)
    .map(|(key, was, now)| {
        format!(
            "{key} requires restart: still writing {}, the file now says {}",
            describe(was),
            describe(now)
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CanonicalLog {
        let mut l = CanonicalLog::new(Kind::Plain);
        l.request_id = Some("r1".into());
        l.method = Some("GET".into());
        l.host = Some("a.test".into());
        l.port = Some(80);
        l.path = Some("/x y".into());
        l.status = Some(200);
        l
    }

    #[test]
    fn json_lines_carry_every_field() {
        let v: serde_json::Value = serde_json::from_str(&sample().render(LogFormat::Json)).unwrap();
        for key in [
            "ts",
            "request_id",
            "client",
            "client_addr",
            "method",
            "scheme",
            "host",
            "port",
            "path",
            "status",
            "duration_ms",
            "bytes_in",
            "bytes_out",
            "intercepted",
            "upgraded",
            "reason",
            "error",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["kind"], "plain");
        assert_eq!(v["status"], 200);
    }

    #[test]
    fn logfmt_quotes_values_that_need_it_and_skips_nulls() {
        let line = sample().render(LogFormat::Text);
        assert!(line.contains("path=\"/x y\""), "{line}");
        assert!(line.contains("status=200"), "{line}");
        assert!(line.contains("kind=plain"), "{line}");
        assert!(!line.contains("reason="), "{line}");
    }

    #[test]
    fn error_text_never_starts_with_the_empty_source_of_an_unset_error() {
        use pingora_error::{Error, ErrorType};
        let unset = Error::explain(ErrorType::WriteError, "while writing body");
        assert_eq!(error_text(&unset), "WriteError: while writing body");
        let bare = Error::new(ErrorType::TLSHandshakeFailure);
        assert_eq!(error_text(&bare), "TLSHandshakeFailure");
        let io = std::io::Error::other("Broken pipe");
        let up = Error::because(ErrorType::WriteError, "flushing body", io).into_up();
        assert_eq!(
            error_text(&up),
            "upstream WriteError: flushing body (cause: Broken pipe)"
        );
        let nested = Error::because(ErrorType::ConnectError, "dialing", up).into_down();
        assert_eq!(
            error_text(&nested),
            "downstream ConnectError: dialing (cause: upstream WriteError: flushing body (cause: Broken pipe))"
        );
    }

    #[test]
    fn error_text_withholds_the_raw_head_bytes_pingora_quotes() {
        use pingora_error::{Error, ErrorType};
        let head = "buf: HTTP/1.1 200 OK\\r\\nX-Echo: Bearer CANARY-err-5ecret\\r\\nbad line";
        let e = Error::explain(ErrorType::InvalidHTTPHeader, head.to_string()).into_up();
        let text = error_text(&e);
        assert_eq!(text, "upstream InvalidHTTPHeader: [raw bytes withheld]");
        assert!(!text.contains("CANARY"));
    }

    #[test]
    fn log_files_resolve_and_refuse_one_file_for_both_kinds_of_line() {
        let resolve = |p: &Path| Path::new("/etc/warden").join(p);
        let cfg = |file: Option<&str>, access: Option<&str>| LogConfig {
            file: file.map(PathBuf::from),
            access_file: access.map(PathBuf::from),
            ..LogConfig::default()
        };
        let files = cfg(Some("w.log"), Some("/var/log/a.log"))
            .files(resolve)
            .unwrap();
        assert_eq!(files.file.as_deref(), Some(Path::new("/etc/warden/w.log")));
        assert_eq!(files.access(), Some(Path::new("/var/log/a.log")));
        let only_file = cfg(Some("/var/log/w.log"), None).files(resolve).unwrap();
        assert_eq!(only_file.access(), Some(Path::new("/var/log/w.log")));
        assert_eq!(cfg(None, None).files(resolve).unwrap().access(), None);
        let same = cfg(Some("/x/w.log"), Some("/x/w.log")).files(resolve);
        assert_eq!(same.unwrap_err()[0].0, "log.access_file");
        let empty = cfg(Some(""), None).files(resolve);
        assert_eq!(empty.unwrap_err()[0].0, "log.file");
    }

    #[test]
    fn a_changed_destination_is_named_with_what_stays_in_use() {
        let writing = LogFiles {
            file: Some("/a/w.log".into()),
            access_file: None,
        };
        assert!(destination_changes(&writing, &writing.clone()).is_empty());
        let now = LogFiles {
            file: Some("/b/w.log".into()),
            access_file: Some("/b/access.log".into()),
        };
        assert_eq!(
            destination_changes(&writing, &now),
            [
                "log.file requires restart: still writing /a/w.log, the file now says /b/w.log",
                "log.access_file requires restart: still writing stderr, the file now says /b/access.log",
            ]
        );
    }

    #[test]
    fn query_values_are_redacted_names_kept() {
        assert_eq!(
            redact_query("/a?token=s3cret&x=1&flag"),
            "/a?token=[redacted]&x=[redacted]&flag"
        );
        assert_eq!(redact_query("/plain"), "/plain");
    }
}

#[cfg(test)]
mod capture_tests {
    use super::Capture;
    use crate::llm::frame::{close_frame, encode, masked, BINARY, CONTINUATION, PING, TEXT};

    fn frames(limit: usize, wire: &[u8], piece: usize) -> Option<String> {
        let mut c = Capture::new(limit);
        c.summarize_frames();
        for chunk in wire.chunks(piece) {
            c.record(chunk);
        }
        c.text(None)
    }

    #[test]
    fn websocket_frames_are_summarized_one_entry_each_in_any_split() {
        let mut wire = masked(TEXT, true, b"hello world");
        wire.extend(masked(BINARY, true, &[7; 300]));
        wire.extend(masked(PING, true, b""));
        wire.extend_from_slice(&close_frame(1000, ""));
        wire.extend_from_slice(&close_frame(1008, "llm_tool_denied"));
        let want = r#"text(11) "hello world", binary(300), ping(0), close(2) 1000, close(17) 1008 "llm_tool_denied""#;
        for piece in [1, 2, 3, 7, 64, wire.len()] {
            assert_eq!(frames(4096, &wire, piece).as_deref(), Some(want), "{piece}");
        }
        assert_eq!(frames(0, &wire, 7), None, "capture off");
    }

    #[test]
    fn long_texts_are_cut_and_the_summary_stays_within_the_limit() {
        let long = "é".repeat(200);
        let got = frames(4096, &encode(TEXT, long.as_bytes()), 5).unwrap();
        assert_eq!(got, format!("text(400) \"{}…\"", "é".repeat(64)));
        let mut first = masked(TEXT, false, b"part one");
        first.extend(masked(CONTINUATION, true, b"part two"));
        assert_eq!(
            frames(4096, &first, 3).as_deref(),
            Some(r#"text(8) "part one…", continuation(8)"#),
            "a fragment is marked as such; continuations are not read"
        );
        let many: Vec<u8> = (0..100).flat_map(|_| encode(TEXT, b"x").to_vec()).collect();
        let got = frames(100, &many, 9).unwrap();
        assert!(
            got.ends_with('…') && got.len() <= 100 + '…'.len_utf8(),
            "{got}"
        );
        assert!(got.starts_with(r#"text(1) "x", text(1) "x""#), "{got}");
        let compressed = [0xC1, 0x03, 1, 2, 3];
        assert_eq!(
            frames(100, &compressed, 1).as_deref(),
            Some("text(3) compressed")
        );
    }

    #[test]
    fn secrets_in_client_frames_are_masked_even_when_the_excerpt_cuts_them() {
        let secret = b"sk-live-0123456789".to_vec();
        let r = crate::scrub::Replacer::masking([secret.clone()]);
        let mut c = Capture::new(4096);
        c.summarize_frames();
        c.record(&masked(TEXT, true, br#"{"key":"sk-live-0123456789"}"#));
        let mut cut = vec![b'a'; super::FRAME_EXCERPT_BYTES - 8];
        cut.extend_from_slice(&secret);
        c.record(&masked(TEXT, true, &cut));
        let text = c.text(Some(&r)).unwrap();
        assert!(!text.contains("sk-live"), "{text}");
        assert!(
            text.starts_with(r#"text(28) "{\"key\":\"[redacted]********\"}""#),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("text(138) \"{}…\"", "a".repeat(120))),
            "{text}"
        );
    }

    #[test]
    fn keeps_a_bounded_prefix_and_marks_cuts() {
        let mut c = Capture::new(5);
        c.record(b"abc");
        c.record(b"defgh");
        assert_eq!(c.text(None).as_deref(), Some("abcde…"));
        let mut c = Capture::new(10);
        c.record(b"abc");
        assert_eq!(c.text(None).as_deref(), Some("abc"));
        assert!(Capture::new(0).text(None).is_none());
    }

    #[test]
    fn sensitive_values_are_masked_even_when_cut() {
        let r = crate::scrub::Replacer::masking([b"s3cret-value".to_vec()]);
        let mut c = Capture::new(64);
        c.record(b"{\"auth\":\"s3cret-value\"}");
        assert_eq!(
            c.text(Some(&r)).as_deref(),
            Some("{\"auth\":\"[redacted]**\"}")
        );
        let mut c = Capture::new(12);
        c.record(b"auth=s3cret-value");
        assert_eq!(c.text(Some(&r)).as_deref(), Some("auth=…"));
    }
}
