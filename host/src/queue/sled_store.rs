//! The embedded queue on sled 0.34, made durable by a write-ahead journal
//! with group commit.
//!
//! Layout (one sled tree, keys prefixed): `m/format` holds the format version,
//! `m/journal` the journal's current epoch (a random number), `p` + id (big endian) a pending
//! [`Record`], `d` + id a [`DeadLetter`]. Values are postcard-encoded. Beside
//! the sled directory, the file `journal` (see [`journal`](super::journal)).
//!
//! All writes go through one writer thread. It takes every command waiting
//! in its channel, applies them, and writes the same changes, in the same
//! order, as one frame of the journal; if any of them was an
//! [`Queue::append`] (or a dead letter's replay or deletion), it
//! `fdatasync`s the journal before
//! answering: one sync covers every webhook that arrived meanwhile (group
//! commit). Changes without an append (deliveries, retries, dead letters) are
//! written to the journal without a sync: a process crash does not lose them.
//!
//! Records stored since the last checkpoint live in memory (the *fresh*
//! table) and in the journal, not in sled: most events are delivered well
//! within a checkpoint interval, and then sled never sees them. Every
//! [`CHECKPOINT_BYTES`] of journal or [`CHECKPOINT_INTERVAL`], the writer
//! moves the fresh records still pending into sled, makes sled durable
//! (`flush()`, whose `sync_file_range` survives a process crash but not a
//! power loss, then `fdatasync` of sled's log file, or `syncfs` when a large
//! value went to sled's separate blob files) and starts a new journal epoch.
//!
//! On open, the current epoch's journal entries are applied to sled, in
//! order, before anything else. Applying a change twice, or an older change
//! over a newer one (sled also writes on its own), can only bring back a
//! record that was already delivered (a redelivery, which at-least-once
//! allows) or an older attempt history.
//!
//! Because sled writes on its own (every 500 ms), what the writer changes in
//! sled may become durable before the journal frame that goes with it. So a
//! change that would be wrong without its frame waits: a delivered record's
//! copy in sled is removed at the next checkpoint, after the records that
//! replace it are in sled ([`Writer::removed`]); a replayed dead letter is
//! removed once the frame reviving it is synced ([`Writer::revived`]).

use super::journal::{Entry, Journal};
use super::{
    Arrival, Arrivals, Arrived, BoxFuture, DeadLetter, DeadLetterQuery, Discarded, Op, Queue,
    QueueError, QueueStats, Record,
};
use crate::event::now_ms;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The stored layout version this build reads and writes. Version 1 (no
/// journal) and version 2 (no de-duplication keys) are upgraded in place
/// when opened; a build that knows only version 2 refuses a version 3 store
/// (its journal may hold `Seen` entries that build cannot read).
pub const FORMAT_VERSION: u32 = 3;
const FORMAT_KEY: &[u8] = b"m/format";
const EPOCH_KEY: &[u8] = b"m/journal";
const PENDING: u8 = b'p';
const DEAD: u8 = b'd';
/// De-duplication keys: `s` + key → until when (ms since epoch, big-endian).
const SEEN: u8 = b's';
/// Each checkpoint looks through at most this many stored keys for expired
/// ones, going on where the last one stopped: twice the keys stored since
/// the last checkpoint (so that the sweep keeps up with what arrives),
/// within these bounds (so that one checkpoint never stalls commits long).
const SWEEP_MIN: usize = 1_000;
const SWEEP_MAX: usize = 50_000;
/// Values above this size may land in sled's blob files, which the log-file
/// sync does not cover; a checkpoint after one syncs the whole file system.
const LARGE_VALUE: usize = 64 * 1024;
/// sled's page cache (its default is 1 GiB).
const SLED_CACHE_BYTES: u64 = 64 << 20;
/// Most commands applied per group.
const MAX_GROUP: usize = 4096;
/// A checkpoint once the journal's current epoch holds this many bytes...
pub const CHECKPOINT_BYTES: u64 = 8 << 20;
/// ... or when it holds anything and the last checkpoint is this old. Also
/// bounds the redeliveries after a power loss to what the journal holds.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints failing without a break for this long mean the store is
/// broken, not busy: sled 0.34 keeps the first I/O error it meets (a full
/// disk, say) and fails every later operation with it, so only a restart
/// (once the disk is fixed) recovers. The writer then stops, and Weft with
/// it, so that a supervisor restarts it; the journal holds everything
/// acknowledged, as after a crash.
const FAILING_FOR: Duration = Duration::from_secs(10);
/// After a failed checkpoint, the next try waits at least this long.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);
/// A writer busy with one group (or checkpoint) for this long is stuck, not
/// slow: sled 0.34, once its log cannot be written (a full disk), can spin
/// for ever inside any call, a read included. The queue then counts as not
/// working ([`Queue::working`]: Weft stops so that a supervisor restarts it)
/// and closing it does not wait for the writer.
const STUCK_AFTER: Duration = Duration::from_secs(30);

/// Default for `storage.commit_delay_us`.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_micros(1000);

fn key(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn id_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() == 9 {
        b.copy_from_slice(&k[1..]);
    }
    u64::from_be_bytes(b)
}

fn storage(e: impl std::fmt::Display) -> QueueError {
    QueueError::Storage(e.to_string())
}

/// The route of an encoded [`Record`], read from its first two fields (the
/// id, then the route) without decoding the rest; `None` for bytes that are
/// not a record.
fn route_of(value: &[u8]) -> Option<&str> {
    postcard::take_from_bytes::<(u64, &str)>(value)
        .ok()
        .map(|((_, route), _)| route)
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The writer starts on a group of commands (or a checkpoint).
    fn busy(&self) {
        self.busy_since
            .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
    }

    /// The writer waits for commands.
    fn idle(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }

    /// How long the writer has been on its current work, if that is
    /// [`STUCK_AFTER`] or more.
    fn stuck_for(&self) -> Option<Duration> {
        let since = self.busy_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let busy = Duration::from_millis(self.now_ms().saturating_sub(since - 1));
        (busy >= STUCK_AFTER).then_some(busy)
    }

    /// One more, or one fewer, pending record on `route` (a record's route
    /// never changes: the router sets it when it makes the record).
    fn count_route(&self, route: Option<&str>, more: bool) {
        let Some(route) = route else { return };
        let mut counts = match self.pending_by_route.lock() {
            Ok(counts) => counts,
            Err(poisoned) => poisoned.into_inner(),
        };
        match (counts.get_mut(route), more) {
            (Some(n), true) => *n += 1,
            (None, true) => {
                counts.insert(route.to_owned(), 1);
            }
            (Some(n), false) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(route);
                }
            }
            (None, false) => {}
        }
    }
}

enum Command {
    Append(Vec<Arrived>, oneshot::Sender<Result<Vec<bool>, QueueError>>),
    Apply(Vec<Op>),
    Replay(u64, oneshot::Sender<Result<Record, QueueError>>),
    Discard(u64, oneshot::Sender<Result<Discarded, QueueError>>),
    PendingTimes(oneshot::Sender<Result<Vec<(u64, u64)>, QueueError>>),
    Load(Vec<u64>, oneshot::Sender<Result<Vec<Record>, QueueError>>),
    Close(oneshot::Sender<Result<(), QueueError>>),
}

/// Shared between the handle and the writer thread.
struct Shared {
    tree: sled::Db,
    log_file: File,
    pending: AtomicU64,
    /// Pending records per route (what `storage.max_pending` is checked
    /// against), changed with `pending` by the writer.
    pending_by_route: Mutex<HashMap<String, u64>>,
    dead: AtomicU64,
    syncs: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_ns: AtomicU64,
    /// Webhooks being processed whose append has not been handed over yet.
    arriving: Arc<Arrivals>,
    /// Set when the writer gave up on a broken store ([`FAILING_FOR`]).
    broken: std::sync::atomic::AtomicBool,
    /// When the writer started what it is doing now, in milliseconds since
    /// `opened`, plus one; 0 while it waits for commands.
    busy_since: AtomicU64,
    opened: Instant,
}

/// The sled-backed [`Queue`].
pub struct SledQueue {
    shared: Arc<Shared>,
    /// The highest record id given out or stored (see [`super::time_ordered_id`]).
    last_id: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

/// Checks (and upgrades) the stored layout version.
fn check_format(db: &sled::Db, path: &Path) -> Result<(), QueueError> {
    let unknown = |found: String| QueueError::UnknownFormat {
        path: path.display().to_string(),
        found,
        expected: FORMAT_VERSION,
    };
    match db.get(FORMAT_KEY).map_err(storage)? {
        Some(v) => {
            let found = String::from_utf8_lossy(&v).into_owned();
            if found == "1" || found == "2" {
                // Version 1 had no journal (its data is all in sled);
                // version 2 no de-duplication keys. Both read as version 3.
                db.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())
                    .map_err(storage)?;
                db.flush().map_err(storage)?;
                tracing::info!(path = %path.display(), "queue store upgraded from format {found} to {FORMAT_VERSION}");
            } else if found != FORMAT_VERSION.to_string() {
                return Err(unknown(found));
            }
        }
        None => {
            if db.iter().next().is_some() {
                return Err(unknown("none (data without a format marker)".into()));
            }
            db.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())
                .map_err(storage)?;
            db.flush().map_err(storage)?;
        }
    }
    Ok(())
}

/// The refusal of a change that must be synced while the journal epoch is
/// in doubt (see `Writer::epoch_in_doubt`): `what` it would have been.
fn in_doubt(what: &str) -> QueueError {
    QueueError::Storage(format!(
        "queue storage failing (journal epoch in doubt); not {what}"
    ))
}

/// Applies journal entries to the tree, in order.
fn redo(tree: &sled::Db, entries: Vec<Entry>) -> Result<(), QueueError> {
    for entry in entries {
        match entry {
            Entry::Put(id, value) => {
                tree.insert(key(PENDING, id), value).map_err(storage)?;
            }
            Entry::Remove(id) => {
                tree.remove(key(PENDING, id)).map_err(storage)?;
            }
            Entry::Dead(id, value) => {
                tree.insert(key(DEAD, id), value).map_err(storage)?;
                tree.remove(key(PENDING, id)).map_err(storage)?;
            }
            Entry::Revive(id) => {
                tree.remove(key(DEAD, id)).map_err(storage)?;
            }
            Entry::Seen(until, once) => remember(tree, &once, until)?,
        }
    }
    Ok(())
}

/// `s` + key.
fn seen_key(once: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + once.len());
    k.push(SEEN);
    k.extend_from_slice(once);
    k
}

/// Stores de-duplication key `once` until `until` (replacing an expired
/// entry of the same key).
fn remember(tree: &sled::Db, once: &[u8], until: u64) -> Result<(), QueueError> {
    tree.insert(seen_key(once), &until.to_be_bytes())
        .map_err(storage)?;
    Ok(())
}

/// Whether `once` is stored and has not expired at `now`.
fn is_seen(tree: &sled::Db, once: &[u8], now: u64) -> Result<bool, QueueError> {
    Ok(tree
        .get(seen_key(once))
        .map_err(storage)?
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .is_some_and(|until| until > now))
}

/// Looks at up to `max` stored keys from `cursor` on (from the first again
/// once past the last) and drops those expired at `now`; moves `cursor`.
/// Returns how many it dropped. Not journaled: a drop lost in a crash
/// leaves a key that has expired anyway (and counts as unseen), which a
/// later sweep drops again.
fn sweep_expired(
    tree: &sled::Db,
    now: u64,
    max: usize,
    cursor: &mut Vec<u8>,
) -> Result<usize, QueueError> {
    let mut dropped = 0;
    let from = if cursor.first() == Some(&SEEN) {
        std::mem::take(cursor)
    } else {
        vec![SEEN]
    };
    for (looked, item) in tree
        .range(from.as_slice()..[SEEN + 1].as_slice())
        .enumerate()
    {
        if looked == max {
            return Ok(dropped);
        }
        let (k, v) = item.map_err(storage)?;
        let until = v.as_ref().try_into().ok().map(u64::from_be_bytes);
        if until.is_none_or(|until| until <= now) {
            tree.remove(&k).map_err(storage)?;
            dropped += 1;
        }
        // The next sweep starts just after this key.
        *cursor = k.to_vec();
        cursor.push(0);
    }
    // Past the last key: the next sweep starts over.
    cursor.clear();
    Ok(dropped)
}

impl SledQueue {
    /// Every pending record, in id order (what the tests check the store
    /// against; the router reads ids and loads records when due).
    #[cfg(test)]
    async fn pending(&self) -> Result<Vec<Record>, QueueError> {
        let ids = self.pending_times().await?.into_iter().map(|(id, _)| id);
        self.load(ids.collect()).await
    }

    /// Opens (or creates) the queue under `dir` with the default commit delay.
    pub fn open(dir: &Path) -> Result<SledQueue, QueueError> {
        Self::open_with(dir, DEFAULT_COMMIT_DELAY)
    }

    /// Opens (or creates) the queue under `dir`. `commit_delay` is the
    /// longest a group commit waits for announced appends to join it (see
    /// [`writer_loop`]); zero disables the wait.
    pub fn open_with(dir: &Path, commit_delay: Duration) -> Result<SledQueue, QueueError> {
        let path = dir.join("queue");
        // sled caches pages up to 1 GiB by default: with a backlog of
        // pending records (a sink down for hours) that cache, not the
        // records' number, would set the process's memory.
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| {
                // sled takes an exclusive lock on its files: a second process
                // on the same directory fails here.
                if e.to_string().contains("could not acquire lock") {
                    QueueError::InUse {
                        path: path.display().to_string(),
                    }
                } else {
                    storage(e)
                }
            })?;
        check_format(&db, &path)?;
        let epoch =
            match db.get(EPOCH_KEY).map_err(storage)? {
                Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| {
                    QueueError::Corrupt {
                        key: 0,
                        reason: "m/journal is not an epoch number".into(),
                    }
                })?,
                None => 0,
            };
        let journal_path = dir.join("journal");
        let (journal, entries) = Journal::open(&journal_path, epoch)
            .map_err(|e| storage(format!("{}: {e}", journal_path.display())))?;
        if !entries.is_empty() {
            tracing::info!(
                changes = entries.len(),
                "applying the journal's changes since the last checkpoint"
            );
        }
        redo(&db, entries)?;
        // A crash between "insert dead letter" and "remove pending" leaves both:
        // the dead letter wins.
        let mut pending = 0u64;
        let mut dead = 0u64;
        let mut max_id = 0u64;
        for item in db.scan_prefix([DEAD]) {
            let (k, _) = item.map_err(storage)?;
            let id = id_of(&k);
            max_id = max_id.max(id);
            dead += 1;
            if db.remove(key(PENDING, id)).map_err(storage)?.is_some() {
                tracing::warn!(
                    record = id,
                    "record was both pending and dead-lettered; kept the dead letter"
                );
            }
        }
        let mut pending_by_route: HashMap<String, u64> = HashMap::new();
        for item in db.scan_prefix([PENDING]) {
            let (k, v) = item.map_err(storage)?;
            max_id = max_id.max(id_of(&k));
            pending += 1;
            if let Some(route) = route_of(&v) {
                *pending_by_route.entry(route.to_owned()).or_insert(0) += 1;
            }
        }
        let log_file = File::open(path.join("db")).map_err(storage)?;
        let shared = Arc::new(Shared {
            tree: db,
            log_file,
            pending: AtomicU64::new(pending),
            pending_by_route: Mutex::new(pending_by_route),
            dead: AtomicU64::new(dead),
            syncs: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            checkpoint_ns: AtomicU64::new(0),
            arriving: Arc::new(Arrivals::default()),
            broken: std::sync::atomic::AtomicBool::new(false),
            busy_since: AtomicU64::new(0),
            opened: Instant::now(),
        });
        let mut writer = Writer {
            shared: shared.clone(),
            journal,
            fresh: HashMap::new(),
            removed: HashSet::new(),
            revived: Vec::new(),
            fresh_seen: HashMap::new(),
            sweep_from: Vec::new(),
            epoch_in_doubt: false,
            // What was redone may include large values.
            large: true,
            last_checkpoint: Instant::now(),
            failing: None,
        };
        // What the journal held is now in sled: make it durable there, so
        // the journal can start over.
        writer.checkpoint()?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weft-queue-writer".into())
            .spawn(move || writer_loop(writer, rx, commit_delay))
            .map_err(storage)?;
        Ok(SledQueue {
            shared,
            last_id: AtomicU64::new(max_id),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
            path,
        })
    }

    /// The private state tree of a plugin (kept in the same database).
    pub fn state_tree(&self, plugin: &str) -> Result<sled::Tree, QueueError> {
        self.shared
            .tree
            .open_tree(format!("state/{plugin}"))
            .map_err(storage)
    }

    /// Where the sled files are.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&self, cmd: Command) -> Result<(), QueueError> {
        let guard = self.tx.lock().map_err(|_| QueueError::Closed)?;
        match guard.as_ref() {
            Some(tx) => tx.send(cmd).map_err(|_| QueueError::Closed),
            None => Err(QueueError::Closed),
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, QueueError> {
    postcard::to_stdvec(value).map_err(storage)
}

fn decode<T: serde::de::DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, QueueError> {
    postcard::from_bytes(v).map_err(|e| QueueError::Corrupt {
        key: id_of(k),
        reason: e.to_string(),
    })
}

/// A pending record stored since the last checkpoint (see the module docs).
struct Fresh {
    /// The encoded record.
    value: Vec<u8>,
    /// An older version of it is in sled (a retry of a record from before
    /// the checkpoint): removing it must remove that too.
    in_sled: bool,
}

/// The writer thread's state: the only code that changes the queue.
struct Writer {
    shared: Arc<Shared>,
    journal: Journal,
    /// Pending records stored since the last checkpoint, by id.
    fresh: HashMap<u64, Fresh>,
    /// Pending records removed (delivered) since the last checkpoint whose
    /// copy in sled is still there: sled drops them at the next checkpoint,
    /// after the records that replaced them (a retry, a delivery per failed
    /// sink) are in sled too. Removing them from sled at once could let
    /// sled's own flush make the removal durable while its replacement
    /// lives only in an unsynced journal frame: a power loss would lose both.
    removed: HashSet<u64>,
    /// Dead letters replayed or deleted in the group being written: their
    /// removal from sled waits until the journal frame saying so is synced.
    revived: Vec<u64>,
    /// De-duplication keys stored since the last checkpoint, with until
    /// when: like [`Writer::fresh`], they reach sled only at a checkpoint,
    /// so that sled's own flush can never make a key durable whose event
    /// is still only in an unsynced journal frame (a power loss would then
    /// lose the event and refuse its resend as a duplicate).
    fresh_seen: HashMap<Vec<u8>, u64>,
    /// Where the next sweep for expired keys starts (see [`sweep_expired`]).
    sweep_from: Vec<u8>,
    /// A checkpoint stored the next epoch in sled but could not make it
    /// durable, nor the current one again: which epoch sled holds after a
    /// crash is unknown, so appends are refused until a checkpoint succeeds.
    epoch_in_doubt: bool,
    /// A value above [`LARGE_VALUE`] went to sled since the last checkpoint.
    large: bool,
    last_checkpoint: Instant,
    /// Since when checkpoints fail, and when the last one failed (`None`
    /// once one succeeds).
    failing: Option<(Instant, Instant)>,
}

impl Writer {
    /// Stores a pending record (in the fresh table and the journal's next
    /// frame). `new`: the id was never stored before (an append).
    fn put(&mut self, record: &Record, new: bool) -> Result<(), QueueError> {
        let value = encode(record)?;
        self.journal.add_put(record.id, &value).map_err(storage)?;
        if let Some(fresh) = self.fresh.get_mut(&record.id) {
            fresh.value = value;
            return Ok(());
        }
        // Removed since the last checkpoint and stored again: pending once
        // more, over the copy sled still holds.
        let back = self.removed.remove(&record.id);
        let in_sled = back
            || (!new
                && self
                    .shared
                    .tree
                    .contains_key(key(PENDING, record.id))
                    .map_err(storage)?);
        if !in_sled || back {
            self.shared.pending.fetch_add(1, Ordering::Relaxed);
            self.shared.count_route(Some(&record.route), true);
        }
        self.fresh.insert(record.id, Fresh { value, in_sled });
        Ok(())
    }

    /// Forgets pending record `id` (not journaled: the caller journals why).
    /// A copy in sled (stored before the last checkpoint) goes `at_once`, or
    /// at the next checkpoint when what replaces it may so far be only in
    /// the journal (see [`Writer::removed`]).
    /// Stores one event's records, unless its key names an event stored
    /// before whose key has not expired at `now`: then nothing, and
    /// `Ok(false)`.
    fn append_event(&mut self, event: &Arrived, now: u64) -> Result<bool, QueueError> {
        if let Some(once) = &event.once {
            let fresh = self
                .fresh_seen
                .get(&once.key)
                .is_some_and(|until| *until > now);
            if fresh || is_seen(&self.shared.tree, &once.key, now)? {
                return Ok(false);
            }
        }
        event.records.iter().try_for_each(|r| self.put(r, true))?;
        if let Some(once) = &event.once {
            self.journal
                .add_seen(once.until_ms, &once.key)
                .map_err(storage)?;
            self.fresh_seen.insert(once.key.clone(), once.until_ms);
        }
        Ok(true)
    }

    fn forget(&mut self, id: u64, at_once: bool) -> Result<(), QueueError> {
        let fresh = self.fresh.remove(&id);
        // sled's copy, read only when it may be there (and no fresh copy
        // names the route).
        let sled_copy = if fresh.as_ref().is_none_or(|f| f.in_sled) && !self.removed.contains(&id) {
            self.shared.tree.get(key(PENDING, id)).map_err(storage)?
        } else {
            None
        };
        let in_sled = sled_copy.is_some();
        if in_sled {
            if at_once {
                self.shared.tree.remove(key(PENDING, id)).map_err(storage)?;
            } else {
                self.removed.insert(id);
            }
        }
        if fresh.is_some() || in_sled {
            self.shared.pending.fetch_sub(1, Ordering::Relaxed);
            let route = match (&fresh, &sled_copy) {
                (Some(f), _) => route_of(&f.value),
                (None, Some(v)) => route_of(v),
                (None, None) => None,
            };
            self.shared.count_route(route, false);
        }
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), QueueError> {
        match op {
            Op::Put(record) => self.put(&record, false),
            Op::Remove(id) => {
                self.journal.add(&Entry::Remove(id)).map_err(storage)?;
                self.forget(id, false)
            }
            Op::Dead(letter) => {
                let id = letter.record.id;
                // A revival still waiting to leave sled must not take this
                // new dead letter with it.
                self.revived.retain(|r| *r != id);
                let value = encode(&letter)?;
                self.large |= value.len() > LARGE_VALUE;
                self.journal.add_dead(id, &value).map_err(storage)?;
                if self
                    .shared
                    .tree
                    .insert(key(DEAD, id), value)
                    .map_err(storage)?
                    .is_none()
                {
                    self.shared.dead.fetch_add(1, Ordering::Relaxed);
                }
                // At once: the dead letter is in sled before the removal, so
                // sled can never hold the one without the other.
                self.forget(id, true)
            }
        }
    }

    /// Every pending record's id and `not_before_ms`, in id order: sled's
    /// copies (unless newer in the fresh table or removed since the last
    /// checkpoint), then the fresh table. Each record is decoded and
    /// dropped at once.
    fn pending_times(&self) -> Result<Vec<(u64, u64)>, QueueError> {
        let mut times = Vec::new();
        for item in self.shared.tree.scan_prefix([PENDING]) {
            let (k, v) = item.map_err(storage)?;
            let id = id_of(&k);
            if !self.fresh.contains_key(&id) && !self.removed.contains(&id) {
                times.push((id, decode::<Record>(&k, &v)?.not_before_ms));
            }
        }
        for (id, fresh) in &self.fresh {
            let record: Record = decode(&key(PENDING, *id), &fresh.value)?;
            times.push((*id, record.not_before_ms));
        }
        times.sort_unstable();
        Ok(times)
    }

    /// The pending records among `ids`, in the order asked. One that does
    /// not decode is left out with an error in the log (it stays stored for
    /// an operator to look at) rather than holding back the others.
    fn load(&self, ids: &[u64]) -> Result<Vec<Record>, QueueError> {
        let mut records = Vec::with_capacity(ids.len());
        for &id in ids {
            let k = key(PENDING, id);
            let decoded = if let Some(fresh) = self.fresh.get(&id) {
                decode(&k, &fresh.value)
            } else if self.removed.contains(&id) {
                continue;
            } else {
                match self.shared.tree.get(k).map_err(storage)? {
                    Some(v) => decode(&k, &v),
                    None => continue,
                }
            };
            match decoded {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::error!(record = id, error = %e, "a pending record cannot be read; it is skipped and stays stored")
                }
            }
        }
        Ok(records)
    }

    /// Moves dead letter `id` back to pending with a fresh attempt budget.
    /// The dead letter leaves sled once the journal frame reviving it is
    /// synced ([`Writer::revived`]).
    fn replay(&mut self, id: u64) -> Result<Record, QueueError> {
        if self.revived.contains(&id) {
            return Err(QueueError::NotFound(id));
        }
        let k = key(DEAD, id);
        let v = self
            .shared
            .tree
            .get(k)
            .map_err(storage)?
            .ok_or(QueueError::NotFound(id))?;
        let letter: DeadLetter = decode(&k, &v)?;
        let mut record = letter.record;
        record.attempts.clear();
        record.not_before_ms = 0;
        self.put(&record, false)?;
        self.journal.add(&Entry::Revive(id)).map_err(storage)?;
        self.revived.push(id);
        Ok(record)
    }

    /// Deletes dead letter `id`: journaled as leaving the dead-letter store
    /// (so a crash cannot bring it back from an older journal entry), and
    /// gone from sled once that frame is synced, as a replay.
    fn discard(&mut self, id: u64) -> Result<Discarded, QueueError> {
        let k = key(DEAD, id);
        let value = match self.shared.tree.get(k).map_err(storage)? {
            Some(v) if !self.revived.contains(&id) => v,
            _ => return Err(QueueError::NotFound(id)),
        };
        let letter: DeadLetter = decode(&k, &value)?;
        self.journal.add(&Entry::Revive(id)).map_err(storage)?;
        self.revived.push(id);
        Ok(Discarded {
            event_id: letter.record.event.id,
            route: letter.record.route,
        })
    }

    /// The journal frames reviving dead letters are synced: the dead letters
    /// leave sled.
    fn finish_revives(&mut self) -> Result<(), QueueError> {
        while let Some(&id) = self.revived.last() {
            if self
                .shared
                .tree
                .remove(key(DEAD, id))
                .map_err(storage)?
                .is_some()
            {
                self.shared.dead.fetch_sub(1, Ordering::Relaxed);
            }
            self.revived.pop();
        }
        Ok(())
    }

    /// Writes the changes so far to the journal; with `sync`, durably.
    fn write(&mut self, sync: bool) -> Result<(), QueueError> {
        self.journal.write(sync).map_err(storage)?;
        if sync {
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Makes everything written so far durable in sled.
    fn sync_sled(&self) -> Result<(), QueueError> {
        self.shared.tree.flush().map_err(storage)?;
        if self.large {
            // SAFETY: syncfs on a valid open descriptor has no memory effects.
            let rc = unsafe { libc::syncfs(self.shared.log_file.as_raw_fd()) };
            if rc != 0 {
                return Err(storage(std::io::Error::last_os_error()));
            }
            Ok(())
        } else {
            self.shared.log_file.sync_data().map_err(storage)
        }
    }

    /// Moves the fresh records into sled, makes sled durable, then starts
    /// the next journal epoch.
    fn checkpoint(&mut self) -> Result<(), QueueError> {
        let started = Instant::now();
        for (id, fresh) in self.fresh.iter_mut() {
            self.large |= fresh.value.len() > LARGE_VALUE;
            self.shared
                .tree
                .insert(key(PENDING, *id), fresh.value.as_slice())
                .map_err(storage)?;
            fresh.in_sled = true;
        }
        // After the inserts: sled writes its log in order, so no prefix of it
        // holds a removal without the records that replaced it (or a revived
        // dead letter's removal without the revived record).
        for id in &self.removed {
            self.shared
                .tree
                .remove(key(PENDING, *id))
                .map_err(storage)?;
        }
        self.finish_revives()?;
        for (once, until) in &self.fresh_seen {
            remember(&self.shared.tree, once, *until)?;
        }
        let budget = (2 * self.fresh_seen.len()).clamp(SWEEP_MIN, SWEEP_MAX);
        sweep_expired(&self.shared.tree, now_ms(), budget, &mut self.sweep_from)?;
        self.sync_sled()?;
        self.fresh.clear();
        self.removed.clear();
        self.fresh_seen.clear();
        // A random epoch, not a counter: the file's stale frames carry webhook
        // data, and a frame forged inside an event's payload must not be able
        // to pass for one of the current epoch (see `journal`).
        let next = loop {
            let n = rand::random::<u64>();
            if n != self.journal.epoch() {
                break n;
            }
        };
        let current = self.journal.epoch();
        self.shared
            .tree
            .insert(EPOCH_KEY, &next.to_be_bytes())
            .map_err(storage)?;
        let durable = self
            .shared
            .tree
            .flush()
            .map_err(storage)
            .and_then(|_| self.shared.log_file.sync_data().map_err(storage));
        if let Err(e) = durable {
            // The journal goes on in the current epoch: sled must not be
            // left naming the next one (its own flush could store it).
            let restored = self
                .shared
                .tree
                .insert(EPOCH_KEY, &current.to_be_bytes())
                .and_then(|_| self.shared.tree.flush())
                .map_err(storage)
                .and_then(|_| self.shared.log_file.sync_data().map_err(storage));
            if let Err(again) = restored {
                tracing::error!(error = %again, "queue storage failing: the journal epoch is in doubt; webhooks are refused until a checkpoint succeeds");
                self.epoch_in_doubt = true;
            }
            return Err(e);
        }
        self.journal.restart(next).map_err(storage)?;
        self.epoch_in_doubt = false;
        self.large = false;
        self.last_checkpoint = Instant::now();
        self.shared.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.shared
            .checkpoint_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Checkpoints when the journal is big or old enough (after a failure,
    /// at most once per [`CHECKPOINT_RETRY`]). Returns false once
    /// checkpoints have failed for [`FAILING_FOR`]: the store is broken.
    fn maybe_checkpoint(&mut self) -> bool {
        if let Some((_, last)) = self.failing {
            if last.elapsed() < CHECKPOINT_RETRY {
                return true;
            }
        }
        let len = self.journal.len() + self.journal.buffered();
        if self.epoch_in_doubt
            || len >= CHECKPOINT_BYTES
            || (len > 0 && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
        {
            match self.checkpoint() {
                Ok(()) => self.failing = None,
                Err(e) => {
                    // The journal keeps everything meanwhile; the next try may work.
                    let now = Instant::now();
                    let since = self.failing.map_or(now, |(since, _)| since);
                    self.failing = Some((since, now));
                    if since.elapsed() >= FAILING_FOR {
                        tracing::error!(error = %e, failing_s = since.elapsed().as_secs(), "queue storage is broken (checkpoints keep failing): the queue stops, and Weft with it, so that it can be restarted once the disk is fixed; everything acknowledged is in the journal and resumes then");
                        self.shared.broken.store(true, Ordering::Relaxed);
                        return false;
                    }
                    tracing::error!(error = %e, "queue checkpoint failed; trying again in a second");
                }
            }
        }
        true
    }
}

/// Whether every record and dead letter in `ops` can be encoded and
/// journaled (checked before any of them is applied).
fn storable(ops: &[Op]) -> Result<(), QueueError> {
    storable_within(ops, super::journal::MAX_VALUE)
}

/// [`storable`] with the largest value given.
fn storable_within(ops: &[Op], max_value: usize) -> Result<(), QueueError> {
    for op in ops {
        let size = match op {
            Op::Put(record) => encode(record)?.len(),
            Op::Dead(letter) => encode(letter)?.len(),
            Op::Remove(_) => continue,
        };
        if size > max_value {
            return Err(QueueError::Storage(format!(
                "a queue record of {size} bytes is too large to journal"
            )));
        }
    }
    Ok(())
}

/// Takes every command already sent, up to [`MAX_GROUP`] in all.
fn drain(rx: &mpsc::Receiver<Command>, group: &mut Vec<Command>) {
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(cmd) => group.push(cmd),
            Err(_) => break,
        }
    }
}

/// The queue's only writer: applies commands in groups, one journal frame
/// per group, synced when the group holds an append.
///
/// Commit wait: webhooks announce themselves ([`Queue::arriving`]) while
/// their source plugin runs. Before committing a group with appends, the
/// writer waits, at most `commit_delay`, while announced appends are still
/// on their way (the last one to be handed over wakes it), so that they
/// share this commit instead of needing the next: under load, fewer, larger commits
/// save CPU per event; a webhook arriving alone never waits. Measured in
/// docs/BENCHMARKS.md.
fn writer_loop(mut writer: Writer, rx: mpsc::Receiver<Command>, commit_delay: Duration) {
    let mut group = Vec::with_capacity(64);
    loop {
        writer.shared.idle();
        let received = rx.recv_timeout(CHECKPOINT_INTERVAL);
        writer.shared.busy();
        let first = match received {
            Ok(cmd) => cmd,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !writer.maybe_checkpoint() {
                    return;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        group.push(first);
        drain(&rx, &mut group);
        let has_append = group.iter().any(|c| matches!(c, Command::Append(..)));
        if has_append && !commit_delay.is_zero() && writer.shared.arriving.count() > 0 {
            writer
                .shared
                .arriving
                .wait_for_none(Instant::now() + commit_delay);
            drain(&rx, &mut group);
        }
        let mut appended = Vec::new();
        let mut replayed = Vec::new();
        let now = now_ms();
        let mut discarded = Vec::new();
        let mut closing = None;
        let mut failure: Option<String> = None;
        for cmd in group.drain(..) {
            match cmd {
                Command::Append(events, reply) => {
                    if writer.epoch_in_doubt {
                        let _ = reply.send(Err(in_doubt("accepted")));
                        continue;
                    }
                    let result = events
                        .iter()
                        .map(|event| writer.append_event(event, now))
                        .collect::<Result<Vec<bool>, QueueError>>();
                    appended.push((reply, result));
                }
                Command::Apply(ops) => {
                    // All or nothing: a delivery record that cannot be
                    // stored must not let its parent's removal through.
                    if let Err(e) = storable(&ops) {
                        tracing::error!(error = %e, "queue update refused as a whole; the records it concerns stay pending and run again after restart");
                        failure = Some(e.to_string());
                        continue;
                    }
                    for op in ops {
                        if let Err(e) = writer.apply(op) {
                            tracing::error!(error = %e, "queue update failed");
                            failure = Some(e.to_string());
                        }
                    }
                }
                Command::Replay(id, reply) => {
                    if writer.epoch_in_doubt {
                        let _ = reply.send(Err(in_doubt("replayed")));
                        continue;
                    }
                    let result = writer.replay(id);
                    replayed.push((reply, result));
                }
                Command::Discard(id, reply) => {
                    if writer.epoch_in_doubt {
                        let _ = reply.send(Err(in_doubt("discarded")));
                        continue;
                    }
                    let result = writer.discard(id);
                    discarded.push((reply, result));
                }
                Command::PendingTimes(reply) => {
                    let _ = reply.send(writer.pending_times());
                }
                Command::Load(ids, reply) => {
                    let _ = reply.send(writer.load(&ids));
                }
                Command::Close(reply) => closing = Some(reply),
            }
        }
        // Revivals still waiting (an earlier write failed) need a sync too.
        let must_sync = !appended.is_empty()
            || !replayed.is_empty()
            || !discarded.is_empty()
            || !writer.revived.is_empty();
        let written = writer.write(must_sync);
        if must_sync && written.is_ok() {
            if let Err(e) = writer.finish_revives() {
                tracing::error!(error = %e, "replayed dead letters could not be removed from sled; they stay listed until the next checkpoint");
            }
        }
        let settle = |result: Result<(), QueueError>| match (result, &written) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(QueueError::Unsynced(e.to_string())),
            (Ok(()), Ok(())) => Ok(()),
        };
        for (reply, result) in appended {
            // A duplicate's answer waits for this sync too: the event it
            // repeats may be in this very group.
            let _ = reply.send(match result {
                Ok(stored) => settle(Ok(())).map(|()| stored),
                Err(e) => Err(e),
            });
        }
        for (reply, result) in replayed {
            let _ = reply.send(match result {
                Ok(record) => settle(Ok(())).map(|()| record),
                Err(e) => Err(e),
            });
        }
        for (reply, result) in discarded {
            let _ = reply.send(match result {
                Ok(what) => settle(Ok(())).map(|()| what),
                Err(e) => Err(e),
            });
        }
        if let Err(e) = &written {
            tracing::error!(error = %e, "queue journal write failed");
        }
        if let Some(f) = failure {
            tracing::error!(error = %f, "some queue updates were not applied; affected events will be redelivered after restart");
        }
        if let Some(reply) = closing {
            let _ = reply.send(writer.checkpoint());
            return;
        }
        if !writer.maybe_checkpoint() {
            // Broken: no final checkpoint (it would fail, or block in sled);
            // the commands still waiting get `Closed` as the channel goes.
            return;
        }
    }
    // Every handle is gone without a close: leave sled durable anyway.
    if let Err(e) = writer.checkpoint() {
        tracing::error!(error = %e, "queue checkpoint at exit failed; the journal still holds the changes");
    }
}

impl Queue for SledQueue {
    fn next_id(&self) -> u64 {
        let now = crate::event::now_ms();
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let id = super::time_ordered_id(last, now);
            match self
                .last_id
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(newer) => last = newer,
            }
        }
    }

    fn arriving(&self) -> Arrival {
        Arrival::counted(&self.shared.arriving)
    }

    fn append_events(&self, events: Vec<Arrived>) -> BoxFuture<'_, Result<Vec<bool>, QueueError>> {
        // Handed over now, not at the first poll: the caller may drop its
        // `Arrival` as soon as this returns.
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Append(events, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), QueueError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.send(Command::Apply(ops))
    }

    fn pending_times(&self) -> BoxFuture<'_, Result<Vec<(u64, u64)>, QueueError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::PendingTimes(tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }

    fn load(&self, ids: Vec<u64>) -> BoxFuture<'_, Result<Vec<Record>, QueueError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Load(ids, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }

    fn dead_letters(
        &self,
        query: DeadLetterQuery,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let from = key(DEAD, query.after.map_or(0, |a| a.saturating_add(1)));
                let mut letters = Vec::new();
                let mut bytes = 0usize;
                for item in shared.tree.range(from..=key(DEAD, u64::MAX)) {
                    if letters.len() >= query.limit
                        || (bytes >= query.max_bytes && !letters.is_empty())
                    {
                        break;
                    }
                    let (k, v) = item.map_err(storage)?;
                    let letter: DeadLetter = decode(&k, &v)?;
                    if query
                        .route
                        .as_ref()
                        .is_none_or(|r| *r == letter.record.route)
                    {
                        bytes = bytes.saturating_add(v.len());
                        letters.push(letter);
                    }
                }
                Ok(letters)
            })
            .await
            .map_err(storage)?
        })
    }

    fn replay(&self, id: u64) -> BoxFuture<'_, Result<Record, QueueError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Replay(id, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }

    fn discard(&self, id: u64) -> BoxFuture<'_, Result<Discarded, QueueError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Discard(id, tx));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| QueueError::Closed)?
        })
    }

    fn pending_by_route(&self) -> Vec<(String, u64)> {
        let mut all: Vec<_> = match self.shared.pending_by_route.lock() {
            Ok(counts) => counts.iter().map(|(r, n)| (r.clone(), *n)).collect(),
            Err(poisoned) => poisoned
                .into_inner()
                .iter()
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
        };
        all.sort();
        all
    }

    /// One seek to the first pending key. What sled holds trails the
    /// journal by up to a checkpoint (about a second): a record delivered
    /// since the last checkpoint may still be found, one stored since then
    /// is not (it is younger than any record sled holds anyway).
    fn oldest_pending_id(&self) -> Option<u64> {
        match self.shared.tree.scan_prefix([PENDING]).keys().next() {
            Some(Ok(k)) => Some(id_of(&k)),
            _ => None,
        }
    }

    fn pending_on(&self, route: &str) -> u64 {
        match self.shared.pending_by_route.lock() {
            Ok(counts) => counts.get(route).copied().unwrap_or(0),
            Err(poisoned) => poisoned.into_inner().get(route).copied().unwrap_or(0),
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            pending: self.shared.pending.load(Ordering::Relaxed),
            dead: self.shared.dead.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
            checkpoint_ns: self.shared.checkpoint_ns.load(Ordering::Relaxed),
        }
    }

    fn working(&self) -> bool {
        let open = self.tx.lock().is_ok_and(|tx| tx.is_some());
        let writing = self
            .writer
            .lock()
            .is_ok_and(|w| w.as_ref().is_some_and(|h| !h.is_finished()));
        if let Some(busy) = self.shared.stuck_for() {
            tracing::error!(
                busy_s = busy.as_secs(),
                "the queue's writer has been stuck in the store for {}s (a failed or full disk?)",
                busy.as_secs()
            );
            return false;
        }
        open && writing
    }

    fn close(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let sent = self.send(Command::Close(tx));
            if let Ok(mut guard) = self.tx.lock() {
                guard.take();
            }
            // A stuck writer (see `STUCK_AFTER`) never answers: give up on
            // it rather than hold the process for ever.
            let stuck = || {
                QueueError::Storage(format!(
                    "the queue's writer is stuck in the store (more than {}s on one piece of work); the journal holds what was acknowledged",
                    STUCK_AFTER.as_secs()
                ))
            };
            if self.shared.stuck_for().is_some() {
                return Err(stuck());
            }
            let result = match sent {
                Ok(()) => match tokio::time::timeout(STUCK_AFTER, rx).await {
                    Ok(answer) => answer.map_err(|_| QueueError::Closed)?,
                    Err(_) => return Err(stuck()),
                },
                Err(_) => Ok(()),
            };
            let handle = self.writer.lock().ok().and_then(|mut g| g.take());
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            if self.shared.broken.load(Ordering::Relaxed) {
                return Err(QueueError::Storage(
                    "the store is broken (checkpoints kept failing); the journal holds what was acknowledged".into(),
                ));
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::queue::{Attempt, OnceKey, Stage};

    fn record(q: &SledQueue, data: &str) -> Record {
        Record {
            id: q.next_id(),
            route: "r".into(),
            stage: Stage::Route,
            event: Event {
                id: format!("e-{data}"),
                source: "/s".into(),
                ty: "t".into(),
                subject: None,
                time: None,
                datacontenttype: None,
                data: data.as_bytes().to_vec(),
                extensions: vec![],
            },
            attempts: vec![],
            not_before_ms: 0,
        }
    }

    /// One router update is checked whole before any of it is applied: a
    /// record too large to journal refuses the update, its removals too.
    #[test]
    fn an_update_with_a_record_too_large_to_journal_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let q = open_when_free(dir.path()).unwrap();
        let small = record(&q, "small");
        let big = record(&q, &"x".repeat(4096));
        let limit = encode(&small).unwrap().len() + 100;
        let update = vec![Op::Put(big), Op::Remove(small.id)];
        let err = storable_within(&update, limit).unwrap_err();
        assert!(err.to_string().contains("too large to journal"), "{err}");
        assert!(storable_within(&[Op::Put(small.clone()), Op::Remove(7)], limit).is_ok());
        assert!(
            storable(&update).is_ok(),
            "4 KiB is far under the real limit"
        );
    }

    #[tokio::test]
    async fn waiting_records_are_listed_by_time_and_loaded_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = {
            let q = open_when_free(dir.path()).unwrap();
            let (a, mut b, c) = (record(&q, "a"), record(&q, "b"), record(&q, "c"));
            q.append(vec![a.clone(), b.clone(), c.clone()])
                .await
                .unwrap();
            // b retries later; a is delivered.
            b.not_before_ms = 5_000;
            q.apply(vec![Op::Put(b.clone()), Op::Remove(a.id)]).unwrap();
            // Both read what was handed over before them (the fresh table).
            assert_eq!(
                q.pending_times().await.unwrap(),
                vec![(b.id, 5_000), (c.id, 0)]
            );
            assert_eq!(
                q.load(vec![c.id, a.id, b.id]).await.unwrap(),
                vec![c.clone(), b.clone()],
                "in the order asked, without the delivered one"
            );
            q.close().await.unwrap();
            (a, b, c)
        };
        // After a checkpoint and a reopen, from sled.
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(
            q.pending_times().await.unwrap(),
            vec![(b.id, 5_000), (c.id, 0)]
        );
        assert_eq!(
            q.load(vec![b.id, a.id, c.id]).await.unwrap(),
            vec![b.clone(), c.clone()]
        );
        q.apply(vec![Op::Remove(b.id)]).unwrap();
        assert_eq!(q.load(vec![b.id]).await.unwrap(), vec![]);
        assert_eq!(q.pending_times().await.unwrap(), vec![(c.id, 0)]);
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn append_survives_reopen_and_dead_letters_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let q = open_when_free(dir.path()).unwrap();
            let a = record(&q, "a");
            let b = record(&q, "b");
            q.append(vec![a.clone(), b.clone()]).await.unwrap();
            let attempt = Attempt {
                at_ms: 1,
                plugin: "sink".into(),
                outcome: "rejected".into(),
                detail: "no".into(),
            };
            let mut dead_b = b.clone();
            dead_b.attempts.push(attempt);
            q.apply(vec![Op::Dead(DeadLetter {
                record: dead_b,
                error: "no".into(),
                dead_at_ms: 2,
            })])
            .unwrap();
            q.close().await.unwrap();
            (a, b)
        };
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![a.clone()]);
        let dead = q.dead_letters(DeadLetterQuery::first(10)).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].record.attempts.len(), 1);
        assert!(q.next_id() > b.id);
        let replayed = q.replay(b.id).await.unwrap();
        assert!(replayed.attempts.is_empty());
        assert_eq!(q.stats().pending, 2);
        assert_eq!(q.stats().dead, 0);
        assert!(q
            .dead_letters(DeadLetterQuery::first(10))
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(q.replay(b.id).await, Err(QueueError::NotFound(_))));
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_letter_page_stops_at_its_byte_budget_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let q = open_when_free(dir.path()).unwrap();
        let letters: Vec<DeadLetter> = (0..4)
            .map(|_| DeadLetter {
                record: record(&q, &"x".repeat(1000)),
                error: "no".into(),
                dead_at_ms: 1,
            })
            .collect();
        q.apply(letters.iter().cloned().map(Op::Dead).collect())
            .unwrap();
        // `apply` only hands the changes over; `pending` goes through the
        // writer after them, so they are in sled once it answers.
        q.pending().await.unwrap();
        let page = |after, max_bytes| DeadLetterQuery {
            after,
            route: None,
            limit: 10,
            max_bytes,
        };
        let ids = |d: Vec<DeadLetter>| d.into_iter().map(|l| l.record.id).collect::<Vec<_>>();
        let all: Vec<u64> = letters.iter().map(|l| l.record.id).collect();
        assert_eq!(ids(q.dead_letters(page(None, 1 << 20)).await.unwrap()), all);
        // A page stops once what it read reaches the budget.
        let one = encode(&letters[0]).unwrap().len();
        assert_eq!(
            ids(q.dead_letters(page(None, 2 * one + 1)).await.unwrap()),
            all[..3]
        );
        assert_eq!(ids(q.dead_letters(page(None, 1)).await.unwrap()), all[..1]);
        assert_eq!(
            ids(q.dead_letters(page(Some(all[2]), 1)).await.unwrap()),
            all[3..]
        );
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_commit_waits_for_announced_appends_and_never_forever() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open_with(dir.path(), Duration::from_millis(100)).unwrap();
        // An announced webhook that never appends: the commit still happens
        // (after at most the commit delay) and the append is durable.
        let lost = q.arriving();
        assert_eq!(q.shared.arriving.count(), 1);
        q.append(vec![record(&q, "a")]).await.unwrap();
        drop(lost);
        assert_eq!(q.shared.arriving.count(), 0);
        assert_eq!(q.stats().pending, 1);
        q.close().await.unwrap();

        // Two announced webhooks: the first append's commit waits for the
        // second (a long limit, so only the arrival can end the wait), and
        // both share one commit.
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open_with(dir.path(), Duration::from_secs(10)).unwrap();
        let (first, second) = (q.arriving(), q.arriving());
        let syncs = q.stats().syncs;
        let a = q.append(vec![record(&q, "b")]);
        drop(first);
        let late = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let b = q.append(vec![record(&q, "c")]);
            drop(second);
            b.await
        };
        let (a, b) = tokio::join!(a, late);
        a.unwrap();
        b.unwrap();
        assert_eq!(q.stats().syncs - syncs, 1, "both appends shared one commit");
        assert_eq!(q.stats().pending, 2);
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn pending_records_are_counted_per_route_through_every_change_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let on = |q: &SledQueue, route: &str, data: &str| Record {
            route: route.into(),
            ..record(q, data)
        };
        let counts = |q: &SledQueue| -> Vec<(String, u64)> { q.pending_by_route() };
        let pairs = |v: &[(&str, u64)]| -> Vec<(String, u64)> {
            v.iter().map(|(r, n)| (r.to_string(), *n)).collect()
        };
        let (a2, b1) = {
            let q = open_when_free(dir.path()).unwrap();
            let (a1, a2, b1) = (on(&q, "a", "1"), on(&q, "a", "2"), on(&q, "b", "3"));
            q.append(vec![a1.clone(), a2.clone(), b1.clone()])
                .await
                .unwrap();
            assert_eq!(counts(&q), pairs(&[("a", 2), ("b", 1)]));
            // Delivered; retried (the same record again); dead-lettered.
            let mut retry = a2.clone();
            retry.not_before_ms = 5;
            q.apply(vec![Op::Remove(a1.id), Op::Put(retry)]).unwrap();
            q.apply(vec![Op::Dead(DeadLetter {
                record: b1.clone(),
                error: "gone".into(),
                dead_at_ms: 1,
            })])
            .unwrap();
            q.pending().await.unwrap();
            assert_eq!(counts(&q), pairs(&[("a", 1)]));
            assert_eq!((q.pending_on("a"), q.pending_on("b")), (1, 0));
            // Replayed: pending on its route again.
            q.replay(b1.id).await.unwrap();
            assert_eq!(counts(&q), pairs(&[("a", 1), ("b", 1)]));
            // The checkpoint at close moves both into sled.
            q.close().await.unwrap();
            (a2, b1)
        };
        // Counted from sled at open; removing a copy that is only in sled
        // uncounts its route.
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(counts(&q), pairs(&[("a", 1), ("b", 1)]));
        // Removed and stored again before the next checkpoint (its copy in
        // sled still there): pending once, counted once.
        q.apply(vec![Op::Remove(b1.id), Op::Put(b1)]).unwrap();
        q.pending().await.unwrap();
        assert_eq!(counts(&q), pairs(&[("a", 1), ("b", 1)]));
        q.apply(vec![Op::Remove(a2.id)]).unwrap();
        q.pending().await.unwrap();
        assert_eq!(counts(&q), pairs(&[("b", 1)]));
        assert_eq!(q.stats().pending, 1);
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn fresh_records_reach_sled_only_if_still_pending_at_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let in_sled =
            |q: &SledQueue, id: u64| q.shared.tree.contains_key(key(PENDING, id)).unwrap();
        let b = {
            let q = open_when_free(dir.path()).unwrap();
            let a = record(&q, "a");
            q.append(vec![a.clone()]).await.unwrap();
            assert!(
                !in_sled(&q, a.id),
                "a fresh record lives in the journal and in memory"
            );
            assert_eq!(q.pending().await.unwrap(), vec![a.clone()]);
            assert_eq!(q.stats().pending, 1);
            q.apply(vec![Op::Remove(a.id)]).unwrap();
            // `pending` goes through the writer, after the removal.
            assert!(q.pending().await.unwrap().is_empty());
            assert_eq!(q.stats().pending, 0);
            let b = record(&q, "b");
            q.append(vec![b.clone()]).await.unwrap();
            q.close().await.unwrap();
            assert!(
                in_sled(&q, b.id),
                "still pending at the checkpoint: moved to sled"
            );
            assert!(!in_sled(&q, a.id));
            b
        };
        // A retry of a record from an earlier epoch, then its delivery.
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![b.clone()]);
        let mut retried = b.clone();
        retried.not_before_ms = 42;
        q.apply(vec![Op::Put(retried.clone())]).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![retried]);
        assert_eq!(q.stats().pending, 1);
        assert_eq!(q.pending_on("r"), 1, "a retry is the same record");
        // Delivered to one sink, retried for another: the delivery record
        // that replaces it is only in memory and the (unsynced) journal, so
        // the copy in sled stays until a checkpoint puts the replacement in
        // sled first (else sled's own flush could make the removal durable
        // alone, and a power loss would lose the event).
        let mut delivery = record(&q, "b, for the second sink");
        delivery.stage = Stage::Deliver { sink: "s2".into() };
        q.apply(vec![Op::Put(delivery.clone()), Op::Remove(b.id)])
            .unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![delivery.clone()]);
        assert_eq!(q.stats().pending, 1);
        assert_eq!(q.pending_on("r"), 1);
        assert!(
            in_sled(&q, b.id),
            "removed from sled only at the checkpoint"
        );
        assert!(!in_sled(&q, delivery.id));
        q.close().await.unwrap();
        assert!(!in_sled(&q, b.id), "the checkpoint removed the older copy");
        assert!(in_sled(&q, delivery.id));
        drop(q);
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![delivery.clone()]);
        assert_eq!(q.stats().pending, 1);
        assert_eq!(q.pending_on("r"), 1);
        q.apply(vec![Op::Remove(delivery.id)]).unwrap();
        assert!(q.pending().await.unwrap().is_empty());
        assert_eq!(q.stats().pending, 0);
        assert_eq!(q.pending_on("r"), 0);
        q.close().await.unwrap();
        drop(q);
        let q = open_when_free(dir.path()).unwrap();
        assert!(q.pending().await.unwrap().is_empty());
        assert_eq!(q.stats().pending, 0);
        q.close().await.unwrap();
    }

    /// The state a power loss can leave: the journal holds acknowledged
    /// changes that sled never wrote. Opening applies them, in order.
    #[tokio::test]
    async fn changes_only_the_journal_holds_are_applied_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, delivered, dead) = {
            let q = open_when_free(dir.path()).unwrap();
            let r = (
                record(&q, "kept"),
                record(&q, "delivered"),
                record(&q, "dead"),
            );
            q.close().await.unwrap();
            r
        };
        let epoch = {
            let db = sled_when_free(&dir.path().join("queue"));
            let v = db.get(EPOCH_KEY).unwrap().unwrap();
            u64::from_be_bytes(v.as_ref().try_into().unwrap())
        };
        let letter = DeadLetter {
            record: dead.clone(),
            error: "gone".into(),
            dead_at_ms: 3,
        };
        {
            let (mut j, old) = Journal::open(&dir.path().join("journal"), epoch).unwrap();
            assert!(old.is_empty(), "a clean close leaves nothing to redo");
            for r in [&kept, &delivered, &dead] {
                j.add(&Entry::Put(r.id, encode(r).unwrap())).unwrap();
            }
            j.write(true).unwrap();
            j.add(&Entry::Remove(delivered.id)).unwrap();
            j.add(&Entry::Dead(dead.id, encode(&letter).unwrap()))
                .unwrap();
            j.write(false).unwrap();
        }
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![kept.clone()]);
        assert_eq!(
            q.dead_letters(DeadLetterQuery::first(10)).await.unwrap(),
            vec![letter]
        );
        assert_eq!((q.stats().pending, q.stats().dead), (1, 1));
        assert!(q.next_id() > dead.id);
        // The open checkpointed: the redone changes are sled's now, and the
        // journal's old epoch is not applied a second time.
        q.close().await.unwrap();
        drop(q);
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![kept]);
        assert_eq!(q.stats().dead, 1);
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_discarded_dead_letter_is_gone_and_stays_gone() {
        let dir = tempfile::tempdir().unwrap();
        let letter = |r: &Record| DeadLetter {
            record: r.clone(),
            error: "no".into(),
            dead_at_ms: 2,
        };
        let (kept, gone) = {
            let q = open_when_free(dir.path()).unwrap();
            let kept = record(&q, "kept");
            let gone = record(&q, "gone");
            let pending = record(&q, "pending");
            q.append(vec![kept.clone(), gone.clone(), pending.clone()])
                .await
                .unwrap();
            q.apply(vec![Op::Dead(letter(&kept)), Op::Dead(letter(&gone))])
                .unwrap();
            let what = q.discard(gone.id).await.unwrap();
            assert_eq!(
                (what.event_id.as_str(), what.route.as_str()),
                ("e-gone", "r")
            );
            assert_eq!(
                q.dead_letters(DeadLetterQuery::first(10)).await.unwrap(),
                vec![letter(&kept)]
            );
            assert_eq!(q.stats().dead, 1);
            // Not a dead letter (any more): nothing to discard.
            for id in [gone.id, pending.id] {
                assert!(matches!(q.discard(id).await, Err(QueueError::NotFound(_))));
            }
            assert_eq!(q.stats().pending, 1, "a pending record is not touched");
            q.close().await.unwrap();
            (kept, gone)
        };
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(
            q.dead_letters(DeadLetterQuery::first(10)).await.unwrap(),
            vec![letter(&kept)]
        );
        let epoch = {
            q.close().await.unwrap();
            drop(q);
            let db = sled_when_free(&dir.path().join("queue"));
            let v = db.get(EPOCH_KEY).unwrap().unwrap();
            u64::from_be_bytes(v.as_ref().try_into().unwrap())
        };
        // After a crash, the journal's dead letter and its discard are
        // redone in order: it does not come back.
        {
            let (mut j, _) = Journal::open(&dir.path().join("journal"), epoch).unwrap();
            j.add(&Entry::Put(gone.id, encode(&gone).unwrap())).unwrap();
            j.add(&Entry::Dead(gone.id, encode(&letter(&gone)).unwrap()))
                .unwrap();
            j.add(&Entry::Revive(gone.id)).unwrap();
            j.write(true).unwrap();
        }
        let q = open_when_free(dir.path()).unwrap();
        assert_eq!(
            q.dead_letters(DeadLetterQuery::first(10)).await.unwrap(),
            vec![letter(&kept)]
        );
        assert_eq!(q.load(vec![gone.id]).await.unwrap(), vec![]);
        q.close().await.unwrap();
    }

    /// A data dir whose sled store holds only the format marker `version`.
    fn store_of_format(version: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("queue")).unwrap();
        db.insert(FORMAT_KEY, version).unwrap();
        db.flush().unwrap();
        dir
    }

    /// Opens the queue in `dir` once a sled handle dropped just before has
    /// let go of its file lock: sled's background threads close the file
    /// shortly after the drop, not during it (a clean-clone CI run once met
    /// the lock right after `store_of_format`).
    fn open_when_free(dir: &Path) -> Result<SledQueue, QueueError> {
        for _ in 0..500 {
            match SledQueue::open(dir) {
                Err(QueueError::InUse { .. }) => std::thread::sleep(Duration::from_millis(10)),
                other => return other,
            }
        }
        SledQueue::open(dir)
    }

    /// `sled::open` of a store a queue closed just before, once its file
    /// lock is free (see [`open_when_free`]).
    fn sled_when_free(path: &Path) -> sled::Db {
        for _ in 0..500 {
            match sled::open(path) {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
        sled::open(path).unwrap()
    }

    #[tokio::test]
    async fn format_1_and_2_stores_are_upgraded() {
        for old in [b"1", b"2"] {
            let dir = store_of_format(old);
            let q = open_when_free(dir.path()).unwrap();
            q.close().await.unwrap();
            drop(q);
            let db = sled_when_free(&dir.path().join("queue"));
            assert_eq!(db.get(FORMAT_KEY).unwrap().unwrap().as_ref(), b"3");
        }
    }

    /// The sweep goes through the keys a few at a time, from where it
    /// stopped, drops only the expired ones, and starts over at the end.
    #[test]
    fn expired_keys_are_swept_a_few_at_a_time_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path().join("db")).unwrap();
        tree.insert(key(PENDING, 1), b"not a key".as_slice())
            .unwrap();
        for i in 0..25u8 {
            // Every other key expired at 100; the rest hold until 1000.
            remember(&tree, &[i; 32], if i % 2 == 0 { 100 } else { 1000 }).unwrap();
        }
        let mut cursor = Vec::new();
        let mut dropped = Vec::new();
        for _ in 0..3 {
            dropped.push(sweep_expired(&tree, 500, 10, &mut cursor).unwrap());
        }
        // 10 + 10 + 5 keys looked at; 13 of the 25 had expired.
        assert_eq!(dropped, vec![5, 5, 3]);
        assert!(
            cursor.is_empty(),
            "past the end: the next sweep starts over"
        );
        assert_eq!(tree.scan_prefix([SEEN]).count(), 12);
        assert!(is_seen(&tree, &[1; 32], 500).unwrap());
        assert!(!is_seen(&tree, &[2; 32], 500).unwrap());
        assert!(
            !is_seen(&tree, &[1; 32], 1000).unwrap(),
            "until is exclusive"
        );
        assert!(
            tree.contains_key(key(PENDING, 1)).unwrap(),
            "other keys untouched"
        );
        assert_eq!(sweep_expired(&tree, 500, 10, &mut cursor).unwrap(), 0);
    }

    fn once(event: &str, until_ms: u64) -> Option<OnceKey> {
        Some(OnceKey {
            key: format!("src\0{event}").into_bytes(),
            until_ms,
        })
    }

    /// An event id is stored once per window: a second append with the same
    /// key stores nothing and says so; another key, or the same key once
    /// expired, is stored. Keys survive a clean reopen, and a crash: those
    /// only the journal holds are redone on open.
    #[tokio::test]
    async fn an_event_key_is_stored_once_until_it_expires_also_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let later = now_ms() + 600_000;
        let (first, expired) = {
            let q = open_when_free(dir.path()).unwrap();
            let first = record(&q, "a");
            let again = record(&q, "a-again");
            let other = record(&q, "b");
            let stored = q
                .append_events(vec![
                    Arrived {
                        once: once("a", later),
                        records: vec![first.clone()],
                    },
                    // Within one group as well.
                    Arrived {
                        once: once("a", later),
                        records: vec![again.clone()],
                    },
                    Arrived {
                        once: once("b", later),
                        records: vec![other.clone()],
                    },
                    Arrived {
                        once: None,
                        records: vec![record(&q, "no key")],
                    },
                ])
                .await
                .unwrap();
            assert_eq!(stored, vec![true, false, true, true]);
            // In a later group.
            let stored = q
                .append_events(vec![Arrived {
                    once: once("b", later),
                    records: vec![record(&q, "b2")],
                }])
                .await
                .unwrap();
            assert_eq!(stored, vec![false]);
            // An expired key does not hold a new event back.
            let expired = record(&q, "old");
            let past = now_ms() - 1;
            for _ in 0..2 {
                let stored = q
                    .append_events(vec![Arrived {
                        once: once("old", past),
                        records: vec![expired.clone()],
                    }])
                    .await
                    .unwrap();
                assert_eq!(stored, vec![true]);
            }
            let pending: Vec<String> = q
                .pending()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.event.id)
                .collect();
            assert_eq!(pending, ["e-a", "e-b", "e-no key", "e-old"]);
            q.close().await.unwrap();
            (first, expired)
        };
        // Reopened cleanly: still a duplicate.
        {
            let q = open_when_free(dir.path()).unwrap();
            let stored = q
                .append_events(vec![Arrived {
                    once: once("a", later),
                    records: vec![record(&q, "a3")],
                }])
                .await
                .unwrap();
            assert_eq!(stored, vec![false]);
            q.close().await.unwrap();
        }
        // A crash after an acknowledged append, before any checkpoint: the
        // event and its key are only in the journal's synced frame.
        let epoch = {
            let db = sled_when_free(&dir.path().join("queue"));
            // The expired key was dropped at a checkpoint.
            assert!(db.get(seen_key(b"src\0old")).unwrap().is_none());
            let v = db.get(EPOCH_KEY).unwrap().unwrap();
            u64::from_be_bytes(v.as_ref().try_into().unwrap())
        };
        let crashed = Record {
            id: expired.id + 100,
            ..first.clone()
        };
        {
            let (mut j, _) = Journal::open(&dir.path().join("journal"), epoch).unwrap();
            j.add(&Entry::Put(crashed.id, encode(&crashed).unwrap()))
                .unwrap();
            j.add(&Entry::Seen(later, b"src\0c".to_vec())).unwrap();
            j.write(true).unwrap();
        }
        let q = open_when_free(dir.path()).unwrap();
        let stored = q
            .append_events(vec![
                Arrived {
                    once: once("c", later),
                    records: vec![record(&q, "c again")],
                },
                Arrived {
                    once: once("a", later),
                    records: vec![record(&q, "a4")],
                },
            ])
            .await
            .unwrap();
        assert_eq!(stored, vec![false, false]);
        assert!(q.pending().await.unwrap().contains(&crashed));
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_store_already_open_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledQueue::open(dir.path()).unwrap();
        // sled's lock is a flock on its log file, taken per open file: a
        // second opener fails like a second process would.
        let err = SledQueue::open(dir.path()).err().unwrap();
        assert!(matches!(err, QueueError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another Weft process"),
            "{err}"
        );
        first.close().await.unwrap();
    }

    #[tokio::test]
    async fn unknown_format_is_refused() {
        let dir = store_of_format(b"99");
        let err = open_when_free(dir.path()).err().unwrap();
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
