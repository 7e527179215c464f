//! [`SecretBackend`] on HashiCorp Vault or OpenBao: AppRole per agent, KV v2 for values.
//!
//! The host is the trusted AppRole broker. With its admin token it keeps one role per agent
//! (`auth/<approle>/role/warden-<id>`) whose token policies are the agent's tier policy
//! (`warden-t3-executor`, …, from `policies/vault/*.hcl`) plus, from T3 up, a per-agent
//! policy for `agents/<id>/*`. A login mints a single-use secret-id and exchanges it for the
//! agent's own token; every read goes out with that token, so Vault refuses a path above the
//! tier even if the host's own tier check were wrong.
//!
//! Values live under `<kv>/data/<path>` as `{"value": "<value>"}`.
//!
//! Tokens, secret-ids and values never appear in `Debug` output, errors or logs: errors from
//! `vaultrs` are reduced to the HTTP status and Vault's own error messages before they leave
//! this module, because their `Debug` form can carry response bodies.
//!
//! Every HTTP call passes one [`CircuitBreaker`] per backend ([`VaultConfig::breaker`]): once
//! that many calls in a row found Vault unreachable or failing (no answer, HTTP 5xx), calls
//! fail at once with [`SecretsError::Unavailable`] until a probe after the cool-down finds it
//! back. Reads a session already cached never reach Vault, so they keep working while it is
//! down, until the token's TTL.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use vaultrs::api::auth::approle::requests::{
    GenerateNewSecretIDRequest, SetAppRoleRequest, SetAppRoleRequestBuilder,
};
use vaultrs::api::sys::requests::EnableEngineRequest;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::{SecretBackend, SecretSession, SecretsError, validate_path};
use crate::breaker::{BreakerConfig, BreakerStatus, CircuitBreaker};
use crate::tier::Tier;

const BACKEND: &str = "vault";
/// Longest session TTL, as for the embedded backend.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// `token_max_ttl` is this many times the tier's TTL: renewals keep a long run alive, but a
/// leaked token still dies within a bounded time.
const MAX_TTL_FACTOR: u32 = 4;
/// Each secret-id is minted for one login and used at once.
const SECRET_ID_NUM_USES: u64 = 1;
const SECRET_ID_TTL: &str = "60s";
/// Per-request timeout, so a hung Vault fails a run instead of stalling it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The KV field a Warden secret's value is stored in.
const VALUE_FIELD: &str = "value";

/// Where Vault is and how the host acts as AppRole broker there.
#[derive(Clone)]
pub struct VaultConfig {
    /// `http(s)://host:port`.
    pub addr: String,
    /// A token allowed to manage AppRole roles, mint secret-ids, write policies and the KV
    /// mount: the host acts as the trusted AppRole broker.
    pub admin_token: String,
    /// The KV v2 mount, usually `secret`.
    pub kv_mount: String,
    /// The AppRole auth mount, usually `approle`.
    pub approle_mount: String,
    /// Prefix of every role and policy Warden writes, usually `warden-`.
    pub role_prefix: String,
    /// When the circuit around Vault's HTTP calls opens, and for how long.
    pub breaker: BreakerConfig,
}

impl VaultConfig {
    /// The usual mounts and prefix (`secret`, `approle`, `warden-`) and the default breaker.
    pub fn new(addr: impl Into<String>, admin_token: impl Into<String>) -> VaultConfig {
        VaultConfig {
            addr: addr.into(),
            admin_token: admin_token.into(),
            kv_mount: "secret".into(),
            approle_mount: "approle".into(),
            role_prefix: "warden-".into(),
            breaker: BreakerConfig::default(),
        }
    }
}

impl fmt::Debug for VaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultConfig")
            .field("addr", &self.addr)
            .field("admin_token", &"<redacted>")
            .field("kv_mount", &self.kv_mount)
            .field("approle_mount", &self.approle_mount)
            .field("role_prefix", &self.role_prefix)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// What [`VaultSecrets::setup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetupReport {
    /// AppRole auth was enabled now (it was absent).
    pub enabled_approle: bool,
    /// The KV v2 mount was created now (it was absent).
    pub enabled_kv: bool,
    /// Tier policies written, lowest tier first.
    pub policies: Vec<String>,
    /// Roles written, one per agent, in the order given.
    pub roles: Vec<String>,
}

/// Secrets in Vault/OpenBao; see the module docs.
#[derive(Clone)]
pub struct VaultSecrets {
    shared: Arc<Shared>,
}

struct Shared {
    config: VaultConfig,
    admin: VaultClient,
    breaker: CircuitBreaker,
}

impl fmt::Debug for VaultSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSecrets")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// A Vault failure, already stripped of anything secret.
#[derive(Debug, thiserror::Error)]
enum VaultError {
    #[error("invalid vault configuration: {0}")]
    Config(String),
    #[error("cannot reach vault at `{addr}`: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("vault at `{addr}` is not ready: it is {state}")]
    NotReady { addr: String, state: &'static str },
    #[error("vault at `{addr}` failed to {action}: {detail}")]
    Request {
        addr: String,
        action: String,
        detail: String,
    },
    #[error("invalid agent id `{agent}` for vault: {problem}")]
    InvalidAgent { agent: String, problem: String },
}

fn backend(error: VaultError) -> SecretsError {
    SecretsError::Backend {
        backend: BACKEND,
        source: Box::new(error),
    }
}

/// The HTTP status of an error Vault answered with, if it answered.
fn status(error: &ClientError) -> Option<u16> {
    match error {
        ClientError::APIError { code, .. } => Some(*code),
        _ => None,
    }
}

/// Whether the failure means Vault is unreachable or failing (what the breaker counts): no
/// response, or a 5xx (sealed, standby without forwarding, storage down).
fn is_outage(error: &ClientError) -> bool {
    is_transport(error) || status(error).is_some_and(|code| code >= 500)
}

/// Whether the failure is the transport's (no response): its error chain carries no body.
fn is_transport(error: &ClientError) -> bool {
    match error {
        ClientError::RestClientError { source } => matches!(
            source.to_string().as_str(),
            "Error sending HTTP request" | "Error retrieving HTTP response"
        ),
        _ => false,
    }
}

/// A description of `error` safe to log: Vault's own error messages and the transport's
/// error chain, never a response body (a body that failed to parse may hold a secret).
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::APIError { code, errors } => {
            let errors: Vec<&str> = errors
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
                .collect();
            if errors.is_empty() {
                format!("http {code}")
            } else {
                let joined = errors.join("; ");
                format!(
                    "http {code}: {}",
                    joined.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            }
        }
        ClientError::RestClientError { source } if is_transport(error) => {
            let mut detail = String::new();
            let mut next: Option<&dyn std::error::Error> = std::error::Error::source(source);
            while let Some(cause) = next {
                if !detail.is_empty() {
                    detail.push_str(": ");
                }
                detail.push_str(&cause.to_string());
                next = cause.source();
            }
            if detail.is_empty() {
                "the request failed".into()
            } else {
                detail
            }
        }
        ClientError::RestClientError { .. }
        | ClientError::JsonParseError { .. }
        | ClientError::ResponseEmptyError
        | ClientError::ResponseDataEmptyError
        | ClientError::ResponseWrapError => "unexpected response".into(),
        other => other.to_string().to_lowercase(),
    }
}

impl Shared {
    /// Run one HTTP call through the circuit breaker. The outer error is the breaker's
    /// refusal (the call was not made); the inner result is the call's.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<Result<T, ClientError>, SecretsError> {
        let permit = self
            .breaker
            .permit()
            .map_err(|reason| SecretsError::Unavailable {
                backend: BACKEND,
                location: self.config.addr.clone(),
                reason,
            })?;
        let result = call.await;
        match &result {
            Err(error) if is_outage(error) => permit.failed(describe(error)),
            _ => permit.succeeded(),
        }
        Ok(result)
    }

    fn request_error(&self, action: impl Into<String>, error: &ClientError) -> SecretsError {
        let addr = self.config.addr.clone();
        backend(if is_transport(error) {
            VaultError::Unreachable {
                addr,
                detail: describe(error),
            }
        } else {
            VaultError::Request {
                addr,
                action: action.into(),
                detail: describe(error),
            }
        })
    }

    /// A client for `token` (empty: anonymous). One per session, since the token is part of
    /// the client.
    fn client(&self, token: &str) -> Result<VaultClient, SecretsError> {
        new_client(&self.config.addr, token)
    }

    /// Up, unsealed, and the admin token still accepted.
    async fn check_health(&self) -> Result<(), SecretsError> {
        let addr = &self.config.addr;
        match self.guard(vaultrs::sys::status(&self.admin)).await? {
            Ok(vaultrs::sys::ServerStatus::OK)
            | Ok(vaultrs::sys::ServerStatus::STANDBY)
            | Ok(vaultrs::sys::ServerStatus::PERFSTANDBY) => {}
            Ok(state) => {
                let state = match state {
                    vaultrs::sys::ServerStatus::SEALED => "sealed",
                    vaultrs::sys::ServerStatus::UNINITIALIZED => "not initialized",
                    vaultrs::sys::ServerStatus::RECOVERY => "in recovery mode",
                    _ => "in an unknown state",
                };
                return Err(backend(VaultError::NotReady {
                    addr: addr.clone(),
                    state,
                }));
            }
            // A 2xx health answer means initialized, unsealed and active; OpenBao's omits
            // fields vaultrs 0.8 requires, so its body does not parse. The admin-token
            // check below proves it is really Vault.
            Err(ClientError::RestClientError { source })
                if source.to_string() == "Error parsing HTTP response" => {}
            Err(e) => return Err(self.request_error("report its health", &e)),
        }
        succeeded(self.guard(vaultrs::token::lookup_self(&self.admin)).await?)
            .map_err(|e| self.request_error("accept the admin token (lookup-self)", &e))?;
        Ok(())
    }

    fn tier_policy(&self, tier: Tier) -> String {
        format!("{}{}", self.config.role_prefix, tier_policy_stem(tier))
    }

    fn role(&self, agent: &str) -> String {
        format!("{}{}", self.config.role_prefix, vault_name(agent))
    }

    fn agent_policy(&self, agent: &str) -> String {
        format!("{}agent-{}", self.config.role_prefix, vault_name(agent))
    }

    fn approle(&self) -> &str {
        &self.config.approle_mount
    }

    fn kv(&self) -> &str {
        &self.config.kv_mount
    }
}

fn new_client(addr: &str, token: &str) -> Result<VaultClient, SecretsError> {
    // vaultrs's address setter panics on a malformed URL: check first.
    reqwest::Url::parse(addr).map_err(|e| {
        backend(VaultError::Config(format!(
            "address `{addr}` is not a url: {e}"
        )))
    })?;
    let mut settings = VaultClientSettingsBuilder::default();
    // Every field that vaultrs would otherwise read from `VAULT_*` is set here, so the
    // config is the whole truth; only `VAULT_CACERT` (a private CA) is honoured.
    settings
        .address(addr)
        .token(token)
        .ca_certs(std::env::var("VAULT_CACERT").into_iter().collect())
        .identity(None)
        .verify(true)
        .timeout(Some(REQUEST_TIMEOUT));
    let settings = settings.build().map_err(|e| {
        backend(VaultError::Config(format!(
            "address `{addr}`: {}",
            e.to_string().to_lowercase()
        )))
    })?;
    install_crypto_provider();
    VaultClient::new(settings).map_err(|e| {
        backend(VaultError::Config(format!(
            "cannot build an http client for `{addr}`: {}",
            describe(&e)
        )))
    })
}

/// vaultrs builds its reqwest client without a rustls provider of its own and panics unless
/// the process has a default. Install ring (already linked for the rest of the host) unless
/// the embedder installed one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing the race to another thread installing one is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `T3` → `t3-executor`, the name of the tier's HCL file and (prefixed) policy.
fn tier_policy_stem(tier: Tier) -> String {
    format!("{}-{}", tier.code().to_ascii_lowercase(), tier.name())
}

/// An agent id as a Vault role/policy name. Vault lower-cases those names and wants them to
/// end in a word character, so ids outside that shape (`Bob`, `a-`) get a readable
/// lower-case form plus a digest of the exact id after `--`; plain ids never contain `--`,
/// so two agents never share a role.
fn vault_name(agent: &str) -> String {
    let plain = agent
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
        && agent
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !agent.contains("--");
    if plain {
        return agent.to_string();
    }
    let digest = hex::encode(&Sha256::digest(agent.as_bytes())[..12]);
    let readable: String = agent
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    format!("{readable}--{digest}")
}

fn check_agent(agent: &str) -> Result<(), SecretsError> {
    crate::id::AgentId::new(agent).map(drop).map_err(|e| {
        backend(VaultError::InvalidAgent {
            agent: agent.to_string(),
            problem: e.reason,
        })
    })
}

fn check_ttl(ttl: Duration) -> Result<(), SecretsError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(SecretsError::InvalidTtl { ttl });
    }
    Ok(())
}

/// Vault counts TTLs in whole seconds; round up so a sub-second TTL is not zero (unlimited).
fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// A mount or prefix name: what Vault accepts without surprises in a URL path.
fn check_name(what: &str, name: &str, allow_slash: bool) -> Result<(), SecretsError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-')
                || (allow_slash && b == b'/')
        })
        && !name.starts_with(['/', '.', '-', '_'])
        && !name.ends_with('/')
        && !name.split('/').any(|s| s.is_empty() || s == "..");
    if ok {
        Ok(())
    } else {
        Err(backend(VaultError::Config(format!(
            "{what} `{name}` must be lower-case letters, digits, `_`, `.` and `-`, starting with a letter or digit"
        ))))
    }
}

/// The policy text of an HCL file, with the stock `secret/` mount swapped for `mount`.
fn rewrite_mount(hcl: &str, mount: &str) -> String {
    if mount == "secret" {
        return hcl.to_string();
    }
    let mut out = String::with_capacity(hcl.len());
    for line in hcl.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        match line.trim_start().strip_prefix("path \"secret/") {
            Some(rest) => {
                out.push_str(indent);
                out.push_str("path \"");
                out.push_str(mount);
                out.push('/');
                out.push_str(rest);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl VaultSecrets {
    /// Connect to Vault at `config.addr` and check that it is up, unsealed and accepts the
    /// admin token, so a misconfiguration fails at start rather than at an agent's first read.
    pub async fn connect(config: VaultConfig) -> Result<VaultSecrets, SecretsError> {
        let vault = VaultSecrets::new(config)?;
        vault.shared.check_health().await?;
        Ok(vault)
    }

    /// Check the configuration without contacting Vault; the first call finds out whether it
    /// is there. For tools that must report an unreachable Vault rather than fail
    /// (`warden health`).
    pub fn new(config: VaultConfig) -> Result<VaultSecrets, SecretsError> {
        check_name("kv mount", &config.kv_mount, true)?;
        check_name("approle mount", &config.approle_mount, true)?;
        check_name("role prefix", &config.role_prefix, false)?;
        if config.admin_token.is_empty()
            || !config.admin_token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(backend(VaultError::Config(format!(
                "the admin token for `{}` is empty or not printable ascii",
                config.addr
            ))));
        }
        let admin = new_client(&config.addr, &config.admin_token)?;
        let breaker = CircuitBreaker::new(format!("vault at {}", config.addr), config.breaker);
        let shared = Shared {
            config,
            admin,
            breaker,
        };
        Ok(VaultSecrets {
            shared: Arc::new(shared),
        })
    }

    /// The configuration in use (the token is redacted in `Debug`).
    pub fn config(&self) -> &VaultConfig {
        &self.shared.config
    }

    /// Prepare Vault for Warden, idempotently: enable AppRole auth and the KV v2 mount if
    /// absent, write the five tier policies from `policies_dir` (`t0-observer.hcl` …
    /// `t4-architect.hcl`), and bind every agent (see [`SecretBackend::bind_agent`]) with
    /// its tier's TTL from `ttls`.
    pub async fn setup(
        &self,
        policies_dir: &Path,
        agents: &[(String, Tier)],
        ttls: impl Fn(Tier) -> Duration,
    ) -> Result<SetupReport, SecretsError> {
        // Read every file before changing anything in Vault.
        let mut policies = Vec::with_capacity(Tier::ALL.len());
        for tier in Tier::ALL {
            let path = policies_dir.join(format!("{}.hcl", tier_policy_stem(tier)));
            let text = read_policy(&path)?;
            policies.push((tier, rewrite_mount(&text, self.shared.kv())));
        }
        for (agent, tier) in agents {
            check_agent(agent)?;
            check_ttl(ttls(*tier))?;
        }

        let mut report = SetupReport {
            enabled_approle: self.ensure_approle().await?,
            enabled_kv: self.ensure_kv().await?,
            ..SetupReport::default()
        };
        for (tier, text) in policies {
            let name = self.shared.tier_policy(tier);
            self.shared
                .guard(vaultrs::sys::policy::set(&self.shared.admin, &name, &text))
                .await?
                .map_err(|e| {
                    self.shared
                        .request_error(format!("write policy `{name}`"), &e)
                })?;
            report.policies.push(name);
        }
        for (agent, tier) in agents {
            self.bind(agent, *tier, ttls(*tier)).await?;
            report.roles.push(self.shared.role(agent));
        }
        Ok(report)
    }

    /// Enable AppRole at the configured mount unless it is there; true when enabled now.
    async fn ensure_approle(&self) -> Result<bool, SecretsError> {
        let shared = &self.shared;
        let mounts = shared
            .guard(vaultrs::sys::auth::list(&shared.admin))
            .await?
            .map_err(|e| shared.request_error("list auth methods", &e))?;
        if let Some(mount) = mounts.get(&format!("{}/", shared.approle())) {
            if mount.mount_type != "approle" {
                return Err(backend(VaultError::Config(format!(
                    "auth mount `{}` is `{}`, not `approle`",
                    shared.approle(),
                    mount.mount_type
                ))));
            }
            return Ok(false);
        }
        shared
            .guard(vaultrs::sys::auth::enable(
                &shared.admin,
                shared.approle(),
                "approle",
                None,
            ))
            .await?
            .map_err(|e| shared.request_error("enable approle auth", &e))?;
        Ok(true)
    }

    /// Create the KV v2 mount unless it is there; true when created now.
    async fn ensure_kv(&self) -> Result<bool, SecretsError> {
        let shared = &self.shared;
        let mounts = shared
            .guard(vaultrs::sys::mount::list(&shared.admin))
            .await?
            .map_err(|e| shared.request_error("list secret engines", &e))?;
        if let Some(mount) = mounts.get(&format!("{}/", shared.kv())) {
            let version = mount
                .options
                .as_ref()
                .and_then(|o| o.get("version"))
                .map(String::as_str);
            if mount.mount_type != "kv" || version != Some("2") {
                let found = if mount.mount_type == "kv" {
                    format!("kv version {}", version.unwrap_or("1"))
                } else {
                    format!("a `{}` engine", mount.mount_type)
                };
                return Err(backend(VaultError::Config(format!(
                    "mount `{}` is {found}, not kv version 2",
                    shared.kv()
                ))));
            }
            return Ok(false);
        }
        let mut options = EnableEngineRequest::builder();
        options.options(HashMap::from([("version".to_string(), "2".to_string())]));
        shared
            .guard(vaultrs::sys::mount::enable(
                &shared.admin,
                shared.kv(),
                "kv",
                Some(&mut options),
            ))
            .await?
            .map_err(|e| shared.request_error("enable the kv v2 mount", &e))?;
        Ok(true)
    }

    async fn bind(&self, agent: &str, tier: Tier, ttl: Duration) -> Result<(), SecretsError> {
        check_agent(agent)?;
        check_ttl(ttl)?;
        let shared = &self.shared;
        let mut policies = vec![shared.tier_policy(tier)];
        // Only ids that are secret-path segments have readable `agents/<id>/*` paths.
        if tier >= Tier::Executor && validate_path(agent).is_ok() {
            let name = shared.agent_policy(agent);
            let text = format!(
                "# Warden: agent `{agent}`'s own secrets.\npath \"{}/data/agents/{agent}/*\" {{\n  capabilities = [\"read\"]\n}}\n",
                shared.kv()
            );
            shared
                .guard(vaultrs::sys::policy::set(&shared.admin, &name, &text))
                .await?
                .map_err(|e| shared.request_error(format!("write policy `{name}`"), &e))?;
            policies.push(name);
        }
        let secs = ttl_secs(ttl);
        let role = shared.role(agent);
        let mut options: SetAppRoleRequestBuilder = SetAppRoleRequest::builder();
        options
            .bind_secret_id(true)
            .secret_id_num_uses(SECRET_ID_NUM_USES)
            .secret_id_ttl(SECRET_ID_TTL)
            .token_policies(policies)
            .token_no_default_policy(true)
            .token_ttl(format!("{secs}s"))
            .token_max_ttl(format!("{}s", secs.saturating_mul(MAX_TTL_FACTOR.into())))
            .token_num_uses(0u64)
            .token_type("service");
        shared
            .guard(vaultrs::auth::approle::role::set(
                &shared.admin,
                shared.approle(),
                &role,
                Some(&mut options),
            ))
            .await?
            .map_err(|e| {
                if status(&e) == Some(404) {
                    backend(VaultError::Config(format!(
                        "vault at `{}` has no approle auth at `{}`: run `warden vault setup`",
                        shared.config.addr,
                        shared.approle()
                    )))
                } else {
                    shared.request_error(format!("write approle role `{role}`"), &e)
                }
            })
    }

    /// Mint a single-use secret-id and log in with it. The secret-id is destroyed if the
    /// login fails, so it cannot be used later.
    async fn approle_login(&self, agent: &str, tier: Tier) -> Result<LoggedIn, SecretsError> {
        let shared = &self.shared;
        let role = shared.role(agent);
        let role_id = shared
            .guard(vaultrs::auth::approle::role::read_id(
                &shared.admin,
                shared.approle(),
                &role,
            ))
            .await?
            .map_err(|e| shared.request_error(format!("read the role-id of `{role}`"), &e))?
            .role_id;
        // Secret-id metadata lands on the token, so Vault's audit log names the agent.
        let metadata = serde_json::json!({ "warden_agent": agent, "warden_tier": tier.code() });
        let mut options = GenerateNewSecretIDRequest::builder();
        options.metadata(metadata.to_string());
        let minted = shared
            .guard(vaultrs::auth::approle::role::secret::generate(
                &shared.admin,
                shared.approle(),
                &role,
                Some(&mut options),
            ))
            .await?
            .map_err(|e| shared.request_error(format!("mint a secret-id for `{role}`"), &e))?;
        let accessor = minted.secret_id_accessor;

        let mut client = shared.client("")?;
        let (started, started_wall) = (Instant::now(), SystemTime::now());
        let login = shared
            .guard(vaultrs::auth::approle::login(
                &client,
                shared.approle(),
                &role_id,
                &minted.secret_id,
            ))
            // Refused by the breaker, the unused secret-id dies with its short TTL.
            .await?;
        match login {
            Ok(auth) => {
                client.set_token(&auth.client_token);
                Ok(LoggedIn {
                    client,
                    auth,
                    secret_id_accessor: accessor,
                    started,
                    started_wall,
                })
            }
            Err(e) => {
                let error = shared.request_error(format!("log in as `{role}`"), &e);
                if let Err(cleanup) = destroy_secret_id(shared, &role, &accessor).await {
                    tracing::warn!(role = %role, error = %cleanup, "cannot destroy the secret-id of a failed login");
                }
                Err(error)
            }
        }
    }
}

/// A fresh AppRole login: the client holding the agent's token, and what Vault said.
struct LoggedIn {
    client: VaultClient,
    auth: vaultrs::api::AuthInfo,
    secret_id_accessor: String,
    /// Taken before the login request, so the lease is never overestimated.
    started: Instant,
    started_wall: SystemTime,
}

fn read_policy(path: &Path) -> Result<String, SecretsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(backend(VaultError::Config(format!(
            "policy file `{}` is empty",
            path.display()
        ))));
    }
    Ok(text)
}

/// Whether the call succeeded. An answer that arrived but did not parse counts: OpenBao's
/// responses lack some fields vaultrs 0.8 requires, and only success matters here.
fn succeeded<T>(result: Result<T, ClientError>) -> Result<(), ClientError> {
    match result {
        Ok(_) => Ok(()),
        Err(ClientError::RestClientError { source })
            if source.to_string() == "Error parsing HTTP response" =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Destroy a secret-id by accessor. One already used up (they are single-use) is gone.
async fn destroy_secret_id(
    shared: &Shared,
    role: &str,
    accessor: &str,
) -> Result<(), SecretsError> {
    match shared
        .guard(vaultrs::auth::approle::role::secret::delete_accessor(
            &shared.admin,
            shared.approle(),
            role,
            accessor,
        ))
        .await?
    {
        Ok(()) => Ok(()),
        Err(ClientError::APIError { code: 404, .. }) => Ok(()),
        Err(ClientError::APIError { errors, .. })
            if errors
                .iter()
                .any(|e| e.contains("failed to find accessor entry")) =>
        {
            Ok(())
        }
        Err(e) => {
            Err(shared.request_error(format!("destroy a secret-id of `{role}` by accessor"), &e))
        }
    }
}

#[async_trait]
impl SecretBackend for VaultSecrets {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// AppRole login. The agent's role is bound to `tier` and `ttl` first, so the token's
    /// policies are always the tier the host holds now, never a stale one; the token TTL is
    /// the role's (`ttl`), renewable up to [`MAX_TTL_FACTOR`] times it.
    async fn login(
        &self,
        agent: &str,
        tier: Tier,
        ttl: Duration,
    ) -> Result<Arc<dyn SecretSession>, SecretsError> {
        self.bind(agent, tier, ttl).await?;
        let LoggedIn {
            client,
            auth,
            secret_id_accessor,
            started,
            started_wall,
        } = self.approle_login(agent, tier).await?;
        let lease = Duration::from_secs(auth.lease_duration);
        let session = VaultSession {
            agent: agent.to_string(),
            tier,
            role: self.shared.role(agent),
            shared: Arc::clone(&self.shared),
            client,
            token_accessor: auth.accessor,
            secret_id_accessor,
            ttl: lease,
            lease: Mutex::new(Lease::new(started, started_wall, lease, auth.renewable)),
            cache: Mutex::new(HashMap::new()),
            io: tokio::sync::Mutex::new(()),
            revoked: AtomicBool::new(false),
            revoke_started: AtomicBool::new(false),
        };
        Ok(Arc::new(session))
    }

    /// Write (or move) the agent's role: tier policy, per-agent policy from T3 up, token TTL
    /// `ttl`. Tokens already issued keep their policies until revoked or expired.
    async fn bind_agent(&self, agent: &str, tier: Tier, ttl: Duration) -> Result<(), SecretsError> {
        self.bind(agent, tier, ttl).await
    }

    /// `sys/health` and the admin token's `lookup-self`: never a walk of the KV mount.
    async fn health(&self) -> Result<(), SecretsError> {
        self.shared.check_health().await
    }

    fn breaker(&self) -> Option<BreakerStatus> {
        Some(self.shared.breaker.status())
    }

    async fn put(&self, path: &str, value: &str) -> Result<(), SecretsError> {
        validate_path(path)?;
        let shared = &self.shared;
        let data = HashMap::from([(VALUE_FIELD, value)]);
        succeeded(
            shared
                .guard(vaultrs::kv2::set(&shared.admin, shared.kv(), path, &data))
                .await?,
        )
        .map_err(|e| shared.request_error(format!("write secret `{path}`"), &e))
    }

    /// Walks the KV mount's folders. Paths Warden cannot address (see
    /// [`validate_path`]) are left out: no session could read them.
    async fn list(&self) -> Result<Vec<String>, SecretsError> {
        let shared = &self.shared;
        let mut found = BTreeSet::new();
        let mut folders = vec![String::new()];
        while let Some(folder) = folders.pop() {
            let keys = match shared
                .guard(vaultrs::kv2::list(&shared.admin, shared.kv(), &folder))
                .await?
            {
                Ok(keys) => keys,
                Err(e) if status(&e) == Some(404) => continue,
                Err(e) => {
                    let shown = if folder.is_empty() {
                        "/"
                    } else {
                        folder.as_str()
                    };
                    return Err(shared.request_error(format!("list secrets under `{shown}`"), &e));
                }
            };
            for key in keys {
                let path = format!("{folder}{key}");
                if path.len() > super::MAX_PATH_LEN + 1 {
                    continue;
                }
                match path.strip_suffix('/') {
                    Some(sub) if validate_path(sub).is_ok() => folders.push(path),
                    Some(_) => {}
                    None if validate_path(&path).is_ok() => {
                        found.insert(path);
                    }
                    None => {}
                }
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// The token's current lease, as this process sees it.
struct Lease {
    /// When the token dies; measured from before the request that granted it, so Vault's
    /// clock never has it alive for less than this.
    deadline: Instant,
    expires_at: SystemTime,
    /// From here on the next read renews.
    renew_after: Instant,
    /// False once Vault stops extending the token (not renewable, or at its max TTL).
    renewable: bool,
}

impl Lease {
    fn new(start: Instant, start_wall: SystemTime, lease: Duration, renewable: bool) -> Lease {
        Lease {
            deadline: start + lease,
            expires_at: start_wall + lease,
            renew_after: start + lease / 2,
            renewable,
        }
    }
}

/// What a read found; denials are cached too, since they hold for the token's lifetime.
#[derive(Clone)]
enum Outcome {
    Value(Option<String>),
    Denied,
}

struct Cached {
    outcome: Outcome,
    until: Instant,
}

/// One agent run's Vault token. Reads go out with it; results are cached for one token TTL.
struct VaultSession {
    agent: String,
    tier: Tier,
    role: String,
    shared: Arc<Shared>,
    /// Holds the agent's token.
    client: VaultClient,
    token_accessor: String,
    secret_id_accessor: String,
    /// The TTL Vault granted at login (the role's).
    ttl: Duration,
    lease: Mutex<Lease>,
    cache: Mutex<HashMap<String, Cached>>,
    /// Serialises Vault calls, so concurrent reads of one path make one call.
    io: tokio::sync::Mutex<()>,
    revoked: AtomicBool,
    revoke_started: AtomicBool,
}

impl fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSession")
            .field("agent", &self.agent)
            .field("tier", &self.tier)
            .field("role", &self.role)
            .field("expires_at", &self.lease.lock().expires_at)
            .field("revoked", &self.revoked.load(Ordering::Relaxed))
            .field("cached", &self.cache.lock().len())
            .finish_non_exhaustive()
    }
}

impl VaultSession {
    fn ensure_live(&self) -> Result<(), SecretsError> {
        if self.revoked.load(Ordering::Acquire) {
            return Err(SecretsError::Revoked);
        }
        if Instant::now() >= self.lease.lock().deadline {
            return Err(SecretsError::Expired);
        }
        Ok(())
    }

    fn renewal_due(&self) -> bool {
        let lease = self.lease.lock();
        lease.renewable && Instant::now() >= lease.renew_after
    }

    fn cached(&self, path: &str) -> Option<Result<Option<String>, SecretsError>> {
        let cache = self.cache.lock();
        let hit = cache.get(path).filter(|c| Instant::now() < c.until)?;
        Some(match &hit.outcome {
            Outcome::Value(value) => Ok(value.clone()),
            Outcome::Denied => Err(self.denied(path)),
        })
    }

    fn denied(&self, path: &str) -> SecretsError {
        SecretsError::Denied {
            backend: BACKEND,
            path: path.to_string(),
        }
    }

    /// `renew-self`. A failure other than a dead token leaves the current lease in place and
    /// retries later: the read itself decides whether Vault is usable.
    async fn renew(&self) -> Result<(), SecretsError> {
        let start = (Instant::now(), SystemTime::now());
        let answer = match self
            .shared
            .guard(vaultrs::token::renew_self(&self.client, None))
            .await
        {
            Ok(answer) => answer,
            Err(unavailable) => {
                self.defer_renewal(&unavailable);
                return Ok(());
            }
        };
        match answer {
            Ok(auth) => {
                let granted = Duration::from_secs(auth.lease_duration);
                let mut lease = self.lease.lock();
                if !granted.is_zero() {
                    *lease = Lease::new(start.0, start.1, granted, auth.renewable);
                }
                // Less than asked for: the token hit its max TTL and cannot grow again.
                if granted < self.ttl {
                    lease.renewable = false;
                }
                Ok(())
            }
            Err(e) if status(&e) == Some(403) => Err(self.token_refused(None).await),
            Err(e) => {
                self.defer_renewal(&describe(&e));
                Ok(())
            }
        }
    }

    /// Keep the current lease and renew at a later read.
    fn defer_renewal(&self, error: &dyn fmt::Display) {
        tracing::warn!(
            agent = %self.agent,
            error = %error,
            "cannot renew the agent's vault token; retrying at a later read"
        );
        let mut lease = self.lease.lock();
        let left = lease.deadline.saturating_duration_since(Instant::now());
        lease.renew_after = Instant::now() + (left / 2).max(Duration::from_secs(1));
    }

    /// Vault answered 403: tell a policy denial (token alive) from a dead token.
    async fn token_refused(&self, path: Option<&str>) -> SecretsError {
        if self.revoked.load(Ordering::Acquire) {
            return SecretsError::Revoked;
        }
        let lookup = match self
            .shared
            .guard(vaultrs::token::lookup_self(&self.client))
            .await
        {
            Ok(lookup) => lookup,
            Err(unavailable) => return unavailable,
        };
        match succeeded(lookup) {
            Ok(_) => match path {
                Some(path) => self.denied(path),
                None => backend(VaultError::Request {
                    addr: self.shared.config.addr.clone(),
                    action: format!("renew the token of `{}`", self.role),
                    detail: "the token may not renew itself: its tier policy must grant `update` on `auth/token/renew-self`".into(),
                }),
            },
            Err(e) if status(&e) == Some(403) => {
                if Instant::now() >= self.lease.lock().deadline {
                    SecretsError::Expired
                } else {
                    // Dead before its time: revoked in Vault (operator, or a revoked parent).
                    self.revoked.store(true, Ordering::Release);
                    self.cache.lock().clear();
                    SecretsError::Revoked
                }
            }
            Err(e) => self.shared.request_error("look up the agent's token", &e),
        }
    }

    async fn fetch(&self, path: &str) -> Result<Outcome, SecretsError> {
        let shared = &self.shared;
        match shared
            .guard(vaultrs::kv2::read::<HashMap<String, serde_json::Value>>(
                &self.client,
                shared.kv(),
                path,
            ))
            .await?
        {
            Ok(mut data) => match data.remove(VALUE_FIELD) {
                Some(serde_json::Value::String(value)) => Ok(Outcome::Value(Some(value))),
                _ => Err(backend(VaultError::Request {
                    addr: shared.config.addr.clone(),
                    action: format!("read secret `{path}`"),
                    detail: format!(
                        "it has no string `{VALUE_FIELD}` field; write it with `warden secrets set`"
                    ),
                })),
            },
            // Absent, or its latest version deleted.
            Err(e) if status(&e) == Some(404) => Ok(Outcome::Value(None)),
            Err(e) if status(&e) == Some(403) => match self.token_refused(Some(path)).await {
                SecretsError::Denied { .. } => Ok(Outcome::Denied),
                other => Err(other),
            },
            Err(e) => Err(shared.request_error(format!("read secret `{path}`"), &e)),
        }
    }
}

#[async_trait]
impl SecretSession for VaultSession {
    async fn read(&self, path: &str) -> Result<Option<String>, SecretsError> {
        validate_path(path)?;
        self.ensure_live()?;
        if self.renewal_due() {
            let _io = self.io.lock().await;
            self.ensure_live()?;
            if self.renewal_due() {
                self.renew().await?;
            }
        }
        if let Some(hit) = self.cached(path) {
            return hit;
        }
        let _io = self.io.lock().await;
        self.ensure_live()?;
        if let Some(hit) = self.cached(path) {
            return hit;
        }
        let outcome = self.fetch(path).await?;
        if self.revoked.load(Ordering::Acquire) {
            return Err(SecretsError::Revoked);
        }
        let until = Instant::now() + self.ttl;
        self.cache.lock().insert(
            path.to_string(),
            Cached {
                outcome: outcome.clone(),
                until,
            },
        );
        match outcome {
            Outcome::Value(value) => Ok(value),
            Outcome::Denied => Err(self.denied(path)),
        }
    }

    /// Revokes the token (`revoke-self`, falling back to the admin token by accessor) and
    /// destroys the secret-id. Reads fail with [`SecretsError::Revoked`] from the first
    /// instant, even if Vault cannot be reached.
    async fn revoke(&self) -> Result<(), SecretsError> {
        self.revoked.store(true, Ordering::Release);
        self.cache.lock().clear();
        if self.revoke_started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let shared = &self.shared;
        let token = match shared
            .guard(vaultrs::token::revoke_self(&self.client))
            .await
        {
            Err(unavailable) => Err(unavailable),
            Ok(Ok(())) => Ok(()),
            // Already dead: expired or revoked in Vault.
            Ok(Err(e)) if status(&e) == Some(403) => Ok(()),
            Ok(Err(e)) => {
                let first =
                    shared.request_error(format!("revoke the token of `{}`", self.role), &e);
                match shared
                    .guard(vaultrs::token::revoke_accessor(
                        &shared.admin,
                        &self.token_accessor,
                    ))
                    .await
                {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(first),
                }
            }
        };
        let secret_id = destroy_secret_id(shared, &self.role, &self.secret_id_accessor).await;
        token.and(secret_id)
    }

    fn expires_at(&self) -> SystemTime {
        self.lease.lock().expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_never_collide_in_vault() {
        assert_eq!(vault_name("reviewer"), "reviewer");
        assert_eq!(vault_name("data_loader.v2"), "data_loader.v2");
        let bob = vault_name("Bob");
        assert!(bob.starts_with("bob--"), "{bob}");
        assert_ne!(bob, vault_name("bob"));
        assert_ne!(vault_name("Bob"), vault_name("BOB"));
        let trailing = vault_name("a-");
        assert!(trailing.starts_with("a_--"), "{trailing}");
        assert_ne!(vault_name("a--b"), "a--b");
        for name in [vault_name("Bob"), vault_name("a-"), vault_name("x.")] {
            assert!(
                name.ends_with(|c: char| c.is_ascii_alphanumeric()),
                "{name}"
            );
            assert!(name.bytes().all(|b| !b.is_ascii_uppercase()), "{name}");
        }
    }

    #[test]
    fn policy_files_are_rewritten_for_another_mount() {
        let hcl = "# secret/ stays in comments\npath \"secret/data/t3/*\" {\n  capabilities = [\"read\"]\n}\n";
        assert_eq!(rewrite_mount(hcl, "secret"), hcl);
        let kv = rewrite_mount(hcl, "kv");
        assert!(kv.contains("path \"kv/data/t3/*\""), "{kv}");
        assert!(kv.contains("# secret/ stays"), "{kv}");
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(900)), 900);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
        assert_eq!(tier_policy_stem(Tier::Executor), "t3-executor");
        assert_eq!(tier_policy_stem(Tier::Observer), "t0-observer");
    }

    #[test]
    fn shipped_policies_match_the_tier_table() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/vault");
        for tier in Tier::ALL {
            let text = read_policy(&dir.join(format!("{}.hcl", tier_policy_stem(tier)))).unwrap();
            let reads: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("path \"secret/data/"))
                .collect();
            let expected: &[&str] = match tier {
                Tier::Executor => &["t3/*\" {"],
                Tier::Architect => &["t3/*\" {", "t4/*\" {"],
                _ => &[],
            };
            assert_eq!(reads, expected, "{tier}");
            assert!(text.contains("path \"auth/token/renew-self\""), "{tier}");
        }
    }

    #[tokio::test]
    async fn bad_configs_fail_before_any_request() {
        let mut config = VaultConfig::new("not a url", "t");
        let err = VaultSecrets::connect(config.clone()).await.unwrap_err();
        assert!(
            err.to_string().contains("address `not a url` is not a url"),
            "{err}"
        );
        config.addr = "http://127.0.0.1:1".into();
        config.kv_mount = "Secret".into();
        let err = VaultSecrets::connect(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains("kv mount `Secret`"), "{err}");
        config.kv_mount = "secret".into();
        config.admin_token = String::new();
        let err = VaultSecrets::connect(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains("admin token"), "{err}");
        assert!(!format!("{config:?}").contains("admin_token: \"\""));
    }

    #[tokio::test]
    async fn unreachable_vault_names_the_address() {
        let config = VaultConfig::new("http://127.0.0.1:1", "s.secret-token");
        let err = VaultSecrets::connect(config.clone()).await.unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(
                "the vault secret backend failed: cannot reach vault at `http://127.0.0.1:1`"
            ),
            "{shown}"
        );
        assert!(!format!("{err:?} {config:?}").contains("s.secret-token"));
    }
}
