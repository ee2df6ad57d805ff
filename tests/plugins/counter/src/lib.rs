//! `counter`: sets the `calls` extension to the number of calls its instance
//! has served, counting this one. With a fresh instance per call it is always
//! 1; with `limits.instance_reuse = N` it climbs to N. An event of type
//! `trap` panics (and must not poison the next call).

use std::sync::atomic::{AtomicU32, Ordering};
use weft_sdk::{Event, Transform, TransformError};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// The counting transform.
pub struct Counter;

impl Transform for Counter {
    fn transform(mut event: Event) -> Result<Vec<Event>, TransformError> {
        let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        if event.type_ == "trap" {
            panic!("counter: trapping on purpose");
        }
        event.extensions.retain(|(k, _)| k != "calls");
        event.extensions.push(("calls".into(), calls.to_string()));
        Ok(vec![event])
    }
}

weft_sdk::export_transform!(Counter);
