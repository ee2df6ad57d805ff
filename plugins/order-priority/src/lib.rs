//! `order-priority`: marks an order `high` or `normal` priority.
//!
//! Adds `priority` to the event data (and as the `priority` extension):
//! `high` when `data.total >= threshold` (config, default 100). Cancelled
//! orders (`status = "cancelled"`) are filtered out. Data that is not a JSON
//! object with a numeric `total` fails permanently.
//!
//! With `tiers_url` set, the customer's tier is looked up over HTTP
//! (`GET {tiers_url}/{data.customer}`, the host must grant that host): a
//! `gold` customer is always `high`; the tier is added as `data.tier`. 404
//! means no tier; 408, 429 and 5xx (or no answer) fail retryably; any other
//! status, a body without a `tier`, or a customer id that is not plain
//! (`[A-Za-z0-9_-]+`) fail permanently.
//!
//! The same connector is written in JavaScript in `plugins/order-priority-js`;
//! `tests/tests/e2e/contract.rs` holds both to one contract.

use serde_json::Value;
use weft_sdk::{config, http, log, Event, Transform, TransformError};

/// The priority transform.
pub struct OrderPriority;

impl Transform for OrderPriority {
    fn check_config() -> Result<(), String> {
        config::check_keys(&["threshold", "tiers_url"])?;
        match config::get("threshold") {
            Some(t) if !t.parse::<f64>().is_ok_and(f64::is_finite) => {
                Err(format!("threshold = {t}: must be a number"))
            }
            _ => Ok(()),
        }
    }

    fn transform(mut event: Event) -> Result<Vec<Event>, TransformError> {
        let mut data = event
            .json()
            .map_err(|_| TransformError::Permanent("data is not JSON".into()))?;
        if !data.is_object() {
            return Err(TransformError::Permanent(
                "data is not a JSON object".into(),
            ));
        }
        if data["status"] == "cancelled" {
            return Ok(Vec::new());
        }
        let Some(total) = data["total"].as_f64() else {
            return Err(TransformError::Permanent(
                "data has no numeric \"total\"".into(),
            ));
        };
        let threshold = config::get("threshold")
            .and_then(|t| t.parse::<f64>().ok())
            .unwrap_or(100.0);
        let tier = match config::get("tiers_url") {
            Some(url) => lookup_tier(&url, &data["customer"])?,
            None => None,
        };
        let gold = tier.as_deref() == Some("gold");
        if let Some(tier) = tier {
            data["tier"] = Value::from(tier);
        }
        let priority = if gold || total >= threshold {
            "high"
        } else {
            "normal"
        };
        data["priority"] = Value::from(priority);
        log::log(
            log::Level::Debug,
            &format!("priority {priority}"),
            &[("event", &event.id)],
        );
        event.set_json(&data);
        event.extensions.retain(|(k, _)| k != "priority");
        event.extensions.push(("priority".into(), priority.into()));
        Ok(vec![event])
    }
}

/// Asks the tier service for the customer's tier; `None` when it has none.
fn lookup_tier(base: &str, customer: &Value) -> Result<Option<String>, TransformError> {
    let Some(customer) = customer.as_str() else {
        return Ok(None);
    };
    let plain = !customer.is_empty()
        && customer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !plain {
        return Err(TransformError::Permanent(
            "customer is not a plain id".into(),
        ));
    }
    let url = format!("{}/{customer}", base.trim_end_matches('/'));
    let response = http::Request::get(&url)
        .send()
        .map_err(|_| TransformError::Retryable("tier service unreachable".into()))?;
    match response.status {
        200 => {
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            match body["tier"].as_str() {
                Some(tier) => Ok(Some(tier.to_string())),
                None => Err(TransformError::Permanent(
                    "tier service sent no tier".into(),
                )),
            }
        }
        404 => Ok(None),
        s @ (408 | 429 | 500..=599) => Err(TransformError::Retryable(format!(
            "tier service answered {s}"
        ))),
        s => Err(TransformError::Permanent(format!(
            "tier service answered {s}"
        ))),
    }
}

weft_sdk::export_transform!(OrderPriority);
