//! Direct messages between the agents of a task. Available from T1.

use std::time::Duration;

use crate::Error;
use crate::bindings::warden::agent::messaging as wit;

pub use wit::{Kind, Message};

/// Sends `body` to the agent `recipient`; returns the message id.
pub fn send(recipient: &str, kind: Kind, body: &str) -> Result<u64, Error> {
    Ok(wit::send(recipient, &kind, body)?)
}

/// Sends `body` to every agent of the task; returns the message id.
pub fn broadcast(kind: Kind, body: &str) -> Result<u64, Error> {
    Ok(wit::broadcast(&kind, body)?)
}

/// Messages for this agent (sent to it, or broadcast by another agent of the task) that it
/// has not received yet, oldest first, at most 64 per call; waits up to `timeout` for the
/// first one, never past the phase deadline.
///
/// The timeout is sent in whole milliseconds, saturating at `u32::MAX`.
pub fn receive(timeout: Duration) -> Result<Vec<Message>, Error> {
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    Ok(wit::receive(timeout_ms)?)
}
