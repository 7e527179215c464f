//! Write governed [Warden] agents as WebAssembly components.
//!
//! A Warden agent is a `wasm32-wasip2` component that exports the `warden:agent/agent`
//! interface and reaches the world only through the capabilities its trust tier grants. This
//! crate turns that contract into one trait, one macro and a typed wrapper per capability:
//!
//! ```no_run
//! use warden_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Hello;
//!
//! impl Agent for Hello {
//!     fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
//!         Ok(Plan {
//!             summary: format!("greet: {}", packet.objective),
//!             steps: vec!["write each deliverable as a text artifact".into()],
//!             confidence: 1.0,
//!         })
//!     }
//!
//!     fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
//!         let names = match packet.deliverables.as_slice() {
//!             [] => vec!["hello.txt".to_owned()],
//!             deliverables => deliverables.to_vec(),
//!         };
//!         let text = format!("Hello from Warden!\nObjective: {}\n", packet.objective);
//!         for name in &names {
//!             artifacts::put_text(name, &text)?;
//!         }
//!         Ok(Outcome {
//!             success: true,
//!             summary: format!("wrote {}", names.join(", ")),
//!             artifacts: names,
//!         })
//!     }
//!
//!     // `verify` and `report` keep their defaults: every deliverable must exist, and the
//!     // report summarises the verification.
//! }
//!
//! warden_sdk::export_agent!(Hello);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` with `cargo build --target wasm32-wasip2`.
//!
//! # Lifecycle
//!
//! The host calls [`Agent::plan`], [`Agent::execute`], [`Agent::verify`] and
//! [`Agent::report`] in that order, on one instance per run. Each phase receives the
//! [`Packet`], the operator's description of the mission.
//!
//! # Capabilities
//!
//! | Module         | What it does                               | From tier |
//! |----------------|--------------------------------------------|-----------|
//! | [`ledger`]     | notes and decisions in the audit ledger    | T0        |
//! | [`state`]      | the agent's own key/value state            | T0        |
//! | [`artifacts`]  | the task's named artifacts                 | T0        |
//! | [`llm`]        | chat completions                           | T0        |
//! | [`blackboard`] | memory shared by a task's agents           | T0 (read), T1 (write) |
//! | [`messaging`]  | messages between a task's agents           | T1        |
//! | [`consensus`]  | proposals and votes                        | T1        |
//! | [`tools`]      | operator-registered tools                  | T1 (check mode) |
//! | [`secrets`]    | secrets scoped by tier                     | T3        |
//!
//! Every call returns [`Error`] when the host refuses it; refusals count against the
//! agent's error budget.
//!
//! A component imports only the interfaces it calls: the host checks those imports against
//! the agent's tier when it loads the component, and refuses a component that imports more
//! than its tier allows. Calling [`tools::list`] from a T0 agent therefore fails at load
//! time, not at the call.
//!
//! [Warden]: https://example.invalid/warden

#![warn(missing_docs)]

mod agent;
mod error;

pub mod artifacts;
pub mod blackboard;
pub mod consensus;
pub mod ledger;
pub mod llm;
pub mod messaging;
pub mod secrets;
pub mod state;
pub mod tools;

/// Generated bindings of the `warden:agent` WIT package; not a public API.
#[doc(hidden)]
#[allow(
    unsafe_code,
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "architect",
        pub_export_macro: true,
        default_bindings_module: "warden_sdk::bindings",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub use agent::__private;
pub use agent::{Agent, verify_deliverables};
pub use bindings::warden::agent::types::{
    Constraints, ErrorBudget, Outcome, Packet, Phase, Plan, Report, Tier, Verification,
};
pub use error::{AgentError, Error};

/// The types and modules almost every agent needs: `use warden_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{Agent, AgentError, Error, Outcome, Packet, Plan, Report, Tier, Verification};
    pub use crate::{
        artifacts, blackboard, consensus, ledger, llm, messaging, secrets, state, tools,
    };
}
