//! The agent's own key/value state. Available from T0.
//!
//! State survives the phases of a run and the runs of the same agent; it is not shared with
//! other agents (use [`blackboard`](crate::blackboard) for that).

use crate::Error;
use crate::bindings::warden::agent::state as wit;

/// The value stored under `key`, if any.
pub fn get(key: &str) -> Result<Option<String>, Error> {
    Ok(wit::get(key)?)
}

/// Stores `value` under `key`, replacing any previous value.
pub fn set(key: &str, value: &str) -> Result<(), Error> {
    Ok(wit::set(key, value)?)
}

/// Removes `key`; returns whether it was present.
pub fn delete(key: &str) -> Result<bool, Error> {
    Ok(wit::delete(key)?)
}

/// All keys of the agent's state.
pub fn keys() -> Result<Vec<String>, Error> {
    Ok(wit::keys()?)
}
