//! One connector, three languages, one contract: `order-priority` in Rust
//! (plugins/order-priority), JavaScript (plugins/order-priority-js, outbound
//! HTTP with `fetch`) and Python (plugins/order-priority-py, outbound HTTP
//! over `wasi:http`) get the same inputs and must give the same outputs and
//! the same failure classification, run by the standalone harness in the
//! host's sandbox: with and without the tier lookup, without a grant, and
//! with the tier service's exchanges recorded and replayed.

use serde_json::{json, Value};
use std::path::Path;
use weft::harness::{load, run_one, HarnessOptions};
use weft_tests::FakeApi;

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

/// The tier service the connector consults: a stand-in for a CRM's API.
async fn tier_service() -> FakeApi {
    let api = FakeApi::start().await;
    api.route("/tiers/c-gold", 200, r#"{"tier":"gold"}"#);
    api.route("/tiers/c-silver", 200, r#"{"tier":"silver"}"#);
    api.route("/tiers/c-new", 404, r#"{"error":"no such customer"}"#);
    api.route("/tiers/c-busy", 503, "busy");
    api.route("/tiers/c-gone", 410, "gone");
    api.route("/tiers/c-odd", 200, r#"{"level":3}"#);
    api
}

/// Cases with the tier lookup on.
fn tier_cases() -> Vec<(Value, Value)> {
    let order = |id: &str, customer: &str, total: i64| json!({ "id": id, "type": "order", "data": { "customer": customer, "total": total } });
    let out = |id: &str, customer: &str, total: i64, tier: Option<&str>, priority: &str| {
        let mut data = json!({ "customer": customer, "total": total, "priority": priority });
        if let Some(tier) = tier {
            data["tier"] = json!(tier);
        }
        json!({ "events": [{
            "id": id, "source": "/weft/plugin-test", "type": "order",
            "datacontenttype": "application/json", "data": data,
            "extensions": { "priority": priority }
        }] })
    };
    let error = |retryable: bool, reason: &str| json!({ "error": { "retryable": retryable, "reason": reason } });
    vec![
        (
            order("g", "c-gold", 20),
            out("g", "c-gold", 20, Some("gold"), "high"),
        ),
        (
            order("s", "c-silver", 20),
            out("s", "c-silver", 20, Some("silver"), "normal"),
        ),
        (
            order("n", "c-new", 150),
            out("n", "c-new", 150, None, "high"),
        ),
        (
            order("b", "c-busy", 20),
            error(true, "tier service answered 503"),
        ),
        (
            order("x", "c-gone", 20),
            error(false, "tier service answered 410"),
        ),
        (
            order("o", "c-odd", 20),
            error(false, "tier service sent no tier"),
        ),
        (
            order("p", "../admin", 20),
            error(false, "customer is not a plain id"),
        ),
        (
            json!({ "id": "anon", "type": "order", "data": { "total": 5 } }),
            json!({ "events": [{
                "id": "anon", "source": "/weft/plugin-test", "type": "order",
                "datacontenttype": "application/json",
                "data": { "total": 5, "priority": "normal" },
                "extensions": { "priority": "normal" }
            }] }),
        ),
    ]
}

fn options(plugin: &Path, config: &[(&str, &str)], allowed: &[String]) -> HarnessOptions {
    HarnessOptions {
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        allowed_hosts: allowed.to_vec(),
        limits: weft::config::Limits {
            timeout_ms: 60_000,
            ..Default::default()
        },
        ..HarnessOptions::new(plugin.to_path_buf())
    }
}

async fn expect_cases(opts: &HarnessOptions, cases: &[(Value, Value)], what: &str) {
    let plugin = load(opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    for (input, expected) in cases {
        let got = run_one(&plugin, input).await.unwrap();
        assert_eq!(&got, expected, "{what} on {input}");
    }
}

/// Runs the whole contract against one build of the connector.
async fn check(plugin_path: &Path, language: &str) {
    // Without the tier lookup.
    let plain = options(plugin_path, &[("threshold", "100")], &[]);
    expect_cases(&plain, &cases(), language).await;

    // With the tier lookup against a live (stand-in) tier service.
    let api = tier_service().await;
    let tiers_url = format!("{}/tiers", api.origin());
    let config = [("threshold", "100"), ("tiers_url", tiers_url.as_str())];
    let granted = options(plugin_path, &config, &[api.origin()]);
    expect_cases(&granted, &tier_cases(), &format!("{language}, live")).await;
    let live_requests = api.requests().len();
    assert_eq!(
        live_requests, 6,
        "{language}: one lookup per plain customer id"
    );

    // No grant for the tier service: the sandbox refuses, the connector
    // reports a retryable failure.
    let denied = options(plugin_path, &config, &[]);
    let order = json!({ "id": "d", "type": "order", "data": { "customer": "c-gold", "total": 5 } });
    expect_cases(
        &denied,
        &[(
            order,
            json!({ "error": { "retryable": true, "reason": "tier service unreachable" } }),
        )],
        &format!("{language}, no grant"),
    )
    .await;
    assert_eq!(
        api.requests().len(),
        live_requests,
        "{language}: denied request went out"
    );

    // Record the exchanges, then replay them: same outputs, no network.
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("tiers.jsonl");
    let mut recording = granted.clone();
    recording.record = Some(fixture.clone());
    expect_cases(&recording, &tier_cases(), &format!("{language}, recording")).await;
    let recorded = api.requests().len();
    assert_eq!(recorded, live_requests + 6);
    let tape = std::fs::read_to_string(&fixture).unwrap();
    assert_eq!(tape.lines().count(), 6, "{language}: {tape}");
    let exchanges: Vec<Value> = tape
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        exchanges.iter().any(
            |x| x["request"]["url"] == json!(format!("{tiers_url}/c-gold"))
                && x["response"]["status"] == 200
                && x["response"]["body"] == r#"{"tier":"gold"}"#
        ),
        "{language}: {tape}"
    );
    let mut replaying = granted.clone();
    replaying.replay = Some(fixture);
    expect_cases(&replaying, &tier_cases(), &format!("{language}, replaying")).await;
    assert_eq!(
        api.requests().len(),
        recorded,
        "{language}: replay reached the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_order_priority_keeps_the_contract() {
    check(&weft_tests::builtin("order-priority"), "Rust").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_order_priority_keeps_the_contract() {
    check(&weft_tests::js_plugin("order-priority-js"), "JavaScript").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_order_priority_keeps_the_contract() {
    check(&weft_tests::py_plugin("order-priority-py"), "Python").await;
}
