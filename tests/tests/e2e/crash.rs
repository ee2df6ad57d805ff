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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().await;
    // The sink is failing when the crash comes, so acknowledged events are
    // sitting in the queue (fresh or waiting for a retry).
    api.fail_next(150, 503, &[]);
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(dir.path(), &api, webhook, admin);
    let log = dir.path().join("weft.log");

    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..3 {
        let weft =
            WeftProcess::spawn(std::path::Path::new(BINARY), &config, webhook, admin, &log).await;
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

    // Restart; everything acknowledged gets delivered.
    let weft =
        WeftProcess::spawn(std::path::Path::new(BINARY), &config, webhook, admin, &log).await;
    let all_delivered = eventually(Duration::from_secs(120), || {
        let delivered: HashSet<String> = api
            .delivered()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_string))
            .collect();
        acked.is_subset(&delivered)
    })
    .await;
    let delivered: HashSet<String> = api
        .delivered()
        .iter()
        .filter_map(|r| r.header("ce-id").map(str::to_string))
        .collect();
    let missing: Vec<_> = acked.difference(&delivered).take(10).collect();
    assert!(
        all_delivered,
        "{} acknowledged events never delivered, e.g. {missing:?}; log: {}",
        acked.len() - acked.intersection(&delivered).count(),
        log.display()
    );
    for r in api.delivered() {
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
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start().await;
    let webhook: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = write_config(dir.path(), &api, webhook, admin);
    let log = dir.path().join("weft.log");

    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..4 {
        let weft =
            WeftProcess::spawn(std::path::Path::new(BINARY), &config, webhook, admin, &log).await;
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

    let weft =
        WeftProcess::spawn(std::path::Path::new(BINARY), &config, webhook, admin, &log).await;
    let delivered_ids = || -> HashSet<String> {
        api.delivered()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_string))
            .collect()
    };
    let all_delivered = eventually(Duration::from_secs(120), || {
        acked.is_subset(&delivered_ids())
    })
    .await;
    let missing: Vec<_> = acked
        .difference(&delivered_ids())
        .take(10)
        .cloned()
        .collect();
    assert!(
        all_delivered,
        "{} of {} acknowledged events never delivered, e.g. {missing:?}; log: {}",
        acked.difference(&delivered_ids()).count(),
        acked.len(),
        log.display()
    );
    let deliveries = api.delivered().len();
    eprintln!(
        "{} acknowledged, {} deliveries ({} redelivered after a kill)",
        acked.len(),
        deliveries,
        deliveries.saturating_sub(delivered_ids().len())
    );
    assert!(weft.terminate(), "weft exits cleanly on SIGTERM");
}
