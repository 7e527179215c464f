//! Named artifacts of the current task. Available from T0.
//!
//! Names are `[A-Za-z0-9._-]` segments joined by `/`; the host rejects anything else (such as
//! `..`) with [`Error::Invalid`]. Deliverables listed in the packet are artifacts.
//!
//! A task may hold many artifacts (every agent of it writes there). Look names you know up
//! with [`info`] or [`get`], one call each; [`page`] reads one page of the listing, sorted by
//! name; [`list`] walks every page, so its cost grows with the task.
//!
//! Puts are bounded by the tier's quotas (bytes per artifact, per run and per task, names per
//! task); one past a quota is refused with [`Error::BudgetExhausted`], naming it.

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

/// The most artifacts one [`page`] returns; the host reads a larger `limit` as this.
pub const MAX_PAGE: u32 = 256;

/// The latest version of the artifact `name`; `None` if the task has none of that name.
pub fn info(name: &str) -> Result<Option<ArtifactInfo>, Error> {
    Ok(wit::info(name)?)
}

/// One page of the task's artifacts (the latest version of each name), sorted by name: up to
/// `limit` (at most [`MAX_PAGE`]) whose names come after `after`, from the first with `None`.
/// A page shorter than `limit.min(MAX_PAGE)` is the last; the next starts after the last name
/// of this one.
pub fn page(after: Option<&str>, limit: u32) -> Result<Vec<ArtifactInfo>, Error> {
    Ok(wit::list(after, limit)?)
}

/// Every artifact of the task, whoever wrote it, sorted by name: [`page`] after page until
/// the last. One call per [`MAX_PAGE`] artifacts, so it costs what the task holds; for names
/// you know, [`info`] is one call.
pub fn list() -> Result<Vec<ArtifactInfo>, Error> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|info: &ArtifactInfo| info.name.clone());
        let page = page(after.as_deref(), MAX_PAGE)?;
        let last = page.len() < MAX_PAGE as usize;
        all.extend(page);
        if last {
            return Ok(all);
        }
    }
}
