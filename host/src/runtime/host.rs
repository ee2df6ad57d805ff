//! What a plugin sees of the host: the per-call store state and the
//! implementations of the `weft:connector` imports (log, config, state,
//! secrets, outbound).

use super::bindings::source::weft::connector::{config, log, outbound, secrets, state, types};
use super::egress::{EgressHooks, EgressPolicy, HttpClient};
use super::limits::CallLimits;
use super::state::PluginState;
use super::stderr::StderrTail;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Bytes of guest stderr kept per call (the last ones written).
const STDERR_CAPACITY: usize = 4096;
/// Characters of guest stderr quoted in an error.
const STDERR_TAIL: usize = 400;

/// Host-side resources (HTTP fields, requests, streams, pollables...) one
/// store may hold at once. Host memory a guest makes the host allocate is
/// not counted by the store's memory limit: this, [`MAX_HTTP_FIELDS_BYTES`]
/// and the outgoing-body chunk size (`egress.rs`) bound it (1,024 header
/// maps of 32 KiB, or some 340 request bodies of two 64 KiB writes each).
const MAX_RESOURCES: usize = 1024;
/// Bytes of names and values one `wasi:http` `fields` (a header map) may
/// hold.
const MAX_HTTP_FIELDS_BYTES: usize = 32 * 1024;

/// A secret value; never printed.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The HMAC key: the decoded bytes for `whsec_<base64>` (Standard
    /// Webhooks' form), else the raw value.
    fn hmac_key(&self) -> Vec<u8> {
        match self.whsec_key() {
            Some(Ok(key)) => key,
            _ => self.0.clone(),
        }
    }

    /// For a `whsec_` secret, its decoded key, or why it does not decode
    /// (checked when the plugin is loaded, so that a mangled secret is an
    /// error at start, not a 401 for every request). Surrounding white
    /// space (a trailing newline in an environment variable) is ignored,
    /// and so is missing base64 padding.
    pub fn whsec_key(&self) -> Option<Result<Vec<u8>, String>> {
        use base64::Engine as _;
        let encoded = self.0.trim_ascii().strip_prefix(b"whsec_")?;
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        Some(
            lenient
                .decode(encoded)
                // Not the decoder's message: it quotes a byte of the secret.
                .map_err(|_| "starts with whsec_ but the rest is not valid base64".to_string()),
        )
    }
}

/// Everything about a plugin that outlives a single call.
#[derive(Debug)]
pub struct PluginContext {
    /// The plugin's name from the config.
    pub name: String,
    /// Config values as plugins see them.
    pub config: BTreeMap<String, String>,
    /// Secrets the plugin may sign with (`secrets.hmac-sha256`), by name.
    pub secrets: BTreeMap<String, Secret>,
    /// Secrets granted only as injected headers (named by an `[[inject]]`
    /// entry): the plugin may not sign with them, so that an API token
    /// meant for one host's `authorization` header cannot be used as a
    /// signing oracle. Names only; the values live in the egress policy.
    pub header_only: std::collections::BTreeSet<String>,
    /// The plugin's private state tree.
    pub state: PluginState,
    /// Outbound grants.
    pub egress: Arc<EgressPolicy>,
}

/// The data of one store: one call of one plugin.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: EgressHooks,
    /// Memory and instance limits of this store.
    pub limits: CallLimits,
    plugin: Arc<PluginContext>,
    event_id: Option<String>,
    /// Set when the call used up its CPU budget.
    pub cpu_exhausted: bool,
    /// Time this call spent in synchronous host functions (counted against
    /// its CPU budget).
    pub host_time: Duration,
    /// What the guest wrote to stderr (a Rust panic message lands here).
    stderr: StderrTail,
    /// Log lines this call may still write (shared with the egress hooks).
    log_budget: LogBudget,
}

impl StoreState {
    /// A fresh state for one call. The WASI context grants nothing: no
    /// files, no environment, no arguments, no sockets, no stdio.
    pub fn new(
        plugin: Arc<PluginContext>,
        client: HttpClient,
        limits: CallLimits,
        event_id: Option<String>,
    ) -> Self {
        let stderr = StderrTail::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            .build();
        let log_budget = LogBudget::default();
        let hooks = EgressHooks {
            policy: plugin.egress.clone(),
            client,
            event_id: event_id.clone(),
            log_budget: log_budget.clone(),
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        StoreState {
            wasi,
            table,
            http,
            hooks,
            limits,
            plugin,
            event_id,
            cpu_exhausted: false,
            host_time: Duration::ZERO,
            stderr,
            log_budget,
        }
    }
}

impl StoreState {
    /// Prepares a kept store for another call: the new event's id (for log
    /// lines and egress decisions) and fresh per-call counters.
    pub fn begin_call(&mut self, event_id: Option<String>) {
        self.log_budget.reset();
        self.cpu_exhausted = false;
        self.host_time = Duration::ZERO;
        // An error quotes this call's stderr, not an earlier event's.
        self.stderr.clear();
        self.hooks.event_id = event_id.clone();
        self.event_id = event_id;
    }

    /// The end of what the guest wrote to stderr, for error reports.
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        let start = text
            .char_indices()
            .rev()
            .nth(STDERR_TAIL)
            .map(|(i, _)| i)
            .unwrap_or(0);
        text[start..].to_string()
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for StoreState {}

/// Log lines one plugin call may write; the rest are dropped (with one warning).
const MAX_LOG_LINES_PER_CALL: u32 = 100;
/// Longest log message or field list kept, in bytes.
const MAX_LOG_BYTES: usize = 4096;

/// The log lines one plugin call may still write, shared by everything that
/// logs on the call's behalf: its own `log` calls, a secret it is denied,
/// an outbound request that is denied. Without the sharing a plugin could
/// flood the host's log through the warnings about what it was refused.
#[derive(Clone, Default)]
pub struct LogBudget(Arc<AtomicU64>);

impl LogBudget {
    /// A new call begins.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Whether one more line may be written for this call; the first line
    /// over the limit becomes one warning saying so.
    pub fn take(&self, plugin: &str, event: &str) -> bool {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        if n == u64::from(MAX_LOG_LINES_PER_CALL) + 1 {
            tracing::warn!(plugin = %plugin, event = %event, "plugin log limit reached ({MAX_LOG_LINES_PER_CALL} lines per call); further lines of this call dropped");
        }
        n <= u64::from(MAX_LOG_LINES_PER_CALL)
    }
}

/// Cuts `text` to [`MAX_LOG_BYTES`] on a character boundary.
pub(super) fn clip(text: &str) -> String {
    if text.len() <= MAX_LOG_BYTES {
        return text.to_string();
    }
    let mut end = MAX_LOG_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let enabled = match level {
            log::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        // A plugin cannot flood the host's log: a bounded number of lines
        // per call, each of bounded length.
        let plugin = &self.plugin.name;
        let event = self.event_id.as_deref().unwrap_or("");
        if !self.log_budget.take(plugin, event) {
            return;
        }
        let message = clip(&message);
        let fields = if fields.is_empty() {
            String::new()
        } else {
            clip(
                &fields
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        };
        match level {
            log::Level::Trace => {
                tracing::trace!(plugin = %plugin, event = %event, fields = %fields, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(plugin = %plugin, event = %event, fields = %fields, "{message}")
            }
            log::Level::Info => {
                tracing::info!(plugin = %plugin, event = %event, fields = %fields, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(plugin = %plugin, event = %event, fields = %fields, "{message}")
            }
            log::Level::Error => {
                tracing::error!(plugin = %plugin, event = %event, fields = %fields, "{message}")
            }
        }
    }
}

impl config::Host for StoreState {
    fn get(&mut self, key: String) -> Option<String> {
        self.plugin.config.get(&key).cloned()
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.plugin
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl StoreState {
    /// Runs a synchronous host function, charging its time to the call's
    /// CPU budget.
    fn charged<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let started = Instant::now();
        let result = f(self);
        self.host_time = self.host_time.saturating_add(started.elapsed());
        result
    }
}

impl state::Host for StoreState {
    /// A storage error traps (the attempt fails and is retried): answering
    /// "absent" would let a plugin that deduplicates by state act twice.
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.charged(|s| {
            s.plugin.state.get(&key).map_err(|e| {
                tracing::error!(plugin = %s.plugin.name, error = %e, "plugin state read failed");
                wasmtime::Error::msg(e.to_string())
            })
        })
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        self.charged(|s| s.plugin.state.set(&key, value).map_err(|e| e.to_string()))
    }

    /// A storage error traps, as for [`state::Host::get`].
    fn delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.charged(|s| {
            s.plugin.state.delete(&key).map_err(|e| {
                tracing::error!(plugin = %s.plugin.name, error = %e, "plugin state delete failed");
                wasmtime::Error::msg(e.to_string())
            })
        })
    }
}

impl secrets::Host for StoreState {
    fn hmac_sha256(&mut self, secret: String, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let Some(value) = self.plugin.secrets.get(&secret) else {
            let header_only = self.plugin.header_only.contains(&secret);
            let event = self.event_id.as_deref().unwrap_or("");
            if self.log_budget.take(&self.plugin.name, event) {
                if header_only {
                    tracing::warn!(plugin = %self.plugin.name, event = %event, secret = %clip(&secret), "plugin asked to sign with a secret granted only as an injected header");
                } else {
                    tracing::warn!(plugin = %self.plugin.name, event = %event, secret = %clip(&secret), "plugin asked for a secret it is not granted");
                }
            }
            return Err(if header_only {
                format!("secret \"{secret}\" is granted to this plugin only as an injected header, not for signing")
            } else {
                format!("secret \"{secret}\" is not granted to this plugin")
            });
        };
        let key = value.hmac_key();
        self.charged(|_| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
            mac.update(&message);
            Ok(mac.finalize().into_bytes().to_vec())
        })
    }
}

impl outbound::Host for StoreState {
    async fn send_all(
        &mut self,
        requests: Vec<outbound::Request>,
    ) -> Vec<Result<outbound::Response, outbound::ErrorCode>> {
        self.hooks.send_all(requests).await
    }

    fn allows(&mut self, url: String) -> bool {
        url.parse::<http::Uri>()
            .is_ok_and(|uri| self.hooks.policy.allows(&uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_secrets_decode_leniently_or_say_why_without_quoting_them() {
        // "secret-key" in base64 is "c2VjcmV0LWtleQ==".
        let key = |text: &str| Secret(text.as_bytes().to_vec()).whsec_key();
        assert_eq!(
            key("whsec_c2VjcmV0LWtleQ=="),
            Some(Ok(b"secret-key".to_vec()))
        );
        assert_eq!(
            key("whsec_c2VjcmV0LWtleQ"),
            Some(Ok(b"secret-key".to_vec()))
        );
        assert_eq!(
            key("whsec_c2VjcmV0LWtleQ==\n"),
            Some(Ok(b"secret-key".to_vec()))
        );
        assert_eq!(key("plain-secret"), None);
        let bad = key("whsec_not*base64!").unwrap().unwrap_err();
        assert!(!bad.contains('*') && !bad.contains("not*"), "{bad}");
        assert_eq!(
            Secret(b"plain".to_vec()).hmac_key(),
            b"plain".to_vec(),
            "a secret without the prefix is its own key"
        );
    }
}
