//! The durable queue: what is acknowledged is stored before the 2xx, and
//! leaves the store only once delivered or dead-lettered.
//!
//! [`Queue`] is the seam for storage backends; [`SledQueue`] is the embedded
//! default. The router only speaks this trait.

mod journal;
mod sled_store;

pub use sled_store::{SledQueue, DEFAULT_COMMIT_DELAY};

use crate::event::Event;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// A boxed future, so that [`Queue`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A record could not be decoded.
    #[error("corrupt record {key}: {reason}")]
    Corrupt {
        /// Record key.
        key: u64,
        /// Decoder message.
        reason: String,
    },
    /// The store was written by a format this build does not know.
    #[error("{path}: stored layout is format version {found}, this build of weft reads version {expected}; refusing to open")]
    UnknownFormat {
        /// The data directory.
        path: String,
        /// Version found on disk.
        found: String,
        /// Version this build writes.
        expected: u32,
    },
    /// The queue was shut down.
    #[error("queue is shut down")]
    Closed,
    /// No such dead letter.
    #[error("no dead letter with id {0}")]
    NotFound(u64),
    /// The change was made, but writing or syncing it failed: it is not
    /// known to be durable, and a later commit may still carry it.
    #[error("not known to be stored: {0}")]
    Unsynced(String),
    /// Another process has the store open.
    #[error("{path} is in use by another Weft process (or another program holds its lock); stop that one or give this one its own storage.data_dir")]
    InUse {
        /// The store's directory.
        path: String,
    },
}

/// What a pending record still needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stage {
    /// Run the whole route: transforms, then every sink.
    Route,
    /// Deliver the (already transformed) event to one sink.
    Deliver {
        /// The sink plugin's name.
        sink: String,
    },
}

/// One attempt at a record, kept for the dead-letter history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ran (ms since epoch).
    pub at_ms: u64,
    /// Which plugin it was (a transform or a sink).
    pub plugin: String,
    /// `retry`, `rejected`, `failed` (the plugin trapped or timed out) or `delivered`.
    pub outcome: String,
    /// Error text.
    pub detail: String,
}

/// A unit of pending work: an event on a route, at some stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Queue key, unique over pending and dead letters.
    pub id: u64,
    /// Route name.
    pub route: String,
    /// What is left to do.
    pub stage: Stage,
    /// The event.
    pub event: Event,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
    /// Not to run before this time (ms since epoch); 0 = now.
    pub not_before_ms: u64,
}

/// A record that failed for good, with why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The record as it was at its last attempt (with the full attempt history).
    pub record: Record,
    /// The last error.
    pub error: String,
    /// When it was dead-lettered (ms since epoch).
    pub dead_at_ms: u64,
}

/// A change applied to the queue without waiting for durability: losing it in
/// a crash only causes a redelivery, which at-least-once allows.
#[derive(Debug, Clone)]
pub enum Op {
    /// Insert or replace a pending record.
    Put(Record),
    /// Remove a pending record (delivered).
    Remove(u64),
    /// Move a pending record to the dead-letter store (atomically).
    Dead(DeadLetter),
}

/// "Accept this event at most once until `until_ms`": an event's key for
/// de-duplication at ingress (a source with `dedup_window_s`).
///
/// Why it exists: webhook senders retry when they miss an answer, and a
/// signed request captured on the way can be sent again within the
/// signature's tolerance. Both arrive with the same event id. Checking the
/// key in the same writer step that stores the event, and journaling it in
/// the same frame, makes "seen" exactly as durable as the event: a key is
/// never remembered for an event that was not stored, nor forgotten for one
/// that was (which a check outside the queue could not promise).
#[derive(Debug, Clone, PartialEq)]
pub struct OnceKey {
    /// What identifies the event: a SHA-256 of the source's name and the
    /// event id (a fixed 32 bytes, however long the id).
    pub key: Vec<u8>,
    /// Until when (ms since epoch) a second event with this key is a
    /// duplicate.
    pub until_ms: u64,
}

impl OnceKey {
    /// The key of event `id` from source `source`, remembered for `window`
    /// from `now_ms`.
    pub fn new(source: &str, id: &str, now_ms: u64, window: std::time::Duration) -> OnceKey {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        // The length first: ("a", "\0b") and ("a\0", "b") differ.
        hash.update((source.len() as u64).to_le_bytes());
        hash.update(source.as_bytes());
        hash.update(id.as_bytes());
        OnceKey {
            key: hash.finalize().to_vec(),
            until_ms: now_ms.saturating_add(window.as_millis() as u64),
        }
    }
}

/// One event's records (one per route), appended together: all of them or,
/// if `once` names a key already seen, none.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrived {
    /// The de-duplication key, if the event's source has one.
    pub once: Option<OnceKey>,
    /// The records to store.
    pub records: Vec<Record>,
}

/// What a discarded dead letter was: what the audit line of its deletion
/// names (its body is gone with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Discarded {
    /// The event's id.
    pub event_id: String,
    /// The route it was on.
    pub route: String,
}

/// Which dead letters to list: oldest first, only those with a record id
/// above `after` (to page through them) and on `route` (if given), at most
/// `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterQuery {
    /// Only record ids above this one.
    pub after: Option<u64>,
    /// Only this route's.
    pub route: Option<String>,
    /// At most this many.
    pub limit: usize,
    /// Stop once the letters read hold this many bytes (the first one is
    /// always returned): dead letters carry whole event bodies, and a page
    /// must fit in memory. Page on with `after` = the last id returned.
    pub max_bytes: usize,
}

/// Default for [`DeadLetterQuery::max_bytes`].
pub const DEAD_LETTER_PAGE_BYTES: usize = 32 << 20;

impl DeadLetterQuery {
    /// The oldest `limit` dead letters.
    pub fn first(limit: usize) -> DeadLetterQuery {
        DeadLetterQuery {
            after: None,
            route: None,
            limit,
            max_bytes: DEAD_LETTER_PAGE_BYTES,
        }
    }
}

/// Counts for the admin API and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueStats {
    /// Pending records.
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Durable commits (journal syncs) since start: accepted events divided
    /// by this is the group-commit size.
    pub syncs: u64,
    /// Checkpoints since start (the whole store made durable and the
    /// journal started over).
    pub checkpoints: u64,
    /// Time spent in those checkpoints, in nanoseconds. Commits wait while
    /// one runs: its mean is the pause a webhook may meet once per
    /// checkpoint interval.
    pub checkpoint_ns: u64,
}

/// "An append is on its way": held by a webhook from the moment it is
/// accepted for processing until its records are handed to the queue (or it
/// is rejected). A backend that group-commits can wait for announced appends
/// to join a commit instead of guessing (see `SledQueue`).
pub struct Arrival(Option<Arc<Arrivals>>);

impl Arrival {
    /// An arrival counted in `arrivals` until dropped.
    pub fn counted(arrivals: &Arc<Arrivals>) -> Arrival {
        arrivals.count.fetch_add(1, Ordering::SeqCst);
        Arrival(Some(arrivals.clone()))
    }

    /// An arrival nobody counts.
    pub fn none() -> Arrival {
        Arrival(None)
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        if let Some(arrivals) = self.0.take() {
            arrivals.leave();
        }
    }
}

/// The announced appends of one queue, and the thread that waits for them.
///
/// Why it exists: a group commit that waits for announced appends should
/// end the moment the last one is handed over, not at its next look (a
/// sleeping poll overshoots by its timer slack and the wake-up on a busy
/// core, ~0.1–0.2 ms here, and costs a context switch per look). The last
/// [`Arrival`] to leave wakes the waiting thread directly.
#[derive(Default)]
pub struct Arrivals {
    count: AtomicUsize,
    /// Set while a thread waits in [`Arrivals::wait_for_none`].
    waiting: AtomicBool,
    waiter: OnceLock<std::thread::Thread>,
}

impl Arrivals {
    /// Announced appends not yet handed over.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Blocks the calling thread until no append is announced or `deadline`
    /// passes. Only one thread may wait (the queue's writer).
    pub fn wait_for_none(&self, deadline: std::time::Instant) {
        let me = self.waiter.get_or_init(std::thread::current);
        debug_assert_eq!(me.id(), std::thread::current().id());
        // Store-then-load on both sides (here `waiting` then `count`, in
        // `leave` `count` then `waiting`), all SeqCst: either this sees the
        // count at zero or `leave` sees the waiter and unparks it.
        self.waiting.store(true, Ordering::SeqCst);
        while self.count() > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            // May return early (an unpark meant for an earlier wait): the
            // loop looks again.
            std::thread::park_timeout(left);
        }
        self.waiting.store(false, Ordering::SeqCst);
    }

    fn leave(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiting.load(Ordering::SeqCst) {
            if let Some(waiter) = self.waiter.get() {
                waiter.unpark();
            }
        }
    }
}

/// Low bits of a record id that count ids made in the same millisecond;
/// the bits above are the millisecond (since the Unix epoch) the id was made
/// in. Ten bits keep ids under 2^53 until the year 2248, so the admin API's
/// JSON and the dashboard's JavaScript read them exactly.
pub const ID_COUNTER_BITS: u32 = 10;

/// Ids whose millisecond lies before this (2020-01-01) were made by a build
/// that counted ids from 1: they carry no time.
const FIRST_TIMED_ID_MS: u64 = 1_577_836_800_000;

/// The next record id after `last` (the highest given out so far) at
/// `now_ms`: the first id of the current millisecond, or, when more ids
/// than the counter bits hold were made in it (or the clock stepped back),
/// `last + 1`. Ids therefore always grow, and say when they were made to
/// within the step of the clock.
pub fn time_ordered_id(last: u64, now_ms: u64) -> u64 {
    (now_ms << ID_COUNTER_BITS).max(last.saturating_add(1))
}

/// When record id `id` was made (ms since the Unix epoch), if it carries a
/// time (see [`ID_COUNTER_BITS`]). A record's id is made when the record
/// is: at acceptance for a webhook's records, when its transforms passed for
/// a delivery record.
pub fn id_made_at_ms(id: u64) -> Option<u64> {
    let ms = id >> ID_COUNTER_BITS;
    (ms >= FIRST_TIMED_ID_MS).then_some(ms)
}

/// A durable queue of [`Record`]s with a dead-letter store.
pub trait Queue: Send + Sync + 'static {
    /// Announces an append that will follow soon (a webhook being
    /// processed); drop the returned guard once it is appended or abandoned.
    fn arriving(&self) -> Arrival {
        Arrival::none()
    }

    /// A fresh record id, unique in this queue and time-ordered: made with
    /// [`time_ordered_id`], so [`id_made_at_ms`] tells when.
    fn next_id(&self) -> u64;

    /// Stores records durably; resolves only once they survive a crash or a
    /// power loss (the webhook is acknowledged after this). The records are
    /// handed over when this is called, before the future is first polled.
    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), QueueError>> {
        let stored = self.append_events(vec![Arrived {
            once: None,
            records,
        }]);
        Box::pin(async move { stored.await.map(|_| ()) })
    }

    /// [`Queue::append`] for events, each stored whole or, when its
    /// [`OnceKey`] was seen before and has not expired, not at all. Resolves
    /// to one flag per event: `true` stored now, `false` a duplicate (stored
    /// earlier). Duplicates resolve at the same time and with the same
    /// durability verdict as the events beside them.
    fn append_events(&self, events: Vec<Arrived>) -> BoxFuture<'_, Result<Vec<bool>, QueueError>>;

    /// Applies changes in order, without waiting for them to be synced.
    fn apply(&self, ops: Vec<Op>) -> Result<(), QueueError>;

    /// Every pending record's id and `not_before_ms`, in id order: what
    /// resuming work at start-up needs, without holding every event in
    /// memory at once.
    fn pending_times(&self) -> BoxFuture<'_, Result<Vec<(u64, u64)>, QueueError>>;

    /// The pending records among `ids`, in the order asked; ids that are no
    /// longer pending (delivered, dead-lettered) are left out. Reads what
    /// every change handed over before it has made.
    fn load(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<Vec<Record>, QueueError>>;

    /// Dead letters matching `query`, oldest first.
    fn dead_letters(
        &self,
        query: DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>>;

    /// Moves a dead letter back to pending with a fresh attempt budget, and
    /// returns the record to run.
    fn replay(&self, id: u64) -> BoxFuture<'_, Result<Record, QueueError>>;

    /// Deletes a dead letter for good (an operator gave up on it, or its
    /// data must go); resolves once the deletion is durable.
    fn discard(&self, id: u64) -> BoxFuture<'_, Result<Discarded, QueueError>>;

    /// Counts.
    fn stats(&self) -> QueueStats;

    /// The smallest id among the pending records in the store: with
    /// time-ordered ids, the oldest record still waiting to be delivered
    /// ([`id_made_at_ms`] says since when). May block on the store: call it
    /// off the async threads. A backend that cannot tell returns `None`.
    fn oldest_pending_id(&self) -> Option<u64> {
        None
    }

    /// Pending records per route, by route name (routes with none left
    /// out). A backend that does not count them per route reports nothing,
    /// and [`Queue::pending_on`] falls back to the total.
    fn pending_by_route(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Pending records on `route` (what `storage.max_pending` bounds).
    fn pending_on(&self, route: &str) -> u64 {
        let _ = route;
        self.stats().pending
    }

    /// Flushes and stops the writer; later calls fail with [`QueueError::Closed`].
    fn close(&self) -> BoxFuture<'_, Result<(), QueueError>>;

    /// Whether the queue can still take changes: false once it is closed,
    /// or once whatever writes it has stopped on its own (a writer thread
    /// that died).
    fn working(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_grow_and_say_when_they_were_made() {
        let ms = 1_800_000_000_000u64; // 2027
        let first = time_ordered_id(0, ms);
        assert_eq!(id_made_at_ms(first), Some(ms));
        // More ids in the same millisecond count up from its first.
        let second = time_ordered_id(first, ms);
        assert_eq!(second, first + 1);
        assert_eq!(id_made_at_ms(second), Some(ms));
        // A later millisecond starts at its own first id.
        let later = time_ordered_id(second, ms + 5);
        assert_eq!(id_made_at_ms(later), Some(ms + 5));
        // A clock that steps back never makes an id go back (or repeat).
        let stepped_back = time_ordered_id(later, ms - 1000);
        assert_eq!(stepped_back, later + 1);
        // After a store from a build that counted from 1: ids jump ahead
        // to the time; the old ones carry none.
        assert_eq!(time_ordered_id(41, ms), first);
        assert_eq!(id_made_at_ms(41), None);
        // Exact in JSON and JavaScript (under 2^53) for two centuries.
        let year_2200_ms = 7_258_118_400_000u64;
        assert!(time_ordered_id(0, year_2200_ms) < 1 << 53);
    }

    use std::time::Duration;

    #[test]
    fn a_once_key_names_the_source_and_the_event_id_and_nothing_else() {
        let key = |source: &str, id: &str| OnceKey::new(source, id, 1_000, Duration::from_secs(60));
        let a = key("orders", "ORD-1");
        assert_eq!(a.until_ms, 61_000);
        assert_eq!(a.key.len(), 32);
        assert_eq!(a.key, key("orders", "ORD-1").key);
        // Another id, another source, or the same bytes split differently.
        assert_ne!(a.key, key("orders", "ORD-2").key);
        assert_ne!(a.key, key("refunds", "ORD-1").key);
        assert_ne!(key("a", "bc").key, key("ab", "c").key);
        // However long the id, the key is 32 bytes.
        assert_eq!(key("orders", &"x".repeat(100_000)).key.len(), 32);
    }
}
