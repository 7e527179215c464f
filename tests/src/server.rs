//! What the throwaway servers of the suites (`redis-server`, `bao server -dev`) share: a free
//! loopback port, and waiting until a started process answers.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("probe a free loopback port")
}

/// Poll `ready` until it holds; if the process exits first or `timeout` passes, kill it and
/// return why, with its log. `waiting_for` names the answer, e.g. "answer PING".
pub fn wait_until_ready(
    mut child: Child,
    port: u16,
    log: &Path,
    timeout: Duration,
    poll: Duration,
    waiting_for: &str,
    ready: impl Fn(u16) -> bool,
) -> Result<Child, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready(port) {
            return Ok(child);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let why = if exited {
                "exited".to_string()
            } else {
                format!("did not {waiting_for} in time")
            };
            return Err(format!("port {port}: {why}; log:\n{log}"));
        }
        std::thread::sleep(poll);
    }
}
