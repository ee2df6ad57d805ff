//! `http-post`: a sink that POSTs each event to a URL.
//!
//! Config:
//! * `url` (required): where to POST. The host must grant its scheme, host and
//!   port in the plugin's `allowed_hosts`.
//! * `mode`: `binary` (default: the body is the event data, CloudEvents
//!   attributes travel as `ce-*` headers, percent-encoded as the CloudEvents
//!   HTTP binding says, extensions included) or `structured` (the body is
//!   the whole event as a CloudEvents JSON document: JSON data by its content
//!   type as JSON, other text as a string, other bytes as `data_base64`).
//! * `timeout_ms`: per-request timeout (default: the host's `http_timeout_ms`,
//!   which also caps this).
//! * `headers`: a table of extra headers. Credentials belong in the host's
//!   secret injection, not here: the plugin never sees them.
//!
//! The config is checked when the plugin is loaded: a missing or malformed
//! `url`, an unknown key or `mode`, a `timeout_ms` that is not a number, or
//! a `headers` entry that is not text (or names a header the plugin sets
//! itself) stops the load with a message.
//!
//! Outcomes: 2xx delivered; 408, 429 and 5xx retried honoring `Retry-After`
//! (seconds or an HTTP-date); network errors retried; redirects, other 4xx,
//! and requests the host refuses to send (destination not granted, blocked
//! address, malformed URL or header) rejected permanently.
//! Every request carries `idempotency-key: <event id>` so receivers can drop
//! the duplicates that at-least-once delivery can produce.

use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use weft_sdk::{config, http, DeliveryOutcome, Event, Sink};

/// The HTTP POST sink.
pub struct HttpPost;

/// Whether a content type says JSON (`application/json`, `…+json`).
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

/// Standard base64 with padding (for `data_base64`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Attribute names of the CloudEvents JSON format an extension may not
/// take over.
const RESERVED: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// The event as a CloudEvents JSON document: JSON data (by its content
/// type) as JSON, other text as a string, anything else as `data_base64`.
fn structured(event: &Event) -> Vec<u8> {
    let content_type = event
        .datacontenttype
        .clone()
        .unwrap_or_else(|| "application/json".into());
    let mut doc = Map::new();
    doc.insert("specversion".into(), json!("1.0"));
    doc.insert("id".into(), json!(event.id));
    doc.insert("source".into(), json!(event.source));
    doc.insert("type".into(), json!(event.type_));
    if let Some(s) = &event.subject {
        doc.insert("subject".into(), json!(s));
    }
    if let Some(t) = &event.time {
        doc.insert("time".into(), json!(t));
    }
    for (k, v) in &event.extensions {
        if !RESERVED.contains(&k.as_str()) {
            doc.insert(k.clone(), json!(v));
        }
    }
    let json_data = is_json(&content_type)
        .then(|| serde_json::from_slice::<Value>(&event.data).ok())
        .flatten();
    match (json_data, std::str::from_utf8(&event.data)) {
        (Some(value), _) => {
            doc.insert("data".into(), value);
        }
        (None, Ok(text)) => {
            doc.insert("data".into(), json!(text));
        }
        (None, Err(_)) => {
            doc.insert("data_base64".into(), json!(base64(&event.data)));
        }
    }
    doc.insert("datacontenttype".into(), json!(content_type));
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

/// A `ce-*` header value as the CloudEvents HTTP binding writes it: space,
/// `"`, `%` and everything outside printable ASCII percent-encoded (as
/// UTF-8), so any attribute makes a valid header.
fn header_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_graphic() && c != '"' && c != '%' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// The plugin's settings, read once per instance (config never changes while
/// an instance lives).
struct Settings {
    url: Option<String>,
    timeout_ms: Option<u64>,
    structured: bool,
    headers: Vec<(String, String)>,
}

impl Settings {
    fn get() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(Settings::read)
    }

    fn read() -> Settings {
        let mut settings = Settings {
            url: None,
            timeout_ms: None,
            structured: false,
            headers: Vec::new(),
        };
        for (key, value) in config::entries() {
            match key.as_str() {
                "url" => settings.url = Some(value),
                "timeout_ms" => settings.timeout_ms = value.parse().ok(),
                "mode" => settings.structured = value == "structured",
                "headers" => {
                    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&value) {
                        settings.headers = map
                            .into_iter()
                            .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
                            .collect();
                    }
                }
                _ => {}
            }
        }
        settings
    }
}

/// The request for one event, or why it can never be sent.
fn request(settings: &Settings, url: &str, event: Event) -> Result<http::Request, String> {
    let mut request = http::Request::post(url).header("idempotency-key", &header_value(&event.id));
    if let Some(ms) = settings.timeout_ms {
        request = request.timeout_ms(ms);
    }
    for (name, value) in &settings.headers {
        request = request.header(name, value);
    }
    if settings.structured {
        return Ok(request
            .header("content-type", "application/cloudevents+json")
            .body(structured(&event)));
    }
    let ct = event
        .datacontenttype
        .clone()
        .unwrap_or_else(|| "application/json".into());
    // A content type is sent as it is: one that is no valid header value is
    // refused here, not retried until the attempts run out.
    if !ct.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(format!(
            "datacontenttype {ct:?} is not a valid content-type header"
        ));
    }
    let mut r = request
        .header("content-type", &ct)
        .header("ce-specversion", "1.0")
        .header("ce-id", &header_value(&event.id))
        .header("ce-source", &header_value(&event.source))
        .header("ce-type", &header_value(&event.type_));
    if let Some(s) = &event.subject {
        r = r.header("ce-subject", &header_value(s));
    }
    if let Some(t) = &event.time {
        r = r.header("ce-time", &header_value(t));
    }
    // Extensions travel as `ce-<name>` when the name is a valid attribute
    // name (lower-case letters and digits).
    for (name, value) in &event.extensions {
        let valid = !name.is_empty()
            && name.len() <= 20
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let header = format!("ce-{name}");
        // A header the config fixes wins over the event's extension (one
        // header, not two the receiver would join).
        let configured = settings
            .headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case(&header));
        if valid && !configured && !RESERVED.contains(&name.as_str()) && name != "specversion" {
            r = r.header(&header, &header_value(value));
        }
    }
    Ok(r.body(event.data))
}

fn outcome(sent: Result<http::Response, http::HttpError>) -> DeliveryOutcome {
    match sent {
        Ok(response) => http::classify(&response),
        // Not granted, blocked, malformed: the same request fails the same
        // way every time.
        Err(e) if e.is_permanent() => DeliveryOutcome::rejected(e.to_string()),
        Err(e) => DeliveryOutcome::retry(e.to_string()),
    }
}

const NO_URL: &str = "http-post: config `url` is not set";

/// Headers the plugin sets itself, which `headers` may not add to.
const OWN_HEADERS: [&str; 4] = ["content-type", "idempotency-key", "content-length", "host"];

/// The CloudEvents attributes binary mode sends as headers (extensions go
/// as `ce-<name>` too, but a fixed extension header is a fair thing to
/// configure).
const CE_ATTRIBUTES: [&str; 7] = [
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "ce-time",
    "ce-datacontenttype",
];

/// What is wrong with the config, if anything (checked when the plugin is
/// loaded, so that a mistake stops the load instead of failing or quietly
/// changing every delivery).
fn config_problem() -> Result<(), String> {
    config::check_keys(&["url", "mode", "timeout_ms", "headers"])?;
    let url = config::get("url").ok_or("`url` is required: where to POST the events")?;
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("http://")
        .or_else(|| lower.strip_prefix("https://"))
        .ok_or_else(|| format!("url = \"{url}\": must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with(['/', '?', '#']) {
        return Err(format!("url = \"{url}\": has no host"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "url: credentials in the URL are refused by the host; send them as a header through the host's [[inject]]"
                .to_string(),
        );
    }
    if !http::allowed(&url) {
        return Err(format!(
            "url = \"{url}\": not in this plugin's allowed_hosts, so every delivery would be refused; add its origin (scheme://host:port) to allowed_hosts"
        ));
    }
    if let Some(mode) = config::get("mode") {
        if mode != "binary" && mode != "structured" {
            return Err(format!(
                "mode = \"{mode}\": must be \"binary\" or \"structured\""
            ));
        }
    }
    if let Some(ms) = config::get("timeout_ms") {
        if !ms.parse::<u64>().is_ok_and(|ms| ms > 0) {
            return Err(format!(
                "timeout_ms = {ms}: must be a number of milliseconds above 0"
            ));
        }
    }
    if let Some(headers) = config::get("headers") {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&headers) else {
            return Err("`headers` must be a table of header names and text values".into());
        };
        for (name, value) in map {
            let lower = name.to_ascii_lowercase();
            if OWN_HEADERS.contains(&lower.as_str()) || CE_ATTRIBUTES.contains(&lower.as_str()) {
                return Err(format!(
                    "headers.{name}: set by the plugin itself, it cannot be configured"
                ));
            }
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return Err(format!("headers.{name}: not a valid header name"));
            }
            let Some(text) = value.as_str() else {
                return Err(format!("headers.{name}: must be text, not {value}"));
            };
            if !text
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(format!("headers.{name}: not a valid header value"));
            }
        }
    }
    Ok(())
}

impl Sink for HttpPost {
    fn check_config() -> Result<(), String> {
        config_problem()
    }

    fn deliver(event: Event) -> DeliveryOutcome {
        let settings = Settings::get();
        let Some(url) = &settings.url else {
            return DeliveryOutcome::rejected(NO_URL);
        };
        match request(settings, url, event) {
            Ok(request) => outcome(request.send()),
            Err(why) => DeliveryOutcome::rejected(why),
        }
    }

    /// One POST per event as in `deliver`, all in flight at once.
    fn deliver_batch(events: Vec<Event>) -> Vec<DeliveryOutcome> {
        let settings = Settings::get();
        let Some(url) = &settings.url else {
            return events
                .iter()
                .map(|_| DeliveryOutcome::rejected(NO_URL))
                .collect();
        };
        // Events that cannot make a request are rejected in place; the rest
        // go out together.
        let mut outcomes: Vec<Option<DeliveryOutcome>> = Vec::with_capacity(events.len());
        let mut requests = Vec::with_capacity(events.len());
        for event in events {
            match request(settings, url, event) {
                Ok(request) => {
                    requests.push(request);
                    outcomes.push(None);
                }
                Err(why) => outcomes.push(Some(DeliveryOutcome::rejected(why))),
            }
        }
        let mut sent = http::send_all(requests).into_iter();
        outcomes
            .into_iter()
            .map(|known| {
                known.unwrap_or_else(|| {
                    sent.next().map_or_else(
                        || DeliveryOutcome::retry("no answer from the host"),
                        outcome,
                    )
                })
            })
            .collect()
    }
}

weft_sdk::export_sink!(HttpPost);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_become_valid_header_values() {
        assert_eq!(header_value("order-42"), "order-42");
        assert_eq!(header_value("A\r\nB"), "A%0D%0AB");
        assert_eq!(header_value("50% \"off\""), "50%25%20%22off%22");
        assert_eq!(header_value("café"), "caf%C3%A9");
    }

    #[test]
    fn a_configured_ce_header_replaces_the_events_extension() {
        let settings = Settings {
            url: Some("http://sink/".into()),
            timeout_ms: None,
            structured: false,
            headers: vec![("CE-Tenant".into(), "fixed".into())],
        };
        let event = Event {
            id: "e1".into(),
            source: "s".into(),
            type_: "t".into(),
            subject: None,
            time: None,
            datacontenttype: None,
            data: b"{}".to_vec(),
            extensions: vec![
                ("tenant".into(), "from-the-event".into()),
                ("region".into(), "eu".into()),
                ("id".into(), "forged".into()),
                ("Not-Valid".into(), "x".into()),
            ],
        };
        let request = request(&settings, "http://sink/", event).unwrap();
        let values = |name: &str| -> Vec<&str> {
            request
                .headers()
                .iter()
                .filter(|(h, _)| h.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(
            values("ce-tenant"),
            ["fixed"],
            "one header, the configured one"
        );
        assert_eq!(values("ce-region"), ["eu"], "other extensions still travel");
        assert_eq!(
            values("ce-id"),
            ["e1"],
            "an extension cannot replace a core attribute"
        );
        assert!(
            values("ce-not-valid").is_empty(),
            "not a valid attribute name"
        );
    }

    #[test]
    fn structured_mode_keeps_data_by_its_content_type() {
        let mut event = Event {
            id: "e1".into(),
            source: "s".into(),
            type_: "t".into(),
            subject: None,
            time: None,
            datacontenttype: Some("text/plain".into()),
            data: b"123".to_vec(),
            extensions: vec![
                ("id".into(), "forged".into()),
                ("tenant".into(), "a".into()),
            ],
        };
        let doc: Value = serde_json::from_slice(&structured(&event)).unwrap();
        assert_eq!(doc["data"], json!("123"), "text stays text");
        assert_eq!(
            doc["id"],
            json!("e1"),
            "an extension cannot replace a core attribute"
        );
        assert_eq!(doc["tenant"], json!("a"));

        event.datacontenttype = Some("application/vnd.shop+json; charset=utf-8".into());
        let doc: Value = serde_json::from_slice(&structured(&event)).unwrap();
        assert_eq!(doc["data"], json!(123));

        event.datacontenttype = Some("application/octet-stream".into());
        event.data = vec![0xff, 0xfe, 0x00];
        let doc: Value = serde_json::from_slice(&structured(&event)).unwrap();
        assert_eq!(doc["data_base64"], json!("//4A"));
        assert!(doc.get("data").is_none());
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hell"), "aGVsbA==");
    }
}
