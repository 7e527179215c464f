//! Host-side bindings of the `warden:agent` WIT package.
//!
//! Imports are async on the host (they talk to Redis, Vault, an LLM endpoint) but block the
//! guest, so an agent sees ordinary function calls.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "architect",
    imports: { default: async },
    exports: { default: async },
});

pub use self::warden::agent::types::Error as WitError;
