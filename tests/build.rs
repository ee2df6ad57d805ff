//! Builds the test plugins in `tests/plugins/` (Rust) and the JavaScript
//! connectors in `plugins/*-js` into components.

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
    // JavaScript connectors: the pinned toolchain installs itself; if it
    // cannot, the tests that need it fail and say why.
    match weft_build::build_js_plugins(&root) {
        Ok(dir) => {
            println!("cargo:rustc-env=WEFT_JS_PLUGIN_DIR={}", dir.display());
            println!("cargo:rustc-env=WEFT_JS_PLUGIN_ERROR=");
        }
        Err(reason) => {
            println!("cargo:warning=JavaScript plugins not built: {reason}");
            println!("cargo:rustc-env=WEFT_JS_PLUGIN_DIR=");
            println!("cargo:rustc-env=WEFT_JS_PLUGIN_ERROR={reason}");
        }
    }
}
