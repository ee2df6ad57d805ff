//! `weft demo`: the shop example end to end, with zero setup.
//!
//! Starts two small downstream services (an inventory API and an accounting
//! API) on free ports, runs Weft on `examples/shop/weft.toml` against them,
//! posts sample orders to the webhook, and tells in plain words what arrived
//! where.

use crate::config::Config;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const SHOP_CONFIG: &str = include_str!("../../examples/shop/weft.toml");

/// A request a downstream service received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

/// A minimal downstream HTTP service that records every request and answers 200.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received so far.
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    /// Starts a recorder on a free loopback port.
    pub async fn start() -> anyhow::Result<Recorder> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let headers = req
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            if let Ok(mut s) = store.lock() {
                                s.push(Received {
                                    path,
                                    headers,
                                    body,
                                });
                            }
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from_static(b"{\"ok\":true}"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Recorder { addr, received })
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

/// POSTs `body` as JSON to `url`; returns the status and response body.
pub async fn post_json(url: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let uri: http::Uri = url.parse()?;
    let host = uri.host().context("url has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post(uri.path())
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    Ok((status, text))
}

fn sample_order(i: usize) -> serde_json::Value {
    let skus = [
        ("MUG-01", 8.5),
        ("TEE-M", 19.0),
        ("CAP-RED", 12.25),
        ("POSTER", 5.0),
    ];
    let lines: Vec<_> = (0..(i % 3) + 1)
        .map(|j| {
            let (sku, price) = skus[(i + j) % skus.len()];
            serde_json::json!({ "sku": sku, "quantity": j + 1, "unit_price": price })
        })
        .collect();
    serde_json::json!({
        "order_id": format!("ORD-{}", 1000 + i),
        "customer": { "email": format!("customer{i}@example.com"), "name": format!("Customer {i}") },
        "items": lines,
    })
}

/// Runs the demo.
pub async fn run(orders: usize, keep_running: bool) -> anyhow::Result<()> {
    let inventory = Recorder::start().await?;
    let accounting = Recorder::start().await?;
    // Removed when the demo ends, also when it fails.
    let scratch = crate::cli::ScratchDir::create("weft-demo")?;
    let data = scratch.path().to_path_buf();
    let text = SHOP_CONFIG
        .replace("127.0.0.1:9101", &inventory.addr.to_string())
        .replace("127.0.0.1:9102", &accounting.addr.to_string())
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:8081", "127.0.0.1:0")
        .replace("../../weft-data/shop", &data.display().to_string());
    let mut config = Config::parse(&text, "examples/shop/weft.toml", std::path::Path::new("."))?;
    // Keep compiled plugins across demo runs, in the user's own cache.
    config.storage.cache_dir = Some(crate::runtime::cache::user_cache_dir("demo"));
    let running = crate::app::start(config).await?;
    let hook = format!("http://{}/hooks/shop-orders", running.webhook_addr);

    println!();
    println!("Weft demo: the shop example (examples/shop/weft.toml)");
    println!("  webhook:    POST {hook}");
    println!(
        "  inventory:  http://{}/stock-movements (a stand-in for the inventory API)",
        inventory.addr
    );
    println!(
        "  accounting: http://{}/ledger/entries (a stand-in for the accounting API)",
        accounting.addr
    );
    if let Some(admin) = running.admin_addr {
        if keep_running {
            println!(
                "  dashboard:  http://{admin}/  (admin token: in {}/admin-token)",
                data.display()
            );
        } else {
            println!("  dashboard:  run `weft demo --keep-running` to keep it up and look around");
        }
    }
    println!();

    for i in 0..orders {
        let order = sample_order(i);
        let (status, body) = post_json(&hook, &order.to_string()).await?;
        println!(
            "Posted order {} → HTTP {status} {body}",
            order["order_id"].as_str().unwrap_or("?")
        );
    }
    let (status, body) = post_json(&hook, "{ this is not json").await?;
    println!("Posted a malformed webhook → HTTP {status} {body} (rejected, nothing stored)");
    println!();

    let deadline = Instant::now() + Duration::from_secs(30);
    while (inventory.count() < orders || accounting.count() < orders) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for r in inventory
        .received
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
    {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let plural = |n: &serde_json::Value, one: &str, many: &str| match n.as_u64() {
            Some(1) => format!("1 {one}"),
            _ => format!("{n} {many}"),
        };
        println!(
            "Inventory API received {}: {} on {} (event {})",
            v["order_id"].as_str().unwrap_or("?"),
            plural(&v["units"], "unit", "units"),
            plural(&v["line_count"], "line", "lines"),
            r.headers
                .iter()
                .find(|(k, _)| k == "ce-id")
                .map(|(_, v)| v.as_str())
                .unwrap_or("?"),
        );
    }
    for r in accounting
        .received
        .lock()
        .map(|r| r.clone())
        .unwrap_or_default()
    {
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        let d = &v["data"];
        println!(
            "Accounting API received a {} entry for {}: total {} {}, VAT {}, customer {}",
            v["type"].as_str().unwrap_or("?"),
            d["order_id"].as_str().unwrap_or("?"),
            d["total"],
            d["currency"].as_str().unwrap_or(""),
            d["vat"],
            d["customer_email"].as_str().unwrap_or("?"),
        );
    }
    println!();
    let ok = inventory.count() >= orders && accounting.count() >= orders;
    if ok {
        println!("All {orders} orders reached both services. Every one was stored durably before its 202.");
    } else {
        println!(
            "Only {} of {orders} orders reached inventory and {} accounting within 30 s.",
            inventory.count(),
            accounting.count()
        );
    }
    if keep_running {
        println!("Still running; Ctrl-C to stop.");
        crate::cli::shutdown_signal(Default::default(), false).await;
    }
    running.shutdown().await;
    drop(scratch);
    anyhow::ensure!(ok, "the demo did not complete");
    Ok(())
}
