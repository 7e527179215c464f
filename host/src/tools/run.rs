//! Running a prepared invocation: no shell, a cleared environment, its own process group,
//! confined through the sandbox helper, bounded time and output.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use super::ToolsError;
use super::sandbox::{self, Limits, PathAccess, PathRule, Policy};

/// The only environment a tool sees: programs are found in the system directories and nothing
/// of the host's environment (keys, tokens, proxies) leaks into it.
const TOOL_PATH: &str = "/usr/bin:/bin";

/// A checked call of a tool, ready to run. Made by
/// [`ToolRegistry::prepare`](super::ToolRegistry::prepare); the accessors tell the caller
/// exactly what will run, for its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub(super) tool: String,
    pub(super) args: Vec<String>,
    pub(super) argv: Vec<String>,
    pub(super) check_mode: bool,
    pub(super) executes: bool,
    pub(super) timeout: Duration,
    pub(super) max_output_bytes: usize,
    /// `None` only with `confinement = "none"`.
    pub(super) sandbox: Option<Sandbox>,
}

/// How a confined invocation is confined, from its tool's entry; the workspace and the
/// program are added when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sandbox {
    /// The helper set with `ToolRegistry::with_sandbox_helper`, else it is looked for.
    pub helper: Option<PathBuf>,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub network: bool,
    pub limits: Limits,
}

impl Sandbox {
    /// The policy of one run of `program` in `workspace`.
    fn policy(&self, workspace: Option<&Path>, program: &str) -> Policy {
        let rule = |path: PathBuf, access, required| PathRule {
            path,
            access,
            required,
        };
        let system = |paths: &[&str], access| {
            paths
                .iter()
                .map(move |path| rule(PathBuf::from(path), access, false))
                .collect::<Vec<_>>()
        };
        let mut paths = system(sandbox::SYSTEM_READ_PATHS, PathAccess::Read);
        paths.extend(system(sandbox::SYSTEM_WRITE_PATHS, PathAccess::Write));
        // The operator chose the program; it need not be in a system directory.
        paths.push(rule(PathBuf::from(program), PathAccess::Read, true));
        paths.extend(
            self.read
                .iter()
                .map(|path| rule(path.clone(), PathAccess::Read, true)),
        );
        paths.extend(
            self.write
                .iter()
                .map(|path| rule(path.clone(), PathAccess::Write, true)),
        );
        if let Some(workspace) = workspace {
            paths.push(rule(workspace.to_path_buf(), PathAccess::Write, true));
        }
        Policy {
            protocol: sandbox::PROTOCOL,
            paths,
            network: self.network,
            limits: self.limits,
        }
    }
}

/// What a tool printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolOutput {
    /// The exit status; 128 + N when killed by signal N.
    pub exit_code: i32,
    /// Standard output, lossily decoded as UTF-8, at most `max_output_bytes` of it.
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8, at most `max_output_bytes` of it.
    pub stderr: String,
    /// The caller's tier is below the tool's `full_tier`: the check command ran, or nothing did.
    pub check_mode: bool,
    /// Standard output or error went past `max_output_bytes` and was cut.
    pub truncated: bool,
    /// What ran (or, in check mode without `check_argv`, what would have run).
    pub argv: Vec<String>,
    /// The tool ran confined by the sandbox helper (or nothing ran); false only when the
    /// tools file says `confinement = "none"`.
    pub confined: bool,
}

impl Invocation {
    /// The tool's name.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// The arguments the caller gave.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The program and its arguments: the check command in check mode, or in check mode
    /// without `check_argv` the real command, which [`Invocation::executes`] says is not run.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The caller's tier is below the tool's `full_tier`.
    pub fn check_mode(&self) -> bool {
        self.check_mode
    }

    /// Whether [`Invocation::run`] starts a process; false only in check mode without
    /// `check_argv`.
    pub fn executes(&self) -> bool {
        self.executes
    }

    /// Whether it runs confined; false only with `confinement = "none"`.
    pub fn confined(&self) -> bool {
        self.sandbox.is_some()
    }

    /// `tool:<name> <args joined by space>`, the resource that scope and forbidden patterns are
    /// matched against.
    pub fn resource(&self) -> String {
        let mut resource = format!("tool:{}", self.tool);
        for arg in &self.args {
            resource.push(' ');
            resource.push_str(arg);
        }
        resource
    }

    /// Run the program directly (never through a shell) in `working_dir`, with only
    /// `PATH=/usr/bin:/bin` in its environment, no standard input, as the leader of a process
    /// group of its own, and (unless the registry is unconfined) through the sandbox helper,
    /// which confines it to `working_dir`, the system directories and its tool's declared
    /// paths (see [the module](super)). A confinement that cannot be applied is
    /// [`ToolsError::Unconfined`] and nothing runs.
    ///
    /// When the program exits, and at the timeout, the whole process group is killed: what
    /// the tool started does not outlive it, nor hold its output open.
    pub async fn run(self, working_dir: Option<&Path>) -> Result<ToolOutput, ToolsError> {
        let confined = self.confined();
        if !self.executes {
            return Ok(ToolOutput {
                exit_code: 0,
                stdout: format!("{}\n", command_line(&self.argv)),
                stderr: String::new(),
                check_mode: self.check_mode,
                truncated: false,
                argv: self.argv,
                confined,
            });
        }
        let unavailable = |message: String| ToolsError::Unavailable {
            tool: self.tool.clone(),
            program: self.argv.first().cloned().unwrap_or_default(),
            message,
        };
        let unconfined = |reason: String| ToolsError::Unconfined {
            tool: self.tool.clone(),
            reason,
        };
        let Some((program, rest)) = self.argv.split_first() else {
            return Err(unavailable("its argv is empty".into()));
        };
        // Absolute and resolved: the helper's rules are opened after it moved into it.
        let workspace = working_dir
            .map(|dir| {
                dir.canonicalize().map_err(|error| {
                    unavailable(format!(
                        "cannot start it in `{}`: {error}; check that the workspace exists",
                        dir.display()
                    ))
                })
            })
            .transpose()?;
        let (mut command, started) = match &self.sandbox {
            Some(sandbox) => {
                let helper =
                    sandbox::locate_helper(sandbox.helper.as_deref()).map_err(unconfined)?;
                let policy = sandbox
                    .policy(workspace.as_deref(), program)
                    .to_argument()
                    .map_err(unconfined)?;
                let mut command = Command::new(&helper);
                command.arg(policy).args(&self.argv);
                (
                    command,
                    format!("the sandbox helper `{}`", helper.display()),
                )
            }
            None => {
                let mut command = Command::new(program);
                command.args(rest);
                (command, "it".to_string())
            }
        };
        command
            .env_clear()
            .env("PATH", TOOL_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Set in the child before it runs anything, so nothing it starts is outside the group.
        #[cfg(unix)]
        command.process_group(0);
        if let Some(dir) = &workspace {
            command.current_dir(dir);
        }
        tracing::debug!(tool = %self.tool, argv = ?self.argv, check_mode = self.check_mode, confined, "running tool");
        let mut child = command.spawn().map_err(|error| {
            let place = workspace
                .as_ref()
                .map_or(String::new(), |dir| format!(" in `{}`", dir.display()));
            unavailable(format!(
                "cannot start {started}{place}: {error}; check that the program exists and is executable"
            ))
        })?;
        let mut group = ProcessGroup::of(&child);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let limit = self.max_output_bytes;
        let finished = tokio::time::timeout(self.timeout, async {
            let output =
                async { tokio::try_join!(read_capped(stdout, limit), read_capped(stderr, limit)) };
            let exited = async {
                let status = child.wait().await;
                // What the tool left running goes with it, and lets go of the pipes.
                group.kill();
                status
            };
            let (output, status) = tokio::join!(output, exited);
            let (stdout, stderr) = output?;
            Ok::<_, std::io::Error>((stdout, stderr, status?))
        })
        .await;
        let ((stdout, stdout_cut), (stderr, stderr_cut), status) = match finished {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                group.kill();
                reap(&mut child, &self.tool).await;
                return Err(unavailable(format!("cannot collect its output: {error}")));
            }
            Err(_elapsed) => {
                group.kill();
                reap(&mut child, &self.tool).await;
                return Err(ToolsError::Timeout {
                    tool: self.tool,
                    timeout: self.timeout,
                });
            }
        };
        let exit_code = exit_code(status);
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        if confined && let Some(message) = helper_message(exit_code, &stderr) {
            return Err(if exit_code == sandbox::CONFINEMENT_FAILED {
                unconfined(message)
            } else {
                unavailable(message)
            });
        }
        Ok(ToolOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
            check_mode: self.check_mode,
            truncated: stdout_cut || stderr_cut,
            argv: self.argv,
            confined,
        })
    }
}

/// The helper's own failure before the tool ran: its exit status and the line it wrote.
fn helper_message(exit_code: i32, stderr: &str) -> Option<String> {
    if exit_code != sandbox::CONFINEMENT_FAILED && exit_code != sandbox::EXEC_FAILED {
        return None;
    }
    let line = stderr.strip_prefix(sandbox::MESSAGE_PREFIX)?;
    Some(line.lines().next().unwrap_or_default().to_string())
}

/// The tool's process group: the host starts the tool (or the helper that becomes it) as
/// its leader, so its id is the group's. Killed as a whole once, at the latest when dropped.
/// On systems without process groups only the tool's own process is killed
/// (`kill_on_drop`).
struct ProcessGroup {
    #[cfg(unix)]
    id: Option<nix::unistd::Pid>,
}

impl ProcessGroup {
    fn of(child: &Child) -> ProcessGroup {
        #[cfg(unix)]
        {
            ProcessGroup {
                id: child
                    .id()
                    .and_then(|id| i32::try_from(id).ok())
                    .map(nix::unistd::Pid::from_raw),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = child;
            ProcessGroup {}
        }
    }

    /// SIGKILL to every process of the group; a group already gone is fine.
    fn kill(&mut self) {
        #[cfg(unix)]
        if let Some(id) = self.id.take() {
            use nix::errno::Errno;
            use nix::sys::signal::{Signal, killpg};
            match killpg(id, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(error) => tracing::warn!(group = %id, %error, "cannot kill tool process group"),
            }
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kill the child and wait for it, so no zombie is left.
async fn reap(child: &mut Child, tool: &str) {
    if let Err(error) = child.kill().await {
        tracing::warn!(tool, %error, "cannot kill tool process");
    }
}

/// Read to the end, keeping the first `limit` bytes; the rest is drained so the tool never
/// blocks on a full pipe. Returns the bytes kept and whether any were dropped.
async fn read_capped(
    reader: Option<impl AsyncRead + Unpin>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut truncated = false;
    let Some(mut reader) = reader else {
        return Ok((kept, truncated));
    };
    let mut buffer = [0u8; 8192];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        if read > room {
            truncated = true;
        }
        kept.extend_from_slice(&buffer[..read.min(room)]);
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    if let Some(code) = status.code() {
        return code;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    -1
}

/// argv as a shell-quoted line, for people reading check-mode output; it is never executed.
fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| quote(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(arg: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_a_shell_would_interpret() {
        let argv = ["/usr/bin/wc", "-w", "a b", "it's", "", "$(x)"].map(String::from);
        assert_eq!(
            command_line(&argv),
            r"/usr/bin/wc -w 'a b' 'it'\''s' '' '$(x)'"
        );
    }
}
