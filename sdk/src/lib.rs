//! # weft-sdk: write Weft connectors in Rust
//!
//! A Weft connector is a WebAssembly component with one of three roles:
//!
//! * a **source** turns an inbound webhook request into events ([`Source`]),
//! * a **transform** rewrites, filters or splits events ([`Transform`]),
//! * a **sink** delivers events to a downstream system ([`Sink`]).
//!
//! Implement the trait for your role on a unit struct and call the matching
//! export macro once. Build with `cargo build --target wasm32-wasip2 --release`:
//! the output `.wasm` is a component the Weft host loads.
//!
//! The sandbox grants nothing by default. What a plugin may use comes from its
//! entry in the host's config: its [`config`] values, its private [`state`],
//! [`log`] lines, keyed [`secrets`] (used, never read) and outbound [`http`] to
//! the hosts it is granted.
//!
//! ## Source
//! ```no_run
//! use weft_sdk::{Event, Rejection, RejectionKind, Source, WebhookRequest};
//!
//! struct Echo;
//! impl Source for Echo {
//!     fn receive(request: WebhookRequest) -> Result<Vec<Event>, Rejection> {
//!         if request.body.is_empty() {
//!             return Err(Rejection { kind: RejectionKind::BadRequest, reason: "empty body".into() });
//!         }
//!         Ok(vec![Event::new("evt-1", "/echo", "echo.received", request.body)])
//!     }
//! }
//! weft_sdk::export_source!(Echo);
//! ```
//!
//! ## Transform
//! ```no_run
//! use weft_sdk::{Event, Transform, TransformError};
//!
//! struct Uppercase;
//! impl Transform for Uppercase {
//!     fn transform(mut event: Event) -> Result<Vec<Event>, TransformError> {
//!         let text = String::from_utf8(event.data)
//!             .map_err(|_| TransformError::Permanent("data is not UTF-8".into()))?;
//!         event.data = text.to_uppercase().into_bytes();
//!         Ok(vec![event])
//!     }
//! }
//! weft_sdk::export_transform!(Uppercase);
//! ```
//!
//! ## Sink
//! ```no_run
//! use weft_sdk::{http, DeliveryOutcome, Event, Sink};
//!
//! struct Post;
//! impl Sink for Post {
//!     fn deliver(event: Event) -> DeliveryOutcome {
//!         let url = weft_sdk::config::get("url").unwrap_or_default();
//!         match http::Request::post(&url).body(event.data).send() {
//!             Ok(resp) => http::classify(&resp),
//!             Err(e) => DeliveryOutcome::retry(e.to_string()),
//!         }
//!     }
//! }
//! weft_sdk::export_sink!(Post);
//! ```

pub mod http;
mod json;

pub use json::{Document, JsonExt};

/// Raw bindings for the host imports (`weft:connector/imports` world).
///
/// Plugin authors normally use the wrappers in this crate instead.
pub mod bindings {
    wit_bindgen::generate!({
        world: "imports",
        path: "../wit",
        generate_all,
    });
}

macro_rules! role_bindings {
    ($name:ident, $world:literal, $macro_name:literal, $module:literal) => {
        #[doc = concat!("Generated bindings for the `", $world, "` world.")]
        #[doc(hidden)]
        #[allow(clippy::too_many_arguments)]
        pub mod $name {
            wit_bindgen::generate!({
                world: $world,
                path: "../wit",
                with: {
                    "weft:connector/types@0.2.0": crate::bindings::weft::connector::types,
                    "weft:connector/log@0.2.0": crate::bindings::weft::connector::log,
                    "weft:connector/config@0.2.0": crate::bindings::weft::connector::config,
                    "weft:connector/state@0.2.0": crate::bindings::weft::connector::state,
                    "weft:connector/secrets@0.2.0": crate::bindings::weft::connector::secrets,
                    "weft:connector/outbound@0.2.0": crate::bindings::weft::connector::outbound,
                    "wasi:http/types@0.2.12": crate::bindings::wasi::http::types,
                    "wasi:http/outgoing-handler@0.2.12": crate::bindings::wasi::http::outgoing_handler,
                    "wasi:io/error@0.2.12": crate::bindings::wasi::io::error,
                    "wasi:io/poll@0.2.12": crate::bindings::wasi::io::poll,
                    "wasi:io/streams@0.2.12": crate::bindings::wasi::io::streams,
                    "wasi:clocks/monotonic-clock@0.2.12": crate::bindings::wasi::clocks::monotonic_clock,
                },
                pub_export_macro: true,
                export_macro_name: $macro_name,
                default_bindings_module: $module,
            });
        }
    };
}

role_bindings!(
    source_world,
    "checked-source",
    "__weft_export_source_world",
    "weft_sdk::source_world"
);
role_bindings!(
    transform_world,
    "checked-transform",
    "__weft_export_transform_world",
    "weft_sdk::transform_world"
);
role_bindings!(
    sink_world,
    "checked-sink",
    "__weft_export_sink_world",
    "weft_sdk::sink_world"
);

pub use bindings::weft::connector::types::{
    DeliveryOutcome, Event, Rejection, RejectionKind, RetryRequest, TransformError, WebhookRequest,
};

/// A source: turns one inbound webhook request into events.
///
/// Return `Err(Rejection)` to refuse the request: the caller gets the 4xx of
/// the rejection's kind and nothing is enqueued.
pub trait Source {
    /// Handles one webhook request.
    fn receive(request: WebhookRequest) -> Result<Vec<Event>, Rejection>;

    /// Checks the plugin's [`config`] values when the host loads it (see
    /// [`check_keys`]): an error names what is wrong, and the plugin is not
    /// loaded (`weft validate` and `weft serve` say so, pointing at its
    /// config). [`config::check_keys`] refuses keys the plugin does not
    /// know. The default accepts anything.
    fn check_config() -> Result<(), String> {
        Ok(())
    }
}

/// A transform: one event in, zero (filtered), one or many events out.
///
/// Return [`TransformError::Retryable`] when trying again later can help (a
/// lookup service is down) and [`TransformError::Permanent`] when it cannot
/// (the event is malformed): the latter goes straight to the dead-letter store.
pub trait Transform {
    /// Transforms one event.
    fn transform(event: Event) -> Result<Vec<Event>, TransformError>;

    /// Checks the plugin's [`config`] values when the host loads it; see
    /// [`Source::check_config`]. The default accepts anything.
    fn check_config() -> Result<(), String> {
        Ok(())
    }
}

/// A sink: delivers events downstream and says how it went.
pub trait Sink {
    /// Delivers one event.
    fn deliver(event: Event) -> DeliveryOutcome;

    /// Delivers a batch, one outcome per event in order. The default delivers
    /// the events one by one.
    fn deliver_batch(events: Vec<Event>) -> Vec<DeliveryOutcome> {
        events.into_iter().map(Self::deliver).collect()
    }

    /// Checks the plugin's [`config`] values when the host loads it; see
    /// [`Source::check_config`]. The default accepts anything.
    fn check_config() -> Result<(), String> {
        Ok(())
    }
}

/// Exports a [`Source`] implementation as the component's `source` world.
#[macro_export]
macro_rules! export_source {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __WeftSourceExport;
        impl $crate::source_world::Guest for __WeftSourceExport {
            fn receive(
                request: $crate::WebhookRequest,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Event>, $crate::Rejection> {
                <$ty as $crate::Source>::receive(request)
            }
            fn check_config() -> ::core::result::Result<(), ::std::string::String> {
                <$ty as $crate::Source>::check_config()
            }
        }
        $crate::source_world::__weft_export_source_world!(__WeftSourceExport with_types_in $crate::source_world);
    };
}

/// Exports a [`Transform`] implementation as the component's `transform` world.
#[macro_export]
macro_rules! export_transform {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __WeftTransformExport;
        impl $crate::transform_world::Guest for __WeftTransformExport {
            fn transform(
                event: $crate::Event,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Event>, $crate::TransformError>
            {
                <$ty as $crate::Transform>::transform(event)
            }
            fn check_config() -> ::core::result::Result<(), ::std::string::String> {
                <$ty as $crate::Transform>::check_config()
            }
        }
        $crate::transform_world::__weft_export_transform_world!(__WeftTransformExport with_types_in $crate::transform_world);
    };
}

/// Exports a [`Sink`] implementation as the component's `sink` world.
#[macro_export]
macro_rules! export_sink {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __WeftSinkExport;
        impl $crate::sink_world::Guest for __WeftSinkExport {
            fn deliver(event: $crate::Event) -> $crate::DeliveryOutcome {
                <$ty as $crate::Sink>::deliver(event)
            }
            fn deliver_batch(
                events: ::std::vec::Vec<$crate::Event>,
            ) -> ::std::vec::Vec<$crate::DeliveryOutcome> {
                <$ty as $crate::Sink>::deliver_batch(events)
            }
            fn check_config() -> ::core::result::Result<(), ::std::string::String> {
                <$ty as $crate::Sink>::check_config()
            }
        }
        $crate::sink_world::__weft_export_sink_world!(__WeftSinkExport with_types_in $crate::sink_world);
    };
}

impl Event {
    /// A new event with the required CloudEvents attributes; the optional ones empty.
    pub fn new(
        id: impl Into<String>,
        source: impl Into<String>,
        ty: impl Into<String>,
        data: Vec<u8>,
    ) -> Self {
        Event {
            id: id.into(),
            source: source.into(),
            type_: ty.into(),
            subject: None,
            time: None,
            datacontenttype: None,
            data,
            extensions: Vec::new(),
        }
    }

    /// Parses the event's data as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }

    /// Replaces the event's data with `value` serialized as JSON and sets the
    /// content type to `application/json`.
    pub fn set_json(&mut self, value: &serde_json::Value) {
        self.data = serde_json::to_vec(value).unwrap_or_default();
        self.datacontenttype = Some("application/json".to_string());
    }

    /// The value of an extension attribute, if set.
    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl WebhookRequest {
    /// The first value of a header (names are lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Rejection {
    /// A rejection of the given kind.
    pub fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Rejection {
            kind,
            reason: reason.into(),
        }
    }
}

impl DeliveryOutcome {
    /// A temporary failure without a requested delay: the host backs off.
    pub fn retry(reason: impl Into<String>) -> Self {
        DeliveryOutcome::Retry(RetryRequest {
            reason: reason.into(),
            after_ms: None,
        })
    }

    /// A temporary failure where the remote asked to wait `after_ms`.
    pub fn retry_after(reason: impl Into<String>, after_ms: u64) -> Self {
        DeliveryOutcome::Retry(RetryRequest {
            reason: reason.into(),
            after_ms: Some(after_ms),
        })
    }

    /// A permanent failure: the event goes to the dead-letter store.
    pub fn rejected(reason: impl Into<String>) -> Self {
        DeliveryOutcome::Rejected(reason.into())
    }
}

/// The plugin's configuration values (from its entry in the host config).
///
/// The values never change while an instance lives, so the first read fetches
/// them all in one host call and later reads (in the same call, or in later
/// calls when the host reuses the instance) are map lookups.
pub mod config {
    use crate::bindings::weft::connector::config as raw;
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    fn all() -> &'static BTreeMap<String, String> {
        static CONFIG: OnceLock<BTreeMap<String, String>> = OnceLock::new();
        CONFIG.get_or_init(|| raw::entries().into_iter().collect())
    }

    /// One value, if configured.
    pub fn get(key: &str) -> Option<String> {
        all().get(key).cloned()
    }

    /// One value, or `default`.
    pub fn get_or(key: &str, default: &str) -> String {
        get(key).unwrap_or_else(|| default.to_string())
    }

    /// A value parsed as JSON (tables and arrays in the host config arrive as JSON text).
    pub fn json(key: &str) -> Option<Result<serde_json::Value, serde_json::Error>> {
        all().get(key).map(|s| serde_json::from_str(s))
    }

    /// All configured key/value pairs.
    pub fn entries() -> Vec<(String, String)> {
        all().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Refuses a configured key that is not in `known`, suggesting the
    /// known key it is closest to: for a plugin's `check_config`, so that a
    /// misspelt key fails the load instead of being silently absent.
    pub fn check_keys(known: &[&str]) -> Result<(), String> {
        unknown_key(all().keys().map(String::as_str), known)
    }

    /// The first of `keys` not in `known`, as an error message.
    pub(crate) fn unknown_key<'a>(
        keys: impl IntoIterator<Item = &'a str>,
        known: &[&str],
    ) -> Result<(), String> {
        for key in keys {
            if known.contains(&key) {
                continue;
            }
            let closest = known
                .iter()
                .map(|k| (edit_distance(key, k), *k))
                .filter(|(d, k)| *d <= 2.max(k.len() / 4))
                .min();
            return Err(match closest {
                Some((_, k)) => format!("unknown key \"{key}\" (did you mean \"{k}\"?)"),
                None => format!("unknown key \"{key}\" (known keys: {})", known.join(", ")),
            });
        }
        Ok(())
    }

    /// Levenshtein distance between two keys (short ASCII names).
    fn edit_distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut diagonal = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let above = row[j + 1];
                row[j + 1] = (above + 1)
                    .min(row[j] + 1)
                    .min(diagonal + usize::from(ca != *cb));
                diagonal = above;
            }
        }
        row[b.len()]
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn unknown_keys_are_refused_with_the_closest_known_one() {
            let known = ["signing_secret", "id_pointer", "type"];
            assert_eq!(unknown_key(["type", "id_pointer"], &known), Ok(()));
            assert_eq!(
                unknown_key(["signing_sercet"], &known),
                Err("unknown key \"signing_sercet\" (did you mean \"signing_secret\"?)".into())
            );
            assert_eq!(
                unknown_key(["colour"], &known),
                Err("unknown key \"colour\" (known keys: signing_secret, id_pointer, type)".into())
            );
            assert_eq!(edit_distance("kitten", "sitting"), 3);
            assert_eq!(edit_distance("", "ab"), 2);
        }
    }
}

/// The plugin's private key-value state, persisted by the host.
pub mod state {
    use crate::bindings::weft::connector::state as raw;

    /// Reads a value.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        raw::get(key)
    }

    /// Writes a value.
    pub fn set(key: &str, value: &[u8]) -> Result<(), String> {
        raw::set(key, value)
    }

    /// Removes a value.
    pub fn delete(key: &str) {
        raw::delete(key)
    }
}

/// Keyed cryptography with secrets the plugin may use but never read.
pub mod secrets {
    /// HMAC-SHA256 of `message` keyed by the named secret granted to this plugin.
    pub fn hmac_sha256(secret: &str, message: &[u8]) -> Result<Vec<u8>, String> {
        crate::bindings::weft::connector::secrets::hmac_sha256(secret, message)
    }
}

/// Structured logging into the host's log.
pub mod log {
    use crate::bindings::weft::connector::log as raw;
    pub use crate::bindings::weft::connector::log::Level;

    /// Writes a log line with key/value fields.
    pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
        let fields: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        raw::log(level, message, &fields);
    }

    /// Debug line.
    pub fn debug(message: &str) {
        log(Level::Debug, message, &[]);
    }

    /// Info line.
    pub fn info(message: &str) {
        log(Level::Info, message, &[]);
    }

    /// Warning line.
    pub fn warn(message: &str) {
        log(Level::Warn, message, &[]);
    }

    /// Error line.
    pub fn error(message: &str) {
        log(Level::Error, message, &[]);
    }
}
