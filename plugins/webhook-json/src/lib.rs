//! `webhook-json`: a source that turns a JSON webhook into events.
//!
//! Config (all optional):
//! * `source`: the CloudEvents `source` of the events (default `/hooks/webhook`).
//! * `type`: a fixed event type (default `webhook.received`), or
//!   `type_pointer`: a JSON pointer into the body whose value is the type.
//! * `id_pointer`: JSON pointer to the event id. Without it, the `webhook-id`
//!   header is used, else a SHA-256 of the body (so a re-sent body keeps its id).
//! * `subject_pointer`: JSON pointer to the subject (e.g. `/order_id`).
//! * `split_array`: `true` makes each element of a top-level array one event.
//! * `signing_secret`: the name of a host secret; when set, requests must carry
//!   a valid Standard Webhooks signature (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`: HMAC-SHA256 over `id.timestamp.body`).
//! * `tolerance_secs`: allowed clock skew for signatures (default 300).
//!
//! The config is checked when the plugin is loaded: an unknown key (a
//! misspelt `signing_secret` would otherwise turn signature checks off), a
//! pointer without its leading `/`, or a `signing_secret` naming a secret
//! the plugin is not granted stops the load with a message.

use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};
use weft_sdk::{
    config, secrets, Document, Event, Rejection, RejectionKind, Source, WebhookRequest,
};

/// The JSON webhook source.
pub struct WebhookJson;

fn reject(kind: RejectionKind, reason: impl Into<String>) -> Rejection {
    Rejection::new(kind, reason)
}

/// A string (or number) at `pointer` as event attribute text. A number too
/// large for a float to hold exactly (an integer id past 2^53 that is not a
/// 64-bit integer) is refused: two different ids would read the same.
fn text(value: Option<Value>, pointer: &str) -> Result<Option<String>, Rejection> {
    Ok(match value {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        Some(Value::Number(n)) => {
            if n.as_f64()
                .is_some_and(|x| x.abs() >= 9_007_199_254_740_992.0)
            {
                return Err(reject(
                    RejectionKind::Unprocessable,
                    format!(
                        "the number at {pointer} is too large to read exactly; send it as a string"
                    ),
                ));
            }
            Some(n.to_string())
        }
        _ => None,
    })
}

/// Signatures' base64: padding optional (some senders leave it off).
const SIGNATURE_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Constant-time byte comparison.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify_signature(request: &WebhookRequest, secret: &str) -> Result<(), Rejection> {
    let missing = |h: &str| reject(RejectionKind::Unauthorized, format!("missing {h} header"));
    let id = request
        .header("webhook-id")
        .ok_or_else(|| missing("webhook-id"))?;
    let timestamp = request
        .header("webhook-timestamp")
        .ok_or_else(|| missing("webhook-timestamp"))?;
    let signatures = request
        .header("webhook-signature")
        .ok_or_else(|| missing("webhook-signature"))?;
    let ts: i64 = timestamp.trim().parse().map_err(|_| {
        reject(
            RejectionKind::Unauthorized,
            "webhook-timestamp is not a number",
        )
    })?;
    let tolerance: u64 = config::get("tolerance_secs")
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    // `abs_diff`: no overflow for any timestamp a sender may put there.
    if now.abs_diff(ts) > tolerance {
        return Err(reject(
            RejectionKind::Unauthorized,
            "webhook-timestamp outside the tolerance window",
        ));
    }
    let mut message = Vec::with_capacity(id.len() + timestamp.len() + request.body.len() + 2);
    message.extend_from_slice(id.as_bytes());
    message.push(b'.');
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(&request.body);
    let expected = secrets::hmac_sha256(secret, &message).map_err(|e| {
        reject(
            RejectionKind::Unauthorized,
            format!("signature check unavailable: {e}"),
        )
    })?;
    let valid = signatures.split_whitespace().any(|candidate| {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            return false;
        };
        match SIGNATURE_BASE64.decode(encoded) {
            Ok(sig) => same(&sig, &expected),
            Err(_) => false,
        }
    });
    if valid {
        Ok(())
    } else {
        Err(reject(
            RejectionKind::Unauthorized,
            "invalid webhook signature",
        ))
    }
}

/// The event for one JSON document; `at` reads the document at a pointer.
fn make_event(
    at: &dyn Fn(&str) -> Result<Option<Value>, Rejection>,
    raw: Vec<u8>,
    request: &WebhookRequest,
    index: Option<usize>,
) -> Result<Event, Rejection> {
    let source = config::get_or("source", "/hooks/webhook");
    let ty = match config::get("type_pointer") {
        Some(p) => text(at(&p)?, &p)?.ok_or_else(|| {
            reject(
                RejectionKind::Unprocessable,
                format!("no event type at {p}"),
            )
        })?,
        None => config::get_or("type", "webhook.received"),
    };
    let id = match config::get("id_pointer") {
        Some(p) => text(at(&p)?, &p)?.ok_or_else(|| {
            reject(
                RejectionKind::Unprocessable,
                format!("no event id at {p} (a string or a number is needed)"),
            )
        })?,
        None => {
            let base = match request.header("webhook-id") {
                Some(id) => id.to_string(),
                None => hex::encode(Sha256::digest(&request.body)),
            };
            match index {
                Some(i) => format!("{base}-{i}"),
                None => base,
            }
        }
    };
    // CloudEvents requires both to be non-empty, and an empty id would make
    // an empty `idempotency-key` downstream (no de-duplication).
    if id.trim().is_empty() {
        return Err(reject(
            RejectionKind::Unprocessable,
            "the event id is empty",
        ));
    }
    if ty.trim().is_empty() {
        return Err(reject(
            RejectionKind::Unprocessable,
            "the event type is empty",
        ));
    }
    let mut event = Event::new(id, source, ty, raw);
    event.datacontenttype = Some("application/json".to_string());
    if let Some(p) = config::get("subject_pointer") {
        event.subject = text(at(&p)?, &p)?;
    }
    Ok(event)
}

/// The config keys this plugin reads.
const KEYS: [&str; 8] = [
    "source",
    "type",
    "type_pointer",
    "id_pointer",
    "subject_pointer",
    "split_array",
    "signing_secret",
    "tolerance_secs",
];

/// What is wrong with the config, if anything: see [`Source::check_config`].
fn config_problem() -> Result<(), String> {
    config::check_keys(&KEYS)?;
    for key in ["type_pointer", "id_pointer", "subject_pointer"] {
        if let Some(p) = config::get(key) {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(format!(
                    "{key} = \"{p}\" is not a JSON pointer (they start with \"/\", e.g. \"/{p}\")"
                ));
            }
        }
    }
    if config::get("type").is_some() && config::get("type_pointer").is_some() {
        return Err(
            "set type (a fixed type) or type_pointer (read from the body), not both".into(),
        );
    }
    if let Some(split) = config::get("split_array") {
        if split != "true" && split != "false" {
            return Err(format!("split_array = {split}: must be true or false"));
        }
    }
    if let Some(tolerance) = config::get("tolerance_secs") {
        match tolerance.parse::<u64>() {
            Ok(1..=86_400) => {}
            _ => {
                return Err(format!(
                    "tolerance_secs = {tolerance}: must be a number of seconds, 1..=86400"
                ))
            }
        }
    }
    if let Some(secret) = config::get("signing_secret") {
        // An empty message tells whether the secret is granted.
        secrets::hmac_sha256(&secret, b"").map_err(|e| {
            format!("signing_secret = \"{secret}\": {e} (declare it under this plugin's secrets)")
        })?;
    }
    Ok(())
}

impl Source for WebhookJson {
    fn check_config() -> Result<(), String> {
        config_problem()
    }

    fn receive(request: WebhookRequest) -> Result<Vec<Event>, Rejection> {
        if request.method != "POST" {
            return Err(reject(RejectionKind::BadRequest, "only POST is accepted"));
        }
        if let Some(ct) = request.header("content-type") {
            if !ct.to_ascii_lowercase().contains("json") {
                return Err(reject(
                    RejectionKind::UnsupportedMediaType,
                    format!("expected JSON, got {ct}"),
                ));
            }
        }
        // The body is read as sent: a compressed one is not JSON, and
        // saying so beats "not valid JSON at column 1".
        if let Some(encoding) = request.header("content-encoding") {
            if !encoding.trim().eq_ignore_ascii_case("identity") {
                return Err(reject(
                    RejectionKind::UnsupportedMediaType,
                    format!(
                        "content-encoding {encoding} is not supported: send the body uncompressed"
                    ),
                ));
            }
        }
        if let Some(secret) = config::get("signing_secret") {
            verify_signature(&request, &secret)?;
        }
        let bad_json = |e: serde_json::Error| {
            reject(
                RejectionKind::BadRequest,
                format!("body is not valid JSON: {e}"),
            )
        };
        // A UTF-8 byte order mark, which some senders put first, is not
        // JSON (RFC 8259 lets a parser ignore it): left out of the event.
        let body: &[u8] = request
            .body
            .strip_prefix(b"\xEF\xBB\xBF")
            .unwrap_or(&request.body);
        let split = config::get("split_array").as_deref() == Some("true");
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if split && first == Some(b'[') {
            // Each element's text as sent (key order, number digits): only
            // what the pointers name is parsed.
            let items: Vec<&serde_json::value::RawValue> =
                serde_json::from_slice(body).map_err(bad_json)?;
            return items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let doc = Document::parse(item.get().as_bytes()).map_err(bad_json)?;
                    make_event(
                        &|p| doc.get(p).map_err(bad_json),
                        item.get().as_bytes().to_vec(),
                        &request,
                        Some(i),
                    )
                })
                .collect();
        }
        // Checked whole, parsed only where the pointers look.
        let doc = Document::parse(body).map_err(bad_json)?;
        if !matches!(first, Some(b'{' | b'[')) {
            return Err(reject(
                RejectionKind::Unprocessable,
                "body must be a JSON object or array",
            ));
        }
        Ok(vec![make_event(
            &|p| doc.get(p).map_err(bad_json),
            body.to_vec(),
            &request,
            None,
        )?])
    }
}

weft_sdk::export_source!(WebhookJson);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_exactly_or_refused() {
        let values: Vec<Value> = serde_json::from_str(
            r#"[42, 18446744073709551615, "A-1", 1.5, 100000000000000000000001, 1e23, {}]"#,
        )
        .unwrap();
        let read = |i: usize| text(Some(values[i].clone()), "/id");
        assert_eq!(read(0).ok().flatten().as_deref(), Some("42"));
        assert_eq!(
            read(1).ok().flatten().as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(read(2).ok().flatten().as_deref(), Some("A-1"));
        assert_eq!(read(3).ok().flatten().as_deref(), Some("1.5"));
        // Past 64 bits an integer becomes a float: two ids would collide.
        assert!(read(4).is_err());
        assert!(read(5).is_err());
        assert_eq!(read(6).ok().flatten(), None);
        assert_eq!(text(None, "/id").ok().flatten(), None);
    }
}
