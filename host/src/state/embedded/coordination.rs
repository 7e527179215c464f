//! [`Coordination`] on this backend: being written; every call fails until then.

use async_trait::async_trait;

use super::{BACKEND, EmbeddedState};
use crate::state::StateError;
use crate::state::coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, Resolution,
    ResolveOutcome, Section, Vote,
};

fn pending<T>() -> Result<T, StateError> {
    Err(StateError::Backend {
        backend: BACKEND,
        source: "coordination is not available on this backend yet".into(),
    })
}

#[async_trait]
impl Coordination for EmbeddedState {
    async fn board_write(&self, _: &str, _: Section, _: &str, _: &str) -> Result<(), StateError> {
        pending()
    }
    async fn board_read(&self, _: &str, _: Section, _: &str) -> Result<Option<String>, StateError> {
        pending()
    }
    async fn board_entries(
        &self,
        _: &str,
        _: Section,
    ) -> Result<Vec<(String, String)>, StateError> {
        pending()
    }
    async fn send_message(&self, _: &str, _: &NewMessage<'_>) -> Result<u64, StateError> {
        pending()
    }
    async fn receive_messages(
        &self,
        _: &str,
        _: &str,
        _: usize,
    ) -> Result<Vec<Message>, StateError> {
        pending()
    }
    async fn messages(&self, _: &str) -> Result<Vec<Message>, StateError> {
        pending()
    }
    async fn propose(&self, _: &str, _: &NewProposal<'_>) -> Result<String, StateError> {
        pending()
    }
    async fn cast_vote(&self, _: &str, _: &str, _: &Vote) -> Result<CastOutcome, StateError> {
        pending()
    }
    async fn resolve_proposal(
        &self,
        _: &str,
        _: &str,
        _: &Resolution,
    ) -> Result<ResolveOutcome, StateError> {
        pending()
    }
    async fn proposal(&self, _: &str, _: &str) -> Result<Option<Proposal>, StateError> {
        pending()
    }
    async fn proposals(&self, _: &str) -> Result<Vec<Proposal>, StateError> {
        pending()
    }
}
