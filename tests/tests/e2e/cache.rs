//! The compiled-component cache: a restart (a new engine over the same cache
//! directory) loads the 13-19 MB JavaScript and Python components without
//! compiling them again; a damaged cache file is ignored and replaced.

use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use weft::runtime::{Plugin, Runtime};

fn load(cache: &Path, component: &Path) -> Plugin {
    let runtime = Arc::new(Runtime::new(cache).unwrap());
    let limits = weft::config::Limits {
        timeout_ms: 60_000,
        ..Default::default()
    };
    weft_tests::load_plugin(&runtime, component, &[], vec![], limits).unwrap()
}

async fn works(plugin: &Plugin) {
    let input = json!({ "id": "o", "type": "order", "data": { "total": 150 } });
    let out = weft::harness::run_one(plugin, &input).await.unwrap();
    assert_eq!(out["events"][0]["extensions"]["priority"], "high", "{out}");
}

async fn restart_uses_the_cache(component: &Path) {
    let cache = tempfile::tempdir().unwrap();
    let first = load(cache.path(), component);
    assert!(!first.from_cache, "an empty cache compiles");
    works(&first).await;
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");

    let second = load(cache.path(), component);
    assert!(second.from_cache, "a restart loads the compiled component");
    works(&second).await;

    // A damaged cache file is not trusted: it is recompiled and rewritten.
    // (Damaged as a new file: truncating the one the live plugins have
    // mapped would pull their code out from under them; Weft itself only
    // ever replaces cache files by rename.)
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let third = load(cache.path(), component);
    assert!(!third.from_cache);
    works(&third).await;
    let fourth = load(cache.path(), component);
    assert!(fourth.from_cache, "the rewritten cache is used again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_components_are_compiled_once() {
    restart_uses_the_cache(&weft_tests::js_plugin("order-priority-js")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_components_are_compiled_once() {
    restart_uses_the_cache(&weft_tests::py_plugin("order-priority-py")).await;
}
