//! The wasmtime side of the host: engine, compiled-component cache, epoch ticker.

pub mod imports;
pub mod limits;
pub mod output;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How often the engine's epoch advances. Deadlines and revocations take effect within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A component that could not be compiled or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// A component file, or the compiled-component cache directory, cannot be read or created.
    #[error("cannot read component `{path}`: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    #[error(
        "`{origin}` is not a valid WebAssembly component: {message} (build agents for `wasm32-wasip2`, e.g. `cargo build --target wasm32-wasip2`)"
    )]
    /// The bytes are not a WebAssembly component wasmtime can compile.
    Invalid {
        /// Where the bytes came from (a path, or the agent they were offered for).
        origin: String,
        /// wasmtime's error.
        message: String,
    },
    /// The wasmtime engine cannot be created; wasmtime's error.
    #[error("cannot set up the wasmtime engine: {0}")]
    Engine(String),
}

/// `sha256:<hex>` of a component's bytes: the identity an agent is registered against.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Engine plus the compiled-component cache (in memory, and on disk when a directory is set).
pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    compiled: Mutex<HashMap<String, Component>>,
    /// Bytes of components already hashed, so a run of a known component costs a memcmp
    /// instead of a sha256 over the whole binary.
    sources: Mutex<HashMap<String, Arc<[u8]>>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// An engine configured for governed agents: async, epoch interruption, component model.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Runtime, ComponentError> {
        let engine =
            Engine::new(&engine_config()).map_err(|e| ComponentError::Engine(e.to_string()))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|source| ComponentError::Read {
                path: dir.clone(),
                source,
            })?;
        }
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.weak(), ticker_stop.clone());
        Ok(Runtime {
            engine,
            cache_dir,
            compiled: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            ticker_stop,
        })
    }

    /// The shared wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The digest of `bytes`. When `expected` names a component this runtime has seen and
    /// the bytes are identical to it, that digest is returned without hashing again.
    pub fn digest_of(&self, bytes: &[u8], expected: Option<&str>) -> String {
        if let Some(expected) = expected
            && let Some(known) = self.sources.lock().get(expected)
            && **known == *bytes
        {
            return expected.to_string();
        }
        let digest = digest(bytes);
        self.sources
            .lock()
            .entry(digest.clone())
            .or_insert_with(|| Arc::from(bytes));
        digest
    }

    /// The bytes of component `digest` when this runtime has hashed them already: what a
    /// replay runs without reading (and hashing) the blob store's copy again.
    pub(crate) fn known_source(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.sources.lock().get(digest).cloned()
    }

    /// Take `bytes` as component `digest` without hashing them: only for bytes a verifying
    /// store returned for that digest (`BlobStore::get`), so the run that follows costs a
    /// memcmp instead of a second sha256 over the binary.
    pub(crate) fn remember(&self, digest: &str, bytes: &[u8]) {
        self.sources
            .lock()
            .entry(digest.to_string())
            .or_insert_with(|| Arc::from(bytes));
    }

    /// Compile (or fetch from cache) the component with the given bytes and digest.
    pub fn component(
        &self,
        digest: &str,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Component, ComponentError> {
        if let Some(component) = self.compiled.lock().get(digest) {
            return Ok(component.clone());
        }
        let component = match self.load_cached(digest) {
            Some(component) => component,
            None => {
                let component =
                    Component::new(&self.engine, bytes).map_err(|e| ComponentError::Invalid {
                        origin: origin.to_string(),
                        message: format!("{e:#}"),
                    })?;
                self.store_cached(digest, &component);
                component
            }
        };
        self.compiled
            .lock()
            .insert(digest.to_string(), component.clone());
        Ok(component)
    }

    fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{hex}.cwasm")))
    }

    fn load_cached(&self, digest: &str) -> Option<Component> {
        let path = self.cache_path(digest)?;
        if !path.exists() {
            return None;
        }
        // SAFETY: the cache directory belongs to this host's data directory and files in it
        // are only written by `store_cached`, from components this engine compiled itself.
        // Wasmtime checks the engine version and configuration in the artifact header and
        // refuses a mismatch, in which case we recompile.
        #[expect(unsafe_code, reason = "deserializing a compiled component; see SAFETY")]
        let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
        match loaded {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "stale compiled component; recompiling");
                None
            }
        }
    }

    fn store_cached(&self, digest: &str, component: &Component) {
        let Some(path) = self.cache_path(digest) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(error) = write() {
            tracing::warn!(path = %path.display(), %error, "cannot cache compiled component");
        }
    }

    /// Where a component's compiled form is cached, if on disk.
    pub fn cached_file(&self, digest: &str) -> Option<PathBuf> {
        self.cache_path(digest).filter(|p| p.exists())
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// The engine configuration shared by governed and bare runs (benchmarks compare the two).
pub fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

fn spawn_epoch_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("warden-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the epoch ticker; deadlines will not fire");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_a_store_vouched_for_are_not_hashed_again() {
        let runtime = Runtime::new(None).unwrap();
        let bytes = b"not really a component";
        // A name no hash of these bytes gives: only a lookup can answer it.
        let vouched = "sha256:vouched-by-the-store";
        assert_ne!(runtime.digest_of(bytes, Some(vouched)), vouched);
        runtime.remember(vouched, bytes);
        assert_eq!(runtime.digest_of(bytes, Some(vouched)), vouched);
        assert_eq!(runtime.known_source(vouched).as_deref(), Some(&bytes[..]));
        // Other bytes under that name are hashed.
        assert_eq!(
            runtime.digest_of(b"other bytes", Some(vouched)),
            digest(b"other bytes")
        );
    }
}
