//! One connector, two languages, one contract: `order-priority` in Rust
//! (plugins/order-priority) and in JavaScript (plugins/order-priority-js)
//! get the same inputs and must give the same outputs and the same failure
//! classification, run by the standalone harness in the host's sandbox.

use serde_json::{json, Value};
use std::path::Path;
use weft::harness::{load, run_one, HarnessOptions};

fn cases() -> Vec<(Value, Value)> {
    let out = |id: &str, total: Value, priority: &str| {
        json!({ "events": [{
            "id": id, "source": "/weft/plugin-test", "type": "order",
            "datacontenttype": "application/json",
            "data": { "total": total, "priority": priority },
            "extensions": { "priority": priority }
        }] })
    };
    vec![
        (
            json!({ "id": "high", "type": "order", "data": { "total": 150 } }),
            out("high", json!(150), "high"),
        ),
        (
            json!({ "id": "edge", "type": "order", "data": { "total": 100 } }),
            out("edge", json!(100), "high"),
        ),
        (
            json!({ "id": "low", "type": "order", "data": { "total": 20.5 } }),
            out("low", json!(20.5), "normal"),
        ),
        (
            json!({ "id": "gone", "type": "order", "data": { "total": 999, "status": "cancelled" } }),
            json!({ "events": [] }),
        ),
        (
            json!({ "id": "no-total", "type": "order", "data": { "sku": "x" } }),
            json!({ "error": { "retryable": false, "reason": "data has no numeric \"total\"" } }),
        ),
        (
            json!({ "id": "list", "type": "order", "data": [1, 2] }),
            json!({ "error": { "retryable": false, "reason": "data is not a JSON object" } }),
        ),
        (
            json!({ "id": "text", "type": "order", "data_text": "total: 5" }),
            json!({ "error": { "retryable": false, "reason": "data is not JSON" } }),
        ),
    ]
}

async fn check(plugin_path: &Path, language: &str) {
    let opts = HarnessOptions {
        plugin: plugin_path.to_path_buf(),
        input: plugin_path.to_path_buf(),
        config: vec![("threshold".into(), "100".into())],
        allowed_hosts: vec![],
        secrets: vec![],
        expect: None,
        limits: weft::config::Limits {
            timeout_ms: 60_000,
            ..Default::default()
        },
    };
    let plugin = load(&opts).unwrap_or_else(|e| panic!("{language}: {e}"));
    for (input, expected) in cases() {
        let got = run_one(&plugin, &input).await.unwrap();
        assert_eq!(got, expected, "{language} on {input}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_order_priority_keeps_the_contract() {
    check(&weft_tests::builtin("order-priority"), "Rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_order_priority_keeps_the_contract() {
    check(&weft_tests::js_plugin("order-priority-js"), "JavaScript").await;
}
