//! `order-priority`: marks an order `high` or `normal` priority.
//!
//! Adds `priority` to the event data (and as the `priority` extension):
//! `high` when `data.total >= threshold` (config, default 100). Cancelled
//! orders (`status = "cancelled"`) are filtered out. Data that is not a JSON
//! object with a numeric `total` fails permanently.
//!
//! The same connector is written in JavaScript in `plugins/order-priority-js`;
//! `tests/tests/contract.rs` holds both to one contract.

use serde_json::Value;
use weft_sdk::{config, log, Event, Transform, TransformError};

/// The priority transform.
pub struct OrderPriority;

impl Transform for OrderPriority {
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
        let priority = if total >= threshold { "high" } else { "normal" };
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

weft_sdk::export_transform!(OrderPriority);
