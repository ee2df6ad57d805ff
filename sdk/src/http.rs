//! A small blocking HTTP client.
//!
//! [`Request::send`] and [`send_all`] hand whole requests to the host's
//! `weft:connector/outbound` interface: one host call per batch. A request
//! can also go out over the standard `wasi:http/outgoing-handler`
//! ([`Request::start`], [`Request::send_over_wasi_http`]); both paths get the
//! same grants, limits and errors.
//!
//! The host lets a request through only to the hosts the plugin's config
//! grants (`allowed_hosts`); anything else fails with an
//! [`HttpError::Transport`] error naming the denial. Redirects are never
//! followed.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::bindings::weft::connector::outbound;
use crate::DeliveryOutcome;

/// Why a request failed before a response arrived.
#[derive(Debug)]
pub enum HttpError {
    /// The URL could not be parsed.
    InvalidUrl(String),
    /// The host refused or the transport failed (includes "not allowed" denials).
    Transport(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(u) => write!(f, "invalid url: {u}"),
            HttpError::Transport(e) => write!(f, "http transport error: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A response with its body fully read.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| k.to_ascii_lowercase() == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// An outgoing request under construction.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout_ms: Option<u64>,
}

impl Request {
    /// A request with any method.
    pub fn new(method: &str, url: &str) -> Self {
        Request {
            method: method.to_string(),
            url: url.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A GET request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    /// Sets connect and first-byte timeouts (the host also enforces its own).
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sends the request and reads the whole response (one host call).
    pub fn send(self) -> Result<Response, HttpError> {
        send_all(vec![self])
            .pop()
            .unwrap_or_else(|| Err(HttpError::Transport("no answer from the host".into())))
    }

    /// Sends the request over the standard `wasi:http/outgoing-handler`
    /// and reads the whole response: what [`Request::send`] does, in about
    /// twenty-five host calls instead of one.
    pub fn send_over_wasi_http(self) -> Result<Response, HttpError> {
        self.start()?.wait()
    }

    /// The request as the `outbound` interface takes it.
    fn whole(self) -> Result<outbound::Request, HttpError> {
        ParsedUrl::parse(&self.url)?;
        Ok(outbound::Request {
            method: self.method,
            url: self.url,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| (name, value.into_bytes()))
                .collect(),
            body: self.body,
            timeout_ms: self.timeout_ms,
        })
    }

    /// Sends the request over `wasi:http/outgoing-handler` without waiting
    /// for the answer: several requests started one after the other are in
    /// flight at the same time.
    pub fn start(self) -> Result<InFlight, HttpError> {
        let url = ParsedUrl::parse(&self.url)?;
        // All headers in one host call (not one `append` per header).
        let mut entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.as_bytes().to_vec()))
            .collect();
        // A declared length: the body goes out as one piece instead of HTTP/1
        // chunked encoding, and the receiver knows where it ends without
        // waiting for the end-of-body marker.
        let declared = self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-length"));
        if !declared && (!self.body.is_empty() || has_body(&self.method)) {
            entries.push((
                "content-length".to_string(),
                self.body.len().to_string().into_bytes(),
            ));
        }
        let fields = Fields::from_list(&entries).map_err(|e| {
            // Name the header the host refused (slow path, errors only).
            let probe = Fields::new();
            let bad = self
                .headers
                .iter()
                .find(|(name, value)| probe.append(name, value.as_bytes()).is_err())
                .map(|(name, _)| name.as_str())
                .unwrap_or("?");
            HttpError::Transport(format!("header {bad}: {e:?}"))
        })?;
        let request = OutgoingRequest::new(fields);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "HEAD" => Method::Head,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_string()),
        };
        let bad = |what: &str| HttpError::InvalidUrl(format!("{what} in {}", self.url));
        request.set_method(&method).map_err(|_| bad("method"))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|_| bad("scheme"))?;
        request
            .set_authority(Some(&url.authority))
            .map_err(|_| bad("authority"))?;
        request
            .set_path_with_query(Some(&url.path_and_query))
            .map_err(|_| bad("path"))?;

        let body = request
            .body()
            .map_err(|_| HttpError::Transport("request body taken".into()))?;
        {
            let stream = body
                .write()
                .map_err(|_| HttpError::Transport("request body stream".into()))?;
            for chunk in self.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Transport(format!("writing body: {e:?}")))?;
            }
        }
        let options = self.timeout_ms.map(|ms| {
            let options = RequestOptions::new();
            let ns = ms.saturating_mul(1_000_000);
            let _ = options.set_connect_timeout(Some(ns));
            let _ = options.set_first_byte_timeout(Some(ns));
            let _ = options.set_between_bytes_timeout(Some(ns));
            options
        });
        let future = outgoing_handler::handle(request, options)
            .map_err(|e| HttpError::Transport(describe(&e)))?;
        OutgoingBody::finish(body, None).map_err(|e| HttpError::Transport(describe(&e)))?;
        Ok(InFlight { future })
    }
}

/// Whether requests of this method carry a body (so an empty one is declared
/// as `content-length: 0`).
fn has_body(method: &str) -> bool {
    ["POST", "PUT", "PATCH"]
        .iter()
        .any(|m| method.eq_ignore_ascii_case(m))
}

/// A request that has been sent and whose response has not been read yet.
pub struct InFlight {
    future: outgoing_handler::FutureIncomingResponse,
}

impl InFlight {
    /// Waits for the response and reads its whole body.
    pub fn wait(self) -> Result<Response, HttpError> {
        let future = self.future;
        future.subscribe().block();
        let arrived = future.get();
        let incoming = match arrived {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(HttpError::Transport(describe(&e))),
            Some(Err(())) | None => {
                return Err(HttpError::Transport("response already taken".into()))
            }
        };
        let status = incoming.status();
        let headers = incoming.headers().entries();
        let body = incoming
            .consume()
            .map_err(|_| HttpError::Transport("response body taken".into()))?;
        // With a content-length, stop once that many bytes are in rather than
        // waiting for one more read to report the end of the stream.
        let expected = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
        let mut bytes = Vec::with_capacity(expected.unwrap_or(0).min(1 << 20));
        {
            let stream = body
                .stream()
                .map_err(|_| HttpError::Transport("response body stream".into()))?;
            loop {
                if expected.is_some_and(|n| bytes.len() >= n) {
                    break;
                }
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Transport(format!(
                            "reading body: {}",
                            without_backtrace(e.to_debug_string())
                        )))
                    }
                }
            }
        }
        // Dropped rather than `finish`ed: no trailers are read, and `finish`
        // would cost two host calls (it returns a future for them).
        drop(body);
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

/// Sends every request at once and returns the answers in the same order.
///
/// All requests are in flight together (over the host's pooled connections),
/// so a batch of N costs about one round trip, not N, and one host call. A
/// sink's `deliver_batch` is the natural user. The answers of one call hold
/// at most the plugin's `limits.max_response_bytes` together.
pub fn send_all(requests: Vec<Request>) -> Vec<Result<Response, HttpError>> {
    let mut answers: Vec<Option<Result<Response, HttpError>>> = Vec::with_capacity(requests.len());
    let mut whole = Vec::with_capacity(requests.len());
    for request in requests {
        match request.whole() {
            Ok(r) => {
                whole.push(r);
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    let sent = if whole.is_empty() {
        Vec::new()
    } else {
        outbound::send_all(&whole)
    };
    let mut sent = sent.into_iter();
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| match sent.next() {
                Some(Ok(r)) => Ok(Response {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }),
                Some(Err(e)) => Err(HttpError::Transport(describe(&e))),
                None => Err(HttpError::Transport("no answer from the host".into())),
            })
        })
        .collect()
}

/// The message of a host error's debug text, without the host's stack trace
/// (present when the host runs with `RUST_BACKTRACE` set).
fn without_backtrace(mut text: String) -> String {
    if let Some(at) = text.find("\nStack backtrace:") {
        text.truncate(at);
    }
    text
}

fn describe(e: &ErrorCode) -> String {
    match e {
        ErrorCode::InternalError(Some(msg)) => msg.clone(),
        other => format!("{other:?}"),
    }
}

struct ParsedUrl {
    scheme: Scheme,
    authority: String,
    path_and_query: String,
}

impl ParsedUrl {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl(url.to_string()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => Scheme::Other(other.to_string()),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(HttpError::InvalidUrl(url.to_string()));
        }
        let path_and_query = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(ParsedUrl {
            scheme,
            authority: authority.to_string(),
            path_and_query,
        })
    }
}

/// Parses a `Retry-After` header given in seconds into milliseconds.
pub fn retry_after_ms(response: &Response) -> Option<u64> {
    response
        .header("retry-after")?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1000))
}

/// The usual webhook-delivery reading of a response: 2xx delivered; 408, 429
/// and 5xx retried (honoring `Retry-After`); redirects and other 4xx rejected.
pub fn classify(response: &Response) -> DeliveryOutcome {
    let status = response.status;
    let snippet =
        String::from_utf8_lossy(&response.body[..response.body.len().min(200)]).into_owned();
    match status {
        200..=299 => DeliveryOutcome::Delivered,
        408 | 429 | 500..=599 => {
            let reason = format!("HTTP {status}: {snippet}");
            match retry_after_ms(response) {
                Some(ms) => DeliveryOutcome::retry_after(reason, ms),
                None => DeliveryOutcome::retry(reason),
            }
        }
        300..=399 => {
            DeliveryOutcome::rejected(format!("HTTP {status}: redirects are not followed"))
        }
        _ => DeliveryOutcome::rejected(format!("HTTP {status}: {snippet}")),
    }
}
