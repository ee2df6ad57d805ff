//! Helpers for Weft's end-to-end tests.
//!
//! Everything here is real: [`FakeApi`] is an HTTP server on loopback standing
//! in for a third-party API, [`TestHost`] runs the real Weft (in-process, with
//! a real sled directory and real components), and [`WeftProcess`] runs the
//! real `weft` binary as a child process that tests can SIGKILL.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

pub use weft;

/// A built-in plugin component (built from `plugins/` by the host's build script).
pub fn builtin(name: &str) -> PathBuf {
    weft::runtime::builtin_path(name)
}

/// A test plugin component (built from `tests/plugins/`).
pub fn test_plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("WEFT_TEST_PLUGIN_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A compiled-component cache shared by all tests, so each plugin compiles once.
pub fn shared_cache_dir() -> PathBuf {
    std::env::temp_dir().join("weft-test-cache")
}

/// One request a [`FakeApi`] received.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// When it arrived.
    pub at: Instant,
    /// Path.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// The status the fake answered.
    pub status: u16,
}

impl ApiRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

#[derive(Default)]
struct ApiState {
    script: VecDeque<(u16, Vec<(String, String)>)>,
    default_status: u16,
    requests: Vec<ApiRequest>,
    /// Fixed answers by path: status and body.
    routes: std::collections::HashMap<String, (u16, String)>,
}

/// A stand-in for a third-party HTTP API: answers from a script (then a
/// default status) and records every request.
#[derive(Clone)]
pub struct FakeApi {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
    /// Requests are answered while this is true (see [`FakeApi::hold`]).
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FakeApi {
    /// Starts on a free loopback port, answering 200.
    pub async fn start() -> FakeApi {
        Self::start_on(0).await
    }

    /// Starts on a given loopback port (0 = any).
    pub async fn start_on(port: u16) -> FakeApi {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind fake api");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(ApiState {
            default_status: 200,
            ..Default::default()
        }));
        let shared = state.clone();
        let open = Arc::new(tokio::sync::watch::Sender::new(true));
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (shared, gate) = (shared.clone(), gate.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        let mut open = gate.subscribe();
                        async move {
                            let _ = open.wait_for(|open| *open).await;
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
                            let (status, extra, answer) = {
                                let mut s = shared.lock().unwrap();
                                let (status, extra, answer) = match s.routes.get(&path) {
                                    Some((status, body)) => (*status, vec![], Some(body.clone())),
                                    None => {
                                        let (status, extra) = s
                                            .script
                                            .pop_front()
                                            .unwrap_or((s.default_status, vec![]));
                                        (status, extra, None)
                                    }
                                };
                                s.requests.push(ApiRequest {
                                    at: Instant::now(),
                                    path,
                                    headers,
                                    body,
                                    status,
                                });
                                (status, extra, answer)
                            };
                            let body = answer.unwrap_or_else(|| format!("{{\"status\":{status}}}"));
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            for (k, v) in extra {
                                resp.headers_mut().insert(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    http::HeaderValue::from_str(&v).unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, state, open }
    }

    /// Holds every request (new and waiting ones) unanswered until
    /// [`FakeApi::release`]: a remote that has stopped answering.
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Answers the held requests, and the next ones at once.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// The next `n` requests get `status` (with extra response headers).
    pub fn fail_next(&self, n: usize, status: u16, headers: &[(&str, &str)]) {
        let mut s = self.state.lock().unwrap();
        for _ in 0..n {
            s.script.push_back((
                status,
                headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ));
        }
    }

    /// Requests for `path` always get `status` and `body` (before the script).
    pub fn route(&self, path: &str, status: u16, body: &str) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), (status, body.to_string()));
    }

    /// The status answered once the script is used up.
    pub fn set_default(&self, status: u16) {
        self.state.lock().unwrap().default_status = status;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<ApiRequest> {
        self.requests()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// The `ce-id` of every request answered with a 2xx, sorted, each once.
    pub fn delivered_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .delivered()
            .iter()
            .filter_map(|r| r.header("ce-id").map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// `http://127.0.0.1:PORT`
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Sends a request; returns status and body text.
pub async fn send(method: &str, url: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, text) = send_full(method, url, body, headers).await;
    (status, text)
}

/// Sends a request; returns status, response headers and body text.
/// Panics if the server cannot be reached (see [`try_send`]).
pub async fn send_full(
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    match try_send(method, url, body, headers).await {
        Ok(answer) => answer,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// Sends a request; returns status, response headers and body text, or what
/// went wrong on the way (no connection, connection lost mid-request).
pub async fn try_send(
    method: &str,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, http::HeaderMap, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    let host = uri.host().ok_or("url without host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, format!("{host}:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    Ok((status, parts.headers, text))
}

/// POSTs JSON.
pub async fn post_json(url: &str, body: &str) -> (u16, String) {
    send("POST", url, body, &[("content-type", "application/json")]).await
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
/// (A bound on waiting, not a timing assertion: tests assert on the outcome.)
pub async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Weft running in this process on a fresh data directory.
pub struct TestHost {
    /// The running instance.
    pub running: weft::app::Running,
    /// Its data directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

/// The `[storage]` section for a test: a fresh data dir, the shared cache.
pub fn storage_section(dir: &Path) -> String {
    format!(
        "[storage]\ndata_dir = \"{}\"\ncache_dir = \"{}\"\n",
        dir.display(),
        shared_cache_dir().display()
    )
}

impl TestHost {
    /// Starts Weft on `config` (TOML without a `[storage]` section; listeners
    /// default to free loopback ports).
    pub async fn start(config: &str) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(config, dir).await
    }

    /// Starts Weft on `config` with more `[storage]` settings (`storage`:
    /// lines such as `max_pending = 2`).
    pub async fn start_with_storage(config: &str, storage: &str) -> TestHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = with_storage_and_defaults(config, dir.path(), storage);
        Self::start_parsed(&text, dir).await
    }

    /// Starts Weft with an existing data directory.
    pub async fn start_in(config: &str, dir: tempfile::TempDir) -> TestHost {
        let text = with_defaults(config, dir.path());
        Self::start_parsed(&text, dir).await
    }

    /// Starts Weft on a whole config text.
    async fn start_parsed(text: &str, dir: tempfile::TempDir) -> TestHost {
        let config = weft::config::Config::parse(text, "test.toml", dir.path())
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let running = weft::app::start(config)
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        TestHost { running, dir }
    }

    /// The current value of one of Weft's counters (e.g.
    /// `weft_events_accepted_total`); panics on an unknown name.
    pub fn counter(&self, name: &str) -> u64 {
        self.running
            .metrics
            .snapshot()
            .into_iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("no counter named {name}"))
            .2
    }

    /// `http://ADDR/hooks/NAME`
    pub fn hook(&self, source: &str) -> String {
        format!("http://{}/hooks/{source}", self.running.webhook_addr)
    }

    /// `http://ADMIN_ADDR`
    pub fn admin(&self) -> String {
        format!("http://{}", self.running.admin_addr.expect("admin enabled"))
    }

    /// Calls an admin endpoint with the token; returns status and JSON.
    pub async fn admin_call(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let auth = format!("Bearer {}", self.running.admin_token);
        let (status, body) = send(
            method,
            &format!("{}{path}", self.admin()),
            "",
            &[("authorization", &auth)],
        )
        .await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
        )
    }

    /// GET an admin endpoint with the token.
    pub async fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        self.admin_call("GET", path).await
    }

    /// POST an admin endpoint with the token.
    pub async fn admin_post(&self, path: &str) -> (u16, serde_json::Value) {
        self.admin_call("POST", path).await
    }

    /// Queue counts.
    pub fn stats(&self) -> weft::queue::QueueStats {
        self.running.router.queue().stats()
    }

    /// Stops it and returns the data directory (to restart on it).
    pub async fn stop(self) -> tempfile::TempDir {
        self.running.shutdown().await;
        self.dir
    }
}

/// Adds `[storage]` and loopback `[server]` defaults to a test config.
pub fn with_defaults(config: &str, dir: &Path) -> String {
    with_storage_and_defaults(config, dir, "")
}

/// [`with_defaults`] with more `[storage]` settings (`storage`: lines such
/// as `max_pending = 2`).
pub fn with_storage_and_defaults(config: &str, dir: &Path, storage: &str) -> String {
    let mut text = storage_section(dir);
    if !storage.is_empty() {
        text.push_str(storage);
        text.push('\n');
    }
    if !config.contains("[server]") {
        text.push_str("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n");
    }
    text.push_str(config);
    text
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real `weft` binary as a child process.
pub struct WeftProcess {
    /// The child.
    pub child: std::process::Child,
    /// Its webhook address.
    pub webhook: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
}

impl WeftProcess {
    /// Runs `weft serve --config PATH`, where the config listens on the given
    /// ports, and waits for its admin `/healthz`.
    pub async fn spawn(
        binary: &Path,
        config: &Path,
        webhook: SocketAddr,
        admin: SocketAddr,
        log: &Path,
    ) -> WeftProcess {
        let log_path = log;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("log file");
        let mut child = std::process::Command::new(binary)
            .args(["serve", "--config"])
            .arg(config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weft");
        let healthy = eventually(Duration::from_secs(120), || {
            // A child that exited (e.g. its port was taken meanwhile) fails
            // the test now, with its log, not after the whole wait.
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                panic!("weft exited before it came up ({status}):\n{log}");
            }
            std::net::TcpStream::connect(admin).is_ok()
        })
        .await;
        assert!(healthy, "weft did not come up on {admin}");
        // The admin listener binds after the webhook listener: both are up.
        WeftProcess {
            child,
            webhook,
            admin,
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGHUP (what a closed terminal or a service manager's reload
    /// sends).
    pub fn hangup(&self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait for exit; returns whether it exited cleanly.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }
}

/// A JavaScript connector component (built from `plugins/NAME` by the test
/// build with componentize-js). Panics with the reason if the JavaScript
/// toolchain could not be installed: such tests never pass silently.
pub fn js_plugin(name: &str) -> PathBuf {
    let error = env!("WEFT_JS_PLUGIN_ERROR");
    assert!(
        error.is_empty(),
        "JavaScript plugins could not be built: {error}"
    );
    PathBuf::from(env!("WEFT_JS_PLUGIN_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// A Python connector from `plugins/`, built by componentize-py.
pub fn py_plugin(name: &str) -> PathBuf {
    let error = env!("WEFT_PY_PLUGIN_ERROR");
    assert!(
        error.is_empty(),
        "Python plugins could not be built: {error}"
    );
    PathBuf::from(env!("WEFT_PY_PLUGIN_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

/// Where the build installed the pinned JavaScript and Python toolchains
/// (handed to `weft plugin build` so tests do not install them twice).
pub fn toolchain_dir() -> PathBuf {
    PathBuf::from(env!("WEFT_TOOLCHAIN_DIR"))
}

/// Loads a plugin straight into a runtime (no host around it): the given
/// config values and grants, a temporary state tree, the given limits.
pub fn load_plugin(
    runtime: &Arc<weft::runtime::Runtime>,
    path: &Path,
    config: &[(&str, String)],
    allowed: Vec<weft::runtime::egress::HostPattern>,
    limits: weft::config::Limits,
) -> Result<weft::runtime::Plugin, weft::runtime::LoadError> {
    use weft::runtime::egress::EgressPolicy;
    use weft::runtime::host::PluginContext;
    let db = sled::Config::new()
        .temporary(true)
        .open()
        .expect("temporary sled");
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ctx = PluginContext {
        name: name.clone(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        secrets: Default::default(),
        header_only: Default::default(),
        state: weft::runtime::state::PluginState::open(
            db.open_tree("s").expect("state tree"),
            limits.state_mib << 20,
        )
        .expect("state"),
        egress: Arc::new(EgressPolicy {
            plugin: name,
            allowed,
            inject: vec![],
            timeout: Duration::from_secs(5),
            max_response_bytes: 1 << 20,
            max_call_bytes: limits.memory_mib.saturating_mul(1 << 20),
            tape: None,
            share: weft::runtime::egress::plugin_share(),
        }),
    };
    runtime.load(ctx, path, limits)
}
