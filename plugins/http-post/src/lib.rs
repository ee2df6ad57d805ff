//! `http-post`: a sink that POSTs each event to a URL.
//!
//! Config:
//! * `url` (required): where to POST. The host must grant its scheme, host and
//!   port in the plugin's `allowed_hosts`.
//! * `mode`: `binary` (default: the body is the event data, CloudEvents
//!   attributes travel as `ce-*` headers) or `structured` (the body is the
//!   whole event as a CloudEvents JSON document).
//! * `timeout_ms`: per-request timeout (default: the host's `http_timeout_ms`,
//!   which also caps this).
//! * `headers`: a table of extra headers. Credentials belong in the host's
//!   secret injection, not here: the plugin never sees them.
//!
//! Outcomes: 2xx delivered; 408, 429 and 5xx retried honoring `Retry-After`;
//! network errors retried; redirects and other 4xx rejected permanently.
//! Every request carries `idempotency-key: <event id>` so receivers can drop
//! the duplicates that at-least-once delivery can produce.

use base64_free::encode_data;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use weft_sdk::{config, http, DeliveryOutcome, Event, Sink};

/// The HTTP POST sink.
pub struct HttpPost;

mod base64_free {
    /// The event data as a JSON value: parsed JSON when it is JSON, else a string.
    pub fn encode_data(data: &[u8]) -> serde_json::Value {
        serde_json::from_slice(data).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(data).into_owned())
        })
    }
}

fn structured(event: &Event) -> Vec<u8> {
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
    doc.insert(
        "datacontenttype".into(),
        json!(event
            .datacontenttype
            .clone()
            .unwrap_or_else(|| "application/json".into())),
    );
    for (k, v) in &event.extensions {
        doc.insert(k.clone(), json!(v));
    }
    doc.insert("data".into(), encode_data(&event.data));
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
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

/// The request for one event.
fn request(settings: &Settings, url: &str, event: Event) -> http::Request {
    let mut request = http::Request::post(url).header("idempotency-key", &event.id);
    if let Some(ms) = settings.timeout_ms {
        request = request.timeout_ms(ms);
    }
    for (name, value) in &settings.headers {
        request = request.header(name, value);
    }
    if settings.structured {
        return request
            .header("content-type", "application/cloudevents+json")
            .body(structured(&event));
    }
    let ct = event
        .datacontenttype
        .clone()
        .unwrap_or_else(|| "application/json".into());
    let mut r = request
        .header("content-type", &ct)
        .header("ce-specversion", "1.0")
        .header("ce-id", &event.id)
        .header("ce-source", &event.source)
        .header("ce-type", &event.type_);
    if let Some(s) = &event.subject {
        r = r.header("ce-subject", s);
    }
    r.body(event.data)
}

fn outcome(sent: Result<http::Response, http::HttpError>) -> DeliveryOutcome {
    match sent {
        Ok(response) => http::classify(&response),
        Err(e) => DeliveryOutcome::retry(e.to_string()),
    }
}

const NO_URL: &str = "http-post: config `url` is not set";

impl Sink for HttpPost {
    fn deliver(event: Event) -> DeliveryOutcome {
        let settings = Settings::get();
        let Some(url) = &settings.url else {
            return DeliveryOutcome::rejected(NO_URL);
        };
        outcome(request(settings, url, event).send())
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
        let requests = events
            .into_iter()
            .map(|event| request(settings, url, event))
            .collect();
        http::send_all(requests).into_iter().map(outcome).collect()
    }
}

weft_sdk::export_sink!(HttpPost);
