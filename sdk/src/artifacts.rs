//! Named artifacts of the current task. Available from T0.
//!
//! Names are `[A-Za-z0-9._-]` segments joined by `/`; the host rejects anything else (such as
//! `..`) with [`Error::Invalid`]. Deliverables listed in the packet are artifacts.

use crate::Error;
use crate::bindings::warden::agent::artifacts as wit;

pub use wit::ArtifactInfo;

/// Stores `content` as the artifact `name`; returns its digest (`sha256:<hex>`).
pub fn put(name: &str, content: &[u8]) -> Result<String, Error> {
    Ok(wit::put(name, content)?)
}

/// Stores `text` as the artifact `name`; returns its digest (`sha256:<hex>`).
pub fn put_text(name: &str, text: &str) -> Result<String, Error> {
    put(name, text.as_bytes())
}

/// The content of the artifact `name`.
pub fn get(name: &str) -> Result<Vec<u8>, Error> {
    Ok(wit::get(name)?)
}

/// The content of the artifact `name` as text; [`Error::Invalid`] if it is not UTF-8.
pub fn get_text(name: &str) -> Result<String, Error> {
    String::from_utf8(get(name)?)
        .map_err(|e| Error::Invalid(format!("artifact `{name}` is not UTF-8 text: {e}")))
}

/// Every artifact of the task, whoever wrote it.
pub fn list() -> Result<Vec<ArtifactInfo>, Error> {
    Ok(wit::list()?)
}
