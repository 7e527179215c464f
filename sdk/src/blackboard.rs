//! Memory shared by the agents of a task. Reads from T0, writes from T1.

use crate::Error;
use crate::bindings::warden::agent::blackboard as wit;

pub use wit::Section;

/// The value under `key` in `section`, if any.
pub fn read(section: Section, key: &str) -> Result<Option<String>, Error> {
    Ok(wit::read(section, key)?)
}

/// Stores `value` under `key` in `section`.
pub fn write(section: Section, key: &str, value: &str) -> Result<(), Error> {
    Ok(wit::write(section, key, value)?)
}

/// Every `(key, value)` entry of `section`.
pub fn entries(section: Section) -> Result<Vec<(String, String)>, Error> {
    Ok(wit::entries(section)?)
}
