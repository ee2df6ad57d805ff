//! `http-post`: a sink that POSTs each event to a URL.
//!
//! Config:
//! * `url` (required): where to POST. The host must grant its scheme, host and
//!   port in the plugin's `allowed_hosts`.
//! * `mode`: `binary` (default: the body is the event data, CloudEvents
//!   attributes travel as `ce-*` headers) or `structured` (the body is the
//!   whole event as a CloudEvents JSON document).
//! * `timeout_ms`: per-request timeout (default 10000).
//! * `headers`: a table of extra headers. Credentials belong in the host's
//!   secret injection, not here: the plugin never sees them.
//!
//! Outcomes: 2xx delivered; 408, 429 and 5xx retried honoring `Retry-After`;
//! network errors retried; redirects and other 4xx rejected permanently.
//! Every request carries `idempotency-key: <event id>` so receivers can drop
//! the duplicates that at-least-once delivery can produce.

use base64_free::encode_data;
use serde_json::{json, Map, Value};
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

impl Sink for HttpPost {
    fn deliver(event: Event) -> DeliveryOutcome {
        let Some(url) = config::get("url") else {
            return DeliveryOutcome::rejected("http-post: config `url` is not set");
        };
        let timeout = config::get("timeout_ms")
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let mut request = http::Request::post(&url)
            .timeout_ms(timeout)
            .header("idempotency-key", &event.id);
        if let Some(Ok(Value::Object(headers))) = config::json("headers") {
            for (name, value) in headers {
                if let Some(v) = value.as_str() {
                    request = request.header(&name, v);
                }
            }
        }
        let request = if config::get("mode").as_deref() == Some("structured") {
            request
                .header("content-type", "application/cloudevents+json")
                .body(structured(&event))
        } else {
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
        };
        match request.send() {
            Ok(response) => http::classify(&response),
            Err(e) => DeliveryOutcome::retry(e.to_string()),
        }
    }
}

weft_sdk::export_sink!(HttpPost);
