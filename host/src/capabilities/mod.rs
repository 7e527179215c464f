//! Capabilities: one module per WIT interface, in the manner of wasmtime-wasi's per-interface
//! modules and Spin's factors. A capability's module owns its host functions, its section of
//! the tier table ([`Grant`](crate::policy::Grant)), its own checks (pure functions answering
//! a [`CallRefusal`](crate::governance::CallRefusal)) and its ledger records.
//!
//! Each host function starts with the gate
//! ([`Governor::gate`](crate::governance::Governor::gate): revocation, tier grant, packet
//! `forbidden`, packet `scope`), then its own checks through
//! [`Governor::check`](crate::governance::Governor::check), does its work through a backend
//! trait, and records the call. A refusal is returned to the guest as a WIT error, never as a
//! trap.
//!
//! The registry ([`with_capabilities!`](crate::interface)) lists the capabilities once; this
//! module expands it into [`CAPABILITIES`]: each row's interface, how it is linked, and how
//! its tier-table section is read.

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::warden;
use crate::governance::Governor;
use crate::interface::{Interface, with_capabilities};
use crate::policy::{PolicyError, SectionSpec, TierPolicy, TierTable};
use crate::runtime::limits::{GuestLimits, Meter};

/// A host function's body through the run's journal ([`journaled`]): `codec` is how its
/// answer is written (`Json`, `Bytes`, `Secret`), `args` the digest of its arguments.
macro_rules! journal_call {
    ($ctx:ident, $op:expr, $codec:ident, $args:expr, $body:block) => {{
        let args = $args;
        match $ctx
            .journal_before::<_, super::journaled::$codec>($op, args)
            .await
        {
            super::journaled::Before::Answer(answer) => answer,
            super::journaled::Before::Live(args) => {
                // Held from the body through its record (dropped if the call is cancelled).
                let effect = crate::fault::Effect::begin($op);
                let result = async $body.await;
                crate::fault::inside($ctx.gov.fault_call, &effect).await;
                $ctx.journal_after::<_, super::journaled::$codec>($op, args, &result)
                    .await;
                crate::fault::Effect::end(effect);
                crate::fault::after($ctx.gov.fault_call).await;
                result
            }
        }
    }};
}
// Path-scoped, so the capability modules the registry declares can name it.
use journal_call;

mod journaled;
mod quota;
#[cfg(test)]
pub(crate) mod testing;
mod wasi_fs;

pub(crate) use wasi_fs::{WorkspaceQuota, raise_open_file_limit};

/// The data of one agent's store.
pub(crate) struct AgentCtx {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: GuestLimits,
    pub gov: Governor,
    pub meter: Meter,
    /// What the run holds against its tier's workspace and descriptor limits.
    pub quota: WorkspaceQuota,
    /// `wasi:http`'s own state (linked only where the tier grants `http`).
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    /// The send hook every request of the run goes through.
    pub egress: Egress,
}

impl WasiView for AgentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// One row of the registry.
pub(crate) struct Capability {
    pub interface: Interface,
    /// Adds the interface's host functions to a linker.
    pub link: fn(&mut Linker<AgentCtx>) -> wasmtime::Result<()>,
}

/// How a registry row is linked: `warden:agent`'s bindings, or the module's own `link` for a
/// WASI interface.
macro_rules! link_row {
    ($module:ident) => {
        |linker| warden::agent::$module::add_to_linker::<_, HasSelf<AgentCtx>>(linker, |ctx| ctx)
    };
    ($module:ident wasi) => {
        $module::link
    };
}

macro_rules! registry {
    ($($variant:ident => $module:ident $(($kind:ident))?),* $(,)?) => {
        $(mod $module;)*

        /// Every capability, in registry order.
        pub(crate) const CAPABILITIES: &[Capability] = &[
            $(Capability {
                interface: Interface::$variant,
                link: link_row!($module $($kind)?),
            },)*
        ];

        /// How each capability's section of the tier table is read, in registry order.
        const SECTIONS: &[SectionSpec] = &[$($module::SECTION,)*];
    };
}
with_capabilities!(registry);

pub(crate) use self::http::Egress;
pub(crate) use artifacts::check_write as check_artifact_write;
pub(crate) use governance::PROPOSE;
pub(crate) use messaging::last_received;

/// A linker with WASI and exactly the interfaces the tier grants: what is not linked cannot
/// be called, whatever the component was built against. `wasi:filesystem/types` is
/// wasmtime-wasi's under the tier's workspace and descriptor limits (`wasi_fs`).
pub(crate) fn tier_linker(
    engine: &wasmtime::Engine,
    policy: &TierPolicy,
) -> wasmtime::Result<Linker<AgentCtx>> {
    let mut linker = Linker::<AgentCtx>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasi_fs::add_to_linker(&mut linker)?;
    for capability in CAPABILITIES {
        if policy.interfaces.contains(capability.interface) {
            (capability.link)(&mut linker)?;
        }
    }
    Ok(linker)
}

// The tier table is parsed here, where the capabilities' sections are known; `policy` stays
// below the capabilities.
impl TierTable {
    /// The table shipped with Warden (`policies/tiers.toml`).
    pub fn builtin() -> Result<TierTable, PolicyError> {
        TierTable::parse_with(
            crate::policy::BUILTIN_TIERS_TOML,
            "(built-in)".to_string(),
            SECTIONS,
            crate::signing::Keyring::empty(),
        )
    }

    /// Read and validate a tier table file; the trusted keys its `signed_by` name are the
    /// `*.pub` files of `keys/` beside it.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<TierTable, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = format!("`{}`", path.display());
        let keys = path
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("keys");
        let keyring =
            crate::signing::Keyring::from_dir(&keys).map_err(|e| PolicyError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        let mut table = TierTable::parse_with(&text, origin, SECTIONS, keyring)?;
        table.set_source(path);
        Ok(table)
    }

    /// Validate a tier table given as TOML text.
    pub fn from_toml_str(text: &str) -> Result<TierTable, PolicyError> {
        TierTable::parse_with(
            text,
            "(inline)".to_string(),
            SECTIONS,
            crate::signing::Keyring::empty(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BUILTIN_TIERS_TOML;
    use crate::tier::Tier;

    #[test]
    fn the_registry_lists_every_interface_once_in_order() {
        let listed: Vec<Interface> = CAPABILITIES.iter().map(|c| c.interface).collect();
        assert_eq!(listed, Interface::ALL);
        let sections: Vec<Interface> = SECTIONS.iter().map(|s| s.interface).collect();
        assert_eq!(sections, Interface::ALL);
    }

    #[test]
    fn builtin_table_is_valid_and_monotonic() {
        let table = TierTable::builtin().unwrap();
        assert_eq!(
            table.lowest_tier_granting(Interface::Secrets),
            Some(Tier::Executor)
        );
        assert_eq!(
            table.lowest_tier_granting(Interface::Tools),
            Some(Tier::Operator)
        );
        assert_eq!(
            table.lowest_tier_granting(Interface::Llm),
            Some(Tier::Observer)
        );
        assert_eq!(
            table.lowest_tier_granting(Interface::Types),
            Some(Tier::Observer)
        );
        assert_eq!(
            table.policy(Tier::Architect).approval,
            crate::policy::Approval::Required
        );
        assert!(table.policy(Tier::Observer).stops_after_plan);
        assert_eq!(
            table.policy(Tier::Observer).phase_wall,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(
            table.defaults.approval_timeout,
            std::time::Duration::from_secs(600)
        );
    }

    #[test]
    fn a_tier_granting_less_than_the_one_below_is_refused() {
        // T1 without `[tiers.T1.ledger]`, which T0 has.
        let text = BUILTIN_TIERS_TOML.replacen(
            "[tiers.T1.ledger]\nmax_entries_per_run = 1000\nmax_bytes_per_run = 1048576\n",
            "",
            1,
        );
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`tiers.T0` grants `ledger` but `tiers.T1` does not"),
            "{err}"
        );
        // T2 with a blackboard it may not write, where T1 may.
        let text = BUILTIN_TIERS_TOML.replacen(
            "[tiers.T2.blackboard]\nwrite = true",
            "[tiers.T2.blackboard]\nwrite = false",
            1,
        );
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`[tiers.T2.blackboard]` grants less than `[tiers.T1.blackboard]`"),
            "{err}"
        );
        // T2 with a smaller state quota than T1's.
        let text = BUILTIN_TIERS_TOML.replacen(
            "[tiers.T2.state]\nmax_keys = 1000",
            "[tiers.T2.state]\nmax_keys = 999",
            1,
        );
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`[tiers.T2.state]` grants less than `[tiers.T1.state]`: its `max_keys` of 999 is below the tier below's 1000"),
            "{err}"
        );
        let text = BUILTIN_TIERS_TOML.replacen(
            "max_text_bytes = 65536\nworkspace_bytes = 67108864\nworkspace_files = 4096\ndescriptors = 64\nwasi_resources = 1024\n\n[tiers.T3.plan]",
            "max_text_bytes = 100\nworkspace_bytes = 67108864\nworkspace_files = 4096\ndescriptors = 64\nwasi_resources = 1024\n\n[tiers.T3.plan]",
            1,
        );
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`tiers.T3.max_text_bytes` of 100 is below `tiers.T2`'s 65536"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_section_grants_nothing_and_an_unknown_one_is_named() {
        let text = BUILTIN_TIERS_TOML.replace("[tiers.T3.secrets]\n", "[tiers.T3.telepathy]\n");
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("unknown field `telepathy`"), "{err}");
        assert!(
            err.contains("`[tiers.T3.<name>]` for ledger, state"),
            "{err}"
        );

        let text = BUILTIN_TIERS_TOML.replace("[tiers.T4]", "[tiers.T9]");
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("unknown tier `[tiers.T9]`"), "{err}");

        let err = TierTable::from_toml_str("revision = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid TOML for a tier table"), "{err}");

        let text = format!("{BUILTIN_TIERS_TOML}\n[tiers.T0.types]\n");
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("linked at every tier and takes no section"),
            "{err}"
        );
    }

    /// An operator's table in the old flat layout gets the form that replaces each key.
    #[test]
    fn old_flat_keys_name_their_new_form() {
        let cases = [
            (
                "interfaces = [\"types\", \"ledger\", \"state\"]",
                "each interface is granted by a section of its own (`[tiers.T0.ledger]`, `[tiers.T0.state]`)",
            ),
            (
                "llm_models = [\"gpt-*\"]",
                "write it as a section:\n  [tiers.T0.llm]\n  models = [\"gpt-*\"]",
            ),
            (
                "llm_token_budget = 20000",
                "[tiers.T0.llm]\n  token_budget = 20000",
            ),
            (
                "secrets = [\"t3/*\"]",
                "[tiers.T0.secrets]\n  paths = [\"t3/*\"]",
            ),
            (
                "artifact_names = [\"plan*\"]",
                "[tiers.T0.artifacts]\n  names = [\"plan*\"]",
            ),
            (
                "blackboard_write = false",
                "[tiers.T0.blackboard]\n  write = false",
            ),
            ("phase_wall_ms = 30000", "write `phase_wall = \"30s\"`"),
            ("secrets_ttl_s = 3600", "write `secrets_ttl = \"1h\"`"),
        ];
        for (old, new_form) in cases {
            let text =
                BUILTIN_TIERS_TOML.replacen("[tiers.T0]\n", &format!("[tiers.T0]\n{old}\n"), 1);
            let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
            assert!(err.contains(new_form), "{old}: {err}");
        }
        let text = BUILTIN_TIERS_TOML.replace("lock_ttl = \"1m\"", "lock_ttl_ms = 60000");
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(err.contains("write `lock_ttl = \"1m\"`"), "{err}");
    }

    /// The shipped quotas are the serde defaults: a table written without the keys (an
    /// operator's from before quotas) is as safe as the built-in one.
    #[test]
    fn a_table_without_the_quota_keys_gets_the_shipped_quotas() {
        let stripped: Vec<&str> = BUILTIN_TIERS_TOML
            .lines()
            .filter(|line| !line.starts_with("max_"))
            .collect();
        assert!(stripped.len() < BUILTIN_TIERS_TOML.lines().count() - 50);
        let without = TierTable::from_toml_str(&stripped.join("\n")).unwrap();
        let shipped = TierTable::builtin().unwrap();
        for tier in Tier::ALL {
            let (a, b) = (shipped.policy(tier), without.policy(tier));
            assert_eq!(a.max_text_bytes, b.max_text_bytes, "{tier}");
            let grants = |p: &TierPolicy| {
                format!(
                    "{:?} {:?} {:?} {:?} {:?}",
                    p.grant::<ledger::Grant>(Interface::Ledger),
                    p.grant::<state::Grant>(Interface::State),
                    p.grant::<artifacts::Grant>(Interface::Artifacts),
                    p.grant::<blackboard::Grant>(Interface::Blackboard),
                    p.grant::<messaging::Grant>(Interface::Messaging),
                )
            };
            assert_eq!(grants(a), grants(b), "{tier}");
        }
        let t0 = shipped.policy(Tier::Observer);
        assert_eq!(t0.grant::<state::Grant>(Interface::State).max_keys, 1000);
        assert_eq!(
            t0.grant::<artifacts::Grant>(Interface::Artifacts)
                .max_bytes_per_task,
            256 << 20
        );
    }

    /// A table without the host-resource keys gets the built-in table's values, and too few
    /// resources for the tier's descriptors are refused with the least that would do.
    #[test]
    fn host_resource_limits_default_as_the_built_in_table_says() {
        const KEYS: [&str; 4] = [
            "workspace_bytes",
            "workspace_files",
            "descriptors",
            "wasi_resources",
        ];
        let builtin = TierTable::builtin().unwrap();
        let stripped: Vec<&str> = BUILTIN_TIERS_TOML
            .lines()
            .filter(|line| !KEYS.iter().any(|key| line.starts_with(&format!("{key} ="))))
            .collect();
        assert_eq!(BUILTIN_TIERS_TOML.lines().count() - stripped.len(), 20);
        let defaulted = TierTable::from_toml_str(&stripped.join("\n")).unwrap();
        for tier in Tier::ALL {
            let (a, b) = (builtin.policy(tier), defaulted.policy(tier));
            assert_eq!(
                (
                    a.workspace_bytes,
                    a.workspace_files,
                    a.descriptors,
                    a.wasi_resources
                ),
                (
                    b.workspace_bytes,
                    b.workspace_files,
                    b.descriptors,
                    b.wasi_resources
                ),
                "{tier}"
            );
        }
        let t2 = builtin.policy(Tier::Builder);
        assert_eq!(
            (
                t2.workspace_bytes,
                t2.workspace_files,
                t2.descriptors,
                t2.wasi_resources
            ),
            (64 << 20, 4096, 64, 1024)
        );

        let text = BUILTIN_TIERS_TOML.replacen("descriptors = 64 ", "descriptors = 256 ", 1);
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`tiers.T0.wasi_resources` is 1024: it must be at least 5 × `descriptors` + 32 (1312)"),
            "{err}"
        );
    }

    #[test]
    fn a_zero_limit_is_named() {
        let text = BUILTIN_TIERS_TOML.replacen("memory_bytes = 67108864", "memory_bytes = 0", 1);
        let err = TierTable::from_toml_str(&text).unwrap_err().to_string();
        assert!(
            err.contains("`tiers.T0.memory_bytes` must be greater than 0"),
            "{err}"
        );
    }
}

/// The linker, the load gate's WASI list and `wit/worlds.wit` agree with the tier table.
#[cfg(test)]
mod agreement {
    use std::collections::BTreeSet;

    use super::*;
    use crate::runtime::Runtime;
    use crate::runtime::imports::{self, ImportRefusal, WASI_PROVIDED};
    use crate::tier::Tier;

    /// One member of a provided interface, as an instance type's export: an import of an
    /// instance with no members would pass for any name.
    const MEMBERS: &[(&str, &str)] = &[
        ("wasi:io/error", r#"(export "error" (type (sub resource)))"#),
        (
            "wasi:io/poll",
            r#"(export "pollable" (type (sub resource)))"#,
        ),
        (
            "wasi:io/streams",
            r#"(export "input-stream" (type (sub resource)))"#,
        ),
        (
            "wasi:filesystem/types",
            r#"(export "descriptor" (type (sub resource)))"#,
        ),
        (
            "wasi:sockets/network",
            r#"(export "network" (type (sub resource)))"#,
        ),
        (
            "wasi:sockets/tcp",
            r#"(export "tcp-socket" (type (sub resource)))"#,
        ),
        (
            "wasi:sockets/udp",
            r#"(export "udp-socket" (type (sub resource)))"#,
        ),
        (
            "wasi:sockets/ip-name-lookup",
            r#"(export "resolve-address-stream" (type (sub resource)))"#,
        ),
        (
            "wasi:cli/terminal-input",
            r#"(export "terminal-input" (type (sub resource)))"#,
        ),
        (
            "wasi:cli/terminal-output",
            r#"(export "terminal-output" (type (sub resource)))"#,
        ),
        (
            "wasi:cli/environment",
            r#"(export "get-arguments" (func (result (list string))))"#,
        ),
        (
            "wasi:clocks/monotonic-clock",
            r#"(export "now" (func (result u64)))"#,
        ),
        (
            "wasi:random/random",
            r#"(export "get-random-u64" (func (result u64)))"#,
        ),
        (
            "wasi:random/insecure",
            r#"(export "get-insecure-random-u64" (func (result u64)))"#,
        ),
    ];

    fn component(runtime: &Runtime, imports: &str) -> wasmtime::component::Component {
        let bytes = wat::parse_str(format!("(component {imports})")).expect("component text");
        runtime.component(imports, &bytes, "test").unwrap()
    }

    #[test]
    fn the_listed_wasi_interfaces_are_linked_and_unlisted_ones_are_not() {
        let runtime = Runtime::new(None).unwrap();
        let tiers = TierTable::builtin().unwrap();
        let linker = tier_linker(runtime.engine(), tiers.policy(Tier::Observer)).unwrap();
        for (name, member) in MEMBERS {
            assert!(WASI_PROVIDED.contains(name), "{name}");
            let import = format!(r#"(import "{name}@0.2.0" (instance {member}))"#);
            assert!(
                linker
                    .instantiate_pre(&component(&runtime, &import))
                    .is_ok(),
                "`{name}` is listed as provided but the linker does not define `{member}`"
            );
        }
        for name in [
            "wasi:http/outgoing-handler@0.2.0",
            "wasi:http/types@0.2.0",
            "wasi:keyvalue/store@0.2.0-draft",
            "wasi:io/poll@0.3.0",
        ] {
            assert!(!imports::wasi_provided(name), "{name}");
            let import = format!(r#"(import "{name}" (instance (export "x" (func))))"#);
            assert!(
                linker
                    .instantiate_pre(&component(&runtime, &import))
                    .is_err(),
                "`{name}` is linked but the load gate would refuse it"
            );
        }
    }

    #[test]
    fn the_load_gate_refuses_wasi_the_host_does_not_provide() {
        let runtime = Runtime::new(None).unwrap();
        let tiers = TierTable::builtin().unwrap();
        let component = component(
            &runtime,
            r#"(import "wasi:io/poll@0.2.3" (instance)) (import "wasi:keyvalue/store@0.2.0-draft" (instance))"#,
        );
        let summary = imports::summarize(runtime.engine(), &component);
        assert_eq!(summary.wasi, ["wasi:io/poll@0.2.3"]);
        assert_eq!(
            imports::check(&summary, Tier::Architect, &tiers),
            Err(ImportRefusal::Unknown {
                import: "wasi:keyvalue/store@0.2.0-draft".into()
            })
        );
    }

    /// `wasi:http` is governed: linked, and admitted by the load gate, only at tiers with an
    /// `[tiers.Tn.http]` section; below them the refusal names the lowest tier that links it.
    #[test]
    fn wasi_http_is_linked_and_admitted_only_where_the_tier_grants_http() {
        let runtime = Runtime::new(None).unwrap();
        let tiers = TierTable::builtin().unwrap();
        let import = r#"(import "wasi:http/types@0.2.0" (instance (export "fields" (type (sub resource))))) (import "wasi:http/outgoing-handler@0.2.0" (instance))"#;
        let component = component(&runtime, import);
        let summary = imports::summarize(runtime.engine(), &component);
        assert_eq!(summary.warden, [Interface::Http]);
        assert!(summary.unknown.is_empty(), "{:?}", summary.unknown);
        for tier in Tier::ALL {
            let linker = tier_linker(runtime.engine(), tiers.policy(tier)).unwrap();
            let linked = linker.instantiate_pre(&component).is_ok();
            let admitted = imports::check(&summary, tier, &tiers);
            if tier >= Tier::Builder {
                assert!(linked, "{tier:?} does not link wasi:http");
                assert_eq!(admitted, Ok(()), "{tier:?}");
            } else {
                assert!(!linked, "{tier:?} links wasi:http without an http section");
                assert_eq!(
                    admitted,
                    Err(ImportRefusal::AboveTier {
                        interface: Interface::Http,
                        lowest: Some(Tier::Builder)
                    }),
                    "{tier:?}"
                );
            }
        }
    }

    /// Each world of `wit/worlds.wit` imports exactly what its tier links.
    #[test]
    fn worlds_wit_matches_the_tier_table() {
        let mut resolve = wit_parser::Resolve::new();
        let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit");
        let (package, _) = resolve.push_dir(wit).unwrap();
        let tiers = TierTable::builtin().unwrap();
        for tier in Tier::ALL {
            let world = resolve
                .select_world(&[package], Some(tier.name()))
                .unwrap_or_else(|e| panic!("no world `{}` in wit/worlds.wit: {e}", tier.name()));
            let imported: BTreeSet<String> = resolve.worlds[world]
                .imports
                .values()
                .filter_map(|item| match item {
                    wit_parser::WorldItem::Interface { id, .. } => {
                        resolve.interfaces[*id].name.clone()
                    }
                    _ => None,
                })
                .collect();
            let linked: BTreeSet<String> = tiers
                .policy(tier)
                .interfaces
                .iter()
                // `wasi:http` is WASI's own package, not a `warden:agent` interface.
                .filter(|i| !i.is_wasi())
                .map(|i| i.name().to_string())
                .collect();
            assert_eq!(
                imported,
                linked,
                "world `{}` of wit/worlds.wit and `[tiers.{}]` of policies/tiers.toml disagree",
                tier.name(),
                tier.code()
            );
        }
    }
}
