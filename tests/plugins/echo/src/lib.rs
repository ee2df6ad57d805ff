//! `echo`: returns the event unchanged. Used to measure the host's own cost
//! of a plugin hop (instantiate from the pool, copy the event in and out).

use weft_sdk::{Event, Transform, TransformError};

/// The identity transform.
pub struct Echo;

impl Transform for Echo {
    fn transform(event: Event) -> Result<Vec<Event>, TransformError> {
        Ok(vec![event])
    }
}

weft_sdk::export_transform!(Echo);
