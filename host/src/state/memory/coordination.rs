//! [`Coordination`] in process memory: every `blackboard:{task}:*` and `msg:{task}:*` key of
//! a task in one [`Board`], under the store's mutex like the rest of [`MemoryState`].
//!
//! Every operation is one critical section, so it is atomic against the store's other
//! handles; message and proposal ids come from the lengths of the log and the proposal list,
//! which only grow.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use crate::id::{AgentId, TaskId};

use super::MemoryState;
use crate::state::coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, ProposalRecord,
    Resolution, ResolveOutcome, Section, Vote, proposal_id, proposal_number, sort_votes,
};
use crate::state::quota::{entry_bytes, message_bytes};
use crate::state::{Admission, Once, Quota, StateError, Usage};

/// Everything under `blackboard:{task}:` and `msg:{task}:`.
#[derive(Default)]
pub(super) struct Board {
    /// `blackboard:{task}:{section}`; ordered because entries are returned sorted.
    sections: HashMap<Section, BTreeMap<String, String>>,
    /// `blackboard:{task}:usage`.
    board_usage: Usage,
    /// `msg:{task}:log`: the message with id `n` is at index `n - 1`.
    log: Vec<Message>,
    /// `msg:{task}:usage`.
    log_usage: Usage,
    /// `msg:{task}:cursors`: agent → id of the last message it received.
    cursors: HashMap<String, u64>,
    /// `blackboard:{task}:proposals` and their votes: proposal `p{n}` is at index `n - 1`, so
    /// `blackboard:{task}:proposal_seq` is the length.
    proposals: Vec<Stored>,
}

/// A proposal and `blackboard:{task}:votes:{proposal}`, in the order they were cast.
struct Stored {
    record: ProposalRecord,
    votes: Vec<Vote>,
}

impl Stored {
    fn proposal(&self) -> Proposal {
        let mut votes = self.votes.clone();
        sort_votes(&mut votes);
        Proposal {
            record: self.record.clone(),
            votes,
        }
    }
}

impl Board {
    /// The proposal `id` names, if it is well formed and was handed out.
    fn stored(&self, id: &str) -> Option<&Stored> {
        let index = proposal_index(id)?;
        self.proposals.get(index)
    }

    fn stored_mut(&mut self, id: &str) -> Option<&mut Stored> {
        let index = proposal_index(id)?;
        self.proposals.get_mut(index)
    }
}

/// Index in [`Board::proposals`] of a proposal id; `None` for a malformed one.
fn proposal_index(id: &str) -> Option<usize> {
    usize::try_from(proposal_number(id)?).ok()?.checked_sub(1)
}

/// The messages of `log` after `cursor` that are for `agent`, at most `limit`, and the
/// cursor after them: the last one picked when `limit` is reached, else the end of the log.
fn pick(log: &[Message], cursor: u64, agent: &AgentId, limit: usize) -> (Vec<Message>, u64) {
    let start = usize::try_from(cursor).unwrap_or(usize::MAX).min(log.len());
    let mut picked = Vec::new();
    let mut last = cursor;
    for message in &log[start..] {
        if picked.len() == limit {
            break;
        }
        last = message.id;
        if message.is_for(agent) {
            picked.push(message.clone());
        }
    }
    (picked, last)
}

impl MemoryState {
    /// Run `f` on the task's board if it has one.
    fn board<R>(&self, task: &TaskId, f: impl FnOnce(&Board) -> R) -> Option<R> {
        self.inner.lock().boards.get(task.as_str()).map(f)
    }

    /// Run `f` on the task's board, creating it if absent.
    fn board_mut<R>(&self, task: &TaskId, f: impl FnOnce(&mut Board) -> R) -> R {
        super::upsert(&mut self.inner.lock().boards, task, f)
    }
}

#[async_trait]
impl Coordination for MemoryState {
    async fn board_write(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let (before, old) =
                data.boards
                    .get(task.as_str())
                    .map_or((Usage::default(), None), |b| {
                        let old = b
                            .sections
                            .get(&section)
                            .and_then(|entries| entries.get(key));
                        (b.board_usage, old.map(|old| entry_bytes(key, old)))
                    });
            let after =
                before.after_write(old.is_none(), entry_bytes(key, value), old.unwrap_or(0));
            if let Err(over) = quota.admit(before, after) {
                return Ok(Admission::Refused(over));
            }
            let value = value.to_string();
            super::upsert(&mut data.boards, task, |b| {
                let entries = b.sections.entry(section).or_default();
                match entries.get_mut(key) {
                    Some(slot) => *slot = value,
                    None => {
                        entries.insert(key.to_string(), value);
                    }
                }
                b.board_usage = after;
            });
            Ok(Admission::Stored(()))
        })
    }

    async fn board_read(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
    ) -> Result<Option<String>, StateError> {
        Ok(self
            .board(task, |b| b.sections.get(&section)?.get(key).cloned())
            .flatten())
    }

    async fn board_insert(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        self.once(once, || {
            let bytes = entry_bytes(key, value);
            let value = value.to_string();
            Ok(self.board_mut(task, |b| {
                let entries = b.sections.entry(section).or_default();
                if entries.contains_key(key) {
                    return false;
                }
                entries.insert(key.to_string(), value);
                // The host's entry counts against the task's blackboard like any other.
                b.board_usage = b.board_usage.after_write(true, bytes, 0);
                true
            }))
        })
    }

    async fn board_entries(
        &self,
        task: &TaskId,
        section: Section,
    ) -> Result<Vec<(String, String)>, StateError> {
        Ok(self
            .board(task, |b| {
                b.sections
                    .get(&section)
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default())
    }

    async fn send_message(
        &self,
        task: &TaskId,
        message: &NewMessage<'_>,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission<u64>, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let before = data
                .boards
                .get(task.as_str())
                .map_or_else(Usage::default, |b| b.log_usage);
            let after = before.after_write(true, message_bytes(message.kind, message.body), 0);
            if let Err(over) = quota.admit(before, after) {
                return Ok(Admission::Refused(over));
            }
            Ok(Admission::Stored(super::upsert(
                &mut data.boards,
                task,
                |b| {
                    let id = u64::try_from(b.log.len()).unwrap_or(u64::MAX - 1) + 1;
                    b.log.push(message.with_id(id));
                    b.log_usage = after;
                    id
                },
            )))
        })
    }

    async fn receive_messages(
        &self,
        task: &TaskId,
        agent: &AgentId,
        limit: usize,
    ) -> Result<Vec<Message>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut data = self.inner.lock();
        // No board, no messages: reading must not create one.
        let Some(board) = data.boards.get_mut(task.as_str()) else {
            return Ok(Vec::new());
        };
        let cursor = board.cursors.get(agent.as_str()).copied().unwrap_or(0);
        let (picked, last) = pick(&board.log, cursor, agent, limit);
        if last != cursor {
            match board.cursors.get_mut(agent.as_str()) {
                Some(slot) => *slot = last,
                None => {
                    board.cursors.insert(agent.to_string(), last);
                }
            }
        }
        Ok(picked)
    }

    async fn rewind_inbox(
        &self,
        task: &TaskId,
        agent: &AgentId,
        after: u64,
    ) -> Result<(), StateError> {
        let mut data = self.inner.lock();
        // No board, no messages, nothing to rewind: reading must not create one.
        if let Some(board) = data.boards.get_mut(task.as_str()) {
            board.cursors.insert(agent.to_string(), after);
        }
        Ok(())
    }

    async fn messages(&self, task: &TaskId) -> Result<Vec<Message>, StateError> {
        Ok(self.board(task, |b| b.log.clone()).unwrap_or_default())
    }

    async fn propose(
        &self,
        task: &TaskId,
        proposal: &NewProposal<'_>,
        once: Option<&Once>,
    ) -> Result<String, StateError> {
        self.once(once, || {
            Ok(self.board_mut(task, |b| {
                let n = u64::try_from(b.proposals.len()).unwrap_or(u64::MAX - 1) + 1;
                let id = proposal_id(n);
                b.proposals.push(Stored {
                    record: proposal.with_id(id.clone()),
                    votes: Vec::new(),
                });
                id
            }))
        })
    }

    async fn cast_vote(
        &self,
        task: &TaskId,
        proposal_id: &str,
        vote: &Vote,
        once: Option<&Once>,
    ) -> Result<CastOutcome, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let Some(stored) = data
                .boards
                .get_mut(task.as_str())
                .and_then(|b| b.stored_mut(proposal_id))
            else {
                return Ok(CastOutcome::UnknownProposal);
            };
            if let Some(first) = stored.votes.iter().find(|v| v.agent == vote.agent) {
                return Ok(CastOutcome::AlreadyVoted(first.clone()));
            }
            stored.votes.push(vote.clone());
            Ok(CastOutcome::Recorded)
        })
    }

    async fn resolve_proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
        resolution: &Resolution,
        once: Option<&Once>,
    ) -> Result<ResolveOutcome, StateError> {
        self.once(once, || {
            let mut data = self.inner.lock();
            let Some(stored) = data
                .boards
                .get_mut(task.as_str())
                .and_then(|b| b.stored_mut(proposal_id))
            else {
                return Ok(ResolveOutcome::UnknownProposal);
            };
            if let Some(first) = &stored.record.resolution {
                return Ok(ResolveOutcome::AlreadyResolved(first.clone()));
            }
            stored.record.resolution = Some(resolution.clone());
            Ok(ResolveOutcome::Resolved)
        })
    }

    async fn proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
    ) -> Result<Option<Proposal>, StateError> {
        Ok(self
            .board(task, |b| b.stored(proposal_id).map(Stored::proposal))
            .flatten())
    }

    async fn proposals(&self, task: &TaskId) -> Result<Vec<Proposal>, StateError> {
        Ok(self
            .board(task, |b| b.proposals.iter().map(Stored::proposal).collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use crate::state::coordination::{NewMessage, Resolution, Section, Vote, VoteChoice};
    use crate::state::test_values::{agent, task};
    use crate::state::{Coordination, MemoryState, Quota};

    /// Reads, and writes that change nothing, must not create boards.
    #[tokio::test]
    async fn reads_do_not_create_boards() {
        let store = MemoryState::new();
        store
            .board_read(&task("t"), Section::Problem, "k")
            .await
            .unwrap();
        store
            .board_entries(&task("t"), Section::Problem)
            .await
            .unwrap();
        store
            .receive_messages(&task("t"), &agent("a"), 10)
            .await
            .unwrap();
        store.messages(&task("t")).await.unwrap();
        let vote = Vote {
            agent: agent("a"),
            choice: VoteChoice::Accept,
            reasoning: String::new(),
            at_ms: 0,
        };
        store
            .cast_vote(&task("t"), "p1", &vote, None)
            .await
            .unwrap();
        let resolution = Resolution {
            by: agent("a"),
            note: String::new(),
            at_ms: 0,
        };
        store
            .resolve_proposal(&task("t"), "p1", &resolution, None)
            .await
            .unwrap();
        store.proposal(&task("t"), "p1").await.unwrap();
        store.proposals(&task("t")).await.unwrap();
        assert!(store.inner.lock().boards.is_empty());

        // A receive moves the cursor past what is not for the agent; limit 0 touches nothing.
        let a = agent("a");
        let message = NewMessage {
            sender: &a,
            recipient: None,
            kind: "K",
            body: "b",
            sent_at_ms: 0,
        };
        let _ = store
            .send_message(&task("t"), &message, Quota::UNLIMITED, None)
            .await
            .unwrap();
        assert!(
            store
                .receive_messages(&task("t"), &agent("a"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.inner.lock().boards["t"].cursors["a"], 1);
        assert!(
            store
                .receive_messages(&task("t"), &agent("b"), 0)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(!store.inner.lock().boards["t"].cursors.contains_key("b"));
    }
}
