//! The record of a pipeline run: the events its ledger rows hold, and the view they fold
//! into. The ledger is the authority: a resume, a retry and `pipeline status` all read a
//! run from its rows, so what was recorded is what happened.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// The agent id of a pipeline's own rows.
pub const PIPELINE_ID: &str = "pipeline";

/// How a stage (or one run of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It did what it was for.
    Success,
    /// It failed (after its retries).
    Failed,
    /// It did not run: its `when` was false, or the pipeline stopped first.
    Skipped,
    /// A human gate was rejected (or timed out with `on_timeout: reject`).
    Rejected,
    /// The pipeline was cancelled before it ended.
    Cancelled,
}

impl Outcome {
    /// The word the ledger and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A stage run with a component other than its agent's (`--override stage=file.wasm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The file it was read from.
    pub path: String,
    /// `sha256:<hex>` of its bytes.
    pub digest: String,
    /// The agent id it runs as: `<agent>.override.<stage>`, registered at the tier of the
    /// agent it stands in for.
    pub agent: String,
}

/// One event of a run, as its ledger row's `details` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The run began.
    Start {
        /// `pipeline.name`.
        name: String,
        /// `sha256:` of the YAML.
        digest: String,
        /// The YAML as written: what a resume runs.
        source: String,
        /// The bound parameters.
        params: Json,
        /// Hot-swapped stages.
        overrides: BTreeMap<String, Override>,
        /// The machine that runs it.
        host: String,
        /// The process that runs it.
        pid: u32,
        /// When the whole run must end (ms since the epoch), from `pipeline.timeout`.
        deadline_ms: Option<u64>,
        /// Who started it.
        #[serde(default)]
        by: String,
    },
    /// A process took the run over (a resume or a retry).
    Resume {
        /// The machine.
        host: String,
        /// The process.
        pid: u32,
    },
    /// A stage began; `items` are its `for_each` elements (one `null` without one), fixed
    /// here so a resume runs the same ones.
    StageStart {
        /// The stage.
        stage: String,
        /// The retry round (0 until `pipeline retry`).
        round: u32,
        /// Its elements.
        items: Vec<Json>,
    },
    /// One run of a stage began.
    ItemStart {
        /// The stage.
        stage: String,
        /// The round.
        round: u32,
        /// The element's index.
        item: usize,
        /// 1 for the first attempt.
        attempt: u32,
        /// The agent run (or, for a `task` stage, the task).
        run_id: String,
        /// The agent that runs.
        agent: String,
    },
    /// An interrupted run of a stage goes on (its journal fed back, then live).
    ItemResume {
        /// The stage.
        stage: String,
        /// The round.
        round: u32,
        /// The element's index.
        item: usize,
        /// The run.
        run_id: String,
    },
    /// One run of a stage ended.
    ItemEnd {
        /// The stage.
        stage: String,
        /// The round.
        round: u32,
        /// The element's index.
        item: usize,
        /// Its attempt.
        attempt: u32,
        /// The run.
        run_id: String,
        /// How it ended.
        outcome: Outcome,
        /// Its failure code, if it failed.
        code: Option<String>,
        /// What happened, in words.
        message: String,
        /// Artifacts it wrote, name → digest.
        artifacts: BTreeMap<String, String>,
    },
    /// A stage ended.
    StageEnd {
        /// The stage.
        stage: String,
        /// The round.
        round: u32,
        /// How it ended.
        outcome: Outcome,
        /// Its failure code, if any.
        code: Option<String>,
        /// Why, in words.
        message: String,
        /// Its artifacts, name → digest.
        artifacts: BTreeMap<String, String>,
    },
    /// A human gate began to wait.
    GateOpen {
        /// The gate.
        stage: String,
        /// The round.
        round: u32,
        /// When it stops waiting (ms since the epoch).
        deadline_ms: u64,
        /// Who may decide; empty: anyone.
        approvers: Vec<String>,
        /// What the deciders are asked.
        message: String,
    },
    /// A gate was decided.
    GateDecide {
        /// The gate.
        stage: String,
        /// The round.
        round: u32,
        /// Approved or rejected.
        approved: bool,
        /// Who decided (`host` when it timed out).
        by: String,
        /// Their comment.
        comment: String,
        /// Nobody decided in time; `on_timeout` did.
        timed_out: bool,
    },
    /// A stage's runs failed and `on_failure: {handoff: agent}` gives it to another agent:
    /// one more run of the stage, whose outcome is the stage's.
    Handoff {
        /// The stage.
        stage: String,
        /// The round.
        round: u32,
        /// The agent that failed it.
        agent: String,
        /// The element of the run that failed (`null` without `for_each`).
        #[serde(default)]
        item: Json,
    },
    /// `pipeline retry --from`: these stages run again in a new round.
    Retry {
        /// The stage chosen.
        from: String,
        /// The new round.
        round: u32,
        /// It and every stage that waits for it.
        stages: Vec<String>,
        /// Who asked.
        by: String,
        /// The run's new deadline (the pipeline's `timeout` from the retry).
        #[serde(default)]
        deadline_ms: Option<u64>,
    },
    /// `pipeline cancel`: nothing more starts.
    Cancel {
        /// Who asked.
        by: String,
    },
    /// The run ended.
    End {
        /// `succeeded`, `failed`, `rejected`, `cancelled` or `timed_out`.
        outcome: String,
    },
}

impl Event {
    /// The ledger row's `action`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Start { .. } => "pipeline.start",
            Event::Resume { .. } => "pipeline.resume",
            Event::StageStart { .. } => "pipeline.stage.start",
            Event::ItemStart { .. } => "pipeline.item.start",
            Event::ItemResume { .. } => "pipeline.item.resume",
            Event::ItemEnd { .. } => "pipeline.item.end",
            Event::StageEnd { .. } => "pipeline.stage.end",
            Event::GateOpen { .. } => "pipeline.gate.open",
            Event::GateDecide { .. } => "pipeline.gate.decide",
            Event::Handoff { .. } => "pipeline.handoff",
            Event::Retry { .. } => "pipeline.retry",
            Event::Cancel { .. } => "pipeline.cancel",
            Event::End { .. } => "pipeline.end",
        }
    }

    /// The row's one-line decision.
    pub fn summary(&self) -> String {
        match self {
            Event::Start { name, .. } => format!("pipeline `{name}` started"),
            Event::Resume { host, pid } => format!("resumed by {host} pid {pid}"),
            Event::StageStart { stage, items, .. } => {
                format!("stage `{stage}` started ({} runs)", items.len())
            }
            Event::ItemStart {
                stage,
                item,
                attempt,
                agent,
                ..
            } => format!("stage `{stage}` run {item} attempt {attempt}: agent `{agent}`"),
            Event::ItemResume {
                stage,
                item,
                run_id,
                ..
            } => format!("stage `{stage}` run {item} resumes {run_id}"),
            Event::ItemEnd {
                stage,
                item,
                outcome,
                ..
            } => format!("stage `{stage}` run {item}: {}", outcome.as_str()),
            Event::StageEnd { stage, outcome, .. } => {
                format!("stage `{stage}`: {}", outcome.as_str())
            }
            Event::GateOpen { stage, .. } => format!("gate `{stage}` waits for a decision"),
            Event::GateDecide {
                stage,
                approved,
                by,
                ..
            } => format!(
                "gate `{stage}` {} by {by}",
                if *approved { "approved" } else { "rejected" }
            ),
            Event::Handoff { stage, agent, .. } => {
                format!("stage `{stage}` handed on after agent `{agent}` failed it")
            }
            Event::Retry { from, round, .. } => format!("retry from `{from}`, round {round}"),
            Event::Cancel { by } => format!("cancelled by {by}"),
            Event::End { outcome } => format!("pipeline {outcome}"),
        }
    }
}

/// Where a stage is (in JSON, the word [`Status::as_str`] gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not started.
    Pending,
    /// Its runs are going.
    Running,
    /// A gate waits for a decision.
    Waiting,
    /// It ended.
    Ended(Outcome),
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl Status {
    /// Whether it ended.
    pub fn is_ended(self) -> bool {
        matches!(self, Status::Ended(_))
    }

    /// The word the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Ended(o) => o.as_str(),
        }
    }
}

/// One run of a stage as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemView {
    /// Its element (`null` without `for_each`).
    pub item: Json,
    /// For the run `on_failure: {handoff: …}` added: the agent that failed the stage.
    pub handoff: Option<String>,
    /// The latest attempt.
    pub attempt: u32,
    /// The latest attempt's run.
    pub run_id: Option<String>,
    /// Its agent.
    pub agent: Option<String>,
    /// How the latest attempt ended; `None` while it runs (or before it starts).
    pub outcome: Option<Outcome>,
    /// Its failure code.
    pub code: Option<String>,
    /// What happened.
    pub message: String,
    /// Its artifacts.
    pub artifacts: BTreeMap<String, String>,
    /// When the latest attempt ended (the row's time), RFC 3339.
    pub ended_at: Option<String>,
}

/// A gate as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateView {
    /// When it stops waiting (ms since the epoch).
    pub deadline_ms: u64,
    /// Who may decide.
    pub approvers: Vec<String>,
    /// What deciders are asked.
    pub message: String,
    /// The decision, once made.
    pub decision: Option<Decided>,
}

/// A gate's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decided {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
    /// Their comment.
    pub comment: String,
    /// `on_timeout` decided it.
    pub timed_out: bool,
}

/// One stage as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageView {
    /// Where it is.
    pub status: Status,
    /// The round it is in.
    pub round: u32,
    /// Its runs.
    pub items: Vec<ItemView>,
    /// Its failure code, once ended.
    pub code: Option<String>,
    /// Why it ended so.
    pub message: String,
    /// Its artifacts, name → digest.
    pub artifacts: BTreeMap<String, String>,
    /// The gate, for a human gate that opened.
    pub gate: Option<GateView>,
}

impl StageView {
    fn pending(round: u32) -> StageView {
        StageView {
            status: Status::Pending,
            round,
            items: Vec::new(),
            code: None,
            message: String::new(),
            artifacts: BTreeMap::new(),
            gate: None,
        }
    }
}

/// A pipeline run as its rows tell it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    /// The run (also the task its stages run in).
    pub run_id: String,
    /// The pipeline's name.
    pub name: String,
    /// `sha256:` of its YAML.
    pub digest: String,
    /// The YAML it runs.
    #[serde(skip)]
    pub source: String,
    /// Its parameters.
    pub params: Json,
    /// Its hot-swapped stages.
    pub overrides: BTreeMap<String, Override>,
    /// When it began, RFC 3339.
    pub started_at: String,
    /// Who started it.
    pub started_by: String,
    /// The machine and process that run it (the latest to take it over).
    pub host: String,
    /// See `host`.
    pub pid: u32,
    /// When the whole run must end.
    pub deadline_ms: Option<u64>,
    /// The latest retry round.
    pub round: u32,
    /// Stage name → what happened to it.
    pub stages: BTreeMap<String, StageView>,
    /// Who cancelled it, if anyone did.
    pub cancelled_by: Option<String>,
    /// How it ended; `None` while it runs or when it was interrupted.
    pub outcome: Option<String>,
    /// When it ended (the `pipeline.end` row's time).
    pub ended_at: Option<String>,
}

impl RunView {
    /// Fold a run's events (`(time, event)`, oldest first). `None` without a start.
    pub fn fold(run_id: &str, events: &[(String, Event)]) -> Option<RunView> {
        let start = events
            .iter()
            .rposition(|(_, e)| matches!(e, Event::Start { .. }))?;
        let (
            started_at,
            Event::Start {
                name,
                digest,
                source,
                params,
                overrides,
                host,
                pid,
                deadline_ms,
                by,
            },
        ) = &events[start]
        else {
            return None;
        };
        let mut view = RunView {
            run_id: run_id.to_string(),
            name: name.clone(),
            digest: digest.clone(),
            source: source.clone(),
            params: params.clone(),
            overrides: overrides.clone(),
            started_at: started_at.clone(),
            started_by: by.clone(),
            host: host.clone(),
            pid: *pid,
            deadline_ms: *deadline_ms,
            round: 0,
            stages: BTreeMap::new(),
            cancelled_by: None,
            outcome: None,
            ended_at: None,
        };
        for (at, event) in &events[start + 1..] {
            view.apply_event(at, event);
        }
        Some(view)
    }

    fn stage(&mut self, name: &str, round: u32) -> Option<&mut StageView> {
        let current = self
            .stages
            .entry(name.to_string())
            .or_insert_with(|| StageView::pending(round));
        // An event of an earlier round (a late row) changes nothing.
        (current.round == round).then_some(current)
    }

    /// Apply one event, as the fold does.
    pub(crate) fn apply_event(&mut self, at: &str, event: &Event) {
        match event {
            Event::Start { .. } | Event::ItemResume { .. } => {}
            Event::Resume { host, pid } => {
                self.host.clone_from(host);
                self.pid = *pid;
            }
            Event::StageStart {
                stage,
                round,
                items,
            } => {
                if let Some(s) = self.stage(stage, *round) {
                    s.status = Status::Running;
                    s.items = items
                        .iter()
                        .map(|item| ItemView {
                            item: item.clone(),
                            handoff: None,
                            attempt: 0,
                            run_id: None,
                            agent: None,
                            outcome: None,
                            code: None,
                            message: String::new(),
                            artifacts: BTreeMap::new(),
                            ended_at: None,
                        })
                        .collect();
                }
            }
            Event::ItemStart {
                stage,
                round,
                item,
                attempt,
                run_id,
                agent,
            } => {
                if let Some(i) = self
                    .stage(stage, *round)
                    .and_then(|s| s.items.get_mut(*item))
                {
                    i.attempt = *attempt;
                    i.run_id = Some(run_id.clone());
                    i.agent = Some(agent.clone());
                    i.outcome = None;
                    i.code = None;
                    i.ended_at = None;
                }
            }
            Event::ItemEnd {
                stage,
                round,
                item,
                attempt,
                outcome,
                code,
                message,
                artifacts,
                ..
            } => {
                if let Some(i) = self
                    .stage(stage, *round)
                    .and_then(|s| s.items.get_mut(*item))
                    .filter(|i| i.attempt == *attempt)
                {
                    i.outcome = Some(*outcome);
                    i.code.clone_from(code);
                    i.message.clone_from(message);
                    i.artifacts.clone_from(artifacts);
                    i.ended_at = Some(at.to_string());
                }
            }
            Event::StageEnd {
                stage,
                round,
                outcome,
                code,
                message,
                artifacts,
            } => {
                if let Some(s) = self.stage(stage, *round) {
                    s.status = Status::Ended(*outcome);
                    s.code.clone_from(code);
                    s.message.clone_from(message);
                    s.artifacts.clone_from(artifacts);
                }
            }
            Event::GateOpen {
                stage,
                round,
                deadline_ms,
                approvers,
                message,
            } => {
                if let Some(s) = self.stage(stage, *round) {
                    s.status = Status::Waiting;
                    s.gate = Some(GateView {
                        deadline_ms: *deadline_ms,
                        approvers: approvers.clone(),
                        message: message.clone(),
                        decision: None,
                    });
                }
            }
            Event::GateDecide {
                stage,
                round,
                approved,
                by,
                comment,
                timed_out,
            } => {
                if let Some(gate) = self
                    .stage(stage, *round)
                    .and_then(|s| s.gate.as_mut())
                    .filter(|g| g.decision.is_none())
                {
                    gate.decision = Some(Decided {
                        approved: *approved,
                        by: by.clone(),
                        comment: comment.clone(),
                        timed_out: *timed_out,
                    });
                }
            }
            Event::Handoff {
                stage,
                round,
                agent,
                item,
            } => {
                if let Some(s) = self.stage(stage, *round) {
                    s.items.push(ItemView {
                        item: item.clone(),
                        handoff: Some(agent.clone()),
                        attempt: 0,
                        run_id: None,
                        agent: None,
                        outcome: None,
                        code: None,
                        message: String::new(),
                        artifacts: BTreeMap::new(),
                        ended_at: None,
                    });
                }
            }
            Event::Retry {
                round,
                stages,
                deadline_ms,
                ..
            } => {
                self.round = *round;
                self.deadline_ms = *deadline_ms;
                self.outcome = None;
                self.ended_at = None;
                self.cancelled_by = None;
                for stage in stages {
                    self.stages
                        .insert(stage.clone(), StageView::pending(*round));
                }
            }
            Event::Cancel { by } => self.cancelled_by = Some(by.clone()),
            Event::End { outcome } => {
                self.outcome = Some(outcome.clone());
                self.ended_at = Some(at.to_string());
            }
        }
    }

    /// A stage's status, without copying its view; a stage no row names is pending.
    pub fn status(&self, name: &str) -> Status {
        self.stages.get(name).map_or(Status::Pending, |s| s.status)
    }

    /// A stage's view; a stage no row names is pending.
    pub fn stage_view(&self, name: &str) -> StageView {
        self.stages
            .get(name)
            .cloned()
            .unwrap_or_else(|| StageView::pending(self.round))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Event {
        Event::Start {
            name: "p".into(),
            digest: "sha256:0".into(),
            source: String::new(),
            params: Json::Null,
            overrides: BTreeMap::new(),
            host: "h".into(),
            pid: 1,
            deadline_ms: None,
            by: "op".into(),
        }
    }

    fn t(e: Event) -> (String, Event) {
        ("2026-12-03T00:00:00.000Z".into(), e)
    }

    #[test]
    fn a_fold_tells_each_stage_and_a_retry_resets_only_its_stages() {
        let events = vec![
            t(start()),
            t(Event::StageStart {
                stage: "a".into(),
                round: 0,
                items: vec![Json::Null],
            }),
            t(Event::ItemStart {
                stage: "a".into(),
                round: 0,
                item: 0,
                attempt: 1,
                run_id: "run-1".into(),
                agent: "hello".into(),
            }),
            t(Event::ItemEnd {
                stage: "a".into(),
                round: 0,
                item: 0,
                attempt: 1,
                run_id: "run-1".into(),
                outcome: Outcome::Success,
                code: None,
                message: String::new(),
                artifacts: BTreeMap::from([("x".into(), "sha256:1".into())]),
            }),
            t(Event::StageEnd {
                stage: "a".into(),
                round: 0,
                outcome: Outcome::Success,
                code: None,
                message: String::new(),
                artifacts: BTreeMap::from([("x".into(), "sha256:1".into())]),
            }),
            t(Event::GateOpen {
                stage: "g".into(),
                round: 0,
                deadline_ms: 5,
                approvers: vec!["alice".into()],
                message: String::new(),
            }),
            t(Event::GateDecide {
                stage: "g".into(),
                round: 0,
                approved: true,
                by: "alice".into(),
                comment: "ok".into(),
                timed_out: false,
            }),
            // A second decision changes nothing.
            t(Event::GateDecide {
                stage: "g".into(),
                round: 0,
                approved: false,
                by: "bob".into(),
                comment: String::new(),
                timed_out: false,
            }),
        ];
        let view = RunView::fold("pl-1", &events).unwrap();
        assert_eq!(view.stage_view("a").status, Status::Ended(Outcome::Success));
        assert_eq!(
            view.stage_view("a").items[0].run_id.as_deref(),
            Some("run-1")
        );
        let gate = view.stage_view("g").gate.unwrap();
        assert_eq!(gate.decision.unwrap().by, "alice");
        assert_eq!(view.stage_view("b").status, Status::Pending);

        let mut later = events.clone();
        later.push(t(Event::End {
            outcome: "succeeded".into(),
        }));
        later.push(t(Event::Retry {
            from: "g".into(),
            round: 1,
            stages: vec!["g".into()],
            by: "op".into(),
            deadline_ms: None,
        }));
        let view = RunView::fold("pl-1", &later).unwrap();
        assert_eq!(view.outcome, None, "a retry reopens the run");
        assert_eq!(view.stage_view("g").status, Status::Pending);
        assert!(view.stage_view("g").gate.is_none());
        assert_eq!(view.stage_view("a").status, Status::Ended(Outcome::Success));
        assert!(RunView::fold("pl-1", &events[1..]).is_none());
    }
}
