//! The accept loop shared by the webhook and admin listeners: HTTP/1.1 with
//! keep-alive, a header-read timeout (hyper needs a timer for it to work),
//! and graceful shutdown of open connections.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A response with a fully buffered body.
pub type Reply = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(value).unwrap_or_default(),
    )));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON error body `{"error": message}`.
pub fn error(status: u16, message: impl Into<String>) -> Reply {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// A plain response with a content type.
pub fn text(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send a request's headers (and, on a TLS
    /// listener, as long again for the handshake before them).
    pub header_timeout: Duration,
    /// A connection with no request in progress and no bytes moving for
    /// this long is closed, so idle keep-alive connections do not hold
    /// their slot (of `max_connections`) for ever.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64);
    /// more are closed as soon as they are accepted, so that one client
    /// cannot hold every connection slot (see [`crate::clients`]).
    pub max_per_client: usize,
}

/// How often, at most, a refused connection is logged at `warn` (each one
/// is counted in `weft_connections_refused_total`).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a connection refused for its address's share, at most once per
/// [`REFUSAL_LOG_EVERY`] (a client retrying in a loop would flood the log).
fn log_refusal(peer: std::net::SocketAddr, max: usize, last: &mut Option<Instant>) {
    if last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
        tracing::debug!(%peer, "connection refused: its address holds server.max_connections_per_client");
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(%peer, limit = max, "connection refused: its address already holds server.max_connections_per_client connections (behind a reverse proxy, raise it); further refusals for 10 s are only counted");
}

/// Logs a failed TLS handshake at `warn` at most once per
/// [`REFUSAL_LOG_EVERY`] (each is counted in
/// `weft_tls_handshake_failures_total`): a certificate chain that senders
/// cannot verify fails every handshake, and must not go unseen.
fn log_handshake_failure(
    peer: std::net::SocketAddr,
    reason: &str,
    last: &std::sync::Mutex<Option<Instant>>,
) {
    let now = match last.lock() {
        Ok(mut last) if !last.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) => {
            *last = Some(Instant::now());
            true
        }
        _ => false,
    };
    if now {
        tracing::warn!(%peer, reason = %reason, "TLS handshake failed (a client that does not trust server.tls.cert, plain HTTP on the HTTPS port, or a scan); further failures for 10 s are only counted");
    } else {
        tracing::debug!(%peer, reason = %reason, "TLS handshake failed");
    }
}

/// A connection's stream that notes when bytes last moved (for the idle
/// timeout).
struct Tracked {
    stream: tokio::net::TcpStream,
    activity: Arc<Activity>,
}

/// When a connection last moved bytes, and how many of its requests are in
/// progress.
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened`.
    last_ms: AtomicU64,
    requests: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether nothing has happened on the connection for `timeout`.
    fn idle_for(&self, timeout: Duration) -> bool {
        let now = self.opened.elapsed();
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.requests.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= timeout
    }
}

/// One request in progress on a connection, counted until its response is
/// ready (or the request is dropped).
struct InProgress(Arc<Activity>);

impl InProgress {
    fn start(activity: &Arc<Activity>) -> InProgress {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        InProgress(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl Tracked {
    /// Notes activity when a write moved bytes.
    fn wrote(&self, result: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What a connection's HTTP runs over: its TCP stream, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Resolves once the connection has been idle for `timeout` (see
/// [`ConnectionLimits::idle_timeout`]), looking a few times per timeout.
async fn idle(activity: &Activity, timeout: Duration) {
    let every = (timeout / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        if activity.idle_for(timeout) {
            return;
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` turns true, then lets open
/// connections finish their current request (up to `grace`). At most
/// `limits.max_connections` are open at once: beyond that the loop stops
/// accepting (new clients wait in the kernel's backlog), so clients that
/// keep connections open cannot run the process out of file descriptors;
/// and a connection idle for `limits.idle_timeout` is closed, giving its
/// slot back. One client address holds at most `limits.max_per_client` of
/// them: past that its new connections are closed at once (counted in
/// `metrics.connections_refused`). With `tls`, each connection first
/// completes a TLS handshake within `limits.header_timeout` (see
/// [`crate::tls`]).
pub async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::ListenerTls>>,
    handler: Arc<H>,
    limits: ConnectionLimits,
    metrics: Arc<crate::metrics::Metrics>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_client = crate::clients::ClientSlots::new(limits.max_per_client);
    let mut last_refusal_logged = None;
    let tls_logged = Arc::new(std::sync::Mutex::new(None));
    loop {
        let slot = tokio::select! {
            slot = open.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = crate::server::stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => break,
        };
        let Some(client) = per_client.take(peer.ip()) else {
            // Closed before anything is read: answering would mean serving
            // the connection, which is what the share bounds.
            crate::metrics::inc(&metrics.connections_refused);
            log_refusal(peer, limits.max_per_client, &mut last_refusal_logged);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let activity = Arc::new(Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
        });
        let counted = activity.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let in_progress = InProgress::start(&counted);
            req.extensions_mut().insert(crate::ingress::Peer(peer));
            let fut = handler(req);
            async move {
                let reply = fut.await;
                drop(in_progress);
                Ok::<_, Infallible>(reply)
            }
        });
        let io = Tracked {
            stream,
            activity: activity.clone(),
        };
        // The acceptor of the moment: a reloaded certificate serves new
        // connections only.
        let tls = tls.as_ref().map(|tls| tls.acceptor());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let (metrics, tls_logged) = (metrics.clone(), tls_logged.clone());
        let (idle_timeout, handshake_timeout) = (limits.idle_timeout, limits.header_timeout);
        tokio::spawn(async move {
            // The handshake in the connection's own task: a slow client
            // holds its connection slot, not the accept loop.
            let io: Box<dyn Io> = match tls {
                None => Box::new(io),
                Some(acceptor) => {
                    let failure =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                            Ok(Ok(stream)) => Ok(Box::new(stream)),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("timed out".to_string()),
                        };
                    match failure {
                        Ok(stream) => stream,
                        Err(reason) => {
                            crate::metrics::inc(&metrics.tls_handshake_failures);
                            log_handshake_failure(peer, &reason, &tls_logged);
                            return;
                        }
                    }
                }
            };
            let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                },
                () = idle(&activity, idle_timeout) => {
                    tracing::debug!(%peer, "closing an idle connection");
                }
            }
            drop(client);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open at shutdown");
    }
}
