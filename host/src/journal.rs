//! The journal of a run: every answer its guest saw, in order, so the run can be replayed.
//!
//! Each capability call's answer, and each nondeterministic input the guest observed (the
//! wall and monotonic clocks, random bytes), is a [`JournalRecord`]: its position (`seq`), the
//! phase, what was asked (`op` and the digest of its arguments) and what was answered
//! (`payload`). The records form a hash chain of their own,
//!
//! ```text
//! head₀ = sha256("warden-journal-v1" ‖ run id)
//! headₙ = sha256(headₙ₋₁ ‖ seq ‖ op ‖ args digest ‖ payload)   (each field length-prefixed)
//! ```
//!
//! and the action row of each call carries the head after its answer (`result_digest`), so
//! the hash-chained ledger vouches for every record up to it: a payload edited in the
//! `journal` table no longer leads to the head its row names. A live run's heads are computed
//! by the ledger's writer as it writes the records ([`Chain`]), so the guest's thread does not
//! hash its answers.
//!
//! Records are written in the same ledger transaction as the call's rows (group commit): a
//! read is never a commit of its own. Before an effect (a write, a message, a vote, a tool
//! run) the capability waits until every record before it is committed
//! ([`is_effect`]), so what the guest saw before an effect is never lost behind it.
//!
//! A journal in replay mode answers from recorded records instead: a call whose `op` or
//! arguments differ from the record at its position is a [`Divergence`], and the run is
//! halted at its next epoch tick.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

pub use crate::ledger::journal_chain::{Chain, bytes_digest, genesis, head_text, next_head};
use crate::ledger::{ArgsDigest, Entry, JournalHead, JournalRecord};

/// Records one run may hold (calls and observations); past it the run is halted. A guest
/// reading the clock in a loop is held to this many reads per run.
pub const MAX_RECORDS: u64 = 1 << 20;

/// Entries kept in memory (observations, and the records and rows of reads) before they go
/// to the ledger with the next effect: at most this many,
const PENDING_FLUSH: usize = 256;
/// and at most this many bytes of payload.
const PENDING_FLUSH_BYTES: usize = 1 << 20;

/// The argument digest of an observation (it has no arguments).
const OBSERVED: &str = "sha256:-";

/// The `op` of a wall-clock read.
pub const OP_WALL: &str = "clock.wall";
/// The `op` of a monotonic-clock read.
pub const OP_MONOTONIC: &str = "clock.monotonic";
/// The `op` of random bytes.
pub const OP_RANDOM: &str = "random.bytes";

/// The `op` of a tool run's intent: recorded, and committed, before the tool starts, so a
/// resume knows a tool may have run whose result was never recorded.
pub const OP_TOOL_INTENT: &str = "tools.intent";

/// The intent `op` of an external effect `op` (one the host cannot undo or repeat safely:
/// a tool's world), if it has one.
pub fn intent_of(op: &str) -> Option<&'static str> {
    match op {
        "tools.invoke" => Some(OP_TOOL_INTENT),
        _ => None,
    }
}

/// What a tool run's intent records: what the operator needs to decide whether it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ToolIntent {
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Whether `op` changes something outside the guest (the state store, artifacts, the
/// blackboard, messages, votes, the ledger, a tool's world): every record before it is
/// committed before it runs.
pub fn is_effect(op: &str) -> bool {
    matches!(
        op,
        "state.set"
            | "state.delete"
            | "artifacts.put"
            | "blackboard.write"
            | "messaging.send"
            | "messaging.broadcast"
            | "consensus.propose"
            | "consensus.cast"
            | "consensus.resolve"
            | "consensus.finalize"
            | "consensus.validate"
            | "ledger.note"
            | "ledger.decision"
            | "tools.invoke"
    )
}

pub use crate::ledger::Recorded;

/// A call that is not the one the journal holds at its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Divergence {
    /// The position.
    pub seq: u64,
    /// What the journal holds there (`op` and argument digest), or `end of journal`.
    pub expected: String,
    /// What the guest did.
    pub actual: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at call {}: the journal holds {}, the guest made {}",
            self.seq, self.expected, self.actual
        )
    }
}

/// What a call does, as the journal decides before it runs.
pub enum Begin {
    /// Run it live; the answer is recorded.
    Live,
    /// Answer this recorded payload; the call does not run.
    Recorded(Vec<u8>),
    /// The run is halted (diverged, or past the end of an offline replay): answer
    /// `unavailable`; the epoch callback stops the guest.
    Halt(String),
}

/// What a replaying journal does past its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastEnd {
    /// Halt: an offline replay has nothing live to go on with.
    Halt,
    /// Go live: a resumed run records from the first call past the journal on.
    Live,
}

struct Replay {
    records: VecDeque<Recorded>,
    past_end: PastEnd,
    answered: u64,
}

struct State {
    seq: u64,
    /// Entries not yet handed to the ledger: observations, and reads' records and rows.
    pending: Vec<Entry>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    replay: Option<Replay>,
    divergence: Option<Divergence>,
    halt: Option<String>,
    /// The phase the guest is in.
    phase: &'static str,
}

impl State {
    /// Whether the entries kept in memory reached their bound.
    fn is_full(&self) -> bool {
        self.pending.len() >= PENDING_FLUSH || self.pending_bytes >= PENDING_FLUSH_BYTES
    }
}

/// The journal of one run.
pub struct Journal {
    run_id: Arc<str>,
    chain: Arc<Chain>,
    state: Mutex<State>,
    halted: AtomicBool,
    /// Records nothing: only the benchmark's baseline, to measure what the journal costs.
    off: bool,
    /// A resumed run's inbox position, taken by its first live `messaging.receive`: see
    /// [`Journal::take_inbox_rewind`].
    inbox_rewind: Mutex<Option<u64>>,
}

/// A call's arguments as the journal records them: their JSON, and its digest once something
/// on the guest's thread needs it (a replay's comparison, a write's receipt). A live read's
/// digest is left to the ledger's writer ([`ArgsDigest::Of`]).
#[derive(Debug, Clone)]
pub struct CallArgs {
    json: Vec<u8>,
    digest: OnceLock<String>,
}

impl CallArgs {
    /// The arguments `args`, as JSON.
    pub fn of<A: Serialize + ?Sized>(args: &A) -> CallArgs {
        // Arguments are small: one buffer and one digest beat feeding the hasher token by token.
        let mut json = Vec::with_capacity(128);
        // Serializing plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut json, args);
        CallArgs {
            json,
            digest: OnceLock::new(),
        }
    }

    /// The arguments of an observation (a clock read, random bytes): none.
    pub fn observed() -> CallArgs {
        CallArgs::known(OBSERVED.to_string())
    }

    /// Arguments known only by their digest.
    pub fn known(digest: String) -> CallArgs {
        CallArgs {
            json: Vec::new(),
            digest: OnceLock::from(digest),
        }
    }

    /// `sha256:<hex>` of the arguments' JSON (as [`args_digest`] gives it).
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| bytes_digest(&self.json))
    }
}

impl From<CallArgs> for ArgsDigest {
    fn from(args: CallArgs) -> Self {
        match args.digest.into_inner() {
            Some(digest) => ArgsDigest::Known(digest),
            None => ArgsDigest::Of(args.json),
        }
    }
}

/// `sha256:<hex>` of `args` as JSON: what the journal compares to find a divergence.
pub fn args_digest<A: Serialize + ?Sized>(args: &A) -> String {
    let args = CallArgs::of(args);
    args.digest();
    args.digest.into_inner().unwrap_or_default()
}

impl Journal {
    /// A journal that records a live run.
    pub fn recording(run_id: &str) -> Journal {
        Journal::new(run_id, None)
    }

    /// A journal that answers from `records` (in order) and does `past_end` after them.
    pub fn replaying(run_id: &str, records: Vec<Recorded>, past_end: PastEnd) -> Journal {
        Journal::new(
            run_id,
            Some(Replay {
                records: records.into(),
                past_end,
                answered: 0,
            }),
        )
    }

    /// Set what [`Journal::take_inbox_rewind`] gives a resumed run: the id of the last
    /// message its journal answered the guest with (0: none).
    pub fn set_inbox_rewind(&self, after: u64) {
        *self.inbox_rewind.lock() = Some(after);
    }

    /// Once, for a resumed run ([`Journal::set_inbox_rewind`]): the id of the last message
    /// the guest was answered with (0: none). The store's inbox cursor may be past it — a receive whose
    /// answer was lost with the process still moved it — so the first live receive starts
    /// there, and a message the guest never saw is delivered, not lost.
    pub fn take_inbox_rewind(&self) -> Option<u64> {
        self.inbox_rewind.lock().take()
    }

    fn new(run_id: &str, replay: Option<Replay>) -> Journal {
        Journal {
            run_id: Arc::from(run_id),
            chain: Arc::new(Chain::new(run_id)),
            state: Mutex::new(State {
                seq: 0,
                pending: Vec::new(),
                pending_bytes: 0,
                replay,
                divergence: None,
                halt: None,
                phase: "BOOTSTRAP",
            }),
            halted: AtomicBool::new(false),
            off: false,
            inbox_rewind: Mutex::new(None),
        }
    }

    /// A journal that records nothing and answers nothing: every call runs live and unrecorded.
    /// Not for runs (they could not be replayed); the benchmark's baseline of what the journal
    /// costs.
    pub fn off(run_id: &str) -> Journal {
        Journal {
            off: true,
            ..Journal::new(run_id, None)
        }
    }

    /// Whether this journal records nothing ([`Journal::off`]).
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// Whether this journal answers from a recorded run.
    pub fn is_replaying(&self) -> bool {
        self.state.lock().replay.is_some()
    }

    /// Whether recorded answers are left to feed back.
    pub fn has_recorded(&self) -> bool {
        self.state
            .lock()
            .replay
            .as_ref()
            .is_some_and(|r| !r.records.is_empty())
    }

    /// Whether the journal answers from a recorded run and stops at its end (an offline
    /// replay, not a resume).
    pub fn is_offline_replay(&self) -> bool {
        self.state
            .lock()
            .replay
            .as_ref()
            .is_some_and(|r| r.past_end == PastEnd::Halt)
    }

    /// Note the phase the guest enters.
    pub fn set_phase(&self, phase: &'static str) {
        self.state.lock().phase = phase;
    }

    /// Whether the run must stop at its next epoch tick.
    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    /// Why the run was halted.
    pub fn halt_reason(&self) -> Option<String> {
        self.state.lock().halt.clone()
    }

    /// The first divergence, if any.
    pub fn divergence(&self) -> Option<Divergence> {
        self.state.lock().divergence.clone()
    }

    /// Records written (live) or answered (replay) so far.
    pub fn len(&self) -> u64 {
        self.state.lock().seq
    }

    /// Whether nothing was recorded or answered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Recorded answers fed back so far (replay).
    pub fn answered(&self) -> u64 {
        self.state.lock().replay.as_ref().map_or(0, |r| r.answered)
    }

    /// Records a replay has not reached.
    pub fn unreached(&self) -> usize {
        self.state
            .lock()
            .replay
            .as_ref()
            .map_or(0, |r| r.records.len())
    }

    /// The head after the last record chained, as the ledger writes it: in a live run, the
    /// last record the ledger's writer wrote (see [`Chain`]); name [`Journal::chain`] in an
    /// entry for the head at that entry.
    pub fn head(&self) -> String {
        head_text(&self.chain.head())
    }

    /// The run's chain, for an entry that names the head once the records before it are
    /// written.
    pub fn chain(&self) -> Arc<Chain> {
        self.chain.clone()
    }

    fn halt(&self, state: &mut State, reason: String) {
        if state.halt.is_none() {
            state.halt = Some(reason);
        }
        self.halted.store(true, Ordering::Release);
    }

    /// Stop the guest: something it did cannot be answered from the journal (an HTTP request
    /// while the journal is fed back). The first reason stays.
    pub fn halt_because(&self, reason: String) {
        let mut state = self.state.lock();
        self.halt(&mut state, reason);
    }

    /// Before a call: whether it runs live, is answered from the journal, or is halted.
    pub fn begin(&self, op: &str, args: &CallArgs) -> Begin {
        let mut state = self.state.lock();
        if let Some(reason) = &state.halt {
            return Begin::Halt(reason.clone());
        }
        let state = &mut *state;
        let Some(replay) = &mut state.replay else {
            return Begin::Live;
        };
        let args_digest = args.digest();
        // An external effect's intent precedes its result and is consumed with it (a resumed
        // call that ran again left an intent of its own before its result).
        let mut interrupted = None;
        if let Some(intent) = intent_of(op) {
            while let Some(next) = replay.records.front()
                && next.op == intent
                && next.args_digest == args_digest
            {
                let Some(record) = replay.records.pop_front() else {
                    break;
                };
                replay.answered += 1;
                state.seq = record.seq;
                self.chain
                    .extend(record.seq, intent, args_digest, &record.payload);
                interrupted = Some(record.seq);
            }
        }
        match replay.records.front() {
            Some(next) if next.op == op && next.args_digest == args_digest => {
                let Some(record) = replay.records.pop_front() else {
                    return Begin::Live;
                };
                replay.answered += 1;
                state.seq = record.seq;
                self.chain
                    .extend(record.seq, op, args_digest, &record.payload);
                Begin::Recorded(record.payload)
            }
            Some(next) => {
                let divergence = Divergence {
                    seq: next.seq,
                    expected: format!("`{}` with arguments {}", next.op, next.args_digest),
                    actual: format!("`{op}` with arguments {args_digest}"),
                };
                let reason = format!("replay diverged {divergence}");
                state.divergence = Some(divergence);
                self.halt(state, reason.clone());
                Begin::Halt(reason)
            }
            None => match replay.past_end {
                PastEnd::Live => {
                    // From here the run is live: records continue the recorded chain.
                    state.replay = None;
                    Begin::Live
                }
                PastEnd::Halt => {
                    let reason = match interrupted {
                        Some(seq) => format!(
                            "the recorded run was interrupted while `{op}` ran (its intent is call {seq}): its result was never recorded"
                        ),
                        None => format!(
                            "the recorded run made no call {} (`{op}`): it ended here",
                            state.seq + 1
                        ),
                    };
                    self.halt(state, reason.clone());
                    Begin::Halt(reason)
                }
            },
        }
    }

    /// After a live call: the records to write with the call's rows (the observations since
    /// the last call, then this answer) and the call's position and head.
    pub fn commit(
        &self,
        op: &'static str,
        args_digest: impl Into<ArgsDigest>,
        payload: Vec<u8>,
    ) -> Committed {
        let mut state = self.state.lock();
        let (seq, head, record) = self.next_record(&mut state, op, args_digest.into(), payload);
        let mut records = std::mem::take(&mut state.pending);
        state.pending_bytes = 0;
        records.push(Entry::Journal(record));
        Committed { records, seq, head }
    }

    /// After a live read: its record joins the pending entries (see [`Journal::hold`]) instead
    /// of being handed back; the call's position and head.
    pub fn commit_held(
        &self,
        op: &'static str,
        args_digest: impl Into<ArgsDigest>,
        payload: Vec<u8>,
    ) -> (u64, JournalHead) {
        let mut state = self.state.lock();
        let (seq, head, record) = self.next_record(&mut state, op, args_digest.into(), payload);
        state.pending_bytes = state.pending_bytes.saturating_add(record.payload.len());
        state.pending.push(Entry::Journal(record));
        (seq, head)
    }

    /// The next record, chained; past [`MAX_RECORDS`] the run is halted.
    fn next_record(
        &self,
        state: &mut State,
        op: &'static str,
        args_digest: ArgsDigest,
        payload: Vec<u8>,
    ) -> (u64, JournalHead, JournalRecord) {
        let seq = state.seq + 1;
        state.seq = seq;
        let head = JournalHead::Chained(self.chain.clone());
        if seq >= MAX_RECORDS {
            self.halt(
                state,
                format!("the run's journal holds {MAX_RECORDS} records, its limit"),
            );
        }
        let record = JournalRecord {
            run_id: self.run_id.clone(),
            seq,
            phase: state.phase,
            op: op.into(),
            args_digest,
            payload,
            head: head.clone(),
        };
        (seq, head, record)
    }

    /// A nondeterministic input the guest observes: recorded live, answered from the journal
    /// on replay. `live` makes the value; a replay whose record is not this observation
    /// diverges and gets `live`'s value so the guest can be stopped.
    pub fn observe(&self, op: &'static str, live: impl FnOnce() -> Vec<u8>) -> ObservedValue {
        if self.off {
            return ObservedValue::Value(live());
        }
        let mut state = self.state.lock();
        if state.replay.is_some() {
            drop(state);
            return match self.begin(op, &CallArgs::observed()) {
                Begin::Recorded(payload) => ObservedValue::Value(payload),
                Begin::Live | Begin::Halt(_) => ObservedValue::Value(live()),
            };
        }
        let payload = live();
        let seq = state.seq + 1;
        state.seq = seq;
        if seq >= MAX_RECORDS {
            self.halt(
                &mut state,
                format!("the run's journal holds {MAX_RECORDS} records, its limit (a guest reading the clock or random bytes in a loop)"),
            );
        }
        let head = JournalHead::Chained(self.chain.clone());
        let phase = state.phase;
        state.pending_bytes = state.pending_bytes.saturating_add(payload.len());
        state.pending.push(Entry::Journal(JournalRecord {
            run_id: self.run_id.clone(),
            seq,
            phase,
            op: op.into(),
            args_digest: ArgsDigest::Known(OBSERVED.to_string()),
            payload: payload.clone(),
            head,
        }));
        let flush = state.is_full();
        ObservedValue::Recorded {
            value: payload,
            flush,
        }
    }

    /// Entries not yet written, taken, oldest first: they go to the ledger before the next
    /// effect, at each phase transition and at the end of the run.
    pub fn take_pending(&self) -> Vec<Entry> {
        let mut state = self.state.lock();
        state.pending_bytes = 0;
        std::mem::take(&mut state.pending)
    }

    /// Keep a read's rows (after its record, [`Journal::commit_held`]) with the pending
    /// entries instead of handing them to the ledger now: a read forces no write, so reads
    /// back to back cost the writer thread nothing until the next effect. Whether the pending
    /// entries should go to the ledger now (they reached their bound).
    pub fn hold(&self, entries: Vec<Entry>) -> bool {
        let mut state = self.state.lock();
        for entry in entries {
            if let Entry::Journal(record) = &entry {
                state.pending_bytes = state.pending_bytes.saturating_add(record.payload.len());
            }
            state.pending.push(entry);
        }
        state.is_full()
    }
}

/// What [`Journal::observe`] gives.
pub enum ObservedValue {
    /// The value (replayed, or live in a replay that is being stopped).
    Value(Vec<u8>),
    /// A live value, recorded; `flush` when the observations kept in memory should go to the
    /// ledger now.
    Recorded {
        /// The value.
        value: Vec<u8>,
        /// Whether to hand [`Journal::take_pending`] to the ledger now.
        flush: bool,
    },
}

impl ObservedValue {
    fn into_parts(self) -> (Vec<u8>, bool) {
        match self {
            ObservedValue::Value(value) => (value, false),
            ObservedValue::Recorded { value, flush } => (value, flush),
        }
    }
}

/// What [`Journal::commit`] gives.
pub struct Committed {
    /// Entries to write, in order, in the transaction of the call's rows: those pending,
    /// then this call's record.
    pub records: Vec<Entry>,
    /// The call's position.
    pub seq: u64,
    /// The head after it.
    pub head: JournalHead,
}

/// The WASI clocks and random source of a run: each read goes through the run's journal.
pub(crate) mod sources {
    use super::*;
    use crate::ledger::Ledger;

    /// Hands a batch of observations to the ledger without waiting (a WASI clock read is
    /// synchronous); a full queue keeps them for the next call.
    fn observe(
        journal: &Journal,
        ledger: &Ledger,
        op: &'static str,
        live: impl FnOnce() -> Vec<u8>,
    ) -> Vec<u8> {
        let (value, flush) = journal.observe(op, live).into_parts();
        if flush && let Err(mut back) = ledger.try_append_all(journal.take_pending()) {
            // A full queue: kept, ahead of anything pending since, for the next call.
            let mut state = journal.state.lock();
            back.append(&mut state.pending);
            state.pending = back;
        }
        value
    }

    /// `wasi:clocks/wall-clock` through the journal.
    pub struct WallClock {
        pub journal: Arc<Journal>,
        pub ledger: Ledger,
    }

    impl wasmtime_wasi::HostWallClock for WallClock {
        fn resolution(&self) -> Duration {
            Duration::from_nanos(1)
        }

        fn now(&self) -> Duration {
            let bytes = observe(&self.journal, &self.ledger, OP_WALL, || {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let mut out = now.as_secs().to_be_bytes().to_vec();
                out.extend_from_slice(&now.subsec_nanos().to_be_bytes());
                out
            });
            let secs = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            let nanos = bytes
                .get(8..12)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            Duration::new(secs.unwrap_or(0), nanos.unwrap_or(0))
        }
    }

    /// `wasi:clocks/monotonic-clock` through the journal: nanoseconds since the run's
    /// store was made.
    pub struct MonotonicClock {
        pub journal: Arc<Journal>,
        pub ledger: Ledger,
        pub origin: std::time::Instant,
    }

    impl wasmtime_wasi::HostMonotonicClock for MonotonicClock {
        fn resolution(&self) -> u64 {
            1
        }

        fn now(&self) -> u64 {
            let origin = self.origin;
            let bytes = observe(&self.journal, &self.ledger, OP_MONOTONIC, || {
                let nanos = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                nanos.to_be_bytes().to_vec()
            });
            bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u64::from_be_bytes)
        }
    }

    /// `wasi:random/random` and `wasi:random/insecure` through the journal.
    pub struct Random {
        pub journal: Arc<Journal>,
        pub ledger: Ledger,
    }

    impl rand_core::TryRng for Random {
        type Error = std::convert::Infallible;

        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            let mut bytes = [0u8; 4];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u32::from_le_bytes(bytes))
        }

        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            let mut bytes = [0u8; 8];
            self.try_fill_bytes(&mut bytes)?;
            Ok(u64::from_le_bytes(bytes))
        }

        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            let len = dst.len();
            let bytes = observe(&self.journal, &self.ledger, OP_RANDOM, || {
                let mut fresh = vec![0u8; len];
                rand::fill(&mut fresh[..]);
                fresh
            });
            // A replayed record of another length is a divergence already recorded; the
            // guest is being stopped, so what it gets meanwhile only has to be the length.
            for (slot, byte) in dst
                .iter_mut()
                .zip(bytes.iter().chain(std::iter::repeat(&0)))
            {
                *slot = *byte;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::ledger::journal_chain::sha256_text;

    #[test]
    fn a_replay_answers_in_order_and_finds_the_first_divergence() {
        let live = Journal::recording("run-a");
        let a = live.commit("state.get", args_digest(&("k",)), b"\"v\"".to_vec());
        let b = live.commit("state.set", args_digest(&("k", "w")), b"null".to_vec());
        assert_eq!((a.seq, b.seq), (1, 2));
        let records = recorded(vec![a, b]);

        let same = Journal::replaying("run-a", records.clone(), PastEnd::Halt);
        assert!(
            matches!(same.begin("state.get", &CallArgs::of(&("k",))), Begin::Recorded(p) if p == b"\"v\"")
        );
        assert!(matches!(
            same.begin("state.set", &CallArgs::of(&("k", "w"))),
            Begin::Recorded(_)
        ));
        assert_eq!(
            same.head(),
            live.head(),
            "the replayed head is the recorded one"
        );
        assert!(
            matches!(same.begin("state.get", &CallArgs::of(&("k",))), Begin::Halt(r) if r.contains("ended here"))
        );
        assert!(same.is_halted());

        let other = Journal::replaying("run-a", records, PastEnd::Halt);
        assert!(matches!(
            other.begin("state.get", &CallArgs::of(&("k",))),
            Begin::Recorded(_)
        ));
        assert!(matches!(
            other.begin("state.set", &CallArgs::of(&("k", "x"))),
            Begin::Halt(_)
        ));
        let d = other.divergence().unwrap();
        assert_eq!(d.seq, 2);
        assert!(
            d.expected.starts_with("`state.set` with arguments sha256:"),
            "{d}"
        );
        assert_ne!(d.expected, d.actual);
    }

    fn journal_records(entries: Vec<Entry>) -> Vec<JournalRecord> {
        entries
            .into_iter()
            .filter_map(|e| match e {
                Entry::Journal(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The head a record is written with, as the ledger's writer makes it.
    fn written(r: &JournalRecord) -> String {
        match &r.head {
            JournalHead::Known(head) => head.to_string(),
            JournalHead::Chained(chain) => {
                head_text(&chain.extend(r.seq, &r.op, &r.args_digest.resolve(), &r.payload))
            }
        }
    }

    /// The records as the ledger holds them once written.
    fn recorded(committed: Vec<Committed>) -> Vec<Recorded> {
        committed
            .into_iter()
            .flat_map(|c| journal_records(c.records))
            .map(|r| Recorded {
                head: written(&r),
                seq: r.seq,
                phase: r.phase.to_string(),
                op: r.op.to_string(),
                args_digest: r.args_digest.resolve().into_owned(),
                payload: r.payload,
            })
            .collect()
    }

    #[test]
    fn a_tool_intent_is_consumed_with_its_result_and_an_unanswered_one_is_named() {
        let args = args_digest(&("append", Vec::<String>::new()));
        let live = Journal::recording("run-i");
        let intent = live.commit(OP_TOOL_INTENT, args.clone(), b"{}".to_vec());
        let result = live.commit("tools.invoke", args.clone(), b"{\"Ok\":1}".to_vec());
        let whole = recorded(vec![intent, result]);

        let replay = Journal::replaying("run-i", whole.clone(), PastEnd::Halt);
        assert!(
            matches!(replay.begin("tools.invoke", &CallArgs::known(args.clone())), Begin::Recorded(p) if p == b"{\"Ok\":1}")
        );
        assert_eq!(replay.head(), live.head(), "the intent is in the chain");
        assert_eq!(replay.answered(), 2);

        // Killed while the tool ran: only the intent is recorded.
        let cut = whole[..1].to_vec();
        let offline = Journal::replaying("run-i", cut.clone(), PastEnd::Halt);
        assert!(
            matches!(offline.begin("tools.invoke", &CallArgs::known(args.clone())), Begin::Halt(r) if r.contains("interrupted while `tools.invoke` ran (its intent is call 1)"))
        );
        // A resume that decided to run it again goes live past the intent.
        let resumed = Journal::replaying("run-i", cut, PastEnd::Live);
        assert!(matches!(
            resumed.begin("tools.invoke", &CallArgs::known(args.clone())),
            Begin::Live
        ));
        let again = resumed.commit(OP_TOOL_INTENT, args.clone(), b"{}".to_vec());
        assert_eq!(again.seq, 2, "the run's second intent follows the first");
        // Another call where the intent stands is a divergence.
        let other = Journal::replaying("run-i", whole, PastEnd::Live);
        assert!(matches!(
            other.begin("state.get", &CallArgs::known(args.clone())),
            Begin::Halt(_)
        ));
        assert_eq!(other.divergence().unwrap().seq, 1);
    }

    #[test]
    fn digests_are_written_as_lowercase_hex() {
        let digest: [u8; 32] = Sha256::digest(b"abc").into();
        assert_eq!(
            sha256_text(&digest),
            format!("sha256:{}", hex::encode(digest))
        );
    }

    #[test]
    fn observations_ride_with_the_next_call_and_chain_into_its_head() {
        let j = Journal::recording("run-b");
        let (v, flush) = j.observe(OP_RANDOM, || vec![7; 4]).into_parts();
        assert_eq!((v, flush), (vec![7; 4], false));
        let c = j.commit("state.get", args_digest(&("k",)), b"null".to_vec());
        let seq = c.seq;
        assert!(
            matches!(&c.head, JournalHead::Chained(chain) if chain.head() == genesis("run-b")),
            "the head is the writer's to compute"
        );
        let records = journal_records(c.records);
        assert_eq!(records.len(), 2);
        assert_eq!(&*records[0].op, OP_RANDOM);
        assert_eq!(seq, 2);
        let mut head = genesis("run-b");
        for r in &records {
            head = next_head(&head, r.seq, &r.op, &r.args_digest.resolve(), &r.payload);
            assert_eq!(written(r), head_text(&head), "record {} as written", r.seq);
        }
        assert_eq!(
            j.head(),
            head_text(&head),
            "the chain reached the last record"
        );
    }

    #[test]
    fn a_live_reads_digests_are_left_to_the_writer_and_are_the_ones_a_replay_computes() {
        let live = Journal::recording("run-w");
        let args = CallArgs::of(&("k",));
        assert!(matches!(live.begin("state.get", &args), Begin::Live));
        let (seq, head) = live.commit_held("state.get", args, b"\"v\"".to_vec());
        assert!(matches!(head, JournalHead::Chained(_)));
        let pending = journal_records(live.take_pending());
        assert!(
            matches!(&pending[0].args_digest, ArgsDigest::Of(json) if json == br#"["k"]"#),
            "a live read does not digest its arguments on the guest's thread"
        );
        let written = written(&pending[0]);
        assert_eq!(live.head(), written);
        // A replay digests the same arguments itself and reaches the same head.
        let recorded = vec![Recorded {
            seq,
            phase: "BOOTSTRAP".into(),
            op: "state.get".into(),
            args_digest: pending[0].args_digest.resolve().into_owned(),
            payload: b"\"v\"".to_vec(),
            head: written.clone(),
        }];
        assert_eq!(recorded[0].args_digest, args_digest(&("k",)));
        let replay = Journal::replaying("run-w", recorded, PastEnd::Halt);
        assert!(matches!(
            replay.begin("state.get", &CallArgs::of(&("k",))),
            Begin::Recorded(_)
        ));
        assert_eq!(replay.head(), written);
    }

    #[test]
    fn an_inbox_rewind_is_taken_once() {
        let j = Journal::replaying("run-r", Vec::new(), PastEnd::Live);
        assert_eq!(j.take_inbox_rewind(), None, "only a resume sets one");
        j.set_inbox_rewind(5);
        assert_eq!(j.take_inbox_rewind(), Some(5));
        assert_eq!(
            j.take_inbox_rewind(),
            None,
            "only the first receive rewinds"
        );
    }

    #[test]
    fn held_reads_ride_with_the_next_commit_in_order_and_are_bounded() {
        let j = Journal::recording("run-c");
        let (seq, _) = j.commit_held("state.get", args_digest(&("k",)), b"null".to_vec());
        assert_eq!(seq, 1);
        assert!(!j.hold(Vec::new()), "one read is far from the bound");
        let effect = j.commit("state.set", args_digest(&("k", "v")), b"null".to_vec());
        let ops: Vec<String> = journal_records(effect.records)
            .iter()
            .map(|r| r.op.to_string())
            .collect();
        assert_eq!(ops, ["state.get", "state.set"], "the held read goes first");
        assert!(j.take_pending().is_empty());
        // Bounded by count and by payload bytes.
        let mut full = false;
        for _ in 0..PENDING_FLUSH {
            let _ = j.commit_held("state.get", args_digest(&("k",)), b"null".to_vec());
            full = j.hold(Vec::new());
        }
        assert!(full, "{PENDING_FLUSH} held entries are the bound");
        assert_eq!(j.take_pending().len(), PENDING_FLUSH);
        let _ = j.commit_held(
            "artifacts.get",
            args_digest(&("a",)),
            vec![0; PENDING_FLUSH_BYTES],
        );
        assert!(j.hold(Vec::new()), "a megabyte of payload is the bound");
    }
}
