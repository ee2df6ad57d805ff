//! The embedded queue on sled 0.34, with group commit and a real fsync.
//!
//! Layout (one sled tree, keys prefixed): `m/format` holds the format version,
//! `p` + id (big endian) a pending [`Record`], `d` + id a [`DeadLetter`].
//! Values are postcard-encoded.
//!
//! All writes go through one writer thread. It takes every command waiting in
//! its channel, applies them, and if any of them was an [`Queue::append`],
//! flushes sled and then `fdatasync`s sled's log file before answering: one
//! sync covers every webhook that arrived meanwhile (group commit). sled's own
//! `flush()` ends in `sync_file_range`, which survives a process crash but not
//! a power loss; the extra `fdatasync` (or `syncfs` when a large value went to
//! sled's separate blob files) is what makes the acknowledgement durable.

use super::{Arrival, BoxFuture, DeadLetter, Op, Queue, QueueError, QueueStats, Record};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The stored layout version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &[u8] = b"m/format";
const PENDING: u8 = b'p';
const DEAD: u8 = b'd';
/// Values above this size may land in sled's blob files, which the log-file
/// sync does not cover; a group containing one syncs the whole file system.
const LARGE_VALUE: usize = 64 * 1024;
/// Most commands applied per group.
const MAX_GROUP: usize = 4096;

/// Default for `storage.commit_delay_us`.
pub const DEFAULT_COMMIT_DELAY: Duration = Duration::from_micros(1000);

/// How often the writer looks again for announced appends.
const COMMIT_TICK: Duration = Duration::from_micros(50);

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

enum Command {
    Append(Vec<Record>, oneshot::Sender<Result<(), QueueError>>),
    Apply(Vec<Op>),
    Close(oneshot::Sender<Result<(), QueueError>>),
}

/// Shared between the handle and the writer thread.
struct Shared {
    tree: sled::Db,
    log_file: File,
    pending: AtomicU64,
    dead: AtomicU64,
    syncs: AtomicU64,
    /// Webhooks being processed whose append has not been handed over yet.
    arriving: Arc<AtomicUsize>,
}

/// The sled-backed [`Queue`].
pub struct SledQueue {
    shared: Arc<Shared>,
    next_id: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

impl SledQueue {
    /// Opens (or creates) the queue under `dir` with the default commit delay.
    pub fn open(dir: &Path) -> Result<SledQueue, QueueError> {
        Self::open_with(dir, DEFAULT_COMMIT_DELAY)
    }

    /// Opens (or creates) the queue under `dir`. `commit_delay` is the
    /// longest a group commit waits for announced appends to join it (see
    /// [`writer_loop`]); zero disables the wait.
    pub fn open_with(dir: &Path, commit_delay: Duration) -> Result<SledQueue, QueueError> {
        let path = dir.join("queue");
        let db = sled::Config::new().path(&path).open().map_err(storage)?;
        match db.get(FORMAT_KEY).map_err(storage)? {
            Some(v) => {
                let found = String::from_utf8_lossy(&v).into_owned();
                if found != FORMAT_VERSION.to_string() {
                    return Err(QueueError::UnknownFormat {
                        path: path.display().to_string(),
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                if db.iter().next().is_some() {
                    return Err(QueueError::UnknownFormat {
                        path: path.display().to_string(),
                        found: "none (data without a format marker)".into(),
                        expected: FORMAT_VERSION,
                    });
                }
                db.insert(FORMAT_KEY, FORMAT_VERSION.to_string().as_bytes())
                    .map_err(storage)?;
                db.flush().map_err(storage)?;
            }
        }
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
        for item in db.scan_prefix([PENDING]) {
            let (k, _) = item.map_err(storage)?;
            max_id = max_id.max(id_of(&k));
            pending += 1;
        }
        let log_file = File::open(path.join("db")).map_err(storage)?;
        let shared = Arc::new(Shared {
            tree: db,
            log_file,
            pending: AtomicU64::new(pending),
            dead: AtomicU64::new(dead),
            syncs: AtomicU64::new(0),
            arriving: Arc::new(AtomicUsize::new(0)),
        });
        let (tx, rx) = mpsc::channel();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("weft-queue-writer".into())
            .spawn(move || writer_loop(writer_shared, rx, commit_delay))
            .map_err(storage)?;
        Ok(SledQueue {
            shared,
            next_id: AtomicU64::new(max_id + 1),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
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

impl Shared {
    fn put(&self, record: &Record) -> Result<usize, QueueError> {
        let value = encode(record)?;
        let len = value.len();
        if self
            .tree
            .insert(key(PENDING, record.id), value)
            .map_err(storage)?
            .is_none()
        {
            self.pending.fetch_add(1, Ordering::Relaxed);
        }
        Ok(len)
    }

    fn remove(&self, id: u64) -> Result<(), QueueError> {
        if self
            .tree
            .remove(key(PENDING, id))
            .map_err(storage)?
            .is_some()
        {
            self.pending.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn apply(&self, op: Op) -> Result<usize, QueueError> {
        match op {
            Op::Put(record) => self.put(&record),
            Op::Remove(id) => self.remove(id).map(|_| 0),
            Op::Dead(letter) => {
                let id = letter.record.id;
                let value = encode(&letter)?;
                let len = value.len();
                if self
                    .tree
                    .insert(key(DEAD, id), value)
                    .map_err(storage)?
                    .is_none()
                {
                    self.dead.fetch_add(1, Ordering::Relaxed);
                }
                self.remove(id)?;
                Ok(len)
            }
        }
    }

    /// Makes everything written so far durable.
    fn sync(&self, large: bool) -> Result<(), QueueError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.tree.flush().map_err(storage)?;
        if large {
            // SAFETY: syncfs on a valid open descriptor has no memory effects.
            let rc = unsafe { libc::syncfs(self.log_file.as_raw_fd()) };
            if rc != 0 {
                return Err(storage(std::io::Error::last_os_error()));
            }
            Ok(())
        } else {
            self.log_file.sync_data().map_err(storage)
        }
    }
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

/// The queue's only writer: applies commands in groups, one durable commit
/// (flush + fsync) per group.
///
/// Commit wait: webhooks announce themselves ([`Queue::arriving`]) while
/// their source plugin runs. Before committing a group with appends, the
/// writer waits, in ticks of [`COMMIT_TICK`] and at most `commit_delay`,
/// while announced appends are still on their way, so that they share this
/// commit instead of needing the next. Each commit costs a sled flush (which
/// wakes all of sled's I/O threads) and an fsync, so under load fewer,
/// larger commits save CPU per event; a webhook arriving alone never waits.
/// Measured in docs/BENCHMARKS.md.
fn writer_loop(shared: Arc<Shared>, rx: mpsc::Receiver<Command>, commit_delay: Duration) {
    let mut group = Vec::with_capacity(64);
    while let Ok(first) = rx.recv() {
        group.push(first);
        drain(&rx, &mut group);
        let has_append = group.iter().any(|c| matches!(c, Command::Append(..)));
        if has_append && !commit_delay.is_zero() {
            let deadline = Instant::now() + commit_delay;
            while shared.arriving.load(Ordering::Acquire) > 0 && group.len() < MAX_GROUP {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(COMMIT_TICK));
                drain(&rx, &mut group);
            }
        }
        let mut waiters = Vec::new();
        let mut closing = None;
        let mut large = false;
        let mut failure: Option<String> = None;
        for cmd in group.drain(..) {
            match cmd {
                Command::Append(records, reply) => {
                    let mut result = Ok(());
                    for record in &records {
                        match shared.put(record) {
                            Ok(len) => large |= len > LARGE_VALUE,
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    waiters.push((reply, result));
                }
                Command::Apply(ops) => {
                    for op in ops {
                        match shared.apply(op) {
                            Ok(len) => large |= len > LARGE_VALUE,
                            Err(e) => {
                                tracing::error!(error = %e, "queue update failed");
                                failure = Some(e.to_string());
                            }
                        }
                    }
                }
                Command::Close(reply) => closing = Some(reply),
            }
        }
        if !waiters.is_empty() || closing.is_some() {
            let synced = shared.sync(large);
            for (reply, result) in waiters {
                let outcome = match (&result, &synced) {
                    (Err(_), _) => result,
                    (Ok(()), Err(e)) => Err(QueueError::Storage(e.to_string())),
                    (Ok(()), Ok(())) => Ok(()),
                };
                let _ = reply.send(outcome);
            }
            if let Some(reply) = closing {
                let _ = reply.send(synced.map_err(|e| QueueError::Storage(e.to_string())));
                return;
            }
        }
        if let Some(f) = failure {
            tracing::error!(error = %f, "some queue updates were not applied; affected events will be redelivered after restart");
        }
    }
}

impl Queue for SledQueue {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn arriving(&self) -> Arrival {
        Arrival::counted(&self.shared.arriving)
    }

    fn append(&self, records: Vec<Record>) -> BoxFuture<'_, Result<(), QueueError>> {
        // Handed over now, not at the first poll: the caller may drop its
        // `Arrival` as soon as this returns.
        let (tx, rx) = oneshot::channel();
        let sent = self.send(Command::Append(records, tx));
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

    fn pending(&self) -> BoxFuture<'_, Result<Vec<Record>, QueueError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                shared
                    .tree
                    .scan_prefix([PENDING])
                    .map(|item| {
                        let (k, v) = item.map_err(storage)?;
                        decode::<Record>(&k, &v)
                    })
                    .collect()
            })
            .await
            .map_err(storage)?
        })
    }

    fn dead_letters(&self, limit: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                shared
                    .tree
                    .scan_prefix([DEAD])
                    .take(limit)
                    .map(|item| {
                        let (k, v) = item.map_err(storage)?;
                        decode::<DeadLetter>(&k, &v)
                    })
                    .collect()
            })
            .await
            .map_err(storage)?
        })
    }

    fn replay(&self, id: u64) -> BoxFuture<'_, Result<Record, QueueError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let k = key(DEAD, id);
                let v = shared
                    .tree
                    .get(k)
                    .map_err(storage)?
                    .ok_or(QueueError::NotFound(id))?;
                let letter: DeadLetter = decode(&k, &v)?;
                let mut record = letter.record;
                record.attempts.clear();
                record.not_before_ms = 0;
                shared.put(&record)?;
                if shared.tree.remove(k).map_err(storage)?.is_some() {
                    shared.dead.fetch_sub(1, Ordering::Relaxed);
                }
                shared.sync(false)?;
                Ok(record)
            })
            .await
            .map_err(storage)?
        })
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            pending: self.shared.pending.load(Ordering::Relaxed),
            dead: self.shared.dead.load(Ordering::Relaxed),
            syncs: self.shared.syncs.load(Ordering::Relaxed),
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let sent = self.send(Command::Close(tx));
            if let Ok(mut guard) = self.tx.lock() {
                guard.take();
            }
            let result = match sent {
                Ok(()) => rx.await.map_err(|_| QueueError::Closed)?,
                Err(_) => Ok(()),
            };
            let handle = self.writer.lock().ok().and_then(|mut g| g.take());
            if let Some(handle) = handle {
                let _ = tokio::task::spawn_blocking(move || handle.join()).await;
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::queue::{Attempt, Stage};

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

    #[tokio::test]
    async fn append_survives_reopen_and_dead_letters_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let q = SledQueue::open(dir.path()).unwrap();
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
        let q = SledQueue::open(dir.path()).unwrap();
        assert_eq!(q.pending().await.unwrap(), vec![a.clone()]);
        let dead = q.dead_letters(10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].record.attempts.len(), 1);
        assert!(q.next_id() > b.id);
        let replayed = q.replay(b.id).await.unwrap();
        assert!(replayed.attempts.is_empty());
        assert_eq!(q.stats().pending, 2);
        assert_eq!(q.stats().dead, 0);
        q.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_commit_waits_for_announced_appends_and_never_forever() {
        let dir = tempfile::tempdir().unwrap();
        let q = SledQueue::open_with(dir.path(), Duration::from_millis(100)).unwrap();
        // An announced webhook that never appends: the commit still happens
        // (after at most the commit delay) and the append is durable.
        let lost = q.arriving();
        assert_eq!(q.shared.arriving.load(Ordering::Acquire), 1);
        q.append(vec![record(&q, "a")]).await.unwrap();
        drop(lost);
        assert_eq!(q.shared.arriving.load(Ordering::Acquire), 0);
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
    async fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path().join("queue")).unwrap();
            db.insert(FORMAT_KEY, b"99".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let err = SledQueue::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("format version 99"), "{err}");
    }
}
