//! `limits.instance_reuse`: by default every call gets a fresh instance (no
//! state carries from one event to the next); with reuse on, an instance
//! serves up to N calls, and one that traps is thrown away.

use serde_json::{json, Value};
use weft::harness::{load, run_one, HarnessOptions};
use weft_tests::test_plugin;

fn options(instance_reuse: u32) -> HarnessOptions {
    HarnessOptions {
        limits: weft::config::Limits {
            instance_reuse,
            ..Default::default()
        },
        ..HarnessOptions::new(test_plugin("counter"))
    }
}

/// Runs events of the given types one after another; returns what the
/// counter said (or "trap").
async fn calls(instance_reuse: u32, types: &[&str]) -> Vec<String> {
    let plugin = load(&options(instance_reuse)).unwrap();
    let mut seen = Vec::new();
    for (i, ty) in types.iter().enumerate() {
        let input = json!({ "id": format!("e{i}"), "type": ty, "data": {} });
        let out = run_one(&plugin, &input).await.unwrap();
        seen.push(match out["events"][0]["extensions"]["calls"].clone() {
            Value::String(n) => n,
            _ => {
                assert!(
                    out["failure"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("trapping on purpose"),
                    "{out}"
                );
                "trap".to_string()
            }
        });
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_a_fresh_instance_by_default() {
    assert_eq!(calls(1, &["t"; 5]).await, ["1", "1", "1", "1", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_instance_serves_at_most_n_calls() {
    assert_eq!(
        calls(3, &["t"; 7]).await,
        ["1", "2", "3", "1", "2", "3", "1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_trapped_is_never_reused() {
    assert_eq!(
        calls(10, &["t", "t", "trap", "t", "t"]).await,
        ["1", "2", "trap", "1", "2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_no_call_takes_is_dropped_after_the_idle_ttl() {
    use std::time::{Duration, Instant};
    use weft::runtime::IDLE_TTL;
    let plugin = load(&options(10)).unwrap();
    let call = |id: &str| json!({ "id": id, "type": "t", "data": {} });
    let out = run_one(&plugin, &call("e1")).await.unwrap();
    assert_eq!(out["events"][0]["extensions"]["calls"], "1", "{out}");
    assert_eq!(plugin.idle_instances(), 1);
    // Not idle long enough yet: kept.
    assert_eq!(plugin.trim_idle(Instant::now()), 0);
    assert_eq!(plugin.idle_instances(), 1);
    // Past the TTL with no call in between (what the runtime's sweeper
    // does every few seconds): dropped, and the next call starts afresh.
    let later = Instant::now() + IDLE_TTL + Duration::from_secs(1);
    assert_eq!(plugin.trim_idle(later), 1);
    assert_eq!(plugin.idle_instances(), 0);
    let out = run_one(&plugin, &call("e2")).await.unwrap();
    assert_eq!(out["events"][0]["extensions"]["calls"], "1", "{out}");
}
