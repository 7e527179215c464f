//! Operator-registered tools behind `warden:agent/tools`.
//!
//! Agents never run arbitrary commands: the operator lists each tool in a TOML registry with a
//! fixed program, an argv template, regexes every argument must match, and the tiers that may
//! call it (`min_tier`) and run it for real (`full_tier`; below it the tool runs in check
//! mode). Everything is validated at load so that a bad registry fails at startup, not in the
//! middle of an agent's run.
//!
//! ```toml
//! # confinement = "none"        # the only way to run tools unconfined (logged, recorded)
//!
//! [[tool]]
//! name = "wc"
//! description = "count words of a workspace file"
//! min_tier = "T1"
//! full_tier = "T2"
//! argv = ["/usr/bin/wc", "-w", "{0}"]
//! check_argv = ["/bin/echo", "would run: wc -w {0}"]
//! args = ["[A-Za-z0-9._/-]{1,128}"]
//! max_args = 1
//! timeout = "5s"
//! max_output_bytes = 65536
//! idempotent = false           # true: a resume may run it again after an interrupted run
//! # Confinement, with the defaults:
//! read_paths = []              # more to read (and execute), absolute, existing at load
//! write_paths = []             # more to write besides the workspace
//! network = false              # sockets and TCP bind/connect denied
//! # cpu_time = "5s"            # RLIMIT_CPU per process; default: `timeout`, in whole seconds
//! max_memory_bytes = 1073741824    # RLIMIT_AS per process (1 GiB)
//! max_file_bytes = 67108864        # RLIMIT_FSIZE (64 MiB)
//! max_processes = 1024             # RLIMIT_NPROC (per user, see below)
//! max_arg_bytes = 4096             # each argument
//! max_total_arg_bytes = 65536      # all arguments together
//! ```
//!
//! # Confinement
//!
//! A tool runs directly (never through a shell), in the agent's workspace, with only
//! `PATH=/usr/bin:/bin` in its environment, no standard input, and its own process group. By
//! default ([`Confinement::Landlock`]) it is started through the `warden-tool-sandbox` helper
//! ([`sandbox`]), which before `exec`ing it:
//!
//! - sets its resource limits (`cpu_time`, `max_memory_bytes`, `max_file_bytes`,
//!   `max_processes`; no core files);
//! - drops every capability (a host running as root does not hand root to its tools);
//! - restricts the filesystem with Landlock to the workspace (read-write), the system
//!   directories of [`sandbox::SYSTEM_READ_PATHS`] (read and execute), `/dev/null`, the
//!   tool's program, and its `read_paths` and `write_paths`. The kernel checks the resolved
//!   path, so a symlink in the workspace that points outside it leads nowhere. Without
//!   `network = true` TCP bind and connect are denied too, and the tool cannot signal or
//!   reach the abstract UNIX sockets of processes outside its sandbox;
//! - installs a seccomp filter: without `network = true` no socket of any family can be made
//!   (Landlock covers only TCP); `setsid`, `setpgid` and `io_uring` are always refused, so
//!   nothing the tool starts leaves its process group.
//!
//! At its timeout, and as soon as the tool's own process exits, the host kills the whole
//! process group, so nothing the tool started outlives it or holds its output open.
//!
//! If confinement cannot be applied (the helper is missing, the kernel lacks Landlock ABI 3)
//! the call fails with [`ToolsError::Unconfined`]; nothing runs. Only `confinement = "none"`
//! at the top of the tools file runs tools without the helper: it is logged as a warning at
//! load and every [`ToolOutput`] says `confined: false`.
//!
//! Landlock does not hide metadata (a confined tool can still `stat` any path it can name),
//! and it does not cover System V IPC, or UNIX sockets on a kernel before Landlock ABI 9 (the
//! seccomp filter refuses every socket instead, unless `network = true`). `max_processes` is
//! the kernel's per-user count: it counts every process and thread of the user the host runs
//! as and does not apply to root, so it bounds a fork bomb only when Warden has a user of its
//! own.

mod run;
pub mod sandbox;
mod template;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::tier::Tier;
pub use run::{Invocation, ToolOutput};
use template::Template;

/// `timeout` when a tool gives none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_output_bytes` when a tool gives none.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// The largest `max_output_bytes`: output is held in memory and handed to the agent.
pub const MAX_OUTPUT_BYTES_LIMIT: usize = 16 * 1024 * 1024;
/// `max_arg_bytes` when a tool gives none.
pub const DEFAULT_MAX_ARG_BYTES: usize = 4 * 1024;
/// The largest `max_arg_bytes` (the kernel takes at most 128 KiB in one argument).
pub const MAX_ARG_BYTES_LIMIT: usize = 64 * 1024;
/// `max_total_arg_bytes` when a tool gives none.
pub const DEFAULT_MAX_TOTAL_ARG_BYTES: usize = 64 * 1024;
/// The largest `max_total_arg_bytes`.
pub const MAX_TOTAL_ARG_BYTES_LIMIT: usize = 1024 * 1024;
/// `max_memory_bytes` (`RLIMIT_AS`) when a tool gives none.
pub const DEFAULT_MAX_MEMORY_BYTES: u64 = 1024 * 1024 * 1024;
/// The smallest `max_memory_bytes`: below it not even the dynamic loader can map a program.
pub const MIN_MEMORY_BYTES: u64 = 16 * 1024 * 1024;
/// `max_file_bytes` (`RLIMIT_FSIZE`) when a tool gives none.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// `max_processes` (`RLIMIT_NPROC`) when a tool gives none.
pub const DEFAULT_MAX_PROCESSES: u64 = 1024;

/// How the tools of a registry run: the tools file's top-level `confinement`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Confinement {
    /// `"landlock"`, the default: every tool runs through the `warden-tool-sandbox` helper,
    /// confined as the module documentation says; a call fails if that cannot be done.
    #[default]
    #[serde(rename = "landlock")]
    Landlock,
    /// `"none"`: tools run without the helper: no filesystem, network or resource
    /// confinement, only the cleared environment, the timeout, the process-group kill and the
    /// output and argument bounds.
    #[serde(rename = "none")]
    Unconfined,
}

/// A tool registry that cannot be loaded, or a call of a tool that is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    /// The registry file cannot be read.
    #[error("cannot read tool registry `{path}`: {source}")]
    Read {
        /// The registry file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The registry is not TOML of the expected shape (the message has the line and field).
    #[error("tool registry {origin} is invalid{}: {message}", in_tool(.tool))]
    Parse {
        /// The registry, `` `path` `` for a file or `(inline)` for text.
        origin: String,
        /// The entry at fault: its name in backticks, or `#N` when it has none; `None` when
        /// no single entry is at fault.
        tool: Option<String>,
        /// `line L, column C: message`, from the TOML parser.
        message: String,
    },
    /// A tool's field is well-formed but unusable.
    #[error("tool registry {origin}, tool `{tool}`, field `{field}`: {message}")]
    Invalid {
        /// The registry, `` `path` `` for a file or `(inline)` for text.
        origin: String,
        /// The tool's name.
        tool: String,
        /// The field at fault (`argv`, `max_args`, …).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    #[error("no tool named `{tool}` is available to tier {tier}; {}", known_tools(.known))]
    /// No tool of that name is registered. The answer names only the tools the caller's tier
    /// may call, never one above it.
    NotFound {
        /// The name asked for.
        tool: String,
        /// The caller's tier.
        tier: Tier,
        /// The names of the tools the caller's tier may call, in registry order.
        known: Vec<String>,
    },
    #[error("tool `{tool}` is refused to tier {tier}: it needs at least tier {lowest}")]
    /// The caller's tier is below the tool's `min_tier`.
    Denied {
        /// The tool.
        tool: String,
        /// The caller's tier.
        tier: Tier,
        /// The tool's `min_tier`.
        lowest: Tier,
    },
    #[error("{}", invalid_argument(.tool, *.index, .value.as_deref(), .patterns, .problem))]
    /// An argument was refused.
    InvalidArgument {
        /// The tool.
        tool: String,
        /// The argument's position, from 0 as in `{0}`.
        index: usize,
        /// The argument, or `None` when it is missing.
        value: Option<String>,
        /// The tool's argument patterns, as written.
        patterns: Vec<String>,
        /// Why it was refused.
        problem: ArgumentProblem,
    },
    #[error(
        "tool `{tool}` ran longer than its {} limit and was killed; the operator may raise its `timeout`",
        crate::duration::format(*timeout)
    )]
    /// The tool ran past its `timeout` and was killed.
    Timeout {
        /// The tool.
        tool: String,
        /// Its `timeout`.
        timeout: Duration,
    },
    #[error("tool `{tool}` was not run: it cannot be confined: {reason}")]
    /// The tool's confinement cannot be applied (the sandbox helper is missing, the kernel
    /// lacks Landlock): the call fails closed.
    Unconfined {
        /// The tool.
        tool: String,
        /// What is missing, and how to get it.
        reason: String,
    },
    #[error("tool `{tool}` (`{program}`) is unavailable: {message}")]
    /// The tool's program cannot be started, or its output cannot be collected.
    Unavailable {
        /// The tool.
        tool: String,
        /// The program that was to run (`argv[0]`).
        program: String,
        /// What failed.
        message: String,
    },
}

/// Why an argument was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgumentProblem {
    /// More arguments than `max_args`; `index` is the first one too many.
    TooMany {
        /// The tool's `max_args`.
        max: usize,
    },
    /// The argument fully matches none of the tool's patterns.
    NoMatch,
    /// The argument contains a NUL byte, which no program can receive.
    ContainsNul,
    /// The tool's argv uses `{index}` but only `given` arguments were passed.
    Missing {
        /// How many arguments were passed.
        given: usize,
    },
    /// The argument is longer than the tool's `max_arg_bytes`.
    TooLong {
        /// Its length in bytes.
        bytes: usize,
        /// The tool's `max_arg_bytes`.
        max: usize,
    },
    /// With this argument the arguments together are longer than the tool's
    /// `max_total_arg_bytes`.
    TotalTooLong {
        /// The length of the arguments up to this one, in bytes.
        bytes: usize,
        /// The tool's `max_total_arg_bytes`.
        max: usize,
    },
}

fn in_tool(tool: &Option<String>) -> String {
    tool.as_ref()
        .map_or(String::new(), |tool| format!(" (tool {tool})"))
}

fn known_tools(known: &[String]) -> String {
    if known.is_empty() {
        "it may call no tool".to_string()
    } else {
        format!("tools it may call: {}", backticked(known))
    }
}

fn backticked(items: &[String]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid_argument(
    tool: &str,
    index: usize,
    value: Option<&str>,
    patterns: &[String],
    problem: &ArgumentProblem,
) -> String {
    let value = value.unwrap_or_default();
    let shown = shown(value);
    match problem {
        ArgumentProblem::TooMany { max } => format!(
            "tool `{tool}` refused argument {index} `{shown}`: it takes at most {max} argument(s)"
        ),
        ArgumentProblem::NoMatch => format!(
            "tool `{tool}` refused argument {index} `{shown}`: it must fully match one of {}",
            backticked(patterns)
        ),
        ArgumentProblem::ContainsNul => format!(
            "tool `{tool}` refused argument {index} `{}`: it contains a NUL byte",
            shown.escape_debug()
        ),
        ArgumentProblem::Missing { given } => format!(
            "tool `{tool}` needs argument {index} (its argv uses `{{{index}}}`) but {given} argument(s) were given; pass at least {}",
            index + 1
        ),
        ArgumentProblem::TooLong { bytes, max } => format!(
            "tool `{tool}` refused argument {index} `{shown}`: it is {bytes} bytes, above the tool's `max_arg_bytes` of {max}; pass a shorter one (or a workspace file), or the operator may raise `max_arg_bytes`"
        ),
        ArgumentProblem::TotalTooLong { bytes, max } => format!(
            "tool `{tool}` refused argument {index} `{shown}`: the arguments up to it are {bytes} bytes, above the tool's `max_total_arg_bytes` of {max}; pass fewer or shorter ones, or the operator may raise `max_total_arg_bytes`"
        ),
    }
}

/// A long argument as an error message shows it: its first 32 characters.
fn shown(value: &str) -> String {
    const SHOWN: usize = 32;
    match value.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_string(),
    }
}

/// One registered tool, validated.
#[derive(Clone)]
pub struct ToolSpec {
    /// The name agents call it by; unique in the registry.
    pub name: String,
    /// What it does, as shown to agents.
    pub description: String,
    /// The lowest tier that may call the tool at all.
    pub min_tier: Tier,
    /// The lowest tier for which it runs for real; tiers from `min_tier` up to this one run it
    /// in check mode.
    pub full_tier: Tier,
    /// The argv template as written.
    pub argv: Vec<String>,
    /// The check-mode argv template as written.
    pub check_argv: Option<Vec<String>>,
    /// The argument patterns as written (each is matched whole).
    pub args: Vec<String>,
    /// How many arguments it takes at most (default 0).
    pub max_args: usize,
    /// How long a run may take before it is killed (default 30 s).
    pub timeout: Duration,
    /// How much of standard output, and of standard error, is kept, in bytes (default 64 KiB).
    pub max_output_bytes: usize,
    /// What the tool may read (and execute) besides the system directories, absolute.
    pub read_paths: Vec<PathBuf>,
    /// What the tool may write besides its workspace, absolute.
    pub write_paths: Vec<PathBuf>,
    /// Whether the tool may use the network (default false: no sockets at all).
    pub network: bool,
    /// Whether running the tool twice does what running it once does (default false). A
    /// resume runs again, without asking, only an idempotent tool whose run was interrupted;
    /// for any other it stops with `RESUME_UNCERTAIN` and the operator decides.
    pub idempotent: bool,
    /// CPU time per process (`RLIMIT_CPU`), whole seconds (default: `timeout`, rounded up).
    pub cpu_time: Duration,
    /// Address space per process (`RLIMIT_AS`), in bytes (default 1 GiB).
    pub max_memory_bytes: u64,
    /// The largest file the tool may write (`RLIMIT_FSIZE`), in bytes (default 64 MiB).
    pub max_file_bytes: u64,
    /// `RLIMIT_NPROC`: processes and threads of the host's user (default 1024).
    pub max_processes: u64,
    /// The longest argument, in bytes (default 4 KiB).
    pub max_arg_bytes: usize,
    /// The longest the arguments may be together, in bytes (default 64 KiB).
    pub max_total_arg_bytes: usize,
    program: String,
    template: Template,
    check: Option<(String, Template)>,
    patterns: Vec<Regex>,
}

impl fmt::Debug for ToolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolSpec")
            .field("name", &self.name)
            .field("min_tier", &self.min_tier)
            .field("full_tier", &self.full_tier)
            .field("program", &self.program)
            .field("argv", &self.argv)
            .field("check_argv", &self.check_argv)
            .field("args", &self.args)
            .field("max_args", &self.max_args)
            .field("timeout", &self.timeout)
            .field("max_output_bytes", &self.max_output_bytes)
            .field("read_paths", &self.read_paths)
            .field("write_paths", &self.write_paths)
            .field("network", &self.network)
            .field("idempotent", &self.idempotent)
            .field("cpu_time", &self.cpu_time)
            .field("max_memory_bytes", &self.max_memory_bytes)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("max_processes", &self.max_processes)
            .field("max_arg_bytes", &self.max_arg_bytes)
            .field("max_total_arg_bytes", &self.max_total_arg_bytes)
            .finish_non_exhaustive()
    }
}

impl ToolSpec {
    /// The absolute path of the program, resolved on `PATH` at load when written bare.
    pub fn program(&self) -> &str {
        &self.program
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    confinement: Confinement,
    #[serde(default, rename = "tool")]
    tools: Vec<RawTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: String,
    description: String,
    min_tier: Tier,
    full_tier: Tier,
    argv: Vec<String>,
    check_argv: Option<Vec<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    max_args: usize,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    timeout: Option<Duration>,
    /// The old form of `timeout`, refused with the new one.
    timeout_ms: Option<u64>,
    max_output_bytes: Option<usize>,
    #[serde(default)]
    read_paths: Vec<PathBuf>,
    #[serde(default)]
    write_paths: Vec<PathBuf>,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    idempotent: bool,
    #[serde(default, deserialize_with = "crate::duration::de_opt")]
    cpu_time: Option<Duration>,
    max_memory_bytes: Option<u64>,
    max_file_bytes: Option<u64>,
    max_processes: Option<u64>,
    max_arg_bytes: Option<usize>,
    max_total_arg_bytes: Option<usize>,
}

/// The tools of a host, in registry order, and how they run.
#[derive(Debug, Clone, Default)]
pub struct ToolRegistry {
    tools: Vec<ToolSpec>,
    confinement: Confinement,
    sandbox_helper: Option<PathBuf>,
}

impl ToolRegistry {
    /// A registry without tools: every call is `NotFound`.
    pub fn empty() -> Self {
        ToolRegistry::default()
    }

    /// Run tools through the sandbox helper at `path` instead of looking for it. Without it a
    /// call looks, in order, at the `WARDEN_TOOL_SANDBOX` environment variable, then beside
    /// the running executable and in its parent directory (where `cargo` puts it for test
    /// binaries) for `warden-tool-sandbox`.
    pub fn with_sandbox_helper(mut self, path: impl Into<PathBuf>) -> Self {
        self.sandbox_helper = Some(path.into());
        self
    }

    /// How the tools run: the tools file's `confinement` (default
    /// [`Confinement::Landlock`]).
    pub fn confinement(&self) -> Confinement {
        self.confinement
    }

    /// Load and validate a registry file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ToolsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ToolsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::load(&text, &format!("`{}`", path.display()))
    }

    /// Load and validate registry TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, ToolsError> {
        Self::load(text, "(inline)")
    }

    fn load(text: &str, origin: &str) -> Result<Self, ToolsError> {
        let file: RegistryFile = toml::from_str(text).map_err(|error| ToolsError::Parse {
            origin: origin.to_string(),
            tool: failing_tool(text),
            message: toml_error(text, &error),
        })?;
        let mut tools: Vec<ToolSpec> = Vec::with_capacity(file.tools.len());
        for raw in file.tools {
            let spec = validate(raw, origin)?;
            if tools.iter().any(|t| t.name == spec.name) {
                return Err(ToolsError::Invalid {
                    origin: origin.to_string(),
                    tool: spec.name,
                    field: "name",
                    message: "the name is registered twice; tool names must be unique".into(),
                });
            }
            tools.push(spec);
        }
        if file.confinement == Confinement::Unconfined {
            tracing::warn!(
                registry = origin,
                "tools run UNCONFINED (`confinement = \"none\"`): a tool can read and write whatever the host's user can, and reach the network; every tool output says `confined: false`"
            );
        }
        Ok(ToolRegistry {
            tools,
            confinement: file.confinement,
            sandbox_helper: None,
        })
    }

    /// Every tool, in registry order.
    pub fn tools(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.iter()
    }

    /// The tool named `name`; `None` if none is registered.
    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The number of registered tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Check a call of tool `name` with `args` by a caller of tier `caller` and render what
    /// it will run. Check mode is decided here: `caller < full_tier`.
    pub fn prepare(
        &self,
        name: &str,
        args: &[String],
        caller: Tier,
    ) -> Result<Invocation, ToolsError> {
        self.prepare_with(name, args, caller, false)
    }

    /// [`ToolRegistry::prepare`], in check mode whatever the tier when `check_only` (PLAN,
    /// before the approval gate).
    pub fn prepare_with(
        &self,
        name: &str,
        args: &[String],
        caller: Tier,
        check_only: bool,
    ) -> Result<Invocation, ToolsError> {
        let Some(spec) = self.get(name) else {
            return Err(ToolsError::NotFound {
                tool: name.to_string(),
                tier: caller,
                known: self
                    .tools
                    .iter()
                    .filter(|t| t.min_tier <= caller)
                    .map(|t| t.name.clone())
                    .collect(),
            });
        };
        if caller < spec.min_tier {
            return Err(ToolsError::Denied {
                tool: spec.name.clone(),
                tier: caller,
                lowest: spec.min_tier,
            });
        }
        let refuse = |index: usize, value: Option<&String>, problem| ToolsError::InvalidArgument {
            tool: spec.name.clone(),
            index,
            value: value.cloned(),
            patterns: spec.args.clone(),
            problem,
        };
        if let Some(extra) = args.get(spec.max_args) {
            return Err(refuse(
                spec.max_args,
                Some(extra),
                ArgumentProblem::TooMany { max: spec.max_args },
            ));
        }
        let mut total = 0;
        for (index, arg) in args.iter().enumerate() {
            total += arg.len();
            if arg.len() > spec.max_arg_bytes {
                return Err(refuse(
                    index,
                    Some(arg),
                    ArgumentProblem::TooLong {
                        bytes: arg.len(),
                        max: spec.max_arg_bytes,
                    },
                ));
            }
            if total > spec.max_total_arg_bytes {
                return Err(refuse(
                    index,
                    Some(arg),
                    ArgumentProblem::TotalTooLong {
                        bytes: total,
                        max: spec.max_total_arg_bytes,
                    },
                ));
            }
            if arg.contains('\0') {
                return Err(refuse(index, Some(arg), ArgumentProblem::ContainsNul));
            }
            if !spec.patterns.iter().any(|p| p.is_match(arg)) {
                return Err(refuse(index, Some(arg), ArgumentProblem::NoMatch));
            }
        }
        let render = |program: &str, template: &Template| {
            template.render(program, args).map_err(|index| {
                refuse(index, None, ArgumentProblem::Missing { given: args.len() })
            })
        };
        let argv = render(&spec.program, &spec.template)?;
        let check_mode = check_only || caller < spec.full_tier;
        let (argv, executes) = match (&spec.check, check_mode) {
            (Some((program, template)), true) => (render(program, template)?, true),
            (None, true) => (argv, false),
            (_, false) => (argv, true),
        };
        let sandbox = match self.confinement {
            Confinement::Landlock => Some(run::Sandbox {
                helper: self.sandbox_helper.clone(),
                read: spec.read_paths.clone(),
                write: spec.write_paths.clone(),
                network: spec.network,
                limits: sandbox::Limits {
                    cpu_seconds: spec.cpu_time.as_secs(),
                    memory_bytes: spec.max_memory_bytes,
                    file_bytes: spec.max_file_bytes,
                    processes: spec.max_processes,
                },
            }),
            Confinement::Unconfined => None,
        };
        Ok(Invocation {
            tool: spec.name.clone(),
            args: args.to_vec(),
            argv,
            check_mode,
            executes,
            timeout: spec.timeout,
            max_output_bytes: spec.max_output_bytes,
            sandbox,
        })
    }
}

/// The first `[[tool]]` that does not parse on its own, named for the error message (the TOML
/// error has the line but not the tool).
fn failing_tool(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let tools = table.get("tool")?.as_array()?;
    tools.iter().enumerate().find_map(|(index, tool)| {
        tool.clone().try_into::<RawTool>().err()?;
        Some(match tool.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("`{name}`"),
            None => format!("#{}", index + 1),
        })
    })
}

/// A TOML error on one line, `line L, column C: message`, for logs and the ledger (toml's own
/// rendering spans several lines).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(before) = error.span().and_then(|span| text.get(..span.start)) else {
        return message.to_string();
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

fn validate(raw: RawTool, origin: &str) -> Result<ToolSpec, ToolsError> {
    let invalid = |field: &'static str, message: String| ToolsError::Invalid {
        origin: origin.to_string(),
        tool: raw.name.clone(),
        field,
        message,
    };
    let name_ok = raw
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !name_ok {
        return Err(invalid(
            "name",
            "a name is a letter or digit followed by letters, digits, `.`, `_` or `-`".into(),
        ));
    }
    if raw.full_tier < raw.min_tier {
        return Err(invalid(
            "full_tier",
            format!(
                "{} is below `min_tier` {}; `full_tier` must be at least `min_tier`",
                raw.full_tier, raw.min_tier
            ),
        ));
    }
    let (program, template) = command(&raw.argv, raw.max_args).map_err(|m| invalid("argv", m))?;
    let check = raw
        .check_argv
        .as_deref()
        .map(|argv| command(argv, raw.max_args))
        .transpose()
        .map_err(|m| invalid("check_argv", m))?;
    let patterns = raw
        .args
        .iter()
        .enumerate()
        .map(|(index, pattern)| {
            Regex::new(&format!(r"\A(?:{pattern})\z")).map_err(|error| {
                invalid(
                    "args",
                    format!("pattern {index} `{pattern}` is not a valid regex: {error}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if raw.max_args > 0 && patterns.is_empty() {
        return Err(invalid(
            "args",
            format!(
                "`max_args` is {} but no pattern is given, so no argument could be accepted; list the patterns arguments must match",
                raw.max_args
            ),
        ));
    }
    if raw.max_args == 0 && !patterns.is_empty() {
        return Err(invalid(
            "max_args",
            "patterns are given but `max_args` is 0 (the default), so no argument is accepted; set how many arguments the tool takes".into(),
        ));
    }
    if let Some(ms) = raw.timeout_ms {
        return Err(invalid(
            "timeout_ms",
            crate::duration::old_key("timeout_ms", ms),
        ));
    }
    let timeout = match raw.timeout {
        None => DEFAULT_TIMEOUT,
        Some(timeout) if timeout < Duration::from_millis(1) => {
            return Err(invalid(
                "timeout",
                "it is 0, which would kill every run at once; use at least `1ms`".into(),
            ));
        }
        Some(timeout) => timeout,
    };
    let max_output_bytes = raw.max_output_bytes.unwrap_or(DEFAULT_MAX_OUTPUT_BYTES);
    if max_output_bytes > MAX_OUTPUT_BYTES_LIMIT {
        return Err(invalid(
            "max_output_bytes",
            format!(
                "{max_output_bytes} is above the limit of {MAX_OUTPUT_BYTES_LIMIT}; output is held in memory"
            ),
        ));
    }
    for (field, paths) in [
        ("read_paths", &raw.read_paths),
        ("write_paths", &raw.write_paths),
    ] {
        for path in paths {
            if !path.is_absolute() {
                return Err(invalid(
                    field,
                    format!(
                        "`{}` is not an absolute path; list absolute paths, e.g. `/usr/share/dict`",
                        path.display()
                    ),
                ));
            }
            if let Err(error) = std::fs::metadata(path) {
                return Err(invalid(
                    field,
                    format!(
                        "`{}` cannot be used: {error}; list paths that exist when the registry is loaded",
                        path.display()
                    ),
                ));
            }
        }
    }
    let cpu_time = match raw.cpu_time {
        None => whole_seconds(timeout),
        Some(cpu_time) if cpu_time < Duration::from_millis(1) => {
            return Err(invalid(
                "cpu_time",
                "it is 0, which would kill every run at once; use at least `1s`".into(),
            ));
        }
        Some(cpu_time) => whole_seconds(cpu_time),
    };
    let max_memory_bytes = raw.max_memory_bytes.unwrap_or(DEFAULT_MAX_MEMORY_BYTES);
    if max_memory_bytes < MIN_MEMORY_BYTES {
        return Err(invalid(
            "max_memory_bytes",
            format!(
                "{max_memory_bytes} is below {MIN_MEMORY_BYTES}, too little address space to load a program; give at least that"
            ),
        ));
    }
    let max_processes = raw.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES);
    let bounded =
        |field: &'static str, value: Option<usize>, default: usize, limit: usize| match value
            .unwrap_or(default)
        {
            0 => Err(invalid(
                field,
                "it is 0, which would refuse every argument; use at least 1".into(),
            )),
            value if value > limit => Err(invalid(
                field,
                format!("{value} is above the limit of {limit}"),
            )),
            value => Ok(value),
        };
    let max_arg_bytes = bounded(
        "max_arg_bytes",
        raw.max_arg_bytes,
        DEFAULT_MAX_ARG_BYTES,
        MAX_ARG_BYTES_LIMIT,
    )?;
    let max_total_arg_bytes = bounded(
        "max_total_arg_bytes",
        raw.max_total_arg_bytes,
        DEFAULT_MAX_TOTAL_ARG_BYTES,
        MAX_TOTAL_ARG_BYTES_LIMIT,
    )?;
    Ok(ToolSpec {
        name: raw.name,
        description: raw.description,
        min_tier: raw.min_tier,
        full_tier: raw.full_tier,
        argv: raw.argv,
        check_argv: raw.check_argv,
        args: raw.args,
        max_args: raw.max_args,
        timeout,
        max_output_bytes,
        read_paths: raw.read_paths,
        write_paths: raw.write_paths,
        network: raw.network,
        idempotent: raw.idempotent,
        cpu_time,
        max_memory_bytes,
        max_file_bytes: raw.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES),
        max_processes,
        max_arg_bytes,
        max_total_arg_bytes,
        program,
        template,
        check,
        patterns,
    })
}

/// A duration rounded up to whole seconds, at least one: `RLIMIT_CPU` counts seconds.
fn whole_seconds(duration: Duration) -> Duration {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(seconds.max(1))
}

/// Parse an argv template and resolve its program; placeholders must be within `max_args`.
fn command(argv: &[String], max_args: usize) -> Result<(String, Template), String> {
    if argv.is_empty() {
        return Err("it is empty; give the program and its arguments, e.g. `[\"/usr/bin/wc\", \"-w\", \"{0}\"]`".into());
    }
    let template = Template::parse(argv)?;
    let Some(program) = template.literal_program() else {
        return Err(format!(
            "the program `{}` has a placeholder; the program must be fixed",
            argv[0]
        ));
    };
    if let Some(highest) = template.max_index().filter(|&i| i >= max_args) {
        let usable = match max_args {
            0 => String::new(),
            1 => " or use only `{0}`".to_string(),
            n => format!(" or use only `{{0}}`..`{{{}}}`", n - 1),
        };
        return Err(format!(
            "`{{{highest}}}` refers to argument {highest}, but `max_args` is {max_args}, so it could never be given; raise `max_args`{usable}"
        ));
    }
    let program = resolve_program(&program)?;
    Ok((program, template))
}

/// An absolute path to an executable file, or a bare name found on the host's `PATH` now, so
/// that what runs never depends on the environment at call time.
fn resolve_program(program: &str) -> Result<String, String> {
    let path = Path::new(program);
    if path.is_absolute() {
        return if is_executable(path) {
            Ok(program.to_string())
        } else {
            Err(format!("the program `{program}` is not an executable file"))
        };
    }
    if program.is_empty() || program.contains('/') {
        return Err(format!(
            "the program `{program}` is neither an absolute path nor a bare name to look up on PATH"
        ));
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let found = std::env::split_paths(&search)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "the program `{program}` is not on PATH `{}`; give its absolute path",
                search.to_string_lossy()
            )
        })?;
    found.into_os_string().into_string().map_err(|path| {
        format!(
            "the program `{program}` resolves to `{}`, which is not UTF-8; give an absolute UTF-8 path",
            path.to_string_lossy()
        )
    })
}

fn is_executable(path: &Path) -> bool {
    let Ok(metadata) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        metadata.is_file()
    }
}

#[cfg(test)]
mod tests;
