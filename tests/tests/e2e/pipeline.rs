//! The shop route end to end, and webhooks that must be refused.

use std::time::Duration;
use weft_tests::{eventually, post_json, send, send_full, FakeApi, TestHost};

fn shop_config(inventory: &FakeApi, accounting: &FakeApi) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/shop/weft.toml"
    ))
    .unwrap();
    // Keep the example's plugins and routes; point it at the fake services.
    let from = text.find("[retry]").unwrap();
    text[from..]
        .replace("127.0.0.1:9101", &inventory.addr.to_string())
        .replace("127.0.0.1:9102", &accounting.addr.to_string())
}

/// The shop route (see [`shop_config`]) on two fake services, with `server`
/// (extra `[server]` settings, one `key = value` per line; "" for none):
/// the host, the inventory API and the accounting API.
async fn shop(server: &str) -> (TestHost, FakeApi, FakeApi) {
    let inventory = FakeApi::start().await;
    let accounting = FakeApi::start().await;
    let admin = if server.contains("admin_listen") {
        ""
    } else {
        "admin_listen = \"127.0.0.1:0\"\n"
    };
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{admin}{server}\n{}",
        shop_config(&inventory, &accounting)
    );
    (TestHost::start(&config).await, inventory, accounting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_orders_reach_inventory_and_accounting_mapped() {
    let (host, inventory, accounting) = shop("").await;

    let order = serde_json::json!({
        "order_id": "ORD-1",
        "customer": { "email": "ada@example.com", "name": "Ada" },
        "items": [
            { "sku": "MUG", "quantity": 2, "unit_price": 8.5 },
            { "sku": "TEE", "quantity": 1, "unit_price": 19.0 }
        ]
    });
    let (status, body) = post_json(&host.hook("shop-orders"), &order.to_string()).await;
    assert_eq!(status, 202, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["ids"], serde_json::json!(["ORD-1"]));

    assert!(
        eventually(Duration::from_secs(30), || inventory.delivered().len() == 1
            && accounting.delivered().len() == 1)
        .await
    );

    // Inventory: binary-mode CloudEvent, data is the mapped order.
    let inv = &inventory.delivered()[0];
    assert_eq!(inv.path, "/stock-movements");
    assert_eq!(inv.header("ce-id"), Some("ORD-1"));
    assert_eq!(inv.header("ce-type"), Some("com.shop.order.summary"));
    assert_eq!(inv.header("ce-source"), Some("/shop/orders"));
    assert_eq!(inv.header("idempotency-key"), Some("ORD-1"));
    // The sink declares its body's length (no chunked encoding).
    let length = inv.body.len().to_string();
    assert_eq!(inv.header("content-length"), Some(length.as_str()));
    assert_eq!(inv.header("transfer-encoding"), None);
    let data = inv.json();
    assert_eq!(data["customer_email"], "ada@example.com");
    assert!(
        data.get("customer").is_none(),
        "customer object dropped: {data}"
    );
    assert_eq!(data["line_count"], 2);
    assert_eq!(data["units"], 3);
    assert_eq!(data["total"], 36);
    assert_eq!(data["vat"].as_f64(), Some(7.2));
    assert_eq!(data["currency"], "EUR");

    // Accounting: structured-mode CloudEvent carrying the same data.
    let acc = accounting.delivered()[0].json();
    assert_eq!(acc["specversion"], "1.0");
    assert_eq!(acc["id"], "ORD-1");
    assert_eq!(acc["subject"], "ORD-1");
    assert_eq!(acc["data"], data);

    // The shop sends the same order again (it missed the answer): the
    // source's dedup window answers 202 and stores nothing.
    let (status, body) = post_json(&host.hook("shop-orders"), &order.to_string()).await;
    assert_eq!(status, 202, "{body}");
    let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ack["duplicates"], serde_json::json!(["ORD-1"]));
    assert_eq!(host.counter("weft_events_duplicate_total"), 1);

    // Nothing left behind, and nothing delivered twice.
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    assert_eq!(host.stats().dead, 0);
    assert_eq!(
        (inventory.delivered().len(), accounting.delivered().len()),
        (1, 1)
    );
    host.stop().await;
}

/// Some senders put a UTF-8 byte order mark before their JSON: the body is
/// taken, and the event's data goes on without it (the transform and the
/// sinks downstream parse it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_after_a_byte_order_mark_is_taken_without_it() {
    let (host, inventory, _accounting) = shop("").await;
    let order = "\u{feff}{\"order_id\":\"BOM-1\",\"customer\":{\"email\":\"b@o.m\"},\"items\":[{\"quantity\":1,\"unit_price\":2}]}";
    let (status, body) = post_json(&host.hook("shop-orders"), order).await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    let data = inventory.delivered()[0].json();
    assert_eq!(data["customer_email"], "b@o.m", "{data}");
    assert_eq!(data["total"], 2);
    assert_eq!(host.stats().dead, 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_webhooks_get_4xx_and_are_never_enqueued() {
    let (host, inventory, _accounting) = shop("max_body_bytes = 4096\n").await;
    let hook = host.hook("shop-orders");

    let (status, body) = post_json(&hook, "{ not json").await;
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["kind"], "bad-request");
    assert!(err["error"].as_str().unwrap().contains("not valid JSON"));

    let (status, _) = send("POST", &hook, "a,b", &[("content-type", "text/csv")]).await;
    assert_eq!(status, 415);

    // A compressed body is refused as such, not as broken JSON.
    let (status, body) = send(
        "POST",
        &hook,
        "\u{1f}\u{8b}\u{8}",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    )
    .await;
    assert_eq!(status, 415, "{body}");
    assert!(
        body.contains("content-encoding gzip is not supported"),
        "{body}"
    );

    let (status, body) = post_json(&hook, "{\"no_order_id\": true}").await;
    assert_eq!(status, 422, "{body}");

    let (status, _) = post_json(&hook, "\"just a string\"").await;
    assert_eq!(status, 422);

    // An empty id would be an empty idempotency key downstream.
    let (status, body) = post_json(&hook, "{\"order_id\": \" \"}").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("the event id is empty"), "{body}");

    let big = format!("{{\"order_id\":\"X\",\"pad\":\"{}\"}}", "x".repeat(8000));
    let (status, body) = post_json(&hook, &big).await;
    assert_eq!(status, 413);
    // The listener's own refusals have the plugins' body shape.
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "payload-too-large", "{body}");

    let rejected = host.counter("weft_webhooks_rejected_total");
    let (status, body) = post_json(
        &format!("http://{}/hooks/nope", host.running.webhook_addr),
        "{}",
    )
    .await;
    assert_eq!(status, 404);
    // A misspelt source leaves a trace: counted (and logged), as received
    // and rejected: every request is received, so rejected never exceeds it.
    assert_eq!(host.counter("weft_webhooks_rejected_total"), rejected + 1);
    assert!(
        host.counter("weft_webhooks_received_total")
            >= host.counter("weft_webhooks_rejected_total")
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["kind"], "not-found", "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");

    // A method the source does not take (POST only, by default): 405 with
    // `Allow`, before the plugin runs.
    let (status, headers, body) = send_full("GET", &hook, "", &[]).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert!(body.contains("method-not-allowed"), "{body}");

    // None of it was stored or delivered.
    assert_eq!(host.counter("weft_events_accepted_total"), 0);
    assert_eq!(host.stats().pending, 0);
    assert_eq!(host.stats().dead, 0);

    // And a good one still goes through.
    let (status, _) = post_json(
        &hook,
        "{\"order_id\":\"OK-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}",
    )
    .await;
    assert_eq!(status, 202);
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    assert_eq!(inventory.requests().len(), 1);
    host.stop().await;
}

fn sign(secret_b64: &str, id: &str, ts: i64, body: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret_b64)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_signatures_are_checked() {
    let api = FakeApi::start().await;
    let secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let env_var = "WEFT_TEST_SIGNING_SECRET";
    std::env::set_var(env_var, format!("whsec_{secret}"));
    let config = format!(
        r#"
[plugins.signed]
builtin = "webhook-json"
config = {{ signing_secret = "shop", type = "signed.event" }}
secrets = {{ shop = {{ env = "{env_var}" }} }}

[plugins.out]
builtin = "http-post"
config = {{ url = "{origin}/in" }}
allowed_hosts = ["{origin}"]

[[routes]]
name = "r"
source = "signed"
sinks = ["out"]
"#,
        origin = api.origin()
    );
    let host = TestHost::start(&config).await;
    let hook = host.hook("signed");
    let body = "{\"hello\":\"world\"}";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // The headers of a webhook `id` sent at `ts` with `signature`.
    let signed = |id: &'static str, ts: i64, signature: String| {
        [
            ("content-type".to_string(), "application/json".to_string()),
            ("webhook-id".to_string(), id.to_string()),
            ("webhook-timestamp".to_string(), ts.to_string()),
            ("webhook-signature".to_string(), signature),
        ]
    };
    let send_signed = |body: &'static str, headers: [(String, String); 4]| {
        let hook = hook.clone();
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            send("POST", &hook, body, &headers).await
        }
    };

    let good = signed("msg_1", now, sign(secret, "msg_1", now, body));
    let (status, resp) = send_signed(body, good.clone()).await;
    assert_eq!(status, 202, "{resp}");
    assert!(
        resp.contains("msg_1"),
        "the webhook-id is the event id: {resp}"
    );

    // Tampered body.
    let (status, _) = send_signed("{\"hello\":\"evil\"}", good).await;
    assert_eq!(status, 401);
    // Wrong key.
    let bad = sign("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "msg_1", now, body);
    let (status, _) = send_signed(body, signed("msg_1", now, bad)).await;
    assert_eq!(status, 401);
    // Stale timestamp, correctly signed.
    let old = now - 3600;
    let stale = signed("msg_1", old, sign(secret, "msg_1", old, body));
    let (status, _) = send_signed(body, stale).await;
    assert_eq!(status, 401);
    // Unsigned.
    let (status, _) = post_json(&hook, body).await;
    assert_eq!(status, 401);
    // Correctly signed, base64 padding left off, among other signatures
    // (several `v1,` entries and other versions are allowed).
    let unpadded = sign(secret, "msg_2", now, body)
        .trim_end_matches('=')
        .to_string();
    let several = format!("v1a,whatever v1,AAAA {unpadded}");
    let (status, resp) = send_signed(body, signed("msg_2", now, several)).await;
    assert_eq!(status, 202, "{resp}");

    assert!(eventually(Duration::from_secs(30), || api.delivered().len() == 2).await);
    assert_eq!(
        api.requests().len(),
        2,
        "only the correctly signed webhooks were delivered"
    );
    host.stop().await;
}

/// Reads what the server sends until it closes the connection (or `limit`
/// passes, which fails the test: the server must hang up on its own).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a stalled connection open");
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_are_cut_off_and_nothing_is_stored() {
    use tokio::io::AsyncWriteExt;
    let (host, inventory, _accounting) =
        shop("header_read_timeout_ms = 2000\nbody_read_timeout_ms = 2000\n").await;
    let addr = host.running.webhook_addr;

    // Headers that never finish (slowloris): the connection is closed.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /hooks/shop-orders HTTP/1.1\r\nhost: weft\r\n")
        .await
        .unwrap();
    read_until_closed(&mut stalled, Duration::from_secs(30)).await;

    // A body that stops halfway: 408, and the connection is not kept.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /hooks/shop-orders HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"order_id\":\"SLOW-1\"",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stalled, Duration::from_secs(30)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Nothing was stored, and the host still serves everyone else.
    assert_eq!(host.stats().pending, 0);
    let (status, body) = post_json(
        &host.hook("shop-orders"),
        "{\"order_id\":\"OK-2\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    assert_eq!(inventory.delivered()[0].json()["order_id"], "OK-2");
    host.stop().await;
}

/// Open connections are capped (`server.max_connections`): idle keep-alive
/// ones hold their slot, a new one waits until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_wait_for_a_free_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, _inventory, _accounting) = shop("max_connections = 2\n").await;
    let addr = host.running.webhook_addr;
    let request = b"GET /nowhere HTTP/1.1\r\nhost: weft\r\n\r\n";
    // Sends one request and reads the start of its answer, if one comes
    // within `wait`.
    async fn ask(
        stream: &mut tokio::net::TcpStream,
        request: &[u8],
        wait: Duration,
    ) -> Option<String> {
        stream.write_all(request).await.unwrap();
        let mut buf = [0u8; 256];
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    }
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    for held in [&mut first, &mut second] {
        let answer = ask(held, request, Duration::from_secs(30)).await;
        assert!(answer.is_some_and(|a| a.starts_with("HTTP/1.1 404")));
    }
    // Both slots are held by idle keep-alive connections: a third client is
    // not served...
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        ask(&mut third, request, Duration::from_millis(500)).await,
        None
    );
    // ... until one of them goes away.
    drop(first);
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(30), third.read(&mut buf))
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    drop(second);
    host.stop().await;
}

/// A source's `methods` decide which requests reach its plugin: the
/// others get 405 and name the methods it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_takes_the_methods_its_config_names() {
    let inventory = FakeApi::start().await;
    let accounting = FakeApi::start().await;
    let config = shop_config(&inventory, &accounting).replace(
        "dedup_window_s = 86400",
        "dedup_window_s = 86400\nmethods = [\"GET\", \"POST\"]",
    );
    assert!(config.contains("methods = [\"GET\", \"POST\"]"), "{config}");
    let host = TestHost::start(&config).await;
    let hook = host.hook("shop-orders");
    // GET reaches the plugin now: webhook-json itself refuses it.
    let (status, body) = send("GET", &hook, "", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("POST"), "the plugin's own reason: {body}");
    let (status, headers, body) = send_full("PUT", &hook, "{}", &[]).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(
        headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("GET, POST")
    );
    assert_eq!(host.stats().pending, 0);
    host.stop().await;
}

/// The shop route with its source limited to one request a second (bursts
/// of one): the host, the inventory API and the source's webhook URL.
async fn shop_at_one_request_a_second() -> (TestHost, FakeApi, String) {
    let inventory = FakeApi::start().await;
    let accounting = FakeApi::start().await;
    let config =
        shop_config(&inventory, &accounting).replace("requests_per_s = 5000", "requests_per_s = 1");
    assert!(config.contains("requests_per_s = 1 }"), "{config}");
    let host = TestHost::start(&config).await;
    let hook = host.hook("shop-orders");
    (host, inventory, hook)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_rate_limit_gets_429_and_nothing_of_it_is_stored() {
    // Of ten requests sent back to back, the first is accepted and (unless
    // each took a second) the next ones are refused.
    let (host, inventory, hook) = shop_at_one_request_a_second().await;

    let mut accepted = Vec::new();
    let mut throttled = 0;
    for i in 0..10 {
        let order =
            format!("{{\"order_id\":\"RL-{i}\",\"items\":[{{\"quantity\":1,\"unit_price\":1}}]}}");
        let (status, headers, body) = send_full(
            "POST",
            &hook,
            &order,
            &[("content-type", "application/json")],
        )
        .await;
        match status {
            202 => accepted.push(format!("RL-{i}")),
            429 => {
                throttled += 1;
                let err: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(err["kind"], "too-many-requests");
                let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry >= 1, "{retry}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.first().map(String::as_str), Some("RL-0"));
    assert!(throttled > 0, "nothing was throttled");
    assert_eq!(accepted.len() + throttled, 10);

    // Exactly the accepted orders were stored and delivered.
    assert!(
        eventually(Duration::from_secs(30), || inventory.delivered().len()
            == accepted.len())
        .await
    );
    let mut delivered: Vec<String> = inventory
        .delivered()
        .iter()
        .map(|r| {
            r.json()["order_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    delivered.sort();
    accepted.sort();
    assert_eq!(delivered, accepted);
    assert_eq!(
        host.counter("weft_webhooks_throttled_total"),
        throttled as u64
    );
    assert!(eventually(Duration::from_secs(10), || host.stats().pending == 0).await);
    host.stop().await;
}

/// Only what the source accepts counts against its rate limit: requests its
/// plugin rejects (a stranger's, say) give their token back, so they cannot
/// use up the real sender's budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_source_rejects_do_not_use_up_its_rate_limit() {
    // No refill to speak of within the test: without refunds the first
    // rejected request would leave no token for anything after it.
    let (host, inventory, hook) = shop_at_one_request_a_second().await;
    for i in 0..10 {
        let (status, body) = post_json(&hook, &format!("not json {i}")).await;
        assert_eq!(status, 400, "rejected by the source, not throttled: {body}");
    }
    let (status, body) = post_json(
        &hook,
        "{\"order_id\":\"AFTER-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(host.counter("weft_webhooks_throttled_total"), 0);
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    host.stop().await;
}

/// A client sending its bodies slowly holds no rate-limit token (it is taken
/// once the body is in) and at most its address's share of the request
/// slots (`server.max_requests_per_client`): the real sender is still
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_rate_limit_token_and_only_their_clients_share_of_slots() {
    use tokio::io::AsyncWriteExt;
    let inventory = FakeApi::start().await;
    let accounting = FakeApi::start().await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_requests_per_client = 2\n{}",
        shop_config(&inventory, &accounting).replace("requests_per_s = 5000", "requests_per_s = 1")
    );
    let host = TestHost::start(&config).await;
    let hook = host.hook("shop-orders");
    // Two requests whose bodies never finish: each holds a request slot.
    let head = "POST /hooks/shop-orders HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{";
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(host.running.webhook_addr)
            .await
            .unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    assert!(
        eventually(Duration::from_secs(10), || host
            .counter("weft_webhooks_received_total")
            == 2)
        .await,
        "both slow requests are being read"
    );
    // A third request from the same address is over its share.
    let order = "{\"order_id\":\"SLOW-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}";
    let (status, headers, body) = send_full(
        "POST",
        &hook,
        order,
        &[("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_requests_per_client"), "{body}");
    assert_eq!(headers["retry-after"], "1");
    // One slow client goes away; the source's one token was never taken by
    // the slow requests, so the order is accepted.
    drop(slow.pop());
    // (Until the listener has seen that client go, its slot is still held.)
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = post_json(&hook, order).await;
        if status == 202 {
            break;
        }
        assert!(body.contains("max_requests_per_client"), "{status}: {body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    drop(slow);
    host.stop().await;
}

/// One client address holds at most `server.max_connections_per_client`
/// connections: past that its new ones are closed at accept (and counted),
/// while the ones it holds keep working; one given back makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, inventory, _accounting) = shop("max_connections_per_client = 2\n").await;
    let addr = host.running.webhook_addr;
    let get = b"GET /nowhere HTTP/1.1\r\nhost: weft\r\n\r\n";
    let mut buf = [0u8; 512];
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(get).await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
        held.push(stream);
    }
    // A third connection from the same address is closed unanswered.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(get).await;
    let read = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .expect("the refused connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(host.counter("weft_connections_refused_total"), 1);
    // The held ones still work.
    held[1].write_all(get).await.unwrap();
    let n = held[1].read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    // One goes away: a new connection gets its place and the order is taken.
    drop(held.remove(0));
    let order = "{\"order_id\":\"CONN-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // (Until the listener has seen the client go, its place is still
        // taken, and a new connection is closed: an error, not a panic.)
        let hook = host.hook("shop-orders");
        let json = [("content-type", "application/json")];
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            weft_tests::try_send("POST", &hook, order, &json),
        )
        .await;
        if let Ok(Ok((202, _, _))) = sent {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection's place was never given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    drop(held);
    host.stop().await;
}

/// When the queue stops working outside a shutdown (its writer thread gone),
/// webhooks get 503 and Weft reports itself failed, so that `weft serve`
/// exits with an error and a supervisor restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_stops_working_makes_weft_report_itself_failed() {
    let (host, _inventory, _accounting) = shop("").await;
    host.running.router.queue().close().await.unwrap();
    let order = "{\"order_id\":\"LOST-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}";
    let (status, body) = post_json(&host.hook("shop-orders"), order).await;
    assert_eq!(status, 503, "{body}");
    let reason = tokio::time::timeout(Duration::from_secs(10), host.running.failed())
        .await
        .expect("reported failed");
    assert!(reason.contains("queue stopped working"), "{reason}");
    host.stop().await;
}

/// ... also when nothing is happening: a watchdog notices without traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_stops_working_while_idle_is_noticed() {
    let (host, _inventory, _accounting) = shop("").await;
    host.running.router.queue().close().await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(30), host.running.failed())
        .await
        .expect("reported failed without any request");
    assert!(reason.contains("queue stopped working"), "{reason}");
    host.stop().await;
}

/// A keep-alive connection with nothing in progress is closed after
/// `server.idle_timeout_ms`, giving its slot back; one whose request is
/// still being worked on is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_give_their_slot_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (host, inventory, _accounting) =
        shop("max_connections = 1\nidle_timeout_ms = 1000\n").await;
    let addr = host.running.webhook_addr;
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET /nowhere HTTP/1.1\r\nhost: weft\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"));
    // Kept alive, then idle: the server closes it (end of stream).
    let closed = tokio::time::timeout(Duration::from_secs(30), first.read(&mut buf))
        .await
        .expect("the idle connection is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Its one slot is free again: the next client is served.
    let (status, body) = post_json(
        &host.hook("shop-orders"),
        "{\"order_id\":\"IDLE-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // A request that takes longer than the idle timeout is not cut off:
    // its body arrives in two parts, further apart than the timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let order = "{\"order_id\":\"IDLE-2\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}";
    let head = format!(
        "POST /hooks/shop-orders HTTP/1.1\r\nhost: weft\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        order.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&order.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    slow.write_all(&order.as_bytes()[10..]).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(30), slow.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 2).await);
    host.stop().await;
}

/// `server.admin_listen = "off"`: no admin listener (and no admin token
/// kept), webhooks work as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_runs_without_an_admin_listener() {
    let (host, inventory, _accounting) = shop("admin_listen = \"off\"").await;
    assert_eq!(host.running.admin_addr, None);
    assert!(!host.dir.path().join("admin-token").exists());
    let (status, body) = post_json(
        &host.hook("shop-orders"),
        "{\"order_id\":\"NOADMIN-1\",\"items\":[{\"quantity\":1,\"unit_price\":1}]}",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(eventually(Duration::from_secs(30), || inventory.delivered().len() == 1).await);
    host.stop().await;
}
