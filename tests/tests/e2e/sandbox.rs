//! Plugins that trap, loop, hoard memory, or reach for what they were not
//! granted are stopped; the host keeps serving.

use std::time::Duration;
use weft_tests::{eventually, post_json, test_plugin, FakeApi, TestHost};

/// A route `in` (webhook-json, ids from `/id`, plus `source_config`) →
/// `chaos` → `http-post` to `out`, one attempt per event; `source_limits`
/// and `chaos_limits` go into the two plugins' `limits`.
fn chaos_route(
    out: &FakeApi,
    source_config: &str,
    source_limits: &str,
    chaos_limits: &str,
) -> String {
    format!(
        r#"
[retry]
max_attempts = 1

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id"{source_config} }}
limits = {{ {source_limits} }}

[plugins.chaos]
path = "{chaos}"
limits = {{ {chaos_limits} }}

[plugins.out]
builtin = "http-post"
config = {{ url = "{origin}/ok" }}
allowed_hosts = ["{origin}"]

[[routes]]
name = "chaotic"
source = "in"
transforms = ["chaos"]
sinks = ["out"]
"#,
        chaos = test_plugin("chaos").display(),
        origin = out.origin()
    )
}

/// Waits for the one dead letter the test expects and returns its error.
async fn the_dead_letters_error(host: &TestHost) -> String {
    assert!(eventually(Duration::from_secs(60), || host.stats().dead == 1).await);
    let (_, letters) = host.admin_get("/api/dead-letters").await;
    letters["dead_letters"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_are_stopped_and_the_host_keeps_serving() {
    let out = FakeApi::start().await;
    let victim = FakeApi::start().await;
    let config = chaos_route(&out, "", "", "timeout_ms = 300, memory_mib = 32");
    let host = TestHost::start(&config).await;
    let hook = host.hook("in");
    let events = [
        serde_json::json!({ "id": "trap", "chaos": "trap" }),
        serde_json::json!({ "id": "loop", "chaos": "loop" }),
        serde_json::json!({ "id": "alloc", "chaos": "alloc" }),
        serde_json::json!({ "id": "egress", "chaos": "egress", "url": format!("{}/steal", victim.origin()) }),
        serde_json::json!({ "id": "egress-wasi", "chaos": "egress-wasi", "url": format!("{}/steal", victim.origin()) }),
        serde_json::json!({ "id": "secret", "chaos": "secret" }),
    ];
    for e in &events {
        let (status, body) = post_json(&hook, &e.to_string()).await;
        assert_eq!(status, 202, "{body}");
    }
    assert!(
        eventually(Duration::from_secs(60), || host.stats().dead == 6).await,
        "all six misbehaviours were dead-lettered"
    );

    // The host still serves: a well-behaved event goes through.
    let (status, _) = post_json(&hook, "{\"id\":\"fine\"}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || out.delivered().len() == 1).await);
    assert_eq!(out.delivered()[0].header("ce-id"), Some("fine"));

    let (_, body) = host.admin_get("/api/dead-letters").await;
    let error_of = |id: &str| -> String {
        body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event"]["id"] == id)
            .map(|d| d["error"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no dead letter for {id}: {body}"))
    };
    assert!(error_of("trap").contains("trapped"), "{}", error_of("trap"));
    assert!(
        error_of("trap").contains("chaos: trapping on purpose"),
        "the panic message is kept: {}",
        error_of("trap")
    );
    assert!(
        error_of("loop").contains("CPU time limit"),
        "{}",
        error_of("loop")
    );
    assert!(
        error_of("alloc").contains("trapped") && error_of("alloc").contains("memory limit"),
        "{}",
        error_of("alloc")
    );
    for id in ["egress", "egress-wasi"] {
        assert!(
            error_of(id).contains("HttpRequestDenied"),
            "{}",
            error_of(id)
        );
    }
    assert!(
        error_of("secret").contains("not granted"),
        "{}",
        error_of("secret")
    );
    assert!(
        victim.requests().is_empty(),
        "a plugin without a grant reached a host"
    );

    let failures = host.counter("weft_plugin_failures_total");
    assert_eq!(
        failures, 3,
        "trap, loop and alloc are plugin failures; egress (both paths) and secret are the plugin's own errors"
    );
    host.stop().await;
}

/// A sink whose URL its grants would never let it reach is refused when its
/// config is loaded (http-post asks the host through `outbound.allows`),
/// not event by event: without `allowed_hosts`, or with another host's.
/// Granted but pointing at a blocked address (cloud metadata), a request is
/// refused when it connects, at its first attempt, never retried. Nothing
/// reaches any host. (A plugin that tries anyway is `chaos`'s `egress`,
/// above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_without_a_grant_cannot_reach_any_host() {
    let api = FakeApi::start().await;
    let sink_route = |sink: &str| {
        format!(
            "[retry]\nmax_attempts = 5\ninitial_ms = 50\n\n[plugins.in]\nbuiltin = \"webhook-json\"\n\n{sink}\n[[routes]]\nname = \"r\"\nsource = \"in\"\nsinks = [\"out\"]\n"
        )
    };
    let origin = api.origin();
    for grant in ["", "allowed_hosts = [\"http://127.0.0.1:1\"]"] {
        let dir = tempfile::tempdir().unwrap();
        let text = weft_tests::with_defaults(
            &sink_route(&format!(
                "[plugins.out]\nbuiltin = \"http-post\"\nconfig = {{ url = \"{origin}/x\" }}\n{grant}\n"
            )),
            dir.path(),
        );
        let config = weft::config::Config::parse(&text, "weft.toml", dir.path()).unwrap();
        let Err(refused) = weft::app::start(config).await else {
            panic!("a sink that could never reach its url was started ({grant:?})");
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("not in this plugin's allowed_hosts"),
            "{refused}"
        );
    }
    // Granted, but the address is cloud metadata: refused at connect time.
    let host = TestHost::start(&sink_route(
        "[plugins.out]\nbuiltin = \"http-post\"\nconfig = { url = \"http://169.254.169.254/latest/meta-data\" }\nallowed_hosts = [\"http://169.254.169.254\"]\n",
    ))
    .await;
    let (status, _) = post_json(&host.hook("in"), "{\"a\":1}").await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 1).await);
    let (_, body) = host.admin_get("/api/dead-letters").await;
    let letter = &body["dead_letters"][0];
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("DestinationIpProhibited"),
        "{letter}"
    );
    assert_eq!(
        letter["attempts"].as_array().unwrap().len(),
        1,
        "rejected, not retried: {letter}"
    );
    assert!(api.requests().is_empty());
    host.stop().await;
}

/// Event attributes the sender controls (here the id, taken from the body)
/// reach the sink as valid `ce-*` headers, percent-encoded as the
/// CloudEvents HTTP binding says, instead of failing every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_with_control_characters_are_percent_encoded_in_headers() {
    let out = FakeApi::start().await;
    let config = chaos_route(&out, "", "", "");
    let host = TestHost::start(&config).await;
    let (status, body) = post_json(&host.hook("in"), r#"{"id":"A\r\nB é"}"#).await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || out.delivered().len() == 1).await);
    let delivered = &out.delivered()[0];
    assert_eq!(delivered.header("ce-id"), Some("A%0D%0AB%20%C3%A9"));
    assert_eq!(
        delivered.header("idempotency-key"),
        Some("A%0D%0AB%20%C3%A9")
    );
    assert_eq!(host.stats().dead, 0);
    host.stop().await;
}

/// One event that fans out to thousands of sink calls at once does not
/// exhaust the instance pool: calls beyond what the runtime runs at once wait
/// for a free instance, and none of them fails for want of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_of_thousands_of_calls_waits_for_instances_instead_of_failing() {
    let out = FakeApi::start().await;
    // More than one attempt: under a loaded CI machine, one of 1,500
    // requests may time out on its own, and this test is about instances.
    let config = chaos_route(&out, "", "", "max_events = 1500")
        .replace("max_attempts = 1", "max_attempts = 5\ninitial_ms = 200");
    let host = TestHost::start(&config).await;
    let (status, body) = post_json(
        &host.hook("in"),
        r#"{"id":"many","chaos":"flood","count":1500}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        // Distinct events: a retried request may have arrived twice.
        eventually(Duration::from_secs(120), || out.delivered_ids().len()
            == 1500)
        .await,
        "delivered {}, dead letters {}, plugin failures {}",
        out.delivered_ids().len(),
        host.stats().dead,
        host.counter("weft_plugin_failures_total")
    );
    assert_eq!(host.counter("weft_plugin_failures_total"), 0);
    assert_eq!(host.stats().dead, 0);
    host.stop().await;
}

/// Time spent in the host on a plugin's behalf (here: HMACs of 4 MiB, in a
/// loop) counts against its CPU budget; it is stopped by the CPU limit, not
/// only by the wall clock seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_count_against_the_cpu_budget() {
    let out = FakeApi::start().await;
    std::env::set_var("WEFT_TEST_CHAOS_KEY", "a-key-for-the-chaos-plugin");
    let config = chaos_route(&out, "", "", "timeout_ms = 200").replace(
        "[plugins.chaos]\n",
        "[plugins.chaos]\nsecrets = { k = { env = \"WEFT_TEST_CHAOS_KEY\" } }\n",
    );
    let host = TestHost::start(&config).await;
    let (status, body) = post_json(&host.hook("in"), r#"{"id":"burn","chaos":"hmac-burn"}"#).await;
    assert_eq!(status, 202, "{body}");
    let error = the_dead_letters_error(&host).await;
    assert!(error.contains("CPU time limit"), "{error}");
    host.stop().await;
}

/// A plugin may write as much to stderr as it likes: the host keeps the
/// last few KiB of each call, so a reused instance keeps working and a
/// failure quotes the end of its own call's output (the panic message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_never_fails_a_call_and_a_failure_quotes_its_end() {
    let out = FakeApi::start().await;
    // One instance serves every call, so stderr outlives a call.
    let config = chaos_route(&out, "", "", "instance_reuse = 100");
    let host = TestHost::start(&config).await;
    let hook = host.hook("in");
    for i in 0..3 {
        let event =
            serde_json::json!({ "id": format!("chatty-{i}"), "chaos": "stderr", "bytes": 20_000 });
        let (status, body) = post_json(&hook, &event.to_string()).await;
        assert_eq!(status, 202, "{body}");
    }
    assert!(
        eventually(Duration::from_secs(30), || out.delivered().len() == 3).await,
        "every chatty call succeeded; dead letters: {}",
        host.stats().dead
    );
    // The instance that served them waits for the next call.
    let (_, status) = host.admin_get("/api/status").await;
    let chaos = status["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "chaos"))
        .cloned()
        .unwrap_or_default();
    assert!(
        chaos["idle_instances"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    let event = serde_json::json!({ "id": "last-words", "chaos": "stderr-trap", "bytes": 20_000 });
    let (status, _) = post_json(&hook, &event.to_string()).await;
    assert_eq!(status, 202);
    let error = the_dead_letters_error(&host).await;
    assert!(
        error.contains("chaos: panic after a lot of stderr"),
        "the end of the call's stderr is quoted: {error}"
    );
    host.stop().await;
}

#[test]
fn a_plugin_cannot_flood_the_host_log() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\":\"s1\",\"type\":\"t\",\"data\":{\"chaos\":\"spam\"}}\n",
            "{\"id\":\"s2\",\"type\":\"t\",\"data\":{\"chaos\":\"secret-spam\"}}\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-under-test"))
        .args(["--log-level", "info", "plugin", "test"])
        .arg(test_plugin("chaos"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The call itself succeeded: the event passed through.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"id\":\"s1\""), "{stdout}");
    assert!(stdout.contains("\"id\":\"s2\""), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let spam: Vec<&str> = stderr.lines().filter(|l| l.contains("spam spam")).collect();
    assert_eq!(spam.len(), 100, "lines per call are capped");
    assert!(
        spam.iter().all(|l| l.len() < 5_000),
        "each line is clipped to about 4 KiB"
    );
    // The warnings about what a call was refused share its budget.
    let refusals = stderr
        .lines()
        .filter(|l| l.contains("plugin asked for a secret it is not granted"))
        .count();
    assert_eq!(refusals, 100, "refusal warnings are capped too");
    assert!(
        stderr.contains("plugin log limit reached"),
        "{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
}

/// `limits.max_events` bounds what one request can make the queue hold: a
/// webhook its source turns into too many events gets 413 and nothing is
/// stored; a transform that multiplies one event into too many fails it
/// permanently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_floods_are_capped_by_max_events() {
    let out = FakeApi::start().await;
    let config = chaos_route(
        &out,
        ", split_array = true",
        "max_events = 4",
        "max_events = 5",
    );
    let host = TestHost::start(&config).await;
    let hook = host.hook("in");

    // Five array items: five events, one more than the source allows.
    let five: Vec<_> = (0..5)
        .map(|i| serde_json::json!({ "id": format!("a{i}") }))
        .collect();
    let (status, body) = post_json(&hook, &serde_json::Value::from(five).to_string()).await;
    assert_eq!(status, 413, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "payload-too-large");
    assert!(
        body["error"].as_str().unwrap().contains("max_events"),
        "{body}"
    );
    assert_eq!(
        host.counter("weft_events_accepted_total"),
        0,
        "nothing stored"
    );
    assert_eq!(host.stats().pending, 0);

    // A transform making five events from one: at its limit, all delivered.
    let (status, _) = post_json(&hook, r#"[{"id":"five","chaos":"flood","count":5}]"#).await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || out.delivered().len() == 5).await);

    // Six: over it, the event is dead-lettered and none of the six goes out.
    let (status, _) = post_json(&hook, r#"[{"id":"six","chaos":"flood","count":6}]"#).await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 1).await);
    let (_, letters) = host.admin_get("/api/dead-letters").await;
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["event"]["id"], "six");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_events"),
        "{letter}"
    );
    assert_eq!(
        out.delivered().len(),
        5,
        "nothing of the flood was delivered"
    );
    host.stop().await;
}

/// `limits.max_output_bytes` bounds the bytes one request can make the queue
/// hold, whatever a plugin's memory allows: a source making more gets 413
/// and nothing is stored; a transform making more from one event fails it
/// permanently, and nothing of it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_bytes_are_capped_by_max_output_bytes() {
    let out = FakeApi::start().await;
    let padded = |id: &str, count: u32, pad: usize| {
        serde_json::json!({ "id": id, "chaos": "flood", "count": count, "pad": "x".repeat(pad) })
            .to_string()
    };
    // What the transform makes of `body` (posted with id `edge`): two copies
    // with ids `edge-0` and `edge-1`, each holding the body and webhook-json's
    // attributes (`/hooks/webhook`, `webhook.received`, `application/json`).
    let two_copies = |body: &str| 2 * ("edge-0".len() + 14 + 16 + 16 + body.len());
    let at_limit = padded("edge", 2, 3000);
    let limit = two_copies(&at_limit);
    let config = chaos_route(
        &out,
        "",
        "max_output_bytes = 4096",
        &format!("max_output_bytes = {limit}"),
    );
    let host = TestHost::start(&config).await;
    let hook = host.hook("in");

    // A 5 KB webhook is within the body limit but over the source's output.
    let (status, body) = post_json(&hook, &padded("big", 1, 5000)).await;
    assert_eq!(status, 413, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "payload-too-large");
    assert!(
        body["error"].as_str().unwrap().contains("max_output_bytes"),
        "{body}"
    );
    assert_eq!(
        host.counter("weft_events_accepted_total"),
        0,
        "nothing stored"
    );
    assert_eq!(host.stats().pending, 0);

    // Exactly at the transform's limit: both copies delivered...
    let (status, body) = post_json(&hook, &at_limit).await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || out.delivered().len() == 2).await);
    // ... one byte more: dead-lettered whole, neither copy delivered.
    let over = padded("edge", 2, 3001);
    assert_eq!(two_copies(&over), limit + 2);
    let (status, body) = post_json(&hook, &over).await;
    assert_eq!(status, 202, "{body}");
    let error = the_dead_letters_error(&host).await;
    assert!(error.contains("limits.max_output_bytes"), "{error}");
    assert!(error.contains(&format!("{} bytes", limit + 2)), "{error}");
    assert_eq!(
        out.delivered().len(),
        2,
        "nothing of the second was delivered"
    );
    host.stop().await;
}

/// Secret headers (`inject`) reach only the host their entry names, over both
/// outbound paths (`outbound.send-all` from `http-post`, `wasi:http` from the
/// chaos transform), and the secret's value shows up in nothing an operator
/// reads through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_secrets_reach_only_their_host() {
    let granted = FakeApi::start().await;
    let other = FakeApi::start().await;
    other.set_default(400);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "s3cret-value\n").unwrap();
    let grant = |plugin: &str, url: &str, allowed: &str| {
        format!(
            r#"
[plugins.{plugin}]
{url}
allowed_hosts = [{allowed}]
secrets = {{ token = {{ file = "{file}" }} }}
inject = [{{ host = "{g}", header = "authorization", secret = "token", prefix = "Bearer " }}]
"#,
            file = secret.display(),
            g = granted.origin(),
        )
    };
    let config = format!(
        r#"
[retry]
max_attempts = 1

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}
{chaos}
path = "{chaos_path}"
{ledger}
builtin = "http-post"
{mirror}
builtin = "http-post"

[[routes]]
name = "r"
source = "in"
transforms = ["chaos"]
sinks = ["ledger", "mirror"]
"#,
        chaos = grant("chaos", "", &format!("\"{}\"", granted.origin())),
        chaos_path = test_plugin("chaos").display(),
        ledger = grant(
            "ledger",
            &format!("config = {{ url = \"{}/x\" }}", granted.origin()),
            &format!("\"{}\"", granted.origin()),
        ),
        mirror = grant(
            "mirror",
            &format!("config = {{ url = \"{}/y\" }}", other.origin()),
            &format!("\"{}\", \"{}\"", granted.origin(), other.origin()),
        ),
    );
    // Each `path`/`builtin` line lands in the table `grant` just opened.
    let host = TestHost::start(&config).await;
    let hook = host.hook("in");
    assert_eq!(post_json(&hook, "{\"id\":\"a\"}").await.0, 202);
    let probe = serde_json::json!({ "id": "b", "chaos": "egress-wasi", "url": format!("{}/probe", granted.origin()) });
    assert_eq!(post_json(&hook, &probe.to_string()).await.0, 202);
    assert!(
        eventually(Duration::from_secs(30), || host.stats().dead == 2).await,
        "mirror's rejection of a and the chaos probe b are dead letters"
    );

    let auth_of = |api: &FakeApi, path: &str| -> Vec<Option<String>> {
        api.requests()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.header("authorization").map(str::to_string))
            .collect()
    };
    let expected = Some("Bearer s3cret-value".to_string());
    assert_eq!(
        auth_of(&granted, "/x"),
        vec![expected.clone()],
        "outbound.send-all"
    );
    assert_eq!(auth_of(&granted, "/probe"), vec![expected], "wasi:http");
    assert_eq!(
        auth_of(&other, "/y"),
        vec![None],
        "a host the entry does not name"
    );

    for path in ["/api/dead-letters", "/api/status"] {
        let (_, body) = host.admin_get(path).await;
        assert!(!body.to_string().contains("s3cret"), "{path}: {body}");
    }
    host.stop().await;
}

/// A granted answer longer than the plugin's `limits.max_response_bytes`
/// reaches the plugin cut at the limit and marked so, with its status, over
/// both outbound paths (`outbound.send-all` and `wasi:http`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_answer_reaches_the_plugin_cut_at_its_limit_with_its_status() {
    let out = FakeApi::start().await;
    let api = FakeApi::start().await;
    api.route("/long", 200, &"x".repeat(10_000));
    api.route("/short", 200, "fine");
    let config = chaos_route(&out, "", "", "max_response_bytes = 4096").replace(
        "[plugins.out]",
        &format!("allowed_hosts = [\"{}\"]\n\n[plugins.out]", api.origin()),
    );
    let host = TestHost::start(&config).await;
    let mut expected = Vec::new();
    for (mode, path, answer) in [
        ("egress", "/long", "HTTP 200, 4096 bytes, cut"),
        ("egress-wasi", "/long", "HTTP 200, 4096 bytes, cut"),
        ("egress", "/short", "HTTP 200, 4 bytes"),
        ("egress-wasi", "/short", "HTTP 200, 4 bytes"),
        // A request body of many writes goes out whole over wasi:http too.
        ("egress-wasi-post", "/short", "HTTP 200, 4 bytes"),
    ] {
        let id = format!("{mode}{path}").replace('/', "-");
        let event = serde_json::json!({ "id": id, "chaos": mode, "url": format!("{}{path}", api.origin()), "bytes": 100_000 });
        assert_eq!(post_json(&host.hook("in"), &event.to_string()).await.0, 202);
        expected.push((id, format!("egress reached the host: {answer}")));
    }
    // The same body to a host not granted: the refusal itself, not the
    // body write it cut short.
    let event = serde_json::json!({ "id": "denied-post", "chaos": "egress-wasi-post", "url": format!("{}/x", out.origin()), "bytes": 100_000 });
    assert_eq!(post_json(&host.hook("in"), &event.to_string()).await.0, 202);
    expected.push((
        "denied-post".into(),
        "egress failed: request refused by the host: ErrorCode::HttpRequestDenied".into(),
    ));
    assert!(eventually(Duration::from_secs(30), || host.stats().dead == 6).await);
    let (_, letters) = host.admin_get("/api/dead-letters").await;
    for (id, error) in expected {
        let letter = letters["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["event"]["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters}"));
        assert_eq!(letter["error"], error.as_str(), "{id}");
    }
    let posted: Vec<usize> = api
        .requests()
        .iter()
        .filter(|r| !r.body.is_empty())
        .map(|r| r.body.len())
        .collect();
    assert_eq!(posted, [100_000]);
    host.stop().await;
}

/// A server that answers a large request body early (after the headers,
/// reading no more) gets its answer to the plugin over `wasi:http`: a
/// refusal (`413`) reaches the SDK as the status the server sent, not as the
/// body write it cut short; a success that cannot have seen the whole body
/// is not taken for one (a transport error, which a sink retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_large_body_reaches_the_plugin_with_its_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let out = FakeApi::start().await;
    let early = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", early.local_addr().unwrap());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = early.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let answer = if head.starts_with("POST /refuse ") {
                    "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 9\r\nconnection: close\r\n\r\ntoo large"
                } else {
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                };
                seen.lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or("").to_string());
                let _ = socket.write_all(answer.as_bytes()).await;
                // Reads nothing more: the body fills the socket buffers and
                // the client's writes stall until the server gives up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                drop(socket);
            });
        }
    });
    let config = chaos_route(&out, "", "", "memory_mib = 256").replace(
        "[plugins.out]",
        &format!("allowed_hosts = [\"{origin}\"]\n\n[plugins.out]"),
    );
    let host = TestHost::start(&config).await;
    for path in ["refuse", "accept"] {
        let event = serde_json::json!({ "id": path, "chaos": "egress-wasi-post", "url": format!("{origin}/{path}"), "bytes": 32 << 20 });
        assert_eq!(post_json(&host.hook("in"), &event.to_string()).await.0, 202);
    }
    assert!(eventually(Duration::from_secs(60), || host.stats().dead == 2).await);
    let (_, letters) = host.admin_get("/api/dead-letters").await;
    let error_of = |id: &str| {
        letters["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["event"]["id"] == id)
            .map(|l| l["error"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no dead letter for {id}: {letters}"))
    };
    assert_eq!(
        error_of("refuse"),
        "egress reached the host: HTTP 413, 9 bytes"
    );
    let accepted = error_of("accept");
    assert!(
        accepted.starts_with("egress failed: http transport error: writing body"),
        "{accepted}"
    );
    let mut heads = heads.lock().unwrap().clone();
    heads.sort();
    assert_eq!(heads, ["POST /accept HTTP/1.1", "POST /refuse HTTP/1.1"]);
    host.stop().await;
}
