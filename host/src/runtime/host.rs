//! What a plugin sees of the host: the per-call store state and the
//! implementations of the `weft:connector` imports (log, config, state,
//! secrets, outbound).

use super::bindings::source::weft::connector::{config, log, outbound, secrets, state, types};
use super::egress::{EgressHooks, EgressPolicy, HttpClient};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Bytes of guest stderr kept per call.
const STDERR_CAPACITY: usize = 4096;
/// Characters of guest stderr quoted in an error.
const STDERR_TAIL: usize = 400;

/// Longest state key a plugin may use.
pub const MAX_STATE_KEY: usize = 1024;
/// Largest state value a plugin may store.
pub const MAX_STATE_VALUE: usize = 1024 * 1024;

/// A secret value; never printed.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// The HMAC key: the decoded bytes for `whsec_<base64>`, else the raw value.
    fn hmac_key(&self) -> Vec<u8> {
        use base64::Engine as _;
        if let Some(encoded) = self.0.strip_prefix(b"whsec_") {
            if let Ok(key) = base64::engine::general_purpose::STANDARD.decode(encoded) {
                return key;
            }
        }
        self.0.clone()
    }
}

/// Everything about a plugin that outlives a single call.
#[derive(Debug)]
pub struct PluginContext {
    /// The plugin's name from the config.
    pub name: String,
    /// Config values as plugins see them.
    pub config: BTreeMap<String, String>,
    /// Granted secrets by name.
    pub secrets: BTreeMap<String, Secret>,
    /// The plugin's private state tree.
    pub state: sled::Tree,
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
    pub limits: StoreLimits,
    plugin: Arc<PluginContext>,
    event_id: Option<String>,
    /// Set when the call used up its CPU budget.
    pub cpu_exhausted: bool,
    /// What the guest wrote to stderr (a Rust panic message lands here).
    stderr: MemoryOutputPipe,
    /// Log lines written so far in this call (see `MAX_LOG_LINES_PER_CALL`).
    log_lines: u32,
}

impl StoreState {
    /// A fresh state for one call. The WASI context grants nothing: no
    /// files, no environment, no arguments, no sockets, no stdio.
    pub fn new(
        plugin: Arc<PluginContext>,
        client: HttpClient,
        limits: StoreLimits,
        event_id: Option<String>,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            .build();
        let hooks = EgressHooks {
            policy: plugin.egress.clone(),
            client,
            event_id: event_id.clone(),
        };
        StoreState {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks,
            limits,
            plugin,
            event_id,
            cpu_exhausted: false,
            stderr,
            log_lines: 0,
        }
    }
}

impl StoreState {
    /// Prepares a kept store for another call: the new event's id (for log
    /// lines and egress decisions) and fresh per-call counters.
    pub fn begin_call(&mut self, event_id: Option<String>) {
        self.log_lines = 0;
        self.cpu_exhausted = false;
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

/// Cuts `text` to [`MAX_LOG_BYTES`] on a character boundary.
fn clip(text: &str) -> String {
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
        self.log_lines += 1;
        let plugin = &self.plugin.name;
        let event = self.event_id.as_deref().unwrap_or("");
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %plugin, event = %event, "plugin log limit reached ({MAX_LOG_LINES_PER_CALL} lines per call); further lines of this call dropped");
            }
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

impl state::Host for StoreState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        match self.plugin.state.get(key.as_bytes()) {
            Ok(v) => v.map(|v| v.to_vec()),
            Err(e) => {
                tracing::error!(plugin = %self.plugin.name, error = %e, "plugin state read failed");
                None
            }
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_STATE_KEY {
            return Err(format!("state key longer than {MAX_STATE_KEY} bytes"));
        }
        if value.len() > MAX_STATE_VALUE {
            return Err(format!("state value larger than {MAX_STATE_VALUE} bytes"));
        }
        self.plugin
            .state
            .insert(key.as_bytes(), value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn delete(&mut self, key: String) {
        if let Err(e) = self.plugin.state.remove(key.as_bytes()) {
            tracing::error!(plugin = %self.plugin.name, error = %e, "plugin state delete failed");
        }
    }
}

impl secrets::Host for StoreState {
    fn hmac_sha256(&mut self, secret: String, message: Vec<u8>) -> Result<Vec<u8>, String> {
        let Some(value) = self.plugin.secrets.get(&secret) else {
            tracing::warn!(plugin = %self.plugin.name, secret = %secret, "plugin asked for a secret it is not granted");
            return Err(format!("secret \"{secret}\" is not granted to this plugin"));
        };
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&value.hmac_key()).map_err(|e| e.to_string())?;
        mac.update(&message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl outbound::Host for StoreState {
    async fn send_all(
        &mut self,
        requests: Vec<outbound::Request>,
    ) -> Vec<Result<outbound::Response, outbound::ErrorCode>> {
        self.hooks.send_all(requests).await
    }
}
