//! `warden.toml`: where the CLI (and embedders who want it) find the tier table, tools, LLM
//! provider and data directory. Relative paths are relative to the file.
//!
//! ```toml
//! data_dir = ".warden"
//! policies = "policies/tiers.toml"
//! tools = "tools.toml"
//! call_durability = "every-call"   # commit each capability call's row before it returns
//! state = "redis://127.0.0.1:6379/0"  # runtime state in Redis/DragonflyDB (default: embedded)
//!
//! [vault]                            # secrets in Vault/OpenBao (default: embedded)
//! addr = "http://127.0.0.1:8200"     # the broker token comes from `VAULT_TOKEN`, never a file
//!
//! [orchestrator]                     # spawn conditions of `warden orchestrate`
//! stuck_after = "30s"                # see `warden::orchestrator::SpawnConditions`
//! [breaker]                          # circuit breaker of each networked backend (Redis, Vault)
//! failure_threshold = 5              # consecutive failed calls that open it (default 5)
//! open_for = "5s"                    # then calls fail fast this long before one probe (default 5s)
//!
//! [http]                             # agents' outbound HTTP (the tier table says where)
//! roots = ["certs/internal-ca.pem"]  # CAs trusted besides Mozilla's roots (PEM)
//!
//! [health]                           # periodic backend checks (default: off)
//! interval = "10s"                   # `Host::health_status`, ledger row on each state change
//!
//! [llm]
//! provider = "scripted"            # or "openai-compatible"
//! rules = "agents/planner/llm-rules.toml"
//! # base_url = "http://127.0.0.1:11434/v1"; model = "llama3"; api_key_secret = "llm/api-key"
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::breaker::BreakerConfig;
use crate::error::Error;
use crate::host::HostBuilder;
use crate::llm::{LlmConfig, provider_from_config};
use crate::policy::TierTable;
use crate::tools::ToolRegistry;

/// The secrets identity the host itself logs in with to read its LLM API key.
pub const HOST_IDENTITY: &str = "warden-host";

/// When [`WardenConfig::builder_with`] contacts networked backends (Redis, Vault).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connect {
    /// Connect while building; an unreachable server is an error.
    Now,
    /// Build without contacting them; the first call finds out (`warden health`).
    Lazily,
}

/// The contents of `warden.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WardenConfig {
    /// Where the ledger, state, blobs and logs live; the `data_dir` argument of
    /// [`WardenConfig::builder`] overrides it.
    pub data_dir: Option<PathBuf>,
    /// The tier table file; `None` for the built-in table.
    pub policies: Option<PathBuf>,
    /// The tool registry file; `None` for no tools.
    pub tools: Option<PathBuf>,
    /// `[llm]`: the LLM provider; `None` for none.
    pub llm: Option<LlmConfig>,
    /// `batched` (default) or `every-call`: see [`crate::CallDurability`].
    #[serde(default)]
    pub call_durability: crate::CallDurability,
    /// A `redis://` URL for runtime state; `WARDEN_REDIS_URL` overrides it.
    pub state: Option<String>,
    /// Vault/OpenBao for secrets; `VAULT_ADDR` overrides `addr`.
    pub vault: Option<VaultSection>,
    /// Spawn conditions of multi-agent tasks (`warden orchestrate`).
    pub orchestrator: Option<crate::orchestrator::SpawnConditions>,
    /// The circuit breaker of each networked backend (Redis state, Vault secrets).
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Periodic backend health checks; off unless set.
    pub health: Option<HealthSection>,
    /// Agents' outbound HTTP: the CAs it trusts besides Mozilla's roots.
    pub http: Option<HttpSection>,
    #[serde(skip)]
    base: PathBuf,
}

/// `[health]` in `warden.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// How often every backend is checked (`"10s"`, `"1m"`): see
    /// [`HostBuilder::health_interval`].
    #[serde(deserialize_with = "crate::duration::de")]
    pub interval: Duration,
}

/// `[http]` in `warden.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// PEM files of certificate authorities agents' HTTPS requests trust besides the Mozilla
    /// roots: see [`HostBuilder::http_roots`].
    #[serde(default)]
    pub roots: Vec<PathBuf>,
}

/// `[vault]` in `warden.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSection {
    /// The Vault address (`http://127.0.0.1:8200`); `VAULT_ADDR` overrides it.
    pub addr: Option<String>,
    /// Mount of the KV v2 secrets engine (default `secret`).
    #[serde(default = "VaultSection::default_kv_mount")]
    pub kv_mount: String,
    /// Mount of the AppRole auth method (default `approle`).
    #[serde(default = "VaultSection::default_approle_mount")]
    pub approle_mount: String,
}

impl VaultSection {
    fn default_kv_mount() -> String {
        "secret".into()
    }
    fn default_approle_mount() -> String {
        "approle".into()
    }
}

impl WardenConfig {
    /// The runtime-state URL: `flag`, else `WARDEN_REDIS_URL`, else `state` in the file.
    pub fn state_url(&self, flag: Option<&str>) -> Option<String> {
        flag.map(str::to_string)
            .or_else(|| {
                std::env::var("WARDEN_REDIS_URL")
                    .ok()
                    .filter(|u| !u.is_empty())
            })
            .or_else(|| self.state.clone())
    }

    /// Vault settings when Vault is configured (`[vault]` or `VAULT_ADDR`), with the broker
    /// token from `VAULT_TOKEN`.
    pub fn vault_config(&self) -> Result<Option<crate::secrets::VaultConfig>, Error> {
        let env_addr = std::env::var("VAULT_ADDR").ok().filter(|a| !a.is_empty());
        let section = self.vault.clone();
        let addr = match (env_addr, section.as_ref().and_then(|v| v.addr.clone())) {
            (Some(addr), _) | (None, Some(addr)) => addr,
            (None, None) if section.is_some() => {
                return Err(Error::Config {
                    origin: "`[vault]`".into(),
                    message: "no address: set `addr` or `VAULT_ADDR`".into(),
                });
            }
            (None, None) => return Ok(None),
        };
        let admin_token = std::env::var("VAULT_TOKEN").map_err(|_| Error::Config {
            origin: "`[vault]`".into(),
            message: format!("Vault at `{addr}` needs a broker token in `VAULT_TOKEN` (one allowed to manage AppRole roles)"),
        })?;
        let section = section.unwrap_or(VaultSection {
            addr: None,
            kv_mount: VaultSection::default_kv_mount(),
            approle_mount: VaultSection::default_approle_mount(),
        });
        Ok(Some(crate::secrets::VaultConfig {
            addr,
            admin_token,
            kv_mount: section.kv_mount,
            approle_mount: section.approle_mount,
            role_prefix: "warden-".into(),
            breaker: self.breaker,
        }))
    }

    /// How the Redis state store guards its commands: the `[breaker]` thresholds.
    pub fn redis_options(&self) -> crate::state::redis::RedisOptions {
        crate::state::redis::RedisOptions::default().breaker(self.breaker)
    }

    /// Read a config file.
    pub fn load(path: &Path) -> Result<WardenConfig, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let mut config: WardenConfig = toml::from_str(&text).map_err(|e| Error::Config {
            origin: format!("`{}`", path.display()),
            message: e.to_string(),
        })?;
        config.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// `warden.toml` in the current directory if there is one, else the defaults.
    pub fn discover() -> Result<WardenConfig, Error> {
        let path = Path::new("warden.toml");
        if path.exists() {
            WardenConfig::load(path)
        } else {
            Ok(WardenConfig::default())
        }
    }

    /// A path from the file, resolved against the file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    /// A host builder with everything this config names, its networked backends connected
    /// now: the data directory (`data_dir` overrides the file's), the tier table, the tools,
    /// call durability, health checks, the state store ([`WardenConfig::state_url`]), the
    /// secrets backend (Vault when [`WardenConfig::vault_config`] names one, else the
    /// embedded store of the data directory) and the LLM provider, its API key read from that
    /// secrets backend.
    pub async fn builder(&self, data_dir: Option<PathBuf>) -> Result<HostBuilder, Error> {
        self.builder_with(data_dir, None, Connect::Now).await
    }

    /// [`WardenConfig::builder`] with a state URL that overrides the file's and the
    /// environment's (`--state`), and a choice of when networked backends are contacted.
    pub async fn builder_with(
        &self,
        data_dir: Option<PathBuf>,
        state_flag: Option<&str>,
        connect: Connect,
    ) -> Result<HostBuilder, Error> {
        let mut builder = self.local_builder(data_dir.clone())?;
        let data_dir = data_dir.or_else(|| self.data_dir.as_ref().map(|d| self.resolve(d)));
        let secrets: Arc<dyn crate::secrets::SecretBackend> = match self.vault_config()? {
            Some(vault) => match connect {
                Connect::Now => Arc::new(crate::secrets::VaultSecrets::connect(vault).await?),
                Connect::Lazily => Arc::new(crate::secrets::VaultSecrets::new(vault)?),
            },
            None => match &data_dir {
                Some(dir) => Arc::new(crate::secrets::EmbeddedSecrets::open(
                    dir.join("secrets.json"),
                )?),
                None => Arc::new(crate::secrets::EmbeddedSecrets::in_memory()),
            },
        };
        builder = builder.secrets(secrets.clone());
        if let Some(url) = self.state_url(state_flag) {
            let options = self.redis_options();
            let state = match connect {
                Connect::Now => crate::state::RedisState::connect_with(&url, options).await?,
                Connect::Lazily => crate::state::RedisState::connect_lazily(&url, options).await?,
            };
            builder = builder.state(Arc::new(state));
        }
        let llm = self
            .llm_provider(|path| async move {
                let session = secrets
                    .login(
                        HOST_IDENTITY,
                        crate::Tier::Architect,
                        Duration::from_secs(60),
                    )
                    .await?;
                Ok(session.read(&path).await?)
            })
            .await?;
        if let Some(llm) = llm {
            builder = builder.llm(llm);
        }
        Ok(builder)
    }

    /// The tier table the configuration names (`policies`), or the built-in one.
    pub fn tier_table(&self) -> Result<TierTable, Error> {
        match &self.policies {
            Some(policies) => Ok(TierTable::from_file(self.resolve(policies))?),
            None => Ok(TierTable::builtin()?),
        }
    }

    /// What needs no connection: data directory, tier table, tools, durability, health.
    fn local_builder(&self, data_dir: Option<PathBuf>) -> Result<HostBuilder, Error> {
        let mut builder = crate::Host::builder().call_durability(self.call_durability);
        if let Some(dir) = data_dir.or_else(|| self.data_dir.as_ref().map(|d| self.resolve(d))) {
            builder = builder.data_dir(dir);
        }
        if let Some(policies) = &self.policies {
            builder = builder.tiers(TierTable::from_file(self.resolve(policies))?);
        }
        if let Some(tools) = &self.tools {
            builder = builder.tools(ToolRegistry::from_file(self.resolve(tools))?);
        }
        if let Some(health) = &self.health {
            builder = builder.health_interval(health.interval);
        }
        for file in self.http.iter().flat_map(|h| &h.roots) {
            builder = builder.http_roots(read_pem_certificates(&self.resolve(file))?);
        }
        Ok(builder)
    }

    /// The configured LLM provider, with its key read through `read_secret`.
    pub async fn llm_provider<F, Fut>(
        &self,
        read_secret: F,
    ) -> Result<Option<Arc<dyn crate::llm::LlmProvider>>, Error>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, Error>>,
    {
        let Some(llm) = &self.llm else {
            return Ok(None);
        };
        let mut llm = llm.clone();
        if let Some(rules) = &llm.rules {
            llm.rules = Some(self.resolve(rules));
        }
        let key = match &llm.api_key_secret {
            Some(path) => Some(read_secret(path.clone()).await?.ok_or_else(|| Error::Config {
                origin: "`[llm]`".into(),
                message: format!("`api_key_secret` names `{path}`, which is not in the secrets store; add it with `warden secrets set {path}`"),
            })?),
            None => None,
        };
        Ok(Some(provider_from_config(&llm, key)?))
    }
}

/// The certificates of a PEM file (`[http] roots`).
fn read_pem_certificates(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, Error> {
    use rustls::pki_types::pem::PemObject;
    let invalid = |message: String| Error::Config {
        origin: "`[http] roots`".into(),
        message,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(format!("cannot read `{}`: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("`{}` is not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "`{}` holds no certificate: expected `-----BEGIN CERTIFICATE-----` blocks",
            path.display()
        )));
    }
    Ok(certs)
}
