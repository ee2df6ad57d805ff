//! What one plugin store may allocate: memory counted across all of the
//! component's linear memories, and bounded numbers of instances, tables
//! and memories.
//!
//! Why it exists: wasmtime's own `StoreLimits` bounds each linear memory on
//! its own. A component is built from several core modules and may carry a
//! memory per module (up to [`MAX_MEMORIES`] here), so "64 MiB" would mean
//! 64 MiB per memory, over a GiB per call. [`CallLimits`] adds up every
//! memory of the store and refuses (traps) the growth that would pass the
//! plugin's `limits.memory_mib`.

use wasmtime::ResourceLimiter;

/// Core instances one store may create (a component's modules and shims).
pub const MAX_INSTANCES: usize = 64;
/// Linear memories one store may create.
pub const MAX_MEMORIES: usize = 16;
/// Tables one store may create.
pub const MAX_TABLES: usize = 64;
/// Elements one table may hold.
pub const MAX_TABLE_ELEMENTS: usize = 200_000;

/// The limits of one plugin store (see the module docs).
#[derive(Debug)]
pub struct CallLimits {
    /// Bytes all linear memories together may hold.
    memory_cap: usize,
    /// Bytes they hold now.
    memory_used: usize,
}

impl CallLimits {
    /// Limits with `memory_cap` bytes for all memories together.
    pub fn new(memory_cap: usize) -> CallLimits {
        CallLimits {
            memory_cap,
            memory_used: 0,
        }
    }

    /// Bytes the store's memories hold together.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl ResourceLimiter for CallLimits {
    /// Called when a memory is created (`current` = 0) and when it grows.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let grown = self
            .memory_used
            .saturating_add(desired.saturating_sub(current));
        if grown > self.memory_cap {
            wasmtime::bail!(
                "memory limit reached: growing to {grown} bytes in all would pass limits.memory_mib ({} bytes)",
                self.memory_cap
            );
        }
        self.memory_used = grown;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("memory could not grow"))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS || maximum.is_some_and(|max| desired > max) {
            wasmtime::bail!("table limit reached: {desired} elements");
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        Err(error.context("table could not grow"))
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn memory_is_counted_across_all_memories_of_the_store() {
        let mut limits = CallLimits::new(64 * MIB);
        // Two memories created at 1 MiB, then each grown: together they may
        // not pass 64 MiB, though each alone stays below it.
        assert!(limits.memory_growing(0, MIB, None).unwrap());
        assert!(limits.memory_growing(0, MIB, None).unwrap());
        assert!(limits.memory_growing(MIB, 40 * MIB, None).unwrap());
        assert_eq!(limits.memory_used(), 41 * MIB);
        let refused = limits.memory_growing(MIB, 40 * MIB, None).unwrap_err();
        assert!(
            refused.to_string().contains("memory limit reached"),
            "{refused}"
        );
        // What was refused is not counted; what still fits is allowed.
        assert_eq!(limits.memory_used(), 41 * MIB);
        assert!(limits.memory_growing(MIB, 24 * MIB, None).unwrap());
        assert_eq!(limits.memory_used(), 64 * MIB);
        assert!(limits.memory_growing(24 * MIB, 24 * MIB + 1, None).is_err());
    }

    #[test]
    fn a_memory_never_grows_past_its_own_maximum() {
        let mut limits = CallLimits::new(64 * MIB);
        assert!(!limits.memory_growing(0, 2 * MIB, Some(MIB)).unwrap());
        assert_eq!(limits.memory_used(), 0);
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(limits
            .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
            .is_err());
    }
}
