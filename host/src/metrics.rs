//! Counters and time totals, exported in the Prometheus text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Process-wide counters. Times are summed in nanoseconds so the benchmark can
/// say where the CPU goes (ingress plugin, storage, transforms, sinks).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Webhook requests received.
    pub webhooks_received: AtomicU64,
    /// Webhook requests rejected (4xx).
    pub webhooks_rejected: AtomicU64,
    /// Webhook requests refused with 429 because their source was over its
    /// rate limit.
    pub webhooks_throttled: AtomicU64,
    /// Events durably accepted.
    pub events_accepted: AtomicU64,
    /// Successful deliveries (per sink).
    pub deliveries: AtomicU64,
    /// Attempts that will be retried.
    pub retries: AtomicU64,
    /// Records moved to the dead-letter store.
    pub dead_lettered: AtomicU64,
    /// Plugin calls that trapped, timed out or ran out of memory.
    pub plugin_failures: AtomicU64,
    /// Events a transform filtered out.
    pub filtered: AtomicU64,
    /// Time in source plugins.
    pub source_ns: AtomicU64,
    /// Time waiting for durable appends.
    pub storage_ns: AtomicU64,
    /// Time in transform plugins.
    pub transform_ns: AtomicU64,
    /// Time in sink plugins, outbound HTTP included (per event: a batch
    /// call counts once for each of its events).
    pub sink_ns: AtomicU64,
    /// Sink plugin calls (`deliver` or `deliver-batch`).
    pub sink_calls: AtomicU64,
}

/// Adds the time since `start` to a counter.
pub fn add_elapsed(counter: &AtomicU64, start: Instant) {
    counter.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// All counters as (name, help, value).
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "weft_webhooks_received_total",
                "Webhook requests received",
                g(&self.webhooks_received),
            ),
            (
                "weft_webhooks_rejected_total",
                "Webhook requests rejected with a 4xx",
                g(&self.webhooks_rejected),
            ),
            (
                "weft_webhooks_throttled_total",
                "Webhook requests refused with 429: their source was over limits.requests_per_s",
                g(&self.webhooks_throttled),
            ),
            (
                "weft_events_accepted_total",
                "Events durably accepted",
                g(&self.events_accepted),
            ),
            (
                "weft_deliveries_total",
                "Successful deliveries to sinks",
                g(&self.deliveries),
            ),
            (
                "weft_retries_total",
                "Failed attempts scheduled for retry",
                g(&self.retries),
            ),
            (
                "weft_dead_lettered_total",
                "Records moved to the dead-letter store",
                g(&self.dead_lettered),
            ),
            (
                "weft_plugin_failures_total",
                "Plugin calls that trapped or hit a limit",
                g(&self.plugin_failures),
            ),
            (
                "weft_filtered_total",
                "Events filtered out by transforms",
                g(&self.filtered),
            ),
            (
                "weft_sink_calls_total",
                "Sink plugin calls (one deliver or deliver-batch each)",
                g(&self.sink_calls),
            ),
            (
                "weft_source_seconds_total",
                "Time spent in source plugins (ns)",
                g(&self.source_ns),
            ),
            (
                "weft_storage_seconds_total",
                "Time waiting for durable appends (ns)",
                g(&self.storage_ns),
            ),
            (
                "weft_transform_seconds_total",
                "Time spent in transform plugins (ns)",
                g(&self.transform_ns),
            ),
            (
                "weft_sink_seconds_total",
                "Time spent in sink plugins incl. HTTP (ns)",
                g(&self.sink_ns),
            ),
        ]
    }

    /// Prometheus text exposition, plus the given counters and gauges
    /// (name, help, value) kept elsewhere (the queue's).
    pub fn render(&self, counters: &[(&str, &str, u64)], gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in self.snapshot() {
            if let Some(base) = name.strip_suffix("_seconds_total") {
                let name = format!("{base}_seconds_total");
                let _ = writeln!(
                    out,
                    "# HELP {name} {}\n# TYPE {name} counter\n{name} {}",
                    help.replace(" (ns)", ""),
                    value as f64 / 1e9
                );
            } else {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
                );
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
