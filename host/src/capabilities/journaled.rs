//! Every capability call through the run's journal: answered from it on replay, recorded with
//! the call's rows when live (see [`crate::journal`]).
//!
//! [`journaled!`](super::journaled) wraps a host function's body. Before it runs, the journal
//! decides: a replay answers the recorded payload (the body, its gate and its backend are not
//! touched) or halts a guest that made another call; a live call that is an effect first
//! waits until every record before it is committed. After it runs, the answer is encoded, its
//! record chained, and the call's action rows name the journal head; records and rows go to
//! the ledger in one transaction.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::AgentCtx;
use crate::bindings::WitError;
use crate::context::CallDurability;
use crate::governance::unavailable;
use crate::journal::{self, Begin, CallArgs};
use crate::ledger::{ActionRecord, Entry};
use crate::state::Once;

/// A call's arguments, as its record holds them.
pub(super) fn args<A: Serialize + ?Sized>(args: &A) -> CallArgs {
    CallArgs::of(args)
}

/// How an answer is written in the journal.
pub(super) trait Codec<T> {
    fn encode(result: &Result<T, WitError>) -> Vec<u8>;
    fn decode(payload: &[u8]) -> Option<Result<T, WitError>>;
}

/// JSON of the answer, as the WIT types derive it.
pub(super) struct Json;

impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn encode(result: &Result<T, WitError>) -> Vec<u8> {
        serde_json::to_vec(result).unwrap_or_default()
    }

    fn decode(payload: &[u8]) -> Option<Result<T, WitError>> {
        serde_json::from_slice(payload).ok()
    }
}

/// Content bytes as they are (an artifact's), not as a JSON array of numbers: `0` and the
/// bytes, or `1` and the error as JSON.
pub(super) struct Bytes;

impl Codec<Vec<u8>> for Bytes {
    fn encode(result: &Result<Vec<u8>, WitError>) -> Vec<u8> {
        match result {
            Ok(bytes) => {
                let mut out = Vec::with_capacity(bytes.len() + 1);
                out.push(0);
                out.extend_from_slice(bytes);
                out
            }
            Err(error) => {
                let mut out = vec![1];
                out.extend(serde_json::to_vec(error).unwrap_or_default());
                out
            }
        }
    }

    fn decode(payload: &[u8]) -> Option<Result<Vec<u8>, WitError>> {
        match payload.split_first()? {
            (0, bytes) => Some(Ok(bytes.to_vec())),
            (1, error) => serde_json::from_slice(error).ok().map(Err),
            _ => None,
        }
    }
}

/// A secret never enters the journal: its record holds the value's digest and length, and a
/// replay answers a placeholder naming that digest (a replay touches no secrets backend).
pub(super) struct Secret;

#[derive(Serialize, serde::Deserialize)]
struct Redacted {
    redacted: String,
    len: usize,
}

impl Codec<String> for Secret {
    fn encode(result: &Result<String, WitError>) -> Vec<u8> {
        let redacted = result.as_ref().map(|value| Redacted {
            redacted: journal::bytes_digest(value.as_bytes()),
            len: value.len(),
        });
        serde_json::to_vec(&redacted).unwrap_or_default()
    }

    fn decode(payload: &[u8]) -> Option<Result<String, WitError>> {
        let recorded: Result<Redacted, WitError> = serde_json::from_slice(payload).ok()?;
        Some(recorded.map(|r| format!("warden-replay-secret:{}", r.redacted)))
    }
}

/// What happens to a call before its body runs.
pub(super) enum Before<T> {
    /// Run the body; `args` are its arguments.
    Live(CallArgs),
    /// Answer this without running the body.
    Answer(Result<T, WitError>),
}

impl AgentCtx {
    /// Ask the journal about call `op` with arguments `args`.
    pub(super) async fn journal_before<T, C: Codec<T>>(
        &mut self,
        op: &'static str,
        args: CallArgs,
    ) -> Before<T> {
        let run = self.gov.run.clone();
        // A revoked run is answered at once with nothing more recorded, journal included: a
        // replay ends at the revocation as the run did.
        if run.is_revoked() {
            return Before::Answer(Err(WitError::Revoked(run.revoked_message())));
        }
        if run.journal.is_off() {
            return Before::Live(args);
        }
        match run.journal.begin(op, &args) {
            Begin::Live => {}
            Begin::Recorded(payload) => {
                return Before::Answer(C::decode(&payload).unwrap_or_else(|| {
                    Err(WitError::Unavailable(format!(
                        "the journal's answer to `{op}` cannot be read"
                    )))
                }));
            }
            Begin::Halt(reason) => {
                return Before::Answer(Err(WitError::Unavailable(reason)));
            }
        }
        // A ledger that dies with the process has nothing to resume from: no effect waits.
        let persistent = self.gov.services.ledger.is_persistent();
        if persistent && journal::is_effect(op) {
            // What the guest saw before an effect is committed before the effect happens.
            self.flush_journal().await;
            if let Err(error) = self.gov.services.ledger_flush().await {
                return Before::Answer(Err(unavailable("the ledger", error)));
            }
        }
        self.gov.open_call(op);
        // A write's receipt names this call, so a resume that makes it again (killed before
        // its record was committed) is answered from the store instead of writing twice.
        let once = (persistent && journal::is_effect(op))
            .then(|| Once::new(&run.run_id, run.journal.len() + 1, op, args.digest()));
        self.gov.set_once(once);
        self.gov.fault_call = crate::fault::before().await;
        Before::Live(args)
    }

    /// Record the answer of a live call with the rows it made, in one transaction.
    pub(super) async fn journal_after<T, C: Codec<T>>(
        &mut self,
        op: &'static str,
        args: CallArgs,
        result: &Result<T, WitError>,
    ) {
        let run = self.gov.run.clone();
        if run.journal.is_off() {
            return;
        }
        let mut rows = self.gov.close_call();
        self.gov.set_once(None);
        // An effect's record is committed before its answer reaches the guest: a run killed
        // between two calls resumes knowing every effect it made.
        let effect = journal::is_effect(op);
        let every_call = self.gov.services.call_durability == CallDurability::EveryCall;
        let durable = every_call || (effect && self.gov.services.ledger.is_persistent());
        // A read that broke no rule waits in memory for the next effect, transition or the
        // end of the run: reads back to back wake the ledger's writer once per batch, not per
        // call. A violation is handed over at once.
        let held = !durable && !effect && !rows.iter().any(|e| matches!(e, Entry::Violation(_)));
        let (seq, head, mut entries) = if held {
            let (seq, head) = run.journal.commit_held(op, args, C::encode(result));
            (seq, head, Vec::new())
        } else {
            let committed = run.journal.commit(op, args, C::encode(result));
            (committed.seq, committed.head, committed.records)
        };
        let mut anchored = false;
        for row in &mut rows {
            if let Entry::Action(record) = row {
                record.call_seq = Some(seq);
                record.result_digest = Some(head.clone());
                anchored = true;
            }
        }
        if !anchored {
            // Every answer a guest sees is chained by a row of its call.
            let mut record =
                ActionRecord::new(run.subject.clone(), op, "answered").phase(run.phase().as_str());
            if let Err(error) = result {
                let (kind, message) = crate::governance::wit_error_parts(error);
                record = record.failed(kind, message.to_string());
            }
            record.call_seq = Some(seq);
            record.result_digest = Some(head);
            rows.push(Entry::Action(record));
        }
        if held {
            if run.journal.hold(rows) {
                self.flush_journal().await;
            }
            return;
        }
        entries.append(&mut rows);
        if let Err(error) = self
            .gov
            .services
            .ledger
            .append_all_async(entries, durable)
            .await
        {
            tracing::error!(%error, "cannot record call");
        }
    }

    /// Before an external effect `op` starts (a tool run): its intent, committed, so a run
    /// killed while the effect runs resumes knowing it may have happened. Refused (and the
    /// effect not started) when the intent cannot be recorded.
    pub(super) async fn journal_intent<I: Serialize>(
        &mut self,
        op: &'static str,
        args: CallArgs,
        intent: &I,
    ) -> Result<(), WitError> {
        let run = self.gov.run.clone();
        let Some(intent_op) = journal::intent_of(op) else {
            return Ok(());
        };
        if run.journal.is_off() {
            return Ok(());
        }
        let payload = serde_json::to_vec(intent).unwrap_or_default();
        let details = String::from_utf8_lossy(&payload).into_owned();
        let committed = run.journal.commit(intent_op, args, payload);
        let mut record = ActionRecord::new(run.subject.clone(), op, "intent")
            .phase(run.phase().as_str())
            .details(details);
        record.call_seq = Some(committed.seq);
        record.result_digest = Some(committed.head);
        let mut entries: Vec<Entry> = committed.records;
        entries.push(Entry::Action(record));
        let durable = self.gov.services.ledger.is_persistent();
        self.gov
            .services
            .ledger
            .append_all_async(entries, durable)
            .await
            .map_err(|error| unavailable("the ledger", error))
    }

    /// Hand the observations kept in memory (clock reads, random bytes) to the ledger.
    pub(super) async fn flush_journal(&mut self) {
        let pending = self.gov.run.journal.take_pending();
        if pending.is_empty() {
            return;
        }
        let entries = pending;
        let ledger = Arc::clone(&self.gov.services).ledger.clone();
        if let Err(error) = ledger.append_all_async(entries, false).await {
            tracing::error!(%error, "cannot record observations");
        }
    }
}
