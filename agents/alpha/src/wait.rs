//! Coordination helpers shared by the primary agents: the task deadline, the view of the
//! task's proposals, and the wait loop that votes until the proposals are settled.
//!
//! `beta` compiles this same file (`#[path]`): each agent is its own component, and one
//! shared file is simpler than a crate for one module.

#![allow(
    dead_code,
    reason = "each agent compiles this file and uses its own part, so what is dead differs per agent"
)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warden_sdk::AgentError;
use warden_sdk::blackboard::{self, Section};
use warden_sdk::consensus::{self, Proposal, ProposalTally, VoteChoice};
use warden_sdk::llm;
use warden_sdk::messaging::{self, Message};

/// The longest single wait for messages.
pub const POLL: Duration = Duration::from_millis(250);
/// How often an idle wait loop looks at the proposals; any message makes it look at once.
const CHECK_EVERY_MS: u64 = 1_000;
/// The task's length when `problem/deadline_ms` is missing, from the start of EXECUTE.
const DEFAULT_TASK_MS: u64 = 20_000;
/// Waiting stops this long before the task's deadline, leaving time to write the results.
const MARGIN_MS: u64 = 1_000;
/// Largest blackboard value the host accepts.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// When this agent stops waiting for the others.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    stop_ms: u64,
}

impl Deadline {
    /// `problem/deadline_ms` less the margin; 20 s after `start_ms` if the entry is missing or
    /// not a number.
    pub fn from_board(start_ms: u64) -> Result<Self, AgentError> {
        let task_deadline = read_problem("deadline_ms")?
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or_else(|| start_ms.saturating_add(DEFAULT_TASK_MS));
        Ok(Self {
            stop_ms: task_deadline.saturating_sub(MARGIN_MS),
        })
    }

    pub fn remaining(&self) -> Duration {
        Duration::from_millis(self.stop_ms.saturating_sub(now_ms()))
    }

    pub fn passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The next wait for messages: [`POLL`], or less near the deadline.
    pub fn slice(&self) -> Duration {
        self.remaining().min(POLL)
    }
}

/// The `problem/<key>` entry.
pub fn read_problem(key: &str) -> Result<Option<String>, AgentError> {
    Ok(blackboard::read(Section::Problem, key)?)
}

/// The comma-separated agent ids in `problem/<key>`; empty if the entry is missing.
pub fn problem_ids(key: &str) -> Result<Vec<String>, AgentError> {
    let value = read_problem(key)?.unwrap_or_default();
    let mut ids: Vec<String> = Vec::new();
    for id in value.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        if !ids.iter().any(|known| known == id) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// `text` cut to at most `max` bytes on a character boundary.
pub fn clip(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Whether `id` looks like a proposal id the host hands out (`p1`, `p2`, …), so that it is
/// safe to use in a blackboard key.
pub fn is_proposal_id(id: &str) -> bool {
    id.strip_prefix('p')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

pub fn choice_name(choice: VoteChoice) -> &'static str {
    match choice {
        VoteChoice::Accept => "ACCEPT",
        VoteChoice::Reject => "REJECT",
        VoteChoice::Abstain => "ABSTAIN",
    }
}

/// Reads a model's verdict, `ACCEPT|REJECT|ABSTAIN[: reasoning]`. An answer that starts with
/// none of them is an abstention: the agent has no opinion it can stand behind, and an
/// abstention neither blocks nor carries a proposal.
pub fn parse_verdict(answer: &str) -> (VoteChoice, String) {
    let text = answer.trim();
    for (word, choice) in [
        ("ACCEPT", VoteChoice::Accept),
        ("REJECT", VoteChoice::Reject),
        ("ABSTAIN", VoteChoice::Abstain),
    ] {
        let Some(rest) = text
            .get(..word.len())
            .filter(|head| head.eq_ignore_ascii_case(word))
            .and_then(|_| text.get(word.len()..))
        else {
            continue;
        };
        if rest.starts_with(|c: char| c.is_alphanumeric()) {
            continue;
        }
        let rest = rest.trim_start();
        let reasoning = rest.strip_prefix(':').unwrap_or(rest).trim();
        let reasoning = if reasoning.is_empty() {
            word
        } else {
            reasoning
        };
        return (choice, clip(reasoning, MAX_VALUE_BYTES).to_owned());
    }
    let reasoning = format!("no clear verdict in the answer: {}", clip(text, 200));
    (VoteChoice::Abstain, reasoning)
}

/// Where a proposal stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Reached,
    Resolved(String),
    InConflict,
    /// Every required agent voted, without consensus and without a reject.
    Failed,
    Open {
        missing: Vec<String>,
    },
}

impl Status {
    pub fn is_settled(&self) -> bool {
        matches!(self, Self::Reached | Self::Resolved(_))
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Reached => f.write_str("consensus reached"),
            Self::Resolved(note) => write!(f, "resolved ({note})"),
            Self::InConflict => f.write_str("in conflict"),
            Self::Failed => f.write_str("voted without consensus"),
            Self::Open { missing } => write!(f, "open, waiting for {}", missing.join(", ")),
        }
    }
}

/// A vote this agent cast.
#[derive(Clone, Debug)]
pub struct CastVote {
    pub proposal_id: String,
    pub title: String,
    pub choice: VoteChoice,
    pub reasoning: String,
}

/// This agent's view of the task's proposals: the ones it made or must vote on.
///
/// Tallies are fetched only for unsettled proposals and kept once every required agent has
/// voted (votes are final, so such a tally no longer changes), which keeps the calls, and so
/// the ledger, small.
#[derive(Debug)]
pub struct Board {
    me: String,
    proposals: Vec<Proposal>,
    tallies: HashMap<String, ProposalTally>,
    voted: HashSet<String>,
    /// Votes cast through [`Board::cast`], oldest first.
    pub votes: Vec<CastVote>,
}

impl Board {
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            proposals: Vec::new(),
            tallies: HashMap::new(),
            voted: HashSet::new(),
            votes: Vec::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Reloads the proposals and the tallies that may still change.
    pub fn refresh(&mut self) -> Result<(), AgentError> {
        self.proposals = consensus::proposals()?;
        let stale: Vec<String> = self
            .relevant()
            .filter(|p| p.resolution.is_none())
            .filter(|p| {
                !self
                    .tallies
                    .get(&p.id)
                    .is_some_and(|t| t.missing.is_empty())
            })
            .map(|p| p.id.clone())
            .collect();
        for id in stale {
            let tally = consensus::tally(&id)?;
            if tally.votes.iter().any(|vote| vote.agent == self.me) {
                self.voted.insert(id.clone());
            }
            self.tallies.insert(id, tally);
        }
        Ok(())
    }

    /// Every proposal of the task, as of the last refresh.
    pub fn proposals(&self) -> &[Proposal] {
        &self.proposals
    }

    /// The proposals this agent made or must vote on.
    pub fn relevant(&self) -> impl Iterator<Item = &Proposal> {
        self.proposals
            .iter()
            .filter(|p| p.proposer == self.me || p.required.contains(&self.me))
    }

    /// Whether this agent still owes `proposal` its vote. Needs a refresh since the
    /// proposal appeared, so that its tally is known.
    pub fn needs_my_vote(&self, proposal: &Proposal) -> bool {
        proposal.resolution.is_none()
            && proposal.required.contains(&self.me)
            && !self.voted.contains(&proposal.id)
            && self.tallies.contains_key(&proposal.id)
    }

    /// Whether this agent voted on `proposal_id`.
    pub fn has_voted(&self, proposal_id: &str) -> bool {
        self.voted.contains(proposal_id)
    }

    /// Casts this agent's vote and remembers it.
    pub fn cast(
        &mut self,
        proposal: &Proposal,
        choice: VoteChoice,
        reasoning: &str,
    ) -> Result<(), AgentError> {
        consensus::cast(&proposal.id, choice, reasoning)?;
        self.voted.insert(proposal.id.clone());
        // The tally changed; the next refresh fetches it again.
        self.tallies.remove(&proposal.id);
        self.votes.push(CastVote {
            proposal_id: proposal.id.clone(),
            title: proposal.title.clone(),
            choice,
            reasoning: reasoning.to_owned(),
        });
        Ok(())
    }

    pub fn status(&self, proposal: &Proposal) -> Status {
        if let Some(note) = &proposal.resolution {
            return Status::Resolved(note.clone());
        }
        if proposal.in_conflict {
            return Status::InConflict;
        }
        match self.tallies.get(&proposal.id) {
            Some(tally) if tally.reached => Status::Reached,
            Some(tally) if tally.missing.is_empty() => Status::Failed,
            Some(tally) => Status::Open {
                missing: tally.missing.clone(),
            },
            None => Status::Open {
                missing: proposal.required.clone(),
            },
        }
    }

    /// Whether nothing but a mediator can change `proposal` any more.
    fn is_decided(&self, proposal: &Proposal) -> bool {
        proposal.resolution.is_some()
            || self
                .tallies
                .get(&proposal.id)
                .is_some_and(|t| t.missing.is_empty())
    }
}

/// How an agent decides that waiting is over.
#[derive(Clone, Copy, Debug)]
pub enum Policy {
    /// Waits until every proposal it must vote on is settled.
    Voter,
    /// Also stops once every vote is in when its contested proposals have no mediator to
    /// turn to (`mediator_configured` is whether `problem/mediator` is set).
    Proposer { mediator_configured: bool },
}

/// What the wait loop needs to know about the agent running it.
#[derive(Debug)]
pub struct WaitConfig<'a> {
    /// `ALPHA` or `BETA`: the vote prompt is `<prefix> vote: <title>\n<body>`.
    pub prefix: &'a str,
    /// System prompt for votes.
    pub system: &'a str,
    pub policy: Policy,
}

/// Why the wait loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    /// `consensus/final` was written (or a mediator's `progress/mediation`); its value.
    Final(String),
    /// Every relevant proposal is settled and no mediator is pending.
    Settled,
    /// A proposer's proposals are voted on, some without consensus, and no mediator will come.
    Unmediated,
    Deadline,
}

impl std::fmt::Display for WaitEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Final(value) => write!(f, "consensus/final written: {value}"),
            Self::Settled => f.write_str("every proposal settled"),
            Self::Unmediated => f.write_str("votes complete, contested, no mediator"),
            Self::Deadline => f.write_str("deadline reached"),
        }
    }
}

/// Votes on what needs this agent's vote until `consensus/final` appears, everything it made
/// or must vote on is settled with no mediator pending, or the deadline passes.
///
/// `on_message` sees each received message first; any message also triggers a look at the
/// proposals, since votes, resolutions and hand-offs are what messages announce.
pub fn wait_for_settlement(
    board: &mut Board,
    config: &WaitConfig<'_>,
    deadline: Deadline,
    mut on_message: impl FnMut(&Message) -> Result<(), AgentError>,
) -> Result<WaitEnd, AgentError> {
    let mut last_check: Option<u64> = None;
    let mut mediator_spawned = false;
    let mut heard = false;
    loop {
        let due =
            heard || last_check.is_none_or(|at| now_ms().saturating_sub(at) >= CHECK_EVERY_MS);
        if due {
            last_check = Some(now_ms());
            // The task's decision, or the mediator's word that its merge did not reach one.
            let done = match blackboard::read(Section::Consensus, "final")? {
                Some(value) => Some(value),
                None if mediator_spawned => blackboard::read(Section::Progress, "mediation")?,
                None => None,
            };
            if let Some(value) = done {
                // Once more, so that the caller judges its proposals as they ended.
                board.refresh()?;
                return Ok(WaitEnd::Final(value));
            }
            board.refresh()?;
            if vote_owed(board, config)? {
                // Our vote may have settled something: look again after the next receive.
                last_check = None;
            } else if let Some(end) = stop(board, config.policy, &mut mediator_spawned)? {
                return Ok(end);
            }
        }
        if deadline.passed() {
            board.refresh()?;
            return Ok(WaitEnd::Deadline);
        }
        let messages = messaging::receive(deadline.slice())?;
        heard = !messages.is_empty();
        for message in &messages {
            on_message(message)?;
        }
    }
}

/// Asks the model and votes on every proposal that needs this agent's vote; whether it cast
/// any.
fn vote_owed(board: &mut Board, config: &WaitConfig<'_>) -> Result<bool, AgentError> {
    let owed: Vec<Proposal> = board
        .relevant()
        .filter(|p| board.needs_my_vote(p))
        .cloned()
        .collect();
    for proposal in &owed {
        let prompt = format!(
            "{} vote: {}\n{}",
            config.prefix, proposal.title, proposal.body
        );
        let (choice, reasoning) = parse_verdict(&llm::ask(config.system, &prompt)?);
        board.cast(proposal, choice, &reasoning)?;
    }
    Ok(!owed.is_empty())
}

/// Whether the wait is over, by `policy`, given a fresh board and no `consensus/final`.
fn stop(
    board: &Board,
    policy: Policy,
    mediator_spawned: &mut bool,
) -> Result<Option<WaitEnd>, AgentError> {
    let settled = board.relevant().all(|p| board.status(p).is_settled());
    match policy {
        Policy::Voter if !settled => return Ok(None),
        Policy::Voter => {}
        Policy::Proposer {
            mediator_configured,
        } => {
            if !board.relevant().all(|p| board.is_decided(p)) {
                return Ok(None);
            }
            let contested = board
                .relevant()
                .any(|p| p.proposer == board.me() && p.in_conflict);
            if contested && mediator_configured {
                return Ok(None);
            }
        }
    }
    // A spawned mediator is pending until its merge is finalized (`consensus/final`) or it
    // says it is done (`progress/mediation`), which were checked first; once spawned it stays
    // so, which saves reading the entry again.
    if !*mediator_spawned {
        *mediator_spawned = read_problem("spawn_reason")?.is_some();
    }
    if *mediator_spawned {
        return Ok(None);
    }
    Ok(Some(if settled {
        WaitEnd::Settled
    } else {
        WaitEnd::Unmediated
    }))
}
