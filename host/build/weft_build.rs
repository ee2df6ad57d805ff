#![allow(dead_code)] // each build script uses part of this file
//! Shared by the build scripts of `host/` and `tests/`: builds every plugin
//! crate under a directory for `wasm32-wasip2`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// Makes sure rustup has the wasm target, installing it if needed.
pub fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET) => {}
        Ok(_) => {
            let status = Command::new("rustup")
                .args(["target", "add", TARGET])
                .status();
            match status {
                Ok(s) if s.success() => {}
                other => panic!(
                    "the {TARGET} target is missing and `rustup target add {TARGET}` failed ({other:?}); \
                     install it by hand with `rustup target add {TARGET}`"
                ),
            }
        }
        Err(e) => {
            // No rustup: the toolchain may still have the target (e.g. a distro Rust).
            println!(
                "cargo:warning=rustup not found ({e}); assuming the {TARGET} target is installed"
            );
        }
    }
}

/// Builds every crate under `dir` (each subdirectory with a Cargo.toml) with
/// the `plugin` profile; returns the directory holding the `.wasm` files.
pub fn build_plugins(root: &Path, dir: &Path) -> PathBuf {
    ensure_target();
    let target_dir = root.join("target").join("plugins");
    let mut packages = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("plugin directory exists")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let manifest = entry.path().join("Cargo.toml");
        if manifest.exists() {
            packages.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--target",
            TARGET,
            "--profile",
            "plugin",
            "--target-dir",
        ])
        .arg(&target_dir);
    if std::env::var_os("CARGO_NET_OFFLINE").is_some() {
        cmd.arg("--offline");
    }
    for p in &packages {
        cmd.args(["-p", p]);
    }
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("can run cargo to build plugins");
    assert!(
        status.success(),
        "building the plugins in {} for {TARGET} failed",
        dir.display()
    );
    target_dir.join(TARGET).join("plugin")
}

/// The pinned JavaScript component toolchain.
const COMPONENTIZE_JS: &str = "0.23.0";

/// Installs componentize-js (pinned) under `target/js-toolchain` and builds
/// every `plugins/*-js` plugin (a directory with `app.js` and a
/// `package.json` naming its world under `"weft": {"world": ...}`).
/// Returns the output directory, or why it could not.
pub fn build_js_plugins(root: &Path) -> Result<PathBuf, String> {
    let tool_dir = root.join("target").join("js-toolchain");
    let out_dir = root.join("target").join("plugins-js");
    std::fs::create_dir_all(&tool_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let bin = tool_dir
        .join("node_modules")
        .join(".bin")
        .join("componentize-js");
    let manifest = format!(
        "{{\"name\":\"weft-js-toolchain\",\"private\":true,\"dependencies\":{{\"@bytecodealliance/componentize-js\":\"{COMPONENTIZE_JS}\"}}}}\n"
    );
    let manifest_path = tool_dir.join("package.json");
    if !bin.exists()
        || std::fs::read_to_string(&manifest_path).ok().as_deref() != Some(manifest.as_str())
    {
        std::fs::write(&manifest_path, &manifest).map_err(|e| e.to_string())?;
        let status = Command::new("npm")
            .current_dir(&tool_dir)
            .args(["install", "--no-audit", "--no-fund", "--loglevel", "error"])
            .status()
            .map_err(|e| format!("cannot run npm (is Node.js installed?): {e}"))?;
        if !status.success() || !bin.exists() {
            return Err(format!(
                "npm install of @bytecodealliance/componentize-js@{COMPONENTIZE_JS} failed"
            ));
        }
    }
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("plugins"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs.into_iter().filter(|d| d.join("app.js").exists()) {
        let package = std::fs::read_to_string(dir.join("package.json"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let world = package
            .split("\"world\"")
            .nth(1)
            .and_then(|rest| rest.split('"').nth(1))
            .ok_or_else(|| {
                format!(
                    "{}/package.json: no \"weft\": {{\"world\": ...}}",
                    dir.display()
                )
            })?
            .to_string();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().replace('-', "_"))
            .unwrap_or_default();
        let out = out_dir.join(format!("{name}.wasm"));
        let status = Command::new(&bin)
            .current_dir(&dir)
            .arg("--wit")
            .arg(root.join("wit"))
            .args(["--world-name", &world, "--out"])
            .arg(&out)
            .arg("app.js")
            .status()
            .map_err(|e| format!("cannot run componentize-js: {e}"))?;
        if !status.success() {
            return Err(format!("componentize-js failed for {}", dir.display()));
        }
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    Ok(out_dir)
}
