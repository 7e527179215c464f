//! Tools registered by the operator or the embedder. Available from T1: in check mode below a
//! tool's `full_tier`, for real from it.

use crate::Error;
use crate::bindings::warden::agent::tools as wit;

pub use wit::{ToolInfo, ToolOutput};

impl ToolOutput {
    /// Whether the tool exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// The tools this agent may see.
pub fn list() -> Result<Vec<ToolInfo>, Error> {
    Ok(wit::list()?)
}

/// Invokes the tool `name` with `args`.
///
/// A tool that runs and fails is an `Ok` with a non-zero [`ToolOutput::exit_code`]; an `Err`
/// means the call itself was refused or could not be served.
pub fn invoke(name: &str, args: &[&str]) -> Result<ToolOutput, Error> {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    Ok(wit::invoke(name, &args)?)
}
