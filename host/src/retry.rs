//! The retry schedule: exponential backoff with jitter, capped.

use crate::config::RetryConfig;
use rand::Rng;

/// Decides when a failed attempt runs again and when to give up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
}

impl RetryPolicy {
    /// A policy from the `[retry]` config section.
    pub fn new(config: RetryConfig) -> Self {
        RetryPolicy { config }
    }

    /// Attempts in all before an event is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.config.max_attempts
    }

    /// Failed attempts in a row at one sink that open its circuit breaker
    /// (0: none; see `crate::breaker`).
    pub fn breaker_after(&self) -> u32 {
        self.config.breaker_after
    }

    /// The longest [`RetryPolicy::delay_ms`] can be: `max_delay_ms` plus
    /// its jitter.
    pub fn longest_ms(&self) -> u64 {
        let c = &self.config;
        (c.max_delay_ms as f64 * (1.0 + c.jitter.max(0.0))).ceil() as u64
    }

    /// The delay before the next attempt, given that `attempts` were made so
    /// far (>= 1). A delay the remote asked for (`Retry-After`) is a floor
    /// under the backoff, as HTTP means it ("wait at least this long"): a
    /// remote answering `Retry-After: 0` to every attempt still gets the
    /// backoff, not its attempts used up in a burst. Capped at
    /// `max_delay_ms` either way (plus jitter for the backoff).
    pub fn delay_ms(&self, attempts: u32, requested_ms: Option<u64>) -> u64 {
        let c = &self.config;
        let exp = attempts.saturating_sub(1).min(60) as i32;
        let base = (c.initial_ms as f64 * c.multiplier.powi(exp)).min(c.max_delay_ms as f64);
        let spread = if c.jitter > 0.0 {
            rand::thread_rng().gen_range(-c.jitter..=c.jitter)
        } else {
            0.0
        };
        let backoff = (base * (1.0 + spread)).max(0.0) as u64;
        match requested_ms {
            Some(requested) => requested.max(backoff).min(c.max_delay_ms),
            None => backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let p = RetryPolicy::new(RetryConfig {
            initial_ms: 100,
            multiplier: 2.0,
            max_delay_ms: 1000,
            max_attempts: 5,
            jitter: 0.1,
            ..Default::default()
        });
        for _ in 0..100 {
            let d1 = p.delay_ms(1, None);
            assert!((90..=110).contains(&d1), "{d1}");
            let d3 = p.delay_ms(3, None);
            assert!((360..=440).contains(&d3), "{d3}");
            let d9 = p.delay_ms(9, None);
            assert!((900..=1100).contains(&d9), "{d9}");
        }
        assert_eq!(p.delay_ms(1, Some(5_000)), 1000);
        assert_eq!(p.delay_ms(1, Some(250)), 250);
        // A requested delay is a floor: `Retry-After: 0` still backs off.
        for _ in 0..100 {
            let d = p.delay_ms(3, Some(0));
            assert!((360..=440).contains(&d), "{d}");
        }
    }
}
