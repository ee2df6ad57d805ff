//! Builds the misbehaving test plugins in `tests/plugins/` into components.

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
}
