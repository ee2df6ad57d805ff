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

impl RateLimit {
    /// A bucket refilled at `per_s` tokens a second, holding at most `per_s`
    /// (one second's worth), starting full.
    pub fn per_second(per_s: u32) -> RateLimit {
        let per_s = f64::from(per_s.max(1));
        RateLimit {
            per_s,
            bucket: Mutex::new(Bucket {
                tokens: per_s,
                refilled: Instant::now(),
            }),
        }
    }

    /// Refills the bucket up to `now`; with `take`, takes one token. Says
    /// how long until one is available when none is.
    fn level_at(&self, now: Instant, take: bool) -> Result<(), Duration> {
        let mut bucket = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(bucket.refilled);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_s).min(self.per_s);
        bucket.refilled = now;
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

    /// Takes up to `n` tokens at `now` (for `n` deliveries in a row):
    /// returns how many it took and, for each of the others in order, how
    /// long until a token will be there for it if nothing else takes one
    /// first (the first in one token's time, the next in two...).
    pub fn take_up_to(&self, n: usize, now: Instant) -> (usize, Vec<Duration>) {
        let mut bucket = match self.bucket.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(bucket.refilled);
        bucket.tokens = (bucket.tokens + elapsed.as_secs_f64() * self.per_s).min(self.per_s);
        bucket.refilled = now;
        let took = n.min(bucket.tokens.floor().max(0.0) as usize);
        bucket.tokens -= took as f64;
        let left = bucket.tokens;
        let waits = (0..n - took)
            .map(|j| Duration::from_secs_f64((j as f64 + 1.0 - left).max(0.0) / self.per_s))
            .collect();
        (took, waits)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_over_the_rate_are_given_their_turns_one_token_apart() {
        let limit = RateLimit::per_second(10);
        let t0 = Instant::now();
        // A full bucket: ten go, the other three wait 0.1, 0.2, 0.3 s.
        let (took, waits) = limit.take_up_to(13, t0);
        assert_eq!(took, 10);
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 300]);
        // 0.25 s later, two tokens have come back.
        let (took, waits) = limit.take_up_to(3, t0 + Duration::from_millis(250));
        assert_eq!((took, waits.len()), (2, 1));
        assert_eq!(waits[0].as_millis(), 50);
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
