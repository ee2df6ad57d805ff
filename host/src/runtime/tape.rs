//! HTTP record and replay for `weft plugin test`: a connector's outbound
//! exchanges with a live API are written to a fixture file, then served back
//! from it, so the connector can be tested without the real API.
//!
//! The plugin still runs in the host's sandbox: requests are checked against
//! its `allowed_hosts` before the tape sees them, in both modes. Secret
//! headers the host injects are added after recording (never written), and
//! `authorization`, `proxy-authorization` and `cookie` headers a plugin sets
//! itself are written as `<redacted>`.
//!
//! A fixture is JSON Lines, one exchange per line:
//!
//! ```json
//! {"request":{"method":"GET","url":"http://127.0.0.1:8080/tiers/c1","headers":{},"body":""},
//!  "response":{"status":200,"headers":{"content-type":"application/json"},"body":"{\"tier\":\"gold\"}"}}
//! ```
//!
//! Bodies that are not UTF-8 are stored as `body_base64` instead. A response
//! longer than the plugin's `max_response_bytes` is recorded cut, with
//! `"body_truncated": true`, and replayed cut, as the live answer reaches the
//! plugin. On replay a
//! request is answered by the first unused exchange with the same method, URL
//! and body (the last such exchange again once all are used); a request with
//! no recorded exchange fails as if the connection had been refused, with a
//! line on stderr saying which request it was.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Map, Value};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// Headers never written to a fixture in clear.
const REDACTED_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Why a fixture could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// The fixture.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not an exchange.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The fixture.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// One recorded request and its response.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    url: String,
    request_body: Bytes,
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// The live body was longer than the plugin's `max_response_bytes`:
    /// `body` is its start (`"body_truncated": true` in the fixture).
    truncated: bool,
}

/// What the tape does with a plugin's requests.
#[derive(Debug)]
enum Mode {
    /// Forward to the network and append each exchange to the file.
    Record(Mutex<Recording>),
    /// Answer from recorded exchanges (the flag: already used).
    Replay(Mutex<Vec<(Exchange, bool)>>),
}

/// The file a recording goes to: created (or emptied) at the first
/// exchange, so that a run that fails before the plugin sends anything (a
/// mistyped component or input path) leaves an existing fixture alone.
#[derive(Debug)]
struct Recording {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl Recording {
    fn append(&mut self, line: &str) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(std::fs::File::create(&self.path)?),
        };
        writeln!(file, "{line}")?;
        file.flush()
    }
}

/// A fixture being recorded or replayed.
#[derive(Debug)]
pub struct Tape {
    mode: Mode,
}

fn body_json(out: &mut Map<String, Value>, body: &[u8]) {
    match std::str::from_utf8(body) {
        Ok(text) => out.insert("body".into(), json!(text)),
        Err(_) => out.insert(
            "body_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(body)),
        ),
    };
}

fn body_from_json(v: &Value) -> Result<Bytes, String> {
    if let Some(text) = v.get("body").and_then(Value::as_str) {
        return Ok(Bytes::from(text.to_string()));
    }
    if let Some(b64) = v.get("body_base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("body_base64: {e}"));
    }
    Ok(Bytes::new())
}

fn headers_json(headers: &[(String, String)]) -> Value {
    Value::Object(headers.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

fn exchange_from_json(v: &Value) -> Result<Exchange, String> {
    let request = v.get("request").ok_or("missing \"request\"")?;
    let response = v.get("response").ok_or("missing \"response\"")?;
    let text = |o: &Value, k: &str| {
        o.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("missing \"{k}\""))
    };
    let status = response
        .get("status")
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or("response needs a \"status\" between 100 and 599")?;
    let headers = response
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Exchange {
        method: text(request, "method")?.to_ascii_uppercase(),
        url: text(request, "url")?,
        request_body: body_from_json(request)?,
        truncated: response
            .get("body_truncated")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        status,
        headers,
        body: body_from_json(response)?,
    })
}

/// Reads a whole body, failing as soon as it passes `limit` bytes (an
/// endless body is never buffered past it).
async fn collect<B>(body: B, limit: u64) -> Result<Bytes, HttpError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match read_up_to(body, limit).await? {
        (_, true) => Err(HttpError::HttpResponseBodySize(None)),
        (bytes, false) => Ok(bytes),
    }
}

/// Reads a response body up to `limit` bytes: the bytes, and whether the
/// body went on past them (the rest is not read), as a live answer is cut.
async fn read_up_to<B>(body: B, limit: u64) -> Result<(Bytes, bool), HttpError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut body = std::pin::pin!(body);
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| HttpError::InternalError(Some(e.into().to_string())))?;
        if let Some(data) = frame.data_ref() {
            let room = limit - bytes.len();
            if data.len() > room {
                bytes.extend_from_slice(&data[..room]);
                return Ok((bytes.into(), true));
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok((bytes.into(), false))
}

/// A response body for the plugin: `bytes`, then, if the answer was cut,
/// the same size error a live body past the limit ends with.
fn cut_body(bytes: Bytes, truncated: bool) -> WasiBody {
    if !truncated {
        return full(bytes);
    }
    let frames = vec![
        Ok(http_body::Frame::data(bytes)),
        Err(HttpError::HttpResponseBodySize(None)),
    ];
    http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
}

fn full(bytes: Bytes) -> WasiBody {
    Full::new(bytes)
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync()
}

/// A request as the plugin sent it, body read, ready to record.
pub struct Captured {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Tape {
    /// A tape that records into `path` (created, or emptied, when the
    /// first exchange is recorded). Its directory must exist.
    pub fn record(path: &Path) -> Result<Tape, TapeError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(TapeError::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "its directory does not exist",
                ),
            });
        }
        Ok(Tape {
            mode: Mode::Record(Mutex::new(Recording {
                path: path.to_path_buf(),
                file: None,
            })),
        })
    }

    /// A tape that replays the exchanges in `path`.
    pub fn replay(path: &Path) -> Result<Tape, TapeError> {
        let text = std::fs::read_to_string(path).map_err(|source| TapeError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut exchanges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| TapeError::Line {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let value: Value =
                serde_json::from_str(line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            exchanges.push((exchange_from_json(&value).map_err(bad)?, false));
        }
        Ok(Tape {
            mode: Mode::Replay(Mutex::new(exchanges)),
        })
    }

    /// Whether requests are answered from the file (no network at all).
    pub fn replaying(&self) -> bool {
        matches!(self.mode, Mode::Replay(_))
    }

    /// Reads the request's body so it can be both recorded (or matched) and
    /// sent; returns the request rebuilt around the read body.
    pub async fn capture(
        request: http::Request<WasiBody>,
        limit: u64,
    ) -> Result<(http::Request<WasiBody>, Captured), HttpError> {
        let (parts, body) = request.into_parts();
        let body = collect(body, limit).await?;
        let captured = Captured {
            method: parts.method.as_str().to_string(),
            url: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| {
                    let value = if REDACTED_HEADERS.contains(&k.as_str()) {
                        "<redacted>".to_string()
                    } else {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    };
                    (k.as_str().to_string(), value)
                })
                .collect(),
            body: body.clone(),
        };
        Ok((http::Request::from_parts(parts, full(body)), captured))
    }

    /// Answers a captured request from the recorded exchanges; a recorded
    /// body over `limit` bytes (or recorded cut) is cut as a live one is.
    pub fn answer(
        &self,
        request: &Captured,
        limit: u64,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let Mode::Replay(exchanges) = &self.mode else {
            return Err(HttpError::InternalError(Some(
                "tape is not replaying".into(),
            )));
        };
        let mut exchanges = exchanges
            .lock()
            .map_err(|_| HttpError::InternalError(Some("tape lock poisoned".into())))?;
        let matches = |e: &Exchange| {
            e.method == request.method && e.url == request.url && e.request_body == request.body
        };
        let index = exchanges
            .iter()
            .position(|(e, used)| !used && matches(e))
            .or_else(|| exchanges.iter().rposition(|(e, _)| matches(e)));
        let Some(index) = index else {
            eprintln!(
                "replay: no recorded exchange for {} {}; answering as a refused connection",
                request.method, request.url
            );
            return Err(HttpError::ConnectionRefused);
        };
        exchanges[index].1 = true;
        let exchange = &exchanges[index].0;
        let keep = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(exchange.body.len());
        let truncated = exchange.truncated || keep < exchange.body.len();
        let mut response = http::Response::builder().status(exchange.status);
        for (k, v) in &exchange.headers {
            response = response.header(k, v);
        }
        response
            .body(cut_body(exchange.body.slice(..keep), truncated))
            .map_err(|e| HttpError::InternalError(Some(e.to_string())))
    }

    /// Reads a live response, appends the exchange to the fixture and
    /// returns the response for the plugin.
    pub async fn keep<B>(
        &self,
        request: Captured,
        response: http::Response<B>,
        limit: u64,
    ) -> Result<http::Response<WasiBody>, HttpError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = response.into_parts();
        let (body, truncated) = read_up_to(body, limit).await?;
        if let Mode::Record(file) = &self.mode {
            let mut req = Map::new();
            req.insert("method".into(), json!(request.method));
            req.insert("url".into(), json!(request.url));
            req.insert("headers".into(), headers_json(&request.headers));
            body_json(&mut req, &request.body);
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .filter(|(k, _)| !REDACTED_HEADERS.contains(&k.as_str()) && *k != "set-cookie")
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut resp = Map::new();
            resp.insert("status".into(), json!(parts.status.as_u16()));
            resp.insert("headers".into(), headers_json(&headers));
            body_json(&mut resp, &body);
            if truncated {
                resp.insert("body_truncated".into(), json!(true));
            }
            let line = json!({ "request": req, "response": resp });
            let written = file
                .lock()
                .map_err(|_| std::io::Error::other("tape lock poisoned"))
                .and_then(|mut recording| recording.append(&line.to_string()));
            if let Err(e) = written {
                eprintln!("record: cannot write the fixture: {e}");
            }
        }
        Ok(http::Response::from_parts(parts, cut_body(body, truncated)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that never ends.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                &[b'x'; 1024],
            )))))
        }
    }

    #[tokio::test]
    async fn recording_stops_reading_a_body_at_the_limit() {
        // An endless body: without the limit this never returns.
        let refused = collect(Endless, 64 * 1024).await.unwrap_err();
        assert!(
            matches!(refused, HttpError::HttpResponseBodySize(_)),
            "{refused:?}"
        );
        let small = Full::new(Bytes::from_static(b"hello"));
        assert_eq!(
            collect(small, 5).await.unwrap(),
            Bytes::from_static(b"hello")
        );
    }

    #[tokio::test]
    async fn a_response_body_is_read_up_to_the_limit_and_said_cut() {
        let (bytes, cut) = read_up_to(Endless, 3000).await.unwrap();
        assert_eq!((bytes.len(), cut), (3000, true));
        let whole = Full::new(Bytes::from_static(b"hello"));
        assert_eq!(
            read_up_to(whole, 5).await.unwrap(),
            (Bytes::from_static(b"hello"), false)
        );
    }

    #[tokio::test]
    async fn replay_cuts_a_recorded_body_over_the_limit_as_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tape.jsonl");
        let line = json!({
            "request": { "method": "GET", "url": "http://api.test/x" },
            "response": { "status": 200, "body": "0123456789" },
        });
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let tape = Tape::replay(&path).unwrap();
        let request = Captured {
            method: "GET".into(),
            url: "http://api.test/x".into(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        // Over the limit: the status, the first 9 bytes, then the size error.
        let answer = tape.answer(&request, 9).unwrap();
        assert_eq!(answer.status(), 200);
        let mut body = answer.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().as_ref(), b"012345678");
        assert!(matches!(
            body.frame().await,
            Some(Err(HttpError::HttpResponseBodySize(_)))
        ));
        // Within it: whole.
        let whole = tape
            .answer(&request, 10)
            .unwrap()
            .into_body()
            .collect()
            .await;
        assert_eq!(whole.unwrap().to_bytes().as_ref(), b"0123456789");
    }
}
