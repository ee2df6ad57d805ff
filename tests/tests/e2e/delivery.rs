//! Retries, backoff, Retry-After, dead letters and replay.

use std::time::Duration;
use weft_tests::{eventually, post_json, send, send_full, FakeApi, TestHost};

/// One route `relay`: `in` (webhook-json) → `out`, a sink POSTing to `api`.
/// `split` makes the source split a JSON array into events; `sink` is the
/// sink's plugin line (`builtin = ...` or `path = ...`), `sink_config` extra
/// config entries and `sink_limits` its limits table.
fn route_config(
    origin: &str,
    retry: &str,
    split: bool,
    sink: &str,
    sink_config: &str,
    sink_limits: &str,
) -> String {
    format!(
        r#"
[retry]
{retry}

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id", split_array = {split} }}

[plugins.out]
{sink}
config = {{ url = "{origin}/deliver"{sink_config} }}
allowed_hosts = ["{origin}"]
limits = {{ {sink_limits} }}

[[routes]]
name = "relay"
source = "in"
sinks = ["out"]
"#
    )
}

/// The built-in `http-post` sink, one event per call.
fn relay_config(api: &FakeApi, retry: &str) -> String {
    route_config(
        &api.origin(),
        retry,
        false,
        "builtin = \"http-post\"",
        ", timeout_ms = 10000",
        "",
    )
}

/// Array webhooks into a sink (`sink`: its plugin line) taking batches of 16.
fn batch_config(api: &FakeApi, sink: &str, retry: &str) -> String {
    route_config(&api.origin(), retry, true, sink, "", "max_batch = 16")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_sink_gets_exactly_one_delivery_with_retries_spaced_by_the_schedule() {
    let api = FakeApi::start().await;
    api.fail_next(3, 503, &[]);
    let host = TestHost::start(&relay_config(
        &api,
        "initial_ms = 200\nmultiplier = 2.0\nmax_delay_ms = 5000\nmax_attempts = 6\njitter = 0.1",
    ))
    .await;

    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"flaky-1\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 1).await);
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);

    let requests = api.requests();
    assert_eq!(requests.len(), 4, "3 failures then one success");
    assert_eq!(api.delivered().len(), 1, "exactly one successful delivery");
    assert!(requests
        .iter()
        .all(|r| r.header("ce-id") == Some("flaky-1")));
    // Gaps follow the schedule: 200, 400, 800 ms, each at least (1 - jitter) of it.
    for (i, pair) in requests.windows(2).enumerate() {
        let gap = pair[1].at.duration_since(pair[0].at).as_millis() as u64;
        let minimum = (200.0 * 2f64.powi(i as i32) * 0.9) as u64;
        assert!(
            gap >= minimum,
            "retry {} came after {gap} ms, schedule says at least {minimum} ms",
            i + 1
        );
    }
    assert_eq!(host.stats().dead, 0);
    host.stop().await;
}

/// A sink's retry budget is its own: the attempts a transform used before
/// the event reached the sink do not count against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sinks_retry_budget_does_not_include_the_transforms_attempts() {
    let api = FakeApi::start().await;
    api.fail_next(2, 503, &[]);
    let origin = api.origin();
    let config = format!(
        r#"
[retry]
initial_ms = 50
multiplier = 1.0
max_attempts = 3
jitter = 0.0

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}

[plugins.flaky]
path = "{chaos}"

[plugins.out]
builtin = "http-post"
config = {{ url = "{origin}/deliver" }}
allowed_hosts = ["{origin}"]

[[routes]]
name = "relay"
source = "in"
transforms = ["flaky"]
sinks = ["out"]
"#,
        chaos = weft_tests::test_plugin("chaos").display()
    );
    let host = TestHost::start(&config).await;
    // The transform fails twice (two of three attempts), then the sink
    // fails twice: each stage stays within its own three attempts.
    let (status, _) = post_json(
        &host.hook("in"),
        r#"{"id":"both-flaky","chaos":"flaky","fail":2}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 1).await);
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(
        api.requests().len(),
        3,
        "two sink failures, then the delivery"
    );
    assert_eq!(host.stats().dead, 0, "nothing was dead-lettered");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_from_the_sink_is_honored() {
    let api = FakeApi::start().await;
    api.fail_next(1, 429, &[("retry-after", "1")]);
    let host = TestHost::start(&relay_config(
        &api,
        "initial_ms = 10\nmax_attempts = 3\njitter = 0.0",
    ))
    .await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"slow-down\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 1).await);
    let r = api.requests();
    assert_eq!(r.len(), 2);
    let gap = r[1].at.duration_since(r[0].at);
    assert!(
        gap >= Duration::from_millis(1000),
        "Retry-After: 1 asked for a second, got {gap:?}"
    );
    host.stop().await;
}

/// A record waiting for a long `Retry-After` is counted as waiting, in the
/// status and the metrics (it is held by id until due; the event stays in
/// the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_waiting_for_its_retry_is_counted_as_waiting() {
    let api = FakeApi::start().await;
    api.fail_next(1, 503, &[("retry-after", "3600")]);
    let config = relay_config(&api, "initial_ms = 10\nmax_attempts = 3\njitter = 0.0");
    let host = TestHost::start(&config).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"later\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.requests().len() == 1).await);
    let mut waiting = serde_json::Value::Null;
    for _ in 0..500 {
        let (_, status) = host.admin_get("/api/status").await;
        waiting = status["queue"]["waiting"].clone();
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(waiting, 1);
    let (_, text) = host.admin_get("/metrics").await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(text.contains("weft_queue_waiting 1"), "{text}");
    assert_eq!(host.stats().pending, 1);
    assert!(api.delivered().is_empty());
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_failing_sink_ends_in_the_dead_letter_store_with_its_history_and_can_be_replayed()
{
    let api = FakeApi::start().await;
    api.set_default(503);
    let host = TestHost::start(&relay_config(
        &api,
        "initial_ms = 50\nmultiplier = 1.5\nmax_attempts = 3\njitter = 0.0",
    ))
    .await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"doomed\"}").await;
    assert_eq!(status, 202);
    // The dead count rises just before the pending count falls: wait for both.
    assert!(
        eventually(Duration::from_secs(30), || host.stats().dead == 1
            && host.stats().pending == 0)
        .await
    );
    assert_eq!(api.requests().len(), 3);

    let (status, body) = host.admin_get("/api/dead-letters").await;
    assert_eq!(status, 200);
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter["event"]["id"], "doomed");
    assert_eq!(letter["route"], "relay");
    assert!(
        letter["error"].as_str().unwrap().contains("HTTP 503"),
        "{letter}"
    );
    let attempts = letter["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts
        .iter()
        .all(|a| a["plugin"] == "out" && a["outcome"] == "retry"));

    // The API recovers; replay delivers it.
    api.set_default(200);
    let id = letter["id"].as_u64().unwrap();
    let (status, body) = host
        .admin_post(&format!("/api/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 1).await);
    assert!(
        eventually(Duration::from_secs(10), || host.stats().pending == 0
            && host.stats().dead == 0)
        .await
    );
    let (status, _) = host
        .admin_post(&format!("/api/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 404);
    host.stop().await;
}

/// A dead letter whose route the config no longer has (renamed, here) is
/// not replayed: `409` for it alone, skipped by a bulk replay, and kept with
/// the history of why it failed; dead letters of routes still configured
/// are replayed as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_a_route_no_longer_configured_are_kept_not_replayed() {
    let api = FakeApi::start().await;
    api.set_default(400);
    let config = relay_config(&api, "initial_ms = 50\nmax_attempts = 2");
    let host = TestHost::start(&config).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"orphan\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 1).await);
    let dir = host.stop().await;

    let renamed = config.replace("name = \"relay\"", "name = \"renamed\"");
    assert_ne!(renamed, config);
    let host = TestHost::start_in(&renamed, dir).await;
    api.set_default(200);
    let (_, body) = host.admin_get("/api/dead-letters").await;
    let letter = body["dead_letters"][0].clone();
    let id = letter["id"].as_u64().unwrap();
    assert!(
        letter["error"].as_str().unwrap().contains("HTTP 400"),
        "{letter}"
    );

    let (status, body) = host
        .admin_post(&format!("/api/dead-letters/{id}/replay"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("route \"relay\" is no longer configured"),
        "{body}"
    );
    let (status, body) = host.admin_post("/api/dead-letters/replay").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 0, "{body}");
    // Kept as it was: its own failure, not "no longer configured".
    let (_, body) = host.admin_get(&format!("/api/dead-letters/{id}")).await;
    assert!(
        body["error"].as_str().unwrap().contains("HTTP 400"),
        "{body}"
    );
    assert_eq!(host.stats().dead, 1);
    assert!(api.delivered().is_empty());

    // A dead letter of the renamed route is replayed by the same request.
    api.set_default(400);
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"current\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 2).await);
    api.set_default(200);
    let (status, body) = host.admin_post("/api/dead-letters/replay").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1, "{body}");
    assert!(
        eventually(Duration::from_secs(30), || api.delivered_ids()
            == ["current"])
        .await
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rejection_is_dead_lettered_at_once() {
    let api = FakeApi::start().await;
    api.set_default(422);
    let host = TestHost::start(&relay_config(&api, "initial_ms = 50\nmax_attempts = 5")).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"bad-data\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 1).await);
    assert_eq!(api.requests().len(), 1, "a 4xx is not retried");
    let (_, body) = host.admin_get("/api/dead-letters").await;
    assert_eq!(
        body["dead_letters"][0]["attempts"][0]["outcome"],
        "rejected"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_retries_only_the_failing_sink() {
    let good = FakeApi::start().await;
    let flaky = FakeApi::start().await;
    flaky.fail_next(2, 500, &[]);
    let config = format!(
        r#"
[retry]
initial_ms = 50
jitter = 0.0

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}

[plugins.good]
builtin = "http-post"
config = {{ url = "{g}/x" }}
allowed_hosts = ["{g}"]

[plugins.flaky]
builtin = "http-post"
config = {{ url = "{f}/y" }}
allowed_hosts = ["{f}"]

[[routes]]
name = "fan"
source = "in"
sinks = ["good", "flaky"]
"#,
        g = good.origin(),
        f = flaky.origin()
    );
    let host = TestHost::start(&config).await;
    for i in 0..5 {
        let (status, _) = post_json(&host.hook("in"), &format!("{{\"id\":\"e{i}\"}}")).await;
        assert_eq!(status, 202);
    }
    assert!(
        eventually(Duration::from_secs(30), || flaky.delivered().len() == 5
            && good.delivered().len() == 5)
        .await
    );
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(
        good.requests().len(),
        5,
        "the healthy sink saw each event once"
    );
    assert_eq!(flaky.requests().len(), 7);
    // /metrics says which sink of the fan-out failed.
    let (_, text) = host.admin_get("/metrics").await;
    let text = text.as_str().unwrap_or_default().to_string();
    for line in [
        "weft_route_deliveries_total{route=\"fan\",plugin=\"good\"} 5\n",
        "weft_route_deliveries_total{route=\"fan\",plugin=\"flaky\"} 5\n",
        "weft_route_retries_total{route=\"fan\",plugin=\"flaky\"} 2\n",
        "weft_route_retries_total{route=\"fan\",plugin=\"good\"} 0\n",
        "weft_route_dead_lettered_total{route=\"fan\",plugin=\"flaky\"} 0\n",
        // Every delivery's time from acceptance, per sink.
        "weft_delivery_lag_seconds_count{route=\"fan\",plugin=\"good\"} 5\n",
        "weft_delivery_lag_seconds_count{route=\"fan\",plugin=\"flaky\"} 5\n",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    // The two events the flaky sink failed first waited out their backoff
    // (50 ms, then 100 ms for the one that failed twice, or 50 ms each):
    // the lag counts from acceptance, not from the last attempt.
    let flaky_lag_s: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("weft_delivery_lag_seconds_sum{route=\"fan\",plugin=\"flaky\"} ")
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no flaky lag sum in:\n{text}"));
    assert!(flaky_lag_s >= 0.1, "flaky lag sum {flaky_lag_s} s");
    // The same totals in the status the dashboard reads.
    let (_, status) = host.admin_get("/api/status").await;
    let lags = status["delivery_lag"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let delivered: Vec<(String, u64)> = lags
        .iter()
        .map(|l| {
            (
                format!(
                    "{}/{}",
                    l["route"].as_str().unwrap_or(""),
                    l["sink"].as_str().unwrap_or("")
                ),
                l["delivered"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        delivered,
        [("fan/flaky".to_string(), 5), ("fan/good".to_string(), 5)]
    );
    let flaky_ns = lags[0]["lag_ns_total"].as_u64().unwrap_or(0);
    assert!(flaky_ns >= 100_000_000, "{status}");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token() {
    let api = FakeApi::start().await;
    let host = TestHost::start(&relay_config(&api, "max_attempts = 2")).await;
    let (status, _) = send("GET", &format!("{}/api/status", host.admin()), "", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = send(
        "GET",
        &format!("{}/metrics", host.admin()),
        "",
        &[("authorization", "Bearer wrong")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send("GET", &format!("{}/healthz", host.admin()), "", &[]).await;
    assert_eq!(status, 200);
    // Health checkers that probe with HEAD need no token either.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = send("HEAD", &format!("{}{path}", host.admin()), "", &[]).await;
        assert_eq!(status, 200, "HEAD {path}");
    }
    let (status, headers, page) =
        weft_tests::send_full("GET", &format!("{}/", host.admin()), "", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Weft</title>"));
    assert_eq!(
        headers["x-frame-options"], "DENY",
        "the page cannot be framed"
    );
    assert_eq!(headers["content-security-policy"], "frame-ancestors 'none'");
    let (status, body) = host.admin_get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(body["routes"][0]["name"], "relay");
    assert_eq!(body["plugins"].as_array().unwrap().len(), 2);
    let metrics_text = || async {
        let (status, text) = host.admin_get("/metrics").await;
        assert_eq!(status, 200);
        text.as_str().unwrap_or_default().to_string()
    };
    let metrics = metrics_text().await;
    assert!(metrics.contains("weft_queue_pending 0"), "{metrics}");
    assert!(
        metrics.contains("# TYPE weft_queue_syncs_total counter\nweft_queue_syncs_total 0\n"),
        "no webhook yet, so no journal sync: {metrics}"
    );
    assert!(
        metrics.contains("# TYPE weft_queue_checkpoints_total counter")
            && !metrics.contains("weft_queue_checkpoints_total 0\n"),
        "opening the queue checkpoints it: {metrics}"
    );
    // ... and that checkpoint took time, reported in seconds.
    let checkpoint_s: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_queue_checkpoint_seconds_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(checkpoint_s > 0.0, "{metrics}");
    assert!(body["queue"]["checkpoint_ns_total"].as_u64().unwrap_or(0) > 0);
    // Every webhook answer, accepted or rejected, is timed.
    assert_eq!(post_json(&host.hook("in"), "{\"id\":\"a\"}").await.0, 202);
    assert_eq!(post_json(&host.hook("in"), "not json").await.0, 400);
    let metrics = metrics_text().await;
    assert!(
        metrics.contains("# TYPE weft_webhook_duration_seconds histogram")
            && metrics.contains("weft_webhook_duration_seconds_bucket{le=\"+Inf\"} 2\n")
            && metrics.contains("weft_webhook_duration_seconds_count 2\n"),
        "{metrics}"
    );
    let (_, body) = host.admin_get("/api/status").await;
    assert_eq!(body["webhooks"]["answered"], 2, "{body}");
    assert!(body["webhooks"]["latency_ns_total"].as_u64().unwrap() > 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_sink_delivers_each_event_once_and_retries_only_the_failed_ones() {
    let api = FakeApi::start().await;
    // The first five requests fail; they arrive concurrently, inside batches.
    api.fail_next(5, 503, &[]);
    let config = batch_config(
        &api,
        "builtin = \"http-post\"",
        "initial_ms = 50\njitter = 0.0",
    );
    let host = TestHost::start(&config).await;
    // One webhook request carrying 40 orders: 40 events ready at once.
    let body: Vec<String> = (0..40).map(|i| format!("{{\"id\":\"b{i}\"}}")).collect();
    let (status, _) = post_json(&host.hook("in"), &format!("[{}]", body.join(","))).await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 40).await);
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);

    assert_eq!(
        api.delivered_ids().len(),
        40,
        "every event delivered, none twice"
    );
    assert_eq!(
        api.requests().len(),
        45,
        "40 deliveries + 5 retried failures"
    );
    assert_eq!(host.stats().dead, 0);

    // 40 events in batches of at most 16: 3 calls, plus at most one call per
    // retried event. Without batching it would be 45 calls.
    let (status, v) = host.admin_get("/api/status").await;
    assert_eq!(status, 200);
    let calls = v["counters"]["weft_sink_calls_total"].as_u64().unwrap_or(0);
    assert!(
        (3..=8).contains(&calls),
        "{calls} sink calls for 40 events in batches of 16 plus 5 retries"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_fails_alone_and_its_batch_neighbours_are_delivered() {
    let api = FakeApi::start().await;
    let sink = format!(
        "path = \"{}\"",
        weft_tests::test_plugin("poison-sink").display()
    );
    let config = batch_config(
        &api,
        &sink,
        "initial_ms = 50\nmax_attempts = 2\njitter = 0.0",
    );
    let host = TestHost::start(&config).await;
    // Ten events in one request, so in one deliver-batch call; the fifth
    // makes the sink trap, which fails that whole call.
    let body: Vec<String> = (0..10)
        .map(|i| format!("{{\"id\":\"p{i}\",\"poison\":{}}}", i == 4))
        .collect();
    let (status, _) = post_json(&host.hook("in"), &format!("[{}]", body.join(","))).await;
    assert_eq!(status, 202);
    assert!(
        eventually(Duration::from_secs(30), || host.stats().dead == 1
            && host.stats().pending == 0)
        .await
    );
    let expected: Vec<String> = (0..10)
        .filter(|i| *i != 4)
        .map(|i| format!("p{i}"))
        .collect();
    assert_eq!(
        api.delivered_ids(),
        expected,
        "every event but the poison one delivered"
    );

    let (status, body) = host.admin_get("/api/dead-letters").await;
    assert_eq!(status, 200);
    let letters = body["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["event"]["id"], "p4");
    assert!(
        letters[0]["error"].as_str().unwrap().contains("is poison"),
        "{}",
        letters[0]
    );
    host.stop().await;
}

/// A downstream written at the TCP level, for answers no well-behaved HTTP
/// server gives: for each request it reads, it writes `answer` as is, then
/// either hangs with the connection open (`hang`) or waits for the next
/// request.
async fn raw_api(answer: Vec<u8>, hang: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer: std::sync::Arc<[u8]> = answer.into();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&answer).await.is_err() {
                        break;
                    }
                    if hang {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Posts one event to a relay whose sink (`sink_limits`) talks to `origin`
/// and waits for it to be dead-lettered after two attempts, each of which
/// must say (in any case) one of `expected`, i.e. why it failed. What users
/// read in logs and dead letters must carry no host stack trace (this test
/// process may run with RUST_BACKTRACE set).
async fn two_failed_attempts(origin: &str, sink_limits: &str, expected: &[&str]) {
    let retry = "initial_ms = 100\nmax_attempts = 2\njitter = 0.0";
    let config = route_config(
        origin,
        retry,
        false,
        "builtin = \"http-post\"",
        "",
        sink_limits,
    );
    let host = TestHost::start(&config).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"doomed\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 1).await);
    let (_, body) = host.admin_get("/api/dead-letters").await;
    let letter = &body["dead_letters"][0];
    let attempts = letter["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{letter}");
    let details: Vec<String> = attempts
        .iter()
        .map(|a| {
            assert_eq!(a["outcome"], "retry", "{letter}");
            a["detail"].as_str().unwrap().to_string()
        })
        .collect();
    for detail in &details {
        let lower = detail.to_lowercase();
        assert!(
            expected.iter().any(|e| lower.contains(e)),
            "expected one of {expected:?}: {detail}"
        );
        assert!(
            !detail.contains("backtrace") && detail.len() <= weft::router::MAX_ATTEMPT_DETAIL,
            "{detail}"
        );
    }
    // The host kept serving meanwhile.
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"after\"}").await;
    assert_eq!(status, 202);
    host.stop().await;
}

/// A downstream that hangs (never answers, or sends the head and a tenth of
/// the promised body) is timed out by the sink's `http_timeout_ms`, retried
/// and dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downstream_that_hangs_is_timed_out_retried_and_dead_lettered() {
    let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789".to_vec();
    for answer in [Vec::new(), partial] {
        let origin = raw_api(answer, true).await;
        // A timeout, not another failure.
        two_failed_attempts(
            &origin,
            "http_timeout_ms = 300",
            &["readtimeout", "read timeout"],
        )
        .await;
    }
}

/// A downstream answering with a body larger than the sink's
/// `limits.max_response_bytes`: the plugin gets the body's first bytes,
/// marked cut, and the status still decides. A 200 is a delivery (not a
/// transport error retried until the event is dead-lettered, which re-sent
/// what the downstream had accepted); a 503 is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_max_response_bytes_is_cut_off_and_its_status_decides() {
    let answer = |status: &str| {
        let mut answer = format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n",
            256 * 1024
        )
        .into_bytes();
        answer.extend(std::iter::repeat_n(b'x', 256 * 1024));
        answer
    };
    let origin = raw_api(answer("200 OK"), false).await;
    let retry = "initial_ms = 100\nmax_attempts = 2\njitter = 0.0";
    let config = route_config(
        &origin,
        retry,
        false,
        "builtin = \"http-post\"",
        "",
        "max_response_bytes = 4096",
    );
    let host = TestHost::start(&config).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"big-answer\"}").await;
    assert_eq!(status, 202);
    // (The delivery is counted before its removal reaches the queue.)
    assert!(
        eventually(Duration::from_secs(30), || host
            .counter("weft_deliveries_total")
            == 1
            && host.stats().pending == 0)
        .await
    );
    assert_eq!(host.stats().dead, 0);
    assert_eq!(host.counter("weft_retries_total"), 0);
    host.stop().await;

    // The same long body with a 503: retried, then dead-lettered, and the
    // reason is the status with the body's start.
    let origin = raw_api(answer("503 Service Unavailable"), false).await;
    two_failed_attempts(&origin, "max_response_bytes = 4096", &["http 503: xxxx"]).await;
}

/// Dead letters an operator gives up on are deleted, one or in bulk (a
/// bulk delete needs a scope), and stay deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_can_be_deleted_one_or_in_bulk() {
    let api = FakeApi::start().await;
    api.set_default(503);
    let host = TestHost::start(&relay_config(&api, "max_attempts = 1")).await;
    for i in 0..4 {
        let (status, _) = post_json(&host.hook("in"), &format!("{{\"id\":\"bin-{i}\"}}")).await;
        assert_eq!(status, 202);
    }
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 4).await);
    let (_, listed) = host.admin_get("/api/dead-letters").await;
    // Dead letters are numbered in the order their last attempts failed,
    // which concurrent deliveries need not keep: pair each number with its
    // event rather than assume the posting order.
    let letters: Vec<(u64, String)> = listed["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let event = d["event"]["id"].as_str().unwrap().to_string();
            (d["id"].as_u64().unwrap(), event)
        })
        .collect();
    let ids: Vec<u64> = letters.iter().map(|(id, _)| *id).collect();
    assert!(ids.is_sorted(), "listed oldest first: {ids:?}");

    // One dead letter on its own: as listed, with its event's body.
    let (status, one) = host
        .admin_get(&format!("/api/dead-letters/{}", ids[0]))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one, listed["dead_letters"][0], "the same as in the list");
    assert!(one["event"]["data"].is_string(), "{one}");
    assert!(!one["attempts"].as_array().unwrap().is_empty(), "{one}");
    let (status, body) = host
        .admin_call("DELETE", &format!("/api/dead-letters/{}", ids[0]))
        .await;
    assert_eq!(
        (status, &body["discarded"]),
        (200, &serde_json::json!(ids[0])),
        "{body}"
    );
    for (method, path) in [
        ("GET", format!("/api/dead-letters/{}", ids[0])),
        ("DELETE", format!("/api/dead-letters/{}", ids[0])),
        ("POST", format!("/api/dead-letters/{}/replay", ids[0])),
    ] {
        let (status, body) = host.admin_call(method, &path).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    // Not an id: the same answer from both.
    for (method, path) in [
        ("GET", "/api/dead-letters/abc"),
        ("DELETE", "/api/dead-letters/abc"),
        ("POST", "/api/dead-letters/abc/replay"),
    ] {
        let (status, body) = host.admin_call(method, path).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["error"], "bad dead-letter id \"abc\"", "{body}");
    }
    // No scope, no bulk delete.
    let (status, _) = host.admin_call("DELETE", "/api/dead-letters").await;
    assert_eq!(status, 400);
    assert_eq!(host.stats().dead, 3);
    let (status, body) = host.admin_call("DELETE", "/api/dead-letters?limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["ids"],
        serde_json::json!(ids[1..3]),
        "the oldest first"
    );
    assert_eq!(host.stats().dead, 1);
    let (_, listed) = host.admin_get("/api/dead-letters").await;
    assert_eq!(listed["dead_letters"][0]["id"], ids[3]);
    // A method the path does not take: 405 with what it does take.
    let auth = format!("Bearer {}", host.running.admin_token);
    let (status, headers, _) = send_full(
        "PUT",
        &format!("{}/api/dead-letters", host.admin()),
        "",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, DELETE");
    // Bulk deletes need a real scope; DELETE is not what replay paths take.
    let (status, _) = host.admin_call("DELETE", "/api/dead-letters?after=0").await;
    assert_eq!(status, 400);
    for path in [
        "/api/dead-letters/replay".to_string(),
        format!("/api/dead-letters/{}/replay", ids[3]),
    ] {
        let (status, _) = host.admin_call("DELETE", &path).await;
        assert_eq!(status, 405, "{path}");
    }
    // What is left replays and is delivered; nothing deleted ever is.
    api.set_default(200);
    let (status, _) = host
        .admin_post(&format!("/api/dead-letters/{}/replay", ids[3]))
        .await;
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(30), || host.stats().pending == 0
            && api.delivered().len() == 1)
        .await
    );
    assert_eq!(api.delivered_ids(), [letters[3].1.as_str()]);
    host.stop().await;
}

/// After an outage, dead letters are paged through and replayed in bulk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged_and_replayed_in_bulk() {
    let api = FakeApi::start().await;
    api.set_default(503);
    let host = TestHost::start(&relay_config(&api, "max_attempts = 1")).await;
    for i in 0..5 {
        let (status, _) = post_json(&host.hook("in"), &format!("{{\"id\":\"down-{i}\"}}")).await;
        assert_eq!(status, 202);
    }
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 5).await);

    // Pages of two, oldest first, continuing after the last id seen.
    let ids = |body: &serde_json::Value| -> Vec<u64> {
        body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect()
    };
    let (status, all_letters) = host.admin_get("/api/dead-letters").await;
    assert_eq!(status, 200);
    let all = ids(&all_letters);
    assert_eq!(all.len(), 5);
    let (_, first) = host.admin_get("/api/dead-letters?limit=2").await;
    assert_eq!(ids(&first), all[..2]);
    let (_, second) = host
        .admin_get(&format!("/api/dead-letters?limit=2&after={}", all[1]))
        .await;
    assert_eq!(ids(&second), all[2..4]);
    let (_, other_route) = host.admin_get("/api/dead-letters?route=elsewhere").await;
    assert!(ids(&other_route).is_empty());
    let (_, this_route) = host.admin_get("/api/dead-letters?route=relay").await;
    assert_eq!(ids(&this_route), all);
    // Without the bodies (what the dashboard asks for), or with them.
    let (_, bare) = host.admin_get("/api/dead-letters?limit=1&data=false").await;
    assert_eq!(ids(&bare), all[..1]);
    assert!(bare["dead_letters"][0]["event"]["data"].is_null(), "{bare}");
    let (_, full) = host.admin_get("/api/dead-letters?limit=1").await;
    assert!(
        full["dead_letters"][0]["event"]["data"].is_string(),
        "{full}"
    );
    let (status, _) = host.admin_get("/api/dead-letters?data=maybe").await;
    assert_eq!(status, 400);
    let (status, _) = host.admin_get("/api/dead-letters?limit=many").await;
    assert_eq!(status, 400);
    let (status, _) = host.admin_get("/api/dead-letters?color=red").await;
    assert_eq!(status, 400);

    // What was left to do, in the API's own words.
    for letter in all_letters["dead_letters"].as_array().unwrap() {
        match letter["stage"].as_str() {
            Some("route") => assert!(letter["sink"].is_null(), "{letter}"),
            Some("deliver") => assert!(letter["sink"].is_string(), "{letter}"),
            _ => panic!("stage is \"route\" or \"deliver\": {letter}"),
        }
    }
    // A bulk replay of a route the config does not have is refused, not
    // an empty success.
    let (status, body) = host
        .admin_post("/api/dead-letters/replay?route=relya")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(host.stats().dead, 5);

    // The API is back: replay the oldest three, then the rest.
    api.set_default(200);
    let (status, body) = host.admin_post("/api/dead-letters/replay?limit=3").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 3, "{body}");
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 3).await);
    assert_eq!(host.stats().dead, 2);
    let (status, body) = host
        .admin_post("/api/dead-letters/replay?route=relay")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 2, "{body}");
    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 5).await);
    assert!(
        eventually(Duration::from_secs(10), || host.stats().dead == 0
            && host.stats().pending == 0)
        .await
    );
    assert_eq!(
        api.delivered().len(),
        5,
        "each replayed event went out once"
    );
    assert_eq!(
        api.delivered_ids(),
        (0..5).map(|i| format!("down-{i}")).collect::<Vec<_>>()
    );
    host.stop().await;
}

/// Two routes, `slow` and `fast`, each from its own webhook-json source to
/// its own http-post sink (`slow_api`, `fast_api`), with `workers` delivery
/// workers and a 20 s sink timeout.
fn two_routes(slow_api: &FakeApi, fast_api: &FakeApi, workers: usize) -> String {
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = {workers}\n\n[retry]\ninitial_ms = 100\nmax_attempts = 20\n"
    );
    for (name, api) in [("slow", slow_api), ("fast", fast_api)] {
        let origin = api.origin();
        config.push_str(&format!(
            "\n[plugins.{name}-in]\nbuiltin = \"webhook-json\"\nconfig = {{ id_pointer = \"/id\" }}\n\n[plugins.{name}-out]\nbuiltin = \"http-post\"\nconfig = {{ url = \"{origin}/deliver\", timeout_ms = 20000 }}\nallowed_hosts = [\"{origin}\"]\nlimits = {{ http_timeout_ms = 20000 }}\n\n[[routes]]\nname = \"{name}\"\nsource = \"{name}-in\"\nsinks = [\"{name}-out\"]\n"
        ));
    }
    config
}

/// Posts `{"id": id}` to `url` and returns the status; fails the test if no
/// answer comes within 30 s (an acknowledgement held by a sink).
async fn post_id(url: &str, id: &str) -> u16 {
    let body = format!(r#"{{"id":"{id}"}}"#);
    match tokio::time::timeout(Duration::from_secs(30), post_json(url, &body)).await {
        Ok((status, _)) => status,
        Err(_) => panic!("webhook {id} was not answered: its acknowledgement waits on a sink"),
    }
}

/// A sink that stops answering holds neither the acknowledgements of its own
/// route's webhooks (each waits a moment for room, then is answered) nor
/// anything of another route: its route runs at most three quarters of the
/// workers at once, the rest of its records wait by id (stored, not in the
/// hand-off), and the other route is delivered meanwhile. Once the sink
/// answers again, everything it missed arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sink_holds_up_neither_acknowledgements_nor_other_routes() {
    let slow = FakeApi::start().await;
    let fast = FakeApi::start().await;
    slow.hold();
    let host = TestHost::start(&two_routes(&slow, &fast, 4)).await;
    // Far more webhooks than workers and hand-off places (4 and 8).
    for i in 0..30 {
        assert_eq!(
            post_id(&host.hook("slow-in"), &format!("slow-{i}")).await,
            202
        );
    }
    // The stuck route has its share (3) running; the rest waits.
    assert!(
        eventually(Duration::from_secs(30), || host.running.router.waiting()
            >= 20)
        .await,
        "waiting: {}",
        host.running.router.waiting()
    );
    for i in 0..5 {
        assert_eq!(
            post_id(&host.hook("fast-in"), &format!("fast-{i}")).await,
            202
        );
    }
    let fast_ids: Vec<String> = (0..5).map(|i| format!("fast-{i}")).collect();
    let fast_arrived = eventually(Duration::from_secs(30), || {
        let mut got = fast.delivered_ids();
        got.sort();
        got == fast_ids
    })
    .await;
    assert!(
        fast_arrived,
        "the other route was held up: {:?}",
        fast.delivered_ids()
    );
    assert!(
        slow.delivered().is_empty(),
        "the stuck sink answered nothing yet"
    );
    assert_eq!(host.running.router.queue().pending_on("slow"), 30);
    slow.release();
    let mut slow_ids: Vec<String> = (0..30).map(|i| format!("slow-{i}")).collect();
    slow_ids.sort();
    let all_arrived = eventually(Duration::from_secs(60), || {
        let mut got = slow.delivered_ids();
        got.sort();
        got == slow_ids
    })
    .await;
    assert!(all_arrived, "delivered: {:?}", slow.delivered_ids());
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    let mut got = slow.delivered_ids();
    got.sort();
    assert_eq!(got, slow_ids, "each event arrived once");
    host.stop().await;
}

/// A route `fan` from source `in` to two sinks: `slow` (the first; a 20 s
/// timeout, so that a test sees it hold its requests) and `healthy`.
fn fan_out_config(slow: &FakeApi, healthy: &FakeApi) -> String {
    format!(
        r#"
[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}

[plugins.healthy]
builtin = "http-post"
config = {{ url = "{h}/x" }}
allowed_hosts = ["{h}"]

[plugins.slow]
builtin = "http-post"
config = {{ url = "{s}/y", timeout_ms = 20000 }}
allowed_hosts = ["{s}"]
limits = {{ http_timeout_ms = 20000 }}

[[routes]]
name = "fan"
source = "in"
sinks = ["slow", "healthy"]
"#,
        h = healthy.origin(),
        s = slow.origin()
    )
}

/// On a fan-out route, a sink that stops answering holds up neither its
/// route nor the route's other sink: the healthy sink gets every event while
/// the stuck one still holds its first requests (it would time them out
/// only after 20 s), the stuck sink's other deliveries wait in its own lane
/// without being tried, and once it answers again each event reaches it
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_sink_on_a_fan_out_holds_up_neither_the_route_nor_its_other_sink() {
    let stuck = FakeApi::start().await;
    let healthy = FakeApi::start().await;
    stuck.hold();
    let config = format!(
        "[server]\nworkers = 4\n{}",
        fan_out_config(&stuck, &healthy)
    );
    let host = TestHost::start(&config).await;
    // Ten times the route's share (3 of 4 workers).
    let ids: Vec<String> = (0..30).map(|i| format!("f-{i}")).collect();
    for id in &ids {
        assert_eq!(post_id(&host.hook("in"), id).await, 202);
    }
    let sorted = |api: &FakeApi| {
        let mut got = api.delivered_ids();
        got.sort();
        got
    };
    let mut expected = ids.clone();
    expected.sort();
    assert!(
        eventually(Duration::from_secs(15), || sorted(&healthy) == expected).await,
        "the healthy sink was held up by its stuck sibling: {:?}",
        healthy.delivered_ids()
    );
    // All that while, the stuck sink answered nothing and timed nothing
    // out: no attempt failed, nothing was retried.
    assert!(stuck.delivered().is_empty());
    let (_, text) = host.admin_get("/metrics").await;
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("weft_route_retries_total{route=\"fan\",plugin=\"slow\"} 0\n"),
        "{text}"
    );
    // It holds a few requests; the rest of its deliveries wait by id in
    // its lane, stored, without being tried.
    assert!(
        host.running.router.waiting() > 0,
        "every delivery was tried at the stuck sink"
    );
    assert_eq!(
        host.stats().pending,
        30,
        "one delivery to the stuck sink per event"
    );
    stuck.release();
    assert!(
        eventually(Duration::from_secs(60), || sorted(&stuck) == expected).await,
        "delivered: {:?}",
        stuck.delivered_ids()
    );
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(stuck.delivered().len(), 30, "each event reached it once");
    assert_eq!(
        healthy.requests().len(),
        30,
        "and the healthy sink once each"
    );
    host.stop().await;
}

/// A shutdown's grace period waits for a fan-out sink's deliveries that were
/// left to finish alone, as for any attempt in flight: the slow sink's
/// answers, coming within the grace, are recorded, and a restart sends
/// nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_a_fan_outs_slow_sink_within_its_grace() {
    let slow = FakeApi::start().await;
    let healthy = FakeApi::start().await;
    slow.hold();
    let config = fan_out_config(&slow, &healthy);
    let host = TestHost::start(&config).await;
    for i in 0..3 {
        assert_eq!(post_id(&host.hook("in"), &format!("g-{i}")).await, 202);
    }
    // The healthy sink has all three: the slow one's attempts go on alone.
    assert!(eventually(Duration::from_secs(15), || healthy.delivered().len() == 3).await);
    assert_eq!(
        host.stats().pending,
        3,
        "the slow sink's deliveries, stored"
    );
    // The slow sink answers half a second into the shutdown (grace 10 s).
    let release = tokio::spawn({
        let slow = slow.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            slow.release();
        }
    });
    let dir = host.stop().await;
    release.await.unwrap();
    assert_eq!(
        slow.delivered().len(),
        3,
        "answered before the shutdown ended"
    );
    let host = TestHost::start_in(&config, dir).await;
    // Nothing left to send again after the restart.
    assert_eq!(host.stats().pending, 0, "their outcomes were recorded");
    assert_eq!(slow.requests().len(), 3);
    host.stop().await;
}

/// When every worker is busy (here: one worker, two routes whose sinks both
/// stopped answering), a webhook waits a moment for room in the hand-off and
/// is then acknowledged anyway: its records are stored, and they are handed
/// over by id once there is room. Nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_acknowledged_while_every_worker_is_busy_and_delivered_later() {
    let slow = FakeApi::start().await;
    let other = FakeApi::start().await;
    slow.hold();
    other.hold();
    let host = TestHost::start(&two_routes(&slow, &other, 1)).await;
    for i in 0..6 {
        assert_eq!(post_id(&host.hook("slow-in"), &format!("s-{i}")).await, 202);
        assert_eq!(post_id(&host.hook("fast-in"), &format!("f-{i}")).await, 202);
    }
    assert_eq!(host.stats().pending, 12);
    assert!(
        host.running.router.waiting() > 0,
        "nothing waited by id: the test did not fill the workers"
    );
    slow.release();
    other.release();
    let ids = |prefix: &str| (0..6).map(|i| format!("{prefix}-{i}")).collect::<Vec<_>>();
    let sorted = |api: &FakeApi| {
        let mut got = api.delivered_ids();
        got.sort();
        got
    };
    let delivered = eventually(Duration::from_secs(60), || {
        sorted(&slow) == ids("s") && sorted(&other) == ids("f")
    })
    .await;
    assert!(
        delivered,
        "delivered: {:?} and {:?}",
        slow.delivered_ids(),
        other.delivered_ids()
    );
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    host.stop().await;
}

/// With `storage.max_pending` records pending on a route (here: its sink is
/// down and they wait for retries), the next webhook for it gets 503 with
/// `Retry-After` before anything of it is stored; the status and metrics say
/// why; another route goes on taking webhooks. Once the sink is back and
/// deliveries make room, webhooks are taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_webhooks_until_deliveries_make_room() {
    let api = FakeApi::start().await;
    api.set_default(503);
    let calm = FakeApi::start().await;
    let config = format!(
        "{}\n[plugins.calm-in]\nbuiltin = \"webhook-json\"\nconfig = {{ id_pointer = \"/id\" }}\n\n[plugins.calm-out]\nbuiltin = \"http-post\"\nconfig = {{ url = \"{origin}/deliver\" }}\nallowed_hosts = [\"{origin}\"]\n\n[[routes]]\nname = \"calm\"\nsource = \"calm-in\"\nsinks = [\"calm-out\"]\n",
        relay_config(
            &api,
            "initial_ms = 100\nmax_delay_ms = 200\nmax_attempts = 1000\njitter = 0.0",
        ),
        origin = calm.origin()
    );
    let host = TestHost::start_with_storage(&config, "max_pending = 2").await;
    for i in 0..2 {
        let (status, body) = post_json(&host.hook("in"), &format!("{{\"id\":\"room-{i}\"}}")).await;
        assert_eq!(status, 202, "{body}");
    }
    let auth = format!("Bearer {}", host.running.admin_token);
    let (status, headers, body) = send_full(
        "POST",
        &host.hook("in"),
        "{\"id\":\"no-room\"}",
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "30");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "storage-full");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no room (storage.max_pending)"),
        "{body}"
    );
    assert_eq!(host.stats().pending, 2, "nothing of it was stored");
    // The limit is per route: another route's source is still served (one
    // at a time: its own limit of 2 holds too, while it delivers).
    for i in 0..3 {
        let (status, body) =
            post_json(&host.hook("calm-in"), &format!("{{\"id\":\"calm-{i}\"}}")).await;
        assert_eq!(status, 202, "{body}");
        assert!(
            eventually(Duration::from_secs(30), || calm.delivered_ids().len()
                == i + 1
                && host.running.router.queue().pending_on("calm") == 0)
            .await
        );
    }
    // Refused before the body is read: a body announced but never sent is
    // answered 503 at once (not 413 for its size, nor 408 for its absence).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::TcpStream::connect(host.running.webhook_addr)
            .await
            .unwrap();
        raw.write_all(b"POST /hooks/in HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        raw.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 503");
    }
    assert_eq!(host.counter("weft_webhooks_refused_full_total"), 2);
    let (_, status_body) = host.admin_get("/api/status").await;
    // The disk is fine: the instance accepts, one route does not.
    assert_eq!(status_body["storage"]["accepting"], true, "{status_body}");
    assert_eq!(
        status_body["storage"]["full_routes"],
        serde_json::json!(["relay"])
    );
    assert_eq!(status_body["storage"]["max_pending"], 2);
    assert_eq!(status_body["storage"]["pending_by_route"]["relay"], 2);
    assert_eq!(status_body["storage"]["pending_by_route"]["calm"], 0);
    let (_, _, metrics) = send_full(
        "GET",
        &format!("{}/metrics", host.admin()),
        "",
        &[("authorization", &auth)],
    )
    .await;
    for line in [
        "weft_storage_accepting 1",
        "weft_route_pending{route=\"relay\"} 2",
        "weft_route_pending{route=\"calm\"} 0",
        "weft_route_accepting{route=\"relay\"} 0",
        "weft_route_accepting{route=\"calm\"} 1",
    ] {
        assert!(
            metrics.contains(&format!("\n{line}\n")),
            "{line}: {metrics}"
        );
    }
    // Ready (no token needed): one full route is no reason for a load
    // balancer to drop the instance, whose other routes are served.
    let readyz = format!("{}/readyz", host.admin());
    let (status, _, ready) = send_full("GET", &readyz, "", &[]).await;
    assert_eq!(status, 200, "{ready}");

    // The sink is back: the two are delivered, and the queue takes more.
    api.set_default(200);
    assert!(
        eventually(Duration::from_secs(30), || host.stats().pending == 0).await,
        "pending: {}",
        host.stats().pending
    );
    let (status, body) = post_json(&host.hook("in"), "{\"id\":\"room-again\"}").await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || api.delivered_ids().len() == 3).await);
    assert_eq!(api.delivered_ids(), ["room-0", "room-1", "room-again"]);
    let (_, status_body) = host.admin_get("/api/status").await;
    assert_eq!(
        status_body["storage"]["full_routes"],
        serde_json::json!([]),
        "{status_body}"
    );
    host.stop().await;
}

/// With less free space on the data dir's file system than
/// `storage.min_free_mib` (here: more than any disk has), webhooks get 503
/// and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_webhooks() {
    let api = FakeApi::start().await;
    let config = relay_config(&api, "max_attempts = 1");
    let host = TestHost::start_with_storage(&config, "min_free_mib = 1073741824").await;
    let (status, body) = post_json(&host.hook("in"), "{\"id\":\"disk\"}").await;
    assert_eq!(status, 503, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "storage-full");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no room (storage.min_free_mib)"),
        "{body}"
    );
    assert_eq!(host.counter("weft_events_accepted_total"), 0);
    let (_, status_body) = host.admin_get("/api/status").await;
    assert!(
        status_body["storage"]["free_bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{status_body}"
    );
    assert!(status_body["storage"]["refusing_because"]
        .as_str()
        .is_some_and(|r| r.contains("min_free_mib")));
    assert_eq!(status_body["storage"]["accepting"], false);
    // Not ready: no webhook can be taken (no token needed to ask).
    let (status, _, ready) = send_full("GET", &format!("{}/readyz", host.admin()), "", &[]).await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("storage.min_free_mib"), "{ready}");
    host.stop().await;
}

/// An operator pauses a route while its downstream is down: webhooks are
/// still acknowledged and stored, nothing is delivered (retries wait too),
/// the pause outlives a restart, and resuming delivers every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_route_stores_its_events_through_a_restart_and_delivers_them_when_resumed() {
    let api = FakeApi::start().await;
    // The retry comes due after the pause (2 s on), and waits there too.
    let retry = "initial_ms = 2000\nmax_attempts = 3";
    let config = relay_config(&api, retry);
    let host = TestHost::start(&config).await;
    // A retry waiting at the pause: the sink fails the first attempt.
    api.fail_next(1, 503, &[]);
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"before\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || api.requests().len() == 1).await);

    let (status, body) = host.admin_post("/api/routes/relay/pause").await;
    assert_eq!(
        (status, body["paused"].clone()),
        (200, serde_json::json!(true)),
        "{body}"
    );
    let mut stored_by = None;
    for i in 0..3 {
        let (status, body) =
            post_json(&host.hook("in"), &format!("{{\"id\":\"during-{i}\"}}")).await;
        assert_eq!(status, 202, "webhooks are taken while paused: {body}");
        stored_by.get_or_insert_with(std::time::Instant::now);
    }
    let stored_by = stored_by.unwrap_or_else(std::time::Instant::now);
    // All four wait by id: nothing runs, nothing is dead-lettered.
    let waiting = || async {
        let (_, status) = host.admin_get("/api/status").await;
        status["queue"]["waiting"].as_u64()
    };
    let mut parked = None;
    for _ in 0..1500 {
        parked = waiting().await;
        if parked == Some(4) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(parked, Some(4), "the retry and the three new events wait");
    assert_eq!(api.requests().len(), 1, "nothing more reached the sink");
    let (_, status) = host.admin_get("/api/status").await;
    assert_eq!(status["routes"][0]["paused"], true, "{status}");
    // Unknown routes and other methods are told so.
    let (status, _) = host.admin_post("/api/routes/nope/pause").await;
    assert_eq!(status, 404);
    let (status, _) = host.admin_get("/api/routes/relay/pause").await;
    assert_eq!(status, 405);

    // Restarted: still paused; the events are still there.
    let dir = host.stop().await;
    let host = TestHost::start_in(&config, dir).await;
    assert_eq!(host.stats().pending, 4);
    let (_, status) = host.admin_get("/api/status").await;
    assert_eq!(status["routes"][0]["paused"], true, "{status}");
    let mut metrics = String::new();
    for _ in 0..300 {
        let auth = format!("Bearer {}", host.running.admin_token);
        metrics = send(
            "GET",
            &format!("{}/metrics", host.admin()),
            "",
            &[("authorization", &auth)],
        )
        .await
        .1;
        if metrics.contains("weft_route_paused{route=\"relay\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        metrics.contains("weft_route_paused{route=\"relay\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        api.requests().len(),
        1,
        "nothing delivered after the restart either"
    );
    // How long the oldest of them has waited: at least since the first
    // event stored during the pause was acknowledged (the retry is older).
    // A second more first, so that the bound says something.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let waited_s = stored_by.elapsed().as_secs();
    assert!(waited_s >= 1);
    let (_, status) = host.admin_get("/api/status").await;
    let oldest = status["queue"]["oldest_pending_s"].as_u64();
    assert!(oldest.is_some_and(|s| s >= waited_s), "{status}");
    assert!(
        metrics.contains("# TYPE weft_queue_oldest_pending_seconds gauge"),
        "{metrics}"
    );

    let (status, body) = host.admin_post("/api/routes/relay/resume").await;
    assert_eq!(
        (status, body["paused"].clone()),
        (200, serde_json::json!(false)),
        "{body}"
    );
    assert!(eventually(Duration::from_secs(30), || api.delivered_ids().len() == 4).await);
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(api.delivered().len(), 4, "each event once");
    assert_eq!(host.stats().dead, 0);
    let (_, status) = host.admin_get("/api/status").await;
    assert_eq!(status["queue"]["oldest_pending_s"], 0, "{status}");
    // Resumed for good: a restart does not pause it again.
    let dir = host.stop().await;
    let host = TestHost::start_in(&config, dir).await;
    let (_, status) = host.admin_get("/api/status").await;
    assert_eq!(status["routes"][0]["paused"], false, "{status}");
    host.stop().await;
}

/// A route's own `retry` settings override `[retry]` for that route only:
/// the same failing event gives up after 2 attempts on one route and after
/// 4 on the route beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_retries_on_its_own_schedule_when_it_has_one() {
    let (quick, patient) = (FakeApi::start().await, FakeApi::start().await);
    quick.set_default(503);
    patient.set_default(503);
    let config = format!(
        r#"
[retry]
initial_ms = 50
max_delay_ms = 200
max_attempts = 4
jitter = 0.0

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}

[plugins.quick]
builtin = "http-post"
config = {{ url = "{q}/deliver" }}
allowed_hosts = ["{q}"]

[plugins.patient]
builtin = "http-post"
config = {{ url = "{p}/deliver" }}
allowed_hosts = ["{p}"]

[[routes]]
name = "gives-up-soon"
source = "in"
sinks = ["quick"]
retry = {{ max_attempts = 2 }}

[[routes]]
name = "keeps-trying"
source = "in"
sinks = ["patient"]
"#,
        q = quick.origin(),
        p = patient.origin()
    );
    let host = TestHost::start(&config).await;
    let (status, _) = post_json(&host.hook("in"), "{\"id\":\"doomed\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 2).await);
    assert_eq!((quick.requests().len(), patient.requests().len()), (2, 4));
    let (_, body) = host.admin_get("/api/dead-letters?data=false").await;
    let mut attempts: Vec<(String, usize)> = body["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["route"].as_str().unwrap().to_string(),
                d["attempts"].as_array().unwrap().len(),
            )
        })
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        vec![("gives-up-soon".into(), 2), ("keeps-trying".into(), 4)]
    );
    host.stop().await;
}

/// A sink that is down trips its circuit breaker: after `breaker_after`
/// failures in a row, new deliveries to it wait without an attempt (the
/// sink is not asked once per event), one event probes after each
/// cool-down, and once the sink answers again every event is delivered,
/// none dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_is_down_trips_its_breaker_and_is_not_asked_per_event() {
    let api = FakeApi::start().await;
    api.set_default(503);
    let host = TestHost::start(&relay_config(
        &api,
        "initial_ms = 1000\nmultiplier = 1.0\nmax_delay_ms = 1000\nmax_attempts = 10\njitter = 0.0\nbreaker_after = 2",
    ))
    .await;
    for i in 0..2 {
        let (status, _) = post_json(&host.hook("in"), &format!("{{\"id\":\"first-{i}\"}}")).await;
        assert_eq!(status, 202);
    }
    // Two failures in a row: the breaker opens.
    let mut open = serde_json::Value::Null;
    for _ in 0..1500 {
        open = host.admin_get("/api/status").await.1["open_breakers"].clone();
        if open != serde_json::json!([]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        open,
        serde_json::json!([{ "route": "relay", "sink": "out" }])
    );

    // Twenty more events: they wait for the breaker instead of each
    // failing at the sink.
    for i in 0..20 {
        let (status, _) = post_json(&host.hook("in"), &format!("{{\"id\":\"later-{i}\"}}")).await;
        assert_eq!(status, 202);
    }
    assert!(
        eventually(Duration::from_secs(30), || host
            .counter("weft_deliveries_deferred_total")
            >= 20)
        .await
    );
    let asked = api.requests().len();
    assert!(
        asked < 22,
        "the sink was asked {asked} times for 22 events: not once per event"
    );

    // The sink is back: the next probe gets through, the breaker closes,
    // and everything is delivered, nothing dead-lettered.
    api.set_default(200);
    assert!(eventually(Duration::from_secs(60), || api.delivered_ids().len() == 22).await);
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(host.stats().dead, 0);
    assert_eq!(
        host.admin_get("/api/status").await.1["open_breakers"],
        serde_json::json!([])
    );
    host.stop().await;
}

/// A sink with `limits.deliveries_per_s` is sent no more than its rate
/// allows (bursts of one second's worth): what is over it waits in the
/// queue, without an attempt, and every event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_is_sent_no_more_than_its_deliveries_per_s() {
    let api = FakeApi::start().await;
    let host = TestHost::start(&route_config(
        &api.origin(),
        "initial_ms = 100",
        true,
        "builtin = \"http-post\"",
        "",
        "deliveries_per_s = 5",
    ))
    .await;
    // Fifteen events in one webhook, ready at once.
    let batch: Vec<String> = (0..15).map(|i| format!("{{\"id\":\"e{i}\"}}")).collect();
    let (status, body) = post_json(&host.hook("in"), &format!("[{}]", batch.join(","))).await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(60), || api.delivered_ids().len() == 15).await);
    assert_eq!(api.requests().len(), 15, "each event sent once");
    assert_eq!(host.stats().dead, 0);
    assert!(host.counter("weft_deliveries_deferred_total") > 0);
    // A token bucket of 5 a second holding 5: at most 10 in any second.
    let mut at: Vec<std::time::Instant> = api.requests().iter().map(|r| r.at).collect();
    at.sort();
    for (i, start) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|t| **t < *start + Duration::from_secs(1))
            .count();
        assert!(
            within <= 10,
            "{within} requests within one second of request {i}"
        );
    }
    host.stop().await;
}
