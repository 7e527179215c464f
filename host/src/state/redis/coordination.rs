//! [`Coordination`] on Redis or DragonflyDB: the `blackboard:{task}:*` and `msg:{task}:*`
//! keys of [`coordination`](crate::state::coordination), verbatim.
//!
//! Blackboard sections are read with plain `HGET`/`HGETALL`. Everything that reads and then
//! writes is a Lua script, atomic on the server and one round trip:
//!
//! - write: the quota check of `blackboard:{task}:usage`, then `HSET` of the entry and of
//!   the usage (the script the agent's own state uses too);
//! - send: the quota check of `msg:{task}:usage`; then `LLEN` + 1 is the id; the script
//!   writes it in front of the rest of the message's JSON and `RPUSH`es the result, so the
//!   stored JSON carries its id, as on every backend, and the id always equals the message's
//!   position + 1;
//! - receive: reads the agent's cursor, scans the log after it (`LRANGE` in batches), keeps
//!   what [`Message::is_for`] the agent (decoding with `cjson`), stores the new cursor and
//!   returns the picked messages' JSON as stored;
//! - propose: `INCR` of `proposal_seq`, then `HSET` of the record under `p{n}`;
//! - vote: `HEXISTS` of the proposal, then `HSETNX` of the vote, or the vote that won;
//! - resolve: a compare-and-set of the record. The host edits the JSON (so the script need
//!   not re-encode it, which `cjson` would do with its own number formatting) and the script
//!   writes it only if the stored record is still the one the host read; a lost race
//!   re-reads, and then finds the record resolved.
//!
//! Every key a script touches is in its `KEYS`, as DragonflyDB requires. Ids are validated
//! before any key is built; a malformed proposal id is an unknown proposal, never a key.
//! The scripts are loaded on first use (one extra round trip per script per server).

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use async_trait::async_trait;

use crate::id::{AgentId, TaskId};
use redis::{AsyncCommands, Script};

use super::{BACKEND, QUOTA_LUA, RedisState, Write, admission, with_receipt};
use crate::state::coordination::{
    CastOutcome, Coordination, Message, NewMessage, NewProposal, Proposal, ProposalRecord,
    Resolution, ResolveOutcome, Section, Vote, keys, proposal_number, sort_votes,
};
use crate::state::quota::message_bytes;
use crate::state::{Admission, Once, Quota, StateError, keys as state_keys};
use crate::state::{decode, encode};

/// `KEYS`: log, usage. `ARGV`: the message's JSON after `{"id":<id>`, the bytes it counts,
/// max entries, max bytes. Returns `{'stored', id}` or the quota's refusal.
const SEND_LUA: &str = r#"
local entries, bytes = usage(2)
local new_b = bytes + tonumber(ARGV[2])
local no = refused(entries, bytes, entries + 1, new_b, tonumber(ARGV[3]), tonumber(ARGV[4]))
if no then return no end
local id = redis.call('LLEN', KEYS[1]) + 1
redis.call('RPUSH', KEYS[1], string.format('{"id":%d', id) .. ARGV[1])
set_usage(2, entries + 1, new_b)
return {'stored', string.format('%d', id)}
"#;

/// `KEYS`: log, cursors. `ARGV`: agent, limit (at least 1). Returns the JSON of up to
/// `limit` messages for the agent after its cursor, oldest first, and moves the cursor past
/// them (to the end of the log when fewer match).
const RECEIVE_LUA: &str = r#"
local agent, limit = ARGV[1], tonumber(ARGV[2])
local stored = redis.call('HGET', KEYS[2], agent)
local cursor = 0
if stored then
  cursor = tonumber(stored)
  if not cursor or cursor < 0 or cursor % 1 ~= 0 then
    return redis.error_reply('ERR corrupt cursor of ' .. agent .. ' in ' .. KEYS[2])
  end
end
local len = redis.call('LLEN', KEYS[1])
local picked, last = {}, cursor
while last < len and #picked < limit do
  local batch = redis.call('LRANGE', KEYS[1], last, math.min(last + 127, len - 1))
  if #batch == 0 then break end
  for _, json in ipairs(batch) do
    local ok, m = pcall(cjson.decode, json)
    if not ok or type(m) ~= 'table' then
      return redis.error_reply('ERR corrupt message ' .. (last + 1) .. ' in ' .. KEYS[1])
    end
    last = last + 1
    local mine
    if m.recipient == nil or m.recipient == cjson.null then
      mine = m.sender ~= agent
    else
      mine = m.recipient == agent
    end
    if mine then
      picked[#picked + 1] = json
      if #picked >= limit then break end
    end
  end
end
if last ~= cursor then
  redis.call('HSET', KEYS[2], agent, string.format('%d', last))
end
return picked
"#;

/// `KEYS`: proposal_seq, proposals. `ARGV[1]`: the record's JSON after `{"id":"<id>"`.
/// Returns the new id.
const PROPOSE_LUA: &str = r#"
local id = string.format('p%d', redis.call('INCR', KEYS[1]))
redis.call('HSET', KEYS[2], id, string.format('{"id":"%s"', id) .. ARGV[1])
return id
"#;

/// `KEYS`: proposals, votes. `ARGV`: proposal id, agent, vote. Returns `{0, nil}` for an
/// unknown proposal, `{1, nil}` once recorded, `{2, first vote}` when the agent had voted.
const CAST_LUA: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {0, false}
end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  return {1, false}
end
return {2, redis.call('HGET', KEYS[2], ARGV[2])}
";

/// `KEYS[1]` proposals. `ARGV`: proposal id, the record as read, the new record. Writes the
/// new record only if the stored one is still the one read: `{1, nil}`, else `{0, current}`.
const SWAP_LUA: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return {1, false}
end
return {0, current}
";

/// [`SWAP_LUA`] for a resolve given a [`Once`]: `KEYS[2]` the run's receipt, `ARGV[4]` the
/// call's token, written with the new record (a resolve that loses its compare-and-set wrote
/// nothing, so it leaves no receipt).
const SWAP_ONCE_LUA: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('SET', KEYS[2], cjson.encode({ARGV[4], 'resolved'}))
  return {1, false}
end
return {0, current}
";

static SEND: LazyLock<Write> = LazyLock::new(|| Write::new(QUOTA_LUA, SEND_LUA));
static RECEIVE: LazyLock<Script> = LazyLock::new(|| Script::new(RECEIVE_LUA));
static PROPOSE: LazyLock<Write> = LazyLock::new(|| Write::new("", PROPOSE_LUA));
static CAST: LazyLock<Write> = LazyLock::new(|| Write::new("", CAST_LUA));
static SWAP: LazyLock<Script> = LazyLock::new(|| Script::new(SWAP_LUA));
static SWAP_ONCE: LazyLock<Script> = LazyLock::new(|| Script::new(SWAP_ONCE_LUA));

/// The code of every coordination script with its name, for `SCRIPT LOAD` and the
/// declared-keys test.
pub(super) fn scripts() -> Vec<(&'static str, String)> {
    let [send, send_once] = Write::code(QUOTA_LUA, SEND_LUA);
    let [propose, propose_once] = Write::code("", PROPOSE_LUA);
    let [cast, cast_once] = Write::code("", CAST_LUA);
    vec![
        ("send", send),
        ("send once", send_once),
        ("receive", RECEIVE_LUA.to_string()),
        ("propose", propose),
        ("propose once", propose_once),
        ("cast", cast),
        ("cast once", cast_once),
        ("swap", SWAP_LUA.to_string()),
        ("swap once", SWAP_ONCE_LUA.to_string()),
    ]
}

/// A resolve that keeps losing its compare-and-set gives up after this many reads. Only a
/// resolve changes a record, and once one wins the next read sees it, so two reads suffice
/// unless something else rewrites the record meanwhile.
const RESOLVE_ATTEMPTS: usize = 8;

/// `json` without its leading `prefix` (`{"id":` and a placeholder id), for a script that
/// writes the real id in front. Records serialize their `id` first, so this never fails for
/// them; the error names the key in case a record's layout changes.
fn after_id<'a>(key: &str, json: &'a str, prefix: &str) -> Result<&'a str, StateError> {
    json.strip_prefix(prefix)
        .ok_or_else(|| StateError::Backend {
            backend: BACKEND,
            source: format!(
                "cannot encode a record for `{key}`: its JSON does not start with `{prefix}`"
            )
            .into(),
        })
}

/// Placeholder prefixes that [`after_id`] strips: the JSON of `with_id(0)` and
/// `with_id(String::new())`.
const MESSAGE_PREFIX: &str = r#"{"id":0"#;
const PROPOSAL_PREFIX: &str = r#"{"id":"""#;

fn votes_of(key: &str, fields: HashMap<String, String>) -> Result<Vec<Vote>, StateError> {
    let mut votes = fields
        .values()
        .map(|json| decode(key, json))
        .collect::<Result<Vec<Vote>, _>>()?;
    sort_votes(&mut votes);
    Ok(votes)
}

#[async_trait]
impl Coordination for RedisState {
    async fn board_write(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError> {
        let (hash, usage) = (keys::section(task, section), keys::board_usage(task));
        self.keyed_write(&hash, &usage, key, key.len(), value, quota, once)
            .await
    }

    async fn board_read(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
    ) -> Result<Option<String>, StateError> {
        let hash = keys::section(task, section);
        self.guarded("HGET", &hash, |mut c| {
            let hash = &hash;
            async move { c.hget(hash, key).await }
        })
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
        // Counted against the task's blackboard like any other entry, in the same script.
        let (hash, usage) = (keys::section(task, section), keys::board_usage(task));
        self.keyed_insert(&hash, &usage, key, value, once).await
    }

    async fn board_entries(
        &self,
        task: &TaskId,
        section: Section,
    ) -> Result<Vec<(String, String)>, StateError> {
        let hash = keys::section(task, section);
        let entries: BTreeMap<String, String> = self
            .guarded("HGETALL", &hash, |mut c| {
                let hash = &hash;
                async move { c.hgetall(hash).await }
            })
            .await?;
        Ok(entries.into_iter().collect())
    }

    async fn send_message(
        &self,
        task: &TaskId,
        message: &NewMessage<'_>,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission<u64>, StateError> {
        let (log, usage) = (keys::message_log(task), keys::message_usage(task));
        let json = encode(&log, &message.with_id(0))?;
        let record = after_id(&log, &json, MESSAGE_PREFIX)?;
        let bytes = message_bytes(message.kind, message.body);
        let reply: Vec<String> = self
            .guarded("send script on", &log, |mut c| {
                let (log, usage, record) = (&log, &usage, &record);
                let mut call = SEND.pick(once).key(log);
                call.key(usage)
                    .arg(record)
                    .arg(bytes)
                    .arg(quota.max_entries)
                    .arg(quota.max_bytes);
                with_receipt(&mut call, once);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        admission(&usage, quota, &reply, |rest| {
            rest.first()
                .and_then(|id| id.parse().ok())
                .ok_or_else(|| StateError::Corrupt {
                    key: log.clone(),
                    message: format!("the send script answered {reply:?}"),
                })
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
        let log = keys::message_log(task);
        let cursors = keys::message_cursors(task);
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let picked: Vec<String> = self
            .guarded("receive script on", &log, |mut c| {
                let (log, cursors) = (&log, &cursors);
                async move {
                    RECEIVE
                        .key(log)
                        .key(cursors)
                        .arg(agent.as_str())
                        .arg(limit)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        picked.iter().map(|json| decode(&log, json)).collect()
    }

    async fn rewind_inbox(
        &self,
        task: &TaskId,
        agent: &AgentId,
        after: u64,
    ) -> Result<(), StateError> {
        let cursors = keys::message_cursors(task);
        self.guarded("HSET", &cursors, |mut c| {
            let cursors = &cursors;
            async move { c.hset(cursors, agent.as_str(), after).await }
        })
        .await
    }

    async fn messages(&self, task: &TaskId) -> Result<Vec<Message>, StateError> {
        let log = keys::message_log(task);
        let stored: Vec<String> = self
            .guarded("LRANGE", &log, |mut c| {
                let log = &log;
                async move { c.lrange(log, 0, -1).await }
            })
            .await?;
        stored.iter().map(|json| decode(&log, json)).collect()
    }

    async fn propose(
        &self,
        task: &TaskId,
        proposal: &NewProposal<'_>,
        once: Option<&Once>,
    ) -> Result<String, StateError> {
        let proposals = keys::proposals(task);
        let json = encode(&proposals, &proposal.with_id(String::new()))?;
        let (seq, record) = (
            keys::proposal_seq(task),
            after_id(&proposals, &json, PROPOSAL_PREFIX)?,
        );
        self.guarded("propose script on", &proposals, |mut c| {
            let (seq, proposals, record) = (&seq, &proposals, &record);
            let mut call = PROPOSE.pick(once).key(seq);
            call.key(proposals).arg(record);
            with_receipt(&mut call, once);
            async move { call.invoke_async(&mut c).await }
        })
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
        let votes = keys::votes(task, proposal_id);
        let proposals = keys::proposals(task);
        let encoded = encode(&proposals, vote)?;
        let (outcome, first): (i64, Option<String>) = self
            .guarded("cast script on", &votes, |mut c| {
                let (proposals, votes, encoded) = (&proposals, &votes, &encoded);
                let mut call = CAST.pick(once).key(proposals);
                call.key(votes)
                    .arg(proposal_id)
                    .arg(vote.agent.as_str())
                    .arg(encoded);
                with_receipt(&mut call, once);
                async move { call.invoke_async(&mut c).await }
            })
            .await?;
        match (outcome, first) {
            (0, _) => Ok(CastOutcome::UnknownProposal),
            (1, _) => Ok(CastOutcome::Recorded),
            (2, Some(first)) => Ok(CastOutcome::AlreadyVoted(decode(&votes, &first)?)),
            (outcome, first) => Err(StateError::Backend {
                backend: BACKEND,
                source: format!(
                    "cast script on `{votes}` answered `{outcome}` with {first:?}, expected 0, 1 or 2 and the first vote"
                )
                .into(),
            }),
        }
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
        let receipt = once.map(|once| state_keys::receipt(once.run().as_str()));
        // The record, and the run's receipt in the same round trip: a resolve this call
        // already made is answered as it was.
        let (mut stored, held): (Option<String>, Option<String>) = self
            .guarded("HGET", &proposals, |mut c| {
                let (proposals, receipt) = (&proposals, &receipt);
                async move {
                    match receipt {
                        Some(receipt) => {
                            redis::pipe()
                                .hget(proposals, proposal_id)
                                .get(receipt)
                                .query_async(&mut c)
                                .await
                        }
                        None => Ok((c.hget(proposals, proposal_id).await?, None)),
                    }
                }
            })
            .await?;
        if let (Some(once), Some(held)) = (once, held) {
            let token: Option<(String, serde_json::Value)> = serde_json::from_str(&held).ok();
            if token.is_some_and(|(token, _)| token == once.token()) {
                return Ok(ResolveOutcome::Resolved);
            }
        }
        for _ in 0..RESOLVE_ATTEMPTS {
            let Some(json) = stored else {
                return Ok(ResolveOutcome::UnknownProposal);
            };
            let mut record: ProposalRecord = decode(&proposals, &json)?;
            if let Some(first) = record.resolution {
                return Ok(ResolveOutcome::AlreadyResolved(first));
            }
            record.resolution = Some(resolution.clone());
            let updated = encode(&proposals, &record)?;
            let (swapped, current): (i64, Option<String>) = self
                .guarded("resolve script on", &proposals, |mut c| {
                    let (proposals, json, updated) = (&proposals, &json, &updated);
                    let mut call = match (once, &receipt) {
                        (Some(_), Some(receipt)) => {
                            let mut call = SWAP_ONCE.key(proposals);
                            call.key(receipt);
                            call
                        }
                        _ => SWAP.key(proposals),
                    };
                    call.arg(proposal_id).arg(json).arg(updated);
                    if let Some(once) = once {
                        call.arg(once.token());
                    }
                    async move { call.invoke_async(&mut c).await }
                })
                .await?;
            if swapped == 1 {
                return Ok(ResolveOutcome::Resolved);
            }
            stored = current;
        }
        Err(StateError::Backend {
            backend: BACKEND,
            source: format!(
                "`{proposals}` field `{proposal_id}` changed under {RESOLVE_ATTEMPTS} resolve attempts in a row"
            )
            .into(),
        })
    }

    async fn proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
    ) -> Result<Option<Proposal>, StateError> {
        if proposal_number(proposal_id).is_none() {
            return Ok(None);
        }
        let (proposals, votes) = (keys::proposals(task), keys::votes(task, proposal_id));
        let (record, fields): (Option<String>, HashMap<String, String>) = self
            .guarded("HGET and HGETALL", &proposals, |mut c| {
                let (proposals, votes) = (&proposals, &votes);
                async move {
                    redis::pipe()
                        .hget(proposals, proposal_id)
                        .hgetall(votes)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(Some(Proposal {
            record: decode(&proposals, &record)?,
            votes: votes_of(&votes, fields)?,
        }))
    }

    async fn proposals(&self, task: &TaskId) -> Result<Vec<Proposal>, StateError> {
        let proposals = keys::proposals(task);
        let stored: HashMap<String, String> = self
            .guarded("HGETALL", &proposals, |mut c| {
                let proposals = &proposals;
                async move { c.hgetall(proposals).await }
            })
            .await?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        // Votes are read under the hash field, checked here, never under the record's own
        // `id`, which is stored data.
        let mut records = stored
            .into_iter()
            .map(|(id, json)| {
                let n = proposal_number(&id).ok_or_else(|| StateError::Corrupt {
                    key: proposals.clone(),
                    message: format!("field `{id}` is not a proposal id"),
                })?;
                Ok((n, id, json))
            })
            .collect::<Result<Vec<_>, StateError>>()?;
        records.sort_unstable_by_key(|(n, _, _)| *n);
        let mut pipe = redis::pipe();
        for (_, id, _) in &records {
            pipe.hgetall(keys::votes(task, id));
        }
        let votes: Vec<HashMap<String, String>> = self
            .guarded("HGETALL votes of", &proposals, |mut c| {
                let pipe = &pipe;
                async move { pipe.query_async(&mut c).await }
            })
            .await?;
        records
            .into_iter()
            .zip(votes)
            .map(|((_, id, json), fields)| {
                Ok(Proposal {
                    record: decode(&proposals, &json)?,
                    votes: votes_of(&keys::votes(task, &id), fields)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the send and propose scripts store is byte for byte what the other backends
    /// store: the encoded record with its real id.
    #[test]
    fn scripts_splice_the_id_into_the_encoded_record() {
        let (alpha, beta) = (
            AgentId::new("alpha").unwrap(),
            AgentId::new("beta").unwrap(),
        );
        let message = NewMessage {
            sender: &alpha,
            recipient: Some(&beta),
            kind: "FEEDBACK",
            body: "\"{\\\"id\\\":0}\" ünïcode",
            sent_at_ms: u64::MAX,
        };
        let json = encode("k", &message.with_id(0)).unwrap();
        let tail = after_id("k", &json, MESSAGE_PREFIX).unwrap();
        assert_eq!(
            format!("{{\"id\":{}{tail}", 1234),
            encode("k", &message.with_id(1234)).unwrap()
        );

        let required = [alpha.clone()];
        let proposal = NewProposal {
            proposer: &alpha,
            title: "t",
            body: "b",
            required: &required,
            voters: &required,
            quorum: 1,
            created_at_ms: 7,
        };
        let json = encode("k", &proposal.with_id(String::new())).unwrap();
        let tail = after_id("k", &json, PROPOSAL_PREFIX).unwrap();
        assert_eq!(
            format!("{{\"id\":\"p12\"{tail}"),
            encode("k", &proposal.with_id("p12".into())).unwrap()
        );
        assert!(after_id("k", "{}", MESSAGE_PREFIX).is_err());
    }
}
