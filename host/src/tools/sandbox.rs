//! Confinement of tool processes: the policy the host hands to the `warden-tool-sandbox`
//! helper, and where the host finds that helper.
//!
//! The host never confines itself. For every tool call it runs the helper (a small binary of
//! this package) with the policy as its first argument and the tool's argv after it; the
//! helper applies the policy to itself (resource limits, dropped capabilities, a Landlock
//! ruleset, a seccomp filter) and then `exec`s the tool, which inherits all of it. Both
//! programs are safe Rust: confining a process that is about to `exec` needs no `pre_exec`
//! hook, so no `unsafe`.
//!
//! The helper answers a failure before the tool runs with exit status
//! [`CONFINEMENT_FAILED`] (it could not confine) or [`EXEC_FAILED`] (the confined `exec`
//! failed) and one line on standard error starting with [`MESSAGE_PREFIX`]; the host turns
//! those into errors, so a tool never runs less confined than its policy says.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::is_executable;

/// The helper's file name, looked for beside the host's executable.
pub const HELPER_NAME: &str = "warden-tool-sandbox";

/// The environment variable that names the helper's path, when it is not beside the host.
pub const HELPER_ENV: &str = "WARDEN_TOOL_SANDBOX";

/// The version of [`Policy`]; a helper from another build refuses a policy of another
/// version instead of misreading it.
pub const PROTOCOL: u32 = 1;

/// The helper's exit status when it could not confine itself; the tool did not run.
pub const CONFINEMENT_FAILED: i32 = 125;

/// The helper's exit status when, confined, it could not `exec` the tool.
pub const EXEC_FAILED: i32 = 126;

/// How the helper's own error line on standard error starts.
pub const MESSAGE_PREFIX: &str = "warden-tool-sandbox: ";

/// What every confined tool may read and execute: the programs and libraries of the system
/// and the dynamic loader's cache, and the devices that read as zeros or random bytes. Paths
/// this system lacks (`/lib32` on most) are skipped.
pub const SYSTEM_READ_PATHS: &[&str] = &[
    "/usr",
    "/bin",
    "/lib",
    "/lib32",
    "/lib64",
    "/etc/ld.so.cache",
    "/dev/zero",
    "/dev/urandom",
];

/// What every confined tool may write besides its workspace.
pub const SYSTEM_WRITE_PATHS: &[&str] = &["/dev/null"];

/// The confinement of one tool run, as the host sends it to the helper (JSON, the helper's
/// first argument).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// [`PROTOCOL`] of the host that wrote it.
    pub protocol: u32,
    /// The file hierarchies the tool may use; everything else is denied by the kernel.
    pub paths: Vec<PathRule>,
    /// Whether the tool may use sockets; without it socket creation and TCP bind/connect are
    /// denied.
    pub network: bool,
    /// The resource limits set before the tool runs.
    pub limits: Limits,
}

/// One file hierarchy a tool may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    /// An absolute path; the rule covers it and everything beneath it, as the kernel resolves
    /// it (a symlink to elsewhere leads outside the rule).
    pub path: PathBuf,
    /// What the tool may do there.
    pub access: PathAccess,
    /// Whether a path that cannot be opened fails the run (declared paths and the workspace)
    /// or is skipped (the system defaults).
    pub required: bool,
}

/// What a tool may do beneath a [`PathRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathAccess {
    /// Read files, list directories, execute programs.
    Read,
    /// Everything: read, write, create, remove, rename, truncate.
    Write,
}

/// Resource limits (`setrlimit`) of a tool process and everything it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `RLIMIT_CPU`: CPU seconds per process (SIGXCPU, then SIGKILL a second later).
    pub cpu_seconds: u64,
    /// `RLIMIT_AS`: address space per process, in bytes.
    pub memory_bytes: u64,
    /// `RLIMIT_FSIZE`: the largest file a process may write, in bytes (SIGXFSZ past it).
    pub file_bytes: u64,
    /// `RLIMIT_NPROC`: processes and threads of the user the host runs as, the tool's
    /// included (the kernel counts per user, and does not apply it to root).
    pub processes: u64,
}

impl Policy {
    /// The policy as the helper's first argument; an error names what cannot be written
    /// (a path that is not UTF-8).
    pub fn to_argument(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|error| {
            format!("its confinement policy cannot be written: {error}; paths must be UTF-8")
        })
    }

    /// Read the helper's first argument; the error says what is wrong with it.
    pub fn from_argument(argument: &str) -> Result<Policy, String> {
        #[derive(Deserialize)]
        struct Version {
            protocol: u32,
        }
        let version: Version = serde_json::from_str(argument)
            .map_err(|error| format!("its policy argument is not a policy: {error}"))?;
        if version.protocol != PROTOCOL {
            return Err(format!(
                "the host speaks policy protocol {}, this helper {PROTOCOL}; install the helper of the same build as the host (`cargo build -p warden` builds both)",
                version.protocol
            ));
        }
        serde_json::from_str(argument)
            .map_err(|error| format!("its policy argument is not a policy: {error}"))
    }
}

/// Where the helper is: `explicit` (set with
/// [`ToolRegistry::with_sandbox_helper`](super::ToolRegistry::with_sandbox_helper)), else
/// [`HELPER_ENV`], else beside the running executable or in its parent directory (so test
/// binaries in `target/debug/deps` find `target/debug/warden-tool-sandbox`). A path given
/// explicitly or by the variable must be the helper; the search does not go on past it.
pub(super) fn locate_helper(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let given = |path: &Path, how: &str| {
        if is_executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(format!(
                "the sandbox helper `{}` {how} is not an executable file; build it (`cargo build -p warden`) or point {how_fix} at it",
                path.display(),
                how_fix = if how.contains(HELPER_ENV) {
                    format!("`{HELPER_ENV}`")
                } else {
                    "`ToolRegistry::with_sandbox_helper`".to_string()
                }
            ))
        }
    };
    if let Some(path) = explicit {
        return given(path, "set with `ToolRegistry::with_sandbox_helper`");
    }
    if let Some(path) = std::env::var_os(HELPER_ENV).filter(|v| !v.is_empty()) {
        return given(Path::new(&path), &format!("named by `{HELPER_ENV}`"));
    }
    let exe = std::env::current_exe()
        .map_err(|error| format!("cannot find the running executable to look beside it: {error}; set `{HELPER_ENV}` to the helper's path"))?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(HELPER_NAME))
        .collect();
    if let Some(found) = candidates.iter().find(|path| is_executable(path)) {
        return Ok(found.clone());
    }
    let searched = candidates
        .iter()
        .map(|path| format!("`{}`", path.display()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "the sandbox helper `{HELPER_NAME}` is not installed (looked for {searched}); install it beside the host (`cargo install warden` installs both, `cargo build -p warden` builds it into `target/debug`), or set `{HELPER_ENV}` to its path; only `confinement = \"none\"` in the tools file runs tools without it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            protocol: PROTOCOL,
            paths: vec![PathRule {
                path: "/usr".into(),
                access: PathAccess::Read,
                required: false,
            }],
            network: false,
            limits: Limits {
                cpu_seconds: 1,
                memory_bytes: 2,
                file_bytes: 3,
                processes: 4,
            },
        }
    }

    #[test]
    fn a_policy_round_trips_and_another_protocol_is_refused() {
        let policy = policy();
        assert_eq!(
            Policy::from_argument(&policy.to_argument().unwrap()),
            Ok(policy)
        );
        let error = Policy::from_argument(r#"{"protocol":99,"whatever":1}"#).unwrap_err();
        assert!(
            error.contains("protocol 99") && error.contains("cargo build -p warden"),
            "{error}"
        );
        let error = Policy::from_argument("{}").unwrap_err();
        assert!(error.contains("not a policy"), "{error}");
    }

    #[test]
    fn an_explicit_helper_must_be_executable() {
        let error = locate_helper(Some(Path::new("/nonexistent/helper"))).unwrap_err();
        assert!(
            error.contains("`/nonexistent/helper` set with `ToolRegistry::with_sandbox_helper`"),
            "{error}"
        );
        assert_eq!(
            locate_helper(Some(Path::new("/bin/sh"))),
            Ok(PathBuf::from("/bin/sh"))
        );
    }
}
