//! The host process is SIGKILLed right after acknowledging webhooks; after a
//! restart every acknowledged event is delivered.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weft_tests::{
    eventually, free_port, post_json, shared_cache_dir, try_send, FakeApi, WeftProcess,
};

const BINARY: &str = env!("CARGO_BIN_EXE_weft-under-test");

fn write_config(
    dir: &std::path::Path,
    api: &FakeApi,
    webhook: SocketAddr,
    admin: SocketAddr,
    dedup_window_s: u64,
) -> std::path::PathBuf {
    let text = format!(
        r#"
[server]
listen = "{webhook}"
admin_listen = "{admin}"
shutdown_grace_ms = 2000

[storage]
data_dir = "{data}"
cache_dir = "{cache}"

[retry]
initial_ms = 300
multiplier = 1.5
max_attempts = 50
jitter = 0.2

[plugins.in]
builtin = "webhook-json"
config = {{ id_pointer = "/id" }}
dedup_window_s = {dedup_window_s}

[plugins.map]
builtin = "json-map"
config = {{ mapping = '[{{"op":"set","path":"/seen","value":true}}]' }}

[plugins.out]
builtin = "http-post"
config = {{ url = "{origin}/deliver" }}
allowed_hosts = ["{origin}"]

[[routes]]
name = "r"
source = "in"
transforms = ["map"]
sinks = ["out"]
"#,
        data = dir.join("data").display(),
        cache = shared_cache_dir().display(),
        origin = api.origin()
    );
    let path = dir.join("weft.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A Weft to kill and restart: its data dir, ports, config and log, and the
/// stand-in sink it delivers to.
struct Rig {
    _dir: tempfile::TempDir,
    api: FakeApi,
    webhook: SocketAddr,
    admin: SocketAddr,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Rig {
    async fn new(api: FakeApi) -> Rig {
        Rig::with_dedup(api, 0).await
    }

    /// A rig whose source accepts an event id once per `dedup_window_s`.
    async fn with_dedup(api: FakeApi, dedup_window_s: u64) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = write_config(dir.path(), &api, webhook, admin, dedup_window_s);
        let log = dir.path().join("weft.log");
        Rig {
            _dir: dir,
            api,
            webhook,
            admin,
            config,
            log,
        }
    }

    /// Starts the real binary on the rig's data dir.
    async fn spawn(&self) -> WeftProcess {
        WeftProcess::spawn(
            std::path::Path::new(BINARY),
            &self.config,
            self.webhook,
            self.admin,
            &self.log,
        )
        .await
    }

    /// The admin token the first start generated into the data dir.
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("data").join("admin-token"))
            .expect("admin token kept in the data dir")
            .trim()
            .to_string()
    }

    /// Calls the admin API; status and JSON.
    async fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.admin_token());
        let (status, _, body) = try_send(
            method,
            &format!("http://{}{path}", self.admin),
            "",
            &[("authorization", &auth)],
        )
        .await
        .expect("admin API reachable");
        (status, serde_json::from_str(&body).unwrap_or_default())
    }

    /// The ids of the dead letters listed, oldest first.
    async fn dead_letter_ids(&self) -> Vec<u64> {
        let (_, body) = self.admin("GET", "/api/dead-letters?data=false").await;
        body["dead_letters"]
            .as_array()
            .map(|l| l.iter().filter_map(|d| d["id"].as_u64()).collect())
            .unwrap_or_default()
    }

    /// The ids the sink has received (each once).
    fn delivered_ids(&self) -> HashSet<String> {
        self.api.delivered_ids().into_iter().collect()
    }

    /// Waits until every id in `acked` has reached the sink; fails naming
    /// some that did not.
    async fn assert_all_delivered(&self, acked: &HashSet<String>) {
        let all_delivered = eventually(Duration::from_secs(120), || {
            acked.is_subset(&self.delivered_ids())
        })
        .await;
        let delivered = self.delivered_ids();
        let missing: Vec<_> = acked.difference(&delivered).take(10).collect();
        assert!(
            all_delivered,
            "{} of {} acknowledged events never delivered, e.g. {missing:?}; log: {}",
            acked.difference(&delivered).count(),
            acked.len(),
            self.log.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let api = FakeApi::start().await;
    // The sink is down when the crashes come, so acknowledged events are
    // sitting in the queue (fresh, waiting for a retry, or waiting for the
    // sink's circuit breaker).
    api.set_default(503);
    let rig = Rig::new(api).await;
    let webhook = rig.webhook;

    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..3 {
        let weft = rig.spawn().await;
        // 8 concurrent clients, 25 events each.
        let mut clients = Vec::new();
        for c in 0..8 {
            let url = format!("http://{webhook}/hooks/in");
            clients.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..25 {
                    let id = format!("r{round}-c{c}-e{i}");
                    let (status, _) =
                        post_json(&url, &format!("{{\"id\":\"{id}\",\"n\":{i}}}")).await;
                    if status == 202 {
                        ids.push(id);
                    }
                }
                ids
            }));
        }
        for c in clients {
            acked.extend(c.await.unwrap());
        }
        weft.kill9();
    }
    assert_eq!(acked.len(), 600, "every webhook was acknowledged");

    // Restart, with the sink back; everything acknowledged gets delivered.
    rig.api.set_default(200);
    let mut weft = rig.spawn().await;
    // A SIGHUP (closed terminal, a service manager's reload) does not stop it.
    weft.hangup();
    rig.assert_all_delivered(&acked).await;
    assert!(weft.running(), "weft survives SIGHUP");
    let (status, _) = post_json(
        &format!("http://{webhook}/hooks/in"),
        "{\"id\":\"after-hup\",\"n\":0}",
    )
    .await;
    assert_eq!(status, 202, "and keeps serving");
    for r in rig.api.delivered() {
        assert_eq!(
            r.json()["seen"],
            true,
            "delivered events went through the transform"
        );
    }
    assert!(weft.terminate(), "weft exits cleanly on SIGTERM");
}

/// SIGKILL in the middle of the traffic, with a working sink: webhooks are
/// being acknowledged, delivered and removed when the process dies (and
/// checkpoints come and go). Every acknowledged event is delivered after the
/// restart; nothing acknowledged depends on the kill's timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_loses_no_acknowledged_event() {
    let rig = Rig::new(FakeApi::start().await).await;
    let webhook = rig.webhook;

    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..4 {
        let weft = rig.spawn().await;
        // 8 clients post until the process is gone; the kill comes after
        // 150 acknowledgements in this round, while they keep posting.
        let acks = Arc::new(AtomicUsize::new(0));
        let mut clients = Vec::new();
        for c in 0..8 {
            let (url, acks) = (format!("http://{webhook}/hooks/in"), acks.clone());
            clients.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0.. {
                    let id = format!("m{round}-c{c}-e{i}");
                    let body = format!("{{\"id\":\"{id}\",\"n\":{i}}}");
                    let sent =
                        try_send("POST", &url, &body, &[("content-type", "application/json")])
                            .await;
                    match sent {
                        Ok((202, _, _)) => {
                            ids.push(id);
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        // The process is gone.
                        Err(_) => break,
                    }
                }
                ids
            }));
        }
        let enough = eventually(Duration::from_secs(60), || {
            acks.load(Ordering::Relaxed) >= 150
        })
        .await;
        assert!(enough, "round {round}: webhooks were acknowledged");
        weft.kill9();
        for c in clients {
            acked.extend(c.await.unwrap());
        }
    }

    let weft = rig.spawn().await;
    rig.assert_all_delivered(&acked).await;
    let deliveries = rig.api.delivered().len();
    eprintln!(
        "{} acknowledged, {} deliveries ({} redelivered after a kill)",
        acked.len(),
        deliveries,
        deliveries.saturating_sub(rig.delivered_ids().len())
    );
    assert!(weft.terminate(), "weft exits cleanly on SIGTERM");
}

/// A dead letter deleted through the admin API stays deleted when the
/// process is SIGKILLed right after the answer: the deletion is journaled
/// before it is answered, so redoing the journal cannot bring it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_dead_letter_stays_deleted_after_sigkill() {
    let api = FakeApi::start().await;
    // Refused for good: every event is dead-lettered at its first attempt.
    api.set_default(400);
    let rig = Rig::new(api).await;
    let weft = rig.spawn().await;
    let webhook = rig.webhook;
    for i in 0..4 {
        let (status, _) = post_json(
            &format!("http://{webhook}/hooks/in"),
            &format!("{{\"id\":\"refused-{i}\",\"n\":{i}}}"),
        )
        .await;
        assert_eq!(status, 202);
    }
    let mut ids = Vec::new();
    for _ in 0..600 {
        ids = rig.dead_letter_ids().await;
        if ids.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ids.len(), 4, "every event dead-lettered");
    let (status, _) = rig
        .admin("DELETE", &format!("/api/dead-letters/{}", ids[0]))
        .await;
    assert_eq!(status, 200);
    let (status, body) = rig.admin("DELETE", "/api/dead-letters?limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"], serde_json::json!(ids[1..3]));
    weft.kill9();

    let weft = rig.spawn().await;
    assert_eq!(
        rig.dead_letter_ids().await,
        ids[3..],
        "the deleted stay deleted"
    );
    assert!(weft.terminate());
}

/// With `dedup_window_s` on the source, a webhook sent again is answered
/// `202` as a duplicate and not stored a second time: before a SIGKILL, and
/// after the restart too (the keys are as durable as the events). The sink
/// fails until then, so no delivery is in flight at the kill, and every
/// event arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_webhook_is_a_duplicate_before_and_after_sigkill() {
    let api = FakeApi::start().await;
    api.set_default(503);
    let rig = Rig::with_dedup(api, 3600).await;
    let url = format!("http://{}/hooks/in", rig.webhook);
    let post = |id: String| {
        let url = url.clone();
        async move {
            let (status, body) = post_json(&url, &format!("{{\"id\":\"{id}\",\"n\":1}}")).await;
            assert_eq!(status, 202, "{body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["ids"], serde_json::json!([id]));
            body["duplicates"].clone()
        }
    };
    let ids: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    let weft = rig.spawn().await;
    for id in &ids {
        assert_eq!(
            post(id.clone()).await,
            serde_json::Value::Null,
            "first time: stored"
        );
    }
    for id in &ids {
        assert_eq!(
            post(id.clone()).await,
            serde_json::json!([id]),
            "sent again"
        );
    }
    weft.kill9();

    let weft = rig.spawn().await;
    for id in &ids {
        assert_eq!(
            post(id.clone()).await,
            serde_json::json!([id]),
            "sent again after the kill"
        );
    }
    assert_eq!(post("order-new".into()).await, serde_json::Value::Null);
    let auth = format!("Bearer {}", rig.admin_token());
    let (_, _, metrics) = try_send(
        "GET",
        &format!("http://{}/metrics", rig.admin),
        "",
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "weft_events_duplicate_total 20"),
        "the restarted Weft counted its 20 duplicates: {metrics}"
    );
    rig.api.set_default(200);
    let mut expected: HashSet<String> = ids.iter().cloned().collect();
    expected.insert("order-new".into());
    rig.assert_all_delivered(&expected).await;
    // Every event once: no duplicate was stored, and nothing was in flight
    // at the kill.
    let mut delivered: Vec<String> = rig
        .api
        .delivered()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect();
    delivered.sort();
    let mut once: Vec<String> = expected.into_iter().collect();
    once.sort();
    assert_eq!(delivered, once);
    assert!(weft.terminate());
}
