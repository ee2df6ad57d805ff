//! The webhook relay benchmark: clients POST ~1 KiB JSON orders; Weft runs
//! source → json-map → http-post to a local sink server. Beside it, in the
//! same run: the yardstick, a plain non-durable hyper relay doing the same
//! work in Rust (receive, apply the route's transform, forward, answer); the
//! same relay forwarding bytes without the transform; a straightforward
//! durable relay (sled insert + group-commit fdatasync before the 2xx,
//! transform, forward, remove; no plugins) to show what durability on sled
//! alone costs on this machine; and the best case for any durable relay here
//! (each group commit one write into a preallocated file + fdatasync, no
//! index, no plugins): the ceiling a durable design can reach on this disk.
//!
//! Reports delivered events/s, end-to-end p50/p99 (client send → sink
//! receipt), host CPU per event (and the share of the storage writer thread),
//! peak RSS, and per-stage wall time from Weft's own counters; then a
//! micro-benchmark of one plugin hop (instantiate from the pool + call with a
//! 1 KiB event).
//!
//! `cargo bench -p weft-tests --bench relay [-- SECONDS]`; `-- hop` runs
//! only the hop micro-benchmark; `-- languages` compares one connector
//! (order-priority) in Rust, JavaScript and Python: compile, cached load,
//! per-call cost with a fresh instance and on a warm one; `-- sink-hop
//! [current-thread]` compares one http-post sink call with a plain hyper
//! client round trip (`SINK_HOP_N` calls, default 5000; `SINK_HOP_REUSE=N`
//! sets the sink's `instance_reuse`).
//!
//! `-- weft-only [SECONDS]` skips the plain relay (for profiling: each Weft
//! pid is printed); `BENCH_CLIENTS` (default 16), `BENCH_WORKERS` (the
//! `server.workers` setting, default 64) and `BENCH_COMMIT_DELAY_US` (the
//! `storage.commit_delay_us` setting, default: the product default) vary it;
//! `BENCH_CONFIG=text` runs only the Weft configurations whose name contains
//! `text` (e.g. `BENCH_CONFIG="reuse = 1000, sink"`); `BENCH_ROUNDS=N` runs
//! the whole set N times and adds a table of medians and ranges (this VM's
//! speed drifts by a quarter within an hour); `BENCH_WEFT_BIN=path` runs
//! another build of Weft (an A/B comparison in the same hour);
//! `BENCH_RELAYS=text` runs only the yardsticks whose name contains `text`
//! (and the plain relay).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

/// The allocator the `weft` binary ships with, so that the in-process
/// micro-benchmarks (plugin hop, sink hop) measure Weft as it runs; the two
/// yardstick relays (child processes of this binary) get it too.
#[global_allocator]
static ALLOCATOR: weft::Allocator = weft::Allocator;

const WARMUP: Duration = Duration::from_secs(2);

/// The yardstick: the same workload (receive, transform, forward), not durable.
const PLAIN: &str = "plain hyper relay (transform in Rust, not durable)";
/// The plain relay without the transform: bytes in, bytes out.
const BYTES_ONLY: &str = "byte-forwarding hyper relay (no transform, not durable)";
/// The straightforward durable relay: sled, group commit, no plugins.
const DURABLE_SLED: &str = "straightforward durable relay (sled, no plugins)";
/// The best-case durable relay: group commit into a preallocated file.
const DURABLE_FILE: &str = "best-case durable relay (preallocated file, no plugins)";
/// The best-case durable relay running the route's three plugins.
const DURABLE_PLUGINS: &str =
    "best-case durable relay with the route's three plugins (preallocated file, no queue)";

/// The bench route's `json-map` mapping: rename the customer's email, count
/// the items, sum price × quantity, drop the note.
const ROUTE_MAPPING: &str = r#"[{"op":"rename","from":"/customer/email","to":"/customer_email"},{"op":"count","from":"/items","to":"/line_count"},{"op":"sum","from":"/items","field":"/unit_price","times":"/quantity","to":"/total"},{"op":"drop","path":"/note"}]"#;

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn order(i: u64, client: usize) -> String {
    let pad = "x".repeat(600);
    format!(
        r#"{{"order_id":"c{client}-{i}","sent_ns":{},"customer":{{"email":"buyer{i}@example.com","name":"Buyer {i}"}},"items":[{{"sku":"MUG-01","quantity":2,"unit_price":8.5}},{{"sku":"TEE-M","quantity":1,"unit_price":19.0}}],"note":"{pad}"}}"#,
        wall_ns()
    )
}

/// The downstream service: answers 200 and records latency from `sent_ns`.
struct Sink {
    addr: SocketAddr,
    measuring: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    latencies: Arc<Mutex<Vec<u64>>>,
}

async fn start_sink() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(1 << 20)));
    let (m, c, l) = (measuring.clone(), count.clone(), latencies.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (m, c, l) = (m.clone(), c.clone(), l.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (m, c, l) = (m.clone(), c.clone(), l.clone());
                    async move {
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        if m.load(Ordering::Relaxed) {
                            let now = wall_ns();
                            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                                if let Some(sent) = v["sent_ns"].as_u64() {
                                    l.lock().unwrap().push(now.saturating_sub(sent));
                                }
                            }
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Sink {
        addr,
        measuring,
        count,
        latencies,
    }
}

/// The pooled keep-alive client both yardstick relays forward with.
type RelayClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn relay_client() -> RelayClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// POSTs `body` to `sink`; the sink's status, or 502 if it could not be reached.
async fn forward(client: &RelayClient, sink: &str, body: Bytes) -> http::StatusCode {
    let fwd = Request::post(sink)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    match client.request(fwd).await {
        Ok(r) => {
            let status = r.status();
            let _ = r.into_body().collect().await;
            status
        }
        Err(_) => http::StatusCode::BAD_GATEWAY,
    }
}

/// Serves HTTP/1 on `port`, answering every request with the status
/// `handle` returns for its body.
async fn serve_relay<F, Fut>(port: u16, handle: F)
where
    F: Fn(Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::StatusCode> + Send + 'static,
{
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handle = handle.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = handle(body).await;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// The bench route's transform written directly in Rust, as a hand-written
/// relay would do it: the same four operations as the json-map mapping in
/// [`weft_config`] (rename the customer's email, count the items, sum
/// price × quantity, drop the note) on a parsed JSON document. `None` when
/// the body is not a JSON object.
fn transform_order(body: &[u8]) -> Option<Bytes> {
    let mut order: serde_json::Value = serde_json::from_slice(body).ok()?;
    let doc = order.as_object_mut()?;
    if let Some(email) = doc
        .get_mut("customer")
        .and_then(|c| c.as_object_mut())
        .and_then(|c| c.remove("email"))
    {
        doc.insert("customer_email".into(), email);
    }
    let items = doc.get("items").and_then(|i| i.as_array());
    let count = items.map_or(0, |i| i.len());
    let total: f64 = items.map_or(0.0, |items| {
        items
            .iter()
            .map(|i| {
                i["unit_price"].as_f64().unwrap_or(0.0) * i["quantity"].as_f64().unwrap_or(0.0)
            })
            .sum()
    });
    doc.insert("line_count".into(), count.into());
    doc.insert("total".into(), total.into());
    doc.remove("note");
    serde_json::to_vec(&order).ok().map(Bytes::from)
}

/// The plain relay (run in a child process): receive, transform, forward,
/// answer; nothing stored. The yardstick for "same workload, no durability".
/// With `transform = false` it forwards the bytes as received (a lower bound
/// on what any relay costs here, reported beside it).
async fn plain_relay(port: u16, sink: String, transform: bool) {
    let client = relay_client();
    let sink: Arc<str> = sink.into();
    serve_relay(port, move |body| {
        let (client, sink) = (client.clone(), sink.clone());
        async move {
            let body = if transform {
                match transform_order(&body) {
                    Some(b) => b,
                    None => return http::StatusCode::BAD_REQUEST,
                }
            } else {
                body
            };
            forward(&client, &sink, body).await
        }
    })
    .await;
}

/// A write waiting for the durable relay's next group commit.
type PendingWrite = (u64, Bytes, tokio::sync::oneshot::Sender<()>);

/// The straightforward durable relay (run in a child process), the second
/// yardstick: sled insert + group-commit flush and fdatasync before the 2xx,
/// then transform (as [`transform_order`]), forward with a pooled keep-alive
/// client, and remove the record after the sink's 2xx. No plugins, no
/// routing, no retry schedule: what durability on sled costs without the
/// rest of Weft.
async fn durable_relay(port: u16, sink: String, dir: std::path::PathBuf) {
    let db = sled::Config::new().path(&dir).open().unwrap();
    let log = std::fs::File::open(dir.join("db")).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<PendingWrite>();
    let writer_db = db.clone();
    // Named "sled-…" so that the storage-thread CPU column counts it.
    let writer = std::thread::Builder::new().name("sled-group-commit".into());
    let _ = writer.spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            for (id, body, _) in &group {
                writer_db.insert(id.to_be_bytes(), body.as_ref()).unwrap();
            }
            writer_db.flush().unwrap();
            log.sync_data().unwrap();
            for (_, _, done) in group {
                let _ = done.send(());
            }
        }
    });
    let tx = Arc::new(Mutex::new(tx));
    let next_id = Arc::new(AtomicU64::new(0));
    let client = relay_client();
    let sink: Arc<str> = sink.into();
    serve_relay(port, move |body| {
        let (client, sink, db, tx) = (client.clone(), sink.clone(), db.clone(), tx.clone());
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        async move {
            let (done, durable) = tokio::sync::oneshot::channel();
            tx.lock().unwrap().send((id, body.clone(), done)).unwrap();
            let _ = durable.await;
            tokio::spawn(async move {
                let body = transform_order(&body).unwrap_or(body);
                while !forward(&client, &sink, body.clone()).await.is_success() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                db.remove(id.to_be_bytes()).unwrap();
            });
            http::StatusCode::ACCEPTED
        }
    })
    .await;
}

/// A write waiting for the best-case relays' next group commit: the bytes,
/// and who to tell once they are durable.
type FileWrite = (Bytes, tokio::sync::oneshot::Sender<()>);

/// The best-case relays' durable write: a thread that writes each group of
/// waiting writes as one `pwrite` into a preallocated file in `dir` and
/// `fdatasync`s it (no metadata to update, as in Weft's journal) before
/// answering them.
fn group_commit_file(dir: &Path) -> std::sync::mpsc::Sender<FileWrite> {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 64 << 20;
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::create(dir.join("journal")).unwrap();
    // Written, not just allocated: later syncs then have no extent to convert.
    let zeros = vec![0u8; 1 << 20];
    for i in 0..SIZE / zeros.len() as u64 {
        file.write_all_at(&zeros, i * zeros.len() as u64).unwrap();
    }
    file.sync_all().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<FileWrite>();
    let writer = std::thread::Builder::new().name("sled-journal".into());
    let _ = writer.spawn(move || {
        let (mut at, mut frame) = (0u64, Vec::new());
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            frame.clear();
            for (body, _) in &group {
                frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
                frame.extend_from_slice(body);
            }
            if at + frame.len() as u64 > SIZE {
                at = 0;
            }
            file.write_all_at(&frame, at).unwrap();
            file.sync_data().unwrap();
            at += frame.len() as u64;
            for (_, done) in group {
                let _ = done.send(());
            }
        }
    });
    tx
}

/// The best case for any durable relay on this disk (run in a child
/// process), the third yardstick: each group of webhooks is written as one
/// `pwrite` into a preallocated append-only file and `fdatasync`ed before the
/// 2xx (no metadata to update, as in Weft's journal), then transformed and
/// forwarded as [`durable_relay`] does. No index, no removal, no recovery, no
/// plugins: a lower bound on what durability costs here, not a queue.
async fn journal_relay(port: u16, sink: String, dir: std::path::PathBuf) {
    let tx = Arc::new(Mutex::new(group_commit_file(&dir)));
    let client = relay_client();
    let sink: Arc<str> = sink.into();
    serve_relay(port, move |body| {
        let (client, sink, tx) = (client.clone(), sink.clone(), tx.clone());
        async move {
            let (done, durable) = tokio::sync::oneshot::channel();
            tx.lock().unwrap().send((body.clone(), done)).unwrap();
            let _ = durable.await;
            tokio::spawn(async move {
                let body = transform_order(&body).unwrap_or(body);
                while !forward(&client, &sink, body.clone()).await.is_success() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            http::StatusCode::ACCEPTED
        }
    })
    .await;
}

/// The three plugins of the bench route ([`weft_config`]) loaded into one
/// runtime, with `instance_reuse` as the tuned Weft configuration has it:
/// webhook-json (source), json-map (transform), http-post (sink, batches of
/// up to 64).
fn route_plugins(
    sink: &str,
) -> (
    weft::runtime::Plugin,
    weft::runtime::Plugin,
    weft::runtime::Plugin,
) {
    let cache = weft_tests::shared_cache_dir();
    let runtime = Arc::new(weft::runtime::Runtime::new(&cache).unwrap());
    let limits = |max_batch| weft::config::Limits {
        instance_reuse: 1000,
        max_batch,
        ..Default::default()
    };
    let source = weft_tests::load_plugin(
        &runtime,
        &weft_tests::builtin("webhook-json"),
        &[
            ("id_pointer", "/order_id".to_string()),
            ("type", "com.shop.order.created".to_string()),
        ],
        vec![],
        limits(1),
    )
    .unwrap();
    let transform = weft_tests::load_plugin(
        &runtime,
        &weft_tests::builtin("json-map"),
        &[("mapping", ROUTE_MAPPING.to_string())],
        vec![],
        limits(1),
    )
    .unwrap();
    let origin = sink.trim_end_matches("/orders");
    let post = weft_tests::load_plugin(
        &runtime,
        &weft_tests::builtin("http-post"),
        &[("url", sink.to_string())],
        vec![weft::runtime::egress::HostPattern::parse(origin).unwrap()],
        limits(64),
    )
    .unwrap();
    (source, transform, post)
}

/// The best case for Weft's design on this machine (run in a child
/// process), the fourth yardstick: [`journal_relay`]'s durable write, with
/// the bench route's three plugins doing the work in Weft's runtime (the
/// source turns the request into an event before the write; after the 2xx
/// json-map transforms it and http-post delivers it, up to 64 ready events
/// per call, as the tuned Weft configuration does). No queue: no record
/// encoding, no removal, no routing, no retries, no recovery, no metrics.
/// What Weft does beyond this is what being a queue costs.
async fn plugin_relay(port: u16, sink: String, dir: std::path::PathBuf) {
    let tx = Arc::new(Mutex::new(group_commit_file(&dir)));
    let (source, transform, post) = route_plugins(&sink);
    let (source, transform, post) = (Arc::new(source), Arc::new(transform), Arc::new(post));
    // Transformed events wait here for the sink; one dispatcher sends every
    // ready one (up to 64) per sink call, calls running concurrently.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<weft::event::Event>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(64);
        while ready_rx.recv_many(&mut batch, 64).await > 0 {
            let events = std::mem::take(&mut batch);
            let post = post.clone();
            tokio::spawn(async move {
                let outcomes = post.deliver_batch(&events).await.unwrap();
                assert!(outcomes.iter().all(|o| matches!(
                    o,
                    weft::runtime::bindings::wit::DeliveryOutcome::Delivered
                )));
            });
        }
    });
    serve_relay(port, move |body| {
        let (source, transform, tx, ready) = (
            source.clone(),
            transform.clone(),
            tx.clone(),
            ready_tx.clone(),
        );
        async move {
            let request = weft::runtime::bindings::wit::WebhookRequest {
                method: "POST".into(),
                path: "/hooks/orders".into(),
                query: String::new(),
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.to_vec(),
            };
            let Ok(Ok(events)) = source.receive(request).await else {
                return http::StatusCode::BAD_REQUEST;
            };
            let (done, durable) = tokio::sync::oneshot::channel();
            let data: Vec<u8> = events.iter().flat_map(|e| e.data.iter().copied()).collect();
            tx.lock().unwrap().send((data.into(), done)).unwrap();
            let _ = durable.await;
            tokio::spawn(async move {
                for event in events {
                    if let Ok(Ok(out)) = transform.transform(event).await {
                        for e in out {
                            let _ = ready.send(e);
                        }
                    }
                }
            });
            http::StatusCode::ACCEPTED
        }
    })
    .await;
}

/// Clients POST as fast as they get answers, until `stop`.
async fn load(url: String, clients: usize, stop: Arc<AtomicBool>) -> u64 {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (addr, path, stop) = (addr.clone(), uri.path().to_string(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut ok = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = Request::post(&path)
                    .header("host", &addr)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(order(i, c))))
                    .unwrap();
                if sender.ready().await.is_err() {
                    break;
                }
                match sender.send_request(req).await {
                    Ok(r) => {
                        if r.status().is_success() {
                            ok += 1;
                        }
                        let _ = r.into_body().collect().await;
                    }
                    Err(_) => break,
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total
}

/// utime + stime of a process (or one of its threads), in seconds.
fn cpu_seconds(stat_path: &Path) -> f64 {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    let after = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// CPU seconds of the threads of `pid` whose name starts with `prefix`.
fn thread_cpu(pid: u32, prefix: &str) -> f64 {
    let mut total = 0.0;
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for e in entries.flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim().starts_with(prefix) {
                total += cpu_seconds(&e.path().join("stat"));
            }
        }
    }
    total
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1e6
}

struct Result {
    name: String,
    clients: usize,
    /// Which round of `BENCH_ROUNDS` it was measured in.
    round: usize,
    acked_per_s: f64,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_event: f64,
    storage_cpu_ms_per_event: f64,
    rss_mib: f64,
    stages: String,
}

async fn measure(
    name: &str,
    pid: u32,
    url: String,
    sink: &Sink,
    clients: usize,
    seconds: u64,
    weft_admin: Option<(SocketAddr, String)>,
) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let load_task = tokio::spawn(load(url, clients, stop.clone()));
    tokio::time::sleep(WARMUP).await;
    sink.latencies.lock().unwrap().clear();
    sink.count.store(0, Ordering::Relaxed);
    let stat = format!("/proc/{pid}/stat");
    let cpu0 = cpu_seconds(Path::new(&stat));
    let storage0 = thread_cpu(pid, "weft-queue") + thread_cpu(pid, "sled");
    let stages0 = match &weft_admin {
        Some((a, t)) => counters(*a, t).await,
        None => Vec::new(),
    };
    sink.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    sink.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(Path::new(&stat)) - cpu0;
    let storage = thread_cpu(pid, "weft-queue") + thread_cpu(pid, "sled") - storage0;
    let stages1 = match &weft_admin {
        Some((a, t)) => counters(*a, t).await,
        None => Vec::new(),
    };
    stop.store(true, Ordering::Relaxed);
    let acked = load_task.await.unwrap_or(0);
    let delivered = sink.count.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *sink.latencies.lock().unwrap());
    lat.sort_unstable();
    let per_event = |s: f64| {
        if delivered > 0 {
            s * 1e3 / delivered as f64
        } else {
            f64::NAN
        }
    };
    let stages = if stages0.is_empty() {
        String::new()
    } else {
        let delta = |k: &str| {
            let a = stages0
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or(0);
            let b = stages1
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
                .unwrap_or(0);
            (b - a) as f64 / 1e6 / delivered.max(1) as f64
        };
        let calls = delta("weft_sink_calls_total") * 1e6;
        let syncs = delta("queue_syncs") * 1e6;
        // The webhook's whole stay in Weft, per answered request.
        let answered = delta("webhooks_answered") * 1e6 * delivered.max(1) as f64;
        let answer_ms = delta("webhook_latency_ns") * delivered.max(1) as f64 / answered.max(1.0);
        // Checkpoints: how many in the window, and the mean pause each is.
        let checkpoints = delta("queue_checkpoints") * 1e6 * delivered.max(1) as f64;
        let checkpoint_ms =
            delta("queue_checkpoint_ns") * delivered.max(1) as f64 / checkpoints.max(1.0);
        format!(
            "webhook answered in {answer_ms:.3} ms; {checkpoints:.0} checkpoints of {checkpoint_ms:.2} ms on average; source {:.3} ms, storage wait {:.3} ms, transform {:.3} ms, sink+egress {:.3} ms; {:.1} events per sink call, {:.1} per durable commit",
            delta("weft_source_seconds_total"),
            delta("weft_storage_seconds_total"),
            delta("weft_transform_seconds_total"),
            delta("weft_sink_seconds_total"),
            if calls > 0.0 { 1.0 / calls } else { f64::NAN },
            if syncs > 0.0 { 1.0 / syncs } else { f64::NAN }
        )
    };
    Result {
        name: name.to_string(),
        clients,
        round: 0,
        acked_per_s: acked as f64 / (elapsed + WARMUP.as_secs_f64()),
        delivered_per_s: delivered as f64 / elapsed,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        cpu_ms_per_event: per_event(cpu),
        storage_cpu_ms_per_event: per_event(storage),
        rss_mib: peak_rss_mib(pid),
        stages,
    }
}

async fn counters(admin: SocketAddr, token: &str) -> Vec<(String, u64)> {
    let (status, body) = weft_tests::send(
        "GET",
        &format!("http://{admin}/api/status"),
        "",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut counters: Vec<(String, u64)> = v["counters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    // Time counters come in seconds; kept here in ns.
                    let n = if k.ends_with("_seconds_total") {
                        (v.as_f64().unwrap_or(0.0) * 1e9) as u64
                    } else {
                        v.as_u64().unwrap_or(0)
                    };
                    (k.clone(), n)
                })
                .collect()
        })
        .unwrap_or_default();
    for (name, pointer) in [
        ("queue_syncs", "/queue/syncs"),
        ("queue_checkpoints", "/queue/checkpoints"),
        ("queue_checkpoint_ns", "/queue/checkpoint_ns_total"),
        ("webhooks_answered", "/webhooks/answered"),
        ("webhook_latency_ns", "/webhooks/latency_ns_total"),
    ] {
        let value = v.pointer(pointer).and_then(|n| n.as_u64()).unwrap_or(0);
        counters.push((name.into(), value));
    }
    counters
}

fn weft_config(
    dir: &Path,
    webhook: u16,
    admin: u16,
    sink: SocketAddr,
    instance_reuse: u32,
    max_batch: u32,
) -> std::path::PathBuf {
    let text = format!(
        r#"
[limits]
instance_reuse = {instance_reuse}

[server]
workers = {workers}
listen = "127.0.0.1:{webhook}"
admin_listen = "127.0.0.1:{admin}"
admin_token = {{ file = "token" }}

[storage]
{commit_delay}
data_dir = "{data}"
cache_dir = "{cache}"

[plugins.orders]
builtin = "webhook-json"
config = {{ id_pointer = "/order_id", type = "com.shop.order.created" }}
# The benchmark measures capacity: the source's rate limit stays out of it.
limits = {{ requests_per_s = 1000000 }}
{dedup}

[plugins.map]
builtin = "json-map"
config = {{ mapping = '{mapping}' }}

[plugins.post]
builtin = "http-post"
config = {{ url = "http://{sink}/orders" }}
allowed_hosts = ["http://{sink}"]
limits = {{ max_batch = {max_batch} }}

[[routes]]
name = "relay"
source = "orders"
transforms = ["map"]
sinks = ["post"]
"#,
        workers = std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "64".into()),
        // The product default unless BENCH_COMMIT_DELAY_US says otherwise.
        commit_delay = std::env::var("BENCH_COMMIT_DELAY_US")
            .map(|us| format!("commit_delay_us = {us}"))
            .unwrap_or_default(),
        // `BENCH_DEDUP_S=N`: the source de-duplicates event ids over N s.
        dedup = std::env::var("BENCH_DEDUP_S")
            .map(|s| format!("dedup_window_s = {s}"))
            .unwrap_or_default(),
        data = dir.join("data").display(),
        cache = weft_tests::shared_cache_dir().display(),
        mapping = ROUTE_MAPPING,
    );
    std::fs::write(dir.join("token"), "bench-token-of-the-relay").unwrap();
    let path = dir.join("weft.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_port(port: u16) {
    let up = weft_tests::eventually(Duration::from_secs(120), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(up, "port {port} never opened");
}

/// One plugin hop: instantiate a transform from its InstancePre and call it
/// with a 1 KiB event; with `instance_reuse` above 1, the call on a reused
/// instance (what `limits.instance_reuse` buys).
async fn plugin_hop(path: &Path, instance_reuse: u32) -> (f64, usize) {
    let cache = weft_tests::shared_cache_dir();
    let runtime = Arc::new(weft::runtime::Runtime::new(&cache).unwrap());
    let mapping = r#"[{"op":"rename","from":"/customer/email","to":"/customer_email"},{"op":"count","from":"/items","to":"/line_count"}]"#;
    let plugin = weft_tests::load_plugin(
        &runtime,
        path,
        &[("mapping", mapping.to_string())],
        vec![],
        weft::config::Limits {
            instance_reuse,
            ..Default::default()
        },
    )
    .unwrap();
    let data = order(1, 0).into_bytes();
    let event = weft::event::Event {
        id: "e".into(),
        source: "/b".into(),
        ty: "t".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        data,
        extensions: vec![],
    };
    let size = event.data.len();
    for _ in 0..2_000 {
        plugin.transform(event.clone()).await.unwrap().unwrap();
    }
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        plugin.transform(event.clone()).await.unwrap().unwrap();
    }
    (started.elapsed().as_secs_f64() * 1e6 / n as f64, size)
}

/// Loads `path` as a transform with `threshold=100` into `runtime`.
fn load_transform(
    runtime: &Arc<weft::runtime::Runtime>,
    path: &Path,
    instance_reuse: u32,
) -> std::result::Result<weft::runtime::Plugin, weft::runtime::LoadError> {
    let limits = weft::config::Limits {
        instance_reuse,
        ..Default::default()
    };
    weft_tests::load_plugin(
        runtime,
        path,
        &[("threshold", "100".to_string())],
        vec![],
        limits,
    )
}

/// The same connector (order-priority) in Rust, JavaScript and Python: cold
/// compile vs cached load, and per call with a fresh instance (what the
/// router does by default) vs on a reused instance (`limits.instance_reuse`);
/// instantiation = the difference.
async fn languages() {
    let mut data: serde_json::Value = serde_json::from_str(&order(1, 0)).unwrap();
    data["total"] = serde_json::json!(36.0);
    // Pad the note so the event is 1 KiB.
    let size = serde_json::to_vec(&data).unwrap().len();
    let note = data["note"].as_str().unwrap_or_default().to_string();
    data["note"] = serde_json::json!(format!(
        "{note}{}",
        "x".repeat(1024usize.saturating_sub(size))
    ));
    let event = weft::event::Event {
        id: "e".into(),
        source: "/b".into(),
        ty: "order".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        data: serde_json::to_vec(&data).unwrap(),
        extensions: vec![],
    };
    println!("order-priority on a {}-byte event", event.data.len());
    println!("| language | component MB | cold compile ms | cached load ms | call, fresh instance µs | call, warm instance µs | instantiate µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (language, path, calls) in [
        ("Rust", weft_tests::builtin("order-priority"), 20_000u32),
        (
            "JavaScript",
            weft_tests::js_plugin("order-priority-js"),
            2_000,
        ),
        ("Python", weft_tests::py_plugin("order-priority-py"), 1_000),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let runtime = Arc::new(weft::runtime::Runtime::new(cache.path()).unwrap());
        let _ = load_transform(&runtime, &path, 1).unwrap();
        let cold = started.elapsed();
        let runtime = Arc::new(weft::runtime::Runtime::new(cache.path()).unwrap());
        let started = Instant::now();
        let plugin = load_transform(&runtime, &path, 1).unwrap();
        let cached = started.elapsed();
        for _ in 0..(calls / 10) {
            plugin.transform(event.clone()).await.unwrap().unwrap();
        }
        let started = Instant::now();
        for _ in 0..calls {
            plugin.transform(event.clone()).await.unwrap().unwrap();
        }
        let fresh = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        // The same plugin with `instance_reuse`: one instance serves every call.
        let warm = load_transform(&runtime, &path, u32::MAX).unwrap();
        for _ in 0..(calls / 10) {
            warm.transform(event.clone()).await.unwrap().unwrap();
        }
        let started = Instant::now();
        for _ in 0..calls {
            warm.transform(event.clone()).await.unwrap().unwrap();
        }
        let warm_us = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
        let mb = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
        println!(
            "| {language} | {mb:.2} | {:.0} | {:.1} | {fresh:.1} | {warm_us:.1} | {:.1} |",
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            fresh - warm_us
        );
    }
}

/// One sink call: http-post delivering a 1 KiB event to the local sink
/// server over the host's pooled egress (instantiate + call + HTTP).
async fn sink_hop() -> f64 {
    let sink = start_sink().await;
    let cache = weft_tests::shared_cache_dir();
    let runtime = Arc::new(weft::runtime::Runtime::new(&cache).unwrap());
    let grant =
        weft::runtime::egress::HostPattern::parse(&format!("http://{}", sink.addr)).unwrap();
    let url = format!("http://{}/orders", sink.addr);
    let plugin = weft_tests::load_plugin(
        &runtime,
        &weft_tests::builtin("http-post"),
        &[("url", url)],
        vec![grant],
        weft::config::Limits {
            instance_reuse: std::env::var("SINK_HOP_REUSE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            ..Default::default()
        },
    )
    .unwrap();
    let event = |i: u64| weft::event::Event {
        id: format!("e{i}"),
        source: "/b".into(),
        ty: "t".into(),
        subject: None,
        time: None,
        datacontenttype: Some("application/json".into()),
        data: order(i, 0).into_bytes(),
        extensions: vec![],
    };
    for i in 0..1_000 {
        plugin.deliver(event(i)).await.unwrap();
    }
    let n: u64 = std::env::var("SINK_HOP_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let cpu = process_cpu_s();
    let started = Instant::now();
    for i in 0..n {
        plugin.deliver(event(i)).await.unwrap();
    }
    let plugin_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let plugin_cpu_us = (process_cpu_s() - cpu) * 1e6 / n as f64;
    // The same round trips without the plugin: a plain pooled hyper client.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let url: hyper::Uri = format!("http://{}/orders", sink.addr).parse().unwrap();
    let cpu = process_cpu_s();
    let started = Instant::now();
    for i in 0..n {
        let request = hyper::Request::post(url.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(order(i, 0))))
            .unwrap();
        let response = client.request(request).await.unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let plain_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
    let plain_cpu_us = (process_cpu_s() - cpu) * 1e6 / n as f64;
    println!("sink call, plain hyper client (same round trip, no plugin): {plain_us:.1} µs wall, {plain_cpu_us:.1} µs CPU (client + server)");
    println!("sink call, http-post to a local server over pooled egress (instantiate + call + HTTP round trip, one at a time): {plugin_us:.1} µs wall, {plugin_cpu_us:.1} µs CPU (client + server)");
    plugin_us
}

/// CPU seconds (user + system) this process has used.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage(2) fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn hops() {
    let (us, size) = plugin_hop(&weft_tests::test_plugin("echo"), 1).await;
    println!("plugin hop, identity transform (instantiate from InstancePre + call with a {size}-byte event): {us:.2} µs");
    let (us, _) = plugin_hop(&weft_tests::test_plugin("echo"), 1000).await;
    println!(
        "plugin call, identity transform on a reused instance (instance_reuse = 1000): {us:.2} µs"
    );
    let (us, size) = plugin_hop(&weft_tests::builtin("json-map"), 1).await;
    println!("plugin hop, json-map (parse config + event JSON, 2 operations, serialize; {size}-byte event): {us:.2} µs");
    let (us, _) = plugin_hop(&weft_tests::builtin("json-map"), 1000).await;
    println!("plugin call, json-map on a reused instance (instance_reuse = 1000; event JSON, 2 operations, serialize): {us:.2} µs");
    let _ = sink_hop().await;
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(mode @ ("plain-relay" | "byte-relay")) = args.get(1).map(String::as_str) {
        let port: u16 = args[2].parse().unwrap();
        let sink = args[3].clone();
        multi_thread_runtime().block_on(plain_relay(port, sink, mode == "plain-relay"));
        return;
    }
    if let Some(mode @ ("durable-relay" | "journal-relay" | "plugin-relay")) =
        args.get(1).map(String::as_str)
    {
        let port: u16 = args[2].parse().unwrap();
        let (sink, dir) = (args[3].clone(), std::path::PathBuf::from(&args[4]));
        if mode == "journal-relay" {
            multi_thread_runtime().block_on(journal_relay(port, sink, dir));
        } else if mode == "plugin-relay" {
            multi_thread_runtime().block_on(plugin_relay(port, sink, dir));
        } else {
            multi_thread_runtime().block_on(durable_relay(port, sink, dir));
        }
        return;
    }
    if args.iter().any(|a| a == "languages") {
        multi_thread_runtime().block_on(languages());
        return;
    }
    if args.iter().any(|a| a == "sink-hop") {
        // `-- sink-hop [current-thread]`: the sink call alone, optionally on a
        // single-threaded runtime (no cross-thread wake-ups).
        let rt = if args.iter().any(|a| a == "current-thread") {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        } else {
            multi_thread_runtime()
        };
        rt.block_on(sink_hop());
        return;
    }
    if args.iter().any(|a| a == "hop") {
        multi_thread_runtime().block_on(hops());
        return;
    }
    let seconds: u64 = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    multi_thread_runtime().block_on(async move {
        let sink = start_sink().await;
        let me = std::env::current_exe().unwrap();
        // `BENCH_WEFT_BIN`: another build of Weft (for A/B runs).
        let weft_bin = std::env::var("BENCH_WEFT_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_weft-under-test").to_string());
        let mut results = Vec::new();
        // `-- weft-only`: skip the plain relay and 64 clients (for profiling).
        let weft_only = std::env::args().any(|a| a == "weft-only");
        let only: Vec<usize> = std::env::var("BENCH_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(|n| vec![n])
            .unwrap_or_else(|| vec![16]);
        let client_counts: &[usize] = if weft_only { &only } else { &[16, 64] };
        // `BENCH_ROUNDS=N`: the whole set N times over, so that the VM's
        // drift shows as a range and every ratio compares one round.
        let rounds: usize = std::env::var("BENCH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
            .max(1);
        for round in 0..rounds {
        let first = results.len();
        for &clients in client_counts {
            if !weft_only {
            // The yardsticks: the plain relay, the byte-forwarding one, then
            // the durable relays without plugins (straightforward on sled,
            // and the best case: a preallocated append-only file), each
            // with a store of its own.
            for (mode, name, durable) in [
                ("plain-relay", PLAIN, false),
                ("byte-relay", BYTES_ONLY, false),
                ("durable-relay", DURABLE_SLED, true),
                ("journal-relay", DURABLE_FILE, true),
                ("plugin-relay", DURABLE_PLUGINS, true),
            ] {
                // `BENCH_RELAYS=text`: only the yardsticks whose name
                // contains `text` (and the plain relay every ratio needs).
                if let Ok(only) = std::env::var("BENCH_RELAYS") {
                    if name != PLAIN && !name.contains(only.as_str()) {
                        continue;
                    }
                }
                let dir = tempfile::tempdir().unwrap();
                let port = weft_tests::free_port();
                let mut command = std::process::Command::new(&me);
                command.args([mode, &port.to_string(), &format!("http://{}/orders", sink.addr)]);
                if durable {
                    command.arg(dir.path().join("store"));
                }
                let mut child = command.spawn().unwrap();
                wait_port(port).await;
                results.push(measure(name, child.id(), format!("http://127.0.0.1:{port}/"), &sink, clients, seconds, None).await);
                let _ = child.kill();
                let _ = child.wait();
            }
            }

            // Weft: the default (a fresh instance per plugin call), then
            // with `limits.instance_reuse` for all three plugins.
            for (name, reuse, batch) in [
                ("weft (durable)", 1u32, 1u32),
                ("weft (durable, sink max_batch = 64)", 1, 64),
                ("weft (durable, instance_reuse = 1000)", 1000, 1),
                ("weft (durable, instance_reuse = 1000, sink max_batch = 64)", 1000, 64),
            ] {
                if let Ok(only) = std::env::var("BENCH_CONFIG") {
                    if !name.contains(only.as_str()) {
                        continue;
                    }
                }
                let dir = tempfile::tempdir().unwrap();
                let (webhook, admin) = (weft_tests::free_port(), weft_tests::free_port());
                let config = weft_config(dir.path(), webhook, admin, sink.addr, reuse, batch);
                let mut cmd = std::process::Command::new(&weft_bin);
                if let Ok(n) = std::env::var("WEFT_WORKERS") {
                    cmd.env("TOKIO_WORKER_THREADS", n);
                }
                let mut child = cmd
                    .args(["--log-level", "warn", "serve", "--config"])
                    .arg(&config)
                    .spawn()
                    .unwrap();
                if weft_only {
                    eprintln!("weft pid {}", child.id());
                }
                wait_port(admin).await;
                let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
                results.push(
                    measure(name, child.id(), format!("http://127.0.0.1:{webhook}/hooks/orders"), &sink, clients, seconds, Some((admin_addr, "bench-token-of-the-relay".into()))).await,
                );
                // SAFETY: kill(2) on our child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let _ = child.wait();
            }
        }
        for r in &mut results[first..] {
            r.round = round;
        }
        }
        println!();
        println!("| relay | clients | acked/s | delivered/s | p50 ms | p99 ms | host CPU ms/event | storage thread CPU ms/event | peak RSS MiB |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &results {
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} | {:.0} |",
                r.name, r.clients, r.acked_per_s, r.delivered_per_s, r.p50_ms, r.p99_ms, r.cpu_ms_per_event, r.storage_cpu_ms_per_event, r.rss_mib
            );
        }
        println!();
        for r in results.iter().filter(|r| !r.stages.is_empty()) {
            println!("weft, {} clients, wall time per delivered event: {}", r.clients, r.stages);
        }
        let rate_of = |r: &Result, name: &str| {
            results
                .iter()
                .find(|p| p.name == name && p.clients == r.clients && p.round == r.round)
                .map(|p| p.delivered_per_s)
        };
        let plain_rate = |r: &Result| rate_of(r, PLAIN);
        for r in results.iter().filter(|r| r.name != PLAIN && r.name != BYTES_ONLY) {
            if let (Some(plain), Some(bytes)) = (plain_rate(r), rate_of(r, BYTES_ONLY)) {
                println!(
                    "{} clients: {} delivers {:.0}% of the plain relay's rate ({:.0}% of the byte-forwarding relay's)",
                    r.clients,
                    r.name,
                    100.0 * r.delivered_per_s / plain,
                    100.0 * r.delivered_per_s / bytes
                );
            }
        }
        if rounds > 1 {
            println!();
            println!("Over {rounds} rounds (median, min–max):");
            println!("| relay | clients | delivered/s | % of the same round's plain relay (transforming) | host CPU ms/event |");
            println!("|---|---:|---:|---:|---:|");
            let mut seen: Vec<(String, usize)> = Vec::new();
            for r in &results {
                if !seen.contains(&(r.name.clone(), r.clients)) {
                    seen.push((r.name.clone(), r.clients));
                }
            }
            for (name, clients) in seen {
                let runs: Vec<&Result> = results.iter().filter(|r| r.name == name && r.clients == clients).collect();
                let spread = |mut v: Vec<f64>, digits: usize| {
                    v.sort_by(|a, b| a.total_cmp(b));
                    let n = v.len();
                    let median = if n.is_multiple_of(2) { (v[n / 2 - 1] + v[n / 2]) / 2.0 } else { v[n / 2] };
                    format!("{median:.digits$} ({:.digits$}–{:.digits$})", v[0], v[v.len() - 1])
                };
                let rate = spread(runs.iter().map(|r| r.delivered_per_s).collect(), 0);
                let share: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| plain_rate(r).map(|p| 100.0 * r.delivered_per_s / p))
                    .collect();
                let share = if share.is_empty() { "–".to_string() } else { spread(share, 0) };
                let cpu = spread(runs.iter().map(|r| r.cpu_ms_per_event).collect(), 3);
                println!("| {name} | {clients} | {rate} | {share} | {cpu} |");
            }
        }
        hops().await;
    });
}
