//! `poison-sink`: POSTs each event's data to the configured `url`, but traps
//! (panics) on an event whose JSON data has `"poison": true`. It keeps the
//! SDK's default `deliver_batch` (one `deliver` after the other), so a poison
//! event in a batch traps the whole call.

use weft_sdk::{config, http, DeliveryOutcome, Event, Sink};

/// The sink that cannot stomach one kind of event.
pub struct PoisonSink;

impl Sink for PoisonSink {
    fn deliver(event: Event) -> DeliveryOutcome {
        let data = event.json().unwrap_or_default();
        if data["poison"].as_bool() == Some(true) {
            panic!("poison-sink: event {} is poison", event.id);
        }
        let Some(url) = config::get("url") else {
            return DeliveryOutcome::rejected("poison-sink: config `url` is not set");
        };
        let request = http::Request::post(&url)
            .header("ce-id", &event.id)
            .header("content-type", "application/json")
            .body(event.data);
        match request.send() {
            Ok(response) => http::classify(&response),
            Err(e) => DeliveryOutcome::retry(e.to_string()),
        }
    }
}

weft_sdk::export_sink!(PoisonSink);
