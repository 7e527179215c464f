//! # Warden
//!
//! A governance runtime for AI agents. Agents are WebAssembly components (`wasm32-wasip2`)
//! run by this host on wasmtime; the WIT interfaces of `warden:agent@0.1.0` are their only
//! path to anything. Each agent has a trust tier (T0 observer … T4 architect) that decides
//! what is linked and what each call may touch; every decision goes to a hash-chained SQLite
//! ledger; agents that burn their error budget are revoked, compliant ones promoted.
//!
//! ```no_run
//! use warden::{Host, Packet, Tier};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Deny-by-default: in-memory state and ledger, no llm, no tools, no secrets.
//! let host = Host::builder().data_dir(".warden").build()?;
//! let hello = std::fs::read("target/wasm32-wasip2/debug/hello.wasm")?;
//! host.register_agent("hello", Tier::Operator, Some(&hello), "me")?;
//! host.submit_packet(&Packet::from_json(
//!     r#"{"agent_id":"hello","task_id":"greet-1","objective":"say hello","deliverables":["hello.txt"]}"#,
//! )?)
//! .await?;
//! let report = host.run("hello", &hello).await?;
//! println!("{:?} in {:.1} ms", report.outcome, report.duration_ms);
//! assert!(host.ledger().verify()?.broken.is_none());
//! # Ok(()) }
//! ```
//!
//! The pieces, one module each: [`policy`] (the tier table), [`packet`] (instruction
//! packets, handoffs), [`ledger`], [`state`], [`secrets`], [`llm`], [`tools`], [`artifacts`]
//! (backends behind small traits), and the host itself ([`Host`], [`HostBuilder`]).

#![warn(missing_docs)]

pub mod artifacts;
mod bindings;
pub mod breaker;
mod capabilities;
mod clock;
pub mod config;
mod context;
mod duration;
mod egress;
mod error;
mod fault;
mod governance;
pub mod health;
mod host;
pub mod id;
mod interface;
pub mod journal;
pub mod ledger;
mod lifecycle;
pub mod llm;
pub mod orchestrator;
pub mod packet;
pub mod pattern;
mod phase;
pub mod pipeline;
pub mod policy;
pub mod replay;
mod report;
pub mod resume;
mod runtime;
mod sandbox;
pub mod secrets;
pub mod signing;
pub mod state;
mod text;
pub mod tier;
pub mod tools;

pub use context::CallDurability;
pub use error::{Error, PipelineError, Refusal};
pub use host::{AgentHistory, ComponentSummary, Host, HostBuilder, TierChangeRequest};
pub use id::{AgentId, IdError, RunId, TaskId};
pub use packet::{ErrorBudget, Handoff, Packet};
pub use phase::Phase;
pub use policy::{Interface, TierTable};
pub use report::{BudgetUse, FailureCode, PhaseRecord, RunOutcome, RunReport};
pub use runtime::ComponentError;
#[doc(hidden)]
pub use sandbox::BenchInstance;
pub use tier::Tier;

/// Bare host bindings of the WIT package, for benchmarks that compare a governed host with
/// plain wasmtime on the same component. Not part of the stable API.
#[doc(hidden)]
pub mod bare {
    pub use crate::bindings::*;
    pub use crate::runtime::engine_config;
}

/// The README's examples, compiled as doctests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
