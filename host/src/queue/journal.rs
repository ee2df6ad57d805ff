//! The write-ahead journal in front of sled: what makes an acknowledgement
//! durable, cheaply.
//!
//! Why it exists: making sled itself durable costs a `flush()` (sled writes
//! its log buffers through its I/O thread pool and waits for
//! `sync_file_range`) plus an `fdatasync`: ~0.3–0.4 ms per commit here, and
//! ~0.1 ms of CPU. Writing the same records into a file whose blocks are
//! already allocated and then `fdatasync`ing it costs ~0.1 ms and a few µs
//! of CPU (docs/BENCHMARKS.md). So every queue change goes both to sled (in
//! memory, flushed later) and, in the same order, into this journal; only a
//! group containing an append waits for the journal's sync. Every so often
//! a **checkpoint** flushes sled durably and starts a new journal *epoch*,
//! after which the old entries are no longer needed.
//!
//! File layout: a sequence of frames from offset 0, one per writer group:
//!
//! ```text
//! magic u32 | epoch u64 | payload length u32 | crc32(epoch, length, payload) u32 | payload
//! payload = entries: tag u8 | record id u64 | value length u32 | value
//! ```
//!
//! (A `Seen` entry, an event's de-duplication key, carries the time it
//! expires where the others carry a record id, and the key as its value.)
//!
//! A frame counts only if its magic, epoch (the current one, stored in sled
//! at each checkpoint) and checksum are right; reading stops at the first
//! frame that is not, which is the end of this epoch (older epochs' frames
//! and a torn last write both stop it). A torn frame was never acknowledged:
//! the writer answers only after its sync. The epoch is a random 64-bit
//! number drawn at each checkpoint, not a counter: the stale frames further
//! in the file hold old webhook bodies, and a frame forged inside one must
//! not be able to pass for a frame of the current epoch.
//!
//! An intact frame of the current epoch *after* one that is not can only
//! mean damage on the medium (the epoch is written front to back): the
//! damaged bytes are skipped with an error in the log, and what follows is
//! recovered.
//!
//! The file is reused from offset 0 in every epoch, and grown in steps of
//! zeroes written and synced once, so that a commit overwrites blocks that
//! already exist and its `fdatasync` has no file metadata to write (an
//! appending write would make every sync commit the file system's journal
//! too: ~1.7x slower here).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: u32 = 0x5746_4A31; // "WFJ1"
const HEADER: usize = 4 + 8 + 4 + 4;
const ENTRY_HEADER: usize = 1 + 8 + 4;
/// The file grows in steps of this many zeroed bytes.
const GROW_STEP: u64 = 2 << 20;
/// At a checkpoint, a file grown beyond this (by a burst of large events) is
/// cut back to [`KEEP_BYTES`].
const SHRINK_ABOVE: u64 = 64 << 20;
const KEEP_BYTES: u64 = 8 << 20;
/// A group's entries beyond this many bytes continue in another frame (a
/// frame's length field is 32 bits).
const MAX_FRAME_PAYLOAD: usize = 1 << 30;
/// The largest value one entry can carry.
pub(super) const MAX_VALUE: usize = MAX_FRAME_PAYLOAD - ENTRY_HEADER;

/// One change, as journaled.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Entry {
    /// A pending record was stored: its id and encoded record.
    Put(u64, Vec<u8>),
    /// A pending record was removed (delivered).
    Remove(u64),
    /// A pending record became a dead letter: its id and encoded dead letter.
    Dead(u64, Vec<u8>),
    /// A dead letter left the dead-letter store: moved back to pending
    /// (its `Put` precedes this) or discarded.
    Revive(u64),
    /// An event's de-duplication key was stored with it: until when (ms
    /// since epoch) and the key.
    Seen(u64, Vec<u8>),
}

const PUT: u8 = 1;
const REMOVE: u8 = 2;
const DEAD: u8 = 3;
const REVIVE: u8 = 4;
const SEEN: u8 = 5;

/// The journal file, owned by the queue's writer thread.
pub(super) struct Journal {
    file: File,
    epoch: u64,
    /// Where the next frame goes (= bytes of this epoch so far).
    offset: u64,
    /// Bytes at the start of the file that exist on disk (written zeroes or
    /// old frames): overwriting them needs no metadata sync.
    allocated: u64,
    /// Entries of the frame being built.
    payload: Vec<u8>,
    /// Frames were written since the last successful sync.
    unsynced: bool,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and returns the entries of
    /// `epoch`, in order.
    pub(super) fn open(path: &Path, epoch: u64) -> std::io::Result<(Journal, Vec<Entry>)> {
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            // The new file's directory entry must survive a power loss too.
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let read = read_epoch(&bytes, epoch);
        for (from, to) in &read.damaged {
            tracing::error!(
                journal = %path.display(),
                from,
                to,
                "journal damaged: skipped these bytes and recovered the intact frames after them; changes in the damaged part are lost"
            );
        }
        let (entries, end) = (read.entries, read.end);
        let journal = Journal {
            file,
            epoch,
            offset: end as u64,
            allocated: bytes.len() as u64,
            payload: Vec::new(),
            unsynced: false,
        };
        Ok((journal, entries))
    }

    /// The current epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes written in this epoch (0 right after a checkpoint).
    pub(super) fn len(&self) -> u64 {
        self.offset
    }

    /// Bytes of entries added but not yet written (kept by a failed write).
    pub(super) fn buffered(&self) -> u64 {
        self.payload.len() as u64
    }

    /// Adds an entry to the frame being built.
    pub(super) fn add(&mut self, entry: &Entry) -> std::io::Result<()> {
        let (tag, id, value): (u8, u64, &[u8]) = match entry {
            Entry::Put(id, v) => (PUT, *id, v),
            Entry::Remove(id) => (REMOVE, *id, &[]),
            Entry::Dead(id, v) => (DEAD, *id, v),
            Entry::Revive(id) => (REVIVE, *id, &[]),
            Entry::Seen(until, key) => (SEEN, *until, key),
        };
        self.add_raw(tag, id, value)
    }

    /// [`Journal::add`] without building an [`Entry`] (no copy of `value`).
    pub(super) fn add_put(&mut self, id: u64, value: &[u8]) -> std::io::Result<()> {
        self.add_raw(PUT, id, value)
    }

    /// Adds a dead-lettering (see [`Entry::Dead`]) without copying `value`.
    pub(super) fn add_dead(&mut self, id: u64, value: &[u8]) -> std::io::Result<()> {
        self.add_raw(DEAD, id, value)
    }

    /// Adds an event's de-duplication key (see [`Entry::Seen`]) without
    /// copying it.
    pub(super) fn add_seen(&mut self, until: u64, key: &[u8]) -> std::io::Result<()> {
        self.add_raw(SEEN, until, key)
    }

    fn add_raw(&mut self, tag: u8, id: u64, value: &[u8]) -> std::io::Result<()> {
        if value.len() > MAX_VALUE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a queue record of {} bytes is too large to journal",
                    value.len()
                ),
            ));
        }
        self.payload.push(tag);
        self.payload.extend_from_slice(&id.to_le_bytes());
        self.payload
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.payload.extend_from_slice(value);
        Ok(())
    }

    /// Writes the entries added so far (if any) as one frame, or several
    /// when they exceed [`MAX_FRAME_PAYLOAD`], and, when `sync`, waits until
    /// they are on stable storage. Without `sync` they survive a crash of
    /// the process (they are in the page cache) but not a power loss. If
    /// writing fails, the entries stay and go out with the next write.
    pub(super) fn write(&mut self, sync: bool) -> std::io::Result<()> {
        if self.payload.is_empty() {
            // Frames an earlier sync failed on still need one.
            if sync && self.unsynced {
                self.file.sync_data()?;
                self.unsynced = false;
            }
            return Ok(());
        }
        let mut frames = Vec::with_capacity(HEADER + self.payload.len());
        for part in frame_parts(&self.payload, MAX_FRAME_PAYLOAD) {
            let part = &self.payload[part];
            frames.extend_from_slice(&MAGIC.to_le_bytes());
            frames.extend_from_slice(&self.epoch.to_le_bytes());
            frames.extend_from_slice(&(part.len() as u32).to_le_bytes());
            frames.extend_from_slice(&checksum(self.epoch, part).to_le_bytes());
            frames.extend_from_slice(part);
        }
        let end = self.offset + frames.len() as u64;
        if end > self.allocated {
            self.grow(end)?;
        }
        self.file.write_all_at(&frames, self.offset)?;
        self.payload.clear();
        self.offset = end;
        self.unsynced = true;
        if sync {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Extends the file with written zeroes to cover `end`, durably.
    fn grow(&mut self, end: u64) -> std::io::Result<()> {
        let target = end.div_ceil(GROW_STEP) * GROW_STEP;
        let zeroes = vec![0u8; 1 << 20];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], at)?;
            at += n as u64;
        }
        self.file.sync_all()?;
        self.allocated = target;
        Ok(())
    }

    /// Starts `epoch` at offset 0, after a checkpoint made everything before
    /// it durable in sled.
    pub(super) fn restart(&mut self, epoch: u64) -> std::io::Result<()> {
        self.epoch = epoch;
        self.offset = 0;
        // What a failed write kept is in sled now, durably.
        self.payload.clear();
        self.unsynced = false;
        if self.allocated > SHRINK_ABOVE {
            self.file.set_len(KEEP_BYTES)?;
            self.file.sync_all()?;
            self.allocated = KEEP_BYTES;
        }
        Ok(())
    }
}

/// Splits a payload into runs of whole entries of at most `max` bytes each
/// (an entry larger than `max` alone is a run of its own).
fn frame_parts(payload: &[u8], max: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = Vec::with_capacity(1 + payload.len() / max.max(1));
    if payload.len() <= max {
        parts.push(0..payload.len());
        return parts;
    }
    let (mut start, mut at) = (0, 0);
    while at < payload.len() {
        let len = u32_at(payload, at + 9).map_or(0, |l| l as usize);
        let next = (at + ENTRY_HEADER + len).min(payload.len());
        if next - start > max && at > start {
            parts.push(start..at);
            start = at;
        }
        at = next;
    }
    parts.push(start..payload.len());
    parts
}

fn checksum(epoch: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&epoch.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What reading an epoch found.
#[derive(Debug, PartialEq)]
struct EpochRead {
    /// The entries of every intact frame, in order.
    entries: Vec<Entry>,
    /// Where the last intact frame ends.
    end: usize,
    /// Byte ranges skipped because they were damaged *and* intact frames of
    /// the same epoch follow them (a torn last write is not damage).
    damaged: Vec<(usize, usize)>,
}

/// The entries of `epoch`'s frames from the start of `bytes`.
///
/// Reading stops at the first position that holds no intact frame of
/// `epoch`, unless an intact frame of `epoch` follows further on: the epoch
/// is written front to back, one frame after the other, so that can only be
/// damage on the medium. Then the damaged bytes are skipped (and reported)
/// and reading resumes at that frame: what can be recovered is.
fn read_epoch(bytes: &[u8], epoch: u64) -> EpochRead {
    let mut read = EpochRead {
        entries: Vec::new(),
        end: 0,
        damaged: Vec::new(),
    };
    let mut at = 0usize;
    loop {
        let intact = frame_at(bytes, at, epoch).and_then(|p| Some((p.len(), parse_entries(p)?)));
        match intact {
            Some((len, parsed)) => {
                read.entries.extend(parsed);
                at += HEADER + len;
                read.end = at;
            }
            None => match next_frame(bytes, at + 1, epoch) {
                Some(next) => {
                    read.damaged.push((at, next));
                    at = next;
                }
                None => return read,
            },
        }
    }
}

/// The first position at or after `from` holding an intact frame of `epoch`.
fn next_frame(bytes: &[u8], from: usize, epoch: u64) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(HEADER - 1)).find(|&p| {
        bytes[p..p + 4] == magic
            && frame_at(bytes, p, epoch).is_some_and(|f| parse_entries(f).is_some())
    })
}

/// The payload of a valid frame of `epoch` at `at`.
fn frame_at(bytes: &[u8], at: usize, epoch: u64) -> Option<&[u8]> {
    if u32_at(bytes, at)? != MAGIC || u64_at(bytes, at + 4)? != epoch {
        return None;
    }
    let len = u32_at(bytes, at + 12)? as usize;
    let crc = u32_at(bytes, at + 16)?;
    let payload = bytes.get(at + HEADER..(at + HEADER).checked_add(len)?)?;
    (checksum(epoch, payload) == crc).then_some(payload)
}

fn parse_entries(mut payload: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    while !payload.is_empty() {
        let tag = *payload.first()?;
        let id = u64_at(payload, 1)?;
        let len = u32_at(payload, 9)? as usize;
        let value = payload.get(ENTRY_HEADER..ENTRY_HEADER.checked_add(len)?)?;
        entries.push(match tag {
            PUT => Entry::Put(id, value.to_vec()),
            REMOVE => Entry::Remove(id),
            DEAD => Entry::Dead(id, value.to_vec()),
            REVIVE => Entry::Revive(id),
            SEEN => Entry::Seen(id, value.to_vec()),
            _ => return None,
        });
        payload = &payload[ENTRY_HEADER + len..];
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_the_current_epoch_are_read_back_in_order_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, replayed) = Journal::open(&path, 7).unwrap();
        assert!(replayed.is_empty());
        j.add(&Entry::Put(1, b"one".to_vec())).unwrap();
        j.add(&Entry::Put(2, b"two".to_vec())).unwrap();
        j.write(true).unwrap();
        j.add(&Entry::Remove(1)).unwrap();
        j.add(&Entry::Dead(2, b"dead two".to_vec())).unwrap();
        j.write(false).unwrap();
        j.add(&Entry::Revive(2)).unwrap();
        j.add(&Entry::Put(2, b"two again".to_vec())).unwrap();
        j.add(&Entry::Seen(99, b"key".to_vec())).unwrap();
        j.write(true).unwrap();
        let end = j.len();
        drop(j);

        let expected = vec![
            Entry::Put(1, b"one".to_vec()),
            Entry::Put(2, b"two".to_vec()),
            Entry::Remove(1),
            Entry::Dead(2, b"dead two".to_vec()),
            Entry::Revive(2),
            Entry::Put(2, b"two again".to_vec()),
            Entry::Seen(99, b"key".to_vec()),
        ];
        let (j, replayed) = Journal::open(&path, 7).unwrap();
        assert_eq!(replayed, expected);
        assert_eq!(j.len(), end);
        drop(j);

        // Another epoch's frames are not this epoch's.
        let (_, replayed) = Journal::open(&path, 8).unwrap();
        assert!(replayed.is_empty());

        // Damage the last frame (a write torn by a power loss): the frames
        // before it still count, nothing after it does.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", end - 2).unwrap();
        drop(file);
        let (j, replayed) = Journal::open(&path, 7).unwrap();
        assert_eq!(replayed, expected[..4].to_vec());
        assert!(j.len() < end);
    }

    #[test]
    fn a_new_epoch_starts_over_and_old_frames_behind_it_stay_dead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path, 1).unwrap();
        for id in 0..100 {
            j.add(&Entry::Put(id, vec![1u8; 100])).unwrap();
            j.write(true).unwrap();
        }
        // A checkpoint: epoch 2 overwrites from the start; the rest of
        // epoch 1's frames are still in the file but must not be read.
        j.restart(2).unwrap();
        j.add(&Entry::Put(500, b"new".to_vec())).unwrap();
        j.write(true).unwrap();
        drop(j);
        let (_, replayed) = Journal::open(&path, 2).unwrap();
        assert_eq!(replayed, vec![Entry::Put(500, b"new".to_vec())]);
        // The file was grown once, in whole steps of written zeroes.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GROW_STEP);
    }

    #[test]
    fn damage_in_the_middle_is_skipped_and_the_frames_after_it_are_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let (mut j, _) = Journal::open(&path, 3).unwrap();
        let mut ends = Vec::new();
        for id in 1..=3u64 {
            j.add(&Entry::Put(id, vec![id as u8; 50])).unwrap();
            j.write(true).unwrap();
            ends.push(j.len());
        }
        drop(j);
        // A flipped byte inside the second frame (bad sectors, not a torn
        // write: an intact frame follows).
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"\xff", ends[0] + 30).unwrap();
        drop(file);
        let bytes = std::fs::read(&path).unwrap();
        let read = read_epoch(&bytes, 3);
        assert_eq!(
            read.entries,
            vec![Entry::Put(1, vec![1; 50]), Entry::Put(3, vec![3; 50])]
        );
        assert_eq!(read.damaged, vec![(ends[0] as usize, ends[1] as usize)]);
        assert_eq!(read.end, ends[2] as usize);
    }

    #[test]
    fn a_large_group_is_split_into_frames_of_whole_entries_and_read_back() {
        let mut j = Journal {
            file: tempfile::tempfile().unwrap(),
            epoch: 5,
            offset: 0,
            allocated: 0,
            payload: Vec::new(),
            unsynced: false,
        };
        let values: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + i as usize]).collect();
        for (id, v) in values.iter().enumerate() {
            j.add_put(id as u64, v).unwrap();
        }
        let parts = frame_parts(&j.payload, 300);
        assert!(parts.len() > 3, "{parts:?}");
        assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
        assert_eq!(parts.last().unwrap().end, j.payload.len());
        for p in &parts {
            let entries = parse_entries(&j.payload[p.clone()]).unwrap();
            assert!(!entries.is_empty() && p.len() <= 300, "{p:?}");
        }
        // An entry over the limit is a run of its own.
        let mut big = Vec::new();
        big.extend_from_slice(&j.payload[..ENTRY_HEADER + 100]);
        let alone = frame_parts(&big, 50);
        assert_eq!((alone.len(), alone[0].clone()), (1, 0..big.len()));
        // Written as one group, read back in order.
        let written = j.payload.clone();
        j.write(true).unwrap();
        assert!(j.payload.is_empty());
        let mut bytes = Vec::new();
        j.file.read_to_end(&mut bytes).unwrap();
        let read = read_epoch(&bytes, 5);
        assert_eq!(read.entries, parse_entries(&written).unwrap());
    }

    #[test]
    fn garbage_is_no_frame() {
        let nothing = |bytes: &[u8]| {
            let read = read_epoch(bytes, 0);
            read.entries.is_empty() && read.end == 0 && read.damaged.is_empty()
        };
        assert!(nothing(b""));
        assert!(nothing(&[0u8; 64]));
        assert!(nothing(&[0xffu8; 64]));
        // A header claiming more bytes than there are.
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        assert!(nothing(&b));
    }
}
