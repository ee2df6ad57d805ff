//! The event: Weft's unit of work, shaped after CloudEvents 1.0.

use serde::{Deserialize, Serialize};

/// One event as the host stores and routes it.
///
/// It mirrors the WIT `event` record; the host keeps its own type so that the
/// stored format does not depend on generated bindings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Event id (unique per source).
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    pub ty: String,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `time` (RFC 3339).
    pub time: Option<String>,
    /// Content type of `data`.
    pub datacontenttype: Option<String>,
    /// Payload.
    #[serde(with = "serde_bytes_compat")]
    pub data: Vec<u8>,
    /// Extension attributes.
    pub extensions: Vec<(String, String)>,
}

/// Stores `data` as a byte string (postcard writes it as length + bytes).
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let bytes: &[u8] = <&[u8]>::deserialize(d)?;
        Ok(bytes.to_vec())
    }
}

impl Event {
    /// Bytes the event holds: its data, attributes and extensions (what
    /// `limits.max_output_bytes` counts).
    pub fn size(&self) -> usize {
        let optional = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        self.id.len()
            + self.source.len()
            + self.ty.len()
            + optional(&self.subject)
            + optional(&self.time)
            + optional(&self.datacontenttype)
            + self.data.len()
            + self
                .extensions
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The data as text, for display (lossy).
    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// Milliseconds since the Unix epoch, the time base of stored timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_data_every_attribute_and_extension() {
        let mut event = Event {
            id: "1".into(),
            source: "22".into(),
            ty: "333".into(),
            subject: None,
            time: None,
            datacontenttype: None,
            data: vec![0; 10],
            extensions: vec![],
        };
        assert_eq!(event.size(), 1 + 2 + 3 + 10);
        event.subject = Some("4444".into());
        event.time = Some("55555".into());
        event.datacontenttype = Some("666666".into());
        event.extensions = vec![("k".into(), "vv".into()), ("kk".into(), "v".into())];
        assert_eq!(event.size(), 1 + 2 + 3 + 10 + 4 + 5 + 6 + 3 + 3);
    }
}
