//! Tools run confined: each attack that worked on unconfined tools is denied by the kernel,
//! and each test runs the same call with `confinement = "none"` to show it is the
//! confinement that denies it. The helper is the one cargo built for these tests.

#![cfg(target_os = "linux")]
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warden::Tier;
use warden::tools::{ToolOutput, ToolRegistry, ToolsError};

const HELPER: &str = env!("CARGO_BIN_EXE_warden-tool-sandbox");

/// A one-tool registry (`t`, T0) with `fields` as the tool's TOML lines, confined through the
/// helper built for these tests, or unconfined.
fn tool(fields: &str, confined: bool) -> ToolRegistry {
    let top = if confined {
        ""
    } else {
        "confinement = \"none\"\n"
    };
    ToolRegistry::from_toml_str(&format!(
        "{top}[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\n{fields}\n"
    ))
    .unwrap()
    .with_sandbox_helper(HELPER)
}

async fn run(
    registry: &ToolRegistry,
    args: &[&str],
    workspace: &Path,
) -> Result<ToolOutput, ToolsError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    registry
        .prepare("t", &args, Tier::Observer)
        .unwrap()
        .run(Some(workspace))
        .await
}

/// A workspace and, beside it, a directory outside it holding `secret.txt`.
struct Dirs {
    _root: tempfile::TempDir,
    workspace: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let workspace = root.path().join("workspace");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(workspace.join("notes.txt"), "inside\n").unwrap();
    std::fs::write(outside.join("secret.txt"), "outside\n").unwrap();
    Dirs {
        _root: root,
        workspace,
        outside,
    }
}

const CAT: &str =
    "argv = [\"/bin/cat\", \"{0}\"]\nargs = [\"[A-Za-z0-9._/-]{1,256}\"]\nmax_args = 1";

#[tokio::test]
async fn a_path_argument_reaches_only_the_workspace() {
    let dirs = dirs();
    let secret = dirs.outside.join("secret.txt");
    let secret = secret.to_str().unwrap();
    let confined = tool(CAT, true);

    let output = run(&confined, &["notes.txt"], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!((output.exit_code, output.stdout.as_str()), (0, "inside\n"));
    assert!(output.confined);
    for path in [secret, "/etc/hostname", "/etc/passwd"] {
        let output = run(&confined, &[path], &dirs.workspace).await.unwrap();
        assert_ne!(output.exit_code, 0, "{path}: {output:?}");
        assert!(output.stdout.is_empty(), "{path}: {output:?}");
        assert!(
            output.stderr.contains("Permission denied"),
            "{path}: {output:?}"
        );
    }

    let unconfined = run(&tool(CAT, false), &[secret], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(unconfined.stdout, "outside\n");
    assert!(!unconfined.confined);
}

#[tokio::test]
async fn writing_outside_the_workspace_is_denied() {
    let dirs = dirs();
    let touch =
        "argv = [\"/usr/bin/touch\", \"{0}\"]\nargs = [\"[A-Za-z0-9._/-]{1,256}\"]\nmax_args = 1";
    let target = dirs.outside.join("planted");
    let target = target.to_str().unwrap();

    let output = run(&tool(touch, true), &["made"], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0, "{output:?}");
    assert!(dirs.workspace.join("made").exists());
    let output = run(&tool(touch, true), &[target], &dirs.workspace)
        .await
        .unwrap();
    assert!(output.stderr.contains("Permission denied"), "{output:?}");
    assert!(!Path::new(target).exists());

    run(&tool(touch, false), &[target], &dirs.workspace)
        .await
        .unwrap();
    assert!(Path::new(target).exists(), "the unconfined control");
}

#[tokio::test]
async fn a_symlink_in_the_workspace_does_not_lead_out_of_it() {
    let dirs = dirs();
    let link = |name: &str, target: &Path| {
        std::os::unix::fs::symlink(target, dirs.workspace.join(name)).unwrap();
    };
    link("passwd", Path::new("/etc/passwd"));
    link("secret", &dirs.outside.join("secret.txt"));
    link("parent", &dirs.outside);
    link("notes-link", Path::new("notes.txt"));
    let confined = tool(CAT, true);

    for path in ["passwd", "secret", "parent/secret.txt"] {
        let output = run(&confined, &[path], &dirs.workspace).await.unwrap();
        assert_ne!(output.exit_code, 0, "{path}: {output:?}");
        assert!(
            output.stderr.contains("Permission denied"),
            "{path}: {output:?}"
        );
    }
    // A link that stays inside is followed: it is where it leads that is checked.
    let output = run(&confined, &["notes-link"], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.stdout, "inside\n");

    let unconfined = run(&tool(CAT, false), &["secret"], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(unconfined.stdout, "outside\n");
}

/// Whether process `pid` is gone (reaped, or dead and waiting for its reaper).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test]
async fn what_a_tool_leaves_running_dies_when_it_exits() {
    let dirs = dirs();
    // The grandchild keeps the output pipes open: before, the call lasted until the timeout.
    let fields = "argv = [\"/bin/sh\", \"-c\", \"/bin/sleep 60 & echo $!\"]\ntimeout = \"20s\"";
    for confined in [true, false] {
        let started = Instant::now();
        let output = run(&tool(fields, confined), &[], &dirs.workspace)
            .await
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "confined {confined}: took {:?}",
            started.elapsed()
        );
        let pid: u32 = output.stdout.trim().parse().unwrap();
        assert!(wait_gone(pid), "confined {confined}: sleep {pid} survived");
    }
}

#[tokio::test]
async fn at_the_timeout_the_whole_process_group_is_killed() {
    let dirs = dirs();
    let fields = "argv = [\"/bin/sh\", \"-c\", \"/bin/sleep 60 & echo $! > pid; wait\"]\ntimeout = \"500ms\"";
    let error = run(&tool(fields, true), &[], &dirs.workspace)
        .await
        .unwrap_err();
    assert!(matches!(error, ToolsError::Timeout { .. }), "{error}");
    let pid: u32 = std::fs::read_to_string(dirs.workspace.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(wait_gone(pid), "sleep {pid} survived the timeout");
}

#[tokio::test]
async fn nothing_a_tool_starts_leaves_its_process_group() {
    let dirs = dirs();
    // `setsid` forks a child that is not a group leader and calls setsid(2) in it.
    let fields = "argv = [\"/bin/sh\", \"-c\", \"/usr/bin/setsid -w /bin/echo escaped\"]";
    let output = run(&tool(fields, true), &[], &dirs.workspace)
        .await
        .unwrap();
    assert!(!output.stdout.contains("escaped"), "{output:?}");
    assert!(output.stderr.contains("not permitted"), "{output:?}");
    let output = run(&tool(fields, false), &[], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.stdout, "escaped\n", "the unconfined control");
}

/// Tries a TCP connection to the port given, a UDP socket and a UNIX socket; one line each.
const NET: &str = r#"argv = ["/usr/bin/python3", "-c", '''
import socket, sys
def attempt(name, act):
    try:
        act()
        print(name, "ok")
    except OSError as error:
        print(name, "refused", error.errno)
attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close())
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
attempt("unix", lambda: socket.socket(socket.AF_UNIX).close())
''', "{0}"]
args = ["[0-9]{1,5}"]
max_args = 1"#;

#[tokio::test]
async fn the_network_is_closed_unless_the_tool_declares_it() {
    let dirs = dirs();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();

    let output = run(&tool(NET, true), &[&port], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(
        output.stdout, "tcp refused 1\nudp refused 1\nunix refused 1\n",
        "{output:?}"
    );

    let open = format!("{NET}\nnetwork = true");
    let output = run(&tool(&open, true), &[&port], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.stdout, "tcp ok\nudp ok\nunix ok\n", "{output:?}");
    assert!(output.confined);
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_ok(),
        "the connection reached the listener"
    );
}

#[tokio::test]
async fn resource_limits_apply() {
    let dirs = dirs();
    let dd = "argv = [\"/usr/bin/dd\", \"if=/dev/zero\", \"of=big\", \"bs=4096\", \"count=1\"]";
    let limited = format!("{dd}\nmax_file_bytes = 1024");
    let output = run(&tool(&limited, true), &[], &dirs.workspace)
        .await
        .unwrap();
    // Killed by SIGXFSZ with the file cut at the limit.
    assert_eq!(output.exit_code, 128 + 25, "{output:?}");
    let size = || std::fs::metadata(dirs.workspace.join("big")).unwrap().len();
    assert_eq!(size(), 1024);
    run(&tool(&limited, false), &[], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(size(), 4096, "the unconfined control");

    let allocate = "argv = [\"/usr/bin/python3\", \"-c\", \"bytearray(512 * 1024 * 1024); print('allocated')\"]";
    let limited = format!("{allocate}\nmax_memory_bytes = 134217728");
    let output = run(&tool(&limited, true), &[], &dirs.workspace)
        .await
        .unwrap();
    assert!(output.stderr.contains("MemoryError"), "{output:?}");
    let output = run(&tool(allocate, true), &[], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.stdout, "allocated\n", "under the default 1 GiB");
}

#[tokio::test]
async fn a_tool_has_no_capabilities_and_cannot_signal_the_host() {
    let dirs = dirs();
    // Its own /proc entry, declared: /proc is not readable by default.
    let status = "argv = [\"/bin/cat\", \"/proc/self/status\"]\nread_paths = [\"/proc/self\"]";
    let output = run(&tool(status, true), &[], &dirs.workspace)
        .await
        .unwrap();
    let field = |name: &str| {
        output
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {output:?}"))
            .to_string()
    };
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");

    let kill = "argv = [\"/bin/kill\", \"-0\", \"{0}\"]\nargs = [\"[0-9]+\"]\nmax_args = 1";
    let host = std::process::id().to_string();
    let output = run(&tool(kill, true), &[&host], &dirs.workspace)
        .await
        .unwrap();
    assert_ne!(output.exit_code, 0, "{output:?}");
    assert!(output.stderr.contains("not permitted"), "{output:?}");
    let output = run(&tool(kill, false), &[&host], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0, "the unconfined control: {output:?}");
}

#[tokio::test]
async fn without_its_helper_a_tool_does_not_run() {
    let dirs = dirs();
    let registry = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/usr/bin/touch\", \"ran\"]\n",
    )
    .unwrap()
    .with_sandbox_helper("/nonexistent/warden-tool-sandbox");
    let error = run(&registry, &[], &dirs.workspace).await.unwrap_err();
    assert!(matches!(error, ToolsError::Unconfined { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("tool `t` was not run: it cannot be confined: the sandbox helper `/nonexistent/warden-tool-sandbox`"),
        "{message}"
    );
    assert!(message.contains("cargo build -p warden"), "{message}");
    assert!(!dirs.workspace.join("ran").exists());
}

#[tokio::test]
async fn a_confined_tool_sees_only_path_and_its_workspace() {
    let dirs = dirs();
    let output = run(
        &tool("argv = [\"/usr/bin/env\"]", true),
        &[],
        &dirs.workspace,
    )
    .await
    .unwrap();
    assert_eq!(output.stdout, "PATH=/usr/bin:/bin\n");
    let output = run(&tool("argv = [\"/bin/pwd\"]", true), &[], &dirs.workspace)
        .await
        .unwrap();
    assert_eq!(
        output.stdout.trim_end(),
        dirs.workspace.canonicalize().unwrap().display().to_string()
    );
}
