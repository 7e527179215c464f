//! The [`Agent`] trait and the glue behind [`export_agent!`](crate::export_agent).

use crate::error::AgentError;
use crate::{Outcome, Packet, Plan, Report, Verification, artifacts};

/// A Warden agent: one method per lifecycle phase.
///
/// The host drives every run through `plan` → `execute` → `verify` → `report`, in that order,
/// on one instance: state kept in `self` during `plan` is still there in `execute`. The
/// instance does not outlive the run; use [`state`](crate::state) for anything that must.
///
/// An `Err` is the agent's own failure: the host records it and counts it against the error
/// budget. A refused capability call is not a failure of the phase unless the agent makes it
/// one (typically with `?`).
pub trait Agent {
    /// PLAN: decide what to do about `packet`. Nothing in the workspace should change yet.
    ///
    /// The default plans to meet the objective by writing each deliverable
    /// ([`Plan::for_packet`]).
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        Ok(Plan::for_packet(packet))
    }

    /// EXECUTE: carry out `plan`, producing the packet's deliverables as artifacts.
    fn execute(&mut self, packet: &Packet, plan: &Plan) -> Result<Outcome, AgentError>;

    /// VERIFY: check the outcome against the packet.
    ///
    /// The default checks that `execute` reported success and that every deliverable of the
    /// packet is among the task's artifacts (see [`verify_deliverables`]).
    fn verify(&mut self, packet: &Packet, outcome: &Outcome) -> Result<Verification, AgentError> {
        let mut verification = verify_deliverables(packet)?;
        if !outcome.success {
            verification.passed = false;
            verification
                .findings
                .insert(0, format!("execute reported failure: {}", outcome.summary));
        }
        Ok(verification)
    }

    /// REPORT: summarise the run for a human.
    ///
    /// The default summarises `verification` and lists its findings as details.
    fn report(
        &mut self,
        packet: &Packet,
        verification: &Verification,
    ) -> Result<Report, AgentError> {
        let verdict = if verification.passed {
            "passed"
        } else {
            "failed"
        };
        Ok(Report {
            summary: format!(
                "{}: verification {verdict} with {} finding(s)",
                packet.objective,
                verification.findings.len()
            ),
            details: verification.findings.clone(),
        })
    }
}

impl Plan {
    /// A plan summarised as `summary`, with no steps yet, at full confidence.
    pub fn new(summary: impl Into<String>) -> Plan {
        Plan {
            summary: summary.into(),
            steps: Vec::new(),
            confidence: 1.0,
        }
    }

    /// The plan with one more step.
    pub fn step(mut self, step: impl Into<String>) -> Plan {
        self.steps.push(step.into());
        self
    }

    /// The plan at `confidence` (0.0 to 1.0).
    pub fn confidence(mut self, confidence: f32) -> Plan {
        self.confidence = confidence;
        self
    }

    /// The objective as the summary, and one step per deliverable (`write report.md`).
    pub fn for_packet(packet: &Packet) -> Plan {
        packet
            .deliverables
            .iter()
            .fold(Plan::new(packet.objective.clone()), |plan, name| {
                plan.step(format!("write {name}"))
            })
    }
}

impl Outcome {
    /// Success, having written `artifacts` (summarised as `wrote a.txt, b.txt`).
    pub fn wrote<S: Into<String>>(artifacts: impl IntoIterator<Item = S>) -> Outcome {
        let artifacts: Vec<String> = artifacts.into_iter().map(Into::into).collect();
        Outcome {
            success: true,
            summary: format!("wrote {}", artifacts.join(", ")),
            artifacts,
        }
    }

    /// Failure, with why.
    pub fn failed(summary: impl Into<String>) -> Outcome {
        Outcome {
            success: false,
            summary: summary.into(),
            artifacts: Vec::new(),
        }
    }
}

/// Checks that every deliverable of `packet` is among the task's artifacts.
///
/// Passes when none is missing; each missing deliverable is a finding. Looks each deliverable
/// up with [`artifacts::info`], one call each whatever the task holds, so an agent calling
/// this imports `artifacts`.
pub fn verify_deliverables(packet: &Packet) -> Result<Verification, crate::Error> {
    let mut findings = Vec::new();
    for wanted in &packet.deliverables {
        if artifacts::info(wanted)?.is_none() {
            findings.push(format!("deliverable `{wanted}` was not produced"));
        }
    }
    Ok(Verification {
        passed: findings.is_empty(),
        findings,
    })
}

/// Support for [`export_agent!`](crate::export_agent); not a public API.
#[doc(hidden)]
pub mod __private {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    use super::Agent;
    use crate::error::AgentError;
    use crate::{Outcome, Packet, Plan, Report, Verification};

    pub use crate::bindings::exports::warden::agent::agent::Guest;

    /// The instance of an exported agent, created on first use.
    pub type Instance<T> = LocalKey<RefCell<T>>;

    pub fn plan<T: Agent>(agent: &'static Instance<T>, packet: Packet) -> Result<Plan, String> {
        agent
            .with_borrow_mut(|agent| agent.plan(&packet))
            .map_err(AgentError::into_message)
    }

    pub fn execute<T: Agent>(
        agent: &'static Instance<T>,
        packet: Packet,
        plan: Plan,
    ) -> Result<Outcome, String> {
        agent
            .with_borrow_mut(|agent| agent.execute(&packet, &plan))
            .map_err(AgentError::into_message)
    }

    pub fn verify<T: Agent>(
        agent: &'static Instance<T>,
        packet: Packet,
        outcome: Outcome,
    ) -> Result<Verification, String> {
        agent
            .with_borrow_mut(|agent| agent.verify(&packet, &outcome))
            .map_err(AgentError::into_message)
    }

    pub fn report<T: Agent>(
        agent: &'static Instance<T>,
        packet: Packet,
        verification: Verification,
    ) -> Result<Report, String> {
        agent
            .with_borrow_mut(|agent| agent.report(&packet, &verification))
            .map_err(AgentError::into_message)
    }
}

/// Exports a type implementing [`Agent`] and [`Default`] as this component's agent.
///
/// Use it once per crate, at the top level. The host calls the phases on one value of the
/// type, created with [`Default::default`] when the first phase starts.
///
/// ```no_run
/// # use warden_sdk::prelude::*;
/// #[derive(Default)]
/// struct Noop;
///
/// impl Agent for Noop {
///     fn plan(&mut self, _: &Packet) -> Result<Plan, AgentError> {
///         Ok(Plan { summary: "nothing to do".into(), steps: vec![], confidence: 1.0 })
///     }
///     fn execute(&mut self, _: &Packet, _: &Plan) -> Result<Outcome, AgentError> {
///         Ok(Outcome { success: true, summary: "did nothing".into(), artifacts: vec![] })
///     }
/// }
///
/// warden_sdk::export_agent!(Noop);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_agent {
    ($agent:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __WARDEN_AGENT: ::core::cell::RefCell<$agent> =
                    ::core::cell::RefCell::new(<$agent as ::core::default::Default>::default());
            }

            struct __WardenExport;

            impl $crate::__private::Guest for __WardenExport {
                fn plan(
                    packet: $crate::Packet,
                ) -> ::core::result::Result<$crate::Plan, ::std::string::String> {
                    $crate::__private::plan(&__WARDEN_AGENT, packet)
                }

                fn execute(
                    packet: $crate::Packet,
                    plan: $crate::Plan,
                ) -> ::core::result::Result<$crate::Outcome, ::std::string::String> {
                    $crate::__private::execute(&__WARDEN_AGENT, packet, plan)
                }

                fn verify(
                    packet: $crate::Packet,
                    outcome: $crate::Outcome,
                ) -> ::core::result::Result<$crate::Verification, ::std::string::String> {
                    $crate::__private::verify(&__WARDEN_AGENT, packet, outcome)
                }

                fn report(
                    packet: $crate::Packet,
                    verification: $crate::Verification,
                ) -> ::core::result::Result<$crate::Report, ::std::string::String> {
                    $crate::__private::report(&__WARDEN_AGENT, packet, verification)
                }
            }

            // The generated C-ABI entry points are the only unsafe code an agent contains.
            #[expect(unsafe_code, reason = "the generated C-ABI entry points are the only unsafe code an agent contains")]
            const _: () = {
        $crate::bindings::export!(__WardenExport with_types_in $crate::bindings);
            };
        };
    };
}
