//! The TOML configuration file: plugins, routes, listeners, storage, retries.
//!
//! Every error names the file, the line and the field, e.g.
//! `weft.toml:14:10: routes[0].sinks: unknown plugin "acounting"`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error (said in the message, not as a cause: anyhow would
        /// print it twice).
        error: std::io::Error,
    },
    /// Syntax error or a field of the wrong type / missing.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the field.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and HTTP limits.
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the queue lives.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Retry schedule for failed attempts.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Default sandbox limits for every plugin.
    #[serde(default)]
    pub limits: Limits,
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Routes: source → transforms → sinks.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The directory the config file is in; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file's name and text, to point at a setting in errors found
    /// after parsing (see [`Config::place`]).
    #[serde(skip)]
    origin: Origin,
}

/// Where a config came from: its name in messages and its text.
#[derive(Debug, Clone, Default)]
struct Origin {
    name: String,
    text: String,
}

/// Listeners and limits of the HTTP servers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the webhook listener (`POST /hooks/{source}`).
    #[serde(deserialize_with = "address")]
    pub listen: SocketAddr,
    /// Address of the admin API, metrics and dashboard; `"off"` (or `""`)
    /// in the file disables them.
    #[serde(deserialize_with = "address_or_off")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token required by the admin API (a secret reference).
    pub admin_token: Option<SecretRef>,
    /// Largest accepted webhook body.
    pub max_body_bytes: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Time a client has to send its whole body.
    pub body_read_timeout_ms: u64,
    /// Events handled concurrently by the delivery workers.
    pub workers: usize,
    /// Webhook requests handled at once; more are answered 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// Webhook requests handled at once from one client address; more are
    /// answered 429 with Retry-After. Behind a reverse proxy every request
    /// comes from the proxy's address: raise it to `max_concurrent_requests`.
    pub max_requests_per_client: usize,
    /// Webhook connections open at once (idle keep-alive ones included);
    /// beyond that new ones wait in the listen backlog. Keep it under the
    /// process's open-file limit.
    pub max_connections: usize,
    /// Webhook connections open at once from one client address (IPv6: one
    /// /64); more are closed as soon as they are accepted. Behind a reverse
    /// proxy every connection comes from the proxy: raise it to
    /// `max_connections`.
    pub max_connections_per_client: usize,
    /// A connection with no request in progress and no bytes moving for
    /// this long is closed (keep-alive connections do not hold their slot
    /// for ever).
    pub idle_timeout_ms: u64,
    /// Time given to in-flight attempts on shutdown before they are abandoned
    /// (they stay queued and run again after a restart).
    pub shutdown_grace_ms: u64,
    /// HTTPS for both listeners (see [`crate::tls`]); without it they speak
    /// plain HTTP (fine on loopback or behind a TLS-terminating proxy).
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key (paths relative to the
/// config file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            admin_token: None,
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 30_000,
            workers: 64,
            max_concurrent_requests: 1024,
            max_requests_per_client: 256,
            max_connections: 4096,
            max_connections_per_client: 512,
            idle_timeout_ms: 60_000,
            shutdown_grace_ms: 10_000,
            tls: None,
        }
    }
}

/// Queue storage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Directory of the sled database (and, by default, the compiled-plugin cache).
    pub data_dir: PathBuf,
    /// Where compiled plugins are cached (default: `<data_dir>/cache`).
    pub cache_dir: Option<PathBuf>,
    /// The longest (µs) a durable commit waits for webhooks already being
    /// processed to join it (default 1000, at most 10000; 0 = never wait). It
    /// waits only while such webhooks exist: one arriving alone is never
    /// delayed. See docs/ARCHITECTURE.md.
    pub commit_delay_us: u64,
    /// With this many records pending on a route (waiting to run, or for a
    /// retry), webhooks for that route are answered `503` with
    /// `Retry-After` and nothing is stored until deliveries make room
    /// (default 1,000,000; see [`crate::headroom`]).
    pub max_pending: u64,
    /// With less than this many MiB free on the data dir's file system,
    /// webhooks are answered `503` likewise (default 256; 0 = never).
    pub min_free_mib: u64,
}

/// Default for `storage.max_pending`.
pub const DEFAULT_MAX_PENDING: u64 = 1_000_000;

/// Default for `storage.min_free_mib`.
pub const DEFAULT_MIN_FREE_MIB: u64 = 256;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("weft-data"),
            cache_dir: None,
            commit_delay_us: crate::queue::DEFAULT_COMMIT_DELAY.as_micros() as u64,
            max_pending: DEFAULT_MAX_PENDING,
            min_free_mib: DEFAULT_MIN_FREE_MIB,
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delay before the second attempt.
    pub initial_ms: u64,
    /// Growth factor per attempt.
    pub multiplier: f64,
    /// Largest delay (also caps a sink's requested delay).
    pub max_delay_ms: u64,
    /// Attempts in all, the first included, before dead-lettering.
    pub max_attempts: u32,
    /// Random spread, as a fraction of the delay (0.2 = ±20%).
    pub jitter: f64,
    /// Failed attempts in a row at one sink (any events) after which its
    /// circuit breaker opens: deliveries to it wait without using up their
    /// attempts, and one probe at a time goes after each cool-down (the
    /// backoff above). 0: no breaker.
    pub breaker_after: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_delay_ms: 300_000,
            max_attempts: 10,
            jitter: 0.2,
            breaker_after: 5,
        }
    }
}

/// A listen address, or `"off"` / `""` for none.
fn address_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "\"{addr}\" is not an address like 127.0.0.1:8081 (an IP address and a port; host names are not looked up); \"off\" disables the listener"
            ))
        }),
    }
}

/// `server.listen`: an IP address and a port.
fn address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "\"{text}\" is not an address like 127.0.0.1:8080 (an IP address and a port; host names are not looked up; 0.0.0.0:8080 listens on every interface)"
        ))
    })
}

/// Finds where a setting is written in the config text, for error messages:
/// the key of `server.workers` whether it sits under `[server]` or is
/// written `server.workers = ...` at the top, not the first line that
/// happens to start with `workers`.
struct Locator {
    doc: Option<toml_edit::ImDocument<String>>,
}

impl Locator {
    fn new(text: &str) -> Locator {
        Locator {
            doc: toml_edit::ImDocument::parse(text.to_string()).ok(),
        }
    }

    /// The offset of the deepest key of `path` that the text sets (the
    /// setting itself, else its nearest table), or 0. A number after an
    /// array of tables picks its entry (`["plugins", "x", "inject", "1"]`).
    fn at(&self, path: &[&str]) -> usize {
        let Some(doc) = &self.doc else { return 0 };
        let mut table: &dyn toml_edit::TableLike = doc.as_table();
        let mut best = 0;
        let mut keys = path.iter().peekable();
        while let Some(key) = keys.next() {
            let Some((k, item)) = table.get_key_value(key) else {
                break;
            };
            // A table written with its own header: the header's line.
            let span = match item {
                toml_edit::Item::Table(t) => t.span().or_else(|| k.span()),
                _ => k.span().or_else(|| item.span()),
            };
            if let Some(span) = span {
                best = span.start;
            }
            if let toml_edit::Item::ArrayOfTables(entries) = item {
                let Some(entry) = keys
                    .next_if(|i| i.parse::<usize>().is_ok())
                    .and_then(|i| entries.get(i.parse().ok()?))
                else {
                    break;
                };
                if let Some(span) = entry.span() {
                    best = span.start;
                }
                table = entry;
                continue;
            }
            match item.as_table_like() {
                Some(inner) => table = inner,
                None => break,
            }
        }
        best
    }

    /// The dotted name of the setting written at byte `offset` (the
    /// deepest key whose key or value covers it, or the table whose header
    /// does), for parse errors that name no field: `retry.initial_ms`,
    /// `routes[0].sinks`.
    fn path_at(&self, offset: usize) -> Option<String> {
        let doc = self.doc.as_ref()?;
        let mut path = Vec::new();
        if !find_in_table(doc.as_table(), offset, &mut path) {
            return None;
        }
        let mut name = String::new();
        for segment in path {
            if !name.is_empty() && !segment.starts_with('[') {
                name.push('.');
            }
            name.push_str(&segment);
        }
        Some(name)
    }
}

fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset))
}

/// Whether a setting in `table` covers `offset`; its path is left in `path`.
fn find_in_table(table: &dyn toml_edit::TableLike, offset: usize, path: &mut Vec<String>) -> bool {
    for (name, item) in table.iter() {
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        path.push(name.to_string());
        let found = match item {
            toml_edit::Item::Table(t) => find_in_table(t, offset, path) || covers(t.span(), offset),
            toml_edit::Item::ArrayOfTables(entries) => entries.iter().enumerate().any(|(i, t)| {
                path.push(format!("[{i}]"));
                let found = find_in_table(t, offset, path) || covers(t.span(), offset);
                if !found {
                    path.pop();
                }
                found
            }),
            toml_edit::Item::Value(v) => find_in_value(v, offset, path),
            toml_edit::Item::None => false,
        } || covers(key_span, offset);
        if found {
            return true;
        }
        path.pop();
    }
    false
}

/// Whether `value` (or something inside it) covers `offset`.
fn find_in_value(value: &toml_edit::Value, offset: usize, path: &mut Vec<String>) -> bool {
    let inside = match value {
        toml_edit::Value::InlineTable(t) => find_in_table(t, offset, path),
        toml_edit::Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
            path.push(format!("[{i}]"));
            let found = find_in_value(v, offset, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    };
    inside || covers(value.span(), offset)
}

/// The longest retry delay (`retry.initial_ms`, `retry.max_delay_ms`)
/// accepted: 30 days.
pub const MAX_RETRY_DELAY_MS: u64 = 30 * 24 * 3600 * 1000;

/// The longest timeout (any `*_timeout_ms`, `limits.timeout_ms`) accepted: one hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// The largest `limits.max_response_bytes` accepted (the response lands in
/// plugin memory, which is at most 1 GiB).
pub const MAX_RESPONSE_BYTES: u64 = 1 << 30;
/// The most delivery workers (`server.workers`) accepted.
pub const MAX_WORKERS: usize = 65_536;
/// The most concurrent webhook requests (`server.max_concurrent_requests`) accepted.
pub const MAX_CONCURRENT_REQUESTS: usize = 1 << 20;

/// The largest `server.max_body_bytes` accepted: a webhook is stored whole
/// in one queue record, and a record must fit one journal frame.
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// The largest `limits.max_batch` accepted: the requests one
/// `outbound.send-all` call has in flight at once, so that a sink sending
/// one request per event sends its whole batch in one wave, within the
/// call's time limit.
pub const MAX_BATCH: u32 = crate::runtime::egress::OUTBOUND_IN_FLIGHT as u32;

/// The largest `limits.memory_mib` accepted: a plugin's memories are
/// reserved in the instance pool at most 1 GiB each.
pub const MAX_MEMORY_MIB: u64 = 1024;

/// The largest `limits.state_mib` accepted.
pub const MAX_STATE_MIB: u64 = 1 << 20;

/// Default for `limits.requests_per_s`.
pub const DEFAULT_REQUESTS_PER_S: u32 = 20_000;

/// The largest `limits.requests_per_s` accepted.
pub const MAX_REQUESTS_PER_S: u32 = 1_000_000;

/// Default for `limits.max_events`.
pub const DEFAULT_MAX_EVENTS: u32 = 10_000;

/// The largest `limits.max_events` accepted.
pub const MAX_MAX_EVENTS: u32 = 1_000_000;

/// Default for `limits.max_output_bytes`.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 << 20;

/// The largest `limits.max_output_bytes` accepted (what a call makes is in
/// its memory first, which is at most 1 GiB).
pub const MAX_OUTPUT_BYTES: u64 = 1 << 30;

/// Sandbox limits of a plugin call.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory a plugin instance may grow to.
    pub memory_mib: u64,
    /// CPU time one call may take (checked every 10 ms by epoch interruption).
    pub timeout_ms: u64,
    /// Wall time one outbound HTTP request may take.
    pub http_timeout_ms: u64,
    /// Largest outbound response body a plugin may read.
    pub max_response_bytes: u64,
    /// Calls one instance may serve before it is discarded. 1 (the default)
    /// means a fresh instance per call: no state carries from one event to
    /// the next. Higher values skip instantiation (worth it for JavaScript
    /// and Python connectors, see docs/BENCHMARKS.md) for code you trust to
    /// keep events apart; an instance that traps or times out is never reused.
    pub instance_reuse: u32,
    /// Sinks only: how many ready events one `deliver-batch` call may carry.
    /// 1 (the default) delivers each event in its own call. Larger values
    /// let a sink that implements `deliver-batch` (the built-in `http-post`
    /// sends the batch's requests concurrently) amortise the call over many
    /// events; outcomes stay per event. Events are never held back to fill a
    /// batch: a batch is whatever is ready when the sink is free.
    pub max_batch: u32,
    /// Sources only: webhook requests per second the source accepts, in
    /// bursts of up to one second's worth; more are answered 429 with
    /// `Retry-After` and never stored. The default (20000) is above what one
    /// node delivers (docs/BENCHMARKS.md): set it to what the upstream
    /// should send.
    pub requests_per_s: u32,
    /// Sources and transforms: the most events one call may produce. A
    /// webhook whose source makes more is answered 413 and nothing of it is
    /// stored; a transform that makes more (from one event, counting every
    /// output of its step) fails that event permanently (dead letter). It
    /// bounds what one request can make the queue hold.
    pub max_events: u32,
    /// Sources and transforms: the most bytes of events (data, attributes
    /// and extensions, [`Event::size`](crate::event::Event::size)) a source
    /// may make from one webhook, or a transform step from one queued event
    /// (over all its calls, events passed through unchanged included). Like
    /// `max_events`: a webhook over it is answered 413 and nothing is
    /// stored; a transform step over it fails that event permanently. It
    /// bounds what one request can make the queue and its journal hold,
    /// whatever a plugin's memory allows. A source's should be at least
    /// `server.max_body_bytes` (`weft validate` warns otherwise).
    pub max_output_bytes: u64,
    /// Bytes of keys and values the plugin may keep in its state
    /// (`weft:connector/state`), in MiB; a write beyond it fails.
    pub state_mib: u64,
    /// Sinks only: events per second delivered to this sink, over all its
    /// routes, in bursts of up to one second's worth (0, the default: no
    /// limit). Set it to what the downstream API allows: deliveries over it
    /// wait in the queue for their turn, without an attempt, instead of
    /// meeting `429`s.
    pub deliveries_per_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            timeout_ms: 5_000,
            http_timeout_ms: 10_000,
            max_response_bytes: 16 * 1024 * 1024,
            instance_reuse: 1,
            max_batch: 1,
            requests_per_s: DEFAULT_REQUESTS_PER_S,
            max_events: DEFAULT_MAX_EVENTS,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            state_mib: 64,
            deliveries_per_s: 0,
        }
    }
}

/// Partial limits on a plugin entry, overriding the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    memory_mib: Option<u64>,
    timeout_ms: Option<u64>,
    http_timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
    instance_reuse: Option<u32>,
    max_batch: Option<u32>,
    requests_per_s: Option<u32>,
    max_events: Option<u32>,
    max_output_bytes: Option<u64>,
    state_mib: Option<u64>,
    deliveries_per_s: Option<u32>,
}

/// Where a secret's value comes from. The value itself never appears in the
/// config file, logs or plugin memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// An environment variable of the host process.
    pub env: Option<String>,
    /// A file (e.g. a mounted secret); ASCII whitespace around the value is
    /// trimmed, the bytes in between are used as they are.
    pub file: Option<PathBuf>,
}

/// A secret header the host adds to a plugin's outbound requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderInjection {
    /// Which requests: an `allowed_hosts` pattern such as `https://api.example.com`.
    pub host: String,
    /// Header name, e.g. `authorization`.
    pub header: String,
    /// Name of one of the plugin's secrets.
    pub secret: String,
    /// Text put before the secret, e.g. `Bearer `.
    #[serde(default)]
    pub prefix: String,
}

/// One plugin: which component, its config values and its grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path to a `.wasm` component (relative to the config file).
    pub path: Option<PathBuf>,
    /// Name of a plugin built with Weft (`webhook-json`, `json-map`, `http-post`).
    pub builtin: Option<String>,
    /// Values the plugin reads through `weft:connector/config`.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// Outbound HTTP grants: `scheme://host[:port]`, `*.example.com` allowed.
    /// Empty means no outbound HTTP at all.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Secrets this plugin may use by name (never read).
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Secret headers injected into matching outbound requests.
    #[serde(default)]
    pub inject: Vec<HeaderInjection>,
    /// Overrides of the default limits.
    #[serde(default)]
    pub limits: LimitOverrides,
    /// For a route's source: accept each event id at most once in this many
    /// seconds. A second webhook carrying an event id already accepted
    /// (a sender's retry, or a captured signed request sent again) is
    /// answered `202` as a duplicate and not stored again. 0 (the default):
    /// every event is stored.
    #[serde(default)]
    pub dedup_window_s: u64,
    /// For a route's source: the HTTP methods its webhooks may use (`POST`
    /// when not set). Another method gets `405` with an `Allow` header and
    /// never reaches the plugin. A source that answers verification
    /// challenges sent with GET lists `["GET", "POST"]`.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
}

/// The longest `dedup_window_s` (30 days).
pub const MAX_DEDUP_WINDOW_S: u64 = 30 * 24 * 3600;

impl PluginConfig {
    /// `methods` as HTTP methods (`None`: not set, or one that validation
    /// refuses).
    pub fn http_methods(&self) -> Option<Vec<http::Method>> {
        self.methods
            .as_ref()?
            .iter()
            .map(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .collect()
    }

    /// The effective limits: the overrides on top of `defaults`.
    pub fn limits(&self, defaults: &Limits) -> Limits {
        Limits {
            memory_mib: self.limits.memory_mib.unwrap_or(defaults.memory_mib),
            timeout_ms: self.limits.timeout_ms.unwrap_or(defaults.timeout_ms),
            http_timeout_ms: self
                .limits
                .http_timeout_ms
                .unwrap_or(defaults.http_timeout_ms),
            max_response_bytes: self
                .limits
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes),
            instance_reuse: self
                .limits
                .instance_reuse
                .unwrap_or(defaults.instance_reuse),
            max_batch: self.limits.max_batch.unwrap_or(defaults.max_batch),
            requests_per_s: self
                .limits
                .requests_per_s
                .unwrap_or(defaults.requests_per_s),
            max_events: self.limits.max_events.unwrap_or(defaults.max_events),
            max_output_bytes: self
                .limits
                .max_output_bytes
                .unwrap_or(defaults.max_output_bytes),
            state_mib: self.limits.state_mib.unwrap_or(defaults.state_mib),
            deliveries_per_s: self
                .limits
                .deliveries_per_s
                .unwrap_or(defaults.deliveries_per_s),
        }
    }

    /// The plugin's config values as the strings plugins see: strings as is,
    /// everything else as JSON text (TOML dates and times as their text).
    pub fn config_strings(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    toml::Value::String(s) => s.clone(),
                    other => toml_to_json(other).to_string(),
                };
                (k.clone(), s)
            })
            .collect()
    }
}

/// A TOML value as JSON: dates and times become their RFC 3339 text (serde
/// would otherwise write the `toml` crate's private wrapper for them).
fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(items) => J::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => J::Object(
            table
                .iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// What is wrong with a retry schedule, if anything: the field and the
/// rule it breaks (`section` names the schedule in the message).
fn retry_problem(r: &RetryConfig, section: &str) -> Option<(&'static str, String)> {
    let checks = [
        (
            "max_attempts",
            r.max_attempts >= 1,
            "must be at least 1".to_string(),
        ),
        (
            "multiplier",
            r.multiplier >= 1.0 && r.multiplier.is_finite(),
            "must be at least 1.0".into(),
        ),
        (
            "jitter",
            (0.0..1.0).contains(&r.jitter),
            "must be 0 <= jitter < 1".into(),
        ),
        (
            "initial_ms",
            (1..=MAX_RETRY_DELAY_MS).contains(&r.initial_ms),
            format!("must be 1..={MAX_RETRY_DELAY_MS}"),
        ),
        (
            "max_delay_ms",
            (1..=MAX_RETRY_DELAY_MS).contains(&r.max_delay_ms),
            format!("must be 1..={MAX_RETRY_DELAY_MS} (30 days)"),
        ),
        (
            "initial_ms",
            r.initial_ms <= r.max_delay_ms,
            format!(
                "{} is above {section}.max_delay_ms ({}): the first retry would already wait longer than any may",
                r.initial_ms, r.max_delay_ms
            ),
        ),
    ];
    checks
        .into_iter()
        .find(|(_, ok, _)| !ok)
        .map(|(field, _, rule)| (field, rule))
}

/// A route's own retry schedule: any of `[retry]`'s settings, which it
/// overrides for this route's transforms and sinks (say, an accounting API
/// worth retrying for a day, while the rest give up within the hour).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverrides {
    /// Delay before the second attempt.
    pub initial_ms: Option<u64>,
    /// Growth factor per attempt.
    pub multiplier: Option<f64>,
    /// Largest delay.
    pub max_delay_ms: Option<u64>,
    /// Attempts in all before dead-lettering.
    pub max_attempts: Option<u32>,
    /// Random spread, as a fraction of the delay.
    pub jitter: Option<f64>,
    /// Failures in a row that open a sink's circuit breaker (0: none).
    pub breaker_after: Option<u32>,
}

impl RetryOverrides {
    /// These settings over `base`.
    pub fn over(&self, base: &RetryConfig) -> RetryConfig {
        RetryConfig {
            initial_ms: self.initial_ms.unwrap_or(base.initial_ms),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            max_delay_ms: self.max_delay_ms.unwrap_or(base.max_delay_ms),
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            jitter: self.jitter.unwrap_or(base.jitter),
            breaker_after: self.breaker_after.unwrap_or(base.breaker_after),
        }
    }
}

/// A route: events from one source, through transforms, to every sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Route name (unique), used in logs and the admin API.
    pub name: Spanned<String>,
    /// The source plugin; its webhook is `POST /hooks/{source}`.
    pub source: Spanned<String>,
    /// Transform plugins, applied in order.
    #[serde(default)]
    pub transforms: Vec<Spanned<String>>,
    /// Sink plugins; each gets every event (fan-out).
    pub sinks: Vec<Spanned<String>>,
    /// This route's retry schedule, over `[retry]`.
    #[serde(default)]
    pub retry: Option<Spanned<RetryOverrides>>,
}

impl RouteConfig {
    /// The route's retry schedule: its own settings over `global`.
    pub fn retry(&self, global: &RetryConfig) -> RetryConfig {
        match &self.retry {
            Some(own) => own.get_ref().over(global),
            None => global.clone(),
        }
    }
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::parse(&text, &path.display().to_string(), &base)
    }

    /// Parses and validates config text; `name` is used in error messages.
    pub fn parse(text: &str, name: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = position(text, offset);
            ConfigError::Invalid {
                path: name.to_string(),
                line,
                column,
                message,
            }
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            // The parser's own words, with the setting they are about (it
            // names no field for a wrong type or an unknown key's table).
            let message = e.message().trim().replace(
                "expected struct SecretRef",
                "expected { env = \"NAME\" } or { file = \"PATH\" }",
            );
            let message = match Locator::new(text).path_at(offset) {
                Some(path) => format!("{path}: {message}"),
                None => message,
            };
            invalid(offset, message)
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.validate(text, &invalid)?;
        config.origin = Origin {
            name: name.to_string(),
            text: text.to_string(),
        };
        Ok(config)
    }

    /// `file:line:column` of the setting at `path` (`["plugins", "x",
    /// "config"]`), or of its nearest enclosing table the file writes, for
    /// errors found after parsing: a plugin refusing its config, a route
    /// using a plugin in the wrong role.
    pub fn place(&self, path: &[&str]) -> String {
        self.place_at(Locator::new(&self.origin.text).at(path))
    }

    /// `file:line:column` of a byte offset in the file (a `Spanned`
    /// value's start).
    pub fn place_at(&self, offset: usize) -> String {
        let (line, column) = position(&self.origin.text, offset);
        format!("{}:{line}:{column}", self.origin.name)
    }

    fn validate(
        &self,
        text: &str,
        invalid: &dyn Fn(usize, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let locate = Locator::new(text);
        let at = |path: &[&str]| locate.at(path);
        // Every limit is a count or a size: 1 up to its maximum. The
        // defaults under `[limits]` first, then each plugin's own.
        let ranges = |limits: &Limits| {
            [
                ("memory_mib", limits.memory_mib, MAX_MEMORY_MIB),
                ("timeout_ms", limits.timeout_ms, MAX_TIMEOUT_MS),
                ("http_timeout_ms", limits.http_timeout_ms, MAX_TIMEOUT_MS),
                (
                    "max_response_bytes",
                    limits.max_response_bytes,
                    MAX_RESPONSE_BYTES,
                ),
                (
                    "instance_reuse",
                    u64::from(limits.instance_reuse),
                    1_000_000,
                ),
                (
                    "max_batch",
                    u64::from(limits.max_batch),
                    u64::from(MAX_BATCH),
                ),
                (
                    "requests_per_s",
                    u64::from(limits.requests_per_s),
                    u64::from(MAX_REQUESTS_PER_S),
                ),
                (
                    "max_events",
                    u64::from(limits.max_events),
                    u64::from(MAX_MAX_EVENTS),
                ),
                (
                    "max_output_bytes",
                    limits.max_output_bytes,
                    MAX_OUTPUT_BYTES,
                ),
                ("state_mib", limits.state_mib, MAX_STATE_MIB),
            ]
        };
        for (field, value, max) in ranges(&self.limits) {
            if value == 0 || value > max {
                return Err(invalid(
                    at(&["limits", field]),
                    format!("limits.{field}: must be 1..={max}"),
                ));
            }
        }
        if self.limits.deliveries_per_s > MAX_REQUESTS_PER_S {
            return Err(invalid(
                at(&["limits", "deliveries_per_s"]),
                format!("limits.deliveries_per_s: must be 0..={MAX_REQUESTS_PER_S} (0: no limit)"),
            ));
        }
        for (name, plugin) in &self.plugins {
            let at_plugin = |rest: &[&str]| {
                let mut path = vec!["plugins", name.as_str()];
                path.extend_from_slice(rest);
                locate.at(&path)
            };
            let at = at_plugin(&[]);
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    at,
                    format!("plugins.{name}: names may use only letters, digits, '-' and '_'"),
                ));
            }
            if let Some(builtin) = &plugin.builtin {
                if builtin.is_empty()
                    || !builtin
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                {
                    return Err(invalid(
                        at_plugin(&["builtin"]),
                        format!("plugins.{name}.builtin: \"{builtin}\" is not a built-in plugin name (lower-case letters, digits and '-', e.g. \"http-post\")"),
                    ));
                }
            }
            match (&plugin.path, &plugin.builtin) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        at,
                        format!("plugins.{name}: set either `path` or `builtin`, not both"),
                    ))
                }
                (None, None) => {
                    return Err(invalid(
                        at,
                        format!("plugins.{name}: missing field `path` or `builtin`"),
                    ))
                }
                _ => {}
            }
            for host in &plugin.allowed_hosts {
                if let Err(e) = crate::runtime::egress::HostPattern::parse(host) {
                    return Err(invalid(
                        at_plugin(&["allowed_hosts"]),
                        format!("plugins.{name}.allowed_hosts: {e}"),
                    ));
                }
            }
            for (secret, r) in &plugin.secrets {
                if r.env.is_some() == r.file.is_some() {
                    return Err(invalid(
                        at_plugin(&["secrets", secret]),
                        format!(
                            "plugins.{name}.secrets.{secret}: set exactly one of `env` or `file`"
                        ),
                    ));
                }
            }
            for (i, inject) in plugin.inject.iter().enumerate() {
                let entry = i.to_string();
                let at_inject = |field: &str| at_plugin(&["inject", &entry, field]);
                if !plugin.secrets.contains_key(&inject.secret) {
                    return Err(invalid(
                        at_inject("secret"),
                        format!("plugins.{name}.inject: unknown secret \"{}\" (declare it under plugins.{name}.secrets)", inject.secret),
                    ));
                }
                let host = match crate::runtime::egress::HostPattern::parse(&inject.host) {
                    Ok(host) => host,
                    Err(e) => {
                        return Err(invalid(
                            at_inject("host"),
                            format!("plugins.{name}.inject.host: {e}"),
                        ))
                    }
                };
                let granted = plugin.allowed_hosts.iter().any(|allowed| {
                    crate::runtime::egress::HostPattern::parse(allowed)
                        .is_ok_and(|allowed| allowed.overlaps(&host))
                });
                if !granted {
                    return Err(invalid(
                        at_inject("host"),
                        format!(
                            "plugins.{name}.inject.host: \"{}\" matches none of this plugin's allowed_hosts: the header would never be sent",
                            inject.host
                        ),
                    ));
                }
                if http::HeaderName::from_bytes(inject.header.as_bytes()).is_err() {
                    return Err(invalid(
                        at_inject("header"),
                        format!(
                            "plugins.{name}.inject.header: invalid header name \"{}\"",
                            inject.header
                        ),
                    ));
                }
            }
            if let Some(methods) = &plugin.methods {
                let bad = methods
                    .iter()
                    .find(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()));
                if methods.is_empty() || bad.is_some() {
                    return Err(invalid(
                        at_plugin(&["methods"]),
                        format!(
                            "plugins.{name}.methods: {} (HTTP methods in capitals, e.g. [\"POST\"] or [\"GET\", \"POST\"])",
                            bad.map_or("must not be empty".to_string(), |m| format!("\"{}\" is not a method", m.escape_debug()))
                        ),
                    ));
                }
            }
            if plugin.dedup_window_s > MAX_DEDUP_WINDOW_S {
                return Err(invalid(
                    at_plugin(&["dedup_window_s"]),
                    format!(
                        "plugins.{name}.dedup_window_s: must be 0..={MAX_DEDUP_WINDOW_S} (30 days)"
                    ),
                ));
            }
            for (field, value, max) in ranges(&plugin.limits(&self.limits)) {
                if value == 0 || value > max {
                    return Err(invalid(
                        at_plugin(&["limits", field]),
                        format!("plugins.{name}.limits.{field}: must be 1..={max}"),
                    ));
                }
            }
            if plugin.limits(&self.limits).deliveries_per_s > MAX_REQUESTS_PER_S {
                return Err(invalid(
                    at_plugin(&["limits", "deliveries_per_s"]),
                    format!("plugins.{name}.limits.deliveries_per_s: must be 0..={MAX_REQUESTS_PER_S} (0: no limit)"),
                ));
            }
        }
        if let Some((field, rule)) = retry_problem(&self.retry, "retry") {
            return Err(invalid(
                at(&["retry", field]),
                format!("retry.{field}: {rule}"),
            ));
        }
        if let Some(token) = &self.server.admin_token {
            if token.env.is_some() == token.file.is_some() {
                return Err(invalid(
                    at(&["server", "admin_token"]),
                    "server.admin_token: set exactly one of `env` or `file`".into(),
                ));
            }
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                at(&["storage", "data_dir"]),
                "storage.data_dir: must not be empty (a directory for the queue, e.g. \"weft-data\")".into(),
            ));
        }
        let data_dir = self.data_dir();
        if data_dir.exists() && !data_dir.is_dir() {
            return Err(invalid(
                at(&["storage", "data_dir"]),
                format!(
                    "storage.data_dir: {} exists and is not a directory",
                    data_dir.display()
                ),
            ));
        }
        if self.storage.commit_delay_us > 10_000 {
            return Err(invalid(
                at(&["storage", "commit_delay_us"]),
                "storage.commit_delay_us: must be 0..=10000".into(),
            ));
        }
        if !(1..=1 << 40).contains(&self.storage.max_pending) {
            return Err(invalid(
                at(&["storage", "max_pending"]),
                format!("storage.max_pending: must be 1..={}", 1u64 << 40),
            ));
        }
        if self.storage.min_free_mib > 1 << 30 {
            return Err(invalid(
                at(&["storage", "min_free_mib"]),
                format!("storage.min_free_mib: must be 0..={}", 1u64 << 30),
            ));
        }
        let server = &self.server;
        let server_checks = [
            ("workers", server.workers as u64, 1, MAX_WORKERS as u64),
            (
                "max_concurrent_requests",
                server.max_concurrent_requests as u64,
                1,
                MAX_CONCURRENT_REQUESTS as u64,
            ),
            (
                "max_requests_per_client",
                server.max_requests_per_client as u64,
                1,
                MAX_CONCURRENT_REQUESTS as u64,
            ),
            (
                "max_connections",
                server.max_connections as u64,
                1,
                MAX_CONCURRENT_REQUESTS as u64,
            ),
            (
                "max_connections_per_client",
                server.max_connections_per_client as u64,
                1,
                MAX_CONCURRENT_REQUESTS as u64,
            ),
            (
                "header_read_timeout_ms",
                server.header_read_timeout_ms,
                1,
                MAX_TIMEOUT_MS,
            ),
            (
                "body_read_timeout_ms",
                server.body_read_timeout_ms,
                1,
                MAX_TIMEOUT_MS,
            ),
            ("idle_timeout_ms", server.idle_timeout_ms, 1, MAX_TIMEOUT_MS),
            (
                "max_body_bytes",
                server.max_body_bytes as u64,
                1,
                MAX_BODY_BYTES as u64,
            ),
        ];
        for (field, value, min, max) in server_checks {
            if !(min..=max).contains(&value) {
                return Err(invalid(
                    at(&["server", field]),
                    format!("server.{field}: must be {min}..={max}"),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            // Route names go into metric labels, log lines and admin URLs.
            let name = route.name.get_ref();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    route.name.span().start,
                    format!(
                        "routes[{i}].name: \"{}\": names may use only letters, digits, '-' and '_'",
                        name.escape_debug()
                    ),
                ));
            }
            if !names.insert(route.name.get_ref().clone()) {
                return Err(invalid(
                    route.name.span().start,
                    format!(
                        "routes[{i}].name: duplicate route \"{}\"",
                        route.name.get_ref()
                    ),
                ));
            }
            let check = |field: &str, plugin: &Spanned<String>| -> Result<(), ConfigError> {
                if self.plugins.contains_key(plugin.get_ref()) {
                    Ok(())
                } else {
                    Err(invalid(
                        plugin.span().start,
                        format!(
                            "routes[{i}].{field}: unknown plugin \"{}\"",
                            plugin.get_ref()
                        ),
                    ))
                }
            };
            check("source", &route.source)?;
            if let Some(own) = &route.retry {
                if let Some((field, rule)) =
                    retry_problem(&route.retry(&self.retry), &format!("routes[{i}].retry"))
                {
                    return Err(invalid(
                        own.span().start,
                        format!("routes[{i}].retry.{field}: {rule}"),
                    ));
                }
            }
            // Settings only a source has.
            for plugin in route.transforms.iter().chain(&route.sinks) {
                let Some(pc) = self.plugins.get(plugin.get_ref()) else {
                    continue;
                };
                let set = [
                    (
                        "dedup_window_s",
                        "de-duplicates events",
                        pc.dedup_window_s > 0,
                    ),
                    ("methods", "takes webhooks", pc.methods.is_some()),
                ];
                if let Some((field, what, _)) = set.into_iter().find(|(_, _, set)| *set) {
                    return Err(invalid(
                        locate.at(&["plugins", plugin.get_ref(), field]),
                        format!(
                            "plugins.{}.{field}: only a route's source {what}, and routes[{i}] uses \"{}\" as a transform or sink",
                            plugin.get_ref(),
                            plugin.get_ref()
                        ),
                    ));
                }
            }
            for t in &route.transforms {
                check("transforms", t)?;
            }
            if route.sinks.is_empty() {
                return Err(invalid(
                    route.name.span().start,
                    format!("routes[{i}].sinks: a route needs at least one sink"),
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for s in &route.sinks {
                check("sinks", s)?;
                // Twice in one route: every event would be delivered twice.
                if !seen.insert(s.get_ref()) {
                    return Err(invalid(
                        s.span().start,
                        format!(
                            "routes[{i}].sinks: \"{}\" is listed twice (each event would be delivered to it twice)",
                            s.get_ref()
                        ),
                    ));
                }
            }
        }
        if let Some(admin) = self.server.admin_listen {
            let same_port = admin.port() == self.server.listen.port() && admin.port() != 0;
            let overlap = admin.ip() == self.server.listen.ip()
                || admin.ip().is_unspecified()
                || self.server.listen.ip().is_unspecified();
            if same_port && overlap {
                return Err(invalid(
                    at(&["server", "admin_listen"]),
                    format!(
                        "server.admin_listen: {admin} is the webhook listener's address too (server.listen = {}); give the admin API its own port",
                        self.server.listen
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The listeners' TLS, if `server.tls` is set: its files read and
    /// checked (at start, and by `weft validate`).
    pub fn listener_tls(
        &self,
    ) -> Result<Option<crate::tls::ListenerTls>, crate::tls::LocatedTlsError> {
        use crate::tls::TlsError;
        let Some(files) = &self.server.tls else {
            return Ok(None);
        };
        crate::tls::ListenerTls::load(&self.resolve(&files.cert), &self.resolve(&files.key))
            .map(Some)
            .map_err(|error| {
                let field = match error {
                    TlsError::Cert { .. } => "cert",
                    TlsError::Key { .. } => "key",
                    TlsError::Pair(_) => "",
                };
                let mut path = vec!["server", "tls"];
                path.extend((!field.is_empty()).then_some(field));
                crate::tls::LocatedTlsError {
                    at: self.place(&path),
                    error,
                }
            })
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The compiled-plugin cache directory, resolved.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.storage.cache_dir {
            Some(dir) => self.resolve(dir),
            None => self.data_dir().join("cache"),
        }
    }

    /// The data directory, resolved.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.storage.data_dir)
    }
}

impl SecretRef {
    /// Reads the secret's value. The error names the source, never the value.
    pub fn resolve(&self, base: &Path) -> Result<Vec<u8>, String> {
        if let Some(var) = &self.env {
            use std::os::unix::ffi::OsStringExt;
            // Bytes as they are: a key need not be UTF-8.
            return std::env::var_os(var)
                .map(std::ffi::OsString::into_vec)
                .ok_or_else(|| format!("environment variable {var} is not set"));
        }
        if let Some(file) = &self.file {
            let path = if file.is_absolute() {
                file.clone()
            } else {
                base.join(file)
            };
            let data =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            // Only the ASCII whitespace around it (a trailing newline) goes;
            // the bytes themselves are kept as they are, UTF-8 or not.
            return Ok(data.trim_ascii().to_vec());
        }
        Err("secret has neither `env` nor `file`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "weft.toml", Path::new("."))
    }

    #[test]
    fn plugin_config_values_reach_plugins_as_text_or_json() {
        let config = parse(
            "[plugins.a]\nbuiltin = \"json-map\"\nconfig = { s = \"x\", n = 3, on = true, at = 2026-11-29T10:00:00Z, t = { day = 2026-11-29, list = [1.5, \"y\"] } }\n",
        )
        .unwrap();
        let values = config.plugins["a"].config_strings();
        assert_eq!(values["s"], "x");
        assert_eq!(values["n"], "3");
        assert_eq!(values["on"], "true");
        assert_eq!(values["at"], "\"2026-11-29T10:00:00Z\"");
        assert_eq!(values["t"], r#"{"day":"2026-11-29","list":[1.5,"y"]}"#);
    }

    #[test]
    fn missing_field_names_line_and_field() {
        let err = parse(
            "[plugins.a]\nbuiltin = \"json-map\"\n\n[[routes]]\nname = \"r\"\nsource = \"a\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("weft.toml:4:"), "{msg}");
        assert!(msg.contains("sinks"), "{msg}");
    }

    #[test]
    fn unknown_plugin_in_route_points_at_it() {
        let err = parse("[plugins.a]\nbuiltin = \"x\"\n[[routes]]\nname = \"r\"\nsource = \"a\"\nsinks = [\"b\"]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "weft.toml:6:10: routes[0].sinks: unknown plugin \"b\""
        );
    }

    #[test]
    fn wrong_type_is_reported_with_position() {
        let err = parse("[retry]\nmax_attempts = \"many\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("weft.toml:2:16: retry.max_attempts: invalid type"),
            "{msg}"
        );
    }

    #[test]
    fn an_inject_host_broader_than_the_grants_is_fine() {
        // Sent to both granted hosts; only a host no grant reaches is refused.
        parse("[plugins.x]\nbuiltin = \"http-post\"\nallowed_hosts = [\"https://api.example.com\", \"https://files.example.com\"]\nsecrets = { k = { env = \"K\" } }\ninject = [{ host = \"https://*.example.com\", header = \"x-key\", secret = \"k\" }]\n").unwrap();
    }

    #[test]
    fn parse_errors_name_the_setting_they_are_about() {
        let cases = [
            ("[server]\nmax_body = 5\n", "weft.toml:2:1: server.max_body: unknown field `max_body`"),
            (
                "[plugins.a]\nbuiltin = \"json-map\"\nlimits = { memory_mib = \"lots\" }\n",
                "weft.toml:3:25: plugins.a.limits.memory_mib: invalid type: string \"lots\"",
            ),
            (
                "[plugins.a]\nbuiltin = \"json-map\"\n[[routes]]\nname = \"r\"\nsource = \"a\"\nsinks = [\"a\", 3]\n",
                "routes[0].sinks[1]: invalid type: integer `3`",
            ),
            (
                "[server]\nadmin_token = \"a-literal-token-value\"\n",
                "server.admin_token: invalid type: string \"a-literal-token-value\", expected { env = \"NAME\" } or { file = \"PATH\" }",
            ),
        ];
        for (text, expected) in cases {
            let msg = parse(text).unwrap_err().to_string();
            assert!(msg.contains(expected), "{text}\n{msg}");
        }
    }

    #[test]
    fn limits_out_of_range_are_rejected_with_their_field() {
        for (text, expected) in [
            (
                "[server]\nmax_concurrent_requests = 0\n",
                "weft.toml:2:1: server.max_concurrent_requests: must be 1..=1048576",
            ),
            (
                "[server]\nheader_read_timeout_ms = 0\n",
                "weft.toml:2:1: server.header_read_timeout_ms: must be 1..=3600000",
            ),
            (
                "[server]\nmax_body_bytes = 1073741824\n",
                "weft.toml:2:1: server.max_body_bytes: must be 1..=268435456",
            ),
            (
                "[server]\nworkers = 100000000\n",
                "weft.toml:2:1: server.workers: must be 1..=65536",
            ),
            (
                "[server]\nlisten = \"localhost:8080\"\n",
                "weft.toml:2:10: server.listen: \"localhost:8080\" is not an address like 127.0.0.1:8080 (an IP address and a port; host names are not looked up; 0.0.0.0:8080 listens on every interface)",
            ),
            (
                "[retry]\ninitial_ms = 200000\nmax_delay_ms = 2000\n",
                "weft.toml:2:1: retry.initial_ms: 200000 is above retry.max_delay_ms (2000): the first retry would already wait longer than any may",
            ),
            (
                "[[routes]]\nname = \"a b\"\nsource = \"s\"\nsinks = []\n",
                "weft.toml:2:8: routes[0].name: \"a b\": names may use only letters, digits, '-' and '_'",
            ),
            (
                "[storage]\ndata_dir = \"\"\n",
                "weft.toml:2:1: storage.data_dir: must not be empty (a directory for the queue, e.g. \"weft-data\")",
            ),
            (
                "[storage]\ndata_dir = \"/dev/null\"\n",
                "weft.toml:2:1: storage.data_dir: /dev/null exists and is not a directory",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), expected);
        }
        for (limit, expected) in [
            (
                "http_timeout_ms = 9223372036854775807",
                "plugins.a.limits.http_timeout_ms: must be 1..=3600000",
            ),
            // Each of a plugin's memories is reserved at most 1 GiB.
            (
                "memory_mib = 2048",
                "plugins.a.limits.memory_mib: must be 1..=1024",
            ),
            (
                "state_mib = 0",
                "plugins.a.limits.state_mib: must be 1..=1048576",
            ),
            (
                "deliveries_per_s = 1000001",
                "plugins.a.limits.deliveries_per_s: must be 0..=1000000 (0: no limit)",
            ),
        ] {
            let err = parse(&format!("[plugins.a]\nbuiltin = \"json-map\"\nlimits = {{ {limit} }}\n[[routes]]\nname = \"r\"\nsource = \"a\"\nsinks = []\n")).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
    }

    #[test]
    fn errors_point_at_the_key_and_the_plugin_they_are_about() {
        // Not at the comment that mentions the key first.
        let err = parse("# workers: how many\n[server]\nworkers = 0\n").unwrap_err();
        assert!(
            err.to_string().starts_with("weft.toml:3:1: server.workers"),
            "{err}"
        );
        // Not at a plugin whose name only starts the same.
        let err = parse("[plugins.ab]\nbuiltin = \"json-map\"\n\n[plugins.a]\nbuiltin = \"json-map\"\nlimits = { max_batch = 0 }\n[[routes]]\nname = \"r\"\nsource = \"ab\"\nsinks = []\n").unwrap_err();
        // At the limit itself, inside the plugin's inline `limits` table.
        assert!(
            err.to_string()
                .starts_with("weft.toml:6:12: plugins.a.limits.max_batch"),
            "{err}"
        );
    }

    #[test]
    fn errors_point_at_the_setting_wherever_and_however_it_is_written() {
        // (config text, where the error points, how its message starts)
        let cases = [
            // A dotted key at the top: the key itself.
            (
                "server.workers = 0\n",
                "weft.toml:1:8",
                "server.workers: must be 1..=",
            ),
            // A key of the same name in an earlier table is not it.
            (
                "[plugins.x]\nbuiltin = \"json-map\"\nconfig = { workers = 3 }\n[server]\nworkers = 0\n",
                "weft.toml:5:1",
                "server.workers: must be 1..=",
            ),
            // A default under [limits] is reported as that, where it is.
            (
                "[limits]\nmax_batch = 0\n[plugins.a]\nbuiltin = \"json-map\"\n",
                "weft.toml:2:1",
                "limits.max_batch: must be 1..=256",
            ),
            // Retry delays are checked, each at its key.
            (
                "[retry]\ninitial_ms = 0\n",
                "weft.toml:2:1",
                "retry.initial_ms: must be 1..=",
            ),
            (
                "[retry]\ninitial_ms = 500\nmax_delay_ms = 0\n",
                "weft.toml:3:1",
                "retry.max_delay_ms: must be 1..=",
            ),
            // The wrong entry of an array of tables, at its field.
            (
                "[plugins.x]\nbuiltin = \"http-post\"\nallowed_hosts = [\"https://*.example\"]\nsecrets = { k = { env = \"K\" } }\n[[plugins.x.inject]]\nhost = \"https://a.example\"\nheader = \"x-key\"\nsecret = \"k\"\n[[plugins.x.inject]]\nhost = \"https://b.example\"\nheader = \"bad header\"\nsecret = \"k\"\n",
                "weft.toml:11:1",
                "plugins.x.inject.header: invalid header name",
            ),
            // An injected header for a host the plugin may not reach.
            (
                "[plugins.x]\nbuiltin = \"http-post\"\nallowed_hosts = [\"https://a.example\"]\nsecrets = { k = { env = \"K\" } }\n[[plugins.x.inject]]\nhost = \"https://b.example\"\nheader = \"x-key\"\nsecret = \"k\"\n",
                "weft.toml:6:1",
                "plugins.x.inject.host: \"https://b.example\" matches none of this plugin's allowed_hosts",
            ),
            // The admin token names exactly one source.
            (
                "[server]\nadmin_token = {}\n",
                "weft.toml:2:1",
                "server.admin_token: set exactly one of `env` or `file`",
            ),
            // A route's own retry schedule is checked like [retry], with
            // it beneath.
            (
                "[retry]\nmax_delay_ms = 1000\n[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\nretry = { initial_ms = 5000 }\n",
                "weft.toml:11:9",
                "routes[0].retry.initial_ms: 5000 is above routes[0].retry.max_delay_ms (1000)",
            ),
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\nretry = { max_attempts = 0 }\n",
                "weft.toml:9:9",
                "routes[0].retry.max_attempts: must be at least 1",
            ),
            (
                "[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = []\nretry = { attempts = 3 }\n",
                "weft.toml:5:11",
                "routes[0].retry.attempts: unknown field `attempts`",
            ),
            // Methods: capitals, at least one, only on a route's source.
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\nmethods = [\"post\"]\n",
                "weft.toml:3:1",
                "plugins.in.methods: \"post\" is not a method (HTTP methods in capitals",
            ),
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\nmethods = []\n",
                "weft.toml:3:1",
                "plugins.in.methods: must not be empty",
            ),
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\n[plugins.out]\nbuiltin = \"http-post\"\nmethods = [\"POST\"]\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n",
                "weft.toml:5:1",
                "plugins.out.methods: only a route's source takes webhooks, and routes[0] uses \"out\" as a transform or sink",
            ),
            // De-duplication: at most 30 days, and only on a route's source.
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\ndedup_window_s = 2592001\n",
                "weft.toml:3:1",
                "plugins.in.dedup_window_s: must be 0..=2592000 (30 days)",
            ),
            (
                "[plugins.in]\nbuiltin = \"webhook-json\"\ndedup_window_s = 300\n[plugins.out]\nbuiltin = \"http-post\"\ndedup_window_s = 300\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n",
                "weft.toml:6:1",
                "plugins.out.dedup_window_s: only a route's source de-duplicates events, and routes[0] uses \"out\" as a transform or sink",
            ),
        ];
        for (text, place, message) in cases {
            let err = parse(text).unwrap_err().to_string();
            let (at, said) = err.split_once(": ").unwrap();
            assert_eq!(at, place, "{text}");
            assert!(said.starts_with(message), "{text}: {said}");
        }
    }

    #[test]
    fn the_admin_listener_can_be_turned_off() {
        assert_eq!(
            parse("").unwrap().server.admin_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 8081)))
        );
        for off in ["off", ""] {
            let config = parse(&format!("[server]\nadmin_listen = \"{off}\"\n")).unwrap();
            assert_eq!(config.server.admin_listen, None);
        }
        let err = parse("[server]\nadmin_listen = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("weft.toml:2:16:") && err.contains("\"off\" disables"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("lisen") && msg.starts_with("weft.toml:3:1:"),
            "{msg}"
        );
    }

    #[test]
    fn a_secret_file_keeps_its_bytes_and_loses_only_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        // Not UTF-8: a lossy conversion would turn 0xff into U+FFFD.
        std::fs::write(dir.path().join("key"), b"\xff\x00 key\x80\n").unwrap();
        let secret = SecretRef {
            env: None,
            file: Some("key".into()),
        };
        assert_eq!(secret.resolve(dir.path()).unwrap(), b"\xff\x00 key\x80");
    }
}
