//! Counters and time totals, exported in the Prometheus text format.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of [`Histogram`] buckets: from half a millisecond,
/// where a group-committed webhook is answered, to the ten seconds after
/// which webhook senders give up.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the delivery-lag buckets: from a few
/// milliseconds (an event delivered as it arrives) to the hours a sink's
/// outage or a paused route can hold events back.
pub const LAG_BUCKETS: [f64; 17] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 21600.0,
];

/// A latency distribution in fixed buckets, exported as a Prometheus
/// histogram: counters are cheap to update from any thread, and Prometheus
/// computes quantiles from them over any window.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in seconds, ascending.
    bounds: &'static [f64],
    /// Observations at or under each bound (not cumulative; summed on export).
    buckets: Box<[AtomicU64]>,
    /// All observations (the `+Inf` bucket).
    count: AtomicU64,
    /// Their sum in nanoseconds.
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    /// Buckets for request latencies ([`LATENCY_BUCKETS`]).
    fn default() -> Self {
        Histogram::with_bounds(&LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with buckets up to each of `bounds` (seconds,
    /// ascending).
    pub fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Observations so far and their sum in nanoseconds.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.sum_ns.load(Ordering::Relaxed),
        )
    }

    /// Appends the Prometheus text exposition of this histogram.
    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// Appends this histogram's samples (no `HELP`/`TYPE` lines), with
    /// `labels` (`key="value",` pairs, each followed by a comma, or empty)
    /// before each sample's `le`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        // The total first: an observation landing while the buckets are
        // read must not make a bucket exceed `+Inf` (Prometheus would call
        // the histogram broken), so the buckets are capped at it.
        let (count, sum_ns) = self.totals();
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(self.buckets.iter()) {
            cumulative = (cumulative + bucket.load(Ordering::Relaxed)).min(count);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let plain = labels.trim_end_matches(',');
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(plain), sum_ns as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{} {count}", braces(plain));
    }
}

/// How long events take from acceptance to delivery, per route and sink:
/// the promise an integration makes ("in inventory within seconds"), and
/// where a fan-out's slow leg shows. Counted when a sink says delivered,
/// from when the record was made (its id says: see
/// [`crate::queue::id_made_at_ms`]): for a webhook's event, its acceptance;
/// for a delivery retried after its transforms were retried too, when the
/// transforms passed. Records stored by a build before time-ordered ids
/// carry no time and are not counted.
#[derive(Debug, Default)]
pub struct DeliveryLags {
    by_route: HashMap<String, HashMap<String, Histogram>>,
}

impl DeliveryLags {
    /// Histograms for every `(route, sinks)` given.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> DeliveryLags {
        DeliveryLags {
            by_route: per_route_and_plugin(routes, || Histogram::with_bounds(&LAG_BUCKETS)),
        }
    }

    /// Counts a delivery by `sink` on `route` of the record with id
    /// `record_id`, at `now_ms` (nothing for a record without a time, or a
    /// pair that was not configured).
    pub fn delivered(&self, route: &str, sink: &str, record_id: u64, now_ms: u64) {
        let Some(made) = crate::queue::id_made_at_ms(record_id) else {
            return;
        };
        if let Some(h) = self.by_route.get(route).and_then(|s| s.get(sink)) {
            h.observe(Duration::from_millis(now_ms.saturating_sub(made)));
        }
    }

    /// Per route and sink (in name order): deliveries counted and the sum
    /// of their lags in nanoseconds (for the admin API's status).
    pub fn totals(&self) -> Vec<(&str, &str, u64, u64)> {
        sorted_rows(&self.by_route)
            .into_iter()
            .map(|(route, sink, h)| {
                let (count, sum_ns) = h.totals();
                (route.as_str(), sink.as_str(), count, sum_ns)
            })
            .collect()
    }

    /// Appends the Prometheus text, labelled by route and sink (in name
    /// order, so that scrapes are stable).
    pub fn render(&self, out: &mut String) {
        let name = "weft_delivery_lag_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from an event's acceptance to its delivery, by route and sink\n# TYPE {name} histogram"
        );
        for (route, sink, h) in sorted_rows(&self.by_route) {
            let labels = format!("route=\"{}\",plugin=\"{}\",", label(route), label(sink));
            h.render_series(out, name, &labels);
        }
    }
}

/// Process-wide counters. Times are summed in nanoseconds so the benchmark can
/// say where the CPU goes (ingress plugin, storage, transforms, sinks).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Webhook requests received, whatever their answer.
    pub webhooks_received: AtomicU64,
    /// Webhook requests rejected (4xx).
    pub webhooks_rejected: AtomicU64,
    /// Webhook requests refused with 429: their source was over its rate
    /// limit, or their client over its share of request slots.
    pub webhooks_throttled: AtomicU64,
    /// Webhook requests refused with 503 because the queue had no room
    /// (`storage.max_pending`, `storage.min_free_mib`).
    pub webhooks_refused_full: AtomicU64,
    /// TLS handshakes on the listeners that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// Connections closed at accept because their client address already
    /// held `server.max_connections_per_client` of them.
    pub connections_refused: AtomicU64,
    /// Events durably accepted.
    pub events_accepted: AtomicU64,
    /// Events not stored again: their source had accepted the same event id
    /// within its de-duplication window.
    pub events_duplicate: AtomicU64,
    /// Deliveries that waited, without an attempt, for an open circuit
    /// breaker or the sink's rate limit (counted each time).
    pub deliveries_deferred: AtomicU64,
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
    /// How long webhooks wait for their answer: from the request head to the
    /// response (the 202 once durable, or the rejection).
    pub webhook_latency: Histogram,
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
                "Webhook requests received, whatever their answer",
                g(&self.webhooks_received),
            ),
            (
                "weft_webhooks_rejected_total",
                "Webhook requests rejected with a 4xx",
                g(&self.webhooks_rejected),
            ),
            (
                "weft_webhooks_throttled_total",
                "Webhook requests refused with 429: their source was over limits.requests_per_s, or their client over server.max_requests_per_client",
                g(&self.webhooks_throttled),
            ),
            (
                "weft_webhooks_refused_full_total",
                "Webhook requests refused with 503: the queue had no room (storage.max_pending, storage.min_free_mib)",
                g(&self.webhooks_refused_full),
            ),
            (
                "weft_tls_handshake_failures_total",
                "TLS handshakes on the listeners that failed or timed out (server.tls)",
                g(&self.tls_handshake_failures),
            ),
            (
                "weft_connections_refused_total",
                "Connections closed at accept: their address already held server.max_connections_per_client",
                g(&self.connections_refused),
            ),
            (
                "weft_events_accepted_total",
                "Events durably accepted",
                g(&self.events_accepted),
            ),
            (
                "weft_events_duplicate_total",
                "Events answered as duplicates (same source and event id within the source's dedup window) and not stored again",
                g(&self.events_duplicate),
            ),
            (
                "weft_deliveries_deferred_total",
                "Deliveries put off, without an attempt, by their sink's open circuit breaker or its limits.deliveries_per_s",
                g(&self.deliveries_deferred),
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
            // `_seconds_total` counters are kept in nanoseconds.
            if name.ends_with("_seconds_total") {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                    *value as f64 / 1e9
                );
            } else {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
                );
            }
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
        self.webhook_latency.render(
            &mut out,
            "weft_webhook_duration_seconds",
            "Time from a webhook's request head to its answer (202 once durable, or the rejection)",
        );
        out
    }
}

/// What became of attempts, by route and plugin: which sink of a fan-out is
/// failing, which transform dead-letters. Built once from the routes, so
/// counting takes no lock and no allocation.
#[derive(Debug, Default)]
pub struct RouteOutcomes {
    by_route: HashMap<String, HashMap<String, Outcomes>>,
}

/// One plugin's counts on one route.
#[derive(Debug, Default)]
struct Outcomes {
    delivered: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Which count an attempt adds to.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A sink delivered.
    Delivered,
    /// The attempt failed and runs again later.
    Retried,
    /// The record went to the dead-letter store.
    DeadLettered,
}

impl RouteOutcomes {
    /// Counts for every `(route, plugins)` given.
    pub fn new<'a>(routes: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> RouteOutcomes {
        RouteOutcomes {
            by_route: per_route_and_plugin(routes, Outcomes::default),
        }
    }

    /// Adds one `outcome` for `plugin` on `route` (nothing for a pair that
    /// was not configured).
    pub fn count(&self, route: &str, plugin: &str, outcome: Outcome) {
        if let Some(o) = self.by_route.get(route).and_then(|p| p.get(plugin)) {
            let counter = match outcome {
                Outcome::Delivered => &o.delivered,
                Outcome::Retried => &o.retried,
                Outcome::DeadLettered => &o.dead_lettered,
            };
            inc(counter);
        }
    }

    /// Appends the Prometheus text of the counts, labelled by route and
    /// plugin (in name order, so that scrapes are stable).
    pub fn render(&self, out: &mut String) {
        let rows = sorted_rows(&self.by_route);
        let series: [(&str, &str, Pick); 3] = [
            (
                "weft_route_deliveries_total",
                "Deliveries, by route and sink",
                |o| &o.delivered,
            ),
            (
                "weft_route_retries_total",
                "Failed attempts scheduled for retry, by route and plugin (transform or sink)",
                |o| &o.retried,
            ),
            (
                "weft_route_dead_lettered_total",
                "Records dead-lettered, by route and the plugin whose attempt ended them",
                |o| &o.dead_lettered,
            ),
        ];
        for (name, help, counter) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (route, plugin, outcomes) in &rows {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",plugin=\"{}\"}} {}",
                    label(route),
                    label(plugin),
                    counter(outcomes).load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Appends a gauge with one value per route (`{route="..."}`).
pub fn render_route_gauge(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (route, value) in values {
        let _ = writeln!(out, "{name}{{route=\"{}\"}} {value}", label(route));
    }
}

/// A value made by `make` for every `(route, plugins)` pair given.
fn per_route_and_plugin<'a, T>(
    routes: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>,
    make: impl Fn() -> T,
) -> HashMap<String, HashMap<String, T>> {
    routes
        .into_iter()
        .map(|(route, plugins)| {
            let plugins = plugins
                .into_iter()
                .map(|p| (p.to_string(), make()))
                .collect();
            (route.to_string(), plugins)
        })
        .collect()
}

/// Every `(route, plugin, value)` in name order, so that scrapes are stable.
fn sorted_rows<T>(by_route: &HashMap<String, HashMap<String, T>>) -> Vec<(&String, &String, &T)> {
    let mut rows: Vec<(&String, &String, &T)> = by_route
        .iter()
        .flat_map(|(route, plugins)| plugins.iter().map(move |(p, v)| (route, p, v)))
        .collect();
    rows.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    rows
}

/// Which of an [`Outcomes`]' counters a series shows.
type Pick = fn(&Outcomes) -> &AtomicU64;

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_outcomes_are_counted_by_route_and_plugin() {
        let outcomes = RouteOutcomes::new([("orders", vec!["map", "inventory", "accounting"])]);
        outcomes.count("orders", "inventory", Outcome::Delivered);
        outcomes.count("orders", "inventory", Outcome::Delivered);
        outcomes.count("orders", "accounting", Outcome::Retried);
        outcomes.count("orders", "map", Outcome::DeadLettered);
        // Unknown pairs are ignored, not invented.
        outcomes.count("elsewhere", "inventory", Outcome::Delivered);
        let mut out = String::new();
        outcomes.render(&mut out);
        for line in [
            "# TYPE weft_route_deliveries_total counter\n",
            "weft_route_deliveries_total{route=\"orders\",plugin=\"inventory\"} 2\n",
            "weft_route_deliveries_total{route=\"orders\",plugin=\"accounting\"} 0\n",
            "weft_route_retries_total{route=\"orders\",plugin=\"accounting\"} 1\n",
            "weft_route_dead_lettered_total{route=\"orders\",plugin=\"map\"} 1\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        assert!(!out.contains("elsewhere"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn delivery_lags_count_from_the_records_time_by_route_and_sink() {
        let lags = DeliveryLags::new([("orders", vec!["inventory", "accounting"])]);
        let accepted = 1_800_000_000_000u64;
        let id = crate::queue::time_ordered_id(0, accepted);
        lags.delivered("orders", "inventory", id, accepted + 3); // 3 ms
        lags.delivered("orders", "inventory", id, accepted + 90_000); // 90 s
                                                                      // A record from a build that counted ids from 1 carries no time;
                                                                      // unknown pairs are ignored, not invented.
        lags.delivered("orders", "accounting", 42, accepted);
        lags.delivered("elsewhere", "inventory", id, accepted);
        let mut out = String::new();
        lags.render(&mut out);
        let series = "weft_delivery_lag_seconds";
        for line in [
            format!("# TYPE {series} histogram\n"),
            format!("{series}_bucket{{route=\"orders\",plugin=\"inventory\",le=\"0.005\"}} 1\n"),
            format!("{series}_bucket{{route=\"orders\",plugin=\"inventory\",le=\"60\"}} 1\n"),
            format!("{series}_bucket{{route=\"orders\",plugin=\"inventory\",le=\"300\"}} 2\n"),
            format!("{series}_bucket{{route=\"orders\",plugin=\"inventory\",le=\"+Inf\"}} 2\n"),
            format!("{series}_sum{{route=\"orders\",plugin=\"inventory\"}} 90.003\n"),
            format!("{series}_count{{route=\"orders\",plugin=\"inventory\"}} 2\n"),
            format!("{series}_count{{route=\"orders\",plugin=\"accounting\"}} 0\n"),
        ] {
            assert!(out.contains(&line), "{line:?} missing from:\n{out}");
        }
        assert!(!out.contains("elsewhere"));
        assert_eq!(
            lags.totals(),
            [
                ("orders", "accounting", 0, 0),
                ("orders", "inventory", 2, 90_003_000_000)
            ]
        );
    }

    #[test]
    fn histograms_export_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "help");
        for line in [
            "# TYPE x_seconds histogram",
            "x_seconds_bucket{le=\"0.0005\"} 1\n",
            "x_seconds_bucket{le=\"0.0025\"} 1\n",
            "x_seconds_bucket{le=\"0.005\"} 2\n",
            "x_seconds_bucket{le=\"10\"} 2\n",
            "x_seconds_bucket{le=\"+Inf\"} 3\n",
            "x_seconds_sum 20.0033\n",
            "x_seconds_count 3\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        assert_eq!(h.totals(), (3, 20_003_300_000));
    }
}
