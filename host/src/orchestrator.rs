//! Multi-agent tasks: run a task's agents in parallel, each through its own governed
//! lifecycle, watch the spawn conditions, and spawn the mediator once when one fires.
//!
//! ```no_run
//! # async fn demo(host: warden::Host) -> Result<(), warden::Error> {
//! use warden::orchestrator::TaskSpec;
//!
//! // `alpha`, `beta` and `gamma` were registered with their components.
//! let spec = TaskSpec::new("t-42", "Design an event-driven analytics platform", ["alpha", "beta"])
//!     .mediator("gamma");
//! let metrics = host.orchestrate(&spec).await?;
//! println!("{}", metrics.mediator.map_or("no mediator".into(), |m| m.reason.to_string()));
//! # Ok(()) }
//! ```
//!
//! # Conditions
//!
//! Checked every [`SpawnConditions::check_interval`] and whenever an agent finishes, in this
//! order; the first that holds spawns the mediator with its reason:
//!
//! | reason       | holds when                                                              |
//! |--------------|-------------------------------------------------------------------------|
//! | `STUCK`      | a running agent made no capability call or phase change for `stuck_after` |
//! | `CONFLICT`   | at least `conflict_threshold` proposals are in conflict (rejected by someone, no consensus, not settled) |
//! | `COMPLEXITY` | the score in blackboard `problem/complexity` is above `complexity_threshold` |
//! | `SUCCESS`    | every agent completed and `validate_on_success` is set: the result needs validation |
//!
//! # Blackboard protocol
//!
//! Before the agents start, the orchestrator writes `problem/objective`, `problem/agents`
//! (comma-separated), `problem/mediator`, `problem/deadline_ms` (Unix milliseconds at which
//! the task times out) and, when given, `problem/complexity`. When it spawns the mediator it
//! writes `problem/spawn_reason`, `problem/spawn_detail` and `problem/voters` (the agents
//! still running and not stuck, whose votes a mediator's proposal can count on).
//!
//! # Metrics
//!
//! Counted from the ledger rows of the task (allowed, successful calls), so they are what
//! the audit trail says happened; the whole [`TaskMetrics`] is then recorded as a
//! `task.metrics` row by the pseudo-agent `orchestrator`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::clock::now_ms;
use crate::context::Services;
use crate::error::Error;
use crate::error::ResumeError;
use crate::host::Host;
use crate::id::{AgentId, RunId, TaskId};
use crate::ledger::{
    ActionRecord, Entry, LedgerQuery, LedgerRow, RunFilter, RunRow, Subject, Table,
};
use crate::packet::{Constraints, ErrorBudget, Packet, PacketLimits, now_rfc3339};
use crate::report::{RunOutcome, RunReport};
use crate::state::{Quota, Section};
use crate::tier::Tier;

/// The ledger identity of rows the orchestrator writes itself.
pub const ORCHESTRATOR_ID: &str = "orchestrator";

/// When the mediator is spawned. `[orchestrator]` in `warden.toml`; every field optional.
///
/// ```toml
/// [orchestrator]
/// check_interval = "2s"        # how often conditions are checked
/// stuck_after = "30s"          # STUCK: an agent inactive this long
/// conflict_threshold = 3       # CONFLICT: this many proposals in conflict
/// complexity_threshold = 0.8   # COMPLEXITY: a score above this
/// validate_on_success = true   # SUCCESS: spawn the mediator to validate a completed task
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConditions")]
pub struct SpawnConditions {
    /// How often the conditions are checked (default 2 s); at least 1 ms.
    #[serde(serialize_with = "crate::duration::ser")]
    pub check_interval: Duration,
    /// `STUCK`: a running agent inactive this long (default 30 s); at least 1 ms.
    #[serde(serialize_with = "crate::duration::ser")]
    pub stuck_after: Duration,
    /// `CONFLICT`: this many proposals in conflict at once (default 3); at least 1.
    pub conflict_threshold: u32,
    /// `COMPLEXITY`: a `problem/complexity` score strictly above this (default 0.8).
    pub complexity_threshold: f64,
    /// `SUCCESS`: spawn the mediator to validate once every agent succeeded (default on).
    pub validate_on_success: bool,
}

/// `[orchestrator]` as written, with the old numeric keys to refuse with their new form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConditions {
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    check_interval: Option<Duration>,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    stuck_after: Option<Duration>,
    conflict_threshold: Option<u32>,
    complexity_threshold: Option<f64>,
    validate_on_success: Option<bool>,
    check_interval_ms: Option<u64>,
    stuck_after_ms: Option<u64>,
}

impl TryFrom<RawConditions> for SpawnConditions {
    type Error = String;

    fn try_from(raw: RawConditions) -> Result<Self, Self::Error> {
        for (key, value) in [
            ("check_interval_ms", raw.check_interval_ms),
            ("stuck_after_ms", raw.stuck_after_ms),
        ] {
            if let Some(value) = value {
                return Err(crate::duration::old_key(key, value));
            }
        }
        let defaults = SpawnConditions::default();
        Ok(SpawnConditions {
            check_interval: raw.check_interval.unwrap_or(defaults.check_interval),
            stuck_after: raw.stuck_after.unwrap_or(defaults.stuck_after),
            conflict_threshold: raw
                .conflict_threshold
                .unwrap_or(defaults.conflict_threshold),
            complexity_threshold: raw
                .complexity_threshold
                .unwrap_or(defaults.complexity_threshold),
            validate_on_success: raw
                .validate_on_success
                .unwrap_or(defaults.validate_on_success),
        })
    }
}

impl Default for SpawnConditions {
    /// The reference's thresholds: 30 s, 3 conflicts, 0.8, validation on success; checked
    /// every 2 s.
    fn default() -> Self {
        SpawnConditions {
            check_interval: Duration::from_secs(2),
            stuck_after: Duration::from_secs(30),
            conflict_threshold: 3,
            complexity_threshold: 0.8,
            validate_on_success: true,
        }
    }
}

impl SpawnConditions {
    fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &str, value: String, accepted: &str| {
            Err(Error::Invalid(format!(
                "orchestrator `{field}` is `{value}`: expected {accepted}"
            )))
        };
        if self.check_interval < Duration::from_millis(1) {
            return invalid("check_interval", "0s".into(), "at least `1ms`");
        }
        if self.stuck_after < Duration::from_millis(1) {
            return invalid("stuck_after", "0s".into(), "at least `1ms`");
        }
        if self.conflict_threshold == 0 {
            return invalid("conflict_threshold", "0".into(), "at least 1");
        }
        if !self.complexity_threshold.is_finite() || self.complexity_threshold < 0.0 {
            return invalid(
                "complexity_threshold",
                self.complexity_threshold.to_string(),
                "a finite score of 0 or more",
            );
        }
        Ok(())
    }
}

/// Why the mediator was spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SpawnReason {
    /// A running agent was inactive for [`SpawnConditions::stuck_after`].
    Stuck,
    /// [`SpawnConditions::conflict_threshold`] proposals were in conflict.
    Conflict,
    /// The task's complexity score was above [`SpawnConditions::complexity_threshold`].
    Complexity,
    /// Every agent succeeded and [`SpawnConditions::validate_on_success`] is set.
    Success,
}

impl SpawnReason {
    /// The uppercase name written to the blackboard and the ledger (`STUCK`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SpawnReason::Stuck => "STUCK",
            SpawnReason::Conflict => "CONFLICT",
            SpawnReason::Complexity => "COMPLEXITY",
            SpawnReason::Success => "SUCCESS",
        }
    }
}

impl fmt::Display for SpawnReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A multi-agent task. Agents must be registered with their components.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    /// The task id, shared by every agent's packet.
    pub task_id: String,
    /// What the task is to achieve; every agent's packet gets it.
    pub objective: String,
    /// Run in parallel from the start.
    pub agents: Vec<String>,
    /// Spawned once, when a condition fires. Without one, conditions are still reported.
    pub mediator: Option<String>,
    /// The whole task's deadline; every run's wall-clock limit is what remains of it.
    pub timeout: Duration,
    /// An initial complexity score, written to `problem/complexity`.
    pub complexity: Option<f64>,
    /// When the mediator is spawned.
    pub conditions: SpawnConditions,
    /// At most this many agents run at once (the mediator is never held back); the rest
    /// wait for a slot. `None` (the default): all at once. Agents that wait for each other's
    /// messages or votes need a limit of at least their number, or they wait until the
    /// deadline.
    pub max_parallel: Option<usize>,
    /// Votes a proposal needs before it can reach consensus (`problem/quorum`); default 2.
    pub quorum: u32,
    /// Whether a proposer may vote on, and count toward, its own proposal
    /// (`problem/proposer_votes`); default off.
    pub proposer_votes: bool,
}

impl TaskSpec {
    /// A task with the default conditions, no mediator and a 120 s timeout.
    pub fn new<I, S>(task_id: impl Into<String>, objective: impl Into<String>, agents: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TaskSpec {
            task_id: task_id.into(),
            objective: objective.into(),
            agents: agents.into_iter().map(Into::into).collect(),
            mediator: None,
            timeout: Duration::from_secs(120),
            complexity: None,
            conditions: SpawnConditions::default(),
            max_parallel: None,
            quorum: crate::state::coordination::DEFAULT_QUORUM,
            proposer_votes: false,
        }
    }

    /// Set the votes a proposal needs (at least 1).
    pub fn quorum(mut self, votes: u32) -> Self {
        self.quorum = votes;
        self
    }

    /// Let a proposer vote on its own proposals, and count that vote.
    pub fn proposer_votes(mut self, counts: bool) -> Self {
        self.proposer_votes = counts;
        self
    }

    /// Run at most `limit` agents at once; the others wait for a slot.
    pub fn max_parallel(mut self, limit: usize) -> Self {
        self.max_parallel = Some(limit);
        self
    }

    /// Spawn `agent` as the mediator when a condition fires.
    pub fn mediator(mut self, agent: impl Into<String>) -> Self {
        self.mediator = Some(agent.into());
        self
    }

    /// Set the whole task's deadline (default 120 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set the initial complexity score written to `problem/complexity`.
    pub fn complexity(mut self, score: f64) -> Self {
        self.complexity = Some(score);
        self
    }

    /// Replace the spawn conditions.
    pub fn conditions(mut self, conditions: SpawnConditions) -> Self {
        self.conditions = conditions;
        self
    }

    /// Check the spec; its task id, validated.
    fn validate(&self) -> Result<TaskId, Error> {
        let invalid = |message: String| Err(Error::Invalid(message));
        let task = TaskId::new(&self.task_id)?;
        if self.objective.trim().is_empty() {
            return invalid(
                "the task's objective is empty: give the agents something to do".into(),
            );
        }
        if self.agents.is_empty() {
            return invalid("a task needs at least one agent: pass `--agents a,b`".into());
        }
        let mut seen = std::collections::HashSet::new();
        for agent in self.agents.iter().chain(&self.mediator) {
            AgentId::new(agent)?;
            if agent == ORCHESTRATOR_ID {
                return invalid(format!(
                    "agent id `{ORCHESTRATOR_ID}` is reserved for the orchestrator's own ledger rows"
                ));
            }
            if !seen.insert(agent.as_str()) {
                return invalid(format!(
                    "agent `{agent}` is named twice; each agent runs once per task (the mediator too)"
                ));
            }
        }
        if self.quorum == 0 {
            return invalid(
                "quorum `0`: a proposal needs at least 1 vote to reach consensus".into(),
            );
        }
        if self.max_parallel == Some(0) {
            return invalid("max_parallel `0`: expected at least 1 agent at a time".into());
        }
        if self.timeout.is_zero() {
            return invalid("task timeout `0s`: expected at least 1 ms".into());
        }
        if let Some(score) = self.complexity
            && (!score.is_finite() || score < 0.0)
        {
            return invalid(format!(
                "complexity `{score}`: expected a finite score of 0 or more"
            ));
        }
        self.conditions.validate()?;
        Ok(task)
    }
}

/// The mediator's spawn.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spawned {
    /// The mediator's agent id.
    pub agent: String,
    /// The condition that fired.
    pub reason: SpawnReason,
    /// What was measured against which threshold.
    pub detail: String,
    /// Milliseconds from the start of the task to the spawn.
    pub after_ms: f64,
}

/// How one agent's run ended.
#[derive(Debug, Clone, Serialize)]
pub struct AgentResult {
    /// The agent.
    pub agent_id: String,
    /// Whether it ran as the task's mediator.
    pub mediator: bool,
    /// `completed`, `plan_only`, `revoked`, `failed`, or `refused` (never started).
    pub status: String,
    /// Why it did not complete; empty when it did.
    pub detail: String,
    /// The run's duration in ms; 0 when it never started.
    pub duration_ms: f64,
    /// The run's [`RunReport::compliant`]; `false` when it never started.
    pub compliant: bool,
}

impl AgentResult {
    fn from_run(agent: &str, mediator: bool, result: &Result<RunReport, Error>) -> Self {
        let (status, detail, duration_ms, compliant) = match result {
            Ok(report) => {
                let (status, detail) = match &report.outcome {
                    RunOutcome::Completed => ("completed", String::new()),
                    RunOutcome::PlanOnly => ("plan_only", String::new()),
                    RunOutcome::Revoked { reason, details } => {
                        ("revoked", format!("{reason}: {details}"))
                    }
                    RunOutcome::Failed { code, message } => {
                        ("failed", format!("{code}: {message}"))
                    }
                };
                (status, detail, report.duration_ms, report.compliant)
            }
            Err(error) => ("refused", error.to_string(), 0.0, false),
        };
        AgentResult {
            agent_id: agent.to_string(),
            mediator,
            status: status.to_string(),
            detail,
            duration_ms,
            compliant,
        }
    }

    /// Whether the run ended `completed` or `plan_only`.
    pub fn succeeded(&self) -> bool {
        self.status == "completed" || self.status == "plan_only"
    }
}

/// The task's proposals at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConsensusSummary {
    /// Proposals opened in the task.
    pub proposals: u32,
    /// Proposals that reached consensus, in id order.
    pub reached: Vec<String>,
    /// Proposals settled outside the vote.
    pub resolved: u32,
    /// Proposals still in conflict.
    pub in_conflict: u32,
    /// `consensus/final`: the decision `consensus.finalize` recorded from the host's tally.
    pub final_decision: Option<String>,
    /// `consensus/validation`: the mediator's verdict (`consensus.validate`).
    pub validation: Option<String>,
}

impl ConsensusSummary {
    /// `reached`, `not reached` or `no proposals`: the reference's consensus result.
    pub fn result(&self) -> &'static str {
        if self.proposals == 0 {
            "no proposals"
        } else if self.in_conflict == 0 && !self.reached.is_empty() {
            "reached"
        } else {
            "not reached"
        }
    }
}

/// The reference's per-task metrics.
#[derive(Debug, Clone, Serialize)]
pub struct TaskMetrics {
    /// The task.
    pub task_id: String,
    /// The task's objective.
    pub objective: String,
    /// Wall-clock duration of the whole task, in ms.
    pub duration_ms: f64,
    /// Every agent completed (the mediator too, if spawned).
    pub success: bool,
    /// One result per agent that finished, the mediator last.
    pub agents: Vec<AgentResult>,
    /// Messages sent (direct and broadcast).
    pub messages: u64,
    /// Blackboard reads, writes and listings by agents.
    pub blackboard_ops: u64,
    /// `llm.complete` calls.
    pub llm_calls: u64,
    /// Proposals opened (`consensus.propose`).
    pub proposals: u64,
    /// Votes cast (`consensus.cast`).
    pub votes: u64,
    /// The mediator's spawn; `None` if none was spawned.
    pub mediator: Option<Spawned>,
    /// Conditions that held after the mediator was spawned (or with no mediator configured).
    pub conditions_seen: Vec<SpawnReason>,
    /// The task's proposals at the end.
    pub consensus: ConsensusSummary,
    /// [`ConsensusSummary::result`]: `reached`, `not reached` or `no proposals`.
    pub consensus_result: String,
}

/// How a run of the task is started.
enum Launch {
    /// A new run: its packet (or why none could be made) and its component.
    Fresh(Box<Result<Packet, crate::id::IdError>>, Arc<[u8]>),
    /// An interrupted run, checked, to go on.
    Resume(Box<crate::resume::Prepared>),
}

/// What one finished run sends back to the monitor.
struct Finished {
    agent: String,
    mediator: bool,
    result: Result<RunReport, Error>,
}

impl Host {
    /// Run a multi-agent task: see [the module](crate::orchestrator).
    pub async fn orchestrate(&self, spec: &TaskSpec) -> Result<TaskMetrics, Error> {
        let task = spec.validate()?;
        // Its blackboard, messages and proposals are still there: a second start would mix
        // them into a new run of the task.
        if let Some(row) = unended_start(self.ledger(), &task)? {
            return Err(ResumeError::TaskInterrupted {
                task: task.to_string(),
                row,
            }
            .into());
        }
        // Everything that can be refused is refused before anything starts.
        let mut components = HashMap::new();
        for agent in spec.agents.iter().chain(&spec.mediator) {
            components.insert(
                agent.clone(),
                Arc::<[u8]>::from(self.registered_component(agent)?),
            );
        }
        let run = Orchestration {
            host: self.clone(),
            services: self.services().clone(),
            task,
            spec: spec.clone(),
            components,
            started: Instant::now(),
            started_now: Instant::now(),
            deadline_ms: now_ms()
                .saturating_add(u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX)),
            finished: HashMap::new(),
            spawned: None,
            seen: Vec::new(),
            tasks: HashMap::new(),
            slots: spec
                .max_parallel
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
        };
        run.execute().await
    }
}

/// The task as its `orchestrator.start` row records it: what a resume runs on, and which
/// process ran it.
#[derive(Debug, Serialize, Deserialize)]
struct RecordedTask {
    objective: String,
    agents: Vec<String>,
    mediator: Option<String>,
    timeout_ms: u64,
    conditions: SpawnConditions,
    #[serde(default)]
    complexity: Option<f64>,
    #[serde(default)]
    max_parallel: Option<usize>,
    #[serde(default = "default_quorum")]
    quorum: u32,
    #[serde(default)]
    proposer_votes: bool,
    /// The machine and process that orchestrated it.
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
}

fn default_quorum() -> u32 {
    crate::state::coordination::DEFAULT_QUORUM
}

impl RecordedTask {
    fn of(spec: &TaskSpec) -> RecordedTask {
        RecordedTask {
            objective: spec.objective.clone(),
            agents: spec.agents.clone(),
            mediator: spec.mediator.clone(),
            timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
            conditions: spec.conditions.clone(),
            complexity: spec.complexity,
            max_parallel: spec.max_parallel,
            quorum: spec.quorum,
            proposer_votes: spec.proposer_votes,
            host: crate::context::machine_name().to_string(),
            pid: std::process::id(),
        }
    }

    fn spec(&self, task: &TaskId) -> TaskSpec {
        TaskSpec {
            task_id: task.to_string(),
            objective: self.objective.clone(),
            agents: self.agents.clone(),
            mediator: self.mediator.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            complexity: self.complexity,
            conditions: self.conditions.clone(),
            max_parallel: self.max_parallel,
            quorum: self.quorum,
            proposer_votes: self.proposer_votes,
        }
    }
}

/// What a resume does with one agent of the task.
enum Step {
    /// It never started: start it.
    Start,
    /// Its run was interrupted: go on with it.
    Resume(Box<crate::resume::Prepared>),
    /// Its run ended before the task was interrupted.
    Ended(AgentResult),
}

impl Host {
    /// Resume interrupted task `task`: its agents go on where they stopped, and the spawn
    /// conditions are watched again.
    ///
    /// The task runs as its `orchestrator.start` row recorded it (agents, mediator,
    /// thresholds, quorum). For each agent, the latest run of the task decides: an ended run
    /// keeps its result, an interrupted run is resumed ([`Host::resume`]: its recorded
    /// answers fed back, no effect repeated), an agent that never started starts. A mediator
    /// the task already spawned (its `orchestrator.spawn` row) is not spawned again; its run
    /// is resumed or started like the others. The conditions are checked at once, so a task
    /// killed after its agents ended and before the mediator was spawned spawns it. The task
    /// has its whole timeout again from the resume (`problem/deadline_ms` is rewritten),
    /// each resumed run the wall-clock limit its packet began with.
    ///
    /// Refused before anything runs when the task is unknown (`UNKNOWN_TASK`), ended
    /// (`TASK_NOT_INTERRUPTED`), still orchestrated by a live process on this machine
    /// (`TASK_STILL_ACTIVE`), or any interrupted run cannot be resumed as
    /// [`Host::resume`] decides it (`RUN_STILL_ACTIVE`, `RESUME_UNCERTAIN`: decide that run
    /// with [`Host::resume_task_with`]).
    pub async fn resume_task(&self, task: &str) -> Result<TaskMetrics, Error> {
        self.resume_task_with(task, &[]).await
    }

    /// [`Host::resume_task`] with the operator's decision for each run that was killed while
    /// a tool that is not `idempotent = true` ran (`RESUME_UNCERTAIN` names the run and the
    /// call): the run resumes with its agents, as [`Host::resume_with`] would resume it
    /// alone, and the decision is recorded in its ledger rows. A decision for a run the task
    /// does not resume is refused (`RESUME_DECISION_INVALID`) before anything runs.
    pub async fn resume_task_with(
        &self,
        task: &str,
        decisions: &[(RunId, crate::resume::Decision)],
    ) -> Result<TaskMetrics, Error> {
        let task = TaskId::new(task)?;
        let ledger = self.ledger();
        let rows = orchestrator_rows(ledger, &task)?;
        let start_at = last_start(&rows).ok_or_else(|| ResumeError::UnknownTask {
            task: task.to_string(),
        })?;
        let (start, later) = (&rows[start_at], &rows[start_at + 1..]);
        let details = |row: &LedgerRow| {
            row.fields
                .get("details")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if let Some(end) = later.iter().find(|row| row.kind == "task.metrics") {
            return Err(ResumeError::TaskNotInterrupted {
                task: task.to_string(),
                outcome: end
                    .fields
                    .get("decision")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("ended")
                    .to_string(),
            }
            .into());
        }
        let recorded: RecordedTask = serde_json::from_str(&details(start)).map_err(|e| {
            Error::Invalid(format!(
                "task `{task}`'s `orchestrator.start` row (ledger row {}) does not parse: {e}",
                start.seq
            ))
        })?;
        let spec = recorded.spec(&task);
        let running_here = {
            let running = self.services.running.lock();
            spec.agents.iter().chain(&spec.mediator).any(|agent| {
                running
                    .get(agent.as_str())
                    .is_some_and(|r| r.task_id == task)
            })
        };
        crate::resume::orchestrator_gone(
            &recorded.host,
            recorded.pid,
            crate::context::machine_name(),
            std::process::id(),
            running_here,
        )
        .map_err(|holder| ResumeError::TaskStillActive {
            task: task.to_string(),
            holder,
        })?;
        let spawned: Option<Spawned> = later
            .iter()
            .rfind(|row| row.kind == "orchestrator.spawn")
            .and_then(|row| serde_json::from_str(&details(row)).ok());
        let began = humantime::parse_rfc3339_weak(&start.timestamp).ok();

        // Everything that can be refused is refused before anything goes on.
        let mut steps = Vec::new();
        let mut interrupted: Vec<String> = Vec::new();
        let mut uncertain = None;
        let mediator = spawned.as_ref().map(|s| s.agent.clone());
        for (agent, is_mediator) in spec
            .agents
            .iter()
            .map(|a| (a, false))
            .chain(mediator.iter().map(|m| (m, true)))
        {
            let latest = ledger
                .runs(&RunFilter {
                    agent: Some(agent.clone()),
                    task: Some(task.to_string()),
                    status: None,
                    limit: 1,
                })?
                .into_iter()
                .next()
                // A run of an earlier orchestration of the same task id is not this one's.
                .filter(|run| {
                    let run_began = humantime::parse_rfc3339_weak(&run.started_at).ok();
                    began.zip(run_began).is_none_or(|(task, run)| run >= task)
                });
            let step = match latest {
                None => Step::Start,
                Some(run) if run.status == "running" => {
                    let id = RunId::new(&run.run_id)?;
                    interrupted.push(run.run_id.clone());
                    let decision = decisions
                        .iter()
                        .find(|(decided, _)| *decided == id)
                        .map(|&(_, decision)| decision);
                    let options = crate::resume::ResumeOptions { decision };
                    match self.prepare_resume(&id, options).await {
                        Ok(prepared) => Step::Resume(Box::new(prepared)),
                        // The way out is the task's resume, not the run's alone: its agents
                        // would not be there to answer it. Told once every decision given
                        // was checked.
                        Err(Error::Resume(ResumeError::Uncertain {
                            run,
                            seq,
                            tool,
                            args,
                        })) => {
                            uncertain.get_or_insert(ResumeError::TaskUncertain {
                                task: task.to_string(),
                                run,
                                seq,
                                tool,
                                args,
                            });
                            continue;
                        }
                        Err(other) => return Err(other),
                    }
                }
                Some(run) => Step::Ended(ended_result(ledger, &run, is_mediator)?),
            };
            steps.push((agent.clone(), is_mediator, step));
        }
        if let Some((run, _)) = decisions
            .iter()
            .find(|(run, _)| !interrupted.iter().any(|i| i == run.as_str()))
        {
            return Err(ResumeError::DecisionNotInTask {
                task: task.to_string(),
                run: run.to_string(),
                interrupted: if interrupted.is_empty() {
                    "none".to_string()
                } else {
                    interrupted
                        .iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }
            .into());
        }
        if let Some(uncertain) = uncertain {
            return Err(uncertain.into());
        }

        // Any agent may still start: one that never did, and the mediator once spawned.
        let mut components = HashMap::new();
        for agent in spec.agents.iter().chain(&spec.mediator) {
            components.insert(
                agent.clone(),
                Arc::<[u8]>::from(self.registered_component(agent)?),
            );
        }
        let deadline_ms =
            now_ms().saturating_add(u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX));
        let elapsed = began
            .and_then(|began| std::time::SystemTime::now().duration_since(began).ok())
            .unwrap_or_default();
        let now = Instant::now();
        let mut run = Orchestration {
            host: self.clone(),
            services: self.services().clone(),
            task: task.clone(),
            spec: spec.clone(),
            components,
            started: now.checked_sub(elapsed).unwrap_or(now),
            started_now: now,
            deadline_ms,
            finished: HashMap::new(),
            seen: spawned.iter().map(|s| s.reason).collect(),
            spawned,
            tasks: HashMap::new(),
            slots: spec
                .max_parallel
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
        };
        let _stored = self
            .services
            .state
            .board_write(
                &task,
                Section::Problem,
                "deadline_ms",
                &deadline_ms.to_string(),
                Quota::UNLIMITED,
                None,
            )
            .await?;
        let summary = |wanted: fn(&Step) -> bool| -> Vec<&str> {
            steps
                .iter()
                .filter(|(_, _, step)| wanted(step))
                .map(|(agent, _, _)| agent.as_str())
                .collect()
        };
        run.record(
            "orchestrator.resume",
            "resumed",
            serde_json::json!({
                "resumed": summary(|s| matches!(s, Step::Resume(_))),
                "runs": interrupted,
                "started": summary(|s| matches!(s, Step::Start)),
                "ended": summary(|s| matches!(s, Step::Ended(_))),
                "deadline_ms": deadline_ms,
                "host": crate::context::machine_name(),
                "pid": std::process::id(),
            }),
        )
        .await?;

        let mut runs = JoinSet::new();
        for (agent, is_mediator, step) in steps {
            match step {
                Step::Start => run.start(&mut runs, &agent, is_mediator),
                Step::Resume(prepared) => {
                    run.launch(&mut runs, &agent, is_mediator, Launch::Resume(prepared));
                }
                Step::Ended(result) => {
                    run.finished.insert(agent, result);
                }
            }
        }
        if run.spawned.is_none() {
            run.check(&mut runs).await?;
        }
        run.monitor(runs).await
    }
}

/// The orchestrator's own rows of `task`, oldest first.
fn orchestrator_rows(
    ledger: &crate::ledger::Ledger,
    task: &TaskId,
) -> Result<Vec<LedgerRow>, Error> {
    Ok(ledger.query(&LedgerQuery {
        table: Some(Table::Actions),
        agent_id: Some(ORCHESTRATOR_ID.to_string()),
        task_id: Some(task.to_string()),
        ..LedgerQuery::default()
    })?)
}

/// Where the task's latest start is in `rows`.
fn last_start(rows: &[LedgerRow]) -> Option<usize> {
    rows.iter()
        .rposition(|row| row.kind == "orchestrator.start")
}

/// Where a task's latest orchestration stands, as its rows tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskProgress {
    /// No `orchestrator.start` row.
    NeverStarted,
    /// Started, no `task.metrics` row: interrupted (or still running).
    Interrupted,
    /// Ended; `success` as its `task.metrics` row says.
    Ended { success: bool },
}

pub(crate) fn task_progress(
    ledger: &crate::ledger::Ledger,
    task: &TaskId,
) -> Result<TaskProgress, Error> {
    let rows = orchestrator_rows(ledger, task)?;
    let Some(at) = last_start(&rows) else {
        return Ok(TaskProgress::NeverStarted);
    };
    Ok(
        match rows[at + 1..].iter().find(|row| row.kind == "task.metrics") {
            None => TaskProgress::Interrupted,
            Some(end) => TaskProgress::Ended {
                success: end
                    .fields
                    .get("decision")
                    .and_then(serde_json::Value::as_str)
                    == Some("success"),
            },
        },
    )
}

/// The ledger row of the task's latest start if no `task.metrics` row ended it: an
/// interrupted (or still running) task.
fn unended_start(ledger: &crate::ledger::Ledger, task: &TaskId) -> Result<Option<u64>, Error> {
    let rows = orchestrator_rows(ledger, task)?;
    Ok(last_start(&rows)
        .filter(|&at| !rows[at + 1..].iter().any(|row| row.kind == "task.metrics"))
        .map(|at| rows[at].seq))
}

/// The result of a run that ended before its task was interrupted, from its `runs` row.
fn ended_result(
    ledger: &crate::ledger::Ledger,
    run: &RunRow,
    mediator: bool,
) -> Result<AgentResult, Error> {
    let outcome = run.outcome.clone().unwrap_or_default();
    let status = match (run.status.as_str(), outcome.as_str()) {
        ("completed", "PLAN_ONLY") => "plan_only",
        ("completed", _) => "completed",
        ("revoked", _) => "revoked",
        _ => "failed",
    };
    let violations = ledger.query(&LedgerQuery {
        table: Some(Table::Violations),
        agent_id: Some(run.agent_id.clone()),
        task_id: Some(run.task_id.clone()),
        ..LedgerQuery::default()
    })?;
    let violated = violations.iter().any(|row| {
        row.fields.get("run_id").and_then(serde_json::Value::as_str) == Some(run.run_id.as_str())
    });
    let time = |text: &str| humantime::parse_rfc3339_weak(text).ok();
    let duration_ms = time(&run.started_at)
        .zip(time(&run.updated_at))
        .and_then(|(began, ended)| ended.duration_since(began).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    Ok(AgentResult {
        agent_id: run.agent_id.clone(),
        mediator,
        status: status.to_string(),
        detail: if status == "completed" || status == "plan_only" {
            String::new()
        } else {
            format!(
                "{outcome} (ended before the task was resumed; `warden runs show {}`)",
                run.run_id
            )
        },
        duration_ms,
        compliant: status == "completed" && !violated,
    })
}

struct Orchestration {
    host: Host,
    services: Arc<Services>,
    task: TaskId,
    spec: TaskSpec,
    components: HashMap<String, Arc<[u8]>>,
    /// When the task began: its metrics' clock (before a resume, when it first started).
    started: Instant,
    /// When this host took the task on: the task's deadline counts from here.
    started_now: Instant,
    deadline_ms: u64,
    finished: HashMap<String, AgentResult>,
    spawned: Option<Spawned>,
    seen: Vec<SpawnReason>,
    /// Which agent each spawned run is, to name it if its task panics.
    tasks: HashMap<tokio::task::Id, (String, bool)>,
    /// Slots of [`TaskSpec::max_parallel`].
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Orchestration {
    async fn execute(mut self) -> Result<TaskMetrics, Error> {
        let spec = self.spec.clone();
        let task = &self.task.clone();
        let mut problem = vec![
            ("objective", spec.objective.clone()),
            ("agents", spec.agents.join(",")),
            ("deadline_ms", self.deadline_ms.to_string()),
            ("quorum", spec.quorum.to_string()),
            ("proposer_votes", spec.proposer_votes.to_string()),
        ];
        if let Some(mediator) = &spec.mediator {
            problem.push(("mediator", mediator.clone()));
        }
        if let Some(score) = spec.complexity {
            problem.push(("complexity", score.to_string()));
        }
        for (key, value) in &problem {
            // The host's own entries: counted, never refused.
            let _stored = self
                .services
                .state
                .board_write(task, Section::Problem, key, value, Quota::UNLIMITED, None)
                .await?;
        }
        self.record(
            "orchestrator.start",
            "started",
            serde_json::to_value(RecordedTask::of(&spec)).unwrap_or_default(),
        )
        .await?;

        let mut runs = JoinSet::new();
        for agent in &spec.agents {
            self.start(&mut runs, agent, false);
        }
        self.monitor(runs).await
    }

    /// Watch the runs and the conditions until every run ended; then the metrics.
    async fn monitor(mut self, mut runs: JoinSet<Finished>) -> Result<TaskMetrics, Error> {
        let spec = self.spec.clone();
        let mut ticker = tokio::time::interval(spec.conditions.check_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        while !runs.is_empty() {
            let check = tokio::select! {
                joined = runs.join_next_with_id() => {
                    let Some(joined) = joined else { break };
                    let result = match joined {
                        Ok((_, done)) => AgentResult::from_run(&done.agent, done.mediator, &done.result),
                        Err(error) => self.lost_run(&error),
                    };
                    self.finished.insert(result.agent_id.clone(), result);
                    // Time-based conditions wait for the tick; only the end of the last agent
                    // (SUCCESS) is checked at once, so 1,000 agents finishing cost no reads.
                    self.spec.agents.iter().all(|a| self.finished.contains_key(a))
                }
                _ = ticker.tick() => true,
            };
            if check {
                self.check(&mut runs).await?;
            }
        }
        self.finish().await
    }

    /// Check the conditions; the first that holds spawns the mediator unless it was.
    async fn check(&mut self, runs: &mut JoinSet<Finished>) -> Result<(), Error> {
        if let Some((reason, detail)) = self.condition().await? {
            if !self.seen.contains(&reason) {
                self.seen.push(reason);
            }
            if self.spawned.is_none()
                && let Some(mediator) = self.spec.mediator.clone()
            {
                self.spawn(runs, &mediator, reason, detail).await?;
            }
        }
        Ok(())
    }

    /// The result of a run whose task panicked: the agent is the one started under that task id.
    fn lost_run(&mut self, error: &tokio::task::JoinError) -> AgentResult {
        let (agent, mediator) = self
            .tasks
            .remove(&error.id())
            .unwrap_or_else(|| (String::from("unknown"), false));
        AgentResult {
            agent_id: agent,
            mediator,
            status: "failed".into(),
            detail: format!("HOST_PANIC: the host task running the agent panicked: {error}"),
            duration_ms: 0.0,
            compliant: false,
        }
    }

    /// Start submitting the agent's packet and running it. Both happen in the spawned task,
    /// so the durable ledger rows of many agents' submissions share group commits.
    fn start(&mut self, runs: &mut JoinSet<Finished>, agent: &str, mediator: bool) {
        let packet = AgentId::new(agent).map(|agent_id| Packet {
            agent_id,
            task_id: self.task.clone(),
            created_for: ORCHESTRATOR_ID.to_string(),
            objective: self.spec.objective.clone(),
            deliverables: Vec::new(),
            constraints: Constraints::default(),
            success_criteria: Vec::new(),
            error_budget: ErrorBudget::default(),
            escalation_rules: Vec::new(),
            created_at: now_rfc3339(),
            limits: PacketLimits::default(),
        });
        let component = self
            .components
            .get(agent)
            .cloned()
            .unwrap_or_else(|| Arc::from([]));
        self.launch(
            runs,
            agent,
            mediator,
            Launch::Fresh(Box::new(packet), component),
        );
    }

    /// Run `launch` of `agent` in its own task, in a slot of [`TaskSpec::max_parallel`]
    /// unless it is the mediator.
    fn launch(
        &mut self,
        runs: &mut JoinSet<Finished>,
        agent: &str,
        mediator: bool,
        launch: Launch,
    ) {
        let deadline = self.started_now + self.spec.timeout;
        let host = self.host.clone();
        let agent = agent.to_string();
        let name = (agent.clone(), mediator);
        let slots = if mediator { None } else { self.slots.clone() };
        let handle = runs.spawn(async move {
            // Held for the whole run; the semaphore is never closed, so this only waits.
            let _slot = match slots {
                Some(slots) => slots.acquire_owned().await.ok(),
                None => None,
            };
            let result = match launch {
                Launch::Fresh(packet, component) => match *packet {
                    Ok(mut packet) => {
                        // What remains of the task's time once the run can start.
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        let remaining_ms = u64::try_from(remaining.as_millis())
                            .unwrap_or(u64::MAX)
                            .max(1);
                        packet.limits.run_wall_ms = Some(remaining_ms);
                        packet.limits.approval_timeout_ms = Some(remaining_ms);
                        match host.submit_packet(&packet).await {
                            Ok(()) => host.run(&agent, &component).await,
                            Err(error) => Err(error),
                        }
                    }
                    Err(error) => Err(error.into()),
                },
                Launch::Resume(prepared) => host.resume_prepared(*prepared).await,
            };
            Finished {
                agent,
                mediator,
                result,
            }
        });
        self.tasks.insert(handle.id(), name);
    }

    /// The first spawn condition that holds now, with what was measured.
    async fn condition(&self) -> Result<Option<(SpawnReason, String)>, Error> {
        let conditions = &self.spec.conditions;
        let task = &self.task;
        let stuck = self.stuck_agents();
        if let Some((agent, idle)) = stuck.first() {
            return Ok(Some((
                SpawnReason::Stuck,
                format!(
                    "`{agent}` inactive for {:.1}s (threshold {:.1}s)",
                    idle.as_secs_f64(),
                    conditions.stuck_after.as_secs_f64()
                ),
            )));
        }
        let proposals = self.services.state.proposals(task).await?;
        let conflicts = proposals.iter().filter(|p| p.in_conflict()).count();
        if conflicts >= usize::try_from(conditions.conflict_threshold).unwrap_or(usize::MAX) {
            return Ok(Some((
                SpawnReason::Conflict,
                format!(
                    "{conflicts} unresolved conflicting proposals (threshold {})",
                    conditions.conflict_threshold
                ),
            )));
        }
        if let Some(score) = self
            .services
            .state
            .board_read(task, Section::Problem, "complexity")
            .await?
            .and_then(|s| s.trim().parse::<f64>().ok())
            && score > conditions.complexity_threshold
        {
            return Ok(Some((
                SpawnReason::Complexity,
                format!(
                    "complexity {score:.2} above {:.2}",
                    conditions.complexity_threshold
                ),
            )));
        }
        let primaries_done = self
            .spec
            .agents
            .iter()
            .all(|a| self.finished.contains_key(a));
        let all_succeeded = self
            .spec
            .agents
            .iter()
            .all(|a| self.finished.get(a).is_some_and(AgentResult::succeeded));
        if conditions.validate_on_success && primaries_done && all_succeeded {
            return Ok(Some((
                SpawnReason::Success,
                format!(
                    "all {} agents completed; the result needs validation",
                    self.spec.agents.len()
                ),
            )));
        }
        Ok(None)
    }

    /// Primary agents running in this host that have been inactive past the threshold.
    fn stuck_agents(&self) -> Vec<(String, Duration)> {
        let threshold = self.spec.conditions.stuck_after;
        let running = self.services.running.lock();
        self.spec
            .agents
            .iter()
            .filter(|agent| !self.finished.contains_key(*agent))
            .filter_map(|agent| {
                let run = running.get(agent.as_str())?;
                let idle = run.idle_for();
                (run.task_id == self.task && idle >= threshold).then(|| (agent.clone(), idle))
            })
            .collect()
    }

    async fn spawn(
        &mut self,
        runs: &mut JoinSet<Finished>,
        mediator: &str,
        reason: SpawnReason,
        detail: String,
    ) -> Result<(), Error> {
        let task = self.task.clone();
        let stuck: Vec<String> = self.stuck_agents().into_iter().map(|(a, _)| a).collect();
        let voters: Vec<&str> = self
            .spec
            .agents
            .iter()
            .filter(|a| !self.finished.contains_key(*a) && !stuck.contains(a))
            .map(String::as_str)
            .collect();
        for (key, value) in [
            ("spawn_reason", reason.as_str().to_string()),
            ("spawn_detail", detail.clone()),
            ("voters", voters.join(",")),
        ] {
            let _stored = self
                .services
                .state
                .board_write(&task, Section::Problem, key, &value, Quota::UNLIMITED, None)
                .await?;
        }
        let spawned = Spawned {
            agent: mediator.to_string(),
            reason,
            detail,
            after_ms: self.started.elapsed().as_secs_f64() * 1e3,
        };
        self.record(
            "orchestrator.spawn",
            reason.as_str(),
            serde_json::to_value(&spawned).unwrap_or_default(),
        )
        .await?;
        self.spawned = Some(spawned);
        self.start(runs, mediator, true);
        Ok(())
    }

    async fn finish(mut self) -> Result<TaskMetrics, Error> {
        let task = self.task.clone();
        self.services.ledger_flush().await?;
        let counts = self.services.ledger.action_counts(&task)?;
        let count = |names: &[&str]| {
            names
                .iter()
                .map(|n| counts.get(*n).copied().unwrap_or(0))
                .sum()
        };
        let proposals = self.services.state.proposals(&task).await?;
        let consensus = ConsensusSummary {
            proposals: u32::try_from(proposals.len()).unwrap_or(u32::MAX),
            reached: proposals
                .iter()
                .filter(|p| p.tally().reached)
                .map(|p| p.record.id.clone())
                .collect(),
            resolved: u32::try_from(
                proposals
                    .iter()
                    .filter(|p| p.record.resolution.is_some())
                    .count(),
            )
            .unwrap_or(u32::MAX),
            in_conflict: u32::try_from(proposals.iter().filter(|p| p.in_conflict()).count())
                .unwrap_or(u32::MAX),
            final_decision: self
                .services
                .state
                .board_read(&task, Section::Consensus, "final")
                .await?,
            validation: self
                .services
                .state
                .board_read(&task, Section::Consensus, "validation")
                .await?,
        };
        let mut agents: Vec<AgentResult> = self
            .spec
            .agents
            .iter()
            .chain(&self.spec.mediator)
            .filter_map(|a| self.finished.remove(a))
            .collect();
        agents.sort_by_key(|a| a.mediator);
        let metrics = TaskMetrics {
            task_id: task.to_string(),
            objective: self.spec.objective.clone(),
            duration_ms: self.started.elapsed().as_secs_f64() * 1e3,
            success: agents.iter().all(AgentResult::succeeded),
            agents,
            messages: count(&["messaging.send", "messaging.broadcast"]),
            blackboard_ops: count(&["blackboard.read", "blackboard.write", "blackboard.entries"]),
            llm_calls: count(&["llm.complete"]),
            proposals: count(&["consensus.propose"]),
            votes: count(&["consensus.cast"]),
            mediator: self.spawned.take(),
            conditions_seen: std::mem::take(&mut self.seen),
            consensus_result: consensus.result().to_string(),
            consensus,
        };
        self.record(
            "task.metrics",
            if metrics.success {
                "success"
            } else {
                "failure"
            },
            serde_json::to_value(&metrics).unwrap_or_default(),
        )
        .await?;
        Ok(metrics)
    }

    /// A durable row of the orchestrator itself.
    async fn record(
        &self,
        action: &'static str,
        decision: &str,
        details: serde_json::Value,
    ) -> Result<(), Error> {
        let subject = Arc::new(
            Subject::new(ORCHESTRATOR_ID, "", Tier::Observer)
                .with_task_id(self.task.as_str())
                .with_policy_revision(self.services.tiers.revision.as_str()),
        );
        let row =
            ActionRecord::new(subject, action, decision.to_string()).details(details.to_string());
        self.services.ledger_durable(Entry::Action(row)).await?;
        Ok(())
    }
}

/// A proposal with its tally, as `warden task show` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ProposalView {
    /// The proposal and its votes, flattened into the same JSON object.
    #[serde(flatten)]
    pub proposal: crate::state::Proposal,
    /// Its vote count and whether it reached consensus.
    pub tally: crate::state::Tally,
    /// [`Proposal::in_conflict`](crate::state::Proposal::in_conflict).
    pub in_conflict: bool,
}

/// Everything the coordination backend holds about a task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// The task.
    pub task_id: String,
    /// Section name → entries sorted by key.
    pub blackboard: Vec<(Section, Vec<(String, String)>)>,
    /// Every proposal in id order, with its tally.
    pub proposals: Vec<ProposalView>,
    /// Every message of the task, oldest first.
    pub messages: Vec<crate::state::Message>,
}

impl TaskView {
    /// Read the task's blackboard, proposals and messages; fails if `task` is not a valid
    /// task id or the state store cannot be read.
    pub async fn read(host: &Host, task: &str) -> Result<TaskView, Error> {
        let task = &TaskId::new(task)?;
        let state = host.state();
        let mut blackboard = Vec::new();
        for section in Section::ALL {
            blackboard.push((section, state.board_entries(task, section).await?));
        }
        let proposals = state
            .proposals(task)
            .await?
            .into_iter()
            .map(|proposal| ProposalView {
                tally: proposal.tally(),
                in_conflict: proposal.in_conflict(),
                proposal,
            })
            .collect();
        Ok(TaskView {
            task_id: task.to_string(),
            blackboard,
            proposals,
            messages: state.messages(task).await?,
        })
    }
}
