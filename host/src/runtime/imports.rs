//! The load-time gate: a component's imports against its tier's grant and against what the
//! host provides. Every import is checked, WASI included: an import the host does not link
//! (`wasi:http/*`, `wasi:keyvalue/*`, another package) is refused at load with its name,
//! instead of failing later at instantiation.

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::interface::Interface;
use crate::policy::TierTable;
use crate::tier::Tier;

/// The WASI 0.2 interfaces every tier links (wasmtime-wasi's `p2::add_to_linker_async`),
/// as `package/interface`; an import of any `0.2.x` version of one of them is provided.
/// Sockets are linked but denied in every store (no TCP, UDP or name lookup), so a component
/// built with a standard library that imports them still loads. A test holds this list to
/// what the linker really defines.
pub const WASI_PROVIDED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stderr",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stderr",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:filesystem/preopens",
    "wasi:filesystem/types",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:random/random",
    "wasi:sockets/instance-network",
    "wasi:sockets/ip-name-lookup",
    "wasi:sockets/network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
];

/// Whether the host links the WASI import `name` (`wasi:io/poll@0.2.3`).
pub fn wasi_provided(name: &str) -> bool {
    let Some((interface, version)) = name.split_once('@') else {
        return false;
    };
    version.starts_with("0.2.") && WASI_PROVIDED.contains(&interface)
}

/// What a component imports, classified.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    /// Governed interfaces: those of `warden:agent`, and `wasi:http` (as [`Interface::Http`]).
    pub warden: Vec<Interface>,
    /// WASI interfaces the host provides.
    pub wasi: Vec<String>,
    /// Everything else, WASI interfaces the host does not provide included.
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
    /// Imports something the host does not provide.
    Unknown { import: String },
}

/// Classify a component's imports.
pub fn summarize(engine: &Engine, component: &Component) -> ImportSummary {
    let mut summary = ImportSummary::default();
    for (name, _) in component.component_type().imports(engine) {
        if name.starts_with("wasi:") {
            // `wasi:http` is governed: linked only where the tier grants `http`.
            if let Some(interface) = Interface::from_wasi_import(name) {
                if !summary.warden.contains(&interface) {
                    summary.warden.push(interface);
                }
            } else if wasi_provided(name) {
                summary.wasi.push(name.to_string());
            } else {
                summary.unknown.push(name.to_string());
            }
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
