//! Records waiting for their time (a retry's backoff, a sink's
//! `Retry-After`), held by id only.
//!
//! Why it exists: a waiting record is already in the queue, durably. Keeping
//! the whole record (its event and attempt history) in memory until it is
//! due made a long outage of a sink cost memory in proportion to its backlog,
//! and a restart loaded the whole backlog at once. [`Timers`] keeps 16 bytes
//! per waiting record; the router loads records from the queue when they are
//! due, as many at a time as its workers can take.
//!
//! Times are wall-clock milliseconds (they are stored with the records and
//! survive a restart). A time further ahead than any retry can be (the
//! horizon: twice the longest retry delay, at least a minute) was set by a
//! clock that has since stepped back, and counts as due rather than waiting
//! for the clock to catch up. (Lowering `retry.max_delay_ms` between two
//! starts does the same to retries scheduled under the old, longer delays:
//! they run at once after the restart.)

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Waiting record ids by the time they may run.
pub struct Timers {
    /// `(not_before_ms, record id)`, earliest first.
    heap: Mutex<BinaryHeap<Reverse<(u64, u64)>>>,
    /// Wakes the waiter when an earlier time arrives.
    changed: Notify,
    /// No record waits longer than this from now: a time further ahead was
    /// set by a wall clock that has since stepped back (a host booted with
    /// its clock years ahead, then corrected), and counts as due.
    horizon_ms: u64,
}

/// What [`Timers::due`] found.
#[derive(Debug, PartialEq)]
pub enum Due {
    /// These ids are due (at most the number asked for).
    Now(Vec<u64>),
    /// Nothing is due before this time (ms since the epoch).
    At(u64),
    /// Nothing is waiting.
    Empty,
}

impl Timers {
    /// No timers yet; a time more than `horizon_ms` ahead of the clock
    /// counts as due (see [`Timers::due`]).
    pub fn new(horizon_ms: u64) -> Timers {
        Timers {
            heap: Mutex::default(),
            changed: Notify::new(),
            horizon_ms,
        }
    }

    /// Record `id` may run at `at_ms`.
    pub fn add(&self, at_ms: u64, id: u64) {
        let earliest = {
            let mut heap = self.lock();
            let before = heap.peek().map(|Reverse((at, _))| *at);
            heap.push(Reverse((at_ms, id)));
            before.is_none_or(|before| at_ms < before)
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Takes up to `max` ids due at `now_ms`, or says when the next is due.
    /// An id whose time is beyond the horizon counts as due: once the
    /// earliest is, all are, so after a backward clock step nothing waits
    /// more than the horizon for it.
    pub fn due(&self, now_ms: u64, max: usize) -> Due {
        let beyond = now_ms.saturating_add(self.horizon_ms);
        let mut heap = self.lock();
        let mut ids = Vec::new();
        while ids.len() < max {
            match heap.peek() {
                Some(Reverse((at, _))) if *at <= now_ms || *at > beyond => {
                    if let Some(Reverse((_, id))) = heap.pop() {
                        ids.push(id);
                    }
                }
                Some(Reverse((at, _))) if ids.is_empty() => return Due::At(*at),
                None if ids.is_empty() => return Due::Empty,
                _ => break,
            }
        }
        Due::Now(ids)
    }

    /// Waits until [`Timers::add`] brings an earlier time (or anything, when
    /// empty).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<(u64, u64)>>> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_out_by_time_and_in_bounded_takes() {
        let timers = Timers::new(u64::MAX);
        assert_eq!(timers.due(0, 10), Due::Empty);
        timers.add(300, 3);
        timers.add(100, 1);
        timers.add(200, 2);
        timers.add(100, 4);
        assert_eq!(timers.due(50, 10), Due::At(100));
        assert_eq!(timers.due(250, 1), Due::Now(vec![1]));
        assert_eq!(timers.due(250, 10), Due::Now(vec![4, 2]));
        assert_eq!(timers.due(250, 10), Due::At(300));
        assert_eq!(timers.len(), 1);
        assert_eq!(timers.due(300, 10), Due::Now(vec![3]));
        assert!(timers.is_empty());
    }

    #[test]
    fn times_beyond_the_horizon_are_due_at_once() {
        // Retries scheduled while the clock read a year ahead, then the
        // clock stepped back to 1000: they do not wait a year.
        let timers = Timers::new(5_000);
        let year = 365 * 24 * 3600 * 1000;
        timers.add(year + 10, 1);
        timers.add(year + 20, 2);
        timers.add(3_000, 3);
        assert_eq!(timers.due(1_000, 10), Due::At(3_000));
        assert_eq!(timers.due(3_000, 10), Due::Now(vec![3, 1, 2]));
        // Within the horizon, a time is kept.
        timers.add(7_000, 4);
        assert_eq!(timers.due(3_000, 10), Due::At(7_000));
    }

    #[tokio::test]
    async fn an_earlier_time_wakes_the_waiter() {
        let timers = std::sync::Arc::new(Timers::new(u64::MAX));
        timers.add(1_000, 1);
        let waiter = {
            let timers = timers.clone();
            tokio::spawn(async move { timers.changed().await })
        };
        tokio::task::yield_now().await;
        // A later time changes nothing for the waiter; an earlier one wakes it.
        timers.add(2_000, 2);
        timers.add(500, 3);
        waiter.await.unwrap();
        assert_eq!(timers.due(600, 10), Due::Now(vec![3]));
    }
}
