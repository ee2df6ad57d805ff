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
//! [`HttpError::Refused`] error naming the denial. Redirects are never
//! followed.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    http_error_code, ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;
use crate::bindings::weft::connector::outbound;
use crate::DeliveryOutcome;

/// Why a request failed before a response arrived.
#[derive(Debug)]
pub enum HttpError {
    /// The URL could not be parsed.
    InvalidUrl(String),
    /// The host would not send the request as it is: its destination is not
    /// granted (`allowed_hosts`) or is a blocked address, or its method,
    /// URL or a header is malformed. Sending it again cannot help.
    Refused(String),
    /// The request went out (or tried to) and failed on the way: connection
    /// refused or reset, timeout, a response too large... Worth a retry.
    Transport(String),
}

impl HttpError {
    /// Whether sending the same request again can never succeed
    /// ([`HttpError::InvalidUrl`], [`HttpError::Refused`]): a sink should
    /// reject the event rather than retry it.
    pub fn is_permanent(&self) -> bool {
        matches!(self, HttpError::InvalidUrl(_) | HttpError::Refused(_))
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(u) => write!(f, "invalid url: {u}"),
            HttpError::Refused(e) => write!(f, "request refused by the host: {e}"),
            HttpError::Transport(e) => write!(f, "http transport error: {e}"),
        }
    }
}

/// The error for a host error code: [`HttpError::Refused`] for what the
/// request itself or its grants cause, [`HttpError::Transport`] otherwise.
fn failure(e: &ErrorCode) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestUriTooLong
        | ErrorCode::HttpRequestHeaderSectionSize(_)
        | ErrorCode::HttpRequestHeaderSize(_)
        | ErrorCode::HttpRequestTrailerSectionSize(_)
        | ErrorCode::HttpRequestTrailerSize(_) => HttpError::Refused(describe(e)),
        other => HttpError::Transport(describe(other)),
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
    /// Body bytes: all of them, or the first ones when the body was longer
    /// than the plugin may read (see `truncated`).
    pub body: Vec<u8>,
    /// The body was longer than the plugin's `limits.max_response_bytes`
    /// (or than the call's budget for response bodies, its `memory_mib`):
    /// `body` holds what fitted and the rest was not read. The status and
    /// headers are the server's own either way.
    pub truncated: bool,
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

    /// Sets one deadline for the whole exchange (connecting, the response
    /// head and its body); the plugin's `limits.http_timeout_ms` always
    /// applies, and a longer value here is lowered to it.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// The headers as added, in order (for a plugin's own tests: what
    /// would be sent).
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
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
            HttpError::Refused(format!("header {bad}: {e:?}"))
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
        let options = self.timeout_ms.map(|ms| {
            let options = RequestOptions::new();
            let ns = ms.saturating_mul(1_000_000);
            let _ = options.set_connect_timeout(Some(ns));
            let _ = options.set_first_byte_timeout(Some(ns));
            let _ = options.set_between_bytes_timeout(Some(ns));
            options
        });
        // The request goes out first and its body streams after it: the
        // host buffers only a write or two of a body nobody sends yet, so
        // writing a longer body before `handle` would wait for ever.
        let future = outgoing_handler::handle(request, options).map_err(|e| failure(&e))?;
        let stream = body
            .write()
            .map_err(|_| HttpError::Transport("request body stream".into()))?;
        // `blocking-write-and-flush` takes at most 4096 bytes a call. A write
        // fails when the host gave up on the request (refused it, found no
        // place for it, or the server answered early): the answer then
        // says why, so the body is abandoned and `wait` reads the answer.
        let mut written = Ok(());
        for chunk in self.body.chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                written = Err(stream_error(e));
                break;
            }
        }
        drop(stream);
        if written.is_ok() {
            OutgoingBody::finish(body, None).map_err(|e| failure(&e))?;
        }
        Ok(InFlight {
            future,
            unsent: written.err(),
        })
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
    /// Why the body could not be written in full, if it could not: the
    /// error when the answer does not say more.
    unsent: Option<String>,
}

impl InFlight {
    /// Waits for the response and reads its whole body.
    pub fn wait(self) -> Result<Response, HttpError> {
        let future = self.future;
        future.subscribe().block();
        let arrived = future.get();
        let incoming = match arrived {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(e))) => return Err(failure(&e)),
            Some(Err(())) | None => {
                return Err(HttpError::Transport("response already taken".into()))
            }
        };
        if let Some(unsent) = self.unsent {
            // An answer to a request whose body did not all go out: the
            // server answered early (a 413, a 401). Its status stands, but
            // a success cannot be trusted to have seen the whole body.
            if (200..300).contains(&incoming.status()) {
                return Err(HttpError::Transport(format!("writing body: {unsent}")));
            }
        }
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
        let mut truncated = false;
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
                        // Past the plugin's limit: what was read is the
                        // answer's start, and the status still stands.
                        let detail = without_backtrace(e.to_debug_string());
                        if over_the_limit(&e, &detail) {
                            truncated = true;
                            break;
                        }
                        return Err(HttpError::Transport(format!("reading body: {detail}")));
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
            truncated,
        })
    }
}

/// Whether this plugin's grants (its `allowed_hosts` in the host's config)
/// let a request go to `url`. Meant for `check_config`: refuse a URL the
/// plugin could never reach when the config is loaded, rather than fail
/// every event.
///
/// ```no_run
/// fn check_config() -> Result<(), String> {
///     let url = weft_sdk::config::get("url").ok_or("`url` is required")?;
///     if !weft_sdk::http::allowed(&url) {
///         return Err(format!("url = \"{url}\": not in this plugin's allowed_hosts"));
///     }
///     Ok(())
/// }
/// ```
pub fn allowed(url: &str) -> bool {
    outbound::allows(url)
}

/// Sends every request at once and returns the answers in the same order.
///
/// All requests are in flight together (over the host's pooled connections),
/// so a batch of N costs about one round trip, not N, and one host call. A
/// sink's `deliver_batch` is the natural user. Each answer's body holds at
/// most the plugin's `limits.max_response_bytes`.
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
                    truncated: r.body_truncated,
                }),
                Some(Err(e)) => Err(failure(&e)),
                None => Err(HttpError::Transport("no answer from the host".into())),
            })
        })
        .collect()
}

/// Whether a body read failed because the body went past the plugin's
/// `limits.max_response_bytes`. `http-error-code` says so where the host
/// reports the standard error code; the Weft host (on wasmtime-wasi-http
/// 48) reports its own error type, which `http-error-code` does not map, so
/// its text is read too (`tests/tests/e2e/sandbox.rs` checks both paths).
fn over_the_limit(e: &crate::bindings::wasi::io::error::Error, detail: &str) -> bool {
    matches!(http_error_code(e), Some(ErrorCode::HttpResponseBodySize(_)))
        || detail.contains("response body size exceeds limit")
}

/// A stream error as text, without the host's stack trace.
fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "the stream was closed".to_string(),
        StreamError::LastOperationFailed(e) => without_backtrace(e.to_debug_string()),
    }
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

/// The delay a `Retry-After` header asks for, in milliseconds: delay-seconds
/// (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`, and the two
/// obsolete forms HTTP still accepts), counted from now; a date in the past
/// is no delay. `None` when absent or unreadable.
pub fn retry_after_ms(response: &Response) -> Option<u64> {
    let value = response.header("retry-after")?;
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only; too many of them is "a very long time".
        return Some(
            value
                .parse::<u64>()
                .unwrap_or(u64::MAX)
                .saturating_mul(1000),
        );
    }
    let at = http_date(value)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(at.saturating_sub(now).saturating_mul(1000))
}

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7):
/// IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT` or asctime `Sun Nov  6 08:49:37 1994`.
pub fn http_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month_of = |m: &str| MONTHS.iter().position(|x| *x == m).map(|i| i as u64 + 1);
    let parts: Vec<&str> = text.split_ascii_whitespace().collect();
    let (day, month, year, time): (u64, u64, u64, &str) = match parts.as_slice() {
        // IMF-fixdate.
        [_, day, month, year, time, "GMT"] => (
            day.parse().ok()?,
            month_of(month)?,
            year.parse().ok()?,
            *time,
        ),
        // RFC 850: two-digit years within 50 years of now, taken as 19xx/20xx.
        [_, date, time, "GMT"] => {
            let mut fields = date.split('-');
            let day = fields.next()?.parse().ok()?;
            let month = month_of(fields.next()?)?;
            let yy: u64 = fields.next()?.parse().ok()?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (day, month, year, *time)
        }
        // asctime.
        [_, month, day, time, year] => (
            day.parse().ok()?,
            month_of(month)?,
            year.parse().ok()?,
            *time,
        ),
        _ => return None,
    };
    let mut clock = time.split(':').map(|f| f.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if clock.next().is_some()
        || !(1..=31).contains(&day)
        || h > 23
        || m > 59
        || s > 60
        || !(1970..=9999).contains(&year)
    {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let (y, mo) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// The usual webhook-delivery reading of a response: 2xx delivered; 408, 429
/// and 5xx retried (honoring `Retry-After`); redirects and other 4xx rejected.
pub fn classify(response: &Response) -> DeliveryOutcome {
    let status = response.status;
    let snippet = String::from_utf8_lossy(&response.body[..response.body.len().min(200)]);
    let snippet = snippet.trim();
    let reason = if snippet.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {snippet}")
    };
    match status {
        200..=299 => DeliveryOutcome::Delivered,
        408 | 429 | 500..=599 => match retry_after_ms(response) {
            Some(ms) => DeliveryOutcome::retry_after(reason, ms),
            None => DeliveryOutcome::retry(reason),
        },
        300..=399 => {
            DeliveryOutcome::rejected(format!("HTTP {status}: redirects are not followed"))
        }
        _ => DeliveryOutcome::rejected(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_retry_after(value: &str) -> Response {
        Response {
            status: 503,
            headers: vec![("retry-after".into(), value.as_bytes().to_vec())],
            body: Vec::new(),
            truncated: false,
        }
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        // RFC 9110's example instant, 784111777 s after the epoch.
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(http_date(text), Some(784_111_777), "{text}");
        }
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date("Sat, 29 Feb 2028 12:00:00 GMT"),
            Some(1_835_438_400)
        );
        for bad in [
            "",
            "soon",
            "Sun, 06 Nov 1994 25:00:00 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(retry_after_ms(&with_retry_after("120")), Some(120_000));
        assert_eq!(retry_after_ms(&with_retry_after(" 0 ")), Some(0));
        assert_eq!(
            retry_after_ms(&with_retry_after("99999999999999999999999")),
            Some(u64::MAX),
            "too many digits is a very long time, not unreadable"
        );
        // A date in the past: no delay. A date a day ahead: about a day.
        assert_eq!(
            retry_after_ms(&with_retry_after("Sun, 06 Nov 1994 08:49:37 GMT")),
            Some(0)
        );
        let tomorrow = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 86_400;
        let days = tomorrow / 86_400;
        let (secs, date) = (tomorrow % 86_400, days_to_date(days));
        let text = format!(
            "Xxx, {:02} {} {} {:02}:{:02}:{:02} GMT",
            date.2,
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                [date.1 as usize - 1],
            date.0,
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        let ms = retry_after_ms(&with_retry_after(&text)).unwrap();
        assert!((86_300_000..=86_400_000).contains(&ms), "{text}: {ms}");
        for bad in ["-5", "1.5", "later"] {
            assert_eq!(retry_after_ms(&with_retry_after(bad)), None, "{bad}");
        }
    }

    /// (year, month, day) of a day count since 1970-01-01.
    fn days_to_date(days: u64) -> (u64, u64, u64) {
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        (year, month, day)
    }
}
