//! The load-time gate: a component's imports against its tier's grant.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::policy::{Interface, TierTable};
use crate::tier::Tier;

/// What a component imports, classified.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    pub warden: Vec<Interface>,
    pub wasi: Vec<String>,
    pub unknown: Vec<String>,
}

/// Why a component may not run at its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportRefusal {
    /// Imports an interface the tier does not link.
    AboveTier {
        interface: Interface,
        lowest: Option<Tier>,
    },
    /// Imports something that is neither `warden:agent` nor WASI.
    Unknown { import: String },
}

/// Classify a component's imports.
pub fn summarize(engine: &Engine, component: &Component) -> ImportSummary {
    let mut summary = ImportSummary::default();
    for (name, _) in component.component_type().imports(engine) {
        if name.starts_with("wasi:") {
            summary.wasi.push(name.to_string());
            continue;
        }
        let interface = name
            .strip_prefix("warden:agent/")
            .and_then(|rest| rest.strip_suffix("@0.1.0"))
            .and_then(Interface::from_name);
        match interface {
            Some(interface) => summary.warden.push(interface),
            None => summary.unknown.push(name.to_string()),
        }
    }
    summary
}

/// Check every import against the tier; the first refusal wins, unknown imports first.
pub fn check(summary: &ImportSummary, tier: Tier, table: &TierTable) -> Result<(), ImportRefusal> {
    if let Some(import) = summary.unknown.first() {
        return Err(ImportRefusal::Unknown {
            import: import.clone(),
        });
    }
    let granted = table.policy(tier).interfaces;
    for &interface in &summary.warden {
        if !granted.contains(interface) {
            return Err(ImportRefusal::AboveTier {
                interface,
                lowest: table.lowest_tier_granting(interface),
            });
        }
    }
    Ok(())
}
