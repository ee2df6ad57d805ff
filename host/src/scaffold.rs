//! `weft plugin new` and `weft plugin build`: start a connector in seconds.
//!
//! `new` writes a plugin that builds and passes its own sample test at once:
//! the source, a JSON Lines input and the expected output for
//! `weft plugin test`. Rust is supported today; JavaScript and Python are
//! planned (see docs/connectors.md).

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
        None => "weft-sdk = \"0.1\"".to_string(),
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
        data["processed_by"] = serde_json::json!("{name}");
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
            Err(e) => DeliveryOutcome::retry(e.to_string()),
        }}
    }}
}}

weft_sdk::export_sink!(Plugin);
"#
        ),
        other => {
            return Err(ScaffoldError::Usage(format!(
                "unknown role \"{other}\": use source, transform or sink"
            )))
        }
    })
}

fn sample_test(name: &str, role: &str) -> (String, String) {
    match role {
        "transform" => (
            "{\"id\":\"1\",\"type\":\"demo\",\"data\":{\"hello\":\"world\"}}\n{\"id\":\"2\",\"type\":\"demo\",\"data_text\":\"not json\"}\n".into(),
            format!(
                "{{\"events\":[{{\"id\":\"1\",\"source\":\"/weft/plugin-test\",\"type\":\"demo\",\"datacontenttype\":\"application/json\",\"data\":{{\"hello\":\"world\",\"processed_by\":\"{name}\"}}}}]}}\n{{\"error\":{{\"retryable\":false,\"reason\":\"data is not JSON: expected ident at line 1 column 2\"}}}}\n"
            ),
        ),
        "source" => (
            "{\"body\":{\"id\":\"a1\",\"amount\":5}}\n{\"body_text\":\"nope\"}\n{\"body\":{\"amount\":5}}\n".into(),
            format!(
                "{{\"events\":[{{\"id\":\"a1\",\"source\":\"/{name}\",\"type\":\"{name}.received\",\"datacontenttype\":\"application/json\",\"data\":{{\"amount\":5,\"id\":\"a1\"}}}}]}}\n{{\"rejected\":{{\"status\":400,\"kind\":\"bad-request\",\"reason\":\"body is not JSON\"}}}}\n{{\"rejected\":{{\"status\":422,\"kind\":\"unprocessable\",\"reason\":\"body has no \\\"id\\\"\"}}}}\n"
            ),
        ),
        _ => (
            "{\"id\":\"1\",\"type\":\"demo\",\"data\":{\"hello\":\"world\"}}\n".into(),
            format!("{{\"outcome\":\"rejected\",\"reason\":\"{name}: config `url` is not set\"}}\n"),
        ),
    }
}

/// The component file `weft plugin build` produces for the plugin in `dir`.
pub fn wasm_path(dir: &Path, name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    target
        .join("wasm32-wasip2")
        .join("release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

/// Creates a new plugin in `parent/name`.
pub fn new_plugin(
    parent: &Path,
    name: &str,
    lang: &str,
    role: &str,
) -> Result<PathBuf, ScaffoldError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
    {
        return Err(ScaffoldError::Usage(format!(
            "plugin name \"{name}\": use lower-case letters, digits and '-'"
        )));
    }
    if lang != "rust" {
        return Err(ScaffoldError::Usage(format!(
            "--lang {lang}: only rust plugins can be scaffolded by this version (JavaScript and Python are planned)"
        )));
    }
    let source = rust_source(name, role)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Usage(format!(
            "{} already exists",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir.join("src")).map_err(io(&dir))?;
    std::fs::create_dir_all(dir.join("test")).map_err(io(&dir))?;
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::write(&path, text).map_err(io(&path))
    };
    write("Cargo.toml", &cargo_toml(name))?;
    write("src/lib.rs", &source)?;
    let (input, expected) = sample_test(name, role);
    write("test/input.jsonl", &input)?;
    write("test/expected.jsonl", &expected)?;
    write(".gitignore", "target/\n")?;
    let wasm = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    );
    write(
        "README.md",
        &format!(
            "# {name}\n\nA Weft {role} plugin.\n\n```sh\nweft plugin build --dir .\nweft plugin test {wasm} --input test/input.jsonl --expect test/expected.jsonl\n```\n\nThen use it in a Weft config:\n\n```toml\n[plugins.{name}]\npath = \"{name}/{wasm}\"\n```\n"
        ),
    )?;
    Ok(dir)
}

/// Builds the plugin in `dir`; returns the component's path.
pub fn build(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        return Err(ScaffoldError::Usage(format!(
            "{}: no Cargo.toml (only Rust plugins can be built by this version)",
            dir.display()
        )));
    }
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
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    if let Ok(o) = installed {
        if !String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == "wasm32-wasip2")
        {
            let ok = Command::new("rustup")
                .args(["target", "add", "wasm32-wasip2"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                return Err(ScaffoldError::Build("the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed".into()));
            }
        }
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(["build", "--target", "wasm32-wasip2", "--release"])
        .status()
        .map_err(|e| ScaffoldError::Build(format!("cannot run cargo: {e}")))?;
    if !status.success() {
        return Err(ScaffoldError::Build(format!(
            "cargo build failed in {}",
            dir.display()
        )));
    }
    Ok(wasm_path(dir, &name))
}
