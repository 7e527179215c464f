//! `warden`: run, inspect and govern agents from the shell. Human output by default, `--json`
//! everywhere. Exit codes: 0 success, 1 error, 2 usage, 3 refused, 4 revoked, 5 failed.

mod output;
mod pipeline;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sha2::Digest as _;

use warden::config::{Connect, HOST_IDENTITY, WardenConfig};
use warden::ledger::{LedgerQuery, Table};
use warden::secrets::VaultSecrets;
use warden::{AgentId, Error, Host, Packet, RunOutcome, Tier};

/// Exit codes that mean something to scripts.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const REFUSED: u8 = 3;
    pub const REVOKED: u8 = 4;
    pub const FAILED: u8 = 5;
}

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Governance runtime for AI agents running as WebAssembly components"
)]
struct Cli {
    /// Data directory (ledger, state, secrets, artifacts, compiled-component cache).
    #[arg(long, global = true, env = "WARDEN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (default: `warden.toml` in the current directory, if present).
    #[arg(long, global = true, env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
    /// Runtime state in Redis/DragonflyDB (`redis://host:port/db`); default: embedded.
    #[arg(long, global = true, env = "WARDEN_REDIS_URL")]
    state: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register, inspect, promote and revoke agents.
    #[command(subcommand)]
    Agents(AgentsCommand),
    /// Run an agent's governed lifecycle. The agent is the packet's `agent_id`; its tier
    /// comes from its registration, never from a flag.
    ///
    /// Example: `warden run target/wasm32-wasip2/release/hello.wasm --packet hello.json`
    Run {
        /// The agent's component (`.wasm`, built for wasm32-wasip2).
        component: PathBuf,
        /// The instruction packet (JSON).
        #[arg(long)]
        packet: PathBuf,
    },
    /// List runs and show one: its phases with their checkpoints, status, attempts and where
    /// it stopped.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Re-execute a recorded run offline against its journal (no state, secrets, LLM or tool
    /// is touched) and report, per phase, whether it is identical. Exit 5 when it diverges.
    ///
    /// Example: `warden replay run-0192f1… --component target/agent.wasm --allow-other-digest`
    Replay {
        /// The run id (`warden runs list`).
        run: warden::RunId,
        /// The component to run (default: the one that ran, from the blob store).
        #[arg(long)]
        component: Option<PathBuf>,
        /// Replay a component whose digest is not the recorded one: a new build against a
        /// recorded run, reported at the first call where it behaves differently.
        #[arg(long)]
        allow_other_digest: bool,
    },
    /// Resume an interrupted run (its process was killed, its machine lost): every recorded
    /// answer is fed back in order, so no effect repeats, and the run goes live past them.
    /// Refused while the run's process may be alive (`RUN_STILL_ACTIVE`), and when the run
    /// was killed while a tool that is not `idempotent = true` ran (`RESUME_UNCERTAIN`,
    /// naming the call): the operator then decides with `--assume-done` or `--rerun`.
    ///
    /// Example: `warden resume run-0192f1…`, `warden resume run-0192f1… --assume-done 14`
    Resume {
        /// The run id (`warden runs list --status running`).
        run: warden::RunId,
        /// The interrupted tool call (its number, as `RESUME_UNCERTAIN` names it) took
        /// effect: it is not run again, and the guest gets an empty output. Recorded.
        #[arg(long, value_name = "CALL", conflicts_with = "rerun")]
        assume_done: Option<u64>,
        /// Run the interrupted tool call (its number) again. Recorded.
        #[arg(long, value_name = "CALL")]
        rerun: Option<u64>,
    },
    /// Approve a task's run that waits at the approval gate.
    ///
    /// Example: `warden approve task-42 --by alice`
    Approve {
        /// The task whose run waits.
        task: String,
        /// Who approves (recorded).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Read and verify the audit ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Handoff objects left by revoked agents.
    #[command(subcommand)]
    Handoff(HandoffCommand),
    /// Compile a component into the cache and show its digest, its imports and the lowest
    /// tier that can run it.
    ///
    /// Example: `warden compile target/wasm32-wasip2/release/hello.wasm`
    Compile {
        /// The component (`.wasm`).
        component: PathBuf,
    },
    /// Sign a component with an ed25519 secret key, in the wasm-signatures custom-section
    /// format (`wasmsign2 verify` checks it too). A signature it had is replaced; the digest
    /// changes, so register the signed component.
    ///
    /// Example: `warden sign target/agent.wasm --key release.key`
    Sign {
        /// The component (`.wasm`).
        component: PathBuf,
        /// The secret key (`warden keys generate` writes `<name>.key`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed component (default: over the input, atomically).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a component's signature against the trusted keys (`keys/*.pub` beside the tier
    /// table). Exit 3 unless a trusted key signed it.
    ///
    /// Example: `warden verify target/agent.wasm`
    Verify {
        /// The component (`.wasm`).
        component: PathBuf,
    },
    /// Signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell completion script (clap_complete) to stdout.
    ///
    /// Example: `warden completions bash > ~/.local/share/bash-completion/completions/warden`,
    /// `warden completions zsh > "${fpath[1]}/_warden"`
    Completions {
        /// The shell: bash, elvish, fish, powershell or zsh.
        shell: clap_complete::Shell,
    },
    /// Operator access to the secrets store.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Vault/OpenBao administration.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Check every configured backend (state, secrets, llm).
    ///
    /// Example: `warden --state redis://127.0.0.1:6379/0 health`
    Health,
    /// Run a multi-agent task: the agents in parallel, the mediator spawned once when a
    /// condition (STUCK, CONFLICT, COMPLEXITY, SUCCESS) fires; prints the task's metrics.
    /// Thresholds come from `[orchestrator]` in warden.toml. Exit 5 unless every agent
    /// completed. `--resume <task>` goes on with a task whose host was killed: every
    /// interrupted agent resumes, the others start or keep their result, the conditions are
    /// watched again.
    ///
    /// Example: `warden orchestrate "design the ingest path" --agents alpha,beta --mediator gamma`
    Orchestrate {
        /// What the task is to achieve (not with `--resume`: the task keeps its own).
        #[arg(required_unless_present = "resume")]
        objective: Option<String>,
        /// Registered agents to run in parallel (comma-separated).
        #[arg(long, value_delimiter = ',', required_unless_present = "resume")]
        agents: Vec<String>,
        /// Resume interrupted task TASK as it was started (its agents, mediator and
        /// thresholds); refused for a task that ended or is still running.
        #[arg(long, value_name = "TASK", conflicts_with_all = [
            "objective", "agents", "mediator", "task", "timeout", "complexity", "max_parallel",
            "quorum", "proposer_votes"
        ])]
        resume: Option<String>,
        /// With `--resume`: run RUN of the task was interrupted in tool call CALL and it
        /// took effect (as `warden resume --assume-done`); repeatable. Recorded.
        #[arg(long, value_name = "RUN:CALL", requires = "resume", value_parser = run_call)]
        assume_done: Vec<(warden::RunId, u64)>,
        /// With `--resume`: run tool call CALL of run RUN again (as `warden resume --rerun`);
        /// repeatable. Recorded.
        #[arg(long, value_name = "RUN:CALL", requires = "resume", value_parser = run_call)]
        rerun: Vec<(warden::RunId, u64)>,
        /// The registered agent to spawn when a condition fires.
        #[arg(long)]
        mediator: Option<String>,
        /// Task id (default: `task-<random>`).
        #[arg(long)]
        task: Option<String>,
        /// Seconds the whole task may take (default 120).
        #[arg(long)]
        timeout: Option<u64>,
        /// Initial complexity score, written to the blackboard.
        #[arg(long)]
        complexity: Option<f64>,
        /// Run at most this many agents at once (default: all).
        #[arg(long)]
        max_parallel: Option<usize>,
        /// Votes a proposal needs before it can reach consensus (default 2).
        #[arg(long)]
        quorum: Option<u32>,
        /// Let a proposer vote on its own proposals, and count that vote (default: off).
        #[arg(long)]
        proposer_votes: bool,
    },
    /// A task's blackboard, messages and proposals with their tallies.
    #[command(subcommand)]
    Task(TaskCommand),
    /// A task's artifacts: what its agents (and the host: `plan.json`, `report.json`) wrote.
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
    /// Pipelines: stages of agents, human gates and multi-agent tasks, from a YAML file
    /// (`docs/pipelines.md`), run durably.
    #[command(subcommand)]
    Pipeline(pipeline::PipelineCommand),
    /// Take pipeline runs queued with `warden pipeline run --queue` from the Redis of
    /// `--state` (a consumer group of a stream): several workers share the queue, and a run
    /// whose worker stopped (no heartbeat for `--claim-after`) is taken over and resumed.
    ///
    /// Example: `warden --state redis://127.0.0.1:6379/0 worker --name w1`
    Worker {
        /// The worker's name in the group (default: `<machine>-<pid>`).
        #[arg(long)]
        name: Option<String>,
        /// A run whose worker sent no heartbeat for this long is taken over.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        claim_after: Duration,
        /// How often this worker marks its run as alive.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        heartbeat: Duration,
        /// Stop after this many runs.
        #[arg(long)]
        max_runs: Option<usize>,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Runs, newest first.
    ///
    /// Example: `warden runs list --agent hello --status running`
    List {
        /// Only runs of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only runs with this status: `running`, `completed`, `failed`, `revoked`.
        #[arg(long, value_parser = ["running", "completed", "failed", "revoked"])]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run: status, attempts, the phases it entered and when, where it stopped.
    ///
    /// Example: `warden runs show run-0192f1…`
    Show {
        /// The run id.
        run: warden::RunId,
    },
}

#[derive(Subcommand)]
enum TaskCommand {
    /// Show the blackboard, the proposals with their tallies, and the messages of a task.
    ///
    /// Example: `warden task show task-42`
    Show {
        /// The task.
        task: String,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Enable AppRole and the KV v2 mount, write the tier policies, and create one AppRole
    /// per registered agent with its tier's policies and token TTL.
    ///
    /// Example: `warden vault setup --policies policies/vault`
    Setup {
        /// Directory of `t0-observer.hcl` … `t4-architect.hcl`.
        #[arg(long, default_value = "policies/vault")]
        policies: PathBuf,
    },
}

#[derive(Subcommand)]
enum ArtifactsCommand {
    /// The latest version of each artifact of a task, by name: size, author, digest.
    ///
    /// Example: `warden artifacts list task-42`
    List {
        /// The task.
        task: String,
        /// Start after this name (paging).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// An artifact's content, verified against its digest: to `--output`, or to stdout
    /// (exact bytes into a pipe; escaped text on a terminal, since an agent wrote it).
    ///
    /// Example: `warden artifacts get task-42 report.json -o report.json`
    Get {
        /// The task.
        task: String,
        /// The artifact's name.
        name: String,
        /// Write the content to this file instead.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Generate an ed25519 key pair: `<name>.key` (secret, mode 0600) and `<name>.pub`.
    /// Trust it by putting `<name>.pub` in `keys/` beside the tier table and naming it in a
    /// tier's `signed_by`. Never overwrites a key.
    ///
    /// Example: `warden keys generate release --dir ~/.warden-keys`
    Generate {
        /// The key's name: 1 to 64 of a-z, 0-9, `-`, `_`.
        name: String,
        /// The directory to write both files to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// The trusted keys (`keys/*.pub` beside the tier table), with their fingerprints.
    ///
    /// Example: `warden keys list`
    List,
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Register an agent (or re-register it: a tier or component change is recorded).
    ///
    /// Example: `warden agents register hello --tier T1 --component hello.wasm`
    Register {
        /// The agent id (`[a-z0-9_-]`, as the packet's `agent_id`).
        id: String,
        /// T0..T4 or observer, operator, builder, executor, architect.
        #[arg(long)]
        tier: Tier,
        /// Bind the agent to this component's digest.
        #[arg(long)]
        component: Option<PathBuf>,
        /// Who does it (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// List registered agents.
    ///
    /// Example: `warden agents list`
    List,
    /// Show one agent: registration, metrics, revocation, lock holder, signer.
    ///
    /// Example: `warden agents show hello`
    Show {
        /// The agent id (`[a-z0-9_-]`, as the packet's `agent_id`).
        id: AgentId,
    },
    /// An agent's history, newest first: runs, violations and tier changes (with the rule or
    /// person behind each).
    ///
    /// Example: `warden agents history hello --limit 20`
    History {
        /// The agent id.
        id: AgentId,
        /// At most this many of each.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Tier changes architects proposed (T4 `governance`), newest first, with their status.
    ///
    /// Example: `warden agents changes`
    Changes,
    /// Approve a proposed tier change (`--reject` to refuse it): decided once, by a person,
    /// recorded with who decided and the proposal it came from.
    ///
    /// Example: `warden agents approve-change tc-0193… --comment "agreed in review"`
    ApproveChange {
        /// The request id (`warden agents changes`).
        request: String,
        /// Reject the request instead.
        #[arg(long)]
        reject: bool,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        comment: String,
        /// Who decides (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Change an agent's tier (recorded in `promotions`).
    ///
    /// Example: `warden agents promote hello --tier T2 --reason "30 compliant runs"`
    Promote {
        /// The agent id (`[a-z0-9_-]`, as the packet's `agent_id`).
        id: String,
        /// The new tier: T0..T4 or observer, operator, builder, executor, architect.
        #[arg(long)]
        tier: Tier,
        /// Why (recorded).
        #[arg(long, default_value = "operator decision")]
        reason: String,
        /// Who does it (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Lift an agent's revocation: the only act that does, recorded with who and why.
    ///
    /// Example: `warden agents reinstate hello --reason "fixed the tool list"`
    Reinstate {
        /// The agent id (`[a-z0-9_-]`, as the packet's `agent_id`).
        id: String,
        /// Why the agent may run again (recorded).
        #[arg(long)]
        reason: String,
        /// Who does it (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Revoke an agent: a running instance stops; every later bootstrap refuses it.
    ///
    /// Example: `warden agents revoke hello --reason "leaked a token"`
    Revoke {
        /// The agent id (`[a-z0-9_-]`, as the packet's `agent_id`).
        id: String,
        /// Why (recorded, and in the handoff).
        #[arg(long, default_value = "revoked by operator")]
        reason: String,
        /// Who does it (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// The newest rows.
    ///
    /// Example: `warden ledger tail -n 50`
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Rows matching filters, oldest first (`--desc`: newest first), a page at a time.
    ///
    /// Example: `warden ledger query --agent hello --table violations --since 1h --desc`
    Query(QueryArgs),
    /// Recompute the hash chain; exit 5 if any row was altered, removed or reordered.
    ///
    /// Example: `warden --json ledger verify`
    Verify,
}

#[derive(Args)]
struct QueryArgs {
    /// Only rows of this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Only rows of this task.
    #[arg(long)]
    task: Option<String>,
    /// agent_actions, violations, promotions or agent_metrics.
    #[arg(long)]
    table: Option<Table>,
    /// Action or violation type.
    #[arg(long)]
    kind: Option<String>,
    /// Only rows written at or after this: an RFC 3339 time (`2026-12-03T12:00:00Z`) or a
    /// duration ago (`10m`, `2h`, `7d`).
    #[arg(long, value_parser = since)]
    since: Option<String>,
    /// Newest first.
    #[arg(long)]
    desc: bool,
    /// Skip this many rows before the first shown (paging with `--limit`).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// `--since`: the earliest timestamp, written as the ledger stamps rows.
fn since(value: &str) -> std::result::Result<String, String> {
    let at = match humantime::parse_rfc3339_weak(value) {
        Ok(at) => at,
        Err(_) => {
            let ago = humantime::parse_duration(value).map_err(|_| {
                format!("`{value}` is neither an RFC 3339 time (`2026-12-03T12:00:00Z`) nor a duration ago (`10m`, `2h`, `7d`)")
            })?;
            std::time::SystemTime::now()
                .checked_sub(ago)
                .ok_or_else(|| format!("`{value}` ago is before the epoch"))?
        }
    };
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

#[derive(Subcommand)]
enum HandoffCommand {
    /// The latest handoff of a task.
    ///
    /// Example: `warden handoff show task-42`
    Show {
        /// The task.
        task: String,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Store a secret (the value is read from stdin when `--value` is absent).
    ///
    /// Example: `printf %s "$TOKEN" | warden secrets set t3/github-token`
    Set {
        /// The secret's path (`t3/github-token`).
        path: String,
        /// The value (it ends up in shell history: prefer stdin).
        #[arg(long)]
        value: Option<String>,
    },
    /// List secret paths (never values).
    ///
    /// Example: `warden secrets list`
    List,
}

fn default_actor() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_string())
}

pub fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, and never when NO_COLOR is set
        // (https://no-color.org): a log file or a `--json` consumer gets plain text.
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .init();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::ERROR);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            let code = match error.downcast_ref::<Error>() {
                Some(Error::Refused(_) | Error::Resume(_) | Error::Pipeline(_)) => exit::REFUSED,
                _ => exit::ERROR,
            };
            if json {
                output::emit(
                    &json!({ "error": error_text(&error), "code": error_code(&error) }).to_string(),
                );
            } else {
                eprintln!("error: {}", output::escape(&error_text(&error)));
            }
            ExitCode::from(code)
        }
    }
}

/// A command that reads the record was pointed at a data directory with no ledger.
#[derive(Debug, thiserror::Error)]
#[error(
    "no ledger in data directory `{dir}` (`{path}` does not exist): check `--data-dir`, `WARDEN_DATA_DIR` or `data_dir` in warden.toml; the commands that record (`agents register`, `run`, `orchestrate`) create it"
)]
struct NoLedger {
    dir: String,
    path: String,
}

/// The stable code of a command's error: the library's ([`Error::code`]), or the class of
/// one raised at the CLI's edge.
fn error_code(error: &anyhow::Error) -> &'static str {
    if let Some(error) = error.downcast_ref::<Error>() {
        return error.code();
    }
    if error.downcast_ref::<NoLedger>().is_some() {
        return "NO_LEDGER";
    }
    if error
        .downcast_ref::<warden::signing::SigningError>()
        .is_some()
    {
        return "SIGNING_FAILED";
    }
    if error
        .downcast_ref::<warden::ledger::LedgerError>()
        .is_some()
    {
        return "LEDGER_UNAVAILABLE";
    }
    if error.downcast_ref::<std::io::Error>().is_some() {
        return "IO_ERROR";
    }
    "ERROR"
}

/// Parse the command line; under `--json` a usage error is a JSON object on stdout
/// (`code` `USAGE`, exit 2) like every other error, and help and version print as usual.
fn parse() -> std::result::Result<Cli, u8> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) => {
            use clap::error::ErrorKind;
            let wants_json = std::env::args_os().any(|a| a == "--json");
            let usage = !matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            );
            if wants_json && usage {
                let text = error.render().to_string();
                // The error's paragraph (before `Usage:`), on one line.
                let paragraph = text.split("\n\n").next().unwrap_or_default();
                let paragraph = paragraph.strip_prefix("error: ").unwrap_or(paragraph);
                let message = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
                output::emit(
                    &json!({ "error": message, "code": "USAGE", "usage": text.trim_end() })
                        .to_string(),
                );
                return Err(2);
            }
            error.exit()
        }
    }
}

/// Whether log lines are coloured: on a terminal, unless `NO_COLOR` is set to anything but
/// the empty string.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// The error and its causes in one sentence: a cause whose text the message already
/// carries (most of ours quote their source) is not repeated.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

struct Env {
    config: WardenConfig,
    data_dir: PathBuf,
    state: Option<String>,
    json: bool,
}

impl Env {
    fn new(cli: &Cli) -> Result<Env> {
        let config = match &cli.config {
            Some(path) => WardenConfig::load(path)?,
            None => WardenConfig::discover()?,
        };
        let data_dir = cli
            .data_dir
            .clone()
            .or_else(|| config.data_dir.as_ref().map(|d| config.resolve(d)))
            .unwrap_or_else(|| PathBuf::from(".warden"));
        Ok(Env {
            state: config.state_url(cli.state.as_deref()),
            config,
            data_dir,
            json: cli.json,
        })
    }

    /// A host over a data directory that holds a ledger already: what a command that reads
    /// the record uses, so a mistyped `--data-dir` is an error, not an empty store that
    /// "verifies" with 0 rows.
    async fn recorded_host(&self) -> Result<Host> {
        self.existing_ledger()?;
        self.host().await
    }

    /// The data directory's ledger file, which must exist.
    fn existing_ledger(&self) -> Result<PathBuf> {
        let path = self.data_dir.join("ledger.db");
        if !path.exists() {
            return Err(NoLedger {
                dir: self.data_dir.display().to_string(),
                path: path.display().to_string(),
            }
            .into());
        }
        Ok(path)
    }

    /// The data directory's ledger, opened for reading only: what `ledger` commands read,
    /// so they work on a read-only copy and touch nothing else (state, secrets).
    fn recorded_ledger(&self) -> Result<warden::ledger::Ledger> {
        Ok(warden::ledger::Ledger::open_read_only(
            &self.existing_ledger()?,
        )?)
    }

    /// The tier table the configuration names.
    fn tier_table(&self) -> Result<warden::TierTable> {
        Ok(self.config.tier_table()?)
    }

    async fn host(&self) -> Result<Host> {
        // Networked backends are contacted at first use, so one that is down is a refusal of
        // the command that needs it (`STATE_UNAVAILABLE`), recorded, not a failure to start.
        self.build_host(Connect::Lazily).await
    }

    /// With [`Connect::Lazily`], networked backends are not contacted while building, so a
    /// host can be built to report that they are down (`warden health`).
    async fn build_host(&self, connect: Connect) -> Result<Host> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!("cannot create data directory `{}`", self.data_dir.display())
        })?;
        let builder = self
            .config
            .builder_with(Some(self.data_dir.clone()), self.state.as_deref(), connect)
            .await?;
        Ok(builder.build()?)
    }
}

/// `RUN:CALL` of `orchestrate --resume --assume-done/--rerun`.
fn run_call(value: &str) -> std::result::Result<(warden::RunId, u64), String> {
    let (run, call) = value.rsplit_once(':').ok_or_else(|| {
        format!("`{value}` is not RUN:CALL (a run id, a colon, the call's number, as RESUME_UNCERTAIN names them)")
    })?;
    let run = warden::RunId::new(run).map_err(|e| e.to_string())?;
    let call = call.parse().map_err(|_| {
        format!("`{call}` in `{value}` is not a call number (a whole number from 1)")
    })?;
    Ok((run, call))
}

async fn dispatch(cli: Cli) -> Result<u8> {
    // Completions need no configuration: a broken warden.toml does not stop them.
    if let Command::Completions { shell } = cli.command {
        return Ok(completions(shell));
    }
    let cx = Env::new(&cli)?;
    match cli.command {
        Command::Completions { shell } => Ok(completions(shell)),
        Command::Agents(command) => agents(&cx, command).await,
        Command::Run { component, packet } => run(&cx, &component, &packet).await,
        Command::Runs(command) => runs(&cx, command).await,
        Command::Resume {
            run,
            assume_done,
            rerun,
        } => {
            let host = cx.recorded_host().await?;
            let decision = assume_done
                .map(warden::resume::Decision::AssumeDone)
                .or(rerun.map(warden::resume::Decision::Rerun));
            let options = warden::resume::ResumeOptions { decision };
            let report = host.resume_with(&run, options).await?;
            output::run_report(cx.json, &report);
            Ok(run_exit(&report.outcome))
        }
        Command::Replay {
            run,
            component,
            allow_other_digest,
        } => replay(&cx, &run, component.as_deref(), allow_other_digest).await,
        Command::Approve { task, by } => {
            let host = cx.recorded_host().await?;
            host.approve(&task, &by).await?;
            output::done(
                cx.json,
                &format!("approved task `{task}`"),
                json!({ "approved": task, "by": by }),
            );
            Ok(exit::OK)
        }
        Command::Ledger(command) => ledger(&cx, command).await,
        Command::Handoff(HandoffCommand::Show { task }) => {
            let host = cx.recorded_host().await?;
            match host.handoff(&task).await? {
                Some(handoff) => {
                    output::handoff(cx.json, &handoff);
                    Ok(exit::OK)
                }
                None => bail!(
                    "task `{task}` has no handoff: handoffs are written when an agent of the task is revoked"
                ),
            }
        }
        Command::Compile { component } => compile(&cx, &component).await,
        Command::Sign {
            component,
            key,
            output,
        } => sign(&cx, &component, &key, output.as_deref()),
        Command::Verify { component } => verify(&cx, &component).await,
        Command::Keys(command) => keys(&cx, command).await,
        Command::Artifacts(command) => artifacts(&cx, command).await,
        Command::Secrets(command) => secrets(&cx, command).await,
        Command::Vault(VaultCommand::Setup { policies }) => vault_setup(&cx, &policies).await,
        Command::Health => health(&cx).await,
        Command::Orchestrate {
            objective,
            agents,
            mediator,
            task,
            timeout,
            complexity,
            max_parallel,
            quorum,
            proposer_votes,
            resume,
            assume_done,
            rerun,
        } => {
            let host = cx.host().await?;
            let metrics = if let Some(task) = resume {
                let decisions: Vec<_> = assume_done
                    .into_iter()
                    .map(|(run, call)| (run, warden::resume::Decision::AssumeDone(call)))
                    .chain(
                        rerun
                            .into_iter()
                            .map(|(run, call)| (run, warden::resume::Decision::Rerun(call))),
                    )
                    .collect();
                host.resume_task_with(&task, &decisions).await?
            } else {
                let task =
                    task.unwrap_or_else(|| format!("task-{}", uuid::Uuid::new_v4().simple()));
                let objective = objective.unwrap_or_default();
                let mut spec = warden::orchestrator::TaskSpec::new(task, objective, agents)
                    .timeout(Duration::from_secs(timeout.unwrap_or(120)))
                    .conditions(cx.config.orchestrator.clone().unwrap_or_default());
                spec.mediator = mediator;
                spec.complexity = complexity;
                spec.max_parallel = max_parallel;
                spec.quorum = quorum.unwrap_or(spec.quorum);
                spec.proposer_votes = proposer_votes;
                host.orchestrate(&spec).await?
            };
            output::task_metrics(cx.json, &metrics);
            Ok(if metrics.success {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        Command::Pipeline(command) => pipeline::pipeline(&cx, command).await,
        Command::Worker {
            name,
            claim_after,
            heartbeat,
            max_runs,
        } => pipeline::worker(&cx, name, claim_after, heartbeat, max_runs).await,
        Command::Task(TaskCommand::Show { task }) => {
            let host = cx.recorded_host().await?;
            let view = warden::orchestrator::TaskView::read(&host, &task).await?;
            output::task_view(cx.json, &view);
            Ok(exit::OK)
        }
    }
}

async fn agents(cx: &Env, command: AgentsCommand) -> Result<u8> {
    // Registering starts a record; every other agents command reads one.
    let host = if matches!(command, AgentsCommand::Register { .. }) {
        cx.host().await?
    } else {
        cx.recorded_host().await?
    };
    match command {
        AgentsCommand::Register {
            id,
            tier,
            component,
            by,
        } => {
            let bytes = match &component {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read component `{}`", path.display()))?,
                ),
                None => None,
            };
            let record = host.register_agent(&id, tier, bytes.as_deref(), &by)?;
            let revoked = host.revocation(&id).await?;
            output::agent_registered(cx.json, &record, revoked.as_ref());
        }
        AgentsCommand::List => {
            let agents = host.agents()?;
            let mut rows = Vec::new();
            for agent in &agents {
                let revoked = host.revocation(&agent.agent_id).await?;
                let metrics = host.ledger().metrics(&agent.agent_id)?;
                rows.push((agent.clone(), metrics, revoked));
            }
            output::agent_list(cx.json, &rows);
        }
        AgentsCommand::Show { id } => {
            let Some(agent) = host.ledger().agent(&id)? else {
                bail!(
                    "agent `{id}` is not registered; `warden agents list` shows the registered agents"
                );
            };
            let metrics = host.ledger().metrics(&id)?;
            let revoked = host.revocation(&id).await?;
            let lock = host.state().lock_owner(&id).await?;
            // What the registered component's signature says now, against this host's keys.
            let signature = agent
                .component_digest
                .as_ref()
                .and_then(|_| host.registered_component(&id).ok())
                .map(|bytes| host.signature(&bytes));
            output::agent_show(
                cx.json,
                &agent,
                metrics.as_ref(),
                revoked.as_ref(),
                lock.as_deref(),
                signature.as_ref().map(|v| (v, host.keyring())),
            );
        }
        AgentsCommand::Changes => {
            let requests = host.tier_change_requests()?;
            if cx.json {
                output::emit(&serde_json::to_string(&requests).unwrap_or_default());
            } else if requests.is_empty() {
                output::emit("no tier change requests");
            } else {
                for r in &requests {
                    output::emit(&output::escape(&format!(
                        "{}  {:<8} {} {} → {}  by {} (run {}): {}",
                        r.request, r.status, r.agent, r.from, r.to, r.proposer, r.run, r.reason
                    )));
                }
            }
        }
        AgentsCommand::ApproveChange {
            request,
            reject,
            comment,
            by,
        } => {
            let decided = host
                .decide_tier_change(&request, !reject, &by, &comment)
                .await?;
            output::done(
                cx.json,
                &format!(
                    "{} tier change {} of `{}` ({} → {})",
                    decided.status, decided.request, decided.agent, decided.from, decided.to
                ),
                serde_json::to_value(&decided).unwrap_or_default(),
            );
        }
        AgentsCommand::History { id, limit } => {
            let history = host.agent_history(&id, limit)?;
            output::agent_history(cx.json, &history);
        }
        AgentsCommand::Promote {
            id,
            tier,
            reason,
            by,
        } => {
            host.set_tier(&id, tier, &reason, &by).await?;
            output::done(
                cx.json,
                &format!("agent `{id}` is now {tier}"),
                json!({ "agent": id, "tier": tier }),
            );
        }
        AgentsCommand::Reinstate { id, reason, by } => {
            host.reinstate(&id, &reason, &by).await?;
            output::done(
                cx.json,
                &format!("agent `{id}` reinstated: {reason}"),
                json!({ "reinstated": id, "reason": reason, "by": by }),
            );
        }
        AgentsCommand::Revoke { id, reason, by } => {
            host.revoke(&id, &reason, &by).await?;
            output::done(
                cx.json,
                &format!("agent `{id}` revoked: {reason}"),
                json!({ "revoked": id, "reason": reason }),
            );
        }
    }
    Ok(exit::OK)
}

async fn run(cx: &Env, component: &Path, packet_path: &Path) -> Result<u8> {
    let text = std::fs::read_to_string(packet_path)
        .with_context(|| format!("cannot read packet `{}`", packet_path.display()))?;
    let packet = Packet::from_json(&text)
        .with_context(|| format!("packet `{}` is refused", packet_path.display()))?;
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read component `{}`", component.display()))?;
    let host = cx.host().await?;
    if let Some(interrupted) = host.interrupted_run(&packet.agent_id).await? {
        eprintln!(
            "{}",
            output::escape(&format!(
                "note: the last run of agent `{}` ({}) was interrupted at {} and never ended; resume it with `warden resume {}`",
                packet.agent_id, interrupted.run_id, interrupted.phase, interrupted.run_id
            ))
        );
    }
    host.submit_packet(&packet).await?;
    // A run that will wait at the approval gate says so before it waits, with the command
    // that releases it: otherwise it looks hung for up to the approval timeout.
    if let Some(agent) = host.ledger().agent(&packet.agent_id)?
        && host.tiers().policy(agent.tier).approval == warden::policy::Approval::Required
    {
        let timeout = packet.limits.approval_timeout_ms.map_or(
            host.tiers().defaults.approval_timeout,
            Duration::from_millis,
        );
        eprintln!(
            "{}",
            output::escape(&format!(
                "note: agent `{}` is {}: after PLAN its run waits up to {} for approval; release it with `warden approve {}` from another shell",
                packet.agent_id,
                agent.tier,
                humantime::format_duration(timeout),
                packet.task_id
            ))
        );
    }
    let report = host.run(&packet.agent_id, &bytes).await?;
    output::run_report(cx.json, &report);
    Ok(run_exit(&report.outcome))
}

fn run_exit(outcome: &RunOutcome) -> u8 {
    match outcome {
        RunOutcome::Completed | RunOutcome::PlanOnly => exit::OK,
        RunOutcome::Revoked { .. } => exit::REVOKED,
        RunOutcome::Failed { .. } => exit::FAILED,
    }
}

async fn runs(cx: &Env, command: RunsCommand) -> Result<u8> {
    let host = cx.recorded_host().await?;
    match command {
        RunsCommand::List {
            agent,
            task,
            status,
            limit,
        } => {
            let filter = warden::ledger::RunFilter {
                agent,
                task,
                status,
                limit,
            };
            let rows = host.ledger().runs(&filter)?;
            output::runs_list(cx.json, &rows);
        }
        RunsCommand::Show { run } => {
            let Some(row) = host.ledger().run(&run)? else {
                bail!("no run `{run}` in this ledger; `warden runs list` shows the runs it holds");
            };
            let phases = host.ledger().run_phases(&row)?;
            output::run_show(cx.json, &row, &phases);
        }
    }
    Ok(exit::OK)
}

async fn replay(
    cx: &Env,
    run: &warden::RunId,
    component: Option<&Path>,
    allow_other_digest: bool,
) -> Result<u8> {
    let component = match component {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read component `{}`", path.display()))?,
        ),
        None => None,
    };
    // Networked backends are contacted lazily, and a replay contacts none of them.
    let host = cx.recorded_host().await?;
    let options = warden::replay::ReplayOptions {
        component,
        allow_other_digest,
    };
    let report = host.replay(run, options).await?;
    output::replay_report(cx.json, &report);
    Ok(if report.verdict == "identical" {
        exit::OK
    } else {
        exit::FAILED
    })
}

async fn ledger(cx: &Env, command: LedgerCommand) -> Result<u8> {
    let ledger = cx.recorded_ledger()?;
    match command {
        LedgerCommand::Tail { limit } => {
            let rows = ledger.tail(limit)?;
            output::ledger_rows(cx.json, &rows);
            Ok(exit::OK)
        }
        LedgerCommand::Query(args) => {
            let query = LedgerQuery {
                table: args.table,
                agent_id: args.agent,
                task_id: args.task,
                kind: args.kind,
                since: args.since,
                descending: args.desc,
                offset: args.offset,
                limit: Some(args.limit),
                ..Default::default()
            };
            let rows = ledger.query(&query)?;
            output::ledger_rows(cx.json, &rows);
            Ok(exit::OK)
        }
        LedgerCommand::Verify => {
            let report = ledger.verify()?;
            output::verify_report(cx.json, &report);
            Ok(if report.is_intact() {
                exit::OK
            } else {
                exit::FAILED
            })
        }
    }
}

async fn compile(cx: &Env, component: &Path) -> Result<u8> {
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read component `{}`", component.display()))?;
    let host = cx.host().await?;
    let summary = host.inspect_component(&bytes, &component.display().to_string())?;
    output::compile_summary(cx.json, &summary);
    // A component no tier can run would be refused at every bootstrap: say so in the status.
    Ok(if summary.lowest_tier.is_some() {
        exit::OK
    } else {
        exit::REFUSED
    })
}

async fn artifacts(cx: &Env, command: ArtifactsCommand) -> Result<u8> {
    let host = cx.recorded_host().await?;
    match command {
        ArtifactsCommand::List { task, after, limit } => {
            let page = host.artifacts(&task, after.as_deref(), limit).await?;
            output::artifact_list(cx.json, &task, &page);
        }
        ArtifactsCommand::Get { task, name, output } => {
            let Some(found) = host.artifact_ref(&task, &name).await? else {
                bail!(
                    "task `{}` has no artifact `{}`; `warden artifacts list {}` shows its artifacts",
                    output::escape(&task),
                    output::escape(&name),
                    output::escape(&task)
                );
            };
            let Some(content) = host.artifact(&found.digest)? else {
                bail!(
                    "the content of artifact `{}` ({}) is not in this data directory's blob store",
                    output::escape(&name),
                    found.digest
                );
            };
            match output {
                Some(path) => {
                    std::fs::write(&path, &content)
                        .with_context(|| format!("cannot write `{}`", path.display()))?;
                    output::done(
                        cx.json,
                        &format!(
                            "wrote `{}` ({} bytes, {}) to `{}`",
                            found.name,
                            content.len(),
                            found.digest,
                            path.display()
                        ),
                        json!({ "artifact": found, "output": path }),
                    );
                }
                None => output::artifact_content(&content),
            }
        }
    }
    Ok(exit::OK)
}

/// `warden completions <shell>`.
fn completions(shell: clap_complete::Shell) -> u8 {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "warden",
        &mut script,
    );
    output::emit(String::from_utf8_lossy(&script).trim_end());
    exit::OK
}

fn sign(cx: &Env, component: &Path, key: &Path, output: Option<&Path>) -> Result<u8> {
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read component `{}`", component.display()))?;
    let signed = warden::signing::sign(&bytes, key)?;
    let target = output.unwrap_or(component);
    // Written beside the target and renamed over it: a reader never sees half a component.
    let tmp = target.with_extension(format!("signing-{}", std::process::id()));
    std::fs::write(&tmp, &signed)
        .and_then(|()| std::fs::rename(&tmp, target))
        .with_context(|| format!("cannot write `{}`", target.display()))?;
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&signed)));
    output::done(
        cx.json,
        &format!(
            "signed `{}` with `{}`; its digest is now {digest}",
            target.display(),
            key.display()
        ),
        json!({ "component": target, "key": key, "digest": digest }),
    );
    Ok(exit::OK)
}

async fn verify(cx: &Env, component: &Path) -> Result<u8> {
    let bytes = std::fs::read(component)
        .with_context(|| format!("cannot read component `{}`", component.display()))?;
    let host = cx.host().await?;
    let verdict = host.signature(&bytes);
    let signed = matches!(verdict, warden::signing::Verdict::Signed(_));
    output::signature(
        cx.json,
        &component.display().to_string(),
        &verdict,
        host.keyring(),
    );
    Ok(if signed { exit::OK } else { exit::REFUSED })
}

async fn keys(cx: &Env, command: KeysCommand) -> Result<u8> {
    match command {
        KeysCommand::Generate { name, dir } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
            let made = warden::signing::generate(&dir, &name)?;
            output::done(
                cx.json,
                &format!(
                    "wrote `{}` (secret: keep it out of the policies) and `{}` ({}); trust it by copying the .pub into `keys/` beside the tier table and naming `{name}` in a tier's `signed_by`",
                    made.secret.display(),
                    made.public.display(),
                    made.fingerprint
                ),
                json!({ "name": name, "secret": made.secret, "public": made.public, "fingerprint": made.fingerprint }),
            );
        }
        KeysCommand::List => {
            let host = cx.host().await?;
            output::keyring(cx.json, host.keyring());
        }
    }
    Ok(exit::OK)
}

async fn secrets(cx: &Env, command: SecretsCommand) -> Result<u8> {
    let host = cx.host().await?;
    match command {
        SecretsCommand::Set { path, value } => {
            let value = match value {
                Some(value) => value,
                None => {
                    let mut value = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
                        .context("cannot read the secret value from stdin")?;
                    value.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            host.secrets().put(&path, &value).await?;
            output::done(
                cx.json,
                &format!("secret `{path}` stored"),
                json!({ "stored": path }),
            );
        }
        SecretsCommand::List => {
            let paths = host.secrets().list().await?;
            if cx.json {
                output::emit(&json!({ "secrets": paths }).to_string());
            } else {
                for path in paths {
                    output::emit(&output::escape(&path));
                }
            }
        }
    }
    Ok(exit::OK)
}

async fn vault_setup(cx: &Env, policies: &Path) -> Result<u8> {
    let Some(config) = cx.config.vault_config()? else {
        bail!(
            "Vault is not configured: set `VAULT_ADDR` and `VAULT_TOKEN`, or `[vault]` in warden.toml"
        );
    };
    let vault = VaultSecrets::connect(config).await?;
    let host = cx.host().await?;
    let mut agents: Vec<(String, Tier)> = host
        .agents()?
        .into_iter()
        .map(|a| (a.agent_id, a.tier))
        .collect();
    // The host itself reads its LLM key through Vault as an architect.
    agents.push((HOST_IDENTITY.to_string(), Tier::Architect));
    let tiers = host.tiers().clone();
    let report = vault
        .setup(policies, &agents, |tier| tiers.policy(tier).secrets_ttl)
        .await?;
    output::done(
        cx.json,
        &format!("vault set up: {report:?}"),
        json!({ "agents": agents.len(), "report": format!("{report:?}") }),
    );
    Ok(exit::OK)
}

async fn health(cx: &Env) -> Result<u8> {
    let host = cx.build_host(Connect::Lazily).await?;
    let report = host.health().await;
    output::health(cx.json, &report);
    Ok(if report.healthy() {
        exit::OK
    } else {
        exit::FAILED
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn colour_is_for_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(
            !super::colour(false, None),
            "a pipe or a file gets plain text"
        );
        assert!(!super::colour(true, Some(OsStr::new("1"))));
        // https://no-color.org: only a non-empty value disables colour.
        assert!(super::colour(true, Some(OsStr::new(""))));
    }
}

#[cfg(test)]
mod help {
    #[test]
    fn every_command_has_help_and_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &name, missing);
                    continue;
                }
                let about = sub
                    .get_long_about()
                    .or(sub.get_about())
                    .map(ToString::to_string);
                if !about.is_some_and(|a| a.contains("Example:")) {
                    missing.push(name.clone());
                }
                for arg in sub.get_arguments() {
                    if arg.get_help().is_none() && arg.get_id() != "help" {
                        missing.push(format!("{name} <{}>", arg.get_id()));
                    }
                }
            }
        }
        let mut missing = Vec::new();
        walk(
            &<super::Cli as clap::CommandFactory>::command(),
            "warden",
            &mut missing,
        );
        assert!(missing.is_empty(), "no help or example: {missing:#?}");
    }
}
