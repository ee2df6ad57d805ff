//! Rate limits: a token bucket per source (webhooks it accepts) and per
//! sink with `limits.deliveries_per_s` (events sent to it).
//!
//! A source accepts at most `limits.requests_per_s` webhook requests per
//! second, with bursts of up to one second's worth. A request over the limit
//! is answered `429 Too Many Requests` with a `Retry-After` (before its body
//! is read when the bucket is already empty; after it when concurrent
//! requests took the last tokens meanwhile), and nothing of it is stored: an
//! upstream in a retry storm cannot fill the queue or starve the other
//! sources.
//!
//! The token is taken only once the body is in, and a request the source
//! refuses (its plugin rejects it, e.g. a bad signature) gives it back: only
//! what the source accepts counts against its budget, so a stranger posting
//! unsigned requests, or sending bodies slowly, cannot use up the real
//! sender's budget and get it throttled. What bounds a stranger's flood is
//! the listener's own limits (connections, concurrent requests, and per
//! client address, body size and time) and each plugin's CPU limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One source's token bucket.
#[derive(Debug)]
pub struct RateLimit {
    per_s: f64,
    bucket: Mutex<Bucket>,
}

/// The bucket's level, updated under the lock on each request (refilled by
/// the time since the last one rather than by a timer).
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket of `per_s` tokens.
    fn full(per_s: f64) -> Bucket {
        Bucket {
            tokens: per_s,
            refilled: Instant::now(),
        }
    }

    /// Refills at `per_s` a second for the time since the last refill, up
    /// to one second's worth.
    fn refill(&mut self, now: Instant, per_s: f64) {
        let elapsed = now.saturating_duration_since(self.refilled);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * per_s).min(per_s);
        self.refilled = now;
    }
}

impl RateLimit {
    /// A bucket refilled at `per_s` tokens a second, holding at most `per_s`
    /// (one second's worth), starting full.
    pub fn per_second(per_s: u32) -> RateLimit {
        let per_s = f64::from(per_s.max(1));
        RateLimit {
            per_s,
            bucket: Mutex::new(Bucket::full(per_s)),
        }
    }

    /// Refills the bucket up to `now`; with `take`, takes one token. Says
    /// how long until one is available when none is.
    fn level_at(&self, now: Instant, take: bool) -> Result<(), Duration> {
        let mut bucket = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        bucket.refill(now, self.per_s);
        if bucket.tokens >= 1.0 {
            if take {
                bucket.tokens -= 1.0;
            }
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.per_s))
        }
    }

    /// Takes one token at `now`, or says how long until one is available.
    pub fn take_at(&self, now: Instant) -> Result<(), Duration> {
        self.level_at(now, true)
    }

    /// Takes one token now, or says how long until one is available.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    /// Whether a token is available now (taking none), or how long until
    /// one is.
    pub fn check(&self) -> Result<(), Duration> {
        self.level_at(Instant::now(), false)
    }

    /// Gives back a token taken for a request that turned out not to be the
    /// source's traffic (the bucket still holds at most one second's worth).
    pub fn refund(&self) {
        let mut bucket = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        bucket.tokens = (bucket.tokens + 1.0).min(self.per_s);
    }
}

/// A sink's delivery rate (`limits.deliveries_per_s`), first come first
/// served.
///
/// Why it is not a plain [`RateLimit`]: deliveries over a sink's rate wait
/// in the queue, and a delivery that comes back at its time must find its
/// token there. With a plain bucket, fresh deliveries would take the tokens
/// first: the waiting ones would wait again (each time written to the
/// journal again) and lose their order. So a delivery over the rate gets a
/// *turn* (the next free one, one token apart), a delivery coming back for
/// its turn goes, and while turns are handed out, fresh deliveries line up
/// behind them instead of taking tokens.
pub struct SinkRate {
    per_s: f64,
    state: Mutex<Pace>,
}

/// A [`SinkRate`]'s bucket and line.
struct Pace {
    bucket: Bucket,
    /// The last turn handed out (ms since epoch, fractional).
    last_turn_ms: f64,
    /// Deliveries holding a turn: id → the turn (ms since epoch).
    turns: HashMap<u64, u64>,
    /// When turns long past were last forgotten.
    pruned_ms: u64,
}

/// Turns this far in the past belong to deliveries that will not come back
/// (delivered meanwhile, dead-lettered, or held before a restart); they are
/// forgotten.
const STALE_TURN_MS: u64 = 60_000;

impl SinkRate {
    /// `per_s` deliveries a second, in bursts of up to one second's worth.
    pub fn per_second(per_s: u32) -> SinkRate {
        let per_s = f64::from(per_s.max(1));
        SinkRate {
            per_s,
            state: Mutex::new(Pace {
                bucket: Bucket::full(per_s),
                last_turn_ms: 0.0,
                turns: HashMap::new(),
                pruned_ms: 0,
            }),
        }
    }

    /// For deliveries `ids`, in order, at `now_ms` (`now` the same moment on
    /// the monotonic clock): `None` for one that goes now, or the turn (ms
    /// since epoch) at which one over the rate may go.
    pub fn plan(&self, ids: &[u64], now_ms: u64, now: Instant) -> Vec<Option<u64>> {
        let mut pace = match self.state.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        pace.bucket.refill(now, self.per_s);
        if now_ms.saturating_sub(pace.pruned_ms) > STALE_TURN_MS {
            let oldest = now_ms.saturating_sub(STALE_TURN_MS);
            pace.turns.retain(|_, turn| *turn >= oldest);
            pace.pruned_ms = now_ms;
        }
        let gap_ms = 1000.0 / self.per_s;
        ids.iter()
            .map(|id| {
                if pace.turns.remove(id).is_some() {
                    // Back for its turn: it goes (and counts in the bucket,
                    // which may run below zero while the line lasts).
                    pace.bucket.tokens -= 1.0;
                    return None;
                }
                let line = pace.last_turn_ms > now_ms as f64;
                if !line && pace.bucket.tokens >= 1.0 {
                    pace.bucket.tokens -= 1.0;
                    return None;
                }
                let turn = pace.last_turn_ms.max(now_ms as f64) + gap_ms;
                pace.last_turn_ms = turn;
                let turn = turn.ceil() as u64;
                pace.turns.insert(*id, turn);
                Some(turn)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_over_a_sink_rate_get_turns_in_order_and_go_when_back() {
        let rate = SinkRate::per_second(10);
        let (t0, ms0) = (Instant::now(), 1_000_000u64);
        // A full bucket: ten go, the other three get turns 100 ms apart.
        let plan = rate.plan(&(1..=13).collect::<Vec<_>>(), ms0, t0);
        assert!(plan[..10].iter().all(Option::is_none));
        assert_eq!(
            plan[10..],
            [Some(ms0 + 100), Some(ms0 + 200), Some(ms0 + 300)]
        );
        // 150 ms on: a fresh delivery lines up behind them, although the
        // bucket has a token again; number 11, back for its turn, goes.
        let later = t0 + Duration::from_millis(150);
        assert_eq!(
            rate.plan(&[20, 11], ms0 + 150, later),
            vec![Some(ms0 + 400), None]
        );
        // Once every turn has passed, fresh deliveries use the bucket again.
        let much_later = t0 + Duration::from_secs(2);
        let back = rate.plan(&[12, 13, 20], ms0 + 2000, much_later);
        assert_eq!(back, vec![None, None, None]);
        assert_eq!(rate.plan(&[30], ms0 + 2000, much_later), vec![None]);
    }

    #[test]
    fn a_burst_of_one_seconds_worth_then_the_refill_rate() {
        let limit = RateLimit::per_second(4);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_eq!(limit.take_at(t0), Ok(()));
        }
        let wait = limit.take_at(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(250));
        // A quarter of a second later, exactly one more.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(limit.take_at(t1), Ok(()));
        assert!(limit.take_at(t1).is_err());
        // Idle time never banks more than one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..4 {
            assert_eq!(limit.take_at(t2), Ok(()));
        }
        assert!(limit.take_at(t2).is_err());
        // A refund makes room for exactly one more, and never more than a
        // second's worth.
        limit.refund();
        assert_eq!(limit.take_at(t2), Ok(()));
        assert!(limit.take_at(t2).is_err());
        for _ in 0..10 {
            limit.refund();
        }
        for _ in 0..4 {
            assert_eq!(limit.take_at(t2), Ok(()));
        }
        assert!(limit.take_at(t2).is_err());
    }
}
