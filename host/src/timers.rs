//! Records waiting for their time (a retry's backoff, a sink's
//! `Retry-After`), held by id only.
//!
//! Why it exists: a waiting record is already in the queue, durably. Keeping
//! the whole record (its event and attempt history) in memory until it is
//! due made a long outage of a sink cost memory in proportion to its backlog,
//! and a restart loaded the whole backlog at once. [`Timers`] keeps 16 bytes
//! per waiting record; the router loads records from the queue when they are
//! due, as many at a time as its workers can take.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Waiting record ids by the time they may run.
#[derive(Default)]
pub struct Timers {
    /// `(not_before_ms, record id)`, earliest first.
    heap: Mutex<BinaryHeap<Reverse<(u64, u64)>>>,
    /// Wakes the waiter when an earlier time arrives.
    changed: Notify,
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
    pub fn due(&self, now_ms: u64, max: usize) -> Due {
        let mut heap = self.lock();
        let mut ids = Vec::new();
        while ids.len() < max {
            match heap.peek() {
                Some(Reverse((at, _))) if *at <= now_ms => {
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
        let timers = Timers::default();
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

    #[tokio::test]
    async fn an_earlier_time_wakes_the_waiter() {
        let timers = std::sync::Arc::new(Timers::default());
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
