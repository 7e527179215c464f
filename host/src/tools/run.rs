//! Running a prepared invocation: no shell, a cleared environment, bounded time and output.

use std::borrow::Cow;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::ToolsError;

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
    /// `PATH=/usr/bin:/bin` in its environment and no standard input. A run past the tool's
    /// timeout is killed and reaped.
    ///
    /// Processes the tool itself starts are not killed with it; if one keeps the output pipes
    /// open, the run lasts until the timeout.
    pub async fn run(self, working_dir: Option<&Path>) -> Result<ToolOutput, ToolsError> {
        if !self.executes {
            return Ok(ToolOutput {
                exit_code: 0,
                stdout: format!("{}\n", command_line(&self.argv)),
                stderr: String::new(),
                check_mode: self.check_mode,
                truncated: false,
                argv: self.argv,
            });
        }
        let unavailable = |message: String| ToolsError::Unavailable {
            tool: self.tool.clone(),
            program: self.argv.first().cloned().unwrap_or_default(),
            message,
        };
        let Some((program, rest)) = self.argv.split_first() else {
            return Err(unavailable("its argv is empty".into()));
        };
        let mut command = Command::new(program);
        command
            .args(rest)
            .env_clear()
            .env("PATH", TOOL_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = working_dir {
            command.current_dir(dir);
        }
        tracing::debug!(tool = %self.tool, argv = ?self.argv, check_mode = self.check_mode, "running tool");
        let mut child = command.spawn().map_err(|error| {
            let place = working_dir.map_or(String::new(), |dir| format!(" in `{}`", dir.display()));
            unavailable(format!(
                "cannot start it{place}: {error}; check that the program exists and is executable"
            ))
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let limit = self.max_output_bytes;
        let finished = tokio::time::timeout(self.timeout, async {
            let (stdout, stderr, status) = tokio::join!(
                read_capped(stdout, limit),
                read_capped(stderr, limit),
                child.wait()
            );
            Ok::<_, std::io::Error>((stdout?, stderr?, status?))
        })
        .await;
        let ((stdout, stdout_cut), (stderr, stderr_cut), status) = match finished {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                reap(&mut child, &self.tool).await;
                return Err(unavailable(format!("cannot collect its output: {error}")));
            }
            Err(_elapsed) => {
                reap(&mut child, &self.tool).await;
                return Err(ToolsError::Timeout {
                    tool: self.tool,
                    timeout: self.timeout,
                });
            }
        };
        Ok(ToolOutput {
            exit_code: exit_code(status),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            check_mode: self.check_mode,
            truncated: stdout_cut || stderr_cut,
            argv: self.argv,
        })
    }
}

/// Kill the child and wait for it, so no zombie is left.
async fn reap(child: &mut tokio::process::Child, tool: &str) {
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
