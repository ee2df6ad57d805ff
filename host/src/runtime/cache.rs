//! The compiled-component cache: compiling a component takes milliseconds to
//! seconds, loading a precompiled one takes microseconds.
//!
//! A cache file is named by the SHA-256 of the component bytes and the
//! engine's compatibility hash, so a cache written by another engine
//! configuration or wasmtime version is never even tried.
//!
//! Loading a cache file runs the machine code in it, so the cache is used
//! only from a directory nobody else can write to: owned by this user and
//! not writable by group or others (created `0700`). A cache directory that
//! fails the check (say one another user created first under `/tmp`) is
//! ignored with a warning: components are compiled in memory, and nothing
//! is read from it or written to it.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Loads a component, from the cache when possible.
pub struct ComponentCache {
    dir: PathBuf,
    engine_hash: String,
    /// The directory passed [`private_dir`] when the cache was made.
    usable: bool,
}

/// A per-user cache directory named `name` for commands without a data
/// directory (`weft plugin test`, `weft demo`): under `$XDG_CACHE_HOME` or
/// `~/.cache`, where no other user can plant anything; the system's temporary
/// directory (with the user id in the name) only when neither is known.
pub fn user_cache_dir(name: &str) -> std::path::PathBuf {
    let home_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(std::path::PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|home| home.join(".cache"))
        });
    match home_cache {
        Some(dir) => dir.join("weft").join(name),
        None => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("weft-{name}-{uid}"))
        }
    }
}

/// Makes sure `dir` exists and only this user can write to it: creates it
/// `0700` if it is missing; an existing one must be owned by this user and
/// not writable by group or others. Returns why not, if it is not.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    // The entry itself, not what a link points at: a link someone else
    // planted (in /tmp, say) could be re-pointed after this check, and every
    // later load would resolve it again.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if meta.file_type().is_symlink() {
        return Err("a symbolic link: give the real directory".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "owned by uid {}, not by this user ({me})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

impl ComponentCache {
    /// A cache in `dir` for `engine`.
    pub fn new(engine: &Engine, dir: &Path) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let usable = match private_dir(dir) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(dir = %dir.display(), reason = %why, "not using the compiled-component cache: it must be a directory only this user can write to; plugins are compiled at every start");
                false
            }
        };
        ComponentCache {
            dir: dir.to_path_buf(),
            engine_hash: format!("{:016x}", hasher.finish()),
            usable,
        }
    }

    /// The cache file for these component bytes.
    pub fn path_for(&self, wasm: &[u8]) -> PathBuf {
        let digest = hex::encode(Sha256::digest(wasm));
        self.dir
            .join(format!("{digest}-{}.cwasm", self.engine_hash))
    }

    /// Compiles `wasm` or loads its cached compilation. Returns the component
    /// and whether it came from the cache.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> wasmtime::Result<(Component, bool)> {
        if !self.usable {
            let compiled = engine.precompile_component(wasm)?;
            // SAFETY: `compiled` was just produced by this engine.
            let component = unsafe { Component::deserialize(engine, &compiled)? };
            return Ok((component, false));
        }
        let path = self.path_for(wasm);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash, into a directory only
            // this user can write to ([`private_dir`]); deserialize checks
            // the header as well.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache file")
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|()| {
            let tmp = path.with_extension(format!(
                "tmp{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::write(&tmp, &compiled)?;
            std::fs::rename(&tmp, &path)
        }) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the component cache");
        }
        // SAFETY: `compiled` was just produced by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_a_directory_nobody_else_can_write_to_is_used() {
        let root = tempfile::tempdir().unwrap();
        // Missing: created 0700.
        let fresh = root.path().join("a/b/cache");
        private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // Readable by others is fine; writable by others is not.
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&shared).unwrap();
        for mode in [0o777, 0o775, 0o1777] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = private_dir(&shared).unwrap_err();
            assert!(why.contains("writable by group or others"), "{why}");
        }
        let file = root.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(private_dir(&file).unwrap_err(), "not a directory");
        // A link is refused even to a good directory: it could be re-pointed.
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(private_dir(&link).unwrap_err().contains("symbolic link"));
    }
}
