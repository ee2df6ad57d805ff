//! A plugin's private key-value state (the `weft:connector/state`
//! interface): a sled tree of its own, with a size quota.
//!
//! Why the quota: the state shares the database (and the disk) with the
//! queue. A plugin writing a new key on every call would otherwise fill the
//! disk until appends fail for every route. `limits.state_mib` bounds the
//! bytes of keys and values one plugin keeps.
//!
//! Writes reach sled's log at once and its files within sled's own flush
//! interval (500 ms): after a process crash a plugin may find a value it
//! wrote in the last half second missing, while the event that wrote it is
//! already delivered. State is for caches, cursors and deduplication hints,
//! not for what must survive exactly; docs/connectors.md says so.

use std::sync::{Mutex, MutexGuard};

/// Longest state key a plugin may use.
pub const MAX_STATE_KEY: usize = 1024;
/// Largest state value a plugin may store.
pub const MAX_STATE_VALUE: usize = 1024 * 1024;

/// What went wrong with a state operation.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The key is longer than [`MAX_STATE_KEY`].
    #[error("state key longer than {MAX_STATE_KEY} bytes")]
    KeyTooLong,
    /// The value is larger than [`MAX_STATE_VALUE`].
    #[error("state value larger than {MAX_STATE_VALUE} bytes")]
    ValueTooLarge,
    /// Storing the value would pass the plugin's `limits.state_mib`.
    #[error("state quota used up: {used} of {quota} bytes in use, this write needs {needed} more (limits.state_mib)")]
    Quota {
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
        /// What the write would add.
        needed: u64,
    },
    /// sled failed.
    #[error("plugin state storage failed: {0}")]
    Storage(String),
}

/// One plugin's state tree and what it holds.
pub struct PluginState {
    tree: sled::Tree,
    quota: u64,
    /// Bytes of keys and values stored; changed only under this lock, with
    /// the write it accounts for.
    used: Mutex<u64>,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("quota", &self.quota)
            .field("used", &*self.lock())
            .finish()
    }
}

/// What one entry costs against the quota: its key and value, plus what
/// the store spends on any entry (index, headers). Without that, a quota of
/// 64 MiB would allow some 16 million tiny entries, which take gigabytes
/// on disk and a long scan at every start.
const ENTRY_OVERHEAD: u64 = 64;

fn charge(key: usize, value: usize) -> u64 {
    (key as u64)
        .saturating_add(value as u64)
        .saturating_add(ENTRY_OVERHEAD)
}

fn storage(e: sled::Error) -> StateError {
    StateError::Storage(e.to_string())
}

impl PluginState {
    /// Opens the state in `tree` with a quota of `quota` bytes, counting
    /// what it already holds.
    pub fn open(tree: sled::Tree, quota: u64) -> Result<PluginState, StateError> {
        let mut used = 0u64;
        for item in tree.iter() {
            let (k, v) = item.map_err(storage)?;
            used = used.saturating_add(charge(k.len(), v.len()));
        }
        Ok(PluginState {
            tree,
            quota,
            used: Mutex::new(used),
        })
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes charged for what is stored: keys, values and a fixed overhead
    /// per entry.
    pub fn used(&self) -> u64 {
        *self.lock()
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .tree
            .get(key.as_bytes())
            .map_err(storage)?
            .map(|v| v.to_vec()))
    }

    /// Stores `value` under `key`, within the size limits and the quota.
    pub fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StateError> {
        if key.len() > MAX_STATE_KEY {
            return Err(StateError::KeyTooLong);
        }
        if value.len() > MAX_STATE_VALUE {
            return Err(StateError::ValueTooLarge);
        }
        let mut used = self.lock();
        let old = self
            .tree
            .get(key.as_bytes())
            .map_err(storage)?
            .map_or(0, |v| charge(key.len(), v.len()));
        let new = charge(key.len(), value.len());
        let after = used.saturating_sub(old).saturating_add(new);
        if new > old && after > self.quota {
            return Err(StateError::Quota {
                used: *used,
                quota: self.quota,
                needed: new - old,
            });
        }
        self.tree.insert(key.as_bytes(), value).map_err(storage)?;
        *used = after;
        Ok(())
    }

    /// Removes `key` (nothing if it is absent).
    pub fn delete(&self, key: &str) -> Result<(), StateError> {
        let mut used = self.lock();
        if let Some(old) = self.tree.remove(key.as_bytes()).map_err(storage)? {
            *used = used.saturating_sub(charge(key.len(), old.len()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> sled::Tree {
        sled::Config::new()
            .temporary(true)
            .open()
            .unwrap()
            .open_tree("state")
            .unwrap()
    }

    #[test]
    fn the_quota_counts_entries_and_frees_what_is_replaced_or_deleted() {
        // Each entry costs its key, its value and ENTRY_OVERHEAD (64).
        let state = PluginState::open(tree(), 300).unwrap();
        state.set("a", vec![0; 85]).unwrap(); // 150
        state.set("b", vec![0; 85]).unwrap(); // 300: exactly the quota
        let refused = state.set("c", vec![0; 1]).unwrap_err();
        assert!(
            matches!(
                refused,
                StateError::Quota {
                    used: 300,
                    quota: 300,
                    needed: 66
                }
            ),
            "{refused}"
        );
        assert_eq!(
            state.get("c").unwrap(),
            None,
            "nothing of a refused write is stored"
        );
        // Replacing a value by a smaller one, or deleting it, frees room.
        state.set("a", vec![0; 9]).unwrap();
        assert_eq!(state.used(), 74 + 150);
        state.set("c", vec![1; 9]).unwrap();
        state.delete("b").unwrap();
        state.delete("b").unwrap();
        assert_eq!(state.used(), 2 * 74);
        assert_eq!(state.get("c").unwrap(), Some(vec![1; 9]));
        // A reopened state counts what is stored.
        let reopened = PluginState::open(state.tree.clone(), 300).unwrap();
        assert_eq!(reopened.used(), 2 * 74);
        // Many tiny entries run out: the overhead is charged.
        let tiny = PluginState::open(tree(), 64 * 100).unwrap();
        let stored = (0..1000).take_while(|i| tiny.set(&i.to_string(), vec![]).is_ok());
        assert!(stored.count() < 100);
    }

    #[test]
    fn keys_and_values_over_their_limits_are_refused() {
        let state = PluginState::open(tree(), u64::MAX).unwrap();
        let long = "k".repeat(MAX_STATE_KEY + 1);
        assert!(matches!(
            state.set(&long, vec![]),
            Err(StateError::KeyTooLong)
        ));
        assert!(matches!(
            state.set("k", vec![0; MAX_STATE_VALUE + 1]),
            Err(StateError::ValueTooLarge)
        ));
        assert_eq!(state.used(), 0);
    }
}
