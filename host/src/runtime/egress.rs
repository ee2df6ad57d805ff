//! Outbound HTTP for plugins: deny by default, allow-listed per plugin,
//! checked again on the resolved IP at connect time, over pooled keep-alive
//! connections, never following redirects.
//!
//! A plugin's `wasi:http/outgoing-handler` calls land in [`EgressHooks::send_request`].
//! The request's scheme, host and port must match one of the plugin's
//! `allowed_hosts` ([`HostPattern`]); matching requests get the plugin's secret
//! headers injected and go out through one shared [`HttpClient`], whose
//! connector refuses addresses no grant should reach (see [`ip_allowed`]).

use super::bindings::outbound;
use super::host::clip;
use super::tape::Tape;
use bytes::Bytes;
use http::uri::Scheme;
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, FieldSizePayload};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Which hosts a grant matches.
#[derive(Debug, Clone, PartialEq)]
enum HostMatch {
    /// Exactly this host name or IP literal (lower case).
    Exact(String),
    /// Any subdomain of this suffix (`*.example.com` matches `a.example.com`).
    Suffix(String),
}

/// One `allowed_hosts` entry: `scheme://host[:port]`.
///
/// The scheme is `http` or `https`; the host may start with `*.`; without a
/// port the scheme's default port is meant.
#[derive(Debug, Clone, PartialEq)]
pub struct HostPattern {
    scheme: String,
    host: HostMatch,
    port: u16,
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

impl HostPattern {
    /// Parses `http://127.0.0.1:9000`, `https://api.example.com`, `https://*.example.com:8443`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("\"{text}\" must look like scheme://host[:port]"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("\"{text}\": scheme must be http or https"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "\"{text}\" must be scheme://host[:port] without path or credentials"
            ));
        }
        let (host, port) = split_host_port(rest).map_err(|e| format!("\"{text}\": {e}"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() || host == "*" {
            return Err(format!(
                "\"{text}\": a host is required (\"*\" alone is not allowed)"
            ));
        }
        let host = match host.strip_prefix("*.") {
            Some(suffix) if !suffix.is_empty() && !suffix.contains('*') => {
                HostMatch::Suffix(suffix.to_string())
            }
            _ if host.contains('*') => {
                return Err(format!(
                    "\"{text}\": only a leading \"*.\" wildcard is allowed"
                ))
            }
            _ => HostMatch::Exact(host),
        };
        let port = port.unwrap_or_else(|| default_port(&scheme));
        Ok(HostPattern { scheme, host, port })
    }

    /// Whether some request matches both this and `other` (an `[[inject]]`
    /// entry's host must share a host with a grant, or its header would
    /// never be sent).
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        if self.scheme != other.scheme || self.port != other.port {
            return false;
        }
        let under = |host: &str, suffix: &str| host.ends_with(&format!(".{suffix}"));
        match (&self.host, &other.host) {
            (HostMatch::Exact(a), HostMatch::Exact(b)) => a == b,
            (HostMatch::Suffix(a), HostMatch::Suffix(b)) => a == b || under(a, b) || under(b, a),
            (HostMatch::Suffix(s), HostMatch::Exact(h))
            | (HostMatch::Exact(h), HostMatch::Suffix(s)) => under(h, s),
        }
    }

    /// Whether a request to `uri` matches this grant.
    pub fn matches(&self, uri: &Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let Some(host) = uri.host() else { return false };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri.port_u16().unwrap_or_else(|| default_port(&scheme));
        if scheme != self.scheme || port != self.port {
            return false;
        }
        match &self.host {
            HostMatch::Exact(h) => *h == host,
            HostMatch::Suffix(s) => {
                host.len() > s.len() + 1
                    && host.ends_with(s.as_str())
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
            }
        }
    }
}

/// Whether the connector may connect to `ip`, given the host name the request
/// used. Never: unspecified and "this network" (`0.0.0.0/8`), multicast,
/// reserved (`240.0.0.0/4`, broadcast), link-local (cloud metadata lives at
/// 169.254.169.254). Loopback, private, shared (`100.64.0.0/10`), protocol
/// (`192.0.0.0/24`) and benchmarking (`198.18.0.0/15`) ranges, and IPv6
/// unique-local and site-local ones, only when the grant names them directly
/// (an IP literal or `localhost`): a public host name that resolves to them is
/// refused, which stops DNS rebinding into the local network. An IPv6 address
/// that carries an IPv4 one (mapped `::ffff:0:0/96`, compatible `::/96`,
/// NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address it
/// reaches; the local-use NAT64 prefix `64:ff9b:1::/48` counts as private.
pub fn ip_allowed(ip: IpAddr, host: &str) -> bool {
    let literal = host.parse::<IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost");
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if a == 0 || v4.is_multicast() || a >= 240 || v4.is_link_local() {
                return false;
            }
            if v4.is_loopback()
                || v4.is_private()
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18)
            {
                return literal;
            }
            true
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6) {
                return ip_allowed(IpAddr::V4(v4), host);
            }
            let seg = v6.segments();
            if v6.is_unspecified() || v6.is_multicast() || (seg[0] & 0xffc0) == 0xfe80 {
                return false;
            }
            if v6.is_loopback()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfec0
                || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1)
            {
                return literal;
            }
            true
        }
    }
}

/// The IPv4 address an IPv6 address carries and reaches, if it is of a kind
/// that does: IPv4-mapped, IPv4-compatible (not `::` or `::1`), NAT64
/// well-known prefix, 6to4.
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let seg = v6.segments();
    let low = |hi: u16, lo: u16| std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if seg[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low(seg[6], seg[7]));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(low(seg[1], seg[2]));
    }
    None
}

/// A plain or TLS connection, as the pooled client sees it.
pub enum Stream {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A pooled connection: [`Stream`] in hyper's I/O traits.
pub struct Conn(TokioIo<Stream>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        hyper::rt::Write::is_write_vectored(&self.0)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Resolves, checks every address with [`ip_allowed`], connects, and wraps
/// `https` in TLS. Used by the pooled client for new connections only.
#[derive(Clone)]
pub struct Connector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl Connector {
    fn new(connect_timeout: Duration) -> Self {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3 is supported by ring")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        });
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            connect_timeout,
        }
    }

    async fn connect(self, uri: Uri) -> Result<Conn, std::io::Error> {
        let denied =
            |msg: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, Blocked(msg));
        let host = uri
            .host()
            .ok_or_else(|| denied("request has no host".into()))?
            .to_string();
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host((bare.as_str(), port)),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "DNS lookup timed out"))??
        .collect();
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| ip_allowed(a.ip(), &bare))
            .collect();
        if allowed.is_empty() {
            return Err(denied(format!(
                "{bare} resolves only to blocked addresses ({addrs:?})"
            )));
        }
        let mut last = None;
        for addr in allowed {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    let stream = if tls {
                        let name =
                            rustls::pki_types::ServerName::try_from(bare.clone()).map_err(|e| {
                                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                            })?;
                        // The handshake has its own deadline: the pool may
                        // finish a connect in the background, where no
                        // request's deadline covers it.
                        let handshake = self.tls.connect(name, tcp);
                        match tokio::time::timeout(self.connect_timeout, handshake).await {
                            Ok(tls) => Stream::Tls(Box::new(tls?)),
                            Err(_) => {
                                return Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "TLS handshake timed out",
                                ))
                            }
                        }
                    } else {
                        Stream::Plain(tcp)
                    };
                    return Ok(Conn(TokioIo::new(stream)));
                }
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no address to connect to")))
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// Outbound requests in flight at once across all plugins (from sending
/// the request to the end of reading its answer). More wait for a place,
/// within their own deadline. Bounds the sockets plugins can hold open
/// together, far below the process's file-descriptor limit.
pub const EGRESS_IN_FLIGHT: usize = 1024;

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The shared outbound client: one keep-alive pool for every plugin, and
/// the host-wide bound on requests in flight ([`EGRESS_IN_FLIGHT`]).
#[derive(Clone)]
pub struct HttpClient {
    pool: Client<Connector, WasiBody>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Builds the shared client.
pub fn client(connect_timeout: Duration) -> HttpClient {
    HttpClient {
        pool: Client::builder(TokioExecutor::new())
            // Without a timer hyper-util never closes idle connections.
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(256)
            .build(Connector::new(connect_timeout)),
        in_flight: Arc::new(tokio::sync::Semaphore::new(EGRESS_IN_FLIGHT)),
    }
}

/// Why the host refuses to send a request whatever the grants say, if it
/// does: credentials in the URL (each distinct user name would get its own
/// pool of connections, and a `Host` header carrying it), or a method that
/// has a server echo the request's headers back (`TRACE`, `TRACK`: the
/// injected secrets with them) or opens a tunnel (`CONNECT`).
fn refused_shape(method: &http::Method, uri: &Uri) -> Option<(HttpError, &'static str)> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Some((
            HttpError::HttpRequestUriInvalid,
            "credentials in the URL are not allowed (use a header or [[inject]])",
        ));
    }
    // Any letter case, without an allocation per request.
    let is = |name: &str| method.as_str().eq_ignore_ascii_case(name);
    let why = if is("TRACE") || is("TRACK") {
        "TRACE and TRACK would echo the request's headers"
    } else if is("CONNECT") {
        "CONNECT tunnels are not allowed"
    } else {
        return None;
    };
    Some((HttpError::HttpRequestMethodInvalid, why))
}

/// A header the host adds to a plugin's matching requests; the value is secret.
#[derive(Clone)]
pub struct Injection {
    /// Which requests.
    pub host: HostPattern,
    /// Header name.
    pub header: HeaderName,
    /// Header value (marked sensitive).
    pub value: HeaderValue,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Injection({} for {:?}: <redacted>)",
            self.header, self.host
        )
    }
}

/// How a refused address is told apart from other connect errors.
const BLOCKED: &str = "blocked by the egress policy";

/// The connector's refusal of an address no grant may reach. Its debug
/// text (what hyper's error chain shows) carries [`BLOCKED`] too.
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{BLOCKED}: {}", self.0)
    }
}

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Blocked {}

/// One plugin's outbound grants.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    /// The plugin's name, for log lines.
    pub plugin: String,
    /// Where it may connect.
    pub allowed: Vec<HostPattern>,
    /// Secret headers to add.
    pub inject: Vec<Injection>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Largest response body the plugin may read.
    pub max_response_bytes: u64,
    /// Largest total of the response bodies of one `outbound.send-all`
    /// call, which the host holds before they go into the guest's memory
    /// (set to the plugin's `memory_mib`: more could not land there anyway).
    pub max_call_bytes: u64,
    /// Record or replay exchanges (only `weft plugin test` sets this).
    pub tape: Option<Arc<Tape>>,
    /// The plugin's own share of the host's requests in flight
    /// ([`PLUGIN_IN_FLIGHT`]): one plugin cannot take them all.
    pub share: Arc<tokio::sync::Semaphore>,
}

/// Requests one plugin may have in flight at once (across its calls), of
/// the host's [`EGRESS_IN_FLIGHT`].
pub const PLUGIN_IN_FLIGHT: usize = 256;

/// A fresh [`EgressPolicy::share`].
pub fn plugin_share() -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new(PLUGIN_IN_FLIGHT))
}

impl EgressPolicy {
    /// Whether the plugin may send a request to `uri`.
    pub fn allows(&self, uri: &Uri) -> bool {
        self.allowed.iter().any(|p| p.matches(uri))
    }
}

/// The `wasi:http` hooks of one plugin call: applies its [`EgressPolicy`].
#[derive(Clone)]
pub struct EgressHooks {
    /// The plugin's grants.
    pub policy: Arc<EgressPolicy>,
    /// The shared pooled client.
    pub client: HttpClient,
    /// The event being handled, for log lines.
    pub event_id: Option<String>,
    /// The call's log lines (a denied request's warning counts as one).
    pub log_budget: super::host::LogBudget,
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

/// Largest write into a `wasi:http` outgoing body the host takes at once;
/// with one write buffered (and one on its way), a request body under
/// construction holds at most twice this in host memory
/// (wasmtime-wasi-http's default write is 1 MiB, and the guest's memory
/// limit does not count it). Guests learn it from
/// `check-write`; the Rust SDK writes 4 KiB at a time.
const OUTGOING_BODY_CHUNK: usize = 64 * 1024;

impl WasiHttpHooks for EgressHooks {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        OUTGOING_BODY_CHUNK
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let exchange = self.exchange(request, options.and_then(|o| o.first_byte_timeout));
        Box::new(async move {
            let done = Box::new(async { Ok(()) })
                as Box<dyn Future<Output = Result<(), HttpError>> + Send>;
            exchange.await.map(|response| (response, done))
        })
    }
}

impl EgressHooks {
    /// Sends one request under the plugin's policy: the grant check, the
    /// secret headers, the shared pool, one deadline for the head and the
    /// body, and the response-size limit. Both outbound paths
    /// (`wasi:http/outgoing-handler` and `weft:connector/outbound`) end here.
    fn exchange(
        &self,
        mut request: http::Request<WasiBody>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<http::Response<WasiBody>, HttpError>> + Send + 'static {
        let policy = self.policy.clone();
        let client = self.client.clone();
        let event_id = self.event_id.clone().unwrap_or_default();
        let log_budget = self.log_budget.clone();
        async move {
            let uri = request.uri().clone();
            if let Some((error, why)) = refused_shape(request.method(), &uri) {
                if log_budget.take(&policy.plugin, &event_id) {
                    tracing::warn!(plugin = %policy.plugin, event = %event_id, method = %request.method(), url = %clip(&uri.to_string()), "outbound request refused: {why}");
                }
                return Err(error);
            }
            if !policy.allows(&uri) {
                if log_budget.take(&policy.plugin, &event_id) {
                    tracing::warn!(plugin = %policy.plugin, event = %event_id, url = %clip(&uri.to_string()), "outbound request denied: host not in the plugin's allowed_hosts");
                }
                return Err(HttpError::HttpRequestDenied);
            }
            let limit = policy.max_response_bytes;
            let mut captured = None;
            if let Some(tape) = &policy.tape {
                let (rebuilt, request_seen) = Tape::capture(request, limit).await?;
                if tape.replaying() {
                    return tape.answer(&request_seen, limit);
                }
                request = rebuilt;
                captured = Some(request_seen);
            }
            for injection in &policy.inject {
                if injection.host.matches(&uri) {
                    request
                        .headers_mut()
                        .insert(injection.header.clone(), injection.value.clone());
                }
            }
            let timeout = timeout.map_or(policy.timeout, |t| t.min(policy.timeout));
            // One deadline for the whole exchange: the response head, then
            // its body (`GuardedBody` keeps polling the same timer).
            let mut deadline = Box::pin(tokio::time::sleep(timeout));
            // A place among the plugin's and the host's requests in flight,
            // held until the answer's body is read or dropped (they move into
            // the body below). Waiting past the deadline is its own error:
            // the request was never sent.
            let places = async {
                let own = policy.share.clone().acquire_owned().await;
                let host = client.in_flight.clone().acquire_owned().await;
                own.and_then(|own| host.map(|host| (own, host)))
            };
            let permit = tokio::select! {
                permit = places => permit
                    .map_err(|_| HttpError::InternalError(Some("outbound client closed".into())))?,
                () = deadline.as_mut() => {
                    if log_budget.take(&policy.plugin, &event_id) {
                        tracing::warn!(plugin = %policy.plugin, event = %event_id, url = %clip(&uri.to_string()), "outbound request not sent: no place among the requests in flight before its deadline");
                    }
                    return Err(HttpError::ConnectionLimitReached);
                }
            };
            let sent = tokio::select! {
                sent = client.pool.request(request) => Ok(sent),
                () = deadline.as_mut() => Err(()),
            };
            let response = match sent {
                Err(()) => return Err(HttpError::ConnectionReadTimeout),
                Ok(Err(e)) => {
                    let detail = format!("{e:?}");
                    if tracing::enabled!(tracing::Level::DEBUG)
                        && log_budget.take(&policy.plugin, &event_id)
                    {
                        tracing::debug!(plugin = %policy.plugin, event = %event_id, url = %clip(&uri.to_string()), error = %clip(&detail), "outbound request failed");
                    }
                    // Only the policy's own refusal: a connect that fails
                    // with EPERM (a firewall rule being rolled out) is a
                    // network error like any other, and worth a retry.
                    if detail.contains(BLOCKED) {
                        if log_budget.take(&policy.plugin, &event_id) {
                            tracing::warn!(plugin = %policy.plugin, event = %event_id, url = %clip(&uri.to_string()), "outbound request denied: address blocked");
                        }
                        return Err(HttpError::DestinationIpProhibited);
                    }
                    if e.is_connect() {
                        return Err(HttpError::ConnectionRefused);
                    }
                    return Err(HttpError::InternalError(Some(e.to_string())));
                }
                Ok(Ok(r)) => r,
            };
            if let (Some(tape), Some(request_seen)) = (&policy.tape, captured) {
                // Recording reads the whole body now, under the same deadline
                // as a live body.
                return tokio::select! {
                    kept = tape.keep(request_seen, response, limit) => kept,
                    () = deadline.as_mut() => Err(HttpError::ConnectionReadTimeout),
                };
            }
            Ok(response.map(|inner| {
                GuardedBody {
                    inner,
                    seen: 0,
                    limit,
                    cut: false,
                    _permit: permit,
                    deadline,
                }
                .boxed_unsync()
            }))
        }
    }

    /// Sends whole requests for `weft:connector/outbound` and reads every
    /// answer to its end: [`OUTBOUND_IN_FLIGHT`] at a time, each answer's
    /// body holding at most the plugin's `max_response_bytes` (as the WIT
    /// says), and all of them together at most `max_call_bytes` (the
    /// guest's memory limit: the host holds them before they land there).
    /// The future owns what it needs, so the store is free while the
    /// requests are out.
    pub fn send_all(
        &self,
        requests: Vec<outbound::Request>,
    ) -> impl Future<Output = Vec<Result<outbound::Response, ErrorCode>>> + Send + 'static {
        let limit = self.policy.max_response_bytes;
        let budget = Arc::new(AtomicU64::new(self.policy.max_call_bytes));
        let hooks = self.clone();
        async move {
            let total = requests.len();
            let mut answers = Vec::with_capacity(total);
            let mut requests = requests.into_iter();
            // Each wave's futures are made when it starts: a call passing
            // many requests holds one wave of exchanges at a time.
            while answers.len() < total.min(SEND_ALL_MAX) {
                let wave: Vec<_> = requests
                    .by_ref()
                    .take(OUTBOUND_IN_FLIGHT.min(SEND_ALL_MAX - answers.len()))
                    .map(|request| {
                        let exchange = whole_request(request)
                            .map(|(request, timeout)| hooks.exchange(request, timeout));
                        // Boxed: the exchange is a large future, and
                        // `join_all` would otherwise copy each one several
                        // times.
                        Box::pin(read_whole(exchange, limit, budget.clone()))
                    })
                    .collect();
                answers.extend(futures::future::join_all(wave).await);
            }
            // Past the cap: never sent.
            answers.extend(requests.map(|_| {
                Err(ErrorCode::InternalError(Some(format!(
                    "more than {SEND_ALL_MAX} requests in one send-all call: not sent"
                ))))
            }));
            answers
        }
    }
}

/// Requests one `outbound.send-all` call may pass; the ones past it fail
/// without being sent.
pub const SEND_ALL_MAX: usize = 1024;

/// Requests of one `outbound.send-all` call in flight at once.
pub const OUTBOUND_IN_FLIGHT: usize = 256;

/// Awaits one exchange and reads its body: at most `limit` bytes, and at
/// most what is left of the call's `budget` of bytes held. A longer body is
/// cut there and marked `body_truncated` (the rest is not read): the status
/// and headers still say what the server did with the request, which is
/// what a sink needs to tell a delivery from a failure.
async fn read_whole(
    exchange: Result<impl Future<Output = Result<http::Response<WasiBody>, HttpError>>, ErrorCode>,
    limit: u64,
    budget: Arc<AtomicU64>,
) -> Result<outbound::Response, ErrorCode> {
    let response = exchange?.await.map_err(error_code)?;
    let (parts, mut body) = response.into_parts();
    let mut bytes = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            // Over `limit` on the way (`GuardedBody`): what was read is kept.
            Err(HttpError::HttpResponseBodySize(_)) => {
                truncated = true;
                break;
            }
            Err(e) => return Err(error_code(e)),
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let room = limit.saturating_sub(bytes.len() as u64);
        let wanted = (data.len() as u64).min(room);
        // Take what the call's budget still allows of it.
        let granted = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(wanted))
            })
            .map_or(0, |before| before.min(wanted));
        bytes.extend_from_slice(&data[..granted as usize]);
        if granted < data.len() as u64 {
            truncated = true;
            break;
        }
    }
    Ok(outbound::Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: bytes,
        body_truncated: truncated,
    })
}

/// The `wasi:http` error code the guest sees for a failed exchange: the same
/// one the `wasi:http` path reports for the errors [`EgressHooks::exchange`]
/// and [`GuardedBody`] produce.
fn error_code(e: HttpError) -> ErrorCode {
    match e {
        HttpError::HttpRequestDenied => ErrorCode::HttpRequestDenied,
        HttpError::DestinationIpProhibited => ErrorCode::DestinationIpProhibited,
        HttpError::ConnectionRefused => ErrorCode::ConnectionRefused,
        HttpError::ConnectionReadTimeout => ErrorCode::ConnectionReadTimeout,
        HttpError::HttpRequestMethodInvalid => ErrorCode::HttpRequestMethodInvalid,
        HttpError::HttpRequestUriInvalid => ErrorCode::HttpRequestUriInvalid,
        HttpError::ConnectionLimitReached => ErrorCode::ConnectionLimitReached,
        HttpError::HttpResponseBodySize(n) => ErrorCode::HttpResponseBodySize(n),
        HttpError::HttpResponseIncomplete => ErrorCode::HttpResponseIncomplete,
        HttpError::Hyper(e) => ErrorCode::from(e),
        HttpError::InternalError(detail) => ErrorCode::InternalError(detail),
        other => ErrorCode::InternalError(Some(other.to_string())),
    }
}

/// Turns an `outbound` request record into an HTTP request: a bad method,
/// URL or header is refused; hop-by-hop headers and `content-length` are
/// left out (hyper sets the length from the body).
fn whole_request(
    request: outbound::Request,
) -> Result<(http::Request<WasiBody>, Option<Duration>), ErrorCode> {
    let timeout = request.timeout_ms.map(Duration::from_millis);
    let method = http::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| ErrorCode::HttpRequestMethodInvalid)?;
    let uri: Uri = request
        .url
        .parse()
        .map_err(|_| ErrorCode::HttpRequestUriInvalid)?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ErrorCode::HttpRequestUriInvalid);
    }
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &request.headers {
        let bad = || {
            ErrorCode::HttpRequestHeaderSize(Some(FieldSizePayload {
                field_name: Some(name.clone()),
                field_size: None,
            }))
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        if wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(&name)
            || name == http::header::CONTENT_LENGTH
        {
            continue;
        }
        let value = HeaderValue::from_bytes(value).map_err(|_| bad())?;
        builder = builder.header(name, value);
    }
    let body = http_body_util::Full::new(Bytes::from(request.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = builder
        .body(body)
        .map_err(|e| ErrorCode::InternalError(Some(e.to_string())))?;
    Ok((request, timeout))
}

/// A response body held to the plugin's size limit and to the deadline of
/// the whole request (the same timer that bounded the wait for its head).
struct GuardedBody {
    inner: hyper::body::Incoming,
    seen: u64,
    limit: u64,
    /// The body went past `limit`: its first `limit` bytes were handed on,
    /// and every later poll is the size error.
    cut: bool,
    /// The request's places among the plugin's and the host's requests in
    /// flight, given back when the body is dropped.
    _permit: (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(this.seen)))));
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = this.limit.saturating_sub(this.seen);
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        // What still fits is handed on, then the error: the
                        // reader keeps the first `limit` bytes.
                        this.cut = true;
                        if room > 0 {
                            let mut data = data.clone();
                            data.truncate(room as usize);
                            return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                        }
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Splits `host[:port]`, accepting `[v6]:port`.
fn split_host_port(rest: &str) -> Result<(String, Option<u16>), String> {
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| format!("bad port \"{p}\""));
    if let Some(v6) = rest.strip_prefix('[') {
        let (host, tail) = v6.split_once(']').ok_or("unclosed [")?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), Some(parse_port(p)?))),
            None if tail.is_empty() => Ok((host.to_string(), None)),
            None => Err("junk after ]".into()),
        };
    }
    match rest.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), Some(parse_port(p)?))),
        None => Ok((rest.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An exchange that answers 200 with `size` bytes.
    fn answered(
        size: usize,
    ) -> Result<impl Future<Output = Result<http::Response<WasiBody>, HttpError>>, ErrorCode> {
        let body = http_body_util::Full::new(Bytes::from(vec![b'x'; size]))
            .map_err(|never| match never {})
            .boxed_unsync();
        Ok(async move { Ok(http::Response::new(body)) })
    }

    #[tokio::test]
    async fn answers_are_cut_at_the_limit_each_and_together_and_say_so() {
        // Each at most 100 bytes, all of one call at most 150.
        let budget = Arc::new(AtomicU64::new(150));
        let first = read_whole(answered(80), 100, budget.clone()).await.unwrap();
        assert_eq!((first.body.len(), first.body_truncated), (80, false));
        // Over the limit: the first 100 bytes, the status kept.
        let long = read_whole(answered(101), 100, budget.clone())
            .await
            .unwrap();
        assert_eq!(
            (long.status, long.body.len(), long.body_truncated),
            (200, 70, true),
            "only 70 of the call's 150 were left"
        );
        // The call's budget is spent: an empty body, still the status.
        let after = read_whole(answered(10), 100, budget.clone()).await.unwrap();
        assert_eq!(
            (after.status, after.body.len(), after.body_truncated),
            (200, 0, true)
        );
        // An empty body takes nothing and is whole.
        let empty = read_whole(answered(0), 100, budget).await.unwrap();
        assert_eq!((empty.body.len(), empty.body_truncated), (0, false));
    }

    fn whole(method: &str, url: &str, headers: &[(&str, &str)]) -> outbound::Request {
        outbound::Request {
            method: method.into(),
            url: url.into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: b"{}".to_vec(),
            timeout_ms: Some(250),
        }
    }

    #[test]
    fn whole_requests_become_http_requests_without_hop_by_hop_headers() {
        let (request, timeout) = whole_request(whole(
            "POST",
            "http://127.0.0.1:9000/orders?x=1",
            &[
                ("content-type", "application/json"),
                ("Connection", "close"),
                ("host", "elsewhere.example"),
                ("transfer-encoding", "chunked"),
                ("content-length", "999"),
            ],
        ))
        .unwrap();
        assert_eq!(request.method(), http::Method::POST);
        assert_eq!(request.uri(), "http://127.0.0.1:9000/orders?x=1");
        assert_eq!(timeout, Some(Duration::from_millis(250)));
        let names: Vec<&str> = request.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["content-type"],
            "hop-by-hop and length headers are left out"
        );
        assert_eq!(http_body::Body::size_hint(request.body()).exact(), Some(2));
    }

    #[test]
    fn malformed_whole_requests_get_wasi_http_error_codes() {
        let code = |r| whole_request(r).map(|_| ()).unwrap_err();
        assert!(matches!(
            code(whole("GE T", "http://a/", &[])),
            ErrorCode::HttpRequestMethodInvalid
        ));
        for url in ["not a url", "/relative", "ftp://a/x", "http:///nohost"] {
            assert!(
                matches!(
                    code(whole("GET", url, &[])),
                    ErrorCode::HttpRequestUriInvalid
                ),
                "{url}"
            );
        }
        match code(whole("GET", "http://a/", &[("bad name", "x")])) {
            ErrorCode::HttpRequestHeaderSize(Some(p)) => {
                assert_eq!(p.field_name.as_deref(), Some("bad name"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            code(whole("GET", "http://a/", &[("x-a", "line\nbreak")])),
            ErrorCode::HttpRequestHeaderSize(_)
        ));
    }

    /// The hooks of a plugin granted `allowed`, with a `timeout` per
    /// request and its outbound `share`.
    fn test_hooks(
        allowed: &[&str],
        timeout: Duration,
        share: Arc<tokio::sync::Semaphore>,
    ) -> EgressHooks {
        EgressHooks {
            policy: Arc::new(EgressPolicy {
                plugin: "p".into(),
                allowed: allowed
                    .iter()
                    .map(|h| HostPattern::parse(h).unwrap())
                    .collect(),
                inject: vec![],
                timeout,
                max_response_bytes: 1024,
                max_call_bytes: 1 << 20,
                tape: None,
                share,
            }),
            client: client(Duration::from_secs(1)),
            event_id: None,
            log_budget: Default::default(),
        }
    }

    #[tokio::test]
    async fn echoing_methods_and_urls_with_credentials_are_never_sent() {
        // Granted, and nothing listens there: a request that went out
        // would fail to connect instead.
        let hooks = test_hooks(
            &["http://127.0.0.1:9"],
            Duration::from_secs(5),
            plugin_share(),
        );
        let answers = hooks
            .send_all(vec![
                whole("TRACE", "http://127.0.0.1:9/", &[]),
                whole("track", "http://127.0.0.1:9/", &[]),
                whole("CONNECT", "http://127.0.0.1:9/", &[]),
                whole("GET", "http://someone:pw@127.0.0.1:9/", &[]),
                whole("GET", "http://127.0.0.1:9/", &[]),
            ])
            .await;
        let codes: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Err(e) => format!("{e:?}"),
                Ok(r) => format!("sent: {}", r.status),
            })
            .collect();
        assert_eq!(
            codes[..4],
            [
                "ErrorCode::HttpRequestMethodInvalid",
                "ErrorCode::HttpRequestMethodInvalid",
                "ErrorCode::HttpRequestMethodInvalid",
                "ErrorCode::HttpRequestUriInvalid",
            ],
            "{codes:?}"
        );
        // The same request, well formed, did go out (and found nobody).
        assert_eq!(codes[4], "ErrorCode::ConnectionRefused", "{codes:?}");
    }

    #[tokio::test]
    async fn a_plugin_whose_share_is_taken_waits_then_fails_unsent() {
        // No place left in the plugin's share: the request waits for one
        // until its deadline, then fails as never sent (not as a timeout of
        // the server's).
        let hooks = test_hooks(
            &["http://127.0.0.1:9"],
            Duration::from_millis(100),
            Arc::new(tokio::sync::Semaphore::new(0)),
        );
        let answers = hooks
            .send_all(vec![whole("GET", "http://127.0.0.1:9/", &[])])
            .await;
        assert!(
            matches!(answers[..], [Err(ErrorCode::ConnectionLimitReached)]),
            "{answers:?}"
        );
    }

    #[tokio::test]
    async fn a_send_all_call_sends_at_most_its_cap() {
        let hooks = test_hooks(&[], Duration::from_secs(5), plugin_share());
        let requests = (0..SEND_ALL_MAX + 3)
            .map(|_| whole("GET", "http://127.0.0.1:9/", &[]))
            .collect();
        let answers = hooks.send_all(requests).await;
        assert_eq!(answers.len(), SEND_ALL_MAX + 3);
        // Within the cap: judged (here denied: nothing is granted).
        assert!(answers[..SEND_ALL_MAX]
            .iter()
            .all(|a| matches!(a, Err(ErrorCode::HttpRequestDenied))));
        // Past it: not even judged.
        assert!(answers[SEND_ALL_MAX..].iter().all(
            |a| matches!(a, Err(ErrorCode::InternalError(Some(m))) if m.contains("not sent"))
        ));
    }

    #[test]
    fn exchange_errors_map_to_the_codes_wasi_http_reports() {
        assert!(matches!(
            error_code(HttpError::HttpRequestDenied),
            ErrorCode::HttpRequestDenied
        ));
        assert!(matches!(
            error_code(HttpError::DestinationIpProhibited),
            ErrorCode::DestinationIpProhibited
        ));
        assert!(matches!(
            error_code(HttpError::HttpResponseBodySize(Some(9))),
            ErrorCode::HttpResponseBodySize(Some(9))
        ));
        assert!(matches!(
            error_code(HttpError::ConnectionReadTimeout),
            ErrorCode::ConnectionReadTimeout
        ));
    }

    #[test]
    fn patterns_overlap_when_some_request_matches_both() {
        let p = |t: &str| HostPattern::parse(t).unwrap();
        let both = |a: &str, b: &str| {
            let (a, b) = (p(a), p(b));
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "symmetric");
            a.overlaps(&b)
        };
        assert!(both(
            "https://api.example.com",
            "https://api.example.com:443"
        ));
        assert!(both("https://*.example.com", "https://api.example.com"));
        assert!(both("https://*.example.com", "https://*.eu.example.com"));
        assert!(!both("https://*.example.com", "https://example.com"));
        assert!(!both("https://*.example.com", "https://api.other.com"));
        assert!(!both("https://api.example.com", "http://api.example.com"));
        assert!(!both(
            "https://api.example.com",
            "https://api.example.com:8443"
        ));
        assert!(!both("https://a.example.com", "https://b.example.com"));
    }

    #[test]
    fn patterns_match_scheme_host_and_port() {
        let p = HostPattern::parse("http://127.0.0.1:9000").unwrap();
        assert!(p.matches(&"http://127.0.0.1:9000/x".parse().unwrap()));
        assert!(!p.matches(&"http://127.0.0.1:9001/x".parse().unwrap()));
        assert!(!p.matches(&"https://127.0.0.1:9000/x".parse().unwrap()));
        let w = HostPattern::parse("https://*.example.com").unwrap();
        assert!(w.matches(&"https://api.example.com/x".parse().unwrap()));
        assert!(!w.matches(&"https://example.com/x".parse().unwrap()));
        assert!(!w.matches(&"https://evilexample.com/x".parse().unwrap()));
        assert!(!w.matches(&"https://api.example.com:8443/x".parse().unwrap()));
        assert!(HostPattern::parse("*").is_err());
        assert!(HostPattern::parse("ftp://x").is_err());
        assert!(HostPattern::parse("http://a/b").is_err());
    }

    #[test]
    fn blocked_addresses() {
        assert!(!ip_allowed(
            "169.254.169.254".parse().unwrap(),
            "169.254.169.254"
        ));
        assert!(!ip_allowed("0.0.0.0".parse().unwrap(), "0.0.0.0"));
        assert!(ip_allowed("127.0.0.1".parse().unwrap(), "127.0.0.1"));
        assert!(!ip_allowed(
            "127.0.0.1".parse().unwrap(),
            "evil.example.com"
        ));
        assert!(!ip_allowed(
            "10.1.2.3".parse().unwrap(),
            "internal.example.com"
        ));
        assert!(ip_allowed("93.184.216.34".parse().unwrap(), "example.com"));
    }

    #[test]
    fn ipv4_hidden_in_ipv6_and_reserved_ranges_are_judged_by_where_they_reach() {
        let from_name = |ip: &str| ip_allowed(ip.parse().unwrap(), "api.example.com");
        // Metadata and private addresses behind mapped, compatible, NAT64
        // and 6to4 forms, reached through a public name: refused.
        for ip in [
            "::ffff:169.254.169.254",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::a00:5",
            "2002:a00:5::1",
            "2002:a9fe:a9fe::",
            "64:ff9b:1::a00:5",
            "fec0::1",
            "fd00::1",
        ] {
            assert!(!from_name(ip), "{ip}");
        }
        // Reserved IPv4 ranges.
        for ip in [
            "0.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.255",
            "100.64.0.1",
        ] {
            assert!(!from_name(ip), "{ip}");
        }
        // A public IPv4 address behind NAT64 or 6to4 is public.
        assert!(from_name("64:ff9b::5db8:d822"));
        assert!(from_name("2002:5db8:d822::1"));
        assert!(from_name("2606:4700::1111"));
        assert!(from_name("198.20.0.1"));
        // Named directly, a private range is allowed; metadata never is.
        assert!(ip_allowed(
            "64:ff9b::a00:5".parse().unwrap(),
            "64:ff9b::a00:5"
        ));
        assert!(!ip_allowed(
            "64:ff9b::a9fe:a9fe".parse().unwrap(),
            "64:ff9b::a9fe:a9fe"
        ));
        assert!(ip_allowed("::1".parse().unwrap(), "localhost"));
        assert!(!from_name("::1"));
        assert!(!from_name("::"));
    }
}
