//! Which routes an operator paused, kept across restarts.
//!
//! Why it exists: a route is paused while its downstream is down or being
//! migrated, often for longer than Weft runs between restarts (a deploy, a
//! reboot). Forgetting the pause at a restart would start delivering into
//! the outage the operator meant to wait out, and burn every event's retry
//! budget into dead letters. The set is a small text file in the data dir,
//! one route name per line, replaced atomically at each change.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file that holds the paused routes.
pub struct PausedRoutes {
    path: PathBuf,
}

impl PausedRoutes {
    /// The paused routes kept in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> PausedRoutes {
        PausedRoutes {
            path: data_dir.join("paused-routes"),
        }
    }

    /// The routes paused when the file was last written (none if there is
    /// no file).
    pub fn load(&self) -> std::io::Result<BTreeSet<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
            Err(e) => Err(e),
        }
    }

    /// Replaces the file with `routes`, durably: a crash leaves the old set
    /// or the new one, never a mix.
    pub fn save(&self, routes: &BTreeSet<String>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            for route in routes {
                writeln!(file, "{route}")?;
            }
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paused_routes_are_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let kept = PausedRoutes::in_dir(dir.path());
        assert!(kept.load().unwrap().is_empty(), "no file: nothing paused");
        let set: BTreeSet<String> = ["orders".to_string(), "refunds".to_string()].into();
        kept.save(&set).unwrap();
        assert_eq!(PausedRoutes::in_dir(dir.path()).load().unwrap(), set);
        kept.save(&BTreeSet::new()).unwrap();
        assert!(kept.load().unwrap().is_empty());
        assert!(!dir.path().join("paused-routes.tmp").exists());
    }
}
