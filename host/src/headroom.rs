//! Storage headroom: whether the queue may take more webhooks.
//!
//! Why it exists: a sink that is down for hours makes the queue grow, and a
//! queue that grows without bound ends in a full disk, where nothing works,
//! not even the deliveries that would drain it (a checkpoint needs room to
//! write). So Weft stops accepting first: with more than
//! `storage.max_pending` records pending, or less than
//! `storage.min_free_mib` free on the data dir's file system, a webhook is
//! answered `503` with `Retry-After` before its body is read, and nothing of
//! it is stored. Webhook senders retry on a 5xx; deliveries go on meanwhile
//! and make room, and webhooks are taken again as soon as there is.
//!
//! The free space is looked at once a second by a background task
//! ([`Headroom::watch`]), so a webhook costs two atomic loads, not a
//! `statvfs`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the free space is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The `Retry-After` a refused webhook gets (seconds): long enough for
/// deliveries to make room, short enough that senders come back soon.
pub const RETRY_AFTER_SECS: u64 = 30;

/// Why the queue takes no more webhooks right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// `storage.max_pending` records are pending.
    #[error("{pending} records are pending, storage.max_pending is {max}")]
    Pending {
        /// Records pending.
        pending: u64,
        /// The limit.
        max: u64,
    },
    /// The data dir's file system is nearly full.
    #[error(
        "{free_mib} MiB free on the data dir's file system, storage.min_free_mib is {min_mib}"
    )]
    Disk {
        /// Free space at the last look, in MiB.
        free_mib: u64,
        /// The limit.
        min_mib: u64,
    },
}

/// The limits and the last look at the free space.
pub struct Headroom {
    dir: PathBuf,
    max_pending: u64,
    min_free_bytes: u64,
    /// Free bytes (for unprivileged writers) at the last look; `u64::MAX`
    /// when it could not be read (the queue's own writes then fail loudly).
    free_bytes: AtomicU64,
}

impl Headroom {
    /// Headroom for a queue in `dir`, looking at its free space once now.
    pub fn new(dir: &Path, max_pending: u64, min_free_mib: u64) -> Headroom {
        let headroom = Headroom {
            dir: dir.to_path_buf(),
            max_pending,
            min_free_bytes: min_free_mib.saturating_mul(1 << 20),
            free_bytes: AtomicU64::new(u64::MAX),
        };
        headroom.look();
        headroom
    }

    /// Whether a webhook may be taken with `pending` records pending.
    pub fn check(&self, pending: u64) -> Result<(), Full> {
        if pending >= self.max_pending {
            return Err(Full::Pending {
                pending,
                max: self.max_pending,
            });
        }
        let free = self.free_bytes.load(Ordering::Relaxed);
        if free < self.min_free_bytes {
            return Err(Full::Disk {
                free_mib: free >> 20,
                min_mib: self.min_free_bytes >> 20,
            });
        }
        Ok(())
    }

    /// Free bytes at the last look, if they could be read.
    pub fn free_bytes(&self) -> Option<u64> {
        Some(self.free_bytes.load(Ordering::Relaxed)).filter(|b| *b != u64::MAX)
    }

    /// `storage.max_pending`.
    pub fn max_pending(&self) -> u64 {
        self.max_pending
    }

    /// `storage.min_free_mib`, in bytes.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes
    }

    /// Reads the free space now (a blocking `statvfs`).
    fn look(&self) {
        match free_bytes(&self.dir) {
            Ok(free) => self.free_bytes.store(free, Ordering::Relaxed),
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), error = %e, "cannot read the data dir's free space");
                self.free_bytes.store(u64::MAX, Ordering::Relaxed);
            }
        }
    }

    /// Looks at the free space every second until shutdown, off the async
    /// threads.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
            let me = self.clone();
            if tokio::task::spawn_blocking(move || me.look())
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Bytes an unprivileged process may still write on `dir`'s file system.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs(3) fills the zeroed struct we pass and reads the
    // NUL-terminated path, which outlives the call.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_at_the_limit_or_too_little_free_space_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let roomy = Headroom::new(dir.path(), 10, 0);
        assert!(roomy.free_bytes().is_some_and(|b| b > 0));
        assert_eq!(roomy.check(9), Ok(()));
        assert_eq!(
            roomy.check(10),
            Err(Full::Pending {
                pending: 10,
                max: 10
            })
        );
        // More free space asked for than any disk here has.
        let cramped = Headroom::new(dir.path(), 10, 1 << 40);
        assert!(matches!(cramped.check(0), Err(Full::Disk { .. })));
        // A path that cannot be read does not stop webhooks by itself.
        let unreadable = Headroom::new(&dir.path().join("missing"), 10, 1 << 40);
        assert_eq!(unreadable.free_bytes(), None);
        assert_eq!(unreadable.check(0), Ok(()));
    }
}
