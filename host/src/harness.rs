//! `weft plugin test`: runs one plugin standalone, in the same sandbox as the
//! host, on events (or webhook requests) from a JSON Lines file; prints one
//! JSON line per input with what the plugin did, and diff-checks it against
//! an expectations file.
//!
//! Input lines:
//! * transforms and sinks: a CloudEvent as JSON, `{"id", "source", "type",
//!   "subject"?, "time"?, "datacontenttype"?, "data": <any JSON>}` (or
//!   `"data_text"` for non-JSON data);
//! * sources: a webhook request, `{"method"?, "path"?, "query"?, "headers"?:
//!   {name: value}, "body": <any JSON> | "body_text": "..."}`.
//!
//! Output lines: `{"events": [...]}` (source, transform), `{"error":
//! {"retryable", "reason"}}` (transform), `{"outcome": "delivered" | "retry" |
//! "rejected", "reason"?, "after_ms"?}` (sink), `{"rejected": {"status",
//! "kind", "reason"}}` (source), or `{"failure": "..."}` when the plugin
//! trapped or hit a limit. Plugin log lines go to stderr.
//!
//! With `--record FILE` the plugin's outbound HTTP exchanges (with a live API
//! its `--allow-host` grants reach) are written to a fixture; with `--replay
//! FILE` they are answered from it, so the connector is tested without the
//! API (see [`crate::runtime::tape`]).

use crate::config::Limits;
use crate::event::Event;
use crate::ingress::{rejection_kind_name, rejection_status};
use crate::runtime::bindings::wit;
use crate::runtime::egress::{EgressPolicy, HostPattern};
use crate::runtime::host::{PluginContext, Secret};
use crate::runtime::state::PluginState;
use crate::runtime::tape::{Tape, TapeError};
use crate::runtime::{Plugin, Role, Runtime};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Why the harness could not run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// An input or expectation line is not what it should be.
    #[error("{path}:{line}: {message}")]
    Line {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The plugin could not be loaded.
    #[error(transparent)]
    Load(#[from] crate::runtime::LoadError),
    /// Bad option.
    #[error("{0}")]
    Usage(String),
    /// The HTTP fixture could not be opened or read.
    #[error(transparent)]
    Tape(#[from] TapeError),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// The component.
    pub plugin: PathBuf,
    /// JSON Lines input.
    pub input: PathBuf,
    /// Config values (`key=value`; values as the plugin sees them).
    pub config: Vec<(String, String)>,
    /// Outbound grants.
    pub allowed_hosts: Vec<String>,
    /// Secrets as `name` → environment variable.
    pub secrets: Vec<(String, String)>,
    /// Expected output lines.
    pub expect: Option<PathBuf>,
    /// Sandbox limits.
    pub limits: Limits,
    /// Record the plugin's outbound HTTP exchanges into this fixture.
    pub record: Option<PathBuf>,
    /// Answer the plugin's outbound HTTP from this fixture (no network).
    pub replay: Option<PathBuf>,
}

impl HarnessOptions {
    /// Options for `plugin` with nothing granted, no config, default limits
    /// and no input file (for callers that use [`load`] and [`run_one`]).
    pub fn new(plugin: PathBuf) -> Self {
        HarnessOptions {
            input: PathBuf::new(),
            plugin,
            config: Vec::new(),
            allowed_hosts: Vec::new(),
            secrets: Vec::new(),
            expect: None,
            limits: Limits::default(),
            record: None,
            replay: None,
        }
    }
}

fn read_lines(path: &Path) -> Result<Vec<(usize, Value)>, HarnessError> {
    let text = std::fs::read_to_string(path).map_err(|source| HarnessError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let value = serde_json::from_str(line).map_err(|e| HarnessError::Line {
            path: path.display().to_string(),
            line: i + 1,
            message: format!("not valid JSON: {e}"),
        })?;
        out.push((i + 1, value));
    }
    Ok(out)
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

/// A CloudEvent JSON object to an event.
pub fn event_from_json(v: &Value) -> Result<Event, String> {
    let id = text(v, "id").ok_or("missing \"id\"")?;
    let (data, default_ct) = match (v.get("data"), v.get("data_text")) {
        (Some(d), _) => (
            serde_json::to_vec(d).map_err(|e| e.to_string())?,
            Some("application/json".to_string()),
        ),
        (None, Some(Value::String(t))) => (t.clone().into_bytes(), None),
        _ => (Vec::new(), None),
    };
    let extensions = v
        .get("extensions")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Event {
        id,
        source: text(v, "source").unwrap_or_else(|| "/weft/plugin-test".into()),
        ty: text(v, "type").unwrap_or_else(|| "test.event".into()),
        subject: text(v, "subject"),
        time: text(v, "time"),
        datacontenttype: text(v, "datacontenttype").or(default_ct),
        data,
        extensions,
    })
}

/// An event to its CloudEvent JSON object (data as JSON when it parses).
pub fn event_to_json(e: &Event) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("id".into(), json!(e.id));
    o.insert("source".into(), json!(e.source));
    o.insert("type".into(), json!(e.ty));
    if let Some(s) = &e.subject {
        o.insert("subject".into(), json!(s));
    }
    if let Some(t) = &e.time {
        o.insert("time".into(), json!(t));
    }
    if let Some(ct) = &e.datacontenttype {
        o.insert("datacontenttype".into(), json!(ct));
    }
    match serde_json::from_slice::<Value>(&e.data) {
        Ok(v) => o.insert("data".into(), v),
        Err(_) => o.insert("data_text".into(), json!(e.data_text())),
    };
    if !e.extensions.is_empty() {
        let ext: serde_json::Map<String, Value> = e
            .extensions
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        o.insert("extensions".into(), Value::Object(ext));
    }
    Value::Object(o)
}

fn request_from_json(v: &Value) -> wit::WebhookRequest {
    let body = match (v.get("body"), v.get("body_text")) {
        (Some(b), _) => serde_json::to_vec(b).unwrap_or_default(),
        (None, Some(Value::String(t))) => t.clone().into_bytes(),
        _ => Vec::new(),
    };
    let mut headers: Vec<(String, String)> = v
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if v.get("body").is_some() && !headers.iter().any(|(k, _)| k == "content-type") {
        headers.push(("content-type".into(), "application/json".into()));
    }
    wit::WebhookRequest {
        method: text(v, "method").unwrap_or_else(|| "POST".into()),
        path: text(v, "path").unwrap_or_else(|| "/hooks/test".into()),
        query: text(v, "query").unwrap_or_default(),
        headers,
        body,
    }
}

/// What `serve` would refuse of a source's or transform's output: the
/// words for an error when the events break `limits.max_events` or
/// `limits.max_output_bytes`.
fn over_limits(plugin: &Plugin, events: &[Event]) -> Option<String> {
    let bytes = events.iter().map(Event::size).sum();
    plugin.output_over_limits(events.len(), bytes)
}

/// Runs one input through the plugin and describes what happened, with the
/// host's limits on what it makes applied as `serve` applies them.
pub async fn run_one(plugin: &Plugin, input: &Value) -> Result<Value, String> {
    Ok(match plugin.role() {
        Role::Source => match plugin.receive(request_from_json(input)).await {
            Ok(Ok(events)) => match over_limits(plugin, &events) {
                Some(over) => json!({ "rejected": {
                    "status": 413,
                    "kind": "payload-too-large",
                    "reason": format!("the source made {over}; serve stores nothing of it"),
                } }),
                None => json!({ "events": events.iter().map(event_to_json).collect::<Vec<_>>() }),
            },
            Ok(Err(r)) => {
                json!({ "rejected": { "status": rejection_status(r.kind), "kind": rejection_kind_name(r.kind), "reason": r.reason } })
            }
            Err(e) => json!({ "failure": e.to_string() }),
        },
        Role::Transform => match plugin.transform(event_from_json(input)?).await {
            Ok(Ok(events)) => match over_limits(plugin, &events) {
                Some(over) => json!({ "error": {
                    "retryable": false,
                    "reason": format!("the transform made {over} from one event"),
                } }),
                None => json!({ "events": events.iter().map(event_to_json).collect::<Vec<_>>() }),
            },
            Ok(Err(wit::TransformError::Retryable(r))) => {
                json!({ "error": { "retryable": true, "reason": r } })
            }
            Ok(Err(wit::TransformError::Permanent(r))) => {
                json!({ "error": { "retryable": false, "reason": r } })
            }
            Err(e) => json!({ "failure": e.to_string() }),
        },
        Role::Sink => match plugin.deliver(event_from_json(input)?).await {
            Ok(wit::DeliveryOutcome::Delivered) => json!({ "outcome": "delivered" }),
            Ok(wit::DeliveryOutcome::Retry(r)) => match r.after_ms {
                Some(ms) => json!({ "outcome": "retry", "reason": r.reason, "after_ms": ms }),
                None => json!({ "outcome": "retry", "reason": r.reason }),
            },
            Ok(wit::DeliveryOutcome::Rejected(r)) => json!({ "outcome": "rejected", "reason": r }),
            Err(e) => json!({ "failure": e.to_string() }),
        },
    })
}

/// Where `weft plugin test` caches compiled components.
fn cache_dir() -> PathBuf {
    std::env::var_os("WEFT_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::runtime::cache::user_cache_dir("plugin-test"))
}

/// Loads a plugin for standalone runs.
pub fn load(opts: &HarnessOptions) -> Result<Plugin, HarnessError> {
    let runtime = Arc::new(Runtime::new(&cache_dir())?);
    let allowed = opts
        .allowed_hosts
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(HarnessError::Usage)?;
    let mut secrets = BTreeMap::new();
    for (name, var) in &opts.secrets {
        // Bytes as they are (a key need not be UTF-8), as for config secrets.
        let value = std::env::var_os(var).ok_or_else(|| {
            HarnessError::Usage(format!(
                "--secret {name}={var}: environment variable {var} is not set"
            ))
        })?;
        use std::os::unix::ffi::OsStringExt;
        secrets.insert(name.clone(), Secret(value.into_vec()));
    }
    let state = sled::Config::new()
        .temporary(true)
        .open()
        .and_then(|db| db.open_tree("state"))
        .map_err(|e| HarnessError::Usage(format!("cannot open temporary state: {e}")))?;
    let name = opts
        .plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let tape = match (&opts.record, &opts.replay) {
        (Some(_), Some(_)) => {
            return Err(HarnessError::Usage(
                "--record and --replay cannot be used together".into(),
            ))
        }
        (Some(path), None) => Some(Arc::new(Tape::record(path)?)),
        (None, Some(path)) => Some(Arc::new(Tape::replay(path)?)),
        (None, None) => None,
    };
    let egress = Arc::new(EgressPolicy {
        plugin: name.clone(),
        allowed,
        inject: Vec::new(),
        timeout: Duration::from_millis(opts.limits.http_timeout_ms),
        max_response_bytes: opts.limits.max_response_bytes,
        max_call_bytes: opts.limits.memory_mib.saturating_mul(1 << 20),
        tape,
        share: crate::runtime::egress::plugin_share(),
    });
    let state = PluginState::open(state, opts.limits.state_mib.saturating_mul(1 << 20))
        .map_err(|e| HarnessError::Usage(format!("cannot open temporary state: {e}")))?;
    let ctx = PluginContext {
        name,
        config: opts.config.iter().cloned().collect(),
        secrets,
        header_only: Default::default(),
        state,
        egress,
    };
    Ok(runtime.load(ctx, &opts.plugin, opts.limits)?)
}

/// Runs the harness; prints outputs; returns whether every expectation held.
pub async fn run(opts: HarnessOptions) -> Result<bool, HarnessError> {
    let plugin = load(&opts)?;
    // The plugin's own check of its `--config` values, as at a real load.
    match plugin.check_config().await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(HarnessError::Usage(format!(
                "--config: the plugin refuses it: {message}"
            )))
        }
        Err(e) => {
            return Err(HarnessError::Usage(format!(
                "--config: the plugin's config check failed: {e}"
            )))
        }
    }
    let inputs = read_lines(&opts.input)?;
    let expected = match &opts.expect {
        Some(p) => Some(read_lines(p)?),
        None => None,
    };
    if let Some(exp) = &expected {
        if exp.len() != inputs.len() {
            return Err(HarnessError::Usage(format!(
                "{} has {} expectations for {} inputs",
                opts.expect
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                exp.len(),
                inputs.len()
            )));
        }
    }
    let mut all_ok = true;
    for (i, (line, input)) in inputs.iter().enumerate() {
        let output = run_one(&plugin, input)
            .await
            .map_err(|message| HarnessError::Line {
                path: opts.input.display().to_string(),
                line: *line,
                message,
            })?;
        {
            use std::io::Write as _;
            // A closed stdout (`| head`) must not pass for "all as expected".
            writeln!(std::io::stdout().lock(), "{output}").map_err(|e| {
                HarnessError::Usage(format!("cannot write the output to stdout: {e}"))
            })?;
        }
        if let Some(exp) = &expected {
            let (exp_line, want) = &exp[i];
            if *want != output {
                all_ok = false;
                eprintln!(
                    "MISMATCH input line {line} (expectation line {exp_line}):\n  expected: {want}\n  got:      {output}"
                );
            }
        }
    }
    if expected.is_some() {
        if all_ok {
            eprintln!("{} of {} outputs as expected", inputs.len(), inputs.len());
        } else {
            eprintln!(
                "some outputs differ from {}",
                opts.expect
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    Ok(all_ok)
}
