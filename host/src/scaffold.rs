//! `weft plugin new` and `weft plugin build`: start a connector in seconds.
//!
//! `new` writes a plugin in Rust, JavaScript or Python that builds and passes
//! its own sample test at once: the source, a JSON Lines input and the
//! expected output for `weft plugin test` (for sinks also a recorded HTTP
//! fixture, so the sample runs without the real API). JavaScript and Python
//! plugins get a copy of the WIT contract in `wit/`; their toolchains
//! (componentize-js, componentize-py, pinned) install themselves on the first
//! `weft plugin build` (see [`crate::toolchain`]).

use crate::toolchain::{self, Language};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Scaffolding errors.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// File-system trouble.
    #[error("{path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The build failed.
    #[error("{0}")]
    Build(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ScaffoldError + '_ {
    move |source| ScaffoldError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the SDK of this source checkout is.
fn sdk_path() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("sdk");
    p.canonicalize().ok()
}

fn cargo_toml(name: &str) -> String {
    let sdk = match sdk_path() {
        Some(p) => format!("weft-sdk = {{ path = \"{}\" }}", p.display()),
        None => {
            // weft-sdk is not on crates.io: a version requirement would
            // fetch nothing, or someone else's crate.
            eprintln!("note: this weft was built from a checkout that is no longer there; set weft-sdk's path in Cargo.toml to the sdk/ directory of a Weft checkout");
            "# weft-sdk is not published: point this at the sdk/ directory of a Weft checkout.\nweft-sdk = { path = \"../weft/sdk\" }".to_string()
        }
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

[dependencies]
{sdk}
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1

# A plugin is its own workspace.
[workspace]
"#
    )
}

fn rust_source(name: &str, role: &str) -> Result<String, ScaffoldError> {
    Ok(match role {
        "transform" => format!(
            r#"//! `{name}`: a Weft transform.

use weft_sdk::{{Event, Transform, TransformError}};

/// The transform.
pub struct Plugin;

impl Transform for Plugin {{
    fn transform(mut event: Event) -> Result<Vec<Event>, TransformError> {{
        let mut data = event
            .json()
            .map_err(|e| TransformError::Permanent(format!("data is not JSON: {{e}}")))?;
        let Some(fields) = data.as_object_mut() else {{
            return Err(TransformError::Permanent("data is not a JSON object".into()));
        }};
        fields.insert("processed_by".into(), serde_json::json!("{name}"));
        event.set_json(&data);
        Ok(vec![event])
    }}
}}

weft_sdk::export_transform!(Plugin);
"#
        ),
        "source" => format!(
            r#"//! `{name}`: a Weft source.

use weft_sdk::{{Event, Rejection, RejectionKind, Source, WebhookRequest}};

/// The source.
pub struct Plugin;

impl Source for Plugin {{
    fn receive(request: WebhookRequest) -> Result<Vec<Event>, Rejection> {{
        let body: serde_json::Value = serde_json::from_slice(&request.body)
            .map_err(|_| Rejection::new(RejectionKind::BadRequest, "body is not JSON"))?;
        let Some(id) = body["id"].as_str() else {{
            return Err(Rejection::new(RejectionKind::Unprocessable, "body has no \"id\""));
        }};
        let mut event = Event::new(id, "/{name}", "{name}.received", request.body.clone());
        event.datacontenttype = Some("application/json".into());
        Ok(vec![event])
    }}
}}

weft_sdk::export_source!(Plugin);
"#
        ),
        "sink" => format!(
            r#"//! `{name}`: a Weft sink. POSTs each event's data to the configured `url`
//! (grant its host in the plugin's `allowed_hosts`).

use weft_sdk::{{config, http, DeliveryOutcome, Event, Sink}};

/// The sink.
pub struct Plugin;

impl Sink for Plugin {{
    /// Runs when the plugin is loaded (`weft validate`, `weft serve`,
    /// `weft plugin test`): a config mistake stops the load instead of
    /// failing every delivery.
    fn check_config() -> Result<(), String> {{
        config::check_keys(&["url"])?;
        match config::get("url") {{
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => Ok(()),
            Some(url) => Err(format!("url = \"{{url}}\": must start with http:// or https://")),
            None => Err("set `url`: where to POST the events".into()),
        }}
    }}

    fn deliver(event: Event) -> DeliveryOutcome {{
        let Some(url) = config::get("url") else {{
            return DeliveryOutcome::rejected("{name}: config `url` is not set");
        }};
        let request = http::Request::post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", &event.id)
            .body(event.data);
        match request.send() {{
            Ok(response) => http::classify(&response),
            // Refused by the host (no grant for this host): retrying cannot help.
            Err(e) if e.is_permanent() => DeliveryOutcome::rejected(e.to_string()),
            Err(e) => DeliveryOutcome::retry(e.to_string()),
        }}
    }}
}}

weft_sdk::export_sink!(Plugin);
"#
        ),
        other => return Err(unknown_role(other)),
    })
}

fn js_source(name: &str, role: &str) -> Result<String, ScaffoldError> {
    Ok(match role {
        "transform" => format!(
            r#"// `{name}`: a Weft transform in JavaScript (componentize-js).
// The contract is wit/connector.wit, world `transform`.
const decoder = new TextDecoder();
const encoder = new TextEncoder();

// One event in; a list of events out (empty = filtered out). Throw
// {{ tag: 'retryable' | 'permanent', val: reason }} to fail.
export function transform(event) {{
  let data;
  try {{
    data = JSON.parse(decoder.decode(event.data));
  }} catch (e) {{
    throw {{ tag: 'permanent', val: 'data is not JSON' }};
  }}
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {{
    throw {{ tag: 'permanent', val: 'data is not a JSON object' }};
  }}
  data.processed_by = '{name}';
  return [{{ ...event, data: encoder.encode(JSON.stringify(data)) }}];
}}
"#
        ),
        "source" => format!(
            r#"// `{name}`: a Weft source in JavaScript (componentize-js).
// The contract is wit/connector.wit, world `source`.
const decoder = new TextDecoder();

// A webhook request in; events out. Throw {{ kind, reason }} to refuse it
// with a 4xx (kinds: 'bad-request', 'unauthorized', 'unprocessable', ...).
export function receive(request) {{
  let body;
  try {{
    body = JSON.parse(decoder.decode(request.body));
  }} catch (e) {{
    throw {{ kind: 'bad-request', reason: 'body is not JSON' }};
  }}
  if (body === null || typeof body !== 'object' || typeof body.id !== 'string') {{
    throw {{ kind: 'unprocessable', reason: 'body has no "id"' }};
  }}
  return [{{
    id: body.id,
    source: '/{name}',
    type: '{name}.received',
    subject: undefined,
    time: undefined,
    datacontenttype: 'application/json',
    data: request.body,
    extensions: [],
  }}];
}}
"#
        ),
        "sink" => format!(
            r#"// `{name}`: a Weft sink in JavaScript (componentize-js). POSTs each
// event's data to the configured `url` with the standard `fetch`; the host
// only lets it reach hosts granted in the plugin's `allowed_hosts`.
// The contract is wit/connector.wit, world `checked-sink` (a sink that
// also checks its config when loaded).
import {{ get, entries }} from 'weft:connector/config@0.2.0';

// Runs when the plugin is loaded (`weft validate`, `weft serve`, `weft
// plugin test`): throw a message (the string itself: it is the `err` value)
// and the load stops with it, instead of every delivery failing.
export function checkConfig() {{
  for (const [key] of entries()) {{
    if (key !== 'url') {{
      throw `unknown key "${{key}}" (did you mean "url"?)`;
    }}
  }}
  const url = get('url');
  if (url == null) {{
    throw 'set `url`: where to POST the events';
  }}
  if (!/^https?:\/\//.test(url)) {{
    throw `url = "${{url}}": must start with http:// or https://`;
  }}
}}

// Outcomes: {{ tag: 'delivered' }}, {{ tag: 'retry', val: {{ reason, afterMs }} }}
// (afterMs optional) or {{ tag: 'rejected', val: reason }}.
export async function deliver(event) {{
  const url = get('url');
  if (url == null) {{
    return {{ tag: 'rejected', val: '{name}: config `url` is not set' }};
  }}
  let response;
  try {{
    response = await fetch(url, {{
      method: 'POST',
      headers: {{ 'content-type': 'application/json', 'idempotency-key': event.id }},
      body: event.data,
    }});
  }} catch (e) {{
    return {{ tag: 'retry', val: {{ reason: `no response: ${{e}}` }} }};
  }}
  const status = response.status;
  const snippet = (await response.text()).slice(0, 200);
  if (status >= 200 && status < 300) {{
    return {{ tag: 'delivered' }};
  }}
  if (status === 408 || status === 429 || status >= 500) {{
    const retryAfter = (response.headers.get('retry-after') ?? '').trim();
    const afterMs = /^[0-9]+$/.test(retryAfter) ? BigInt(retryAfter) * 1000n : undefined;
    return {{ tag: 'retry', val: {{ reason: `HTTP ${{status}}: ${{snippet}}`, afterMs }} }};
  }}
  if (status >= 300 && status < 400) {{
    return {{ tag: 'rejected', val: `HTTP ${{status}}: redirects are not followed` }};
  }}
  return {{ tag: 'rejected', val: `HTTP ${{status}}: ${{snippet}}` }};
}}

// Several events at once (the host may batch): one outcome per event.
export async function deliverBatch(events) {{
  const outcomes = [];
  for (const event of events) {{
    outcomes.push(await deliver(event));
  }}
  return outcomes;
}}
"#
        ),
        other => return Err(unknown_role(other)),
    })
}

fn py_source(name: &str, role: &str) -> Result<String, ScaffoldError> {
    Ok(match role {
        "transform" => format!(
            r#""""`{name}`: a Weft transform in Python (componentize-py).

The contract is wit/connector.wit, world `transform`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.weft_connector_types import Event, TransformError_Permanent


class WitWorld(wit_world.WitWorld):
    def transform(self, event: Event) -> list[Event]:
        """One event in; a list of events out (empty = filtered out).

        Raise Err(TransformError_Retryable(reason)) or
        Err(TransformError_Permanent(reason)) to fail.
        """
        try:
            data = json.loads(event.data)
        except ValueError:
            raise Err(TransformError_Permanent("data is not JSON"))
        if not isinstance(data, dict):
            raise Err(TransformError_Permanent("data is not a JSON object"))
        data["processed_by"] = "{name}"
        event.data = json.dumps(data).encode()
        return [event]
"#
        ),
        "source" => format!(
            r#""""`{name}`: a Weft source in Python (componentize-py).

The contract is wit/connector.wit, world `source`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports.weft_connector_types import (
    Event,
    Rejection,
    RejectionKind,
    WebhookRequest,
)


class WitWorld(wit_world.WitWorld):
    def receive(self, request: WebhookRequest) -> list[Event]:
        """A webhook request in; events out. Raise Err(Rejection(...)) to
        refuse it with a 4xx."""
        try:
            body = json.loads(request.body)
        except ValueError:
            raise Err(Rejection(RejectionKind.BAD_REQUEST, "body is not JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise Err(Rejection(RejectionKind.UNPROCESSABLE, 'body has no "id"'))
        return [
            Event(
                id=body["id"],
                source="/{name}",
                type="{name}.received",
                subject=None,
                time=None,
                datacontenttype="application/json",
                data=request.body,
                extensions=[],
            )
        ]
"#
        ),
        "sink" => format!(
            r#""""`{name}`: a Weft sink in Python (componentize-py). POSTs each event's
data to the configured `url` with `weft_http` (a small client over wasi:http);
the host only lets it reach hosts granted in the plugin's `allowed_hosts`.

The contract is wit/connector.wit, world `checked-sink` (a sink that also
checks its config when loaded).
"""

import weft_http
import wit_world
from componentize_py_types import Err
from wit_world.imports import config
from wit_world.imports.weft_connector_types import (
    DeliveryOutcome,
    DeliveryOutcome_Delivered,
    DeliveryOutcome_Rejected,
    DeliveryOutcome_Retry,
    Event,
    RetryRequest,
)


class WitWorld(wit_world.WitWorld):
    def check_config(self) -> None:
        """Runs when the plugin is loaded (`weft validate`, `weft serve`,
        `weft plugin test`): raise Err(message) and the load stops with it,
        instead of every delivery failing."""
        for key, _ in config.entries():
            if key != "url":
                raise Err(f'unknown key "{{key}}" (did you mean "url"?)')
        url = config.get("url")
        if url is None:
            raise Err("set `url`: where to POST the events")
        if not url.startswith(("http://", "https://")):
            raise Err(f'url = "{{url}}": must start with http:// or https://')

    def deliver(self, event: Event) -> DeliveryOutcome:
        url = config.get("url")
        if url is None:
            return DeliveryOutcome_Rejected("{name}: config `url` is not set")
        try:
            response = weft_http.request(
                "POST",
                url,
                [("content-type", "application/json"), ("idempotency-key", event.id)],
                event.data,
            )
        except weft_http.HttpError as e:
            return DeliveryOutcome_Retry(RetryRequest(f"no response: {{e}}", None))
        status = response.status
        snippet = response.body[:200].decode(errors="replace")
        if 200 <= status < 300:
            return DeliveryOutcome_Delivered()
        if status in (408, 429) or status >= 500:
            reason = f"HTTP {{status}}: {{snippet}}"
            return DeliveryOutcome_Retry(RetryRequest(reason, weft_http.retry_after_ms(response)))
        if 300 <= status < 400:
            return DeliveryOutcome_Rejected(f"HTTP {{status}}: redirects are not followed")
        return DeliveryOutcome_Rejected(f"HTTP {{status}}: {{snippet}}")

    def deliver_batch(self, events: list[Event]) -> list[DeliveryOutcome]:
        """Several events at once (the host may batch): one outcome each."""
        return [self.deliver(event) for event in events]
"#
        ),
        other => return Err(unknown_role(other)),
    })
}

fn unknown_role(role: &str) -> ScaffoldError {
    ScaffoldError::Usage(format!(
        "unknown role \"{role}\": use source, transform or sink"
    ))
}

/// Where the sample sink test sends (answered from `test/http.jsonl`).
pub const SAMPLE_SINK_URL: &str = "http://api.example.com/events";
/// The grant the sample sink test needs.
pub const SAMPLE_SINK_HOST: &str = "http://api.example.com";

/// The recorded API the sample sink test replays: accepted, busy (retry in
/// 7 s), unknown (rejected), failing without a `Retry-After` (retry, no delay
/// requested).
fn sample_fixture() -> String {
    let exchange = |body: &str, status: u16, headers: serde_json::Value, answer: &str| {
        serde_json::json!({
            "request": { "method": "POST", "url": SAMPLE_SINK_URL, "body": body },
            "response": { "status": status, "headers": headers, "body": answer }
        })
        .to_string()
    };
    [
        exchange("{\"hello\":\"world\"}", 202, serde_json::json!({}), ""),
        exchange(
            "{\"hello\":\"again\"}",
            503,
            serde_json::json!({ "retry-after": "7" }),
            "busy",
        ),
        exchange(
            "{\"hello\":\"nobody\"}",
            404,
            serde_json::json!({}),
            "no such thing",
        ),
        exchange("{\"hello\":\"later\"}", 500, serde_json::json!({}), "oops"),
    ]
    .join("\n")
        + "\n"
}

/// The sample test: input lines and expected output lines.
fn sample_test(name: &str, role: &str, lang: Language) -> (String, String) {
    match role {
        "transform" => {
            let not_json = match lang {
                Language::Rust => "data is not JSON: expected ident at line 1 column 2",
                _ => "data is not JSON",
            };
            (
                "{\"id\":\"1\",\"type\":\"demo\",\"data\":{\"hello\":\"world\"}}\n{\"id\":\"2\",\"type\":\"demo\",\"data_text\":\"not json\"}\n{\"id\":\"3\",\"type\":\"demo\",\"data\":[1,2]}\n".into(),
                format!(
                    "{{\"events\":[{{\"id\":\"1\",\"source\":\"/weft/plugin-test\",\"type\":\"demo\",\"datacontenttype\":\"application/json\",\"data\":{{\"hello\":\"world\",\"processed_by\":\"{name}\"}}}}]}}\n{{\"error\":{{\"retryable\":false,\"reason\":\"{not_json}\"}}}}\n{{\"error\":{{\"retryable\":false,\"reason\":\"data is not a JSON object\"}}}}\n"
                ),
            )
        }
        "source" => (
            "{\"body\":{\"id\":\"a1\",\"amount\":5}}\n{\"body_text\":\"nope\"}\n{\"body\":{\"amount\":5}}\n".into(),
            format!(
                "{{\"events\":[{{\"id\":\"a1\",\"source\":\"/{name}\",\"type\":\"{name}.received\",\"datacontenttype\":\"application/json\",\"data\":{{\"amount\":5,\"id\":\"a1\"}}}}]}}\n{{\"rejected\":{{\"status\":400,\"kind\":\"bad-request\",\"reason\":\"body is not JSON\"}}}}\n{{\"rejected\":{{\"status\":422,\"kind\":\"unprocessable\",\"reason\":\"body has no \\\"id\\\"\"}}}}\n"
            ),
        ),
        _ => (
            "{\"id\":\"1\",\"type\":\"demo\",\"data\":{\"hello\":\"world\"}}\n{\"id\":\"2\",\"type\":\"demo\",\"data\":{\"hello\":\"again\"}}\n{\"id\":\"3\",\"type\":\"demo\",\"data\":{\"hello\":\"nobody\"}}\n{\"id\":\"4\",\"type\":\"demo\",\"data\":{\"hello\":\"later\"}}\n".into(),
            "{\"outcome\":\"delivered\"}\n{\"outcome\":\"retry\",\"reason\":\"HTTP 503: busy\",\"after_ms\":7000}\n{\"outcome\":\"rejected\",\"reason\":\"HTTP 404: no such thing\"}\n{\"outcome\":\"retry\",\"reason\":\"HTTP 500: oops\"}\n".into(),
        ),
    }
}

/// The `weft plugin test` arguments of the sample test, after the component.
pub fn sample_test_args(role: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--input",
        "test/input.jsonl",
        "--expect",
        "test/expected.jsonl",
    ]
    .map(String::from)
    .to_vec();
    if role == "sink" {
        args.extend([
            "--replay".to_string(),
            "test/http.jsonl".to_string(),
            "--config".to_string(),
            format!("url={SAMPLE_SINK_URL}"),
            "--allow-host".to_string(),
            SAMPLE_SINK_HOST.to_string(),
        ]);
    }
    args
}

/// The WIT contract, for JavaScript and Python plugins' `wit/` directory.
const WIT_FILES: [(&str, &str); 8] = [
    ("connector.wit", include_str!("../../wit/connector.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../wit/deps/http/http.wit"),
    ),
    ("deps/io/io.wit", include_str!("../../wit/deps/io/io.wit")),
    (
        "deps/random/random.wit",
        include_str!("../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../wit/deps/sockets/sockets.wit"),
    ),
];

/// The Python HTTP helper copied into Python plugins.
const WEFT_HTTP_PY: &str = include_str!("../../sdk/python/weft_http.py");

/// The component file `weft plugin build` produces for the plugin in `dir`.
pub fn wasm_path(dir: &Path, name: &str, lang: Language) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    match lang {
        // Cargo runs in `dir` (see `build`): a relative target dir is
        // relative to it, as for Cargo.
        Language::Rust => std::env::var_os("CARGO_TARGET_DIR")
            .map(|t| dir.join(t))
            .unwrap_or_else(|| dir.join("target"))
            .join("wasm32-wasip2")
            .join("release")
            .join(file),
        Language::JavaScript | Language::Python => dir.join("target").join(file),
    }
}

/// Creates a new plugin in `parent/name`.
pub fn new_plugin(
    parent: &Path,
    name: &str,
    lang: &str,
    role: &str,
) -> Result<PathBuf, ScaffoldError> {
    if !name.starts_with(|c: char| c.is_ascii_lowercase())
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(ScaffoldError::Usage(format!(
            "plugin name \"{name}\": start with a lower-case letter, then use lower-case letters, digits and '-'"
        )));
    }
    let language = Language::parse(lang)
        .ok_or_else(|| ScaffoldError::Usage(format!("--lang {lang}: use rust, js or python")))?;
    // The sample sink reads config, and checks it when loaded.
    let world = match role {
        "sink" => "checked-sink",
        other => other,
    };
    let mut files: Vec<(String, String)> = match language {
        Language::Rust => vec![
            ("Cargo.toml".into(), cargo_toml(name)),
            ("src/lib.rs".into(), rust_source(name, role)?),
            (".gitignore".into(), "target/\n".into()),
        ],
        Language::JavaScript => vec![
            ("app.js".into(), js_source(name, role)?),
            (
                "package.json".into(),
                format!(
                    "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"main\": \"app.js\",\n  \"weft\": {{ \"world\": \"{world}\" }}\n}}\n"
                ),
            ),
            (".gitignore".into(), "target/\nnode_modules/\n".into()),
        ],
        Language::Python => vec![
            ("app.py".into(), py_source(name, role)?),
            ("weft_http.py".into(), WEFT_HTTP_PY.into()),
            (
                "pyproject.toml".into(),
                format!(
                    "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\n\n# Which Weft world this plugin implements.\n[tool.weft]\nworld = \"{world}\"\n"
                ),
            ),
            (".gitignore".into(), "target/\n__pycache__/\n".into()),
        ],
    };
    if language != Language::Rust {
        for (rel, text) in WIT_FILES {
            files.push((format!("wit/{rel}"), text.into()));
        }
    }
    let (input, expected) = sample_test(name, role, language);
    files.push(("test/input.jsonl".into(), input));
    files.push(("test/expected.jsonl".into(), expected));
    if role == "sink" {
        files.push(("test/http.jsonl".into(), sample_fixture()));
    }
    let wasm = wasm_path(Path::new("."), name, language);
    let wasm = wasm
        .strip_prefix(".")
        .unwrap_or(&wasm)
        .display()
        .to_string();
    // In the config (next to the plugin directory) the path is relative to
    // the directory above, unless the target dir is absolute.
    let config_path = if Path::new(&wasm).is_absolute() {
        wasm.clone()
    } else {
        format!("{name}/{wasm}")
    };
    let test_args = sample_test_args(role).join(" ");
    let toolchain_note = match language {
        Language::Rust => "",
        Language::JavaScript => "\nThe first build installs componentize-js (pinned) under `$WEFT_TOOLCHAIN_DIR`, else `$XDG_CACHE_HOME/weft/toolchains`, else `~/.cache/weft/toolchains`; it needs Node.js and npm.\n",
        Language::Python => "\nThe first build installs componentize-py (pinned) under `$WEFT_TOOLCHAIN_DIR`, else `$XDG_CACHE_HOME/weft/toolchains`, else `~/.cache/weft/toolchains`; it needs Python 3.11+ with venv.\n",
    };
    // The sample sink refuses to load without its `url`, and reaches only
    // the host granted.
    let sink_settings = if role == "sink" {
        format!("config = {{ url = \"{SAMPLE_SINK_URL}\" }}\nallowed_hosts = [\"{SAMPLE_SINK_HOST}\"]\n")
    } else {
        String::new()
    };
    files.push((
        "README.md".into(),
        format!(
            "# {name}\n\nA Weft {role} plugin.\n\n```sh\nweft plugin build --dir .\nweft plugin test {wasm} {test_args}\n```\n{toolchain_note}\nThen use it in a Weft config:\n\n```toml\n[plugins.{name}]\npath = \"{config_path}\"\n{sink_settings}```\n"
        ),
    ));
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Usage(format!(
            "{} already exists",
            dir.display()
        )));
    }
    for (rel, text) in &files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(dir)
}

/// Builds the plugin in `dir`, in whichever language it is written; returns
/// the component's path.
pub fn build(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    // Absolute from here on: the build tools run inside the plugin
    // directory, where paths relative to the caller's would point elsewhere.
    let dir = &dir.canonicalize().map_err(io(dir))?;
    let language = Language::detect(dir).ok_or_else(|| {
        ScaffoldError::Usage(format!(
            "{}: not a plugin directory (expected Cargo.toml, app.js with package.json, or app.py with pyproject.toml)",
            dir.display()
        ))
    })?;
    if language != Language::Rust {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let wit = dir.join("wit");
        if !wit.join("connector.wit").exists() {
            return Err(ScaffoldError::Usage(format!(
                "{}: no wit/connector.wit (plugins made by `weft plugin new` have one)",
                dir.display()
            )));
        }
        let out = wasm_path(dir, &name, language);
        toolchain::componentize(
            language,
            dir,
            &wit,
            &toolchain::default_tool_dir(),
            &out,
            &[],
        )
        .map_err(ScaffoldError::Build)?;
        return Ok(out);
    }
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(io(&manifest))?;
    let name = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("name = \"")
                .and_then(|r| r.strip_suffix('"'))
        })
        .ok_or_else(|| ScaffoldError::Usage(format!("{}: no package name", manifest.display())))?
        .to_string();
    toolchain::ensure_wasm_target_in(dir).map_err(ScaffoldError::Build)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["build", "--target", toolchain::WASM_TARGET, "--release"])
        .status()
        .map_err(|e| ScaffoldError::Build(format!("cannot run cargo: {e}")))?;
    if !status.success() {
        return Err(ScaffoldError::Build(format!(
            "cargo build failed in {}",
            dir.display()
        )));
    }
    Ok(wasm_path(dir, &name, language))
}
