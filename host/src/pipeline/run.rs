//! Running a pipeline: the side-effecting part. Every step is a durable ledger row before
//! (a start) or after (an end) it happens, so a run killed anywhere goes on from its rows
//! (`Host::resume_pipeline`): a stage that ended is not run again, an agent run that was
//! interrupted resumes through its journal, a gate that waited waits on to the same deadline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::task::JoinSet;

use super::record::{Event, ItemView, Outcome, Override, PIPELINE_ID, RunView, Status};
use super::schedule::{self, Step};
use super::spec::{Catalog, ForEach, MAX_FAN_OUT, OnFailure, OnTimeout, Pipeline, StageKind};
use crate::clock::now_ms;
use crate::error::{Error, PipelineError};
use crate::host::Host;
use crate::id::{RunId, TaskId};
use crate::ledger::{ActionRecord, Entry, LedgerQuery, Subject, Table};
use crate::orchestrator::{TaskProgress, TaskSpec};
use crate::packet::{GateDecision, Packet, PacketLimits, now_rfc3339};
use crate::report::{RunOutcome, RunReport};
use crate::state::Quota;
use crate::tier::Tier;

/// Called with every event a run records, as it is recorded (live progress).
pub type Observer = Arc<dyn Fn(&str, &Event) + Send + Sync>;

/// How a pipeline run is started.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Parameter values, by name (`--param k=v`); the rest take their defaults.
    pub params: BTreeMap<String, String>,
    /// Stages run with another component (`--override stage=file.wasm`), for testing.
    pub overrides: Vec<(String, PathBuf)>,
    /// Who starts it (recorded).
    pub actor: String,
    /// Sees each event as it is recorded.
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("params", &self.params)
            .field("overrides", &self.overrides)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// How often a waiting gate looks for its decision, and the runner for a cancel.
const POLL: Duration = Duration::from_millis(100);

impl Host {
    /// The registered agents and the tier table, as a pipeline is checked against them.
    pub fn pipeline_catalog(&self) -> Result<Catalog<'_>, Error> {
        Ok(Catalog {
            agents: Some(
                self.agents()?
                    .into_iter()
                    .map(|a| (a.agent_id.to_string(), a.tier))
                    .collect(),
            ),
            tiers: self.tiers(),
        })
    }

    /// Parse and check a pipeline file against this host's agents and tiers.
    pub fn load_pipeline(&self, text: &str, origin: &str) -> Result<Pipeline, Error> {
        Pipeline::parse(text, origin, &self.pipeline_catalog()?)
            .map_err(|e| PipelineError::Invalid(e).into())
    }

    /// Run `pipeline` to its end. Its id (`pl-…`) is also the task its stages run in, so a
    /// stage's artifacts are the next stage's inputs.
    pub async fn run_pipeline(
        &self,
        pipeline: &Pipeline,
        options: RunOptions,
    ) -> Result<RunView, Error> {
        let params = pipeline
            .bind_params(&options.params)
            .map_err(PipelineError::Param)?;
        let run = TaskId::new(&format!("pl-{}", uuid::Uuid::now_v7().simple()))?;
        let mut overrides = BTreeMap::new();
        let mut components = HashMap::new();
        for (stage, path) in &options.overrides {
            let (_, s) = pipeline
                .stage(stage)
                .ok_or_else(|| PipelineError::UnknownStage {
                    run: format!("{} (not started)", pipeline.name),
                    stage: stage.clone(),
                    stages: pipeline.stages.iter().map(|s| s.name.clone()).collect(),
                })?;
            let StageKind::Agent(a) = &s.kind else {
                return Err(PipelineError::Param(format!(
                    "`--override {stage}=…`: only an agent stage runs a component"
                ))
                .into());
            };
            let agent = a.agent.literal().ok_or_else(|| {
                PipelineError::Param(format!(
                    "`--override {stage}=…`: the stage's agent is an expression; an override needs one named agent"
                ))
            })?;
            let bytes = std::fs::read(path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let tier = self.services().registered(&agent)?.tier;
            let stand_in = format!("{agent}.override.{stage}");
            // The stand-in is an agent of its own, at the tier of the one it replaces: the
            // load gate, its budget and its revocation are its own, and it is recorded.
            self.register_agent(
                &stand_in,
                tier,
                Some(&bytes),
                &format!("pipeline override by {}", options.actor),
            )?;
            overrides.insert(
                stage.clone(),
                Override {
                    path: path.display().to_string(),
                    digest: crate::runtime::digest(&bytes),
                    agent: stand_in.clone(),
                },
            );
            components.insert(stand_in, Arc::<[u8]>::from(bytes));
        }
        let start = Event::Start {
            name: pipeline.name.clone(),
            digest: pipeline.digest.clone(),
            source: pipeline.source.clone(),
            params,
            overrides,
            host: crate::context::machine_name().to_string(),
            pid: std::process::id(),
            deadline_ms: deadline_of(pipeline),
            by: options.actor.clone(),
        };
        let mut runner = Runner::new(self, pipeline.clone(), run, options.observer, components);
        runner.record(start).await?;
        runner.go().await
    }

    /// Go on with interrupted pipeline run `run` from its rows: stages that ended keep their
    /// outcome, an agent run that was interrupted resumes through its journal (no effect is
    /// repeated), a gate waits on to its recorded deadline, and nothing that ended runs again.
    pub async fn resume_pipeline(
        &self,
        run: &str,
        observer: Option<Observer>,
    ) -> Result<RunView, Error> {
        let view = self.pipeline_run(run)?;
        if let Some(outcome) = &view.outcome {
            return Err(PipelineError::Ended {
                run: run.to_string(),
                outcome: outcome.clone(),
            }
            .into());
        }
        let runner = self.take_over(&view, observer).await?;
        runner.go().await
    }

    /// Run stage `from` of ended run `run` again, and every stage that waits for it (and the
    /// `finally` stages), keeping what the other stages did. Gates among them wait for a new
    /// decision.
    pub async fn retry_pipeline(
        &self,
        run: &str,
        from: &str,
        actor: &str,
        observer: Option<Observer>,
    ) -> Result<RunView, Error> {
        let view = self.pipeline_run(run)?;
        if view.outcome.is_none() {
            return Err(PipelineError::NotEnded {
                run: run.to_string(),
            }
            .into());
        }
        let pipeline = Pipeline::parse(&view.source, run, &self.pipeline_catalog()?)
            .map_err(PipelineError::Invalid)?;
        let (i, _) = pipeline
            .stage(from)
            .ok_or_else(|| PipelineError::UnknownStage {
                run: run.to_string(),
                stage: from.to_string(),
                stages: pipeline.stages.iter().map(|s| s.name.clone()).collect(),
            })?;
        let stages: Vec<String> = pipeline
            .stages
            .iter()
            .enumerate()
            .filter(|&(j, s)| {
                j == i || s.finally || super::spec::ancestors(&pipeline.stages, j).contains(&i)
            })
            .map(|(_, s)| s.name.clone())
            .collect();
        let mut runner = self.take_over(&view, observer).await?;
        runner
            .record(Event::Retry {
                from: from.to_string(),
                round: view.round + 1,
                stages,
                by: actor.to_string(),
                deadline_ms: deadline_of(&pipeline),
            })
            .await?;
        runner.go().await
    }

    /// Decide human gate `stage` of run `run`. Refused when the gate is not waiting, when
    /// `by` is not among its approvers, and when it was decided before (by anyone, on any
    /// host sharing the state store: the decision is one atomic step).
    pub async fn decide_gate(
        &self,
        run: &str,
        stage: &str,
        approved: bool,
        by: &str,
        comment: &str,
    ) -> Result<(), Error> {
        let view = self.pipeline_run(run)?;
        let run_id = TaskId::new(run)?;
        let Some(s) = view.stages.get(stage) else {
            let pipeline = Pipeline::parse(&view.source, run, &self.pipeline_catalog()?)
                .map_err(PipelineError::Invalid)?;
            return Err(match pipeline.stage(stage) {
                Some(_) => PipelineError::GateNotWaiting {
                    run: run.to_string(),
                    stage: stage.to_string(),
                    status: "pending: it has not opened yet".into(),
                },
                None => PipelineError::UnknownStage {
                    run: run.to_string(),
                    stage: stage.to_string(),
                    stages: pipeline.stages.iter().map(|s| s.name.clone()).collect(),
                },
            }
            .into());
        };
        let round = s.round;
        let earlier = self
            .state()
            .gate_decision(&run_id, stage, round)
            .await?
            .map(|d| (d.approved, d.decided_by))
            .or_else(|| {
                s.gate
                    .as_ref()
                    .and_then(|g| g.decision.as_ref())
                    .map(|d| (d.approved, d.by.clone()))
            });
        if let Some((was, who)) = earlier {
            return Err(already(run, stage, was, &who).into());
        }
        let gate = match (&s.gate, s.status) {
            (Some(gate), Status::Waiting) => gate,
            (_, status) => {
                return Err(PipelineError::GateNotWaiting {
                    run: run.to_string(),
                    stage: stage.to_string(),
                    status: format!("{} (no human gate waits there)", status.as_str()),
                }
                .into());
            }
        };
        if !gate.approvers.is_empty() && !gate.approvers.iter().any(|a| a == by) {
            let refusal = PipelineError::NotAnApprover {
                stage: stage.to_string(),
                who: by.to_string(),
                approvers: gate.approvers.clone(),
            };
            record_row(
                self,
                &run_id,
                "pipeline.gate.refuse",
                "denied",
                Json::String(refusal.to_string()),
            )
            .await?;
            return Err(refusal.into());
        }
        let decision = GateDecision {
            run: run_id.clone(),
            stage: stage.to_string(),
            round,
            approved,
            decided_by: by.to_string(),
            comment: comment.to_string(),
            decided_at: now_rfc3339(),
            timed_out: false,
        };
        if let Some(first) = self.state().decide_gate(&decision).await? {
            return Err(already(run, stage, first.approved, &first.decided_by).into());
        }
        let event = Event::GateDecide {
            stage: stage.to_string(),
            round,
            approved,
            by: by.to_string(),
            comment: comment.to_string(),
            timed_out: false,
        };
        record_event(self, &run_id, &event).await
    }

    /// Cancel run `run`: no stage starts after this, a waiting gate stops waiting, agent runs
    /// under way end as they would, then the `finally` stages run.
    pub async fn cancel_pipeline(&self, run: &str, by: &str) -> Result<(), Error> {
        let view = self.pipeline_run(run)?;
        if let Some(outcome) = &view.outcome {
            return Err(PipelineError::Ended {
                run: run.to_string(),
                outcome: outcome.clone(),
            }
            .into());
        }
        record_event(
            self,
            &TaskId::new(run)?,
            &Event::Cancel { by: by.to_string() },
        )
        .await
    }

    /// Pipeline run `run` as its rows tell it.
    pub fn pipeline_run(&self, run: &str) -> Result<RunView, Error> {
        let id = TaskId::new(run)?;
        let events = events_of(self, &id, None)?;
        RunView::fold(run, &events).ok_or_else(|| {
            PipelineError::UnknownRun {
                run: run.to_string(),
            }
            .into()
        })
    }

    /// The latest `limit` pipeline runs, newest first.
    pub fn pipeline_runs(&self, limit: usize) -> Result<Vec<RunView>, Error> {
        let starts = self.ledger().query(&LedgerQuery {
            table: Some(Table::Actions),
            agent_id: Some(PIPELINE_ID.to_string()),
            kind: Some("pipeline.start".to_string()),
            descending: true,
            limit: Some(limit),
            ..LedgerQuery::default()
        })?;
        let mut runs = Vec::new();
        let mut seen = HashSet::new();
        for row in starts {
            let Some(task) = row.task_id else { continue };
            if seen.insert(task.clone()) {
                runs.push(self.pipeline_run(&task)?);
            }
        }
        Ok(runs)
    }

    /// A runner for a recorded run, once the process that ran it is gone.
    async fn take_over(&self, view: &RunView, observer: Option<Observer>) -> Result<Runner, Error> {
        let run = TaskId::new(&view.run_id)?;
        crate::resume::orchestrator_gone(
            &view.host,
            view.pid,
            crate::context::machine_name(),
            std::process::id(),
            false,
        )
        .map_err(|holder| PipelineError::StillActive {
            run: view.run_id.clone(),
            holder,
        })?;
        let pipeline = Pipeline::parse(&view.source, &view.run_id, &self.pipeline_catalog()?)
            .map_err(PipelineError::Invalid)?;
        let mut components = HashMap::new();
        for (stage, o) in &view.overrides {
            let now = std::fs::read(&o.path)
                .map(|b| (crate::runtime::digest(&b), b))
                .map_err(|e| e.to_string());
            match now {
                Ok((digest, bytes)) if digest == o.digest => {
                    components.insert(o.agent.clone(), Arc::<[u8]>::from(bytes));
                }
                Ok((digest, _)) => {
                    return Err(changed(stage, o, &digest).into());
                }
                Err(e) => return Err(changed(stage, o, &format!("unreadable ({e})")).into()),
            }
        }
        let mut runner = Runner::new(self, pipeline, run, observer, components);
        runner.view = view.clone();
        // A cancel recorded while no process ran the pipeline holds.
        runner
            .cancelled
            .store(view.cancelled_by.is_some(), Ordering::SeqCst);
        runner
            .record(Event::Resume {
                host: crate::context::machine_name().to_string(),
                pid: std::process::id(),
            })
            .await?;
        runner.pick_up().await?;
        Ok(runner)
    }
}

/// When a run of `pipeline` starting now must end.
pub(super) fn deadline_of(pipeline: &Pipeline) -> Option<u64> {
    pipeline
        .timeout
        .map(|t| now_ms().saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)))
}

fn changed(stage: &str, o: &Override, now: &str) -> PipelineError {
    PipelineError::OverrideChanged {
        stage: stage.to_string(),
        path: o.path.clone(),
        recorded: o.digest.clone(),
        now: now.to_string(),
    }
}

fn already(run: &str, stage: &str, approved: bool, by: &str) -> PipelineError {
    PipelineError::AlreadyDecided {
        run: run.to_string(),
        stage: stage.to_string(),
        decision: if approved { "approved" } else { "rejected" }.to_string(),
        by: by.to_string(),
    }
}

/// The run's events, oldest first, with their rows' times.
fn events_of(host: &Host, run: &TaskId, after: Option<u64>) -> Result<Vec<(String, Event)>, Error> {
    let rows = host.ledger().query(&LedgerQuery {
        table: Some(Table::Actions),
        agent_id: Some(PIPELINE_ID.to_string()),
        task_id: Some(run.to_string()),
        after_seq: after,
        ..LedgerQuery::default()
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let details = row.fields.get("details").and_then(Json::as_str)?;
            let event: Event = serde_json::from_str(details).ok()?;
            Some((row.timestamp, event))
        })
        .collect())
}

async fn record_row(
    host: &Host,
    run: &TaskId,
    kind: &'static str,
    decision: &str,
    details: Json,
) -> Result<u64, Error> {
    record_row_as(host, run, (kind, decision), details, true).await
}

/// A row of the run; `durable`: committed before this returns (its seq), else queued behind
/// the rows before it (0), to be committed with the next durable one.
async fn record_row_as(
    host: &Host,
    run: &TaskId,
    (kind, decision): (&'static str, &str),
    details: Json,
    durable: bool,
) -> Result<u64, Error> {
    let services = host.services();
    let subject = Arc::new(
        Subject::new(PIPELINE_ID, "", Tier::Observer)
            .with_task_id(run.as_str())
            .with_policy_revision(services.tiers.revision.as_str()),
    );
    let details = match details {
        Json::String(s) => s,
        other => other.to_string(),
    };
    let row = ActionRecord::new(subject, kind, decision.to_string()).details(details);
    if durable {
        Ok(services.ledger_durable(Entry::Action(row)).await?)
    } else {
        services.ledger.append_async(Entry::Action(row)).await;
        Ok(0)
    }
}

/// Whether an event must be committed before the runner goes on. A stage's start, a run's
/// start and end, and a stage's end need not be: the writer commits rows in order, so the next
/// durable row commits them first — for a run's start, the `packet.submit` row its run writes
/// before anything of it happens. A host killed before that leaves a record a resume reads
/// right: a stage or a run not started is started (nothing of it ran), a run whose end is
/// missing is read from its `runs` row, a stage whose end is missing is ended again. What a
/// person or another process acts on (a gate, a retry, a cancel, the run's end) is committed.
fn must_commit(event: &Event) -> bool {
    !matches!(
        event,
        Event::StageStart { .. }
            | Event::ItemStart { .. }
            | Event::ItemResume { .. }
            | Event::ItemEnd { .. }
            | Event::StageEnd { .. }
    )
}

pub(super) async fn record_event(host: &Host, run: &TaskId, event: &Event) -> Result<(), Error> {
    let details = serde_json::to_string(event)
        .map_err(|e| Error::Invalid(format!("cannot encode a pipeline event: {e}")))?;
    record_row(
        host,
        run,
        event.kind(),
        &event.summary(),
        Json::String(details),
    )
    .await?;
    Ok(())
}

/// A job the runner polls on its own task.
type InlineJob = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

/// A run of a stage waiting to start.
enum Job {
    /// Attempt `attempt` of element `item` of stage `stage`.
    Item {
        stage: usize,
        item: usize,
        attempt: u32,
    },
    /// An interrupted agent run of element `item`, checked, to go on.
    Resume {
        stage: usize,
        item: usize,
        attempt: u32,
        prepared: Box<crate::resume::Prepared>,
    },
    /// A `task` stage; `resume`: its orchestration was interrupted.
    Task { stage: usize, resume: bool },
}

/// What a finished job tells the runner.
enum Done {
    Item {
        stage: usize,
        item: usize,
        attempt: u32,
        run_id: String,
        agents: Vec<String>,
        result: ItemResult,
    },
    Gate {
        stage: usize,
        decision: Option<GateDecision>,
    },
    /// A retry's wait is over.
    Ready(Job),
}

struct ItemResult {
    outcome: Outcome,
    code: Option<String>,
    message: String,
    artifacts: BTreeMap<String, String>,
}

impl ItemResult {
    fn of_report(report: &RunReport) -> ItemResult {
        let (outcome, code, message) = match &report.outcome {
            RunOutcome::Completed | RunOutcome::PlanOnly => (Outcome::Success, None, String::new()),
            RunOutcome::Revoked { reason, details } => (
                Outcome::Failed,
                Some("REVOKED".to_string()),
                format!("revoked ({}): {details}", reason.as_str()),
            ),
            RunOutcome::Failed { code, message } => (
                Outcome::Failed,
                Some(code.as_str().to_string()),
                message.clone(),
            ),
        };
        ItemResult {
            outcome,
            code,
            message: crate::text::clip(&message, 1024),
            artifacts: report
                .artifacts
                .iter()
                .map(|a| (a.name.clone(), a.digest.clone()))
                .collect(),
        }
    }

    fn of_error(error: &Error) -> ItemResult {
        ItemResult {
            outcome: Outcome::Failed,
            code: Some(error.code().to_string()),
            message: crate::text::clip(&error.to_string(), 1024),
            artifacts: BTreeMap::new(),
        }
    }

    fn succeeded(message: String) -> ItemResult {
        ItemResult {
            outcome: Outcome::Success,
            code: None,
            message,
            artifacts: BTreeMap::new(),
        }
    }

    fn failed(code: &str, message: String) -> ItemResult {
        ItemResult {
            outcome: Outcome::Failed,
            code: Some(code.to_string()),
            message,
            artifacts: BTreeMap::new(),
        }
    }
}

struct Runner {
    host: Host,
    pipeline: Arc<Pipeline>,
    run: TaskId,
    view: RunView,
    observer: Option<Observer>,
    /// Agent → its component (overrides' stand-ins included).
    components: HashMap<String, Arc<[u8]>>,
    /// Agents with a run under way: an agent runs once at a time (its lock).
    busy: HashSet<String>,
    queue: Vec<Job>,
    jobs: JoinSet<Done>,
    /// Set on a cancel: waiting gates stop.
    cancelled: Arc<AtomicBool>,
    /// The last ledger row read for others' events (a cancel).
    seen_seq: u64,
    /// Restarted runs that may wait for a dead run's lock, until when.
    lock_waits: HashMap<(usize, usize), std::time::Instant>,
    /// A run going on on the runner's own task (see `launch`).
    /// (In a mutex only so the runner stays `Sync`; it is locked just to poll it.)
    inline: Option<parking_lot::Mutex<InlineJob>>,
    /// `launch` found one job to start and nothing under way.
    solo: bool,
}

impl Runner {
    fn new(
        host: &Host,
        pipeline: Pipeline,
        run: TaskId,
        observer: Option<Observer>,
        components: HashMap<String, Arc<[u8]>>,
    ) -> Runner {
        Runner {
            host: host.clone(),
            view: RunView {
                run_id: run.to_string(),
                name: pipeline.name.clone(),
                digest: pipeline.digest.clone(),
                source: pipeline.source.clone(),
                params: Json::Null,
                overrides: BTreeMap::new(),
                started_at: now_rfc3339(),
                started_by: String::new(),
                host: String::new(),
                pid: 0,
                deadline_ms: None,
                round: 0,
                stages: BTreeMap::new(),
                cancelled_by: None,
                outcome: None,
                ended_at: None,
            },
            pipeline: Arc::new(pipeline),
            run,
            observer,
            components,
            busy: HashSet::new(),
            queue: Vec::new(),
            jobs: JoinSet::new(),
            cancelled: Arc::new(AtomicBool::new(false)),
            seen_seq: 0,
            lock_waits: HashMap::new(),
            inline: None,
            solo: false,
        }
    }

    /// Record `event` durably, then apply it.
    async fn record(&mut self, event: Event) -> Result<(), Error> {
        let details = serde_json::to_string(&event)
            .map_err(|e| Error::Invalid(format!("cannot encode a pipeline event: {e}")))?;
        let seq = record_row_as(
            &self.host,
            &self.run,
            (event.kind(), &event.summary()),
            Json::String(details),
            must_commit(&event),
        )
        .await?;
        self.seen_seq = self.seen_seq.max(seq);
        self.apply(event);
        crate::fault::pipeline_event().await;
        Ok(())
    }

    fn apply(&mut self, event: Event) {
        if let Event::Start { .. } = &event {
            let rows = vec![(now_rfc3339(), event.clone())];
            if let Some(view) = RunView::fold(self.run.as_str(), &rows) {
                self.view = view;
            }
        } else {
            self.view.apply_event(&now_rfc3339(), &event);
        }
        if let Some(observer) = &self.observer {
            observer(self.run.as_str(), &event);
        }
    }

    fn round(&self, stage: usize) -> u32 {
        self.view
            .stage_view(&self.pipeline.stages[stage].name)
            .round
    }

    /// After a take-over: the work the recorded view says is under way.
    async fn pick_up(&mut self) -> Result<(), Error> {
        let pipeline = self.pipeline.clone();
        for (i, stage) in pipeline.stages.iter().enumerate() {
            let view = self.view.stage_view(&stage.name);
            match (view.status, &stage.kind) {
                (Status::Waiting, StageKind::Gate(g)) => {
                    if let Some(gate) = &view.gate {
                        self.spawn_gate(i, gate.deadline_ms, g.on_timeout);
                    }
                }
                (Status::Running, StageKind::Task(_)) => {
                    let sub = self.subtask(i)?;
                    let progress = crate::orchestrator::task_progress(self.host.ledger(), &sub)?;
                    let resume = progress == TaskProgress::Interrupted;
                    match progress {
                        TaskProgress::Ended { success }
                            if view.items.first().is_some_and(|it| it.run_id.is_some()) =>
                        {
                            let result = if success {
                                ItemResult::succeeded(String::new())
                            } else {
                                ItemResult::failed(
                                    "TASK_FAILED",
                                    format!("task `{sub}` ended without success"),
                                )
                            };
                            let result = self.link_task_artifacts(i, &sub, result).await;
                            self.item_ended(
                                i,
                                0,
                                view.items[0].attempt.max(1),
                                sub.to_string(),
                                result,
                            )
                            .await?;
                        }
                        _ => self.queue.push(Job::Task { stage: i, resume }),
                    }
                }
                (Status::Running, StageKind::Agent(_)) => {
                    for (n, item) in view.items.iter().enumerate() {
                        self.pick_up_item(i, n, item).await?;
                    }
                    self.maybe_end_stage(i).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn pick_up_item(&mut self, i: usize, n: usize, item: &ItemView) -> Result<(), Error> {
        let (Some(run_id), None) = (&item.run_id, item.outcome) else {
            match item.outcome {
                // Never started.
                None => self.queue.push(Job::Item {
                    stage: i,
                    item: n,
                    attempt: 1,
                }),
                Some(Outcome::Failed) if self.retries(i, item.attempt, item.code.as_deref()) => {
                    let ended = item
                        .ended_at
                        .as_deref()
                        .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
                    let waited = ended.and_then(|t| t.elapsed().ok()).unwrap_or_default();
                    let wait = self.pipeline.stages[i]
                        .retry
                        .wait_before(item.attempt + 1)
                        .saturating_sub(waited);
                    self.later(
                        wait,
                        Job::Item {
                            stage: i,
                            item: n,
                            attempt: item.attempt + 1,
                        },
                    );
                }
                Some(_) => {}
            }
            return Ok(());
        };
        let id = RunId::new(run_id)?;
        match self.host.ledger().run(&id)? {
            // Killed before its run's row was written: start it again. Its BOOTSTRAP may have
            // taken the agent's lock, which then outlives it by up to the lock's TTL: until
            // then the restart waits for the lock instead of failing.
            None => {
                let ttl = self.host.tiers().defaults.lock_ttl;
                self.lock_waits
                    .insert((i, n), std::time::Instant::now() + ttl + POLL * 10);
                self.queue.push(Job::Item {
                    stage: i,
                    item: n,
                    attempt: item.attempt,
                });
            }
            Some(row) if row.status == "running" => {
                let prepared = self
                    .host
                    .prepare_resume(&id, crate::resume::ResumeOptions::default())
                    .await?;
                self.queue.push(Job::Resume {
                    stage: i,
                    item: n,
                    attempt: item.attempt,
                    prepared: Box::new(prepared),
                });
            }
            Some(row) => {
                // It ended; the row of its end was not written.
                let mut result = if row.status == "completed" {
                    ItemResult::succeeded(String::new())
                } else {
                    ItemResult::failed(
                        row.outcome.as_deref().unwrap_or("FAILED"),
                        format!("ended `{}` before the pipeline was resumed", row.status),
                    )
                };
                if let Ok(packet) = Packet::from_json(&row.packet) {
                    for name in &packet.deliverables {
                        if let Some(a) = self.host.state().artifact(&self.run, name).await? {
                            result.artifacts.insert(a.name, a.digest);
                        }
                    }
                }
                self.item_ended(i, n, item.attempt, run_id.clone(), result)
                    .await?;
            }
        }
        Ok(())
    }

    fn retries(&self, stage: usize, attempt: u32, code: Option<&str>) -> bool {
        self.pipeline.stages[stage]
            .retry
            .retries(attempt, code.unwrap_or_default())
    }

    /// Run the loop until every stage has ended.
    async fn go(mut self) -> Result<RunView, Error> {
        let mut last_poll = std::time::Instant::now();
        loop {
            let steps = schedule::next(&self.pipeline, &self.view, now_ms());
            let progressed = !steps.is_empty();
            for step in steps {
                match step {
                    Step::Skip(i, why, code) => {
                        self.end_stage(i, Outcome::Skipped, code.map(str::to_string), why)
                            .await?;
                    }
                    Step::Fail(i, why) => {
                        self.end_stage(i, Outcome::Failed, Some("STAGE_INVALID".into()), why)
                            .await?;
                    }
                    Step::Start(i) => self.start_stage(i).await?,
                }
            }
            if progressed {
                continue;
            }
            self.launch().await?;
            if self.jobs.is_empty() && self.queue.is_empty() && self.inline.is_none() {
                if let Some(outcome) = schedule::finished(&self.pipeline, &self.view, now_ms()) {
                    self.record(Event::End {
                        outcome: outcome.to_string(),
                    })
                    .await?;
                    return Ok(self.view);
                }
                return Err(Error::Invalid(format!(
                    "pipeline run `{}` has stages that cannot start and nothing under way; this is a bug: `warden pipeline status {}` shows where it stands",
                    self.run, self.run
                )));
            }
            let inline = self.inline.is_some();
            let done = tokio::select! {
                done = self.jobs.join_next(), if !self.jobs.is_empty() => done.map(|d| {
                    d.map_err(|e| Error::Invalid(format!("a pipeline stage's task failed: {e}")))
                }),
                done = std::future::poll_fn(|cx| match &self.inline {
                    Some(job) => job.lock().as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                }), if inline => {
                    self.inline = None;
                    Some(Ok(done))
                }
                () = tokio::time::sleep(POLL) => None,
            };
            if let Some(done) = done {
                self.finished(done?).await?;
            }
            if last_poll.elapsed() >= POLL {
                last_poll = std::time::Instant::now();
                self.poll_others().await?;
            }
        }
    }

    /// Events others recorded: a cancel.
    async fn poll_others(&mut self) -> Result<(), Error> {
        let host = self.host.clone();
        let run = self.run.clone();
        let after = self.seen_seq;
        let events = tokio::task::spawn_blocking(move || events_of(&host, &run, Some(after)))
            .await
            .map_err(|e| Error::Invalid(format!("reading the pipeline's rows failed: {e}")))??;
        for (_, event) in events {
            match &event {
                Event::Cancel { by } if self.view.cancelled_by.is_none() => {
                    self.cancelled.store(true, Ordering::SeqCst);
                    self.apply(Event::Cancel { by: by.clone() });
                }
                Event::GateDecide { .. } => self.apply_quiet(event),
                _ => {}
            }
        }
        self.seen_seq = self.host.ledger().committed_seq().max(self.seen_seq);
        Ok(())
    }

    async fn start_stage(&mut self, i: usize) -> Result<(), Error> {
        let stage = self.pipeline.stages[i].clone();
        let round = self.round(i);
        match &stage.kind {
            StageKind::Agent(a) => {
                let items = match &a.for_each {
                    None => Ok(vec![Json::Null]),
                    Some(ForEach::List(items)) => Ok(items.clone()),
                    Some(ForEach::Expr(e)) => fan_out(
                        e,
                        e.eval(&schedule::scope(&self.pipeline, &self.view, i, None)),
                    ),
                };
                let items = match items {
                    Ok(items) => items,
                    Err(why) => {
                        return self
                            .end_stage(i, Outcome::Failed, Some("STAGE_INVALID".into()), why)
                            .await;
                    }
                };
                if items.is_empty() {
                    return self
                        .end_stage(
                            i,
                            Outcome::Skipped,
                            None,
                            "`for_each` gave no elements".into(),
                        )
                        .await;
                }
                let count = items.len();
                self.record(Event::StageStart {
                    stage: stage.name.clone(),
                    round,
                    items,
                })
                .await?;
                for n in 0..count {
                    self.queue.push(Job::Item {
                        stage: i,
                        item: n,
                        attempt: 1,
                    });
                }
            }
            StageKind::Gate(g) => {
                let timeout = stage.timeout.unwrap_or(Duration::from_secs(1800));
                let mut deadline =
                    now_ms().saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
                if let Some(d) = self.view.deadline_ms {
                    deadline = deadline.min(d);
                }
                let message = match &g.message {
                    Some(m) => m
                        .render(&schedule::scope(&self.pipeline, &self.view, i, None))
                        .unwrap_or_else(|e| format!("(the message cannot be rendered: {e})")),
                    None => format!(
                        "approve stage `{}` of pipeline `{}`",
                        stage.name, self.pipeline.name
                    ),
                };
                self.record(Event::GateOpen {
                    stage: stage.name.clone(),
                    round,
                    deadline_ms: deadline,
                    approvers: g.approvers.clone(),
                    message,
                })
                .await?;
                self.spawn_gate(i, deadline, g.on_timeout);
            }
            StageKind::Task(_) => {
                self.record(Event::StageStart {
                    stage: stage.name.clone(),
                    round,
                    items: vec![Json::Null],
                })
                .await?;
                self.queue.push(Job::Task {
                    stage: i,
                    resume: false,
                });
            }
        }
        Ok(())
    }

    fn spawn_gate(&mut self, i: usize, deadline_ms: u64, on_timeout: OnTimeout) {
        let state = self.host.state().clone();
        let run = self.run.clone();
        let stage = self.pipeline.stages[i].name.clone();
        let round = self.round(i);
        let cancelled = self.cancelled.clone();
        self.jobs.spawn(async move {
            loop {
                if let Ok(Some(d)) = state.gate_decision(&run, &stage, round).await {
                    return Done::Gate {
                        stage: i,
                        decision: Some(d),
                    };
                }
                if cancelled.load(Ordering::SeqCst) {
                    return Done::Gate {
                        stage: i,
                        decision: None,
                    };
                }
                let now = now_ms();
                if now >= deadline_ms {
                    let decision = GateDecision {
                        run: run.clone(),
                        stage: stage.clone(),
                        round,
                        approved: on_timeout == OnTimeout::Approve,
                        decided_by: "host".into(),
                        comment: format!(
                            "nobody decided in time; `on_timeout: {}`",
                            match on_timeout {
                                OnTimeout::Approve => "approve",
                                OnTimeout::Reject => "reject",
                                OnTimeout::Fail => "fail",
                            }
                        ),
                        decided_at: now_rfc3339(),
                        timed_out: true,
                    };
                    // A person deciding at the last moment wins over the timeout, or loses
                    // to it, in one atomic step; either way there is one decision.
                    match state.decide_gate(&decision).await {
                        Ok(None) => {
                            return Done::Gate {
                                stage: i,
                                decision: Some(decision),
                            };
                        }
                        Ok(Some(first)) => {
                            return Done::Gate {
                                stage: i,
                                decision: Some(first),
                            };
                        }
                        Err(_) => {}
                    }
                }
                tokio::time::sleep(POLL.min(Duration::from_millis(
                    deadline_ms.saturating_sub(now).max(1),
                )))
                .await;
            }
        });
    }

    /// Start what is queued whose agents are free.
    async fn launch(&mut self) -> Result<(), Error> {
        let queued = std::mem::take(&mut self.queue);
        // The one job that can start, with nothing else under way, runs on the runner's own
        // task: a task of its own would cost a hop between threads (about 1 ms a run on two
        // cores) and buy no parallelism.
        self.solo = queued.len() == 1 && self.jobs.is_empty() && self.inline.is_none();
        for job in queued {
            match job {
                Job::Item {
                    stage,
                    item,
                    attempt,
                } => match self.item_packet(stage, item) {
                    Err(why) => {
                        let run_id = String::new();
                        self.item_ended(
                            stage,
                            item,
                            attempt,
                            run_id,
                            ItemResult::failed("STAGE_INVALID", why),
                        )
                        .await?;
                    }
                    Ok((agent, _)) if self.busy.contains(&agent) => {
                        self.queue.push(Job::Item {
                            stage,
                            item,
                            attempt,
                        });
                    }
                    Ok((agent, packet)) => {
                        self.spawn_item(stage, item, attempt, agent, packet).await?
                    }
                },
                Job::Resume {
                    stage,
                    item,
                    attempt,
                    prepared,
                } => {
                    let agent = self
                        .view
                        .stage_view(&self.pipeline.stages[stage].name)
                        .items[item]
                        .agent
                        .clone()
                        .unwrap_or_default();
                    if self.busy.contains(&agent) {
                        self.queue.push(Job::Resume {
                            stage,
                            item,
                            attempt,
                            prepared,
                        });
                        continue;
                    }
                    self.busy.insert(agent.clone());
                    let host = self.host.clone();
                    let run_id = self
                        .view
                        .stage_view(&self.pipeline.stages[stage].name)
                        .items[item]
                        .run_id
                        .clone()
                        .unwrap_or_default();
                    self.record(Event::ItemResume {
                        stage: self.pipeline.stages[stage].name.clone(),
                        round: self.round(stage),
                        item,
                        run_id: run_id.clone(),
                    })
                    .await?;
                    self.start_job(async move {
                        let result = match host.resume_prepared(*prepared).await {
                            Ok(report) => ItemResult::of_report(&report),
                            Err(error) => ItemResult::of_error(&error),
                        };
                        Done::Item {
                            stage,
                            item,
                            attempt,
                            run_id,
                            agents: vec![agent],
                            result,
                        }
                    });
                }
                Job::Task { stage, resume } => {
                    let StageKind::Task(t) = &self.pipeline.stages[stage].kind else {
                        continue;
                    };
                    let agents: Vec<String> = t.agents.iter().chain(&t.mediator).cloned().collect();
                    if agents.iter().any(|a| self.busy.contains(a)) {
                        self.queue.push(Job::Task { stage, resume });
                        continue;
                    }
                    self.spawn_task(stage, resume, agents).await?;
                }
            }
        }
        Ok(())
    }

    /// The packet of element `item` of agent stage `stage`, and its agent.
    fn item_packet(&self, stage: usize, item: usize) -> Result<(String, Packet), String> {
        let s = &self.pipeline.stages[stage];
        let StageKind::Agent(a) = &s.kind else {
            return Err(format!("stage `{}` is not an agent stage", s.name));
        };
        let view = self.view.stage_view(&s.name);
        let element = view
            .items
            .get(item)
            .map(|i| i.item.clone())
            .filter(|v| !v.is_null());
        let handoff = view.items.get(item).and_then(|i| i.handoff.clone());
        let scope = schedule::scope(&self.pipeline, &self.view, stage, element.clone());
        let mut agent = match &handoff {
            Some(_) => match &s.on_failure {
                OnFailure::Handoff(agent) => agent.clone(),
                _ => {
                    return Err(
                        "a handoff run of a stage without `on_failure: {handoff: …}`".into(),
                    );
                }
            },
            None => a.agent.render(&scope)?,
        };
        if handoff.is_none()
            && let Some(o) = self.view.overrides.get(&s.name)
        {
            agent.clone_from(&o.agent);
        }
        let mut objective = a.objective.render(&scope)?;
        if !a.inputs.is_empty() {
            objective.push_str(&format!(
                "\n\ninputs (artifacts of this task): {}",
                a.inputs.join(", ")
            ));
        }
        if let Some(failed) = &handoff {
            objective = format!(
                "take over stage `{}` of pipeline `{}`: agent `{failed}` failed it; its handoff is artifact `handoff/{}.json`.\n\n{objective}",
                s.name, self.pipeline.name, s.name
            );
        }
        let deliverables = a
            .deliverables
            .iter()
            .map(|d| d.render(&scope))
            .collect::<Result<Vec<_>, _>>()?;
        // A `finally` stage runs after the deadline too (that is what it is for): only its
        // own `timeout` bounds it.
        let remaining = self
            .view
            .deadline_ms
            .filter(|_| !s.finally)
            .map(|d| d.saturating_sub(now_ms()));
        let stage_ms = s
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let run_wall_ms = match (remaining, stage_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let json = serde_json::json!({
            "agent_id": agent,
            "task_id": self.run.as_str(),
            "created_for": format!("pipeline `{}` stage `{}`", self.pipeline.name, s.name),
            "objective": objective,
            "deliverables": deliverables,
            "constraints": a.constraints,
            "success_criteria": a.success_criteria,
            "error_budget": a.error_budget,
            "limits": PacketLimits { run_wall_ms: run_wall_ms.map(|ms| ms.max(1)), ..PacketLimits::default() },
        });
        let packet = Packet::from_json(&json.to_string()).map_err(|e| e.to_string())?;
        Ok((agent, packet))
    }

    async fn spawn_item(
        &mut self,
        stage: usize,
        item: usize,
        attempt: u32,
        agent: String,
        packet: Packet,
    ) -> Result<(), Error> {
        let bytes = match self.components.get(&agent) {
            Some(bytes) => bytes.clone(),
            None => match self.host.registered_component(&agent) {
                Ok(bytes) => {
                    let bytes = Arc::<[u8]>::from(bytes);
                    self.components.insert(agent.clone(), bytes.clone());
                    bytes
                }
                Err(error) => {
                    return self
                        .item_ended(
                            stage,
                            item,
                            attempt,
                            String::new(),
                            ItemResult::of_error(&error),
                        )
                        .await;
                }
            },
        };
        let run_id = RunId::generate();
        self.record(Event::ItemStart {
            stage: self.pipeline.stages[stage].name.clone(),
            round: self.round(stage),
            item,
            attempt,
            run_id: run_id.to_string(),
            agent: agent.clone(),
        })
        .await?;
        self.busy.insert(agent.clone());
        let host = self.host.clone();
        self.start_job(async move {
            let id = run_id.to_string();
            let result = match host.submit_packet(&packet).await {
                Err(error) => ItemResult::of_error(&error),
                Ok(()) => match host.run_as(&packet.agent_id, &bytes, run_id).await {
                    Ok(report) => ItemResult::of_report(&report),
                    Err(error) => ItemResult::of_error(&error),
                },
            };
            Done::Item {
                stage,
                item,
                attempt,
                run_id: id,
                agents: vec![agent],
                result,
            }
        });
        Ok(())
    }

    fn subtask(&self, stage: usize) -> Result<TaskId, Error> {
        let round = self.round(stage);
        let name = &self.pipeline.stages[stage].name;
        let id = if round == 0 {
            format!("{}.{name}", self.run)
        } else {
            format!("{}.{name}.{round}", self.run)
        };
        Ok(TaskId::new(&id)?)
    }

    async fn spawn_task(
        &mut self,
        stage: usize,
        resume: bool,
        agents: Vec<String>,
    ) -> Result<(), Error> {
        let s = self.pipeline.stages[stage].clone();
        let StageKind::Task(t) = &s.kind else {
            return Ok(());
        };
        let sub = self.subtask(stage)?;
        let objective =
            match t
                .objective
                .render(&schedule::scope(&self.pipeline, &self.view, stage, None))
            {
                Ok(o) => o,
                Err(why) => {
                    return self
                        .item_ended(
                            stage,
                            0,
                            1,
                            sub.to_string(),
                            ItemResult::failed("STAGE_INVALID", why),
                        )
                        .await;
                }
            };
        if !resume {
            self.record(Event::ItemStart {
                stage: s.name.clone(),
                round: self.round(stage),
                item: 0,
                attempt: 1,
                run_id: sub.to_string(),
                agent: agents.join(","),
            })
            .await?;
        }
        let mut spec = TaskSpec::new(sub.as_str(), objective, t.agents.clone());
        if let Some(m) = &t.mediator {
            spec = spec.mediator(m.clone());
        }
        if let Some(q) = t.quorum {
            spec = spec.quorum(q);
        }
        if let Some(n) = t.max_parallel {
            spec = spec.max_parallel(n);
        }
        if let Some(c) = t.complexity {
            spec = spec.complexity(c);
        }
        let remaining = self
            .view
            .deadline_ms
            .filter(|_| !s.finally)
            .map(|d| Duration::from_millis(d.saturating_sub(now_ms()).max(1)));
        match (s.timeout, remaining) {
            (Some(a), Some(b)) => spec = spec.timeout(a.min(b)),
            (Some(t), None) | (None, Some(t)) => spec = spec.timeout(t),
            (None, None) => {}
        }
        for a in &agents {
            self.busy.insert(a.clone());
        }
        let host = self.host.clone();
        let run = self.run.clone();
        let deliverables = t.deliverables.clone();
        self.jobs.spawn(async move {
            let metrics = if resume {
                host.resume_task(sub.as_str()).await
            } else {
                host.orchestrate(&spec).await
            };
            let result = match metrics {
                Ok(m) if m.success => {
                    ItemResult::succeeded(format!("consensus {}", m.consensus_result))
                }
                Ok(m) => ItemResult::failed(
                    "TASK_FAILED",
                    format!(
                        "not every agent of task `{sub}` completed (consensus {})",
                        m.consensus_result
                    ),
                ),
                Err(error) => ItemResult::of_error(&error),
            };
            let result = link_artifacts(&host, &run, &sub, &deliverables, result).await;
            Done::Item {
                stage,
                item: 0,
                attempt: 1,
                run_id: sub.to_string(),
                agents,
                result,
            }
        });
        Ok(())
    }

    async fn link_task_artifacts(
        &self,
        stage: usize,
        sub: &TaskId,
        result: ItemResult,
    ) -> ItemResult {
        let StageKind::Task(t) = &self.pipeline.stages[stage].kind else {
            return result;
        };
        link_artifacts(&self.host, &self.run, sub, &t.deliverables, result).await
    }

    async fn finished(&mut self, done: Done) -> Result<(), Error> {
        match done {
            Done::Item {
                stage,
                item,
                attempt,
                run_id,
                agents,
                result,
            } => {
                for a in &agents {
                    self.busy.remove(a);
                }
                self.item_ended(stage, item, attempt, run_id, result).await
            }
            Done::Gate { stage, decision } => {
                let name = self.pipeline.stages[stage].name.clone();
                let StageKind::Gate(g) = &self.pipeline.stages[stage].kind else {
                    return Ok(());
                };
                let on_timeout = g.on_timeout;
                match decision {
                    None => {
                        self.end_stage(
                            stage,
                            Outcome::Cancelled,
                            None,
                            "the pipeline was cancelled while the gate waited".into(),
                        )
                        .await
                    }
                    Some(d) => {
                        if d.timed_out {
                            self.record(Event::GateDecide {
                                stage: name.clone(),
                                round: d.round,
                                approved: d.approved,
                                by: d.decided_by.clone(),
                                comment: d.comment.clone(),
                                timed_out: true,
                            })
                            .await?;
                        } else {
                            let event = Event::GateDecide {
                                stage: name.clone(),
                                round: d.round,
                                approved: d.approved,
                                by: d.decided_by.clone(),
                                comment: d.comment.clone(),
                                timed_out: false,
                            };
                            if self.decider_recorded(&name, d.round).await? {
                                self.apply_quiet(event);
                            } else {
                                // The decider stopped between the state store and the
                                // ledger: the decision stands, and the ledger gets its row.
                                self.record(event).await?;
                            }
                        }
                        let said = if d.comment.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", d.comment)
                        };
                        let (outcome, code) = match (d.approved, d.timed_out, on_timeout) {
                            (true, _, _) => (Outcome::Success, None),
                            (false, true, OnTimeout::Fail) => {
                                (Outcome::Failed, Some("GATE_TIMEOUT".to_string()))
                            }
                            (false, _, _) => (Outcome::Rejected, None),
                        };
                        let verb = if d.approved { "approved" } else { "rejected" };
                        self.end_stage(
                            stage,
                            outcome,
                            code,
                            format!("{verb} by {}{said}", d.decided_by),
                        )
                        .await
                    }
                }
            }
            Done::Ready(job) => {
                self.queue.push(job);
                Ok(())
            }
        }
    }

    /// Whether the decider of gate `stage` (round `round`) wrote its row; it is given a
    /// moment, since the state store hears of a decision just before the ledger does.
    async fn decider_recorded(&self, stage: &str, round: u32) -> Result<bool, Error> {
        for _ in 0..20 {
            let found = events_of(&self.host, &self.run, None)?.iter().any(|(_, e)| {
                matches!(e, Event::GateDecide { stage: s, round: r, .. } if s == stage && *r == round)
            });
            if found {
                return Ok(true);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(false)
    }

    /// Start an agent run: on the runner's own task when it is the only one, else spawned.
    fn start_job(&mut self, job: impl std::future::Future<Output = Done> + Send + 'static) {
        if std::mem::take(&mut self.solo) {
            self.inline = Some(parking_lot::Mutex::new(Box::pin(job)));
        } else {
            self.jobs.spawn(job);
        }
    }

    fn apply_quiet(&mut self, event: Event) {
        self.view.apply_event(&now_rfc3339(), &event);
    }

    fn later(&mut self, wait: Duration, job: Job) {
        self.jobs.spawn(async move {
            tokio::time::sleep(wait).await;
            Done::Ready(job)
        });
    }

    async fn item_ended(
        &mut self,
        stage: usize,
        item: usize,
        attempt: u32,
        run_id: String,
        result: ItemResult,
    ) -> Result<(), Error> {
        let name = self.pipeline.stages[stage].name.clone();
        let round = self.round(stage);
        // A restarted run refused the lock of the run it replaces, whose process is gone.
        if result.code.as_deref() == Some("CANNOT_ACQUIRE_LOCK")
            && self
                .lock_waits
                .get(&(stage, item))
                .is_some_and(|until| std::time::Instant::now() < *until)
        {
            self.later(
                POLL * 5,
                Job::Item {
                    stage,
                    item,
                    attempt,
                },
            );
            return Ok(());
        }
        self.lock_waits.remove(&(stage, item));
        let retry = result.outcome == Outcome::Failed
            && !matches!(self.pipeline.stages[stage].kind, StageKind::Task(_))
            && self.retries(stage, attempt, result.code.as_deref())
            && result.code.as_deref().is_none_or(|c| c != "STAGE_INVALID");
        self.record(Event::ItemEnd {
            stage: name,
            round,
            item,
            attempt,
            run_id,
            outcome: result.outcome,
            code: result.code,
            message: result.message,
            artifacts: result.artifacts,
        })
        .await?;
        if retry && !self.cancelled.load(Ordering::SeqCst) {
            let wait = self.pipeline.stages[stage].retry.wait_before(attempt + 1);
            self.later(
                wait,
                Job::Item {
                    stage,
                    item,
                    attempt: attempt + 1,
                },
            );
            return Ok(());
        }
        self.maybe_end_stage(stage).await
    }

    /// End the stage if every run of it has ended (a failure with `on_failure: handoff`
    /// first runs the handoff agent).
    async fn maybe_end_stage(&mut self, stage: usize) -> Result<(), Error> {
        let s = self.pipeline.stages[stage].clone();
        let view = self.view.stage_view(&s.name);
        if view.status != Status::Running {
            return Ok(());
        }
        let pending_retry = view.items.iter().any(|i| {
            i.outcome == Some(Outcome::Failed)
                && self.retries(stage, i.attempt, i.code.as_deref())
                && i.code.as_deref().is_none_or(|c| c != "STAGE_INVALID")
                && !self.cancelled.load(Ordering::SeqCst)
        });
        if view.items.iter().any(|i| i.outcome.is_none()) || pending_retry {
            return Ok(());
        }
        let handed = view.items.iter().any(|i| i.handoff.is_some());
        let failed: Vec<&ItemView> = view
            .items
            .iter()
            .filter(|i| i.outcome != Some(Outcome::Success))
            .collect();
        let mut artifacts = BTreeMap::new();
        for i in &view.items {
            if i.outcome == Some(Outcome::Success) {
                artifacts.extend(i.artifacts.clone());
            }
        }
        if let (Some(first), OnFailure::Handoff(_), false) = (failed.first(), &s.on_failure, handed)
        {
            // The failed run's handoff (the host writes one at a revocation), or what the
            // pipeline knows of the failure, for the agent that takes over.
            let failed_agent = first.agent.clone().unwrap_or_default();
            let handoff = self
                .host
                .handoff(self.run.as_str())
                .await
                .ok()
                .flatten()
                .filter(|h| h.previous_agent_id.as_str() == failed_agent);
            let content = serde_json::json!({
                "stage": s.name,
                "failed_agent": first.agent,
                "run_id": first.run_id,
                "code": first.code,
                "message": first.message,
                "artifacts": artifacts,
                "handoff": handoff,
            });
            write_artifact(
                &self.host,
                &self.run,
                &format!("handoff/{}.json", s.name),
                &content.to_string(),
            )
            .await?;
            self.record(Event::Handoff {
                stage: s.name.clone(),
                round: view.round,
                agent: failed_agent,
                item: first.item.clone(),
            })
            .await?;
            let n = self.view.stage_view(&s.name).items.len() - 1;
            self.queue.push(Job::Item {
                stage,
                item: n,
                attempt: 1,
            });
            return Ok(());
        }
        let last = view.items.last();
        let (outcome, code, message) = if handed {
            // The handoff run decides.
            match last {
                Some(i) if i.outcome == Some(Outcome::Success) => (
                    Outcome::Success,
                    None,
                    "the handoff agent completed it".to_string(),
                ),
                Some(i) => (
                    Outcome::Failed,
                    i.code.clone(),
                    format!("the handoff agent failed too: {}", i.message),
                ),
                None => (Outcome::Failed, None, String::new()),
            }
        } else if let Some(f) = failed.first() {
            (
                Outcome::Failed,
                f.code.clone(),
                format!(
                    "{} of {} runs failed; the first: {}",
                    failed.len(),
                    view.items.len(),
                    f.message
                ),
            )
        } else {
            (Outcome::Success, None, String::new())
        };
        self.record(Event::StageEnd {
            stage: s.name.clone(),
            round: view.round,
            outcome,
            code,
            message,
            artifacts,
        })
        .await
    }

    async fn end_stage(
        &mut self,
        stage: usize,
        outcome: Outcome,
        code: Option<String>,
        message: String,
    ) -> Result<(), Error> {
        let name = self.pipeline.stages[stage].name.clone();
        let round = self.round(stage);
        self.record(Event::StageEnd {
            stage: name,
            round,
            outcome,
            code,
            message,
            artifacts: BTreeMap::new(),
        })
        .await
    }
}

/// The elements a `for_each: ${{ e }}` gave: a list of at most [`MAX_FAN_OUT`].
fn fan_out(e: &super::expr::Expr, value: Result<Json, String>) -> Result<Vec<Json>, String> {
    match value? {
        Json::Array(items) if items.len() <= MAX_FAN_OUT => Ok(items),
        Json::Array(items) => Err(format!(
            "`for_each` gave {} elements; at most {MAX_FAN_OUT}",
            items.len()
        )),
        other => Err(format!(
            "`for_each: ${{{{ {} }}}}` gave `{other}`, not a list",
            e.source()
        )),
    }
}

/// Make a task stage's declared artifacts the pipeline's.
async fn link_artifacts(
    host: &Host,
    run: &TaskId,
    sub: &TaskId,
    names: &[String],
    mut result: ItemResult,
) -> ItemResult {
    for name in names {
        match host.state().artifact(sub, name).await {
            Ok(Some(a)) => match host
                .state()
                .push_artifact(run, &a, Quota::UNLIMITED, None)
                .await
            {
                Ok(_) => {
                    result.artifacts.insert(a.name.clone(), a.digest.clone());
                }
                Err(e) => return ItemResult::of_error(&e.into()),
            },
            Ok(None) if result.outcome == Outcome::Success => {
                return ItemResult::failed(
                    "VERIFICATION_FAILED",
                    format!("task `{sub}` did not write its declared artifact `{name}`"),
                );
            }
            Ok(None) => {}
            Err(e) => return ItemResult::of_error(&e.into()),
        }
    }
    result
}

/// The host's own artifact in the pipeline's task.
async fn write_artifact(host: &Host, run: &TaskId, name: &str, content: &str) -> Result<(), Error> {
    let digest =
        crate::artifacts::put_off_thread(&host.services().blobs, content.as_bytes().to_vec())
            .await?;
    let reference = crate::artifacts::ArtifactRef {
        name: name.to_string(),
        digest,
        size: content.len() as u64,
        author: "host".to_string(),
        created_at: now_rfc3339(),
    };
    // The host's own artifact: counted in the task's usage, never refused.
    let _stored = host
        .state()
        .push_artifact(run, &reference, Quota::UNLIMITED, None)
        .await?;
    Ok(())
}
