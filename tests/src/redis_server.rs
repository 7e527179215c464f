//! A throwaway `redis-server` per test: loopback only, no persistence, killed on drop.
//!
//! Suites that need Redis fail rather than skip when the binary is missing, so a machine
//! without it cannot report a green run that tested nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::server::{free_port, wait_until_ready};

/// How long a started server has to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting on a fresh port: another process may take the port between our
/// probe and the server's bind.
const START_ATTEMPTS: usize = 3;

/// A running `redis-server` on `127.0.0.1`, with its working directory in a temp dir.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start a server on a free loopback port and wait until it answers `PING`.
    ///
    /// The binary is `$WARDEN_REDIS_SERVER`, or `redis-server` on `PATH`; panics if neither
    /// exists.
    pub fn start() -> RedisServer {
        let binary = binary();
        let dir = tempfile::tempdir().expect("redis-server: temp dir");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match spawn(&binary, port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        child: Some(child),
                        dir,
                    };
                }
                Err(error) => last_error = error,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kill the server (its data is gone: nothing is persisted). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a new, empty server on the same port, stopping the current one first.
    pub fn restart(&mut self) {
        self.stop();
        let child = spawn(&binary(), self.port, self.dir.path())
            .unwrap_or_else(|error| panic!("redis-server did not restart: {error}"));
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARDEN_REDIS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found: install it with `apt-get install redis-server` (or run `cargo xtask test`, which installs it)"
            )
        })
}

/// Start the server and wait for `PING`; on failure the child is killed and its log returned.
fn spawn(binary: &Path, port: u16, dir: &Path) -> Result<Child, String> {
    let log = dir.join(format!("redis-{port}.log"));
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", binary.display()))?;
    wait_until_ready(
        child,
        port,
        &log,
        READY_TIMEOUT,
        Duration::from_millis(20),
        "answer PING",
        ping,
    )
}

fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
