//! Builds the plugins in `plugins/` into WebAssembly components, so that
//! `cargo run` and `cargo test` always have them, from source.
//!
//! The nested `cargo build` uses its own target directory (sharing the outer
//! one deadlocks on cargo's build lock) and makes sure the `wasm32-wasip2`
//! target is installed first (`RUSTUP_AUTO_INSTALL=0` machines do not install
//! it from `rust-toolchain.toml`).

use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    let out = weft_build::build_plugins(&root, &root.join("plugins"));
    println!("cargo:rustc-env=WEFT_BUILTIN_PLUGIN_DIR={}", out.display());
    // The plugins this build ships: the test fixtures the test build puts in
    // the same directory are not built-ins.
    let mut shipped: Vec<String> = std::fs::read_dir(root.join("plugins"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    shipped.sort();
    println!("cargo:rustc-env=WEFT_SHIPPED_PLUGINS={}", shipped.join(","));
    // The root manifest holds the `plugin` profile the components are built with.
    for dir in ["plugins", "sdk/src", "sdk/Cargo.toml", "wit", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/weft_build.rs");
    println!("cargo:rerun-if-changed=src/toolchain.rs");
}

#[path = "build/weft_build.rs"]
mod weft_build;
