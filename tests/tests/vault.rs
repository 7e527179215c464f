//! The Vault backend against a real `bao server -dev`: AppRole per agent, tier policies
//! enforced by Vault itself, caching, renewal, expiry and revocation.
//!
//! Tokens are never exposed by the backend; the tests recover them from the server's raw
//! audit log to call Vault directly, as an attacker holding a leaked token would.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use warden::Tier;
use warden::TierTable;
use warden::secrets::vault::SetupReport;
use warden::secrets::{SecretBackend, SecretSession, SecretsError, VaultConfig, VaultSecrets};
use warden_tests::bao_server::BaoServer;

const HOUR: Duration = Duration::from_secs(3600);

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/vault")
}

fn tier_ttl(tier: Tier) -> Duration {
    TierTable::builtin().unwrap().policy(tier).secrets_ttl
}

async fn connect(server: &BaoServer) -> VaultSecrets {
    VaultSecrets::connect(VaultConfig::new(server.addr(), server.root_token()))
        .await
        .unwrap()
}

/// Connect, set up with `agents` and seed a few secrets.
async fn prepared(server: &BaoServer, agents: &[(&str, Tier)]) -> (VaultSecrets, SetupReport) {
    let vault = connect(server).await;
    let agents: Vec<(String, Tier)> = agents.iter().map(|(a, t)| (a.to_string(), *t)).collect();
    let report = vault
        .setup(&policies_dir(), &agents, tier_ttl)
        .await
        .unwrap();
    for (path, value) in [
        ("t3/db-password", "hunter2"),
        ("t4/root-token", "root-of-all"),
        ("agents/exec-1/key", "mine"),
        ("agents/other/key", "theirs"),
    ] {
        vault.put(path, value).await.unwrap();
    }
    (vault, report)
}

/// One plain-HTTP call to the dev server: (status, JSON body or null).
fn call(server: &BaoServer, method: &str, path: &str, token: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!(
        "{method} /v1/{path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-Vault-Token: {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The token of `agent`'s most recent login, from the audit log.
fn latest_token(server: &BaoServer, agent: &str) -> String {
    server
        .audit_log()
        .into_iter()
        .filter(|e| e["type"] == "response" && e["request"]["path"] == "auth/approle/login")
        .filter(|e| e["auth"]["metadata"]["warden_agent"] == agent)
        .filter_map(|e| e["auth"]["client_token"].as_str().map(str::to_string))
        .next_back()
        .unwrap_or_else(|| panic!("no login of `{agent}` in the audit log"))
}

/// Reads of `path` that reached Vault with `token`.
fn reads_with(server: &BaoServer, path: &str, token: &str) -> usize {
    server
        .requests_to(path)
        .iter()
        .filter(|e| e["request"]["operation"] == "read" && e["auth"]["client_token"] == token)
        .count()
}

async fn login(vault: &VaultSecrets, agent: &str, tier: Tier) -> Arc<dyn SecretSession> {
    vault.login(agent, tier, tier_ttl(tier)).await.unwrap()
}

#[tokio::test]
async fn setup_writes_tier_policies_and_a_role_per_agent() {
    let server = BaoServer::start();
    let agents = [
        ("obs-1", Tier::Observer),
        ("exec-1", Tier::Executor),
        ("arch-1", Tier::Architect),
    ];
    let (vault, report) = prepared(&server, &agents).await;
    assert_eq!(
        report.policies,
        [
            "warden-t0-observer",
            "warden-t1-operator",
            "warden-t2-builder",
            "warden-t3-executor",
            "warden-t4-architect"
        ]
    );
    assert_eq!(
        report.roles,
        ["warden-obs-1", "warden-exec-1", "warden-arch-1"]
    );
    // The dev server already has `secret/` (KV v2); AppRole is new.
    assert!(report.enabled_approle && !report.enabled_kv, "{report:?}");

    let root = server.root_token();
    let (_, t3) = call(&server, "GET", "sys/policies/acl/warden-t3-executor", root);
    let t3 = t3["data"]["policy"].as_str().unwrap();
    assert!(t3.contains(r#"path "secret/data/t3/*""#), "{t3}");
    assert!(!t3.contains("t4/"), "{t3}");
    let (_, t0) = call(&server, "GET", "sys/policies/acl/warden-t0-observer", root);
    assert!(
        !t0["data"]["policy"]
            .as_str()
            .unwrap()
            .contains(r#"path "secret/"#)
    );

    for (agent, policies, ttl) in [
        ("obs-1", vec!["warden-t0-observer"], 3600),
        (
            "exec-1",
            vec!["warden-t3-executor", "warden-agent-exec-1"],
            900,
        ),
        (
            "arch-1",
            vec!["warden-t4-architect", "warden-agent-arch-1"],
            900,
        ),
    ] {
        let (status, role) = call(
            &server,
            "GET",
            &format!("auth/approle/role/warden-{agent}"),
            root,
        );
        assert_eq!(status, 200, "{agent}");
        let role = &role["data"];
        assert_eq!(
            role["token_policies"],
            serde_json::json!(policies),
            "{agent}"
        );
        assert_eq!(role["token_ttl"], ttl, "{agent}");
        assert_eq!(role["token_max_ttl"], ttl * 4, "{agent}");
        assert_eq!(role["secret_id_num_uses"], 1, "{agent}");
        assert_eq!(role["token_no_default_policy"], true, "{agent}");
    }
    let (_, own) = call(&server, "GET", "sys/policies/acl/warden-agent-exec-1", root);
    assert!(
        own["data"]["policy"]
            .as_str()
            .unwrap()
            .contains(r#"path "secret/data/agents/exec-1/*""#)
    );

    // Idempotent: a second run changes nothing it need not.
    let again = vault
        .setup(
            &policies_dir(),
            &[("exec-1".into(), Tier::Executor)],
            tier_ttl,
        )
        .await
        .unwrap();
    assert!(!again.enabled_approle && !again.enabled_kv, "{again:?}");
    assert_eq!(
        vault.list().await.unwrap(),
        [
            "agents/exec-1/key",
            "agents/other/key",
            "t3/db-password",
            "t4/root-token"
        ]
    );
}

#[tokio::test]
async fn a_t3_token_reads_t3_and_vault_itself_refuses_t4() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let session = login(&vault, "exec-1", Tier::Executor).await;
    assert_eq!(vault.backend(), "vault");

    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );
    assert_eq!(
        session.read("agents/exec-1/key").await.unwrap().as_deref(),
        Some("mine")
    );
    assert_eq!(session.read("t3/missing").await.unwrap(), None);

    // The session is called directly, past any host-side tier check: Vault refuses.
    for path in ["t4/root-token", "agents/other/key"] {
        let err = session.read(path).await.unwrap_err();
        assert!(
            matches!(&err, SecretsError::Denied { backend: "vault", path: p } if p == path),
            "{path}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!("the vault secret backend denied access to secret `{path}`")
        );
    }
    // It was Vault that refused the agent's own token, not a check in the host.
    let token = latest_token(&server, "exec-1");
    let denied: Vec<Value> = server
        .audit_log()
        .into_iter()
        .filter(|e| e["type"] == "response" && e["request"]["operation"] == "read")
        .filter(|e| e["request"]["path"] == "secret/data/t4/root-token")
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "one refused read, and the refusal was cached"
    );
    assert_eq!(denied[0]["auth"]["client_token"], token.as_str());
    assert!(
        denied[0]["error"]
            .as_str()
            .unwrap()
            .contains("permission denied")
    );
    let (status, _) = call(&server, "GET", "secret/data/t4/root-token", &token);
    assert_eq!(status, 403);

    // Tokens carry only the tier's policies (no `default`).
    let (_, me) = call(&server, "GET", "auth/token/lookup-self", &token);
    assert_eq!(
        me["data"]["policies"],
        serde_json::json!(["warden-agent-exec-1", "warden-t3-executor"])
    );

    // A T0 agent reads nothing at all.
    let observer = login(&vault, "obs-1", Tier::Observer).await;
    assert!(matches!(
        observer.read("t3/db-password").await,
        Err(SecretsError::Denied { .. })
    ));
}

#[tokio::test]
async fn reads_are_cached_within_the_token_ttl() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let session = login(&vault, "exec-1", Tier::Executor).await;
    let token = latest_token(&server, "exec-1");

    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );
    vault.put("t3/db-password", "rotated").await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            session.read("t3/db-password").await.unwrap().as_deref(),
            Some("hunter2"),
            "served from the cache within the ttl"
        );
    }
    assert_eq!(reads_with(&server, "secret/data/t3/db-password", &token), 1);

    // Concurrent first reads of one path make one call.
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let session = Arc::clone(&session);
            tokio::spawn(async move { session.read("agents/exec-1/key").await })
        })
        .collect();
    for read in reads {
        assert_eq!(read.await.unwrap().unwrap().as_deref(), Some("mine"));
    }
    assert_eq!(
        reads_with(&server, "secret/data/agents/exec-1/key", &token),
        1
    );

    // A new session sees the new value.
    let fresh = login(&vault, "exec-1", Tier::Executor).await;
    assert_eq!(
        fresh.read("t3/db-password").await.unwrap().as_deref(),
        Some("rotated")
    );
}

#[tokio::test]
async fn an_idle_token_expires_and_renewal_keeps_a_long_run_alive() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let ttl = Duration::from_secs(2);

    // Idle past its TTL: nothing renewed it, Vault has expired it too.
    let idle = vault.login("exec-1", Tier::Executor, ttl).await.unwrap();
    let token = latest_token(&server, "exec-1");
    let expires = idle.expires_at().duration_since(SystemTime::now()).unwrap();
    assert!(
        expires <= ttl && expires > Duration::from_secs(1),
        "{expires:?}"
    );
    assert_eq!(
        idle.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    assert!(matches!(
        idle.read("t3/db-password").await,
        Err(SecretsError::Expired)
    ));
    assert_eq!(
        call(&server, "GET", "auth/token/lookup-self", &token).0,
        403
    );

    // A long run reading now and then renews at half its TTL and outlives the first TTL...
    let long = vault.login("exec-1", Tier::Executor, ttl).await.unwrap();
    let token = latest_token(&server, "exec-1");
    let first_expiry = long.expires_at();
    let started = Instant::now();
    while started.elapsed() < ttl * 2 {
        assert_eq!(
            long.read("t3/db-password").await.unwrap().as_deref(),
            Some("hunter2")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(long.expires_at() > first_expiry);
    let renewals = server
        .requests_to("auth/token/renew-self")
        .iter()
        .filter(|e| e["auth"]["client_token"] == token.as_str())
        .count();
    assert!(renewals >= 2, "{renewals} renewals");
    assert_eq!(
        call(&server, "GET", "auth/token/lookup-self", &token).0,
        200
    );

    // ...but not its max TTL (4 × TTL): then it expires, however busy.
    let outcome = loop {
        match long.read("t3/db-password").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(error) => break error,
        }
        assert!(started.elapsed() < ttl * 6, "still alive past its max ttl");
    };
    assert!(matches!(outcome, SecretsError::Expired), "{outcome}");
    assert!(started.elapsed() >= ttl * 3, "{:?}", started.elapsed());
}

#[tokio::test]
async fn revoke_kills_the_token_in_vault_at_once() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let session = login(&vault, "exec-1", Tier::Executor).await;
    let token = latest_token(&server, "exec-1");
    assert_eq!(
        session.read("t3/db-password").await.unwrap().as_deref(),
        Some("hunter2")
    );
    assert_eq!(
        call(&server, "GET", "auth/token/lookup-self", &token).0,
        200
    );

    session.revoke().await.unwrap();
    assert_eq!(
        call(&server, "GET", "auth/token/lookup-self", &token).0,
        403
    );
    assert_eq!(
        call(&server, "GET", "secret/data/t3/db-password", &token).0,
        403
    );
    // No secret-id of the role is left to log in with.
    let (status, _) = call(
        &server,
        "LIST",
        "auth/approle/role/warden-exec-1/secret-id",
        server.root_token(),
    );
    assert_eq!(status, 404);
    // Cached or not, reads are over.
    for path in ["t3/db-password", "t3/other"] {
        assert!(matches!(
            session.read(path).await,
            Err(SecretsError::Revoked)
        ));
    }
    session.revoke().await.unwrap();

    // A token revoked behind the session's back (an operator in Vault) reads as revoked.
    let other = login(&vault, "exec-1", Tier::Executor).await;
    let token = latest_token(&server, "exec-1");
    let (status, _) = call(&server, "POST", "auth/token/revoke-self", &token);
    assert_eq!(status, 204);
    assert!(matches!(
        other.read("t3/db-password").await,
        Err(SecretsError::Revoked)
    ));
}

#[tokio::test]
async fn bind_agent_moves_an_agent_to_another_tier() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let before = login(&vault, "exec-1", Tier::Executor).await;
    assert!(matches!(
        before.read("t4/root-token").await,
        Err(SecretsError::Denied { .. })
    ));

    vault
        .bind_agent("exec-1", Tier::Architect, tier_ttl(Tier::Architect))
        .await
        .unwrap();
    let (_, role) = call(
        &server,
        "GET",
        "auth/approle/role/warden-exec-1",
        server.root_token(),
    );
    assert_eq!(
        role["data"]["token_policies"],
        serde_json::json!(["warden-t4-architect", "warden-agent-exec-1"])
    );
    let after = login(&vault, "exec-1", Tier::Architect).await;
    assert_eq!(
        after.read("t4/root-token").await.unwrap().as_deref(),
        Some("root-of-all")
    );
    // A token keeps the policies it was issued with.
    assert!(matches!(
        before.read("t4/root-token").await,
        Err(SecretsError::Denied { .. })
    ));

    // And back down: the next login loses `t4/*` again.
    vault
        .bind_agent("exec-1", Tier::Builder, tier_ttl(Tier::Builder))
        .await
        .unwrap();
    let demoted = vault
        .login("exec-1", Tier::Builder, tier_ttl(Tier::Builder))
        .await
        .unwrap();
    assert!(matches!(
        demoted.read("t3/db-password").await,
        Err(SecretsError::Denied { .. })
    ));
}

#[tokio::test]
async fn set_tier_moves_the_agents_vault_role_at_once() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let host = warden::Host::builder()
        .secrets(Arc::new(vault))
        .build()
        .unwrap();
    host.register_agent("exec-1", Tier::Executor, None, "test")
        .unwrap();
    let role = |server: &BaoServer| {
        let (status, role) = call(
            server,
            "GET",
            "auth/approle/role/warden-exec-1",
            server.root_token(),
        );
        assert_eq!(status, 200, "{role}");
        (
            role["data"]["token_policies"].clone(),
            role["data"]["token_ttl"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        role(&server),
        (
            serde_json::json!(["warden-t3-executor", "warden-agent-exec-1"]),
            tier_ttl(Tier::Executor).as_secs()
        )
    );

    // Demoted: Vault has the new tier before any bootstrap.
    host.set_tier("exec-1", Tier::Operator, "demoted", "test")
        .await
        .unwrap();
    assert_eq!(
        role(&server),
        (
            serde_json::json!(["warden-t1-operator"]),
            tier_ttl(Tier::Operator).as_secs()
        )
    );
    assert_eq!(
        host.agents().unwrap()[0].tier,
        Tier::Operator,
        "the ledger records the change"
    );

    // With Vault gone the change still stands; the role follows at the next login.
    drop(server);
    host.set_tier("exec-1", Tier::Builder, "promoted", "test")
        .await
        .unwrap();
    assert_eq!(host.agents().unwrap()[0].tier, Tier::Builder);
}

#[tokio::test]
async fn agents_differing_only_in_case_get_separate_roles() {
    let server = BaoServer::start();
    let (vault, report) = prepared(
        &server,
        &[("bob", Tier::Architect), ("Bob", Tier::Observer)],
    )
    .await;
    assert_eq!(report.roles[0], "warden-bob");
    assert!(report.roles[1].starts_with("warden-bob--"), "{report:?}");
    let low = login(&vault, "Bob", Tier::Observer).await;
    let high = login(&vault, "bob", Tier::Architect).await;
    assert!(low.read("t4/root-token").await.is_err());
    assert_eq!(
        high.read("t4/root-token").await.unwrap().as_deref(),
        Some("root-of-all")
    );
}

#[tokio::test]
async fn connect_errors_name_the_address_and_never_the_token() {
    let server = BaoServer::start();
    let wrong = VaultConfig::new(server.addr(), "s.not-the-admin-token");
    let err = VaultSecrets::connect(wrong).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains(&format!(
            "vault at `{}` failed to accept the admin token (lookup-self): http 403",
            server.addr()
        )),
        "{shown}"
    );
    assert!(!shown.contains("s.not-the-admin-token"), "{shown}");

    let (vault, _) = prepared(&server, &[]).await;
    vault.health().await.unwrap();
    let printed = format!("{vault:?} {:?}", vault.config());
    assert!(!printed.contains(server.root_token()), "{printed}");

    let session = login(&vault, "exec-1", Tier::Executor).await;
    assert!(session.expires_at() > SystemTime::now() + tier_ttl(Tier::Executor) / 2);
    let zero = vault.login("exec-1", Tier::Executor, Duration::ZERO).await;
    assert!(matches!(zero, Err(SecretsError::InvalidTtl { .. })));
    let long = vault.login("exec-1", Tier::Executor, HOUR).await.unwrap();
    assert!(long.expires_at() > SystemTime::now() + HOUR / 2);
    assert!(matches!(
        session.read("../etc").await,
        Err(SecretsError::InvalidPath { .. })
    ));
}

/// Every run's token is revoked when the run ends, not only when the agent is revoked: after
/// three completed runs no token of the agent is live in OpenBao.
#[tokio::test]
async fn a_runs_token_is_revoked_at_its_end() {
    let server = BaoServer::start();
    let (vault, _) = prepared(&server, &[("exec-1", Tier::Executor)]).await;
    let host = warden::Host::builder()
        .secrets(Arc::new(vault))
        .build()
        .unwrap();
    for n in 0..3 {
        let p = warden_tests::packet(
            "exec-1",
            &format!("t-token-{n}"),
            "greet",
            &["hello.txt"],
            serde_json::json!({}),
        );
        let report = warden_tests::run(&host, "exec-1", "hello", Tier::Executor, &p)
            .await
            .unwrap();
        assert!(report.outcome.is_success(), "{:?}", report.outcome);
    }
    let tokens: Vec<String> = server
        .audit_log()
        .into_iter()
        .filter(|e| e["type"] == "response" && e["request"]["path"] == "auth/approle/login")
        .filter(|e| e["auth"]["metadata"]["warden_agent"] == "exec-1")
        .filter_map(|e| e["auth"]["client_token"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tokens.len(), 3, "one login per run");
    for token in tokens {
        assert_eq!(
            call(&server, "GET", "auth/token/lookup-self", &token).0,
            403,
            "a token outlived its run"
        );
    }
}
