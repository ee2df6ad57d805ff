#![allow(dead_code)] // each build script uses part of this file
//! Shared by the build scripts of `host/` and `tests/`: builds every plugin
//! crate under a directory for `wasm32-wasip2`.

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "../src/toolchain.rs"]
mod toolchain;
pub use toolchain::Language;

const TARGET: &str = toolchain::WASM_TARGET;

/// Makes sure rustup has the wasm target, installing it if needed.
pub fn ensure_target() {
    if let Err(why) = toolchain::ensure_wasm_target() {
        panic!("{why}");
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

/// Builds every JavaScript (`plugins/*/app.js`) and Python
/// (`plugins/*/app.py`) connector with its pinned toolchain, installed under
/// `target/toolchains` on first use. Returns the output directory, or why it
/// could not (per language, so one missing toolchain does not hide the other).
pub fn build_guest_plugins(root: &Path, language: Language) -> Result<PathBuf, String> {
    let tools = root.join("target").join("toolchains");
    let out_dir = root.join("target").join(match language {
        Language::JavaScript => "plugins-js",
        Language::Python => "plugins-py",
        Language::Rust => return Err("Rust plugins are built by build_plugins".into()),
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let mut dirs: Vec<_> = std::fs::read_dir(root.join("plugins"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    println!(
        "cargo:rerun-if-changed={}",
        root.join("sdk").join("python").display()
    );
    for dir in dirs
        .into_iter()
        .filter(|d| Language::detect(d) == Some(language))
    {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().replace('-', "_"))
            .unwrap_or_default();
        let out = out_dir.join(format!("{name}.wasm"));
        let python_path = [root.join("sdk").join("python")];
        toolchain::componentize(
            language,
            &dir,
            &root.join("wit"),
            &tools,
            &out,
            &python_path,
        )?;
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    Ok(out_dir)
}
