//! `wasi:http/outgoing-handler`: governed egress. Standard guest HTTP clients work (the
//! interface is wasmtime-wasi-http's); every request goes through [`Egress`], the send hook,
//! which decides, resolves once, dials only addresses it checked, and records.
//!
//! Tier section `[tiers.Tn.http]` links the interface; without it a component importing
//! `wasi:http` does not load at the tier. Keys:
//! - `allow`: where requests may go, in Spin's `allowed_outbound_hosts` grammar:
//!   `scheme://host[:port]`, scheme `http`, `https` or `*`; host a name, `*.suffix` (its
//!   subdomains), an IP address or a CIDR block; port a number, a range `8000-8100` or `*`
//!   (default: the scheme's). A bare `*`, or `*` as the host, is refused. Empty or missing:
//!   every request is refused.
//! - `allow_networks`: CIDR blocks of otherwise blocked networks (loopback, private,
//!   link-local, unique-local, CGNAT, metadata) that an allowed name may resolve into. An
//!   allowed IP literal or CIDR names its own addresses and needs no entry here.
//! - `max_requests_per_run`, `max_in_flight` (more wait), `max_request_bytes`,
//!   `max_response_bytes`, `timeout`.
//!
//! A packet narrows the list through its `scope` and `forbidden` patterns over the resource
//! `http:<scheme>://<host>:<port><path>`. PLAN only reads: `GET`, `HEAD` and `OPTIONS`.
//! Redirects are never followed by the host: the guest sees the 3xx and each hop is a new,
//! checked request. Every request is an `http.request` row (method, scheme, host, port, path,
//! address, status, bytes, duration); a refusal is a violation like any other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtxView};

use super::AgentCtx;
use super::quota::covers;
use crate::bindings::WitError;
use crate::context::{RunShared, Services};
use crate::egress::{self, EgressError, Fetched, Limits};
use crate::governance::{CallRefusal, Governor, ViolationKind};
use crate::interface::Interface;
use crate::ledger::{ActionRecord, Entry};
use crate::phase::Phase;
use crate::policy::{SectionSpec, TierTable};
use crate::tier::Tier;

pub(super) const SECTION: SectionSpec = SectionSpec::of::<Grant>(Interface::Http);

const OP: &str = "http.request";

/// Bytes of a request's path and query an `http.request` row keeps.
const MAX_ROW_PATH: usize = 2048;

/// `[tiers.Tn.http]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Grant {
    /// Where requests may go.
    #[serde(default)]
    pub allow: Vec<HostRule>,
    /// Blocked networks an allowed name may resolve into.
    #[serde(default)]
    pub allow_networks: Vec<Network>,
    /// Requests one run may make.
    #[serde(default = "default_max_requests")]
    pub max_requests_per_run: u64,
    /// Requests of one run in flight at once; more wait for one to end. With the body
    /// bounds, what a run can make the host hold for HTTP at once.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Bytes of one request's body.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    /// Bytes of one response's body.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// One request, connection to last byte; never past the phase's deadline.
    #[serde(default = "default_timeout", deserialize_with = "crate::duration::de")]
    pub timeout: Duration,
}

const DEFAULT_MAX_REQUESTS: u64 = 100;
const DEFAULT_MAX_IN_FLIGHT: u32 = 4;
const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn default_max_requests() -> u64 {
    DEFAULT_MAX_REQUESTS
}
fn default_max_in_flight() -> u32 {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_max_request_bytes() -> u64 {
    DEFAULT_MAX_REQUEST_BYTES
}
fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

impl crate::policy::Grant for Grant {
    const NONE: &'static Self = &Grant {
        allow: Vec::new(),
        allow_networks: Vec::new(),
        max_requests_per_run: 0,
        max_in_flight: 0,
        max_request_bytes: 0,
        max_response_bytes: 0,
        timeout: Duration::ZERO,
    };

    fn covers(&self, lower: &Self) -> Result<(), String> {
        for rule in &lower.allow {
            if !self.allow.iter().any(|r| r.source == rule.source) {
                return Err(format!(
                    "`allow` lacks `{}`, which the tier below allows",
                    rule.source
                ));
            }
        }
        for network in &lower.allow_networks {
            if !self.allow_networks.contains(network) {
                return Err(format!(
                    "`allow_networks` lacks `{}`, which the tier below allows",
                    network.0
                ));
            }
        }
        covers(
            "max_requests_per_run",
            self.max_requests_per_run,
            lower.max_requests_per_run,
        )?;
        covers(
            "max_in_flight",
            u64::from(self.max_in_flight),
            u64::from(lower.max_in_flight),
        )?;
        covers(
            "max_request_bytes",
            self.max_request_bytes,
            lower.max_request_bytes,
        )?;
        covers(
            "max_response_bytes",
            self.max_response_bytes,
            lower.max_response_bytes,
        )?;
        if self.timeout < lower.timeout {
            return Err(format!(
                "`timeout` {} is below the tier below's {}",
                crate::duration::format(self.timeout),
                crate::duration::format(lower.timeout)
            ));
        }
        Ok(())
    }
}

/// A CIDR block of `allow_networks`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct Network(ipnet::IpNet);

impl TryFrom<String> for Network {
    type Error = String;

    fn try_from(text: String) -> Result<Network, String> {
        parse_net(&text).map(Network).ok_or_else(|| {
            format!("`{text}` is not a CIDR block or an IP address: expected e.g. `10.0.0.0/8` or `fd00::/8`")
        })
    }
}

fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

/// One entry of `allow`.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct HostRule {
    source: String,
    /// `http` or `https`; `None` for `*`.
    scheme: Option<Scheme>,
    host: HostPattern,
    port: PortRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone)]
enum HostPattern {
    /// Exactly this name (lowercase).
    Name(String),
    /// A subdomain of this one (`.example.com`), not the name itself.
    Suffix(String),
    /// An IP address or block: requests to IP literals in it.
    Net(ipnet::IpNet),
}

#[derive(Debug, Clone, Copy)]
enum PortRule {
    /// The scheme's own (80, 443).
    Default,
    Range(u16, u16),
    Any,
}

const GRAMMAR: &str = "expected `scheme://host[:port]` with scheme `http`, `https` or `*`, host a name, `*.suffix`, an IP address or a CIDR block, port a number, `a-b` or `*` (e.g. `https://api.github.com`, `https://*.example.com:443`, `http://10.0.0.0/8:8080`)";

impl TryFrom<String> for HostRule {
    type Error = String;

    fn try_from(source: String) -> Result<HostRule, String> {
        let text = source.trim();
        if text == "*" || text == "*://*" || text == "*://*:*" {
            return Err(format!(
                "`{text}` would allow every host: name the hosts instead (`https://api.github.com`; `https://*.example.com` for subdomains)"
            ));
        }
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("`{text}` has no scheme: {GRAMMAR}"));
        };
        let scheme = match scheme {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "*" => None,
            other => {
                return Err(format!(
                    "`{text}`: scheme `{other}` is not supported (`http`, `https` or `*`)"
                ));
            }
        };
        if rest.is_empty() {
            return Err(format!("`{text}` names no host: {GRAMMAR}"));
        }
        let (host, port) = split_host_port(rest);
        let port = match port {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(port) => match port.split_once('-') {
                Some((low, high)) => match (low.parse::<u16>(), high.parse::<u16>()) {
                    (Ok(low), Ok(high)) if low <= high => PortRule::Range(low, high),
                    _ => return Err(format!("`{text}`: `{port}` is not a port range: {GRAMMAR}")),
                },
                None => match port.parse::<u16>() {
                    Ok(port) => PortRule::Range(port, port),
                    Err(_) => return Err(format!("`{text}`: `{port}` is not a port: {GRAMMAR}")),
                },
            },
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host == "*" {
            return Err(format!(
                "`{text}` would allow every host: name the hosts instead (`https://*.example.com` for subdomains)"
            ));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            valid_name(suffix).ok_or_else(|| format!("`{text}`: `{suffix}` is not a host name: {GRAMMAR}"))?;
            HostPattern::Suffix(format!(".{}", suffix.to_ascii_lowercase()))
        } else if let Some(net) = parse_net(host) {
            HostPattern::Net(net)
        } else if host.contains('/') {
            return Err(format!(
                "`{text}`: a path or a CIDR block on a name is not accepted (CIDR only for IP addresses): {GRAMMAR}"
            ));
        } else {
            valid_name(host).ok_or_else(|| format!("`{text}`: `{host}` is not a host name: {GRAMMAR}"))?;
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(HostRule {
            source: text.to_string(),
            scheme,
            host,
            port,
        })
    }
}

/// `host:port`, `[v6]:port`, `10.0.0.0/8:80`, or a host alone.
fn split_host_port(rest: &str) -> (&str, Option<&str>) {
    if rest.starts_with('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (&rest[..=host.len()], tail.strip_prefix(':')),
            None => (rest, None),
        };
    }
    match rest.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (rest, None),
    }
}

fn valid_name(name: &str) -> Option<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(())
}

/// Where one request goes, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub scheme: &'static str,
    /// Lowercase; an IPv6 literal without brackets.
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Target {
    /// The target of a request URI; `None` for a scheme other than `http` and `https` or a
    /// URI without a host.
    pub fn of(uri: &http::Uri) -> Option<Target> {
        let scheme = match uri.scheme_str()? {
            "http" => "http",
            "https" => "https",
            _ => return None,
        };
        let host = uri.host()?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        Some(Target {
            scheme,
            host,
            port,
            path,
        })
    }

    /// The resource the gate and the packet's patterns see.
    pub fn resource(&self) -> String {
        format!("http:{}://{}{}", self.scheme, self.authority(), self.path)
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl HostRule {
    fn admits(&self, target: &Target) -> bool {
        if self.scheme.is_some_and(|s| s.as_str() != target.scheme) {
            return false;
        }
        let port_ok = match self.port {
            PortRule::Any => true,
            PortRule::Range(low, high) => (low..=high).contains(&target.port),
            PortRule::Default => match self.scheme {
                Some(Scheme::Https) => target.port == 443,
                Some(Scheme::Http) => target.port == 80,
                None => target.port == if target.scheme == "https" { 443 } else { 80 },
            },
        };
        if !port_ok {
            return false;
        }
        match (&self.host, target.ip()) {
            (HostPattern::Net(net), Some(ip)) => net.contains(&egress::canonical(ip)) || net.contains(&ip),
            (HostPattern::Net(_), None) => false,
            (_, Some(_)) => false,
            (HostPattern::Name(name), None) => *name == target.host,
            (HostPattern::Suffix(suffix), None) => {
                target.host.ends_with(suffix.as_str()) && target.host.len() > suffix.len()
            }
        }
    }
}

impl Grant {
    fn admits(&self, target: &Target) -> bool {
        self.allow.iter().any(|rule| rule.admits(target))
    }
}

/// The request's method and target against the phase and the tier's `allow`.
pub(crate) fn check_target(
    tiers: &TierTable,
    tier: Tier,
    phase: Phase,
    method: &http::Method,
    target: &Target,
) -> Result<(), CallRefusal> {
    let resource = target.resource();
    let safe = matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
    if phase == Phase::Plan && !safe {
        return Err(CallRefusal {
            kind: ViolationKind::PhaseDenied,
            resource,
            message: format!(
                "`{method}` of `{}://{}{}` refused: PLAN only reads (`GET`, `HEAD`, `OPTIONS`), before the approval gate; send it in EXECUTE",
                target.scheme,
                target.authority(),
                target.path
            ),
        });
    }
    let grant = |tier: Tier| tiers.policy(tier).grant::<Grant>(Interface::Http);
    if grant(tier).admits(target) {
        return Ok(());
    }
    let lowest = tiers.lowest_tier(|p| {
        p.interfaces.contains(Interface::Http) && p.grant::<Grant>(Interface::Http).admits(target)
    });
    let code = tier.code();
    let hint = match lowest {
        Some(lowest) => format!("the lowest tier allowing it is {}", lowest.code()),
        None => format!("no tier allows it: an operator adds `{}://{}` to `[tiers.{code}.http] allow`", target.scheme, target.authority()),
    };
    let allowed = &grant(tier).allow;
    let listed = if allowed.is_empty() {
        "which is empty".to_string()
    } else {
        format!(
            "which holds {}",
            allowed
                .iter()
                .map(|r| format!("`{}`", r.source))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(CallRefusal {
        kind: ViolationKind::EgressDenied,
        resource,
        message: format!(
            "`{method}` to `{}://{}` refused: not in `[tiers.{code}.http] allow`, {listed}; {hint}",
            target.scheme,
            target.authority()
        ),
    })
}

/// The resolved addresses a request may be sent to: every address in a blocked network is
/// dropped unless an operator named it (an allowed IP literal or block, or `allow_networks`);
/// none left is a refusal naming the address and its network.
pub(crate) fn check_addresses(
    grant: &Grant,
    tier: Tier,
    target: &Target,
    addrs: &[SocketAddr],
) -> Result<Vec<SocketAddr>, CallRefusal> {
    let literal = target.ip().is_some();
    let mut kept = Vec::with_capacity(addrs.len());
    let mut dropped = None;
    for addr in addrs {
        let ip = egress::canonical(addr.ip());
        match egress::blocked_network(ip) {
            None => kept.push(*addr),
            Some(class) => {
                let named = (literal && grant.admits(target))
                    || grant
                        .allow_networks
                        .iter()
                        .any(|n| n.0.contains(&ip) || n.0.contains(&addr.ip()));
                if named {
                    kept.push(*addr);
                } else if dropped.is_none() {
                    dropped = Some((addr.ip(), class));
                }
            }
        }
    }
    if !kept.is_empty() {
        return Ok(kept);
    }
    let message = match dropped {
        Some((ip, class)) => format!(
            "request to `{}://{}` refused: it resolves to `{ip}`, a {class} address, which agents may not reach; an operator who means it names the network in `[tiers.{}.http] allow_networks`",
            target.scheme,
            target.authority(),
            tier.code()
        ),
        None => format!(
            "request to `{}://{}` refused: the name resolves to no address",
            target.scheme,
            target.authority()
        ),
    };
    Err(CallRefusal {
        kind: if dropped.is_some() {
            ViolationKind::NetworkEscape
        } else {
            ViolationKind::EgressDenied
        },
        resource: target.resource(),
        message,
    })
}

/// What a placeholder starts with: `warden-secret:` and 32 hex digits.
pub(crate) const PLACEHOLDER_PREFIX: &str = "warden-secret:";

/// A secret bound to hosts, as the guest holds it: a placeholder, which the host substitutes
/// only in the headers of requests to those hosts.
struct Placeholder {
    token: String,
    path: String,
    value: String,
    hosts: Vec<HostRule>,
}

/// The placeholders a run was given (shared by its store and its requests in flight).
#[derive(Clone, Default)]
pub(crate) struct Placeholders(Arc<parking_lot::Mutex<Vec<Placeholder>>>);

/// A placeholder found where it may not go: the secret's path and the hosts it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Leak {
    pub path: String,
    pub hosts: Vec<String>,
}

impl Placeholders {
    /// A new placeholder standing for `value` of secret `path`, bound to `hosts`.
    fn issue(&self, path: &str, value: String, hosts: &[HostRule]) -> String {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce[..]);
        let token = format!("{PLACEHOLDER_PREFIX}{}", hex::encode(nonce));
        self.0.lock().push(Placeholder {
            token: token.clone(),
            path: path.to_string(),
            value,
            hosts: hosts.to_vec(),
        });
        token
    }

    /// The first placeholder of this run that `data` carries.
    pub fn find(&self, data: &[u8]) -> Option<Leak> {
        let prefix = PLACEHOLDER_PREFIX.as_bytes();
        if !data.windows(prefix.len()).any(|w| w == prefix) {
            return None;
        }
        let held = self.0.lock();
        held.iter()
            .find(|p| data.windows(p.token.len()).any(|w| w == p.token.as_bytes()))
            .map(|p| Leak {
                path: p.path.clone(),
                hosts: p.hosts.iter().map(|r| r.source.clone()).collect(),
            })
    }

    /// `value` with every placeholder replaced by its secret, when each is bound to `target`;
    /// otherwise the first one that is not.
    fn substitute(&self, value: &str, target: &Target) -> Result<String, Leak> {
        let held = self.0.lock();
        let mut out = value.to_string();
        for placeholder in held.iter().filter(|p| value.contains(&p.token)) {
            if !placeholder.hosts.iter().any(|rule| rule.admits(target)) {
                return Err(Leak {
                    path: placeholder.path.clone(),
                    hosts: placeholder.hosts.iter().map(|r| r.source.clone()).collect(),
                });
            }
            out = out.replace(&placeholder.token, &placeholder.value);
        }
        Ok(out)
    }
}

/// The refusal of a placeholder sent where its secret may not go: a procedure violation.
pub(crate) fn leak_refusal(op: &str, resource: String, leak: &Leak, place: &str) -> CallRefusal {
    let hosts = if leak.hosts.is_empty() {
        "no host".to_string()
    } else {
        leak.hosts
            .iter()
            .map(|h| format!("`{h}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    CallRefusal {
        kind: ViolationKind::SecretLeak,
        resource,
        message: format!(
            "`{op}` refused: {place} carries the placeholder of secret `{}`, which may be sent only in a header of a request to {hosts}",
            leak.path
        ),
    }
}

impl AgentCtx {
    /// Give the guest a placeholder for `value` of secret `path`, bound to `hosts`.
    pub(super) fn bind_secret(&mut self, path: &str, value: String, hosts: &[HostRule]) -> String {
        self.egress.issued = true;
        self.egress.placeholders.issue(path, value, hosts)
    }

    /// Refuse a call whose data carries one of the run's placeholders (a tool argument, a
    /// message, an artifact, a prompt, a note, a state or blackboard value). Free until the
    /// run holds a placeholder.
    pub(super) async fn refuse_placeholders(
        &mut self,
        op: &'static str,
        resource: impl FnOnce() -> String,
        data: &[&[u8]],
    ) -> Result<(), WitError> {
        if !self.egress.issued {
            return Ok(());
        }
        let Some(leak) = data.iter().find_map(|d| self.egress.placeholders.find(d)) else {
            return Ok(());
        };
        let refusal = leak_refusal(op, resource(), &leak, "its data");
        Err(self.gov.refuse(op, refusal).await)
    }
}

/// Links `wasi:http/types` and `wasi:http/outgoing-handler` (the registry's `link` for
/// `http`); requests go through [`Egress`].
pub(super) fn link(linker: &mut Linker<AgentCtx>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

impl wasmtime_wasi_http::WasiHttpView for AgentCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // The request in flight is bounded by the deadline of the phase that sent it.
        self.egress.deadline = self.meter.deadline;
        WasiHttpCtxView {
            hooks: &mut self.egress,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}

/// The send hook of one run: the requests it made, and what a request needs to be decided,
/// sent and recorded away from the store.
pub(crate) struct Egress {
    services: Arc<Services>,
    run: Arc<RunShared>,
    requests: u64,
    deadline: Instant,
    /// Made at the run's first request: `max_in_flight` permits.
    in_flight: Option<Arc<tokio::sync::Semaphore>>,
    /// The placeholders of the secrets the run read that are bound to hosts.
    placeholders: Placeholders,
    /// Whether it holds any (the other capabilities look only then).
    issued: bool,
}

impl Egress {
    pub fn new(services: &Arc<Services>, run: &Arc<RunShared>, deadline: Instant) -> Egress {
        Egress {
            services: services.clone(),
            run: run.clone(),
            requests: 0,
            deadline,
            in_flight: None,
            placeholders: Placeholders::default(),
            issued: false,
        }
    }
}

type SendResult = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl wasmtime_wasi_http::WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        self.requests += 1;
        let in_flight = self
            .in_flight
            .get_or_insert_with(|| {
                let grant = self.services.tiers.policy(self.run.tier).grant::<Grant>(Interface::Http);
                Arc::new(tokio::sync::Semaphore::new(grant.max_in_flight.max(1) as usize))
            })
            .clone();
        let send = Outbound {
            services: self.services.clone(),
            run: self.run.clone(),
            ordinal: self.requests,
            deadline: self.deadline,
            options,
            placeholders: self.issued.then(|| self.placeholders.clone()),
        };
        Box::new(async move {
            // Held until the response is read whole (the body the guest then reads is in
            // its own table, counted against `wasi_resources`).
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return Err(HttpError::HttpRequestDenied);
            };
            let response = send.run(request).await?;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(async { Ok(()) });
            Ok((response.map(|body| Full::new(body).map_err(|never| match never {}).boxed_unsync()), io))
        })
    }
}

/// One request, decided and sent on the runtime (the guest waits on its pollable).
struct Outbound {
    services: Arc<Services>,
    run: Arc<RunShared>,
    /// Its number in the run, from 1.
    ordinal: u64,
    deadline: Instant,
    options: Option<RequestOptions>,
    /// The run's placeholders, when it holds any.
    placeholders: Option<Placeholders>,
}

/// What the ledger row of a request says.
#[derive(serde::Serialize)]
struct Row<'a> {
    method: &'a str,
    scheme: &'a str,
    host: &'a str,
    port: u16,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    request_bytes: usize,
    response_bytes: usize,
    duration_ms: u64,
}

impl Outbound {
    async fn run(self, request: http::Request<WasiBody>) -> Result<http::Response<Bytes>, HttpError> {
        let mut gov = Governor::new(self.services.clone(), self.run.clone(), None);
        if self.run.is_revoked() {
            return Err(HttpError::HttpRequestDenied);
        }
        self.run.touch();
        // A replay answers from the journal, which does not hold responses: it stops here
        // rather than reach the network, and a resume does not send a request twice.
        let journal = &self.run.journal;
        if journal.has_recorded() || journal.is_offline_replay() {
            journal.halt_because(format!(
                "the run made HTTP request {} while its journal was fed back; a replay or resume does not send HTTP requests again",
                self.ordinal
            ));
            return Err(HttpError::HttpRequestDenied);
        }
        let Some(target) = Target::of(request.uri()) else {
            let refusal = CallRefusal::invalid(
                format!("http:{}", request.uri()),
                format!("`{}` is not an `http` or `https` URL with a host", request.uri()),
            );
            gov.refuse(OP, refusal).await;
            return Err(HttpError::HttpRequestUriInvalid);
        };
        let tier = self.run.tier;
        let policy = self.services.tiers.policy(tier);
        let grant = policy.grant::<Grant>(Interface::Http);
        let method = request.method().clone();
        // The tier links the interface, the packet's patterns admit the URL (they only narrow).
        gov.gate(Interface::Http, OP, || target.resource())
            .await
            .map_err(|_| HttpError::HttpRequestDenied)?;
        let decided = check_target(&self.services.tiers, tier, self.run.phase(), &method, &target)
            .and_then(|()| {
                if self.ordinal > grant.max_requests_per_run {
                    Err(CallRefusal::over_quota(
                        target.resource(),
                        format!(
                            "request {} of the run refused: `[tiers.{}.http] max_requests_per_run` is {}",
                            self.ordinal,
                            tier.code(),
                            grant.max_requests_per_run
                        ),
                    ))
                } else {
                    Ok(())
                }
            });
        if let Err(refusal) = decided {
            gov.refuse(OP, refusal).await;
            return Err(HttpError::HttpRequestDenied);
        }
        // The body, bounded, before anything leaves the host.
        let (mut parts, body) = request.into_parts();
        // A placeholder becomes its secret only in a header of a request to its hosts.
        if let Some(placeholders) = &self.placeholders {
            if let Some(leak) = placeholders.find(target.path.as_bytes()) {
                gov.refuse(OP, leak_refusal(OP, target.resource(), &leak, "its URL")).await;
                return Err(HttpError::HttpRequestDenied);
            }
            for value in parts.headers.values_mut() {
                let Ok(text) = value.to_str() else {
                    continue;
                };
                if !text.contains(PLACEHOLDER_PREFIX) {
                    continue;
                }
                match placeholders.substitute(text, &target) {
                    Ok(secret) => match ::http::HeaderValue::from_str(&secret) {
                        Ok(mut real) => {
                            real.set_sensitive(true);
                            *value = real;
                        }
                        Err(_) => return Err(HttpError::HttpRequestHeaderSize {
                            field_name: None,
                            field_size: None,
                        }),
                    },
                    Err(leak) => {
                        let refusal = leak_refusal(OP, target.resource(), &leak, "a header");
                        gov.refuse(OP, refusal).await;
                        return Err(HttpError::HttpRequestDenied);
                    }
                }
            }
        }
        let limit = usize::try_from(grant.max_request_bytes).unwrap_or(usize::MAX);
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                let refusal = CallRefusal::over_quota(
                    target.resource(),
                    format!(
                        "request body refused: larger than `[tiers.{}.http] max_request_bytes` ({} bytes)",
                        tier.code(),
                        grant.max_request_bytes
                    ),
                );
                gov.refuse(OP, refusal).await;
                return Err(HttpError::HttpRequestBodySize(Some(grant.max_request_bytes)));
            }
            Err(_) => return Err(HttpError::HttpRequestBodySize(None)),
        };
        if let Some(leak) = self.placeholders.as_ref().and_then(|p| p.find(&body)) {
            gov.refuse(OP, leak_refusal(OP, target.resource(), &leak, "its body")).await;
            return Err(HttpError::HttpRequestDenied);
        }
        // Resolved once; only the addresses checked here are dialled.
        let addrs = match target.ip() {
            Some(ip) => vec![SocketAddr::new(ip, target.port)],
            None => match tokio::net::lookup_host((target.host.as_str(), target.port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => Vec::new(),
            },
        };
        if addrs.is_empty() {
            self.record(&method, &target, None, body.len(), 0, Duration::ZERO, Some(("DNS_ERROR", format!("`{}` does not resolve", target.host)))).await;
            return Err(HttpError::DnsError { rcode: None, info_code: None });
        }
        let addrs = match check_addresses(grant, tier, &target, &addrs) {
            Ok(addrs) => addrs,
            Err(refusal) => {
                gov.refuse(OP, refusal).await;
                return Err(HttpError::DestinationIpProhibited);
            }
        };
        // What the guest saw before the request is committed before it is sent.
        let held = journal.take_pending();
        if !held.is_empty() {
            let _ = self.services.ledger.append_all_async(held, false).await;
        }
        let timeout = self.timeout(grant.timeout);
        let request_bytes = body.len();
        let outgoing = http::Request::from_parts(parts, Full::new(body));
        let started = Instant::now();
        let limits = Limits {
            max_response_bytes: grant.max_response_bytes,
            timeout,
        };
        let result = self
            .services
            .egress
            .send(&target.host, &addrs, target.scheme == "https", outgoing, limits)
            .await;
        let elapsed = started.elapsed();
        match result {
            Ok(Fetched { response, peer }) => {
                let status = response.status().as_u16();
                let bytes = response.body().len();
                self.record(&method, &target, Some((peer, status)), request_bytes, bytes, elapsed, None).await;
                Ok(response)
            }
            Err(EgressError::ResponseTooLarge { limit, .. }) => {
                let refusal = CallRefusal::over_quota(
                    target.resource(),
                    format!(
                        "response of `{}://{}` refused: larger than `[tiers.{}.http] max_response_bytes` ({limit} bytes)",
                        target.scheme,
                        target.authority(),
                        tier.code()
                    ),
                );
                gov.refuse(OP, refusal).await;
                Err(HttpError::HttpResponseBodySize(Some(limit)))
            }
            Err(error) => {
                let code = match &error {
                    EgressError::Timeout { .. } => HttpError::ConnectionTimeout,
                    EgressError::Connect { .. } => HttpError::ConnectionRefused,
                    EgressError::ServerName(_) | EgressError::Tls { .. } => HttpError::TlsProtocolError,
                    _ => HttpError::HttpProtocolError,
                };
                self.record(&method, &target, None, request_bytes, 0, elapsed, Some(("HTTP_ERROR", error.to_string()))).await;
                Err(code)
            }
        }
    }

    /// The tier's timeout, the guest's own options if shorter, never past the phase's deadline.
    fn timeout(&self, tier: Duration) -> Duration {
        let phase = self.deadline.saturating_duration_since(Instant::now());
        let guest = self.options.and_then(|o| {
            [o.connect_timeout, o.first_byte_timeout]
                .into_iter()
                .flatten()
                .max()
        });
        let mut timeout = tier.min(phase);
        if let Some(guest) = guest {
            timeout = timeout.min(guest);
        }
        timeout.max(Duration::from_millis(1))
    }

    #[expect(clippy::too_many_arguments, reason = "the fields of one ledger row")]
    async fn record(
        &self,
        method: &http::Method,
        target: &Target,
        answered: Option<(SocketAddr, u16)>,
        request_bytes: usize,
        response_bytes: usize,
        elapsed: Duration,
        failed: Option<(&'static str, String)>,
    ) {
        // A guest's URL may be as long as the URI grammar allows: the row keeps its start.
        let path = crate::text::clip(&target.path, MAX_ROW_PATH);
        let row = Row {
            method: method.as_str(),
            scheme: target.scheme,
            host: &target.host,
            port: target.port,
            path: &path,
            address: answered.map(|(peer, _)| peer.to_string()),
            status: answered.map(|(_, status)| status),
            request_bytes,
            response_bytes,
            duration_ms: elapsed.as_millis() as u64,
        };
        let mut record = ActionRecord::new(self.run.subject.clone(), OP, "allowed")
            .phase(self.run.phase().as_str())
            .details(serde_json::to_string(&row).unwrap_or_default());
        if let Some((kind, message)) = failed {
            record = record.failed(kind, message);
        }
        // A request is an effect: its row is durable before the guest reads the answer.
        if let Err(error) = self.services.ledger_durable(Entry::Action(record)).await {
            tracing::error!(%error, "cannot record an http request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::testing::TestEnv;
    use wasmtime_wasi_http::WasiHttpHooks;

    fn rule(text: &str) -> HostRule {
        HostRule::try_from(text.to_string()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn target(url: &str) -> Target {
        let uri: http::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
        Target::of(&uri).unwrap_or_else(|| panic!("{url}: no target"))
    }

    #[test]
    fn rules_follow_spins_grammar() {
        let cases: &[(&str, &str, bool)] = &[
            ("https://api.github.com", "https://api.github.com/repos", true),
            ("https://api.github.com", "https://API.GitHub.com/", true),
            ("https://api.github.com", "http://api.github.com/", false),
            ("https://api.github.com", "https://api.github.com:8443/", false),
            ("https://api.github.com", "https://evil.api.github.com/", false),
            ("https://*.example.com", "https://a.example.com/", true),
            ("https://*.example.com", "https://a.b.example.com/", true),
            ("https://*.example.com", "https://example.com/", false),
            ("https://*.example.com", "https://notexample.com/", false),
            ("https://*.example.com:443", "https://a.example.com/", true),
            ("*://example.com", "http://example.com/", true),
            ("*://example.com", "https://example.com/", true),
            ("*://example.com", "https://example.com:80/", false),
            ("http://localhost:8000-8100", "http://localhost:8080/", true),
            ("http://localhost:8000-8100", "http://localhost:8101/", false),
            ("http://localhost:*", "http://localhost:1/", true),
            ("http://10.0.0.0/8:8080", "http://10.1.2.3:8080/", true),
            ("http://10.0.0.0/8:8080", "http://11.1.2.3:8080/", false),
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000/", true),
            // A name is not an IP rule, and an IP rule does not admit a name.
            ("http://127.0.0.1:9000", "http://localhost:9000/", false),
            ("http://[::1]:9000", "http://[::1]:9000/x", true),
        ];
        for (rule_text, url, admitted) in cases {
            assert_eq!(rule(rule_text).admits(&target(url)), *admitted, "{rule_text} vs {url}");
        }
    }

    #[test]
    fn rules_that_allow_everything_or_do_not_parse_are_refused_with_a_hint() {
        for (text, says) in [
            ("*", "would allow every host"),
            ("*://*:*", "would allow every host"),
            ("https://*", "would allow every host"),
            ("https://*:443", "would allow every host"),
            ("api.github.com", "has no scheme"),
            ("ftp://example.com", "scheme `ftp` is not supported"),
            ("https://example.com/path", "a path or a CIDR block on a name"),
            ("https://example.com:http", "is not a port"),
            ("https://example.com:90-80", "is not a port range"),
            ("https://exa mple.com", "is not a host name"),
            ("https://", "names no host"),
        ] {
            let Err(error) = HostRule::try_from(text.to_string()) else {
                panic!("`{text}` was accepted");
            };
            assert!(error.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn resources_name_scheme_host_port_and_path() {
        assert_eq!(
            target("https://API.github.com/repos?page=2").resource(),
            "http:https://api.github.com:443/repos?page=2"
        );
        assert_eq!(target("http://[::1]:81/").resource(), "http:http://[::1]:81/");
    }

    /// A loopback server that holds each connection 100 ms and keeps the peak of connections
    /// open at once.
    async fn slow_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let seen = peak.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (open, peak) = (open.clone(), seen.clone());
                tokio::spawn(async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let mut buffer = [0u8; 1024];
                    let _ = socket.read(&mut buffer).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    let _ = socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                });
            }
        });
        (port, peak)
    }

    async fn peak_in_flight(max_in_flight: Option<u32>) -> usize {
        let (port, peak) = slow_server().await;
        let mut text = crate::policy::BUILTIN_TIERS_TOML.replace(
            "allow = []",
            &format!("allow = [\"http://127.0.0.1:{port}\"]"),
        );
        if let Some(n) = max_in_flight {
            text = text.replace("max_in_flight = 4", &format!("max_in_flight = {n}"));
        }
        let env = TestEnv::new().tiers(TierTable::from_toml_str(&text).unwrap());
        let mut agent = env.agent(Tier::Builder, serde_json::json!({})).await;
        let sends: Vec<_> = (0..3)
            .map(|_| {
                let request = ::http::Request::get(format!("http://127.0.0.1:{port}/"))
                    .body(
                        http_body_util::Empty::<Bytes>::new()
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    )
                    .unwrap();
                let send = agent.ctx.egress.send_request(request, None, Box::new(async { Ok(()) }));
                tokio::spawn(async move { std::pin::Pin::from(send).await.map(|(r, _)| r.status()) })
            })
            .collect();
        for send in sends {
            assert_eq!(send.await.unwrap().unwrap(), 200);
        }
        peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn requests_past_max_in_flight_wait_for_one_to_end() {
        assert_eq!(peak_in_flight(Some(1)).await, 1);
        assert_eq!(peak_in_flight(None).await, 3);
    }

    #[test]
    fn a_placeholder_becomes_its_secret_only_for_its_hosts() {
        let placeholders = Placeholders::default();
        let token = placeholders.issue("t3/github-token", "ghp_real".into(), &[rule("https://api.github.com")]);
        let header = format!("Bearer {token}");
        assert_eq!(
            placeholders.substitute(&header, &target("https://api.github.com/user")),
            Ok("Bearer ghp_real".to_string())
        );
        let elsewhere = placeholders.substitute(&header, &target("https://evil.example.com/"));
        assert_eq!(
            elsewhere,
            Err(Leak {
                path: "t3/github-token".into(),
                hosts: vec!["https://api.github.com".into()]
            })
        );
        assert!(placeholders.find(format!("x{token}y").as_bytes()).is_some());
        // Another run's (or a made-up) placeholder is just text.
        assert!(placeholders.find(b"warden-secret:00000000000000000000000000000000").is_none());
        assert_eq!(
            placeholders.substitute("Bearer warden-secret:0000", &target("https://evil.example.com/")),
            Ok("Bearer warden-secret:0000".to_string())
        );
    }
}
