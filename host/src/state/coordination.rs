//! Multi-agent coordination state: the blackboard, direct messages and consensus of a task.
//!
//! Keyspace (the reference's `blackboard:{task}:*` and `msg:{task}:*`):
//!
//! | key                                   | type   | contents                                    |
//! |---------------------------------------|--------|---------------------------------------------|
//! | `blackboard:{task}:{section}`         | hash   | entry key → value, per [`Section`]          |
//! | `blackboard:{task}:proposals`         | hash   | proposal id → [`ProposalRecord`] (JSON)     |
//! | `blackboard:{task}:proposal_seq`      | string | last proposal number handed out             |
//! | `blackboard:{task}:votes:{proposal}`  | hash   | agent id → [`Vote`] (JSON), first vote wins |
//! | `msg:{task}:log`                      | list   | [`Message`] (JSON), oldest first; id = index + 1 |
//! | `msg:{task}:cursors`                  | hash   | agent id → id of the last message it received |
//! | `blackboard:{task}:usage`             | hash   | `entries`, `bytes` of all four sections (the task's quota) |
//! | `msg:{task}:usage`                    | hash   | `entries`, `bytes` (kind + body) of every message sent |
//!
//! Messages of a task form one log, so every agent sees every sender's messages in the order
//! they were sent. Receiving is a cursor per agent that the backend advances atomically with
//! the read, so a message is delivered to each recipient once even when hosts share the
//! backend. Proposal ids are `p1`, `p2`, … per task.
//!
//! Blackboard writes and sends are bounded per task by a [`Quota`], checked and counted in
//! the usage hashes in the same atomic step as the write ([`super::quota`]). Messages are a
//! log, so their usage counts what was sent, not what is still unread.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Admission, Once, Quota, StateError};
use crate::id::{AgentId, TaskId};

/// A section of a task's blackboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    /// The objective, analysis, constraints, complexity.
    Problem,
    /// Proposals and syntheses.
    Solutions,
    /// Evaluations and status.
    Progress,
    /// Votes and the final decision.
    Consensus,
}

impl Section {
    /// Every section, in blackboard order.
    pub const ALL: [Section; 4] = [
        Section::Problem,
        Section::Solutions,
        Section::Progress,
        Section::Consensus,
    ];

    /// The lowercase name used in keys and on the wire (`problem`, `solutions`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Problem => "problem",
            Section::Solutions => "solutions",
            Section::Progress => "progress",
            Section::Consensus => "consensus",
        }
    }

    /// Parse a section name as [`Section::as_str`] writes it.
    pub fn parse(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Votes a proposal needs when its task sets no quorum (`problem/quorum`): two, so that no
/// proposal passes on one agent's say.
pub const DEFAULT_QUORUM: u32 = 2;

/// Entries of the `problem` section the host writes: the task's objective, roster, deadline
/// and consensus settings (the orchestrator), and the mediator's spawn. Agents read them and
/// cannot write them.
pub const HOST_PROBLEM_KEYS: &[&str] = &[
    "objective",
    "agents",
    "mediator",
    "deadline_ms",
    "quorum",
    "proposer_votes",
    "spawn_reason",
    "spawn_detail",
    "voters",
];

/// Whether an entry is the host's: the whole `consensus` section (written by the consensus
/// capability from its own tally: `final`, `validation`) and [`HOST_PROBLEM_KEYS`].
pub fn is_host_owned(section: Section, key: &str) -> bool {
    match section {
        Section::Consensus => true,
        Section::Problem => HOST_PROBLEM_KEYS.contains(&key),
        Section::Solutions | Section::Progress => false,
    }
}

/// Keys of the coordination keyspace.
pub mod keys {
    use super::Section;

    /// `blackboard:{task}:{section}`: the entries of one blackboard section.
    pub fn section(task: &str, section: Section) -> String {
        format!("blackboard:{task}:{}", section.as_str())
    }
    /// `blackboard:{task}:proposals`: proposal id → [`ProposalRecord`](super::ProposalRecord).
    pub fn proposals(task: &str) -> String {
        format!("blackboard:{task}:proposals")
    }
    /// `blackboard:{task}:proposal_seq`: the last proposal number handed out.
    pub fn proposal_seq(task: &str) -> String {
        format!("blackboard:{task}:proposal_seq")
    }
    /// `blackboard:{task}:votes:{proposal}`: agent id → [`Vote`](super::Vote).
    pub fn votes(task: &str, proposal: &str) -> String {
        format!("blackboard:{task}:votes:{proposal}")
    }
    /// `msg:{task}:log`: the task's messages, oldest first.
    pub fn message_log(task: &str) -> String {
        format!("msg:{task}:log")
    }
    /// `msg:{task}:cursors`: agent id → id of the last message it received.
    pub fn message_cursors(task: &str) -> String {
        format!("msg:{task}:cursors")
    }
    /// `blackboard:{task}:usage`: entries and bytes of the task's blackboard.
    pub fn board_usage(task: &str) -> String {
        format!("blackboard:{task}:usage")
    }
    /// `msg:{task}:usage`: messages sent and their bytes.
    pub fn message_usage(task: &str) -> String {
        format!("msg:{task}:usage")
    }
}

/// A message as stored in `msg:{task}:log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Position in the task's log, from 1.
    pub id: u64,
    /// The agent that sent it.
    pub sender: AgentId,
    /// `None` for a broadcast to every other agent of the task.
    pub recipient: Option<AgentId>,
    /// `PROPOSAL`, `FEEDBACK`, `HANDOFF`, or a free-form kind.
    pub kind: String,
    /// The message text, as the sender wrote it.
    pub body: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

impl Message {
    /// Whether `agent` receives this message: addressed to it, or a broadcast by someone else.
    pub fn is_for(&self, agent: &str) -> bool {
        match &self.recipient {
            Some(recipient) => recipient == agent,
            None => self.sender != agent,
        }
    }
}

/// A message to append; the backend assigns its id.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// The agent sending it.
    pub sender: &'a AgentId,
    /// `None` for a broadcast to every other agent of the task.
    pub recipient: Option<&'a AgentId>,
    /// `PROPOSAL`, `FEEDBACK`, `HANDOFF`, or a free-form kind.
    pub kind: &'a str,
    /// The message text.
    pub body: &'a str,
    /// Wall-clock milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
}

impl NewMessage<'_> {
    /// The stored form, once the backend knows the id.
    pub fn with_id(&self, id: u64) -> Message {
        Message {
            id,
            sender: self.sender.clone(),
            recipient: self.recipient.cloned(),
            kind: self.kind.to_string(),
            body: self.body.to_string(),
            sent_at_ms: self.sent_at_ms,
        }
    }
}

/// A vote's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VoteChoice {
    /// For the proposal (`ACCEPT`).
    Accept,
    /// Against it (`REJECT`); a required agent's reject blocks consensus.
    Reject,
    /// Counted as a vote cast, neither for nor against (`ABSTAIN`).
    Abstain,
}

impl VoteChoice {
    /// The uppercase name stored and shown to agents (`ACCEPT`, `REJECT`, `ABSTAIN`).
    pub fn as_str(self) -> &'static str {
        match self {
            VoteChoice::Accept => "ACCEPT",
            VoteChoice::Reject => "REJECT",
            VoteChoice::Abstain => "ABSTAIN",
        }
    }
}

/// One agent's vote on a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The voting agent.
    pub agent: AgentId,
    /// For, against or abstaining.
    pub choice: VoteChoice,
    /// The agent's free-text justification; may be empty.
    pub reasoning: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// How a proposal was settled outside the vote (superseded by a merged proposal, withdrawn).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The agent that settled the proposal.
    pub by: AgentId,
    /// Why it was settled, e.g. the proposal that superseded it.
    pub note: String,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// A proposal as stored in `blackboard:{task}:proposals` (votes live beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRecord {
    /// The proposal id, `p1`, `p2`, … per task.
    pub id: String,
    /// The agent that opened it.
    pub proposer: AgentId,
    /// A short summary.
    pub title: String,
    /// The full proposal text.
    pub body: String,
    /// Agents whose votes are needed.
    pub required: Vec<AgentId>,
    /// Wall-clock milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// How it was settled outside the vote; `None` while unresolved.
    pub resolution: Option<Resolution>,
    /// The agents that may vote (the required ones among them); a vote from anyone else is
    /// refused. Empty only in records written before proposals declared their voters.
    #[serde(default)]
    pub voters: Vec<AgentId>,
    /// Votes it needs before it can reach consensus. 0 only in records written before
    /// proposals had a quorum.
    #[serde(default)]
    pub quorum: u32,
}

/// A proposal to open; the backend assigns its id.
#[derive(Debug, Clone, Copy)]
pub struct NewProposal<'a> {
    /// The agent opening it.
    pub proposer: &'a AgentId,
    /// A short summary.
    pub title: &'a str,
    /// The full proposal text.
    pub body: &'a str,
    /// Agents whose votes are needed.
    pub required: &'a [AgentId],
    /// Agents that may vote; includes `required`.
    pub voters: &'a [AgentId],
    /// Votes it needs before it can reach consensus.
    pub quorum: u32,
    /// Wall-clock milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl NewProposal<'_> {
    /// The stored form, once the backend knows the id; unresolved.
    pub fn with_id(&self, id: String) -> ProposalRecord {
        ProposalRecord {
            id,
            proposer: self.proposer.clone(),
            title: self.title.to_string(),
            body: self.body.to_string(),
            required: self.required.to_vec(),
            created_at_ms: self.created_at_ms,
            resolution: None,
            voters: self.voters.to_vec(),
            quorum: self.quorum,
        }
    }
}

/// A proposal with its votes, oldest vote first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposal itself, flattened into the same JSON object.
    #[serde(flatten)]
    pub record: ProposalRecord,
    /// Votes cast so far, in [`sort_votes`] order.
    pub votes: Vec<Vote>,
}

/// The count of a proposal's votes and whether it reached consensus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Number of `ACCEPT` votes.
    pub accepts: u32,
    /// Number of `REJECT` votes.
    pub rejects: u32,
    /// Number of `ABSTAIN` votes.
    pub abstains: u32,
    /// Required agents that have not voted.
    pub missing: Vec<AgentId>,
    /// Required agents that rejected.
    pub required_rejects: Vec<AgentId>,
    /// Votes needed ([`ProposalRecord::quorum`]).
    pub quorum: u32,
    /// The reference's rule and a quorum: every required agent voted, at least `quorum`
    /// votes were cast, accepts outnumber rejects, and no required agent rejected.
    pub reached: bool,
}

impl Proposal {
    /// Count the votes and apply the consensus rule (see [`Tally::reached`]).
    pub fn tally(&self) -> Tally {
        let count = |choice| {
            let n = self.votes.iter().filter(|v| v.choice == choice).count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let (accepts, rejects, abstains) = (
            count(VoteChoice::Accept),
            count(VoteChoice::Reject),
            count(VoteChoice::Abstain),
        );
        let vote_of = |agent: &AgentId| self.votes.iter().find(|v| v.agent == *agent);
        let missing: Vec<AgentId> = self
            .record
            .required
            .iter()
            .filter(|agent| vote_of(agent).is_none())
            .cloned()
            .collect();
        let required_rejects: Vec<AgentId> = self
            .record
            .required
            .iter()
            .filter(|agent| vote_of(agent).is_some_and(|v| v.choice == VoteChoice::Reject))
            .cloned()
            .collect();
        let cast = accepts.saturating_add(rejects).saturating_add(abstains);
        let quorum = self.record.quorum;
        let reached = missing.is_empty()
            && cast >= quorum
            && accepts > rejects
            && required_rejects.is_empty();
        Tally {
            accepts,
            rejects,
            abstains,
            missing,
            required_rejects,
            quorum,
            reached,
        }
    }

    /// Whether `agent` may vote on it: one of its voters (any agent, for a record written
    /// before proposals declared voters). The refusal says who may.
    pub fn may_vote(&self, agent: &AgentId) -> Result<(), String> {
        let voters = &self.record.voters;
        if voters.is_empty() || voters.contains(agent) {
            return Ok(());
        }
        let names: Vec<&str> = voters.iter().map(AgentId::as_str).collect();
        Err(format!(
            "agent `{agent}` is not one of the voters of `{}` ({}), which its proposer declared",
            self.record.id,
            names.join(", ")
        ))
    }

    /// Unresolved and contested: someone rejected it, it has not reached consensus, and no
    /// one has settled it. The orchestrator's CONFLICT condition counts these.
    pub fn in_conflict(&self) -> bool {
        self.record.resolution.is_none()
            && self.votes.iter().any(|v| v.choice == VoteChoice::Reject)
            && !self.tally().reached
    }
}

/// What [`Coordination::cast_vote`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CastOutcome {
    /// The vote was stored.
    Recorded,
    /// The agent had voted; votes are final, so the first one stands.
    AlreadyVoted(Vote),
    /// No proposal of the task has that id.
    UnknownProposal,
}

/// What [`Coordination::resolve_proposal`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolveOutcome {
    /// The resolution was stored.
    Resolved,
    /// It was already settled; the first resolution stands.
    AlreadyResolved(Resolution),
    /// No proposal of the task has that id.
    UnknownProposal,
}

/// Whether `id` has the shape of a proposal id (`p` and a positive number), so it can be
/// interpolated into `blackboard:{task}:votes:{proposal}`.
pub fn is_proposal_id(id: &str) -> bool {
    id.strip_prefix('p').is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 19
            && n.bytes().all(|b| b.is_ascii_digit())
            && !n.starts_with('0')
    })
}

/// The proposal id for sequence number `n`.
pub fn proposal_id(n: u64) -> String {
    format!("p{n}")
}

/// The sequence number of a proposal id; `None` unless [`is_proposal_id`].
pub(crate) fn proposal_number(id: &str) -> Option<u64> {
    if !is_proposal_id(id) {
        return None;
    }
    id.get(1..)?.parse().ok()
}

/// Backend of a task's blackboard, messages and proposals (the keyspace above). Every call
/// fails with [`StateError`] when the backend cannot be reached. The writes a guest asks for
/// take a [`Once`]: given one, the write happens at most once (see [`StateStore`]).
#[async_trait]
pub trait Coordination: Send + Sync {
    /// Set `key` in the task's `section` (replacing any value) unless that takes the task's
    /// blackboard past `quota` (entries of all sections, bytes of key + value), checked,
    /// written and counted in one atomic step. The host's own writes pass
    /// [`Quota::UNLIMITED`].
    async fn board_write(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission, StateError>;
    /// The value of `key` in the task's `section`; `None` if it was never written.
    async fn board_read(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
    ) -> Result<Option<String>, StateError>;
    /// Set `key` in the task's `section` unless it is set; whether it was written. The first
    /// writer of a record that is set once (the final decision) wins, across hosts.
    async fn board_insert(
        &self,
        task: &TaskId,
        section: Section,
        key: &str,
        value: &str,
        once: Option<&Once>,
    ) -> Result<bool, StateError>;
    /// Every entry of the section, sorted by key.
    async fn board_entries(
        &self,
        task: &TaskId,
        section: Section,
    ) -> Result<Vec<(String, String)>, StateError>;

    /// Append a message to the task's log unless that takes the task past `quota` (messages
    /// sent, bytes of kind + body), checked, appended and counted in one atomic step; stored,
    /// with its id (1 for the first message).
    async fn send_message(
        &self,
        task: &TaskId,
        message: &NewMessage<'_>,
        quota: Quota,
        once: Option<&Once>,
    ) -> Result<Admission<u64>, StateError>;
    /// Up to `limit` messages for `agent` ([`Message::is_for`]) after its cursor, oldest first,
    /// and advance the cursor past them in the same atomic step. With fewer than `limit`
    /// matches the cursor moves to the end of the log.
    async fn receive_messages(
        &self,
        task: &TaskId,
        agent: &AgentId,
        limit: usize,
    ) -> Result<Vec<Message>, StateError>;
    /// Set `agent`'s cursor so its next receive starts just after message `after` (0: at
    /// the start of the log). A resumed run does this once, to where its journal says the
    /// guest had read: messages a lost answer consumed are delivered again, none twice.
    async fn rewind_inbox(
        &self,
        task: &TaskId,
        agent: &AgentId,
        after: u64,
    ) -> Result<(), StateError>;
    /// Every message of the task, oldest first (operators and metrics).
    async fn messages(&self, task: &TaskId) -> Result<Vec<Message>, StateError>;

    /// Open a proposal; returns its id (`p1`, `p2`, …).
    async fn propose(
        &self,
        task: &TaskId,
        proposal: &NewProposal<'_>,
        once: Option<&Once>,
    ) -> Result<String, StateError>;
    /// Record `vote` on the proposal unless its agent already voted.
    async fn cast_vote(
        &self,
        task: &TaskId,
        proposal_id: &str,
        vote: &Vote,
        once: Option<&Once>,
    ) -> Result<CastOutcome, StateError>;
    /// Settle a proposal outside the vote, once.
    async fn resolve_proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
        resolution: &Resolution,
        once: Option<&Once>,
    ) -> Result<ResolveOutcome, StateError>;
    /// The proposal with its votes; `None` if the task has no proposal with that id.
    async fn proposal(
        &self,
        task: &TaskId,
        proposal_id: &str,
    ) -> Result<Option<Proposal>, StateError>;
    /// Every proposal of the task in id order.
    async fn proposals(&self, task: &TaskId) -> Result<Vec<Proposal>, StateError>;
}

/// Order votes as every backend returns them: oldest first, ties by agent id.
pub fn sort_votes(votes: &mut [Vote]) {
    votes.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.agent.cmp(&b.agent)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(agent: &str) -> AgentId {
        AgentId::new(agent).unwrap()
    }

    fn vote(agent: &str, choice: VoteChoice) -> Vote {
        Vote {
            agent: id(agent),
            choice,
            reasoning: String::new(),
            at_ms: 1,
        }
    }

    fn proposal(required: &[&str], votes: Vec<Vote>) -> Proposal {
        with_quorum(required, 0, votes)
    }

    fn with_quorum(required: &[&str], quorum: u32, votes: Vec<Vote>) -> Proposal {
        let required: Vec<AgentId> = required.iter().map(|s| id(s)).collect();
        Proposal {
            record: NewProposal {
                proposer: &id("alpha"),
                title: "t",
                body: "b",
                required: &required,
                voters: &required,
                quorum,
                created_at_ms: 0,
            }
            .with_id("p1".into()),
            votes,
        }
    }

    #[test]
    fn consensus_needs_a_quorum_of_votes() {
        use VoteChoice::*;
        // No required voters: before quorums, the proposer's one accept would have passed it.
        assert!(!with_quorum(&[], 2, vec![vote("a", Accept)]).tally().reached);
        assert!(
            with_quorum(&[], 2, vec![vote("a", Accept), vote("b", Abstain)])
                .tally()
                .reached
        );
        let tally = with_quorum(&["a"], 3, vec![vote("a", Accept), vote("b", Accept)]).tally();
        assert_eq!((tally.quorum, tally.reached), (3, false));
    }

    #[test]
    fn only_declared_voters_may_vote() {
        let open = proposal(&["a"], vec![]);
        assert!(open.may_vote(&id("a")).is_ok());
        let err = open.may_vote(&id("z")).unwrap_err();
        assert!(
            err.contains("`z` is not one of the voters of `p1` (a)"),
            "{err}"
        );
        // A record from before voters were declared keeps its old, open rule.
        let mut legacy = proposal(&["a"], vec![]);
        legacy.record.voters.clear();
        assert!(legacy.may_vote(&id("z")).is_ok());
        let json = r#"{"id":"p1","proposer":"alpha","title":"t","body":"b","required":[],"created_at_ms":0,"resolution":null}"#;
        let old: ProposalRecord = serde_json::from_str(json).unwrap();
        assert_eq!((old.voters.len(), old.quorum), (0, 0));
    }

    #[test]
    fn host_owned_entries_are_the_consensus_section_and_the_tasks_settings() {
        assert!(is_host_owned(Section::Consensus, "final"));
        assert!(is_host_owned(Section::Consensus, "anything"));
        assert!(is_host_owned(Section::Problem, "agents"));
        assert!(is_host_owned(Section::Problem, "quorum"));
        assert!(!is_host_owned(Section::Problem, "complexity"));
        assert!(!is_host_owned(Section::Solutions, "agents"));
    }

    #[test]
    fn consensus_needs_every_required_vote_a_majority_and_no_required_reject() {
        use VoteChoice::*;
        let reached = |p: &Proposal| p.tally().reached;
        assert!(!reached(&proposal(&["a", "b"], vec![vote("a", Accept)])));
        assert!(reached(&proposal(
            &["a", "b"],
            vec![vote("a", Accept), vote("b", Accept)]
        )));
        // A tie is not a majority.
        assert!(!reached(&proposal(
            &["a"],
            vec![vote("a", Accept), vote("x", Reject)]
        )));
        // Abstentions count as votes cast but not towards the majority.
        assert!(reached(&proposal(
            &["a", "b"],
            vec![vote("a", Accept), vote("b", Abstain)]
        )));
        assert!(!reached(&proposal(
            &["a", "b"],
            vec![vote("a", Abstain), vote("b", Abstain)]
        )));
        // A required reject vetoes even a majority.
        let vetoed = proposal(
            &["a", "b"],
            vec![vote("a", Reject), vote("b", Accept), vote("c", Accept)],
        );
        assert_eq!(vetoed.tally().required_rejects, vec![id("a")]);
        assert!(!reached(&vetoed));
        assert!(vetoed.in_conflict());
        // A non-required reject is outvoted.
        assert!(reached(&proposal(
            &["a"],
            vec![vote("a", Accept), vote("b", Accept), vote("c", Reject)]
        )));
    }

    #[test]
    fn proposal_ids_are_p_and_a_positive_number() {
        assert!(is_proposal_id("p1") && is_proposal_id("p42"));
        for bad in ["", "p", "p0", "p01", "1", "p1:x", "px", "p-1"] {
            assert!(!is_proposal_id(bad), "{bad}");
        }
        assert_eq!(proposal_id(7), "p7");
        assert_eq!(proposal_number("p42"), Some(42));
        let largest = 10u64.pow(19) - 1;
        assert_eq!(proposal_number(&proposal_id(largest)), Some(largest));
        assert_eq!(proposal_number("p01"), None);
    }

    #[test]
    fn broadcasts_reach_everyone_but_the_sender() {
        let (alpha, beta) = (id("alpha"), id("beta"));
        let m = NewMessage {
            sender: &alpha,
            recipient: None,
            kind: "PROPOSAL",
            body: "x",
            sent_at_ms: 0,
        }
        .with_id(1);
        assert!(m.is_for("beta") && !m.is_for("alpha"));
        let direct = NewMessage {
            recipient: Some(&beta),
            ..NewMessage {
                sender: &alpha,
                recipient: None,
                kind: "FEEDBACK",
                body: "y",
                sent_at_ms: 0,
            }
        }
        .with_id(2);
        assert!(direct.is_for("beta") && !direct.is_for("gamma"));
    }
}
