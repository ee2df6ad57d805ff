//! The compiled-component cache: compiling a component takes milliseconds to
//! seconds, loading a precompiled one takes microseconds.
//!
//! A cache file is named by the SHA-256 of the component bytes and the
//! engine's compatibility hash, so a cache written by another engine
//! configuration or wasmtime version is never even tried.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Loads a component, from the cache when possible.
pub struct ComponentCache {
    dir: PathBuf,
    engine_hash: String,
}

impl ComponentCache {
    /// A cache in `dir` for `engine`.
    pub fn new(engine: &Engine, dir: &Path) -> Self {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ComponentCache {
            dir: dir.to_path_buf(),
            engine_hash: format!("{:016x}", hasher.finish()),
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
        let path = self.path_for(wasm);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash, into our private cache
            // directory; deserialize checks the header as well.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache file")
                }
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        if let Err(e) = std::fs::create_dir_all(&self.dir).and_then(|_| {
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
