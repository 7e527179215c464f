//! Signed components: ed25519 signatures in the wasm-signatures custom-section format
//! (the `signature` section [`wasmsign2`] reads and writes), so `wasmsign2 verify` checks what
//! `warden sign` wrote and the other way round.
//!
//! The tier table says which tiers require a signature and by which trusted keys
//! (`signed_by = ["release"]` names `policies/keys/release.pub`); registration and every load
//! check it ([`Signatures::check`]) and record the signer. A verdict is cached by the
//! component's digest: the bytes a digest names never change.
//!
//! ```
//! use warden::signing::{self, Keyring, Verdict};
//! # let dir = tempfile::tempdir().unwrap();
//! let pair = signing::generate(dir.path(), "release").unwrap();
//! let component = wat::parse_str("(component (core module))").unwrap();
//! let signed = signing::sign(&component, &pair.secret).unwrap();
//! let keyring = Keyring::from_dir(dir.path()).unwrap();
//! assert_eq!(signing::verify(&signed, &keyring), Verdict::Signed(vec!["release".into()]));
//! assert_eq!(signing::verify(&component, &keyring), Verdict::Unsigned);
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmsign2::{KeyPair, PublicKey, PublicKeySet, SecretKey, WSError};

/// What signing and key handling refuse.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// A key or component file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file could not be written.
    #[error("cannot write `{path}`: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file holds no ed25519 key wasmsign2 reads (PEM, DER or raw bytes).
    #[error("`{path}` is not an ed25519 {kind} key (PEM, DER or raw bytes): {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// `public` or `secret`.
        kind: &'static str,
        /// What wasmsign2 said.
        message: String,
    },
    /// The bytes are no WebAssembly module or component.
    #[error("not a WebAssembly component or module: {message}")]
    BadComponent {
        /// What wasmsign2 said.
        message: String,
    },
    /// A key name that is not a plain file name.
    #[error(
        "invalid key name `{name}`: expected 1 to 64 of a-z, 0-9, `-` and `_` (it names `<name>.pub` in `policies/keys/`)"
    )]
    BadName {
        /// The name given.
        name: String,
    },
    /// `keys generate` would overwrite a key.
    #[error("`{path}` exists: a key is never overwritten; choose another name or remove it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// A public key the host trusts, by the name of its file in `policies/keys/`.
#[derive(Clone)]
pub struct TrustedKey {
    /// The file's stem: `release` for `release.pub`.
    pub name: String,
    /// `sha256:` of the raw 32-byte key, first 16 hex digits: how rows and `agents show`
    /// name the key without its name's context.
    pub fingerprint: String,
    key: PublicKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKey({}, {})", self.name, self.fingerprint)
    }
}

/// The trusted public keys: every `*.pub` file of a directory (`policies/keys/`).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<TrustedKey>,
}

/// Whether `name` may name a key file.
fn check_name(name: &str) -> Result<(), SigningError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(SigningError::BadName {
            name: crate::text::clip(&name.escape_debug().to_string(), 80),
        })
    }
}

fn fingerprint(key: &PublicKey) -> String {
    let digest: [u8; 32] = Sha256::digest(key.to_bytes()).into();
    format!("sha256:{}", &hex::encode(digest)[..16])
}

impl Keyring {
    /// No trusted keys.
    pub fn empty() -> Keyring {
        Keyring::default()
    }

    /// Every `<name>.pub` in `dir` (PEM, DER or raw); a directory that does not exist is an
    /// empty keyring. A file that holds no key is an error naming it.
    pub fn from_dir(dir: &Path) -> Result<Keyring, SigningError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Keyring::empty());
            }
            Err(source) => {
                return Err(SigningError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| SigningError::Read {
                path: dir.to_path_buf(),
                source,
            })?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("pub") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            check_name(name)?;
            let bytes = std::fs::read(&path).map_err(|source| SigningError::Read {
                path: path.clone(),
                source,
            })?;
            let key = PublicKey::from_any(&bytes).map_err(|e| SigningError::BadKey {
                path: path.clone(),
                kind: "public",
                message: e.to_string(),
            })?;
            keys.push(TrustedKey {
                name: name.to_string(),
                fingerprint: fingerprint(&key),
                key,
            });
        }
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Keyring { keys })
    }

    /// The key named `name`.
    pub fn get(&self, name: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The keys, by name.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Whether the keyring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The files `warden keys generate` wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// `<name>.key`: the secret key (PEM, mode 0600). Keep it out of `policies/keys/`.
    pub secret: PathBuf,
    /// `<name>.pub`: the public key (PEM), what `policies/keys/` holds.
    pub public: PathBuf,
    /// Its fingerprint.
    pub fingerprint: String,
}

/// Generate an ed25519 key pair as `<dir>/<name>.key` and `<dir>/<name>.pub`; refuses to
/// overwrite either.
pub fn generate(dir: &Path, name: &str) -> Result<GeneratedKey, SigningError> {
    check_name(name)?;
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    for path in [&secret, &public] {
        if path.exists() {
            return Err(SigningError::Exists { path: path.clone() });
        }
    }
    let pair = KeyPair::generate();
    write_new(&secret, pair.sk.to_pem().as_bytes(), 0o600)?;
    write_new(&public, pair.pk.to_pem().as_bytes(), 0o644)?;
    Ok(GeneratedKey {
        secret,
        public,
        fingerprint: fingerprint(&pair.pk),
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SigningError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|source| SigningError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// `component` signed with the secret key in `key_file` (a signature it already had is
/// replaced).
pub fn sign(component: &[u8], key_file: &Path) -> Result<Vec<u8>, SigningError> {
    let bytes = std::fs::read(key_file).map_err(|source| SigningError::Read {
        path: key_file.to_path_buf(),
        source,
    })?;
    let key = SecretKey::from_any(&bytes).map_err(|e| SigningError::BadKey {
        path: key_file.to_path_buf(),
        kind: "secret",
        message: e.to_string(),
    })?;
    let module = wasmsign2::Module::deserialize(&mut &component[..]).map_err(|e| {
        SigningError::BadComponent {
            message: e.to_string(),
        }
    })?;
    let signed = key
        .sign(module, None)
        .map_err(|e| SigningError::BadComponent {
            message: e.to_string(),
        })?;
    let mut out = Vec::with_capacity(component.len() + 160);
    signed
        .serialize(&mut out)
        .map_err(|e| SigningError::BadComponent {
            message: e.to_string(),
        })?;
    Ok(out)
}

/// What a component's signature says against a keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Validly signed by these trusted keys (by name, sorted).
    Signed(Vec<String>),
    /// No signature section.
    Unsigned,
    /// A signature that no trusted key verifies: the component was altered after signing,
    /// or signed by a key the keyring does not hold. Why, as wasmsign2 saw it.
    Invalid(String),
}

/// Check `component`'s signature against every key of `keyring`.
pub fn verify(component: &[u8], keyring: &Keyring) -> Verdict {
    let set = PublicKeySet::new(keyring.keys.iter().map(|k| k.key.clone()).collect());
    match set.verify(&mut &component[..], None) {
        Ok(valid) => {
            let mut names: Vec<String> = keyring
                .keys
                .iter()
                .filter(|k| valid.contains(&k.key))
                .map(|k| k.name.clone())
                .collect();
            names.sort();
            if names.is_empty() {
                Verdict::Invalid("no trusted key signed it".into())
            } else {
                Verdict::Signed(names)
            }
        }
        Err(WSError::NoSignatures) => Verdict::Unsigned,
        Err(WSError::VerificationFailed) => Verdict::Invalid(
            "its signature does not verify with any trusted key (altered after signing, or signed by a key `policies/keys/` does not hold)".into(),
        ),
        Err(error) => Verdict::Invalid(format!("its signature cannot be read: {error}")),
    }
}

/// What a tier requires of a component's signature (`signed_by` in the tier table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Trusted keys, one of which must have signed; empty: no signature is required.
    pub keys: Vec<String>,
}

impl Requirement {
    /// Whether a signature is required.
    pub fn is_required(&self) -> bool {
        !self.keys.is_empty()
    }
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("`{k}` (policies/keys/{k}.pub)"))
            .collect();
        write!(f, "a signature by {}", names.join(" or "))
    }
}

/// Why a load is refused for its signature (pure: [`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// The tier requires a signature and there is none.
    Missing,
    /// There is a signature, but not by a key the tier trusts, or it does not verify.
    Untrusted(String),
}

/// Whether a component with `verdict` may load under `requirement`: the signer to record
/// (the first of the tier's keys that signed; `None` when nothing is required and nothing
/// trusted signed), or why not.
pub fn decide(
    requirement: &Requirement,
    verdict: &Verdict,
) -> Result<Option<String>, SignatureRefusal> {
    let signer = match verdict {
        Verdict::Signed(names) if requirement.is_required() => requirement
            .keys
            .iter()
            .find(|k| names.contains(k))
            .cloned()
            .ok_or_else(|| {
                SignatureRefusal::Untrusted(format!(
                    "it is signed by {}, a key this tier does not trust",
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?,
        Verdict::Signed(names) => return Ok(names.first().cloned()),
        Verdict::Unsigned if requirement.is_required() => return Err(SignatureRefusal::Missing),
        Verdict::Invalid(why) if requirement.is_required() => {
            return Err(SignatureRefusal::Untrusted(why.clone()));
        }
        Verdict::Unsigned | Verdict::Invalid(_) => return Ok(None),
    };
    Ok(Some(signer))
}

/// Verdicts by component digest, against one keyring: a load verifies a component's
/// signature once per process.
#[derive(Debug, Default)]
pub struct Signatures {
    keyring: Arc<Keyring>,
    cache: Mutex<HashMap<String, Verdict>>,
}

/// Verdicts kept at most; past it the cache is cleared (a host loads far fewer components).
const MAX_CACHED: usize = 4096;

impl Signatures {
    /// Verdicts against `keyring`.
    pub fn new(keyring: Arc<Keyring>) -> Signatures {
        Signatures {
            keyring,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The signer to record for component `digest` loading under `requirement`, or why it
    /// may not load ([`decide`] on the cached [`Signatures::verdict`]). With no trusted keys
    /// and nothing required there is nothing to find: the component is not parsed (a host
    /// without keys pays no verification on a first load).
    pub fn check(
        &self,
        requirement: &Requirement,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Option<TrustedKey>, SignatureRefusal> {
        if self.keyring.is_empty() && !requirement.is_required() {
            return Ok(None);
        }
        let signer = decide(requirement, &self.verdict(digest, bytes))?;
        Ok(signer.and_then(|name| self.keyring.get(&name).cloned()))
    }

    /// The verdict on component `digest` (whose bytes are `bytes`), cached.
    pub fn verdict(&self, digest: &str, bytes: &[u8]) -> Verdict {
        if let Some(found) = self.cache.lock().get(digest) {
            return found.clone();
        }
        let verdict = verify(bytes, &self.keyring);
        let mut cache = self.cache.lock();
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(digest.to_string(), verdict.clone());
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Vec<u8> {
        wat::parse_str("(component (core module (func (export \"f\"))))").unwrap()
    }

    #[test]
    fn good_unsigned_wrong_key_and_tampered_signatures_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let release = generate(dir.path(), "release").unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = generate(other_dir.path(), "other").unwrap();
        let keyring = Keyring::from_dir(dir.path()).unwrap();
        let plain = component();
        let signed = sign(&plain, &release.secret).unwrap();
        assert_eq!(
            verify(&signed, &keyring),
            Verdict::Signed(vec!["release".into()])
        );
        assert_eq!(verify(&plain, &keyring), Verdict::Unsigned);
        let wrong = sign(&plain, &other.secret).unwrap();
        assert!(matches!(verify(&wrong, &keyring), Verdict::Invalid(_)));
        // One byte of the code changed after signing.
        let mut tampered = signed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(verify(&tampered, &keyring), Verdict::Invalid(_)));
        // The signed component is still a component wasmtime reads.
        let engine = wasmtime::Engine::default();
        wasmtime::component::Component::new(&engine, &signed).unwrap();
    }

    #[test]
    fn a_tier_decides_on_the_verdict() {
        let none = Requirement::default();
        let release = Requirement {
            keys: vec!["release".into()],
        };
        let signed = Verdict::Signed(vec!["ci".into(), "release".into()]);
        assert_eq!(decide(&none, &Verdict::Unsigned), Ok(None));
        assert_eq!(decide(&none, &signed), Ok(Some("ci".into())));
        assert_eq!(decide(&release, &signed), Ok(Some("release".into())));
        assert_eq!(
            decide(&release, &Verdict::Unsigned),
            Err(SignatureRefusal::Missing)
        );
        assert!(matches!(
            decide(&release, &Verdict::Signed(vec!["ci".into()])),
            Err(SignatureRefusal::Untrusted(why)) if why.contains("`ci`")
        ));
        assert!(matches!(
            decide(&release, &Verdict::Invalid("x".into())),
            Err(SignatureRefusal::Untrusted(_))
        ));
    }

    #[test]
    fn with_no_trusted_key_and_nothing_required_a_load_verifies_nothing() {
        let none = Signatures::new(Arc::new(Keyring::empty()));
        assert!(matches!(
            none.check(&Requirement::default(), "sha256:x", b"any"),
            Ok(None)
        ));
        assert!(none.cache.lock().is_empty(), "nothing was parsed or cached");
        // A requirement is checked even then: nothing can satisfy it.
        let release = Requirement {
            keys: vec!["release".into()],
        };
        assert!(none.check(&release, "sha256:x", &component()).is_err());
    }

    #[test]
    fn keys_are_never_overwritten_and_names_are_plain() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), "a").unwrap();
        assert!(matches!(
            generate(dir.path(), "a"),
            Err(SigningError::Exists { .. })
        ));
        assert!(matches!(
            generate(dir.path(), "../x"),
            Err(SigningError::BadName { .. })
        ));
        let mode = std::fs::metadata(dir.path().join("a.key"))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }
}
