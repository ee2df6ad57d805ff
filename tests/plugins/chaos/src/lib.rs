//! `chaos`: a transform that misbehaves when the event asks it to.
//!
//! The event's JSON field `chaos` selects the misbehaviour:
//! `trap` panics, `loop` spins forever, `alloc` allocates without bound,
//! `egress` tries to reach `url` without a grant (through the host's
//! `outbound` interface; `egress-wasi` the same over `wasi:http`;
//! `egress-wasi-post` POSTs `bytes` bytes over `wasi:http`), `secret` asks for a secret it
//! was not granted, `spam` writes 1,000 warning lines of 16 KiB each,
//! `flood` returns `count` copies of the event (ids suffixed `-0`, `-1`...),
//! `flaky` fails retryably the first `fail` times it sees an event id
//! (counted in the plugin's state).
//! Anything else passes the event through unchanged.

use weft_sdk::{http, log, secrets, state, Event, Transform, TransformError};

/// The misbehaving transform.
pub struct Chaos;

impl Transform for Chaos {
    fn transform(event: Event) -> Result<Vec<Event>, TransformError> {
        let data = event.json().unwrap_or_default();
        match data["chaos"].as_str() {
            Some("trap") => panic!("chaos: trapping on purpose"),
            Some("loop") => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some(mode @ ("egress" | "egress-wasi" | "egress-wasi-post")) => {
                let url = data["url"].as_str().unwrap_or("http://127.0.0.1:9/");
                let sent = match mode {
                    "egress" => http::Request::get(url).send(),
                    "egress-wasi" => http::Request::get(url).send_over_wasi_http(),
                    // A body of `bytes` bytes.
                    _ => {
                        let size = data["bytes"].as_u64().unwrap_or(0) as usize;
                        http::Request::post(url)
                            .body(vec![b'x'; size])
                            .send_over_wasi_http()
                    }
                };
                match sent {
                    Ok(r) => Err(TransformError::Permanent(format!(
                        "egress reached the host: HTTP {}, {} bytes{}",
                        r.status,
                        r.body.len(),
                        if r.truncated { ", cut" } else { "" }
                    ))),
                    Err(e) => Err(TransformError::Permanent(format!("egress failed: {e}"))),
                }
            }
            Some("secret") => match secrets::hmac_sha256("not-mine", b"x") {
                Ok(_) => Err(TransformError::Permanent("secret was readable".into())),
                Err(e) => Err(TransformError::Permanent(format!("secret refused: {e}"))),
            },
            Some("spam") => {
                let line = "spam ".repeat(16 * 1024 / 5);
                for _ in 0..1_000 {
                    log::log(log::Level::Warn, &line, &[("event", &event.id)]);
                }
                Ok(vec![event])
            }
            Some("hmac-burn") => {
                // Host work without end: each call hashes 4 MiB.
                let message = vec![7u8; 4 << 20];
                loop {
                    if let Err(e) = secrets::hmac_sha256("k", &message) {
                        return Err(TransformError::Permanent(e));
                    }
                }
            }
            Some("secret-spam") => {
                for i in 0..1_000 {
                    let _ = secrets::hmac_sha256(&format!("not-mine-{i}"), b"x");
                }
                Ok(vec![event])
            }
            Some(mode @ ("stderr" | "stderr-trap")) => {
                // More than the host keeps of a call's stderr, in lines.
                let bytes = data["bytes"].as_u64().unwrap_or(8192) as usize;
                let line = "e".repeat(99);
                for _ in 0..bytes / 100 {
                    eprintln!("{line}");
                }
                if mode == "stderr-trap" {
                    panic!("chaos: panic after a lot of stderr");
                }
                Ok(vec![event])
            }
            Some("flood") => {
                let count = data["count"].as_u64().unwrap_or(1) as usize;
                Ok((0..count)
                    .map(|i| {
                        let mut copy = event.clone();
                        copy.id = format!("{}-{i}", event.id);
                        copy
                    })
                    .collect())
            }
            Some("flaky") => {
                let key = format!("flaky/{}", event.id);
                let seen = state::get(&key)
                    .and_then(|v| <[u8; 4]>::try_from(v).ok())
                    .map_or(0, u32::from_le_bytes);
                let fail = data["fail"].as_u64().unwrap_or(1) as u32;
                if seen < fail {
                    state::set(&key, &(seen + 1).to_le_bytes())
                        .map_err(TransformError::Permanent)?;
                    return Err(TransformError::Retryable(format!(
                        "flaky: failure {} of {fail}",
                        seen + 1
                    )));
                }
                Ok(vec![event])
            }
            _ => Ok(vec![event]),
        }
    }
}

weft_sdk::export_transform!(Chaos);
