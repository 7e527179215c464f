//! Pipelines: the reference's DSL (`pipeline: {name, stages}`) in YAML, run durably.
//!
//! A pipeline is a list of stages: agent runs (one, or one per element of `for_each`),
//! human gates and multi-agent `task` stages, with `requires` forming a DAG the runner
//! runs in parallel where it allows, `when:` conditions and `${{ }}` text in CEL,
//! per-stage `retry`, `on_failure` and `timeout`, and `finally` stages. `docs/pipelines.md`
//! is the schema.
//!
//! ```no_run
//! # async fn demo(host: warden::Host) -> Result<(), warden::Error> {
//! let yaml = r#"
//! pipeline:
//!   name: greet
//!   stages:
//!     - hello: {agent: hello, artifacts: [hello.txt]}
//!     - review: {type: human-gate, timeout: 30m}
//!     - again: {agent: hello, requires: [hello]}
//! "#;
//! let pipeline = host.load_pipeline(yaml, "greet.yaml")?;
//! let run = host.run_pipeline(&pipeline, Default::default()).await?;
//! println!("{} {:?}", run.run_id, run.outcome);
//! # Ok(()) }
//! ```
//!
//! Every step is a ledger row (`pipeline.*` actions of agent `pipeline`, task = the run's
//! id) written before or after it happens; [`RunView::fold`] reads a run back from them, and
//! [`Host::resume_pipeline`](crate::Host::resume_pipeline) goes on from them after a crash.

pub(crate) mod expr;
pub mod record;
mod run;
mod schedule;
pub mod spec;
pub mod templates;
mod worker;

pub use record::{Event, Outcome, RunView, StageView, Status};
pub use run::{Observer, RunOptions};
pub use spec::{Catalog, Pipeline, SpecError, SpecErrors, Stage, StageKind};
pub use worker::{GROUP, QUEUE, WorkerOptions};
