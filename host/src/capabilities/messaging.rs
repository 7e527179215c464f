//! `warden:agent/messaging`: direct and broadcast messages between the agents of the run's
//! task (`msg:{task}:*`).
//!
//! One log per task gives every receiver each sender's messages in the order sent. `receive`
//! waits for a message on the host's coordination bell (rung by every send in this process)
//! and, for senders in other processes sharing the backend, polls at [`POLL_INTERVAL`]; the
//! wait is bounded by the phase deadline and ends early when the agent is revoked.
//!
//! Tier section `[tiers.Tn.messaging]`: present, the interface is linked; `max_messages` and
//! `max_bytes` bound what the task's log may hold when the tier sends (messages sent, bytes of
//! kind + body; a log, so what was sent counts, read or not), checked by the state store in
//! the same atomic step as the append.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::AgentCtx;
use super::quota::{QuotaKeys, covers, refusal};
use crate::clock::now_ms;
use crate::governance::{CallRefusal, ViolationKind, unavailable};
use crate::bindings::WitError;
use crate::bindings::warden::agent::messaging::{Host, Kind, Message};
use crate::interface::Interface;
use crate::id::AgentId;
use crate::state::{Admission, NewMessage, Quota};
use crate::policy::SectionSpec;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Messaging);

/// `[tiers.Tn.messaging]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Messages the task's log may hold when the tier sends.
    #[serde(default = "default_max_messages")]
    pub max_messages: u64,
    /// Bytes (kind + body of every message) the task's log may hold when the tier sends.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

/// Messages per task when the section does not say: 10,000.
const DEFAULT_MAX_MESSAGES: u64 = 10_000;
/// Bytes per task when the section does not say: 16 MiB.
const DEFAULT_MAX_BYTES: u64 = 16 << 20;

fn default_max_messages() -> u64 {
    DEFAULT_MAX_MESSAGES
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        max_messages: 0,
        max_bytes: 0,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        covers("max_messages", self.max_messages, lower.max_messages)?;
        covers("max_bytes", self.max_bytes, lower.max_bytes)
    }
}

const KEYS: QuotaKeys = QuotaKeys {
    section: Some("messaging"),
    entries: ("max_messages", "messages"),
    bytes: ("max_bytes", "bytes"),
};

/// Largest message body.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest free-form kind.
const MAX_KIND_BYTES: usize = 64;
/// Most messages one `receive` returns.
const RECEIVE_BATCH: usize = 64;
/// How often a waiting `receive` looks for messages sent by other processes.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// The stored name of a kind: the reference's upper-case names, or the free-form text.
pub(crate) fn kind_name(kind: &Kind) -> &str {
    match kind {
        Kind::Proposal => "PROPOSAL",
        Kind::Feedback => "FEEDBACK",
        Kind::Handoff => "HANDOFF",
        Kind::Other(other) => other,
    }
}

fn kind_of(name: &str) -> Kind {
    match name {
        "PROPOSAL" => Kind::Proposal,
        "FEEDBACK" => Kind::Feedback,
        "HANDOFF" => Kind::Handoff,
        other => Kind::Other(other.to_string()),
    }
}

/// The highest message id in a journal's recorded answers to `messaging.receive` (0: none):
/// where a resumed run's inbox starts again ([`crate::journal::Journal::take_inbox_rewind`]).
pub(crate) fn last_received(records: &[crate::journal::Recorded]) -> u64 {
    records
        .iter()
        .filter(|r| r.op == "messaging.receive")
        .filter_map(|r| serde_json::from_slice::<Result<Vec<Message>, WitError>>(&r.payload).ok())
        .filter_map(Result::ok)
        .flatten()
        .map(|m| m.id)
        .max()
        .unwrap_or(0)
}

fn to_wit(message: crate::state::Message) -> Message {
    Message {
        id: message.id,
        sender: message.sender.into(),
        recipient: message.recipient.map(String::from),
        kind: kind_of(&message.kind),
        body: message.body,
        sent_at: humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(message.sent_at_ms),
        )
        .to_string(),
    }
}


impl AgentCtx {
    async fn send_message(
        &mut self,
        op: &'static str,
        recipient: Option<String>,
        kind: Kind,
        body: String,
    ) -> Result<u64, WitError> {
        let to = recipient.as_deref().unwrap_or("*");
        self.gov
            .gate(Interface::Messaging, op, || format!("msg:{to}"))
            .await?;
        self.refuse_placeholders(op, || format!("msg:{to}"), &[body.as_bytes()])
            .await?;
        let kind = kind_name(&kind);
        let recipient_id = recipient.as_deref().map(AgentId::new).transpose();
        let invalid = if let Err(e) = &recipient_id {
            Some(format!("`{op}` refused: recipient: {e}"))
        } else if kind.is_empty()
            || kind.len() > MAX_KIND_BYTES
            || kind.chars().any(char::is_control)
        {
            Some(format!(
                "`{op}` refused: message kind of {} bytes; free-form kinds are 1 to {MAX_KIND_BYTES} bytes without control characters",
                kind.len()
            ))
        } else if body.len() > MAX_BODY_BYTES {
            Some(format!(
                "`{op}` refused: body of {} bytes; messages are at most {MAX_BODY_BYTES} bytes",
                body.len()
            ))
        } else {
            None
        };
        if let Some(message) = invalid {
            let refusal = CallRefusal {
                kind: ViolationKind::Invalid,
                resource: format!("msg:{to}"),
                message,
            };
            return Err(self.gov.refuse(op, refusal).await);
        }
        let recipient_id = recipient_id.ok().flatten();
        let policy = self.gov.policy();
        let grant = policy.grant::<Grant>(Interface::Messaging);
        let quota = Quota {
            max_entries: grant.max_messages,
            max_bytes: grant.max_bytes,
        };
        let gov = &self.gov;
        let message = NewMessage {
            sender: gov.agent_id(),
            recipient: recipient_id.as_ref(),
            kind,
            body: &body,
            sent_at_ms: now_ms(),
        };
        let sent = gov
            .services
            .state
            .send_message(gov.task_id(), &message, quota, gov.once())
            .await;
        let result = match sent {
            Ok(Admission::Stored(id)) => Ok(id),
            Ok(Admission::Refused(over)) => {
                let refusal = refusal(
                    policy,
                    KEYS,
                    format!("msg:{to}"),
                    &format!("`{op}` to `{to}`"),
                    &format!("task `{}`'s message log", gov.task_id()),
                    over,
                    None,
                );
                return Err(self.gov.refuse(op, refusal).await);
            }
            Err(e) => Err(unavailable("messaging", e)),
        };
        match &result {
            Ok(id) => {
                gov.services.coordination_bell.notify_waiters();
                let details = serde_json::json!({ "id": id, "to": recipient, "kind": kind });
                gov.record_details(op, details.to_string()).await;
            }
            Err(_) => gov.record_result(op, &result).await,
        }
        result
    }
}

impl Host for AgentCtx {
    async fn send(&mut self, recipient: String, kind: Kind, body: String) -> Result<u64, WitError> {
        super::journal_call!(self, "messaging.send", Json, super::journaled::args(&(&recipient, &kind, &body)), {
            self.send_message("messaging.send", Some(recipient), kind, body)
                .await
        })
    }

    async fn broadcast(&mut self, kind: Kind, body: String) -> Result<u64, WitError> {
        super::journal_call!(self, "messaging.broadcast", Json, super::journaled::args(&(&kind, &body)), {
            self.send_message("messaging.broadcast", None, kind, body)
                .await
        })
    }

    async fn receive(&mut self, timeout_ms: u32) -> Result<Vec<Message>, WitError> {
        super::journal_call!(self, "messaging.receive", Json, super::journaled::args(&(&timeout_ms,)), {
            const OP: &str = "messaging.receive";
            self.gov
                .gate(Interface::Messaging, OP, || "msg:inbox".to_string())
                .await?;
            // Never past the phase deadline: a guest blocked here is not executing, so the epoch
            // callback that enforces the deadline cannot fire until it returns.
            let deadline = (Instant::now() + Duration::from_millis(u64::from(timeout_ms)))
                .min(self.meter.deadline);
            let gov = &self.gov;
            if let Some(after) = gov.run.journal.take_inbox_rewind() {
                gov.services
                    .state
                    .rewind_inbox(gov.task_id(), gov.agent_id(), after)
                    .await
                    .map_err(|e| unavailable("messaging", e))?;
            }
            let result = loop {
                // Armed before the read, so a send between the read and the wait still wakes us.
                let bell = gov.services.coordination_bell.notified();
                let batch = gov
                    .services
                    .state
                    .receive_messages(gov.task_id(), gov.agent_id(), RECEIVE_BATCH)
                    .await
                    .map_err(|e| unavailable("messaging", e));
                let now = Instant::now();
                match batch {
                    Ok(batch) if batch.is_empty() && now < deadline => {}
                    other => break other,
                }
                if gov.run.is_revoked() {
                    break Err(WitError::Revoked(gov.run.revoked_message()));
                }
                let wait = (deadline - now).min(POLL_INTERVAL);
                // Either wakes us; which one does not matter.
                let _ = tokio::time::timeout(wait, bell).await;
            };
            match &result {
                Ok(batch) => {
                    let ids: Vec<u64> = batch.iter().map(|m| m.id).collect();
                    let details = serde_json::json!({ "received": ids });
                    gov.record_details(OP, details.to_string()).await;
                }
                Err(_) => gov.record_result(OP, &result).await,
            }
            result.map(|batch| batch.into_iter().map(to_wit).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::capabilities::testing::{TestEnv, tiers_with};
    use crate::tier::Tier;

    #[test]
    fn a_resume_starts_the_inbox_after_the_last_message_its_journal_answered() {
        let message = |id| Message {
            id,
            sender: "alpha".into(),
            recipient: None,
            kind: Kind::Proposal,
            body: "b".into(),
            sent_at: String::new(),
        };
        let record = |seq, op: &str, answer: &Result<Vec<Message>, WitError>| {
            crate::journal::Recorded {
                seq,
                phase: "EXECUTE".into(),
                op: op.into(),
                args_digest: String::new(),
                payload: serde_json::to_vec(answer).unwrap(),
                head: String::new(),
            }
        };
        let records = [
            record(1, "messaging.receive", &Ok(vec![message(3), message(5)])),
            record(2, "state.get", &Ok(vec![message(9)])),
            record(3, "messaging.receive", &Ok(Vec::new())),
            record(4, "messaging.receive", &Err(WitError::Unavailable("x".into()))),
        ];
        assert_eq!(last_received(&records), 5, "another op's answer does not count");
        assert_eq!(last_received(&records[1..]), 0, "nothing seen: from the start");
    }

    #[tokio::test]
    async fn a_message_reaches_its_recipient_once() {
        let mut alpha = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        let id = alpha
            .ctx
            .send("beta".into(), Kind::Proposal, "p1".into())
            .await
            .unwrap();
        alpha.ctx.broadcast(Kind::Other("STATUS".into()), "hi".into()).await.unwrap();
        let received = beta.ctx.receive(0).await.unwrap();
        let seen: Vec<(u64, &str, &str)> = received
            .iter()
            .map(|m| (m.id, m.sender.as_str(), m.body.as_str()))
            .collect();
        assert_eq!(seen, [(id, "agent-1", "p1"), (id + 1, "agent-1", "hi")]);
        assert!(beta.ctx.receive(0).await.unwrap().is_empty(), "delivered once");
        assert!(alpha.ctx.receive(0).await.unwrap().is_empty(), "not its own broadcast");
    }

    #[tokio::test]
    async fn malformed_messages_are_refused() {
        let mut agent = TestEnv::new().agent(Tier::Operator, json!({})).await;
        let err = agent
            .ctx
            .send("a:lock".into(), Kind::Feedback, "x".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("recipient")), "{err:?}");
        let err = agent
            .ctx
            .broadcast(Kind::Other(String::new()), "x".into())
            .await
            .unwrap_err();
        assert!(matches!(&err, WitError::Invalid(m) if m.contains("free-form kinds are 1 to 64 bytes")), "{err:?}");
        assert!(agent.violations().is_empty());
    }

    #[tokio::test]
    async fn an_observer_has_no_messaging() {
        let mut agent = TestEnv::new().agent(Tier::Observer, json!({})).await;
        let err = agent.ctx.receive(0).await.unwrap_err();
        assert!(matches!(&err, WitError::Denied(m) if m.contains("lowest tier granting it: T1 (operator)")), "{err:?}");
        assert_eq!(agent.violations(), ["TIER_DENIED"]);
    }

    /// Messages are a log: what was sent counts, received or not.
    #[tokio::test]
    async fn a_tasks_log_holds_at_most_its_messages() {
        let tiers = tiers_with(&[("max_messages = 10000", "max_messages = 2")]);
        let mut alpha = TestEnv::new().tiers(tiers).agent(Tier::Operator, json!({})).await;
        let mut beta = alpha.peer("beta", Tier::Operator).await;
        alpha.ctx.send("beta".into(), Kind::Proposal, "p1".into()).await.unwrap();
        beta.ctx.broadcast(Kind::Feedback, "ok".into()).await.unwrap();
        assert_eq!(beta.ctx.receive(0).await.unwrap().len(), 1);
        let err = alpha
            .ctx
            .broadcast(Kind::Other("STATUS".into()), "again".into())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WitError::BudgetExhausted(m) if m.contains("`messaging.broadcast` to `*` refused: task `task-1`'s message log would hold 3 messages (it holds 2), over the quota of 2 of tier T1 (operator) (`[tiers.T1.messaging] max_messages`)")),
            "{err:?}"
        );
        assert_eq!(alpha.violations(), ["QUOTA_EXCEEDED"]);
        assert_eq!(alpha.errors().await.total, 1);
        assert_eq!(
            alpha.actions().pop(),
            Some(("messaging.broadcast".into(), "denied".into(), Some("QUOTA_EXCEEDED".into())))
        );
        assert!(beta.ctx.receive(0).await.unwrap().is_empty(), "nothing was appended");
    }
}
