//! [`Coordination`] on SQLite, in the same three tables as the rest of [`EmbeddedState`]:
//!
//! - `blackboard:{task}:{section}`, `…:proposals`, `…:votes:{proposal}` and
//!   `msg:{task}:cursors` are `hashes` rows;
//! - `blackboard:{task}:proposal_seq` is a `strings` row without expiry;
//! - `msg:{task}:log` is one `lists` row per message, `idx` = message id − 1.
//!
//! Every read-modify-write (send, receive, propose, vote, resolve) is one `BEGIN IMMEDIATE`
//! transaction, so it is atomic against every other handle and process on the file; the
//! multi-statement reads run in a deferred transaction, so they see one snapshot.

use async_trait::async_trait;

use crate::id::{AgentId, TaskId};
use rusqlite::{Connection, params};

use super::{
    Access, EmbeddedState, OpResult, admit, get, hget, hset, now_ms, range, set, set_usage,
};
use crate::state::coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, ProposalRecord,
    Resolution, ResolveOutcome, Section, Vote, keys, proposal_id, proposal_number, sort_votes,
};
use crate::state::quota::{entry_bytes, message_bytes};
use crate::state::{Admission, Once, Quota, StateError};
use crate::state::{decode, encode};

/// A stored number that does not parse.
fn not_a_number(key: &str, field: Option<&str>, value: &str) -> StateError {
    let place = field.map_or_else(String::new, |field| format!("field `{field}` "));
    StateError::Corrupt {
        key: key.to_string(),
        message: format!("{place}holds `{value}`, expected a non-negative integer"),
    }
}

/// `HGETALL key`, sorted by field.
fn hgetall(conn: &Connection, key: &str) -> OpResult<Vec<(String, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT field, value FROM hashes WHERE key = ?1 ORDER BY field")?;
    let rows = stmt.query_map(params![key], |row| Ok((row.get(0)?, row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The votes of a proposal, in [`sort_votes`] order.
fn votes(conn: &Connection, task: &TaskId, proposal: &str) -> OpResult<Vec<Vote>> {
    let key = keys::votes(task, proposal);
    let mut votes = hgetall(conn, &key)?
        .into_iter()
        .map(|(_, json)| decode(&key, &json))
        .collect::<Result<Vec<Vote>, _>>()?;
    sort_votes(&mut votes);
    Ok(votes)
}

/// A proposal with its votes, if it exists.
fn proposal(conn: &Connection, task: &TaskId, id: &str) -> OpResult<Option<Proposal>> {
    let key = keys::proposals(task);
    let Some(json) = hget(conn, &key, id)? else {
        return Ok(None);
    };
    let record: ProposalRecord = decode(&key, &json)?;
    let votes = votes(conn, task, id)?;
    Ok(Some(Proposal { record, votes }))
}

/// `RPUSH` of the message under the next id, the list's length + 1; returns the id.
fn append(conn: &Connection, log: &str, mut message: Message) -> OpResult<u64> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(MAX(idx), -1) + 1 FROM lists WHERE key = ?1 AND idx >= 0",
    )?;
    let idx: i64 = stmt.query_row(params![log], |row| row.get(0))?;
    message.id = u64::try_from(idx).map_err(|_| not_a_number(log, None, &idx.to_string()))? + 1;
    conn.prepare_cached("INSERT INTO lists (key, idx, value) VALUES (?1, ?2, ?3)")?
        .execute(params![log, idx, encode(log, &message)?])?;
    Ok(message.id)
}

/// Up to `limit` messages for `agent` after its cursor, and the cursor moved past them.
fn receive(
    conn: &Connection,
    log: &str,
    cursors: &str,
    agent: &AgentId,
    limit: usize,
) -> OpResult<Vec<Message>> {
    let cursor = match hget(conn, cursors, agent)? {
        None => 0,
        Some(value) => value
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| not_a_number(cursors, Some(agent), &value))?,
    };
    let mut picked = Vec::new();
    let mut last = cursor;
    {
        let mut stmt = conn.prepare_cached(
            "SELECT idx, value FROM lists WHERE key = ?1 AND idx >= ?2 ORDER BY idx",
        )?;
        let mut rows = stmt.query(params![log, cursor])?;
        while picked.len() < limit {
            let Some(row) = rows.next()? else { break };
            let (idx, json): (i64, String) = (row.get(0)?, row.get(1)?);
            let message: Message = decode(log, &json)?;
            last = idx + 1;
            if message.is_for(agent) {
                picked.push(message);
            }
        }
    }
    if last != cursor {
        hset(conn, cursors, agent, &last.to_string())?;
    }
    Ok(picked)
}

/// `INCR blackboard:{task}:proposal_seq` and `HSET` of the record under the new id.
fn open_proposal(conn: &Connection, task: &TaskId, mut record: ProposalRecord) -> OpResult<String> {
    let seq_key = keys::proposal_seq(task);
    let seq = match get(conn, &seq_key, now_ms())? {
        None => 0,
        Some(value) => value
            .parse::<u64>()
            .map_err(|_| not_a_number(&seq_key, None, &value))?,
    };
    let n = seq.saturating_add(1);
    set(conn, &seq_key, &n.to_string(), None)?;
    record.id = proposal_id(n);
    hset(
        conn,
        &keys::proposals(task),
        &record.id,
        &encode(&keys::proposals(task), &record)?,
    )?;
    Ok(record.id)
}

#[async_trait]
impl Coordination for EmbeddedState {
    async fn board_write(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let (hash, scope, field, value) = (
            keys::section(task, section),
            keys::board_usage(task),
            key.to_string(),
            value.to_string(),
        );
        self.run_once(once, move |conn| {
            let old = hget(conn, &hash, &field)?.map(|old| entry_bytes(&field, &old));
            let after = match admit(conn, &scope, quota, old, entry_bytes(&field, &value))? {
                Ok(after) => after,
                Err(over) => return Ok(Admission::Refused(over)),
            };
            hset(conn, &hash, &field, &value)?;
            set_usage(conn, &scope, after)?;
            Ok(Admission::Stored(()))
        })
        .await
    }

    async fn board_read(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
    ) -> Result<Option<String>, StateError> {
        let (hash, field) = (keys::section(task, section), key.to_string());
        self.run(Access::Read, move |conn| hget(conn, &hash, &field))
            .await
    }

    async fn board_insert(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError> {
        let (hash, scope, field, value) = (
            keys::section(task, section),
            keys::board_usage(task),
            key.to_string(),
            value.to_string(),
        );
        self.run_once(once, move |conn| {
            let mut stmt = conn.prepare_cached(
                "INSERT INTO hashes (key, field, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key, field) DO NOTHING",
            )?;
            if stmt.execute(params![hash, field, value])? == 0 {
                return Ok(false);
            }
            // The host's entry counts against the task's blackboard like any other.
            if let Ok(after) = admit(
                conn,
                &scope,
                Quota::UNLIMITED,
                None,
                entry_bytes(&field, &value),
            )? {
                set_usage(conn, &scope, after)?;
            }
            Ok(true)
        })
        .await
    }

    async fn board_entries(
        &self,
        task: &TaskId,
        section: Section,
    ) -> Result<Vec<(String, String)>, StateError> {
        let hash = keys::section(task, section);
        self.run(Access::Read, move |conn| hgetall(conn, &hash))
            .await
    }

    async fn send_message(
        &self,
        task: &TaskId,
        message: &NewMessage<'_>,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission<u64>, StateError> {
        let (log, scope) = (keys::message_log(task), keys::message_usage(task));
        let bytes = message_bytes(message.kind, message.body);
        // The id is assigned inside the transaction.
        let message = message.with_id(0);
        self.run_once(once, move |conn| {
            let after = match admit(conn, &scope, quota, None, bytes)? {
                Ok(after) => after,
                Err(over) => return Ok(Admission::Refused(over)),
            };
            let id = append(conn, &log, message)?;
            set_usage(conn, &scope, after)?;
            Ok(Admission::Stored(id))
        })
        .await
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
        let (log, cursors, agent) = (
            keys::message_log(task),
            keys::message_cursors(task),
            agent.clone(),
        );
        self.run_tx(move |conn| receive(conn, &log, &cursors, &agent, limit))
            .await
    }

    async fn rewind_inbox(
        &self,
        task: &TaskId,
        agent: &AgentId,
        after: u64,
    ) -> Result<(), StateError> {
        let (cursors, agent) = (keys::message_cursors(task), agent.clone());
        self.run_tx(move |conn| hset(conn, &cursors, &agent, &after.to_string()))
            .await
    }

    async fn messages(&self, task: &TaskId) -> Result<Vec<Message>, StateError> {
        let log = keys::message_log(task);
        self.run(Access::Read, move |conn| {
            range(conn, &log, -1)?
                .iter()
                .map(|json| Ok(decode(&log, json)?))
                .collect()
        })
        .await
    }

    async fn propose(
        &self,
        task: &TaskId,
        proposal: &NewProposal<'_>,
        once: Option<&Once>,
    ) -> Result<String, StateError> {
        let task = task.clone();
        // The id is assigned inside the transaction.
        let record = proposal.with_id(String::new());
        self.run_once(once, move |conn| open_proposal(conn, &task, record))
            .await
    }

    async fn cast_vote(
        &self,
        task: &TaskId,
        proposal_id: &str,
        vote: &Vote,
        once: Option<&Once>,
    ) -> Result<CastOutcome, StateError> {
        if proposal_number(proposal_id).is_none() {
            return Ok(CastOutcome::UnknownProposal);
        }
        let (proposals, votes) = (keys::proposals(task), keys::votes(task, proposal_id));
        let (id, vote) = (proposal_id.to_string(), vote.clone());
        self.run_once(once, move |conn| {
            if hget(conn, &proposals, &id)?.is_none() {
                return Ok(CastOutcome::UnknownProposal);
            }
            // Read, then write: atomic, inside this `BEGIN IMMEDIATE`.
            if let Some(first) = hget(conn, &votes, &vote.agent)? {
                return Ok(CastOutcome::AlreadyVoted(decode(&votes, &first)?));
            }
            hset(conn, &votes, &vote.agent, &encode(&votes, &vote)?)?;
            Ok(CastOutcome::Recorded)
        })
        .await
    }

    async fn resolve_proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
        resolution: &Resolution,
        once: Option<&Once>,
    ) -> Result<ResolveOutcome, StateError> {
        if proposal_number(proposal_id).is_none() {
            return Ok(ResolveOutcome::UnknownProposal);
        }
        let proposals = keys::proposals(task);
        let (id, resolution) = (proposal_id.to_string(), resolution.clone());
        self.run_once(once, move |conn| {
            let Some(json) = hget(conn, &proposals, &id)? else {
                return Ok(ResolveOutcome::UnknownProposal);
            };
            let mut record: ProposalRecord = decode(&proposals, &json)?;
            if let Some(first) = record.resolution {
                return Ok(ResolveOutcome::AlreadyResolved(first));
            }
            record.resolution = Some(resolution);
            hset(conn, &proposals, &id, &encode(&proposals, &record)?)?;
            Ok(ResolveOutcome::Resolved)
        })
        .await
    }

    async fn proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
    ) -> Result<Option<Proposal>, StateError> {
        if proposal_number(proposal_id).is_none() {
            return Ok(None);
        }
        let (task, id) = (task.clone(), proposal_id.to_string());
        self.run(Access::Read, move |conn| {
            let tx = conn.transaction()?;
            let found = proposal(&tx, &task, &id)?;
            tx.commit()?;
            Ok(found)
        })
        .await
    }

    async fn proposals(&self, task: &TaskId) -> Result<Vec<Proposal>, StateError> {
        let task = task.clone();
        self.run(Access::Read, move |conn| {
            let tx = conn.transaction()?;
            let key = keys::proposals(&task);
            let mut records = hgetall(&tx, &key)?
                .into_iter()
                .map(|(id, json)| {
                    let n = proposal_number(&id).ok_or_else(|| StateError::Corrupt {
                        key: key.clone(),
                        message: format!("field `{id}` is not a proposal id"),
                    })?;
                    Ok((n, id, decode::<ProposalRecord>(&key, &json)?))
                })
                .collect::<OpResult<Vec<_>>>()?;
            records.sort_unstable_by_key(|(n, _, _)| *n);
            // Votes are looked up under the hash field, checked above, never under the
            // record's own `id`, which is stored data.
            let proposals = records
                .into_iter()
                .map(|(_, id, record)| {
                    let votes = votes(&tx, &task, &id)?;
                    Ok(Proposal { record, votes })
                })
                .collect::<OpResult<Vec<_>>>()?;
            tx.commit()?;
            Ok(proposals)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Two handles on one file stand in for two `warden` processes: one log, one sequence
    /// of ids, and each message delivered once between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn handles_on_one_file_share_the_message_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let handles = [
            Arc::new(EmbeddedState::open(&path).unwrap()),
            Arc::new(EmbeddedState::open(&path).unwrap()),
        ];
        let senders: Vec<_> = (0..4)
            .map(|i| {
                let store = Arc::clone(&handles[i % 2]);
                tokio::spawn(async move {
                    let sender = AgentId::new(&format!("sender-{i}")).unwrap();
                    let task = TaskId::new("t").unwrap();
                    let mut ids = Vec::new();
                    for _ in 0..25 {
                        let message = NewMessage {
                            sender: &sender,
                            recipient: None,
                            kind: "K",
                            body: "b",
                            sent_at_ms: 0,
                        };
                        let sent = store
                            .send_message(&task, &message, Quota::UNLIMITED, None)
                            .await;
                        ids.push(sent.unwrap().into_result().unwrap());
                    }
                    ids
                })
            })
            .collect();
        let mut ids = Vec::new();
        for sender in senders {
            ids.extend(sender.await.unwrap());
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=100).collect::<Vec<u64>>());

        let receivers: Vec<_> = (0..4)
            .map(|i| {
                let store = Arc::clone(&handles[i % 2]);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let (task, reader) =
                        (TaskId::new("t").unwrap(), AgentId::new("reader").unwrap());
                    loop {
                        let batch = store.receive_messages(&task, &reader, 3).await.unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(batch.into_iter().map(|m| m.id));
                    }
                })
            })
            .collect();
        let mut delivered = Vec::new();
        for receiver in receivers {
            delivered.extend(receiver.await.unwrap());
        }
        delivered.sort_unstable();
        assert_eq!(delivered, (1..=100).collect::<Vec<u64>>());
    }
}
