//! The pipeline DSL: YAML parsed with the place of every value, then checked whole before
//! anything runs. `docs/pipelines.md` is the schema in words.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_saphyr::Spanned;

use super::expr::{Expr, References, Scope, Template, VARIABLES};
use crate::packet::{Constraints, ErrorBudget};
use crate::policy::TierTable;
use crate::tier::Tier;

/// Bytes of YAML a pipeline file may have.
pub const MAX_PIPELINE_BYTES: usize = 1 << 20;
/// Stages a pipeline may have, `finally` ones included.
pub const MAX_STAGES: usize = 1000;
/// Elements a `for_each` may expand to.
pub const MAX_FAN_OUT: usize = 256;
/// Attempts a stage's `retry` may ask for.
pub const MAX_ATTEMPTS: u32 = 20;

pub use crate::error::{SpecError, SpecErrors};

/// Codes a stage's run fails with besides the run's own failure codes: a refusal at
/// BOOTSTRAP that may pass on a later attempt.
const RETRYABLE_REFUSALS: [&str; 4] = [
    "CANNOT_ACQUIRE_LOCK",
    "STATE_UNAVAILABLE",
    "SECRETS_UNAVAILABLE",
    "LLM_UNAVAILABLE",
];

/// A place in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: u64,
    /// 1-based column.
    pub column: u64,
}

fn at<T>(s: &Spanned<T>) -> Position {
    Position {
        line: s.referenced.line(),
        column: s.referenced.column(),
    }
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `pipeline.name`.
    pub name: String,
    /// `pipeline.description`.
    pub description: String,
    /// The YAML it was read from, as written (recorded when a run starts).
    pub source: String,
    /// `sha256:<hex>` of `source`.
    pub digest: String,
    /// Declared parameters by name.
    pub params: BTreeMap<String, Param>,
    /// The whole run's deadline, if any.
    pub timeout: Option<Duration>,
    /// The stages, `stages` in order then `finally`.
    pub stages: Vec<Stage>,
}

/// A declared parameter.
#[derive(Debug, Clone)]
pub struct Param {
    /// The value when the run does not give one; `None`: the run must give it.
    pub default: Option<Json>,
    /// The values accepted; empty: any.
    pub allowed: Vec<Json>,
    /// What it is for.
    pub description: String,
}

/// One stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Its name, unique in the pipeline.
    pub name: String,
    /// What it does.
    pub kind: StageKind,
    /// Indexes of the stages it waits for (its `requires`, the stage before it when it has
    /// none, and every human gate listed before it).
    pub needs: Vec<usize>,
    /// `when:`: the stage runs only if it holds.
    pub(crate) when: Option<Expr>,
    /// Its deadline (for a gate: how long it waits).
    pub timeout: Option<Duration>,
    /// What a failed run is retried on.
    pub retry: Retry,
    /// What a failure does to the pipeline.
    pub on_failure: OnFailure,
    /// A `finally` stage: runs once every other stage has ended, whatever happened.
    pub finally: bool,
    /// Where it is in the file.
    pub position: Position,
}

/// What a stage does.
#[derive(Debug, Clone)]
pub enum StageKind {
    /// One governed agent run (or one per element of `for_each`).
    Agent(AgentStage),
    /// A human decision.
    Gate(Gate),
    /// A multi-agent orchestrated task.
    Task(TaskStage),
}

/// An agent stage.
#[derive(Debug, Clone)]
pub struct AgentStage {
    pub(crate) agent: Template,
    pub(crate) objective: Template,
    pub(crate) deliverables: Vec<Template>,
    /// Artifacts it reads, each produced by a stage it waits for.
    pub inputs: Vec<String>,
    /// The packet's constraints.
    pub constraints: Constraints,
    /// The packet's success criteria.
    pub success_criteria: Vec<String>,
    /// The packet's error budget.
    pub error_budget: ErrorBudget,
    pub(crate) for_each: Option<ForEach>,
}

/// The elements a stage fans out over.
#[derive(Debug, Clone)]
pub(crate) enum ForEach {
    List(Vec<Json>),
    Expr(Expr),
}

/// A human gate.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Who may decide; empty: anyone.
    pub approvers: Vec<String>,
    /// What happens when nobody decides in time.
    pub on_timeout: OnTimeout,
    pub(crate) message: Option<Template>,
}

/// What a gate nobody decided becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Rejected: the pipeline stops (the default).
    Reject,
    /// Approved.
    Approve,
    /// Failed, like a failed stage.
    Fail,
}

/// A `task` stage.
#[derive(Debug, Clone)]
pub struct TaskStage {
    /// The agents that work on it.
    pub agents: Vec<String>,
    /// The mediator spawned when the spawn conditions hold.
    pub mediator: Option<String>,
    /// Votes a proposal needs.
    pub quorum: Option<u32>,
    /// Agents run at once.
    pub max_parallel: Option<usize>,
    /// The task's complexity score (a spawn condition).
    pub complexity: Option<f64>,
    pub(crate) objective: Template,
    /// Artifacts of the task made the pipeline's.
    pub deliverables: Vec<String>,
}

/// A stage's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// Runs in all, the first included (1: no retry).
    pub attempts: u32,
    /// The wait before the second attempt.
    pub backoff: Duration,
    /// Each wait is the one before times this.
    pub factor: f64,
    /// No wait is longer than this.
    pub max_backoff: Duration,
    /// The failure codes retried; empty: every failure (a revoked agent never is).
    pub on: Vec<String>,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            attempts: 1,
            backoff: Duration::from_secs(1),
            factor: 2.0,
            max_backoff: Duration::from_secs(60),
            on: Vec::new(),
        }
    }
}

impl Retry {
    /// The wait before attempt `attempt` (2 is the first retry).
    pub fn wait_before(&self, attempt: u32) -> Duration {
        let steps = attempt.saturating_sub(2);
        let factor = self.factor.powi(i32::try_from(steps).unwrap_or(i32::MAX));
        let wait = self.backoff.as_secs_f64() * factor;
        if !wait.is_finite() || wait >= self.max_backoff.as_secs_f64() {
            self.max_backoff
        } else {
            Duration::from_secs_f64(wait.max(0.0))
        }
    }

    /// Whether a failure with `code` is retried after attempt `attempt`.
    pub fn retries(&self, attempt: u32, code: &str) -> bool {
        attempt < self.attempts
            && code != "REVOKED"
            && code != "AGENT_PREVIOUSLY_REVOKED"
            && (self.on.is_empty() || self.on.iter().any(|c| c == code))
    }
}

/// What a stage's failure does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// The pipeline starts nothing more (`finally` stages still run). The default.
    Stop,
    /// The pipeline goes on; stages waiting for this one run.
    Continue,
    /// Agent `0` is run with the failed run's handoff; its outcome is the stage's.
    Handoff(String),
}

// ---------------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    pipeline: RawPipeline,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, Spanned<RawParam>>,
    timeout: Option<Spanned<String>>,
    stages: Spanned<Vec<BTreeMap<String, Spanned<RawStage>>>>,
    #[serde(default)]
    finally: Vec<BTreeMap<String, Spanned<RawStage>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    default: Option<Json>,
    #[serde(default)]
    allowed: Vec<Json>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStage {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    agent: Option<Spanned<String>>,
    objective: Option<Spanned<String>>,
    #[serde(alias = "artifacts")]
    deliverables: Option<Vec<Spanned<String>>>,
    inputs: Option<Vec<Spanned<String>>>,
    requires: Option<Vec<Spanned<String>>>,
    when: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retry: Option<Spanned<RawRetry>>,
    on_failure: Option<Spanned<RawOnFailure>>,
    for_each: Option<Spanned<RawForEach>>,
    constraints: Option<Spanned<Constraints>>,
    success_criteria: Option<Vec<String>>,
    error_budget: Option<Spanned<ErrorBudget>>,
    approvers: Option<Vec<Spanned<String>>>,
    on_timeout: Option<Spanned<String>>,
    message: Option<Spanned<String>>,
    agents: Option<Vec<Spanned<String>>>,
    mediator: Option<Spanned<String>>,
    quorum: Option<Spanned<u32>>,
    max_parallel: Option<Spanned<usize>>,
    complexity: Option<Spanned<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    backoff: Option<String>,
    factor: Option<f64>,
    max_backoff: Option<String>,
    #[serde(default)]
    on: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawOnFailure {
    Word(String),
    Handoff { handoff: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawForEach {
    List(Vec<Json>),
    Expr(String),
}

/// The agents and tiers a pipeline is checked against.
#[derive(Debug, Clone)]
pub struct Catalog<'a> {
    /// Registered agents and their tiers; `None`: the agents are not checked (a pipeline
    /// read before its agents are registered: `pipeline new`, `pipeline graph`).
    pub agents: Option<HashMap<String, Tier>>,
    /// The tier table (what each tier may write).
    pub tiers: &'a TierTable,
}

/// Problems collected while checking.
struct Problems<'a> {
    origin: &'a str,
    found: Vec<SpecError>,
}

impl Problems<'_> {
    fn at(&mut self, position: Position, message: impl Into<String>) {
        self.found.push(SpecError {
            origin: self.origin.to_string(),
            line: position.line,
            column: position.column,
            message: message.into(),
        });
    }
}

fn valid_stage_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::duration::parse(text).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write it as `30s`, `5m`, `2h` or `1h 30m`")
    })
}

impl Pipeline {
    /// Parse and check a pipeline file. `origin` names it in errors. Every problem found is
    /// returned, each at its line and column.
    pub fn parse(text: &str, origin: &str, catalog: &Catalog<'_>) -> Result<Pipeline, SpecErrors> {
        let mut problems = Problems {
            origin,
            found: Vec::new(),
        };
        if text.len() > MAX_PIPELINE_BYTES {
            problems.at(
                Position::default(),
                format!(
                    "the file has {} bytes; a pipeline has at most {MAX_PIPELINE_BYTES}",
                    text.len()
                ),
            );
            return Err(SpecErrors(problems.found));
        }
        let mut options = serde_saphyr::Options::default();
        options.with_snippet = false;
        let raw: RawFile = match serde_saphyr::from_str_with_options(text, options) {
            Ok(raw) => raw,
            Err(error) => {
                let position = error
                    .location()
                    .map_or_else(Position::default, |l| Position {
                        line: l.line(),
                        column: l.column(),
                    });
                let message = error.to_string();
                // The parser prefixes its own place; the error carries it already.
                let message = message
                    .strip_prefix("error: ")
                    .unwrap_or(&message)
                    .split_once(": ")
                    .filter(|(head, _)| head.starts_with("line "))
                    .map_or(message.as_str(), |(_, m)| m)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                problems.at(position, message);
                return Err(SpecErrors(problems.found));
            }
        };
        let pipeline = build(raw, text, &mut problems, catalog);
        if problems.found.is_empty() {
            Ok(pipeline)
        } else {
            problems
                .found
                .sort_by_key(|e| (e.line == 0, e.line, e.column));
            Err(SpecErrors(problems.found))
        }
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<(usize, &Stage)> {
        self.stages.iter().enumerate().find(|(_, s)| s.name == name)
    }

    /// The run's parameters: the given ones over the defaults, each checked against its
    /// `allowed` values. A given parameter the pipeline does not declare, or a declared one
    /// without a default that is not given, is refused.
    pub fn bind_params(&self, given: &BTreeMap<String, String>) -> Result<Json, String> {
        let mut out = serde_json::Map::new();
        for name in given.keys() {
            if !self.params.contains_key(name) {
                let known: Vec<&str> = self.params.keys().map(String::as_str).collect();
                return Err(format!(
                    "pipeline `{}` has no parameter `{name}`; its parameters: {known:?}",
                    self.name
                ));
            }
        }
        for (name, param) in &self.params {
            let value = match given.get(name) {
                Some(text) => match &param.default {
                    // A list parameter is given as `a,b,c`.
                    Some(Json::Array(_)) => Json::Array(
                        text.split(',')
                            .map(|s| Json::String(s.trim().to_string()))
                            .filter(|v| v.as_str() != Some(""))
                            .collect(),
                    ),
                    Some(Json::Number(_)) => text
                        .parse::<serde_json::Number>()
                        .map(Json::Number)
                        .map_err(|_| {
                        format!("parameter `{name}` is a number; `{text}` is not")
                    })?,
                    Some(Json::Bool(_)) => match text.as_str() {
                        "true" => Json::Bool(true),
                        "false" => Json::Bool(false),
                        _ => {
                            return Err(format!(
                                "parameter `{name}` is true or false; `{text}` is neither"
                            ));
                        }
                    },
                    _ => Json::String(text.clone()),
                },
                None => param.default.clone().ok_or_else(|| {
                    format!("parameter `{name}` has no default; give it with `--param {name}=…`")
                })?,
            };
            if !param.allowed.is_empty() && !param.allowed.contains(&value) {
                return Err(format!(
                    "parameter `{name}` is `{value}`; it must be one of {}",
                    Json::Array(param.allowed.clone())
                ));
            }
            out.insert(name.clone(), value);
        }
        Ok(Json::Object(out))
    }
}

fn build(raw: RawFile, text: &str, problems: &mut Problems<'_>, catalog: &Catalog<'_>) -> Pipeline {
    let raw = raw.pipeline;
    let name = raw.name.value.trim().to_string();
    let name_ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !name_ok {
        problems.at(
            at(&raw.name),
            format!("`pipeline.name` `{name}` must be 1 to 64 letters, digits, `.`, `_` or `-`"),
        );
    }
    let mut params = BTreeMap::new();
    for (pname, p) in &raw.params {
        if !valid_stage_name(pname) {
            problems.at(
                at(p),
                format!("parameter name `{pname}` must be 1 to 32 letters, digits, `_` or `-`"),
            );
        }
        let value_ok = |v: &Json| match v {
            Json::String(_) | Json::Number(_) | Json::Bool(_) => true,
            Json::Array(items) => items.iter().all(Json::is_string),
            _ => false,
        };
        if let Some(d) = &p.value.default
            && !value_ok(d)
        {
            problems.at(
                at(p),
                format!(
                    "parameter `{pname}`'s default must be text, a number, true or false, or a list of text"
                ),
            );
        }
        if let Some(d) = &p.value.default
            && !p.value.allowed.is_empty()
            && !p.value.allowed.contains(d)
        {
            problems.at(
                at(p),
                format!(
                    "parameter `{pname}`'s default `{d}` is not among its allowed values {}",
                    Json::Array(p.value.allowed.clone())
                ),
            );
        }
        params.insert(
            pname.clone(),
            Param {
                default: p.value.default.clone(),
                allowed: p.value.allowed.clone(),
                description: p.value.description.clone(),
            },
        );
    }
    let timeout = raw.timeout.as_ref().and_then(|t| {
        parse_duration(&t.value)
            .map_err(|e| problems.at(at(t), format!("`pipeline.timeout`: {e}")))
            .ok()
    });
    if raw.stages.value.is_empty() {
        problems.at(
            at(&raw.stages),
            "`pipeline.stages` is empty; a pipeline needs a stage",
        );
    }

    // Stage names first: later checks refer to stages by name.
    let mut entries: Vec<(String, Spanned<RawStage>, bool)> = Vec::new();
    for (list, finally) in [(raw.stages.value, false), (raw.finally, true)] {
        for map in list {
            if map.len() != 1 {
                let position = map.values().next().map(at).unwrap_or_default();
                problems.at(
                    position,
                    format!(
                        "a stage is a map of one name to its fields (`- plan: {{agent: planner}}`); this one has {} names",
                        map.len()
                    ),
                );
            }
            for (sname, body) in map {
                entries.push((sname, body, finally));
            }
        }
    }
    if entries.len() > MAX_STAGES {
        problems.at(
            Position::default(),
            format!(
                "{} stages; a pipeline has at most {MAX_STAGES}",
                entries.len()
            ),
        );
    }
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, (sname, body, _)) in entries.iter().enumerate() {
        if !valid_stage_name(sname) {
            problems.at(
                at(body),
                format!("stage name `{sname}` must be 1 to 32 letters, digits, `_` or `-`"),
            );
        }
        if index.insert(sname.clone(), i).is_some() {
            problems.at(
                at(body),
                format!("a second stage named `{sname}`; stage names are unique"),
            );
        }
    }

    let mut stages = Vec::new();
    let mut gates_so_far: Vec<usize> = Vec::new();
    let mut previous_main: Option<usize> = None;
    for (i, (sname, body, finally)) in entries.iter().enumerate() {
        let position = at(body);
        let stage = build_stage(
            (i, sname, &body.value, *finally, position),
            (&index, &gates_so_far, previous_main),
            problems,
        );
        if !finally {
            if matches!(stage.kind, StageKind::Gate(_)) {
                gates_so_far.push(i);
            }
            previous_main = Some(i);
        }
        stages.push(stage);
    }
    let main_count = entries.iter().filter(|(_, _, f)| !f).count();
    // `finally` stages wait for every other stage.
    for stage in stages.iter_mut().filter(|s| s.finally) {
        stage.needs = (0..main_count).collect();
    }
    let mut pipeline = Pipeline {
        name,
        description: raw.description,
        source: text.to_string(),
        digest: crate::runtime::digest(text.as_bytes()),
        params,
        timeout,
        stages,
    };
    if let Some(cycle) = find_cycle(&pipeline.stages) {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| pipeline.stages[i].name.as_str())
            .collect();
        problems.at(
            pipeline.stages[cycle[0]].position,
            format!(
                "`requires` forms a cycle: {}; a stage may only wait for stages that do not wait for it",
                names.join(" → ")
            ),
        );
        // The checks below walk ancestors; a cycle would make them loop.
        return pipeline;
    }
    check_references(&mut pipeline, &entries, problems, catalog);
    pipeline
}

type Where<'a> = (usize, &'a str, &'a RawStage, bool, Position);

fn build_stage(
    (i, name, raw, finally, position): Where<'_>,
    (index, gates, previous): (&HashMap<String, usize>, &[usize], Option<usize>),
    problems: &mut Problems<'_>,
) -> Stage {
    let kind_word = raw.kind.as_ref().map_or("agent", |k| k.value.as_str());
    let not_for = |problems: &mut Problems<'_>, field: &str, present: bool, kind: &str| {
        if present {
            problems.at(
                position,
                format!("stage `{name}`: `{field}` does not apply to a `{kind}` stage"),
            );
        }
    };
    let timeout = raw.timeout.as_ref().and_then(|t| {
        parse_duration(&t.value)
            .map_err(|e| problems.at(at(t), format!("stage `{name}`: `timeout`: {e}")))
            .ok()
    });
    let template = |field: &str, text: &Spanned<String>, problems: &mut Problems<'_>| {
        Template::parse(&text.value)
            .map_err(|e| problems.at(at(text), format!("stage `{name}`: `{field}`: {e}")))
            .ok()
    };
    let kind = match kind_word {
        "agent" => {
            for (field, present) in [
                ("approvers", raw.approvers.is_some()),
                ("on_timeout", raw.on_timeout.is_some()),
                ("message", raw.message.is_some()),
                ("agents", raw.agents.is_some()),
                ("mediator", raw.mediator.is_some()),
                ("quorum", raw.quorum.is_some()),
                ("max_parallel", raw.max_parallel.is_some()),
                ("complexity", raw.complexity.is_some()),
            ] {
                not_for(problems, field, present, "agent");
            }
            let agent = match &raw.agent {
                Some(a) => template("agent", a, problems),
                None => {
                    problems.at(
                        position,
                        format!(
                            "stage `{name}` names no `agent`; an agent stage needs one (or set `type: human-gate` or `type: task`)"
                        ),
                    );
                    None
                }
            };
            let objective = raw
                .objective
                .as_ref()
                .and_then(|o| template("objective", o, problems))
                .or_else(|| Template::parse(&format!("pipeline stage `{name}`")).ok());
            let deliverables = raw
                .deliverables
                .iter()
                .flatten()
                .filter_map(|d| template("deliverables", d, problems))
                .collect();
            let for_each = raw.for_each.as_ref().and_then(|f| match &f.value {
                RawForEach::List(items) if items.len() > MAX_FAN_OUT => {
                    problems.at(
                        at(f),
                        format!(
                            "stage `{name}`: `for_each` has {} elements; at most {MAX_FAN_OUT}",
                            items.len()
                        ),
                    );
                    None
                }
                RawForEach::List(items) => Some(ForEach::List(items.clone())),
                RawForEach::Expr(text) => match Template::parse(text) {
                    Ok(t) => match t.sole_expr() {
                        Some(e) => Some(ForEach::Expr(e.clone())),
                        None => {
                            problems.at(
                                at(f),
                                format!(
                                    "stage `{name}`: `for_each` is a list or one `${{{{ expression }}}}` that gives a list"
                                ),
                            );
                            None
                        }
                    },
                    Err(e) => {
                        problems.at(at(f), format!("stage `{name}`: `for_each`: {e}"));
                        None
                    }
                },
            });
            match (agent, objective) {
                (Some(agent), Some(objective)) => Some(StageKind::Agent(AgentStage {
                    agent,
                    objective,
                    deliverables,
                    inputs: raw
                        .inputs
                        .iter()
                        .flatten()
                        .map(|s| s.value.clone())
                        .collect(),
                    constraints: raw
                        .constraints
                        .as_ref()
                        .map(|c| c.value.clone())
                        .unwrap_or_default(),
                    success_criteria: raw.success_criteria.clone().unwrap_or_default(),
                    error_budget: raw
                        .error_budget
                        .as_ref()
                        .map(|b| b.value)
                        .unwrap_or_default(),
                    for_each,
                })),
                _ => None,
            }
        }
        "human-gate" => {
            for (field, present) in [
                ("agent", raw.agent.is_some()),
                ("objective", raw.objective.is_some()),
                ("deliverables", raw.deliverables.is_some()),
                ("inputs", raw.inputs.is_some()),
                ("retry", raw.retry.is_some()),
                ("on_failure", raw.on_failure.is_some()),
                ("for_each", raw.for_each.is_some()),
                ("constraints", raw.constraints.is_some()),
                ("success_criteria", raw.success_criteria.is_some()),
                ("error_budget", raw.error_budget.is_some()),
                ("agents", raw.agents.is_some()),
                ("mediator", raw.mediator.is_some()),
                ("quorum", raw.quorum.is_some()),
                ("max_parallel", raw.max_parallel.is_some()),
                ("complexity", raw.complexity.is_some()),
            ] {
                not_for(problems, field, present, "human-gate");
            }
            if finally {
                problems.at(
                    position,
                    format!("stage `{name}`: a human gate cannot be a `finally` stage"),
                );
            }
            if timeout.is_none() && raw.timeout.is_none() {
                problems.at(
                    position,
                    format!(
                        "stage `{name}`: a human gate needs a `timeout` (how long it waits, e.g. `30m`)"
                    ),
                );
            }
            let on_timeout = match raw.on_timeout.as_ref().map(|o| (o.value.as_str(), at(o))) {
                None | Some(("reject", _)) => OnTimeout::Reject,
                Some(("approve", _)) => OnTimeout::Approve,
                Some(("fail", _)) => OnTimeout::Fail,
                Some((other, p)) => {
                    problems.at(
                        p,
                        format!(
                            "stage `{name}`: `on_timeout: {other}`; expected `reject`, `approve` or `fail`"
                        ),
                    );
                    OnTimeout::Reject
                }
            };
            let message = raw
                .message
                .as_ref()
                .and_then(|m| template("message", m, problems));
            Some(StageKind::Gate(Gate {
                approvers: raw
                    .approvers
                    .iter()
                    .flatten()
                    .map(|a| a.value.clone())
                    .collect(),
                on_timeout,
                message,
            }))
        }
        "task" => {
            for (field, present) in [
                ("agent", raw.agent.is_some()),
                ("for_each", raw.for_each.is_some()),
                ("approvers", raw.approvers.is_some()),
                ("on_timeout", raw.on_timeout.is_some()),
                ("message", raw.message.is_some()),
                ("constraints", raw.constraints.is_some()),
                ("error_budget", raw.error_budget.is_some()),
                ("success_criteria", raw.success_criteria.is_some()),
                ("inputs", raw.inputs.is_some()),
                // An orchestrated task resumes through its own record; running it again
                // from the start would mix two runs of it on one blackboard.
                ("retry", raw.retry.is_some()),
                (
                    "on_failure: {handoff: …}",
                    matches!(
                        raw.on_failure.as_ref().map(|o| &o.value),
                        Some(RawOnFailure::Handoff { .. })
                    ),
                ),
            ] {
                not_for(problems, field, present, "task");
            }
            let agents: Vec<String> = raw
                .agents
                .iter()
                .flatten()
                .map(|a| a.value.clone())
                .collect();
            if agents.is_empty() {
                problems.at(
                    position,
                    format!("stage `{name}`: a `task` stage needs `agents` (at least one)"),
                );
            }
            let objective = raw
                .objective
                .as_ref()
                .and_then(|o| template("objective", o, problems))
                .or_else(|| Template::parse(&format!("pipeline stage `{name}`")).ok());
            objective.map(|objective| {
                StageKind::Task(TaskStage {
                    agents,
                    mediator: raw.mediator.as_ref().map(|m| m.value.clone()),
                    quorum: raw.quorum.as_ref().map(|q| q.value),
                    max_parallel: raw.max_parallel.as_ref().map(|m| m.value),
                    complexity: raw.complexity.as_ref().map(|c| c.value),
                    objective,
                    deliverables: raw
                        .deliverables
                        .iter()
                        .flatten()
                        .map(|d| d.value.clone())
                        .collect(),
                })
            })
        }
        other => {
            let p = raw.kind.as_ref().map_or(position, at);
            problems.at(
                p,
                format!(
                    "stage `{name}`: `type: {other}`; expected `agent` (the default), `human-gate` or `task`"
                ),
            );
            None
        }
    };
    // `when` is an expression, written bare or as one `${{ … }}`.
    let when = raw.when.as_ref().and_then(|w| {
        let compiled = if w.value.contains("${{") {
            Template::parse(&w.value).and_then(|t| {
                t.sole_expr().cloned().ok_or_else(|| {
                    "write one expression, bare (`a && b`) or as one `${{ … }}`".to_string()
                })
            })
        } else {
            Expr::compile(&w.value)
        };
        compiled
            .map_err(|e| problems.at(at(w), format!("stage `{name}`: `when`: {e}")))
            .ok()
    });
    let retry = raw.retry.as_ref().map_or_else(Retry::default, |r| {
        let mut retry = Retry::default();
        let p = at(r);
        let r = &r.value;
        if let Some(n) = r.attempts {
            if (1..=MAX_ATTEMPTS).contains(&n) {
                retry.attempts = n;
            } else {
                problems.at(
                    p,
                    format!("stage `{name}`: `retry.attempts: {n}`; expected 1 to {MAX_ATTEMPTS}"),
                );
            }
        }
        for (field, text, slot) in [
            ("backoff", &r.backoff, &mut retry.backoff),
            ("max_backoff", &r.max_backoff, &mut retry.max_backoff),
        ] {
            if let Some(text) = text {
                match parse_duration(text) {
                    Ok(d) => *slot = d,
                    Err(e) => problems.at(p, format!("stage `{name}`: `retry.{field}`: {e}")),
                }
            }
        }
        if let Some(f) = r.factor {
            if f.is_finite() && (1.0..=10.0).contains(&f) {
                retry.factor = f;
            } else {
                problems.at(
                    p,
                    format!("stage `{name}`: `retry.factor: {f}`; expected 1 to 10"),
                );
            }
        }
        for code in &r.on {
            if crate::report::FailureCode::from_code(code).is_none()
                && !RETRYABLE_REFUSALS.contains(&code.as_str())
            {
                problems.at(
                    p,
                    format!(
                        "stage `{name}`: `retry.on` names `{code}`, which is not a failure code; expected some of {:?}",
                        crate::report::FailureCode::ALL
                            .iter()
                            .map(|c| c.as_str())
                            .chain(RETRYABLE_REFUSALS)
                            .collect::<Vec<_>>()
                    ),
                );
            }
        }
        retry.on.clone_from(&r.on);
        retry
    });
    let on_failure = match raw.on_failure.as_ref().map(|o| (&o.value, at(o))) {
        None => OnFailure::Stop,
        Some((RawOnFailure::Word(w), p)) => match w.as_str() {
            "stop" => OnFailure::Stop,
            "continue" => OnFailure::Continue,
            other => {
                problems.at(
                    p,
                    format!(
                        "stage `{name}`: `on_failure: {other}`; expected `stop`, `continue` or `{{handoff: <agent>}}`"
                    ),
                );
                OnFailure::Stop
            }
        },
        Some((RawOnFailure::Handoff { handoff }, _)) => OnFailure::Handoff(handoff.clone()),
    };

    // What it waits for.
    let mut needs: Vec<usize> = Vec::new();
    match &raw.requires {
        Some(list) => {
            for r in list {
                match index.get(&r.value) {
                    Some(&j) if j == i => {
                        problems.at(at(r), format!("stage `{name}` requires itself"))
                    }
                    Some(&j) => needs.push(j),
                    None => problems.at(
                        at(r),
                        format!(
                            "stage `{name}` requires `{}`, which is not a stage of this pipeline",
                            r.value
                        ),
                    ),
                }
            }
        }
        None => needs.extend(previous),
    }
    if finally && raw.requires.is_some() {
        problems.at(
            position,
            format!(
                "stage `{name}`: a `finally` stage waits for every stage; it takes no `requires`"
            ),
        );
    }
    needs.extend(gates.iter().copied());
    needs.sort_unstable();
    needs.dedup();
    Stage {
        name: name.to_string(),
        kind: kind.unwrap_or(StageKind::Gate(Gate {
            approvers: Vec::new(),
            on_timeout: OnTimeout::Reject,
            message: None,
        })),
        needs,
        when,
        timeout,
        retry,
        on_failure,
        finally,
        position,
    }
}

/// A cycle of `needs`, if there is one: its stages in order.
fn find_cycle(stages: &[Stage]) -> Option<Vec<usize>> {
    // 0 unvisited, 1 on the path, 2 done.
    fn visit(
        i: usize,
        stages: &[Stage],
        mark: &mut [u8],
        path: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = 1;
        path.push(i);
        for &j in &stages[i].needs {
            if mark[j] == 1 {
                let from = path.iter().position(|&k| k == j).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(j);
                return Some(cycle);
            }
            if mark[j] == 0
                && let Some(c) = visit(j, stages, mark, path)
            {
                return Some(c);
            }
        }
        path.pop();
        mark[i] = 2;
        None
    }
    let mut mark = vec![0u8; stages.len()];
    for i in 0..stages.len() {
        if mark[i] == 0
            && let Some(c) = visit(i, stages, &mut mark, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Every stage `i` waits for, directly or not.
pub(crate) fn ancestors(stages: &[Stage], i: usize) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut todo: Vec<usize> = stages[i].needs.clone();
    while let Some(j) = todo.pop() {
        if seen.insert(j) {
            todo.extend(stages[j].needs.iter().copied());
        }
    }
    seen
}

/// The artifact names a stage declares, when they are known before it runs.
fn declared(stage: &Stage) -> Vec<String> {
    match &stage.kind {
        StageKind::Agent(a) => a
            .deliverables
            .iter()
            .filter_map(Template::literal)
            .collect(),
        StageKind::Task(t) => t.deliverables.clone(),
        StageKind::Gate(_) => Vec::new(),
    }
}

fn check_references(
    pipeline: &mut Pipeline,
    entries: &[(String, Spanned<RawStage>, bool)],
    problems: &mut Problems<'_>,
    catalog: &Catalog<'_>,
) {
    let stages = &pipeline.stages;
    for (i, stage) in stages.iter().enumerate() {
        let raw = &entries[i].1.value;
        let name = &stage.name;
        let ups = ancestors(stages, i);
        let up_names: HashMap<&str, usize> =
            ups.iter().map(|&j| (stages[j].name.as_str(), j)).collect();
        let has_item = matches!(&stage.kind, StageKind::Agent(a) if a.for_each.is_some());
        let mut check_expr = |field: &str, e: &Expr, position: Position| {
            let References {
                variables,
                params,
                stages: named,
                artifacts,
            } = e.references();
            for v in &variables {
                if !VARIABLES.contains(&v.as_str()) || (v == "item" && !has_item) {
                    problems.at(
                        position,
                        format!(
                            "stage `{name}`: `{field}` names `{v}`; an expression may name `params`, `stages`, `pipeline`{}",
                            if has_item { " and `item`" } else { " (and `item` in a `for_each` stage)" }
                        ),
                    );
                }
            }
            for p in &params {
                if !pipeline.params.contains_key(p) {
                    let known: Vec<&str> = pipeline.params.keys().map(String::as_str).collect();
                    problems.at(
                        position,
                        format!("stage `{name}`: `{field}` names parameter `{p}`, which the pipeline does not declare; its parameters: {known:?}"),
                    );
                }
            }
            for s in &named {
                if !up_names.contains_key(s.as_str()) {
                    let why = if stages.iter().any(|t| &t.name == s) {
                        format!("`{s}` is not among the stages it waits for; add it to `requires`")
                    } else {
                        format!("`{s}` is not a stage of this pipeline")
                    };
                    problems.at(
                        position,
                        format!("stage `{name}`: `{field}` names stage `{s}`: {why}"),
                    );
                }
            }
            for (s, a) in &artifacts {
                if let Some(&j) = up_names.get(s.as_str())
                    && !declared(&stages[j]).contains(a)
                    && !matches!(&stages[j].kind, StageKind::Agent(x) if x.deliverables.iter().any(|d| d.literal().is_none()))
                {
                    problems.at(
                        position,
                        format!(
                            "stage `{name}`: `{field}` names artifact `{a}` of stage `{s}`, which declares {:?}",
                            declared(&stages[j])
                        ),
                    );
                }
            }
        };
        if let Some(w) = &stage.when {
            check_expr("when", w, raw.when.as_ref().map_or(stage.position, at));
        }
        match &stage.kind {
            StageKind::Agent(a) => {
                for (field, t, p) in [
                    ("agent", &a.agent, raw.agent.as_ref().map(at)),
                    ("objective", &a.objective, raw.objective.as_ref().map(at)),
                ] {
                    for e in t.exprs() {
                        check_expr(field, e, p.unwrap_or(stage.position));
                    }
                }
                for (t, d) in a.deliverables.iter().zip(raw.deliverables.iter().flatten()) {
                    for e in t.exprs() {
                        check_expr("deliverables", e, at(d));
                    }
                }
                if let Some(ForEach::Expr(e)) = &a.for_each {
                    check_expr(
                        "for_each",
                        e,
                        raw.for_each.as_ref().map_or(stage.position, at),
                    );
                }
                if let Some(ForEach::List(_) | ForEach::Expr(_)) = &a.for_each
                    && !a.deliverables.is_empty()
                    && a.deliverables.iter().any(|d| {
                        d.exprs()
                            .all(|e| !e.references().variables.contains(&"item".to_string()))
                    })
                {
                    problems.at(
                        raw.for_each.as_ref().map_or(stage.position, at),
                        format!(
                            "stage `{name}`: every run of a `for_each` writes its deliverables into the same pipeline; name each with `${{{{ item }}}}` so one run's does not replace another's"
                        ),
                    );
                }
                // The agent and what its tier may write.
                let agents: Vec<String> = match (&a.agent.literal(), &a.for_each) {
                    (Some(agent), _) => vec![agent.clone()],
                    (None, Some(ForEach::List(items)))
                        if a.agent
                            .exprs()
                            .all(|e| e.references().variables == ["item"]) =>
                    {
                        items
                            .iter()
                            .filter_map(|item| {
                                a.agent
                                    .render(&Scope {
                                        item: Some(item.clone()),
                                        ..Scope::default()
                                    })
                                    .ok()
                            })
                            .collect()
                    }
                    _ => Vec::new(),
                };
                let p = raw.agent.as_ref().map_or(stage.position, at);
                for agent in &agents {
                    check_agent(name, agent, p, catalog, problems);
                    if let Some(&tier) = catalog.agents.as_ref().and_then(|a| a.get(agent)) {
                        for d in a.deliverables.iter().filter_map(Template::literal) {
                            if let Err(why) = crate::capabilities::check_artifact_write(
                                catalog.tiers.policy(tier),
                                &d,
                            ) {
                                problems.at(
                                    p,
                                    format!(
                                        "stage `{name}`: agent `{agent}` cannot write deliverable `{d}`: {why}"
                                    ),
                                );
                            }
                        }
                    }
                }
                for (input, p) in a.inputs.iter().zip(raw.inputs.iter().flatten().map(at)) {
                    let produced = ups.iter().any(|&j| declared(&stages[j]).contains(input));
                    if !produced {
                        problems.at(
                            p,
                            format!(
                                "stage `{name}` reads artifact `{input}`, which no stage it waits for declares; declare it in an earlier stage's `artifacts` and add that stage to `requires`"
                            ),
                        );
                    }
                }
                if let OnFailure::Handoff(agent) = &stage.on_failure {
                    let p = raw.on_failure.as_ref().map_or(stage.position, at);
                    check_agent(name, agent, p, catalog, problems);
                    if let Some(&tier) = catalog.agents.as_ref().and_then(|a| a.get(agent)) {
                        for d in a.deliverables.iter().filter_map(Template::literal) {
                            if let Err(why) = crate::capabilities::check_artifact_write(
                                catalog.tiers.policy(tier),
                                &d,
                            ) {
                                problems.at(
                                    p,
                                    format!(
                                        "stage `{name}`: handoff agent `{agent}` cannot write deliverable `{d}`: {why}"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
            StageKind::Task(t) => {
                for e in t.objective.exprs() {
                    check_expr(
                        "objective",
                        e,
                        raw.objective.as_ref().map_or(stage.position, at),
                    );
                }
                for (agent, p) in t
                    .agents
                    .iter()
                    .zip(raw.agents.iter().flatten().map(at))
                    .chain(t.mediator.iter().zip(raw.mediator.iter().map(at)))
                {
                    check_agent(name, agent, p, catalog, problems);
                }
            }
            StageKind::Gate(g) => {
                if let Some(m) = &g.message {
                    for e in m.exprs() {
                        check_expr(
                            "message",
                            e,
                            raw.message.as_ref().map_or(stage.position, at),
                        );
                    }
                }
            }
        }
    }
}

fn check_agent(
    stage: &str,
    agent: &str,
    position: Position,
    catalog: &Catalog<'_>,
    problems: &mut Problems<'_>,
) {
    let Some(agents) = &catalog.agents else {
        return;
    };
    if !agents.contains_key(agent) {
        let mut known: Vec<&str> = agents.keys().map(String::as_str).collect();
        known.sort_unstable();
        problems.at(
            position,
            format!(
                "stage `{stage}` runs agent `{agent}`, which is not registered (`warden agents register`); registered: {known:?}"
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(tiers: &TierTable) -> Catalog<'_> {
        Catalog {
            agents: Some(HashMap::from([
                ("planner".to_string(), Tier::Operator),
                ("observer".to_string(), Tier::Observer),
                ("executor".to_string(), Tier::Executor),
                ("hello".to_string(), Tier::Operator),
            ])),
            tiers,
        }
    }

    fn parse(yaml: &str) -> Result<Pipeline, SpecErrors> {
        let tiers = TierTable::builtin().unwrap();
        Pipeline::parse(yaml, "p.yaml", &catalog(&tiers))
    }

    fn problems(yaml: &str) -> Vec<String> {
        parse(yaml)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const REFERENCE: &str = "pipeline:
  name: infrastructure-deploy
  stages:
    - plan:
        agent: planner
        artifacts: [terraform-plan]
    - review:
        type: human-gate
        timeout: 30m
    - execute:
        agent: executor
        requires: [plan]
";

    #[test]
    fn the_reference_pipeline_works_as_written() {
        let p = parse(REFERENCE).unwrap();
        assert_eq!(p.name, "infrastructure-deploy");
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["plan", "review", "execute"]);
        assert!(p.stages[0].needs.is_empty());
        assert_eq!(
            p.stages[1].needs,
            [0],
            "a stage without `requires` follows the one before"
        );
        assert_eq!(
            p.stages[2].needs,
            [0, 1],
            "a human gate holds every stage listed after it"
        );
        let StageKind::Gate(g) = &p.stages[1].kind else {
            panic!("review is a gate")
        };
        assert_eq!(g.on_timeout, OnTimeout::Reject);
        assert_eq!(p.stages[1].timeout, Some(Duration::from_secs(1800)));
        let StageKind::Agent(a) = &p.stages[0].kind else {
            panic!("plan is an agent stage")
        };
        assert_eq!(a.deliverables[0].literal().unwrap(), "terraform-plan");
    }

    #[test]
    fn every_problem_is_named_at_its_line_and_column() {
        let unknown_field =
            problems(&REFERENCE.replace("        agent: planner\n", "        agnt: planner\n"));
        assert!(
            unknown_field[0].starts_with("p.yaml:5:9: unknown field `agnt`"),
            "{unknown_field:?}"
        );

        let unknown_agent = problems(&REFERENCE.replace("agent: executor", "agent: exekutor"));
        assert!(
            unknown_agent[0].starts_with(
                "p.yaml:11:16: stage `execute` runs agent `exekutor`, which is not registered"
            ),
            "{unknown_agent:?}"
        );

        let cycle = problems(
            "pipeline:\n  name: c\n  stages:\n    - a: {agent: hello, requires: [b]}\n    - b: {agent: hello, requires: [a]}\n",
        );
        assert!(
            cycle[0].contains("`requires` forms a cycle: a → b → a"),
            "{cycle:?}"
        );

        let input = problems(&REFERENCE.replace(
            "        requires: [plan]\n",
            "        requires: [plan]\n        inputs: [tf-plan]\n",
        ));
        assert!(
            input[0].starts_with("p.yaml:13:18: stage `execute` reads artifact `tf-plan`, which no stage it waits for declares"),
            "{input:?}"
        );

        let tier = problems(&REFERENCE.replace("agent: planner", "agent: observer"));
        assert!(
            tier[0].contains("agent `observer` cannot write deliverable `terraform-plan`: tier T0 (observer) may only write artifacts named"),
            "{tier:?}"
        );

        let duration = problems(&REFERENCE.replace("timeout: 30m", "timeout: 30 minutez"));
        assert!(
            duration[0].starts_with(
                "p.yaml:9:18: stage `review`: `timeout`: `30 minutez` is not a duration"
            ),
            "{duration:?}"
        );

        let param = problems(&REFERENCE.replace(
            "        agent: executor\n",
            "        agent: executor\n        objective: \"deploy to ${{ params.env }}\"\n",
        ));
        assert!(
            param[0].contains("names parameter `env`, which the pipeline does not declare"),
            "{param:?}"
        );

        let syntax = problems(&REFERENCE.replace(
            "        requires: [plan]\n",
            "        requires: [plan]\n        when: \"stages.plan.outcome ==\"\n",
        ));
        assert!(
            syntax[0].starts_with(
                "p.yaml:13:15: stage `execute`: `when`: `stages.plan.outcome ==` does not parse"
            ),
            "{syntax:?}"
        );

        let not_upstream = problems(&REFERENCE.replace(
            "        artifacts: [terraform-plan]\n",
            "        artifacts: [terraform-plan]\n        when: \"stages.execute.outcome == 'success'\"\n",
        ));
        assert!(
            not_upstream[0]
                .contains("names stage `execute`: `execute` is not among the stages it waits for"),
            "{not_upstream:?}"
        );

        let artifact = problems(&REFERENCE.replace(
            "        requires: [plan]\n",
            "        requires: [plan]\n        objective: \"apply ${{ stages.plan.artifacts.tfplan }}\"\n",
        ));
        assert!(
            artifact[0].contains(
                "names artifact `tfplan` of stage `plan`, which declares [\"terraform-plan\"]"
            ),
            "{artifact:?}"
        );
    }

    #[test]
    fn params_bind_with_defaults_and_allowed_values() {
        let p = parse(
            "pipeline:\n  name: p\n  params:\n    env: {default: staging, allowed: [staging, prod]}\n    regions: {default: [eu]}\n    replicas: {default: 2}\n    token: {}\n  stages:\n    - a: {agent: hello, objective: \"${{ params.env }} ${{ params.token }}\"}\n",
        )
        .unwrap();
        let given = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let bound = p
            .bind_params(&given(&[
                ("token", "t"),
                ("regions", "eu, us"),
                ("replicas", "3"),
            ]))
            .unwrap();
        assert_eq!(bound["env"], "staging");
        assert_eq!(bound["regions"], serde_json::json!(["eu", "us"]));
        assert_eq!(bound["replicas"], 3);
        assert!(
            p.bind_params(&given(&[]))
                .unwrap_err()
                .contains("`token` has no default")
        );
        assert!(
            p.bind_params(&given(&[("token", "t"), ("env", "dev")]))
                .unwrap_err()
                .contains("must be one of")
        );
        assert!(
            p.bind_params(&given(&[("token", "t"), ("nope", "1")]))
                .unwrap_err()
                .contains("has no parameter `nope`")
        );
        assert!(
            p.bind_params(&given(&[("token", "t"), ("replicas", "x")]))
                .unwrap_err()
                .contains("is a number")
        );
    }

    #[test]
    fn fan_out_names_its_deliverables_by_item_and_gates_need_a_timeout() {
        let shared = problems(
            "pipeline:\n  name: p\n  stages:\n    - a: {agent: hello, for_each: [x, y], artifacts: [out.txt]}\n",
        );
        assert!(
            shared[0].contains("name each with `${{ item }}`"),
            "{shared:?}"
        );
        parse("pipeline:\n  name: p\n  stages:\n    - a: {agent: hello, for_each: [x, y], artifacts: [\"out-${{ item }}.txt\"]}\n").unwrap();
        let gate = problems("pipeline:\n  name: p\n  stages:\n    - g: {type: human-gate}\n");
        assert!(
            gate[0].contains("a human gate needs a `timeout`"),
            "{gate:?}"
        );
        let misplaced = problems(
            "pipeline:\n  name: p\n  stages:\n    - g: {type: human-gate, timeout: 1m, agent: hello}\n",
        );
        assert!(
            misplaced[0].contains("`agent` does not apply to a `human-gate` stage"),
            "{misplaced:?}"
        );
        let kind =
            problems("pipeline:\n  name: p\n  stages:\n    - g: {type: human_gate, timeout: 1m}\n");
        assert!(
            kind[0].contains("expected `agent` (the default), `human-gate` or `task`"),
            "{kind:?}"
        );
    }

    #[test]
    fn retry_backs_off_by_its_factor_up_to_its_cap_and_never_retries_a_revocation() {
        let p = parse(
            "pipeline:\n  name: p\n  stages:\n    - a:\n        agent: hello\n        retry: {attempts: 4, backoff: 1s, factor: 3, max_backoff: 5s, on: [DEADLINE_EXCEEDED]}\n",
        )
        .unwrap();
        let r = &p.stages[0].retry;
        assert_eq!(r.wait_before(2), Duration::from_secs(1));
        assert_eq!(r.wait_before(3), Duration::from_secs(3));
        assert_eq!(r.wait_before(4), Duration::from_secs(5));
        assert!(r.retries(1, "DEADLINE_EXCEEDED"));
        assert!(!r.retries(4, "DEADLINE_EXCEEDED"), "attempts are the total");
        assert!(!r.retries(1, "AGENT_ERROR"), "only the codes named");
        let any = Retry {
            attempts: 3,
            ..Retry::default()
        };
        assert!(any.retries(1, "AGENT_ERROR"));
        assert!(!any.retries(1, "REVOKED"));
        assert!(!any.retries(1, "AGENT_PREVIOUSLY_REVOKED"));
        let bad = problems(
            "pipeline:\n  name: p\n  stages:\n    - a: {agent: hello, retry: {attempts: 99, on: [OOPS]}}\n",
        );
        assert!(
            bad.iter().any(|e| e.contains("`retry.attempts: 99`")),
            "{bad:?}"
        );
        assert!(
            bad.iter()
                .any(|e| e.contains("`OOPS`, which is not a failure code")),
            "{bad:?}"
        );
    }
}
