//! `warden-tool-sandbox <policy> <program> [args...]`: confine this process as the policy says
//! and `exec` the program, which inherits the confinement. The Warden host runs every tool
//! through it (see `warden::tools::sandbox`); it is not meant to be run by hand.
//!
//! In order: resource limits (`setrlimit`), every capability dropped, a Landlock ruleset
//! (filesystem; TCP, abstract UNIX sockets and signals unless the tool has the network), a
//! seccomp filter (no sockets without the network; no `setsid`, `setpgid` or `io_uring`), then
//! `exec`. This process is single-threaded, so what it applies to itself covers everything
//! the program will start.
//!
//! A failure before the program runs is one line on standard error, starting with
//! `warden-tool-sandbox: `, and exit status 125 (nothing confined it, nothing ran) or 126
//! (confined, the program could not be executed).

use std::ffi::OsString;
use std::process::ExitCode;

use warden::tools::sandbox::{self, Policy};

/// Why the program did not run.
enum Failure {
    /// The confinement could not be applied.
    Confine(String),
    /// Confined, the `exec` failed.
    Exec(String),
}

fn main() -> ExitCode {
    let (status, message) = match run(std::env::args_os().skip(1)) {
        Failure::Confine(message) => (sandbox::CONFINEMENT_FAILED, message),
        Failure::Exec(message) => (sandbox::EXEC_FAILED, message),
    };
    eprintln!("{}{message}", sandbox::MESSAGE_PREFIX);
    ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX))
}

/// Returns only when the program could not be run.
fn run(mut args: impl Iterator<Item = OsString>) -> Failure {
    const USAGE: &str = "usage: warden-tool-sandbox <policy-json> <program> [args...]; the Warden host runs it for every tool";
    let Some(policy) = args.next() else {
        return Failure::Confine(USAGE.into());
    };
    let Some(policy) = policy.to_str() else {
        return Failure::Confine("its policy argument is not UTF-8".into());
    };
    let policy = match Policy::from_argument(policy) {
        Ok(policy) => policy,
        Err(message) => return Failure::Confine(message),
    };
    let Some(program) = args.next() else {
        return Failure::Confine(USAGE.into());
    };
    let args: Vec<OsString> = args.collect();
    confine::enter(&policy, &program, &args)
}

#[cfg(target_os = "linux")]
mod confine {
    use std::collections::BTreeMap;
    use std::ffi::{OsStr, OsString};
    use std::os::unix::process::CommandExt;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, LandlockStatus, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
    };
    use rlimit::Resource;
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use warden::tools::sandbox::{Limits, PathAccess, Policy};

    use super::Failure;

    /// The newest Landlock ABI this helper asks for; what the kernel lacks of it is dropped
    /// (best effort), down to [`REQUIRED`].
    const NEWEST: ABI = ABI::V10;

    /// The oldest Landlock ABI that confines: ABI 3 (Linux 6.2) is the first that controls
    /// truncation, without which a read-only file could still be emptied.
    const REQUIRED: ABI = ABI::V3;

    /// What a refused system call returns to the tool.
    const REFUSED: u32 = libc::EPERM as u32;

    /// Confine this process and `exec` the program; returns only on failure.
    pub(super) fn enter(policy: &Policy, program: &OsStr, args: &[OsString]) -> Failure {
        let confined = limit(&policy.limits)
            .and_then(|()| drop_capabilities())
            .and_then(|()| landlock(policy))
            .and_then(|()| seccomp(policy.network));
        if let Err(message) = confined {
            return Failure::Confine(message);
        }
        // Environment, working directory and standard streams are the host's choice.
        let error = std::process::Command::new(program).args(args).exec();
        Failure::Exec(format!(
            "cannot execute `{}`: {error}; a program (or its interpreter) outside the system directories needs its directory in the tool's `read_paths`",
            program.to_string_lossy()
        ))
    }

    fn limit(limits: &Limits) -> Result<(), String> {
        let set = |resource: Resource, soft: u64, hard: u64| {
            // Never above what this process may already use: a limit only ever lowers.
            let (_, current) = resource
                .get()
                .map_err(|error| format!("cannot read {}: {error}", resource.as_name()))?;
            let hard = hard.min(current);
            let soft = soft.min(hard);
            resource
                .set(soft, hard)
                .map_err(|error| format!("cannot set {} to {soft}: {error}", resource.as_name()))
        };
        // SIGXCPU at the limit, SIGKILL a second later.
        set(
            Resource::CPU,
            limits.cpu_seconds,
            limits.cpu_seconds.saturating_add(1),
        )?;
        set(Resource::AS, limits.memory_bytes, limits.memory_bytes)?;
        set(Resource::FSIZE, limits.file_bytes, limits.file_bytes)?;
        set(Resource::NPROC, limits.processes, limits.processes)?;
        // A crashing tool leaves no core file in its workspace.
        set(Resource::CORE, 0, 0)
    }

    /// Every capability, from every set: a host running as root hands its tools none (and
    /// with no capability left, `exec` grants none, `no_new_privs` being set by Landlock).
    fn drop_capabilities() -> Result<(), String> {
        use caps::{CapSet, Capability};
        let failed = |error: caps::errors::CapsError| format!("cannot drop capabilities: {error}");
        // The bounding set needs CAP_SETPCAP to change; without it there is nothing to drop
        // from the other sets that an `exec` could give back.
        if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(failed)? {
            caps::clear(None, CapSet::Bounding).map_err(failed)?;
        }
        for set in [
            CapSet::Ambient,
            CapSet::Inheritable,
            CapSet::Effective,
            CapSet::Permitted,
        ] {
            caps::clear(None, set).map_err(failed)?;
        }
        let left = caps::read(None, CapSet::Permitted).map_err(failed)?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "capabilities {left:?} are still permitted after dropping them all"
            ))
        }
    }

    fn landlock(policy: &Policy) -> Result<(), String> {
        let failed = |error: RulesetError| format!("cannot build its landlock ruleset: {error}");
        let mut handled = AccessFs::from_all(NEWEST);
        if policy.network {
            // Connecting to a UNIX socket by path is the network's business.
            handled.remove(AccessFs::ResolveUnix);
        }
        let mut ruleset = Ruleset::default().handle_access(handled).map_err(failed)?;
        if !policy.network {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(NEWEST))
                .map_err(failed)?
                .scope(Scope::AbstractUnixSocket)
                .map_err(failed)?;
        }
        let mut ruleset = ruleset
            .scope(Scope::Signal)
            .map_err(failed)?
            .create()
            .map_err(failed)?;
        for rule in &policy.paths {
            let fd = match PathFd::new(&rule.path) {
                Ok(fd) => fd,
                Err(error) if rule.required => {
                    return Err(format!(
                        "cannot open `{}` for its rule: {error}; it must exist when the tool runs",
                        rule.path.display()
                    ));
                }
                Err(_) => continue,
            };
            let mut access = match rule.access {
                PathAccess::Read => AccessFs::from_read(NEWEST),
                PathAccess::Write => handled,
            };
            if !rule.path.is_dir() {
                access &= AccessFs::from_file(NEWEST);
            }
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access & handled))
                .map_err(failed)?;
        }
        let status = ruleset.restrict_self().map_err(failed)?;
        match status.landlock {
            LandlockStatus::NotEnabled => {
                return Err(
                    "landlock is built into this kernel but not enabled: add `landlock` to the kernel's `lsm=` boot parameter (or CONFIG_LSM)".into(),
                );
            }
            LandlockStatus::NotImplemented => {
                return Err(
                    "this kernel has no landlock: tools are confined with Linux 6.2 or later built with CONFIG_SECURITY_LANDLOCK".into(),
                );
            }
            LandlockStatus::Available { effective_abi, .. } if effective_abi < REQUIRED => {
                return Err(format!(
                    "this kernel's landlock ABI {effective_abi} cannot confine a tool (truncation is uncontrolled); ABI {REQUIRED} (Linux 6.2) or later is needed"
                ));
            }
            _ => {}
        }
        if status.ruleset == RulesetStatus::NotEnforced {
            return Err("the landlock ruleset was not enforced".into());
        }
        if !status.no_new_privs {
            return Err("`no_new_privs` could not be set".into());
        }
        Ok(())
    }

    /// The seccomp program: `setsid`, `setpgid` and `io_uring` always refused (a tool stays in
    /// the process group the host kills, and no ring submits around the filter); without the
    /// network, `socket` of every family and `socketpair` of any but `AF_UNIX` too.
    pub(super) fn filter(network: bool) -> Result<BpfProgram, String> {
        let failed =
            |error: seccompiler::BackendError| format!("cannot build its seccomp filter: {error}");
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|error| {
            format!("no seccomp filter can be built for this architecture: {error}")
        })?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = [
            libc::SYS_setsid,
            libc::SYS_setpgid,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ]
        .into_iter()
        .map(|call| (call, Vec::new()))
        .collect();
        if !network {
            rules.insert(libc::SYS_socket, Vec::new());
            let other_than_unix = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )
            .map_err(failed)?;
            rules.insert(
                libc::SYS_socketpair,
                vec![SeccompRule::new(vec![other_than_unix]).map_err(failed)?],
            );
        }
        // The x32 ABI shares the x86_64 audit arch with the same numbers plus this bit; the
        // filter kills a process of any other arch (i386) outright.
        #[cfg(target_arch = "x86_64")]
        {
            const X32: i64 = 0x4000_0000;
            let x32: Vec<_> = rules
                .iter()
                .map(|(call, chain)| (call | X32, chain.clone()))
                .collect();
            rules.extend(x32);
        }
        SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(REFUSED),
            arch,
        )
        .map_err(failed)?
        .try_into()
        .map_err(failed)
    }

    fn seccomp(network: bool) -> Result<(), String> {
        seccompiler::apply_filter(&filter(network)?)
            .map_err(|error| format!("cannot install its seccomp filter: {error}"))
    }
}

#[cfg(not(target_os = "linux"))]
mod confine {
    use std::ffi::{OsStr, OsString};

    use warden::tools::sandbox::Policy;

    use super::Failure;

    pub(super) fn enter(_policy: &Policy, _program: &OsStr, _args: &[OsString]) -> Failure {
        Failure::Confine(
            "tools are confined with Linux's Landlock and this system is not Linux; only `confinement = \"none\"` in the tools file runs them here, unconfined".into(),
        )
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_seccomp_filter_builds_for_this_architecture() {
        let closed = super::confine::filter(false).unwrap();
        let open = super::confine::filter(true).unwrap();
        // The socket rules are in the closed filter only.
        assert!(
            closed.len() > open.len(),
            "{} vs {}",
            closed.len(),
            open.len()
        );
    }
}
