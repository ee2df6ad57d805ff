//! Circuit breakers: one per route and sink, so that a sink that is down is
//! asked once in a while, not by every waiting event.
//!
//! Why it exists: without one, each event retries on its own schedule. A
//! sink down for an hour with ten thousand events behind it gets ten
//! thousand requests per backoff round, and each of those events uses up
//! its attempts and ends as a dead letter, to be replayed by hand. After
//! `retry.breaker_after` failed attempts in a row, the breaker *opens*:
//! deliveries to that sink wait, without an attempt (their budget is kept),
//! for a cool-down that follows the route's backoff schedule. Then one
//! delivery goes as a *probe*; the others keep waiting. A probe
//! that gets through closes the breaker; one that fails opens it for the
//! next, longer cool-down. A rejection (the sink answered: "never") counts
//! as an answer, not a failure.

use crate::retry::RetryPolicy;
use std::collections::HashMap;
use std::sync::Mutex;

/// While a probe is out, the other deliveries look again this much later.
pub const PROBE_WAIT_MS: u64 = 1_000;

/// A probe that has not reported for this long (its task gone without a
/// word) no longer holds the others back.
const PROBE_TIMEOUT_MS: u64 = 120_000;

/// What a breaker says about a group of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Go ahead.
    Pass,
    /// Go ahead as the probe: report the outcome with [`Breakers::record`].
    Probe,
    /// Wait, without an attempt, until this time (ms since epoch).
    WaitUntil(u64),
}

/// How a group of deliveries went: how many the sink answered (delivered
/// or rejected: it works) and how many failed (a retry, a timeout, a trap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Delivered or rejected.
    pub answered: usize,
    /// Failed, to be retried.
    pub failed: usize,
}

/// One sink's breaker on one route.
#[derive(Debug, Default, Clone)]
struct Breaker {
    /// Failed attempts in a row.
    failures: u32,
    /// Times it opened in a row (the cool-down grows with them).
    opens: u32,
    /// Open until this time; 0 when closed.
    open_until_ms: u64,
    /// A probe is out since this time; 0 when none.
    probing_since_ms: u64,
}

/// Every breaker of the router, by route and sink.
#[derive(Default)]
pub struct Breakers {
    breakers: Mutex<HashMap<(String, String), Breaker>>,
}

impl Breakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Breaker>> {
        match self.breakers.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether deliveries to `sink` on `route` may go now.
    pub fn gate(&self, route: &str, sink: &str, now_ms: u64) -> Gate {
        let mut breakers = self.lock();
        // The common case (every sink answering): no key built.
        if breakers.is_empty() {
            return Gate::Pass;
        }
        let Some(b) = breakers.get_mut(&(route.to_owned(), sink.to_owned())) else {
            return Gate::Pass;
        };
        if b.open_until_ms == 0 {
            return Gate::Pass;
        }
        let probe_out =
            b.probing_since_ms != 0 && now_ms < b.probing_since_ms.saturating_add(PROBE_TIMEOUT_MS);
        if now_ms < b.open_until_ms || probe_out {
            // While a probe is out, the others look again a little later.
            let until = if probe_out {
                now_ms.saturating_add(PROBE_WAIT_MS)
            } else {
                b.open_until_ms
            };
            return Gate::WaitUntil(until);
        }
        b.probing_since_ms = now_ms;
        Gate::Probe
    }

    /// Reports how deliveries to `sink` on `route` went. `retry` is the
    /// route's schedule: `breaker_after` failures in a row open the breaker
    /// (0: never), and its backoff for the `n`th opening in a row is the
    /// cool-down. Returns `Some(true)` when the breaker opened now,
    /// `Some(false)` when it closed now, `None` when neither.
    pub fn record(
        &self,
        route: &str,
        sink: &str,
        tally: Tally,
        now_ms: u64,
        retry: &RetryPolicy,
    ) -> Option<bool> {
        let Tally { answered, failed } = tally;
        let after = retry.breaker_after();
        if after == 0 {
            return None;
        }
        let mut breakers = self.lock();
        if answered > 0 && breakers.is_empty() {
            return None;
        }
        let key = (route.to_owned(), sink.to_owned());
        if answered == 0 && failed == 0 {
            // A probe with nothing to deliver (every event filtered out)
            // tells nothing: the next group probes.
            if let Some(b) = breakers.get_mut(&key) {
                b.probing_since_ms = 0;
            }
            return None;
        }
        if answered > 0 {
            // The sink works: whatever was open closes.
            let was_open = breakers.remove(&key).is_some_and(|b| b.open_until_ms != 0);
            return was_open.then_some(false);
        }
        let b = breakers.entry(key).or_default();
        b.failures = b.failures.saturating_add(failed as u32);
        let probe_failed = b.probing_since_ms != 0;
        if b.failures >= after && (b.open_until_ms == 0 || probe_failed) {
            let first = b.open_until_ms == 0;
            b.opens = b.opens.saturating_add(1);
            b.open_until_ms = now_ms.saturating_add(retry.delay_ms(b.opens, None)).max(1);
            b.probing_since_ms = 0;
            return first.then_some(true);
        }
        None
    }

    /// The breakers open now, as (route, sink) pairs.
    pub fn open(&self) -> Vec<(String, String)> {
        let mut open: Vec<_> = self
            .lock()
            .iter()
            .filter(|(_, b)| b.open_until_ms != 0)
            .map(|(k, _)| k.clone())
            .collect();
        open.sort();
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryConfig;

    /// Opens after `after` failures; cool-downs of 1 s, 2 s, 4 s...
    fn policy(after: u32) -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            initial_ms: 1000,
            multiplier: 2.0,
            max_delay_ms: 60_000,
            max_attempts: 10,
            jitter: 0.0,
            breaker_after: after,
        })
    }

    fn failed(n: usize) -> Tally {
        Tally {
            answered: 0,
            failed: n,
        }
    }

    const ANSWERED: Tally = Tally {
        answered: 1,
        failed: 0,
    };

    #[test]
    fn a_breaker_opens_after_failures_in_a_row_probes_once_and_closes_on_an_answer() {
        let b = Breakers::default();
        assert_eq!(b.gate("r", "s", 0), Gate::Pass);
        // Four failures in a row: still closed.
        for t in 0..4 {
            assert_eq!(b.record("r", "s", failed(1), t, &policy(5)), None);
        }
        assert_eq!(b.gate("r", "s", 10), Gate::Pass);
        // The fifth opens it for the first cool-down.
        assert_eq!(b.record("r", "s", failed(1), 10, &policy(5)), Some(true));
        assert_eq!(b.open(), vec![("r".to_string(), "s".to_string())]);
        assert_eq!(b.gate("r", "s", 500), Gate::WaitUntil(1010));
        // Another sink, another route: not affected.
        assert_eq!(b.gate("r", "other", 500), Gate::Pass);
        assert_eq!(b.gate("other", "s", 500), Gate::Pass);
        // Cool-down over: one probe, the others wait meanwhile.
        assert_eq!(b.gate("r", "s", 1010), Gate::Probe);
        assert_eq!(b.gate("r", "s", 1020), Gate::WaitUntil(2020));
        // The probe fails: open again, for longer (no new "opened" report).
        assert_eq!(b.record("r", "s", failed(3), 1100, &policy(5)), None);
        assert_eq!(b.gate("r", "s", 1200), Gate::WaitUntil(3100));
        assert_eq!(b.gate("r", "s", 3100), Gate::Probe);
        // It gets through: closed, and everything passes again.
        assert_eq!(b.record("r", "s", ANSWERED, 3200, &policy(5)), Some(false));
        assert_eq!(b.gate("r", "s", 3201), Gate::Pass);
        assert!(b.open().is_empty());
    }

    #[test]
    fn answers_reset_the_count_and_zero_means_never() {
        let b = Breakers::default();
        for _ in 0..4 {
            b.record("r", "s", failed(1), 0, &policy(5));
        }
        // A rejection or a delivery is an answer: the count starts over.
        assert_eq!(b.record("r", "s", ANSWERED, 0, &policy(5)), None);
        for _ in 0..4 {
            assert_eq!(b.record("r", "s", failed(1), 0, &policy(5)), None);
        }
        assert_eq!(b.gate("r", "s", 1), Gate::Pass);
        // `breaker_after = 0`: it never opens.
        for _ in 0..100 {
            assert_eq!(b.record("r", "t", failed(1), 0, &policy(0)), None);
        }
        assert_eq!(b.gate("r", "t", 1), Gate::Pass);
    }

    #[test]
    fn a_probe_with_nothing_to_deliver_lets_the_next_group_probe() {
        let b = Breakers::default();
        assert_eq!(b.record("r", "s", failed(5), 0, &policy(5)), Some(true));
        assert_eq!(b.gate("r", "s", 1000), Gate::Probe);
        assert_eq!(b.record("r", "s", Tally::default(), 1000, &policy(5)), None);
        assert_eq!(b.gate("r", "s", 1001), Gate::Probe);
    }

    #[test]
    fn a_probe_that_never_reports_stops_holding_the_others_back() {
        let b = Breakers::default();
        assert_eq!(b.record("r", "s", failed(5), 0, &policy(5)), Some(true));
        assert_eq!(b.gate("r", "s", 1000), Gate::Probe);
        assert!(matches!(b.gate("r", "s", 2000), Gate::WaitUntil(_)));
        assert_eq!(b.gate("r", "s", 1000 + PROBE_TIMEOUT_MS), Gate::Probe);
    }
}
