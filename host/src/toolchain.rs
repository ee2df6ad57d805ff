//! Guest toolchains: what turns a plugin's source into a component, per
//! language.
//!
//! * Rust: `cargo build --target wasm32-wasip2` (the target is installed with
//!   rustup when missing: machines with `RUSTUP_AUTO_INSTALL=0` do not
//!   install it from `rust-toolchain.toml`).
//! * JavaScript: componentize-js (pinned), installed with npm.
//! * Python: componentize-py (pinned), installed with pip into a venv.
//!
//! The pinned tools install themselves on first use under a tool directory
//! (`target/toolchains` for the workspace build; for `weft plugin build`,
//! `$WEFT_TOOLCHAIN_DIR`, else `$XDG_CACHE_HOME/weft/toolchains`, else
//! `~/.cache/weft/toolchains`), so nothing has to be installed globally
//! beforehand.
//!
//! This module uses only `std`: the workspace's build scripts include it with
//! `#[path]` to build the bundled JavaScript and Python connectors, and the
//! `weft plugin build` command uses it for scaffolded plugins. Errors are
//! plain sentences for that reason.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target guests are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";
/// The pinned JavaScript component toolchain (npm `@bytecodealliance/componentize-js`).
pub const COMPONENTIZE_JS: &str = "0.23.0";
/// The pinned Python component toolchain (PyPI `componentize-py`).
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// A language a plugin can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// A cdylib crate using `weft-sdk` (`Cargo.toml`).
    Rust,
    /// `app.js` plus a `package.json` naming the world.
    JavaScript,
    /// `app.py` plus a `pyproject.toml` naming the world.
    Python,
}

impl Language {
    /// Parses a `--lang` value.
    pub fn parse(text: &str) -> Option<Language> {
        match text {
            "rust" | "rs" => Some(Language::Rust),
            "js" | "javascript" => Some(Language::JavaScript),
            "python" | "py" => Some(Language::Python),
            _ => None,
        }
    }

    /// Which language the plugin in `dir` is written in, by its files.
    pub fn detect(dir: &Path) -> Option<Language> {
        if dir.join("Cargo.toml").exists() {
            Some(Language::Rust)
        } else if dir.join("app.js").exists() && dir.join("package.json").exists() {
            Some(Language::JavaScript)
        } else if dir.join("app.py").exists() && dir.join("pyproject.toml").exists() {
            Some(Language::Python)
        } else {
            None
        }
    }
}

/// The tool directory `weft plugin build` installs toolchains into.
pub fn default_tool_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEFT_TOOLCHAIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(cache).join("weft").join("toolchains");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home)
            .join(".cache")
            .join("weft")
            .join("toolchains"),
        None => std::env::temp_dir().join("weft-toolchains"),
    }
}

/// Makes sure rustup has the wasm target, installing it if needed. Without
/// rustup (a distro Rust) the target is assumed present.
pub fn ensure_wasm_target() -> Result<(), String> {
    ensure_wasm_target_in(Path::new("."))
}

/// [`ensure_wasm_target`] for the toolchain that applies in `dir` (a
/// `rust-toolchain.toml` there or above picks it, as for `cargo build`
/// run in `dir`).
pub fn ensure_wasm_target_in(dir: &Path) -> Result<(), String> {
    let Ok(listed) = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    let status = Command::new("rustup")
        .current_dir(dir)
        .args(["target", "add", WASM_TARGET])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!(
            "the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` failed ({other:?}); \
             install it by hand with `rustup target add {WASM_TARGET}`"
        )),
    }
}

/// The worlds a JavaScript or Python plugin may declare: a role, or the
/// role's `checked-` world (it also exports `check-config`).
pub const WORLDS: [&str; 6] = [
    "source",
    "transform",
    "sink",
    "checked-source",
    "checked-transform",
    "checked-sink",
];

/// The world a JavaScript or Python plugin declares: `"weft": {"world": ...}`
/// in `package.json`, or `world = "..."` under `[tool.weft]` in
/// `pyproject.toml`.
pub fn declared_world(dir: &Path, language: Language) -> Result<String, String> {
    let (file, key) = match language {
        Language::JavaScript => ("package.json", "\"world\""),
        Language::Python => ("pyproject.toml", "world"),
        Language::Rust => return Err("a Rust plugin's world is chosen by its export macro".into()),
    };
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let world = text
        .lines()
        .filter_map(|line| match language {
            // JSON: `"world": "..."` anywhere on a line.
            Language::JavaScript => line.split_once(key).map(|(_, rest)| rest),
            // TOML: a `world = "..."` line.
            _ => line.trim().strip_prefix(key),
        })
        .filter_map(|rest| rest.split('"').nth(1))
        .find(|w| WORLDS.contains(w))
        .ok_or_else(|| {
            format!(
                "{}: no world declared (source, transform or sink, or checked-source, checked-transform or checked-sink to check the config at load); expected {}",
                path.display(),
                match language {
                    Language::JavaScript => "\"weft\": { \"world\": \"transform\" }",
                    _ => "[tool.weft] world = \"transform\"",
                }
            )
        })?;
    Ok(world.to_string())
}

/// Runs a tool; its chatter goes to stderr (stdout carries results, and a
/// build script's stdout carries instructions to cargo).
fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Installs componentize-js under `tools` if it is not there; returns its CLI.
pub fn ensure_componentize_js(tools: &Path) -> Result<PathBuf, String> {
    let dir = tools.join(format!("componentize-js-{COMPONENTIZE_JS}"));
    let bin = dir
        .join("node_modules")
        .join(".bin")
        .join("componentize-js");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let manifest = format!(
        "{{\"name\":\"weft-js-toolchain\",\"private\":true,\"dependencies\":{{\"@bytecodealliance/componentize-js\":\"{COMPONENTIZE_JS}\"}}}}\n"
    );
    std::fs::write(dir.join("package.json"), manifest).map_err(|e| e.to_string())?;
    run(
        Command::new("npm").current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel",
            "error",
        ]),
        &format!("npm install @bytecodealliance/componentize-js@{COMPONENTIZE_JS} (is Node.js installed?)"),
    )?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "npm installed componentize-js but {} is missing",
            bin.display()
        ))
    }
}

/// Installs componentize-py into a venv under `tools` if it is not there;
/// returns its CLI.
pub fn ensure_componentize_py(tools: &Path) -> Result<PathBuf, String> {
    let dir = tools.join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let bin = dir.join("bin").join("componentize-py");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(tools).map_err(|e| format!("{}: {e}", tools.display()))?;
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(
        Command::new(&python).arg("-m").arg("venv").arg(&dir),
        &format!("{python} -m venv (is Python 3 with venv installed?)"),
    )?;
    run(
        Command::new(dir.join("bin").join("pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("componentize-py=={COMPONENTIZE_PY}"),
        ]),
        &format!("pip install componentize-py=={COMPONENTIZE_PY}"),
    )?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "pip installed componentize-py but {} is missing",
            bin.display()
        ))
    }
}

/// Builds the JavaScript or Python plugin in `dir` into the component `out`
/// against the WIT package in `wit`, installing the toolchain if needed.
/// `python_path` lists extra module directories for Python (the plugin's own
/// directory is always searched first).
pub fn componentize(
    language: Language,
    dir: &Path,
    wit: &Path,
    tools: &Path,
    out: &Path,
    python_path: &[PathBuf],
) -> Result<(), String> {
    let world = declared_world(dir, language)?;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    match language {
        Language::JavaScript => {
            let bin = ensure_componentize_js(tools)?;
            run(
                Command::new(bin)
                    .current_dir(dir)
                    .arg("--wit")
                    .arg(wit)
                    .args(["--world-name", &world, "--out"])
                    .arg(out)
                    .arg("app.js"),
                &format!("componentize-js on {}", dir.display()),
            )
        }
        Language::Python => {
            let bin = ensure_componentize_py(tools)?;
            let mut cmd = Command::new(bin);
            cmd.current_dir(dir).arg("-d").arg(wit).args([
                "-w",
                &format!("weft:connector/{world}"),
                "componentize",
                "-p",
                ".",
            ]);
            for p in python_path {
                cmd.arg("-p").arg(p);
            }
            // Only the paths given here: not whatever venv the caller is in.
            cmd.env_remove("VIRTUAL_ENV");
            run(
                cmd.args(["app", "-o"]).arg(out),
                &format!("componentize-py on {}", dir.display()),
            )
        }
        Language::Rust => Err("Rust plugins are built with cargo".into()),
    }
}
