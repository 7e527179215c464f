//! The agent's own entries in the audit ledger. Available from T0.
//!
//! The host already records every capability call; use these for what only the agent knows:
//! why it chose what it did, and how sure it was.

use crate::Error;
use crate::bindings::warden::agent::ledger as wit;

/// Records a free-form note.
pub fn note(message: &str) -> Result<(), Error> {
    Ok(wit::note(message)?)
}

/// Records a decision about `action`, with the agent's confidence in it (`0.0..=1.0`).
pub fn decision(action: &str, decision: &str, confidence: f32) -> Result<(), Error> {
    Ok(wit::decision(action, decision, confidence)?)
}
