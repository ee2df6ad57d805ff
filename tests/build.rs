//! Builds the test plugins in `tests/plugins/` (Rust) and the JavaScript
//! and Python connectors in `plugins/` into components.

use std::path::PathBuf;

#[path = "../host/build/weft_build.rs"]
mod weft_build;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let out = weft_build::build_plugins(&root, &manifest.join("plugins"));
    println!("cargo:rustc-env=WEFT_TEST_PLUGIN_DIR={}", out.display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("plugins").display()
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../host/build/weft_build.rs");
    // The root manifest holds the `plugin` profile the components are built
    // with; the plugins build against the SDK and the WIT contract; the
    // JavaScript and Python connectors live in the root `plugins/`.
    for dir in ["Cargo.toml", "sdk/src", "sdk/Cargo.toml", "wit", "plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    // JavaScript and Python connectors: the pinned toolchains install
    // themselves; if one cannot, the tests that need it fail and say why.
    for (language, tag) in [
        (weft_build::Language::JavaScript, "JS"),
        (weft_build::Language::Python, "PY"),
    ] {
        match weft_build::build_guest_plugins(&root, language) {
            Ok(dir) => {
                println!("cargo:rustc-env=WEFT_{tag}_PLUGIN_DIR={}", dir.display());
                println!("cargo:rustc-env=WEFT_{tag}_PLUGIN_ERROR=");
            }
            Err(reason) => {
                println!("cargo:warning={language:?} plugins not built: {reason}");
                println!("cargo:rustc-env=WEFT_{tag}_PLUGIN_DIR=");
                println!("cargo:rustc-env=WEFT_{tag}_PLUGIN_ERROR={reason}");
                // A path that never exists: the next build tries again (the
                // missing tool may have been installed meanwhile).
                println!(
                    "cargo:rerun-if-changed={}",
                    root.join("target")
                        .join("toolchains")
                        .join("retry-after-failure")
                        .display()
                );
            }
        }
    }
    println!(
        "cargo:rustc-env=WEFT_TOOLCHAIN_DIR={}",
        root.join("target").join("toolchains").display()
    );
    println!("cargo:rerun-if-changed=../host/src/toolchain.rs");
}
