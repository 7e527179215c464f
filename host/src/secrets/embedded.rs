//! [`SecretBackend`] in memory or in a `0600` JSON file in the data directory.
//!
//! The file is `{"version":1,"secrets":{"<path>":"<value>"}}`. It is rewritten atomically
//! (temporary file, `fsync`, `rename`), so a crash leaves either the old or the new secrets,
//! never a mix. Another process (`warden secrets set`) may rewrite it while a host runs: the
//! host reloads it when it changed at the next login, list or put.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::{SecretBackend, SecretSession, SecretsError, validate_path};
use crate::tier::Tier;

const BACKEND: &str = "embedded";
const FORMAT_VERSION: u32 = 1;
/// Longest session TTL: beyond it `SystemTime` arithmetic is not worth trusting.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The built-in [`SecretBackend`].
#[derive(Clone)]
pub struct EmbeddedSecrets {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` in memory.
    file: Option<PathBuf>,
    values: RwLock<BTreeMap<String, String>>,
    /// Serialises reloads and rewrites of the file; holds the identity of the version loaded.
    disk: Mutex<Option<Fingerprint>>,
}

/// Identifies one version of the file cheaply. Every rewrite renames a new inode into place,
/// so the inode alone detects our own writers; size and mtime catch editors writing in place.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Fingerprint {
    fn of(metadata: &fs::Metadata) -> Fingerprint {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Fingerprint {
            inode,
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsFile {
    version: u32,
    secrets: BTreeMap<String, String>,
}

impl std::fmt::Debug for EmbeddedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSecrets")
            .field("file", &self.shared.file)
            .field("secrets", &self.shared.values.read().len())
            .finish()
    }
}

impl EmbeddedSecrets {
    /// An empty store in memory, for embedders and tests.
    pub fn in_memory() -> EmbeddedSecrets {
        EmbeddedSecrets::from_parts(None, BTreeMap::new(), None)
    }

    /// Open the secrets file, creating it (mode `0600`) if it does not exist. Refuses a file
    /// that group or others may access: secrets there are already exposed, and silently
    /// using them would hide that.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedSecrets, SecretsError> {
        let path = path.as_ref();
        create_if_missing(path)?;
        let (values, fingerprint) = load(path)?;
        Ok(EmbeddedSecrets::from_parts(
            Some(path.to_path_buf()),
            values,
            Some(fingerprint),
        ))
    }

    fn from_parts(
        file: Option<PathBuf>,
        values: BTreeMap<String, String>,
        fingerprint: Option<Fingerprint>,
    ) -> EmbeddedSecrets {
        EmbeddedSecrets {
            shared: Arc::new(Shared {
                file,
                values: RwLock::new(values),
                disk: Mutex::new(fingerprint),
            }),
        }
    }

    /// Run file work on the blocking pool; nothing to do in memory.
    async fn with_file<T, F>(&self, op: F) -> Result<Option<T>, SecretsError>
    where
        T: Send + 'static,
        F: FnOnce(&Shared, &Path) -> Result<T, SecretsError> + Send + 'static,
    {
        if self.shared.file.is_none() {
            return Ok(None);
        }
        let shared = Arc::clone(&self.shared);
        let result = tokio::task::spawn_blocking(move || match &shared.file {
            Some(path) => op(&shared, path).map(Some),
            None => Ok(None),
        })
        .await;
        match result {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(join) => Err(SecretsError::Backend {
                backend: BACKEND,
                source: Box::new(join),
            }),
        }
    }

    async fn reload_if_changed(&self) -> Result<(), SecretsError> {
        self.with_file(|shared, path| {
            let mut disk = shared.disk.lock();
            shared.reload_locked(path, &mut disk)
        })
        .await?;
        Ok(())
    }
}

impl Shared {
    /// Reload the file if it is not the version last loaded or written. Holds `disk`.
    fn reload_locked(
        &self,
        path: &Path,
        disk: &mut Option<Fingerprint>,
    ) -> Result<(), SecretsError> {
        let metadata = fs::metadata(path).map_err(io_error("read", path))?;
        if *disk == Some(Fingerprint::of(&metadata)) {
            return Ok(());
        }
        let (values, fingerprint) = load(path)?;
        *self.values.write() = values;
        *disk = Some(fingerprint);
        Ok(())
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SecretsError {
    let path = path.to_path_buf();
    move |source| SecretsError::Io {
        action,
        path,
        source,
    }
}

fn corrupt(path: &Path, problem: impl Into<String>) -> SecretsError {
    SecretsError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Create an empty secrets file with mode `0600` unless one exists. `create_new` makes this
/// race-free against another process doing the same.
fn create_if_missing(path: &Path) -> Result<(), SecretsError> {
    let mut file = match private_options().create_new(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_error("create", path)(e)),
    };
    let empty = serialize(&BTreeMap::new()).map_err(|e| corrupt(path, e.to_string()))?;
    file.write_all(&empty)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", path))
}

fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Read and check the file. Permissions are checked on the opened handle, so the file
/// checked is the file read.
fn load(path: &Path) -> Result<(BTreeMap<String, String>, Fingerprint), SecretsError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let metadata = file.metadata().map_err(io_error("read", path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(io_error("read", path))?;
    let fingerprint = Fingerprint::of(&metadata);
    // A file another process has just created but not yet written.
    if text.is_empty() {
        return Ok((BTreeMap::new(), fingerprint));
    }
    let parsed: SecretsFile =
        serde_json::from_str(&text).map_err(|e| corrupt(path, e.to_string()))?;
    if parsed.version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!("version {} is not supported", parsed.version),
        ));
    }
    for key in parsed.secrets.keys() {
        validate_path(key).map_err(|e| corrupt(path, e.to_string()))?;
    }
    Ok((parsed.secrets, fingerprint))
}

fn serialize(secrets: &BTreeMap<String, String>) -> serde_json::Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        version: u32,
        secrets: &'a BTreeMap<String, String>,
    }
    let mut bytes = serde_json::to_vec_pretty(&Borrowed {
        version: FORMAT_VERSION,
        secrets,
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Replace the file atomically: write a `0600` sibling, `fsync` it, rename it over the file,
/// `fsync` the directory. On failure the old file is untouched and the sibling removed.
fn write_atomic(
    path: &Path,
    secrets: &BTreeMap<String, String>,
) -> Result<Fingerprint, SecretsError> {
    let bytes = serialize(secrets).map_err(|e| corrupt(path, e.to_string()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "secrets".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = (|| -> io::Result<()> {
        let mut file = private_options().create_new(true).open(&temp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error("write", path)(source));
    }
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the directory of", path))?;
    let metadata = fs::metadata(path).map_err(io_error("read", path))?;
    Ok(Fingerprint::of(&metadata))
}

#[async_trait]
impl SecretBackend for EmbeddedSecrets {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn login(
        &self,
        agent: &str,
        tier: Tier,
        ttl: Duration,
    ) -> Result<Arc<dyn SecretSession>, SecretsError> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(SecretsError::InvalidTtl { ttl });
        }
        let expires_at = SystemTime::now()
            .checked_add(ttl)
            .ok_or(SecretsError::InvalidTtl { ttl })?;
        self.reload_if_changed().await?;
        Ok(Arc::new(EmbeddedSession {
            agent: agent.to_string(),
            tier,
            expires_at,
            revoked: AtomicBool::new(false),
            shared: Arc::clone(&self.shared),
        }))
    }

    async fn put(&self, path: &str, value: &str) -> Result<(), SecretsError> {
        validate_path(path)?;
        let (path, value) = (path.to_string(), value.to_string());
        if self.shared.file.is_none() {
            self.shared.values.write().insert(path, value);
            return Ok(());
        }
        self.with_file(move |shared, file| {
            let mut disk = shared.disk.lock();
            // Start from what is on disk, so a concurrent `warden secrets set` is kept.
            shared.reload_locked(file, &mut disk)?;
            let mut next = shared.values.read().clone();
            next.insert(path, value);
            let fingerprint = write_atomic(file, &next)?;
            *shared.values.write() = next;
            *disk = Some(fingerprint);
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, SecretsError> {
        self.reload_if_changed().await?;
        Ok(self.shared.values.read().keys().cloned().collect())
    }
}

/// A session reads the store's live values: they are already in memory, so there is nothing
/// to cache.
struct EmbeddedSession {
    agent: String,
    tier: Tier,
    expires_at: SystemTime,
    revoked: AtomicBool,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSession")
            .field("agent", &self.agent)
            .field("tier", &self.tier)
            .field("expires_at", &self.expires_at)
            .field("revoked", &self.revoked.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SecretSession for EmbeddedSession {
    async fn read(&self, path: &str) -> Result<Option<String>, SecretsError> {
        validate_path(path)?;
        if self.revoked.load(Ordering::Acquire) {
            return Err(SecretsError::Revoked);
        }
        if SystemTime::now() >= self.expires_at {
            return Err(SecretsError::Expired);
        }
        Ok(self.shared.values.read().get(path).cloned())
    }

    async fn revoke(&self) -> Result<(), SecretsError> {
        self.revoked.store(true, Ordering::Release);
        Ok(())
    }

    fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn put_list_read_in_memory() {
        let store = EmbeddedSecrets::in_memory();
        store.put("db/password", "hunter2").await.unwrap();
        store.put("llm/key", "sk-1").await.unwrap();
        store.put("db/password", "hunter3").await.unwrap();
        assert_eq!(store.list().await.unwrap(), ["db/password", "llm/key"]);
        let session = store.login("a", Tier::Executor, HOUR).await.unwrap();
        assert_eq!(
            session.read("db/password").await.unwrap().as_deref(),
            Some("hunter3")
        );
        assert_eq!(session.read("db/missing").await.unwrap(), None);
        assert_eq!(store.backend(), "embedded");
    }

    #[tokio::test]
    async fn sessions_expire() {
        let store = EmbeddedSecrets::in_memory();
        store.put("k", "v").await.unwrap();
        let session = store
            .login("a", Tier::Executor, Duration::from_millis(100))
            .await
            .unwrap();
        assert!(session.expires_at() > SystemTime::now());
        assert_eq!(session.read("k").await.unwrap().as_deref(), Some("v"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(matches!(
            session.read("k").await,
            Err(SecretsError::Expired)
        ));
        let zero = store.login("a", Tier::Executor, Duration::ZERO).await;
        assert!(matches!(zero, Err(SecretsError::InvalidTtl { .. })));
    }

    #[tokio::test]
    async fn revoked_sessions_read_nothing() {
        let store = EmbeddedSecrets::in_memory();
        store.put("k", "v").await.unwrap();
        let revoked = store.login("a", Tier::Executor, HOUR).await.unwrap();
        let other = store.login("b", Tier::Executor, HOUR).await.unwrap();
        revoked.revoke().await.unwrap();
        revoked.revoke().await.unwrap();
        assert!(matches!(
            revoked.read("k").await,
            Err(SecretsError::Revoked)
        ));
        assert!(matches!(
            revoked.read("missing").await,
            Err(SecretsError::Revoked)
        ));
        assert_eq!(other.read("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn invalid_paths_are_rejected() {
        let store = EmbeddedSecrets::in_memory();
        for bad in ["", "../etc/passwd", "a//b", "Upper", "/abs"] {
            assert!(
                matches!(
                    store.put(bad, "v").await,
                    Err(SecretsError::InvalidPath { .. })
                ),
                "{bad}"
            );
        }
        let session = store.login("a", Tier::Executor, HOUR).await.unwrap();
        assert!(matches!(
            session.read("a/../b").await,
            Err(SecretsError::InvalidPath { .. })
        ));
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn debug_never_prints_values() {
        let store = EmbeddedSecrets::in_memory();
        store.put("db/password", "hunter2").await.unwrap();
        let session = store.login("a", Tier::Executor, HOUR).await.unwrap();
        session.read("db/password").await.unwrap();
        let printed = format!(
            "{store:?} {:?}",
            EmbeddedSession {
                agent: "a".into(),
                tier: Tier::Executor,
                expires_at: session.expires_at(),
                revoked: AtomicBool::new(false),
                shared: Arc::clone(&store.shared),
            }
        );
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("secrets: 1"), "{printed}");
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn file_is_created_private_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let store = EmbeddedSecrets::open(&path).unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
        assert!(store.list().await.unwrap().is_empty());
        store.put("db/password", "hunter2").await.unwrap();
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);

        let text = fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "secrets": {"db/password": "hunter2"}})
        );

        let reopened = EmbeddedSecrets::open(&path).unwrap();
        let session = reopened.login("a", Tier::Executor, HOUR).await.unwrap();
        assert_eq!(
            session.read("db/password").await.unwrap().as_deref(),
            Some("hunter2")
        );
    }

    #[tokio::test]
    async fn rewrites_are_atomic_and_keep_other_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let store = EmbeddedSecrets::open(&path).unwrap();
        store.put("a", "1").await.unwrap();
        store.put("b", "2").await.unwrap();
        store.put("a", "3").await.unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["secrets.json"], "temporary files left behind");
        let reopened = EmbeddedSecrets::open(&path).unwrap();
        let session = reopened.login("x", Tier::Executor, HOUR).await.unwrap();
        assert_eq!(session.read("a").await.unwrap().as_deref(), Some("3"));
        assert_eq!(session.read("b").await.unwrap().as_deref(), Some("2"));
    }

    /// `warden secrets set` in another process while a host runs.
    #[tokio::test]
    async fn writes_from_another_handle_are_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        let host = EmbeddedSecrets::open(&path).unwrap();
        let cli = EmbeddedSecrets::open(&path).unwrap();
        host.put("host/own", "1").await.unwrap();
        cli.put("cli/set", "2").await.unwrap();
        assert_eq!(host.list().await.unwrap(), ["cli/set", "host/own"]);
        let session = host.login("a", Tier::Executor, HOUR).await.unwrap();
        assert_eq!(session.read("cli/set").await.unwrap().as_deref(), Some("2"));
    }

    #[cfg(unix)]
    #[test]
    fn readable_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        fs::write(&path, r#"{"version":1,"secrets":{}}"#).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = EmbeddedSecrets::open(&path).unwrap_err().to_string();
        let shown = path.display();
        assert_eq!(
            err,
            format!(
                "secrets file `{shown}` is accessible by group or others (mode 644); run `chmod 600 {shown}`"
            )
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(EmbeddedSecrets::open(&path).is_ok());
    }

    #[test]
    fn malformed_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        for (text, problem) in [
            ("not json", "expected ident"),
            (
                r#"{"version":2,"secrets":{}}"#,
                "version 2 is not supported",
            ),
            (
                r#"{"version":1,"secrets":{"../x":"v"}}"#,
                "invalid secret path `../x`",
            ),
        ] {
            fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            }
            let err = EmbeddedSecrets::open(&path).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "secrets file `{}` is not a secrets file",
                    path.display()
                )),
                "{err}"
            );
            assert!(err.contains(problem), "{err}");
        }
    }
}
