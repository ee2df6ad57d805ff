//! Storage headroom: whether the queue may take more webhooks.
//!
//! Why it exists: a sink that is down for hours makes the queue grow, and a
//! queue that grows without bound ends in a full disk, where nothing works,
//! not even the deliveries that would drain it (a checkpoint needs room to
//! write). So Weft stops accepting first: with as many as
//! `storage.max_pending` records pending on one of the source's routes, or
//! less than `storage.min_free_mib` free on the data dir's file system, a
//! webhook is answered `503` with `Retry-After` before its body is read, and
//! nothing of it is stored. Webhook senders retry on a 5xx; deliveries go on
//! meanwhile (only webhooks are refused: retries, fan-out and replays are
//! not) and make room, and webhooks are taken again as soon as there is.
//!
//! The pending limit is per route: a sink that stays down fills its own
//! route's share and refuses only the sources that feed that route; the
//! other routes go on taking webhooks (the free-space floor guards the disk
//! they all share). Both are soft limits: webhooks already past the check
//! when a limit is reached still store their events.
//!
//! The free space is looked at once a second by a background task
//! ([`Headroom::watch`]), so a webhook costs an atomic load and, per route
//! of its source, a look at the queue's count (a mutex and a hash lookup),
//! not a `statvfs`. A look that fails keeps the last good reading (and says so
//! once, at `warn`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// `storage.max_pending` records are pending on a route.
    #[error("{pending} records are pending on route {route}, storage.max_pending is {max}")]
    Pending {
        /// The route.
        route: String,
        /// Records pending on it.
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

impl Full {
    /// The setting that refused, for the sender's answer (which does not
    /// say how full the server is: that is for the logs, the status API and
    /// the metrics).
    pub fn setting(&self) -> &'static str {
        match self {
            Full::Pending { .. } => "storage.max_pending",
            Full::Disk { .. } => "storage.min_free_mib",
        }
    }
}

/// The limits and the last look at the free space.
pub struct Headroom {
    dir: PathBuf,
    max_pending: u64,
    min_free_bytes: u64,
    /// Free bytes (for unprivileged writers) at the last good look;
    /// `u64::MAX` while none has succeeded (the queue's own writes then
    /// fail loudly).
    free_bytes: AtomicU64,
    /// Whether the last look failed (to warn once per failing spell).
    failing: AtomicBool,
    /// How the free space is read (`statvfs`; another in tests).
    reader: fn(&Path) -> std::io::Result<u64>,
}

impl Headroom {
    /// Headroom for a queue in `dir`, looking at its free space once now.
    pub fn new(dir: &Path, max_pending: u64, min_free_mib: u64) -> Headroom {
        Headroom::with_reader(dir, max_pending, min_free_mib, free_bytes)
    }

    fn with_reader(
        dir: &Path,
        max_pending: u64,
        min_free_mib: u64,
        reader: fn(&Path) -> std::io::Result<u64>,
    ) -> Headroom {
        let headroom = Headroom {
            dir: dir.to_path_buf(),
            max_pending,
            min_free_bytes: min_free_mib.saturating_mul(1 << 20),
            free_bytes: AtomicU64::new(u64::MAX),
            failing: AtomicBool::new(false),
            reader,
        };
        headroom.look();
        headroom
    }

    /// Whether a webhook feeding `routes` may be taken, with
    /// `pending_on(route)` records pending on each.
    pub fn check<'a>(
        &self,
        routes: impl IntoIterator<Item = &'a String>,
        pending_on: impl Fn(&str) -> u64,
    ) -> Result<(), Full> {
        let free = self.free_bytes.load(Ordering::Relaxed);
        if free < self.min_free_bytes {
            return Err(Full::Disk {
                free_mib: free >> 20,
                min_mib: self.min_free_bytes >> 20,
            });
        }
        for route in routes {
            let pending = pending_on(route);
            if pending >= self.max_pending {
                return Err(Full::Pending {
                    route: route.clone(),
                    pending,
                    max: self.max_pending,
                });
            }
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

    /// Reads the free space now (a blocking `statvfs`); a failed read
    /// keeps the last good one.
    fn look(&self) {
        match (self.reader)(&self.dir) {
            Ok(free) => {
                self.free_bytes.store(free, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(dir = %self.dir.display(), "the data dir's free space can be read again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the data dir's free space; storage.min_free_mib is checked against the last good reading");
                }
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
        let routes = ["calm".to_string(), "stuck".to_string()];
        let pending = |stuck: u64| move |route: &str| if route == "stuck" { stuck } else { 3 };
        assert_eq!(roomy.check(&routes, pending(9)), Ok(()));
        assert_eq!(
            roomy.check(&routes, pending(10)),
            Err(Full::Pending {
                route: "stuck".into(),
                pending: 10,
                max: 10
            })
        );
        // The limit is per route: a source feeding only the calm one is taken.
        assert_eq!(roomy.check(&routes[..1], pending(10)), Ok(()));
        // More free space asked for than any disk here has.
        let cramped = Headroom::new(dir.path(), 10, 1 << 40);
        assert!(matches!(
            cramped.check(&routes, pending(0)),
            Err(Full::Disk { .. })
        ));
        // A path that cannot be read does not stop webhooks by itself.
        let unreadable = Headroom::new(&dir.path().join("missing"), 10, 1 << 40);
        assert_eq!(unreadable.free_bytes(), None);
        assert_eq!(unreadable.check(&routes, pending(0)), Ok(()));
    }

    /// What the fake reader answers next (one test uses it).
    static NEXT_FREE: AtomicU64 = AtomicU64::new(0);

    fn fake_reader(_: &Path) -> std::io::Result<u64> {
        match NEXT_FREE.load(Ordering::Relaxed) {
            u64::MAX => Err(std::io::Error::other("unreadable")),
            free => Ok(free),
        }
    }

    #[test]
    fn each_look_refuses_or_takes_webhooks_again_and_a_failed_look_keeps_the_last() {
        NEXT_FREE.store(100 << 20, Ordering::Relaxed);
        let headroom = Headroom::with_reader(Path::new("/data"), 10, 50, fake_reader);
        assert_eq!(headroom.check(std::iter::empty(), |_| 0), Ok(()));
        // The disk fills up: the next look refuses.
        NEXT_FREE.store(10 << 20, Ordering::Relaxed);
        headroom.look();
        assert_eq!(
            headroom.check(std::iter::empty(), |_| 0),
            Err(Full::Disk {
                free_mib: 10,
                min_mib: 50
            })
        );
        // A failed look keeps refusing on the last good reading.
        NEXT_FREE.store(u64::MAX, Ordering::Relaxed);
        headroom.look();
        assert_eq!(headroom.free_bytes(), Some(10 << 20));
        assert!(headroom.check(std::iter::empty(), |_| 0).is_err());
        // Room again: webhooks are taken again.
        NEXT_FREE.store(60 << 20, Ordering::Relaxed);
        headroom.look();
        assert_eq!(headroom.check(std::iter::empty(), |_| 0), Ok(()));
    }
}
