//! Artifact storage: content-addressed blobs, named per task by references in the state store
//! (`task:{id}:artifacts`). Content is verified against its digest on every read.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::runtime::digest;

/// One named artifact of a task, as recorded in `task:{id}:artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// The artifact's name within the task (`plan.md`, `out/report.txt`); a later
    /// reference with the same name is a newer version.
    pub name: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Content length in bytes.
    pub size: u64,
    /// The agent that wrote it (`host` for artifacts the host writes itself).
    pub author: String,
    /// When it was written, RFC 3339.
    pub created_at: String,
}

/// A blob store failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob directory cannot be created or opened.
    #[error("artifact store at `{path}` cannot be opened: {source}")]
    Open {
        /// The blob directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blob cannot be read or written.
    #[error("artifact store i/o failed for `{digest}`: {source}")]
    Io {
        /// The blob's digest, `sha256:<hex>`.
        digest: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blob's content does not hash to its digest.
    #[error("artifact blob `{digest}` is corrupt: its content hashes to `{actual}`")]
    Corrupt {
        /// The digest asked for.
        digest: String,
        /// The digest of the content found.
        actual: String,
    },
}

/// Where artifact content lives. Small on purpose: names, authorship and order are kept by
/// the state store, so any byte store can serve.
pub trait BlobStore: Send + Sync + 'static {
    /// Store content; returns its digest.
    fn put(&self, bytes: &[u8]) -> Result<String, BlobError>;
    /// Content by digest, verified.
    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Whether a call may wait on I/O (a disk, a network): the host then makes it on tokio's
    /// blocking pool so it cannot hold up a phase's deadline. Default `true`; a store that
    /// only touches memory says `false` and is called in place, sparing the thread hop.
    fn blocks(&self) -> bool {
        true
    }
}

/// [`BlobStore::put`] on the blocking pool: a store may hash, write and `fsync` megabytes,
/// which must not hold up the async worker that also runs the phase's deadline. Dropped at
/// the deadline, the guest's call is cut at once; the write itself finishes in the
/// background, harmless in a content-addressed store.
pub(crate) async fn put_off_thread(
    store: &Arc<dyn BlobStore>,
    bytes: Vec<u8>,
) -> Result<String, BlobError> {
    if !store.blocks() {
        return store.put(&bytes);
    }
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || store.put(&bytes))
        .await
        .unwrap_or_else(|join| Err(blob_task_failed("(new blob)", join)))
}

/// [`BlobStore::get`] on the blocking pool, for the same reason as [`put_off_thread`].
pub(crate) async fn get_off_thread(
    store: &Arc<dyn BlobStore>,
    digest: &str,
) -> Result<Option<Vec<u8>>, BlobError> {
    if !store.blocks() {
        return store.get(digest);
    }
    let store = Arc::clone(store);
    let owned = digest.to_string();
    tokio::task::spawn_blocking(move || store.get(&owned))
        .await
        .unwrap_or_else(|join| Err(blob_task_failed(digest, join)))
}

/// A blob store that panicked on the blocking pool is an I/O failure of that blob, not a host
/// crash.
fn blob_task_failed(digest: &str, join: tokio::task::JoinError) -> BlobError {
    BlobError::Io {
        digest: digest.to_string(),
        source: std::io::Error::other(format!("the blob store's task failed: {join}")),
    }
}

/// Blobs in memory, for embedders that keep nothing on disk.
#[derive(Default)]
pub struct MemoryBlobs {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

impl BlobStore for MemoryBlobs {
    fn blocks(&self) -> bool {
        false
    }

    fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let digest = digest(bytes);
        self.blobs
            .lock()
            .entry(digest.clone())
            .or_insert_with(|| bytes.to_vec());
        Ok(digest)
    }

    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.blobs.lock().get(digest).cloned())
    }
}

/// Blobs in a directory (`<data>/blobs/<hex>`), reached only through a capability handle so
/// no name can resolve outside it.
pub struct DirBlobs {
    dir: Dir,
}

impl DirBlobs {
    /// Open the blob directory at `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<DirBlobs, BlobError> {
        let open = || -> std::io::Result<Dir> {
            std::fs::create_dir_all(path)?;
            Dir::open_ambient_dir(path, ambient_authority())
        };
        let dir = open().map_err(|source| BlobError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(DirBlobs { dir })
    }

    fn file_name(digest: &str) -> String {
        digest.strip_prefix("sha256:").unwrap_or(digest).to_string()
    }
}

impl BlobStore for DirBlobs {
    fn put(&self, bytes: &[u8]) -> Result<String, BlobError> {
        let digest = digest(bytes);
        let name = DirBlobs::file_name(&digest);
        if self.dir.exists(&name) {
            return Ok(digest);
        }
        let io = |source| BlobError::Io {
            digest: digest.clone(),
            source,
        };
        let tmp = format!("{name}.tmp-{}", uuid::Uuid::new_v4().simple());
        let mut file = self.dir.create(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.dir.rename(&tmp, &self.dir, &name).map_err(io)?;
        Ok(digest)
    }

    fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let name = DirBlobs::file_name(digest);
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        match self.dir.read(&name) {
            Ok(bytes) => {
                let actual = crate::runtime::digest(&bytes);
                if actual.strip_prefix("sha256:") != Some(name.as_str()) {
                    return Err(BlobError::Corrupt {
                        digest: digest.to_string(),
                        actual,
                    });
                }
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BlobError::Io {
                digest: digest.to_string(),
                source,
            }),
        }
    }
}

/// The latest reference per name, in first-written order: one pass, whatever the number of
/// names. A task's listing does not need it (the state store indexes the latest version of
/// each name); a run's own writes do.
pub fn latest_per_name(refs: impl IntoIterator<Item = ArtifactRef>) -> Vec<ArtifactRef> {
    let mut order: Vec<ArtifactRef> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for r in refs {
        match position.get(&r.name) {
            Some(&at) => order[at] = r,
            None => {
                position.insert(r.name.clone(), order.len());
                order.push(r);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_per_name_keeps_first_written_order_and_the_last_version() {
        let reference = |name: &str, digest: &str| ArtifactRef {
            name: name.into(),
            digest: digest.into(),
            size: 1,
            author: "a".into(),
            created_at: String::new(),
        };
        let latest = latest_per_name([
            reference("b", "1"),
            reference("a", "2"),
            reference("b", "3"),
        ]);
        let seen: Vec<(&str, &str)> = latest
            .iter()
            .map(|r| (r.name.as_str(), r.digest.as_str()))
            .collect();
        assert_eq!(seen, [("b", "3"), ("a", "2")]);
    }

    #[test]
    fn dir_blobs_roundtrip_and_detect_corruption() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::open(tmp.path()).unwrap();
        let digest = blobs.put(b"hello").unwrap();
        assert_eq!(blobs.get(&digest).unwrap().unwrap(), b"hello");
        assert!(blobs.get("sha256:../../etc/passwd").unwrap().is_none());
        std::fs::write(tmp.path().join(DirBlobs::file_name(&digest)), b"tampered").unwrap();
        assert!(matches!(blobs.get(&digest), Err(BlobError::Corrupt { .. })));
    }
}
