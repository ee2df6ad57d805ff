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
