//! Governed egress end to end: the `fetcher` agent's `wasi:http` requests against a real HTTP
//! server on loopback, under tier tables that allow it by IP literal (an operator naming the
//! address), and the refusals: not on the list, a name resolving into loopback, above the
//! tier, PLAN's read-only rule, the packet's `forbidden`, the body and request-count bounds.
//! A refused request never reaches the server.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use serde_json::json;
use warden::ledger::{LedgerQuery, Table};
use warden::{Host, RunOutcome, Tier, TierTable};
use warden_tests::http_server::{self, start as server};
use warden_tests::{agent, packet, violation_details, violations};

/// The shipped table with `[tiers.T2..T4.http]` set to `http` (every other key as shipped).
fn tiers(http: &str) -> TierTable {
    let dir = tempfile::tempdir().unwrap();
    TierTable::from_file(tiers_file(dir.path(), http)).unwrap()
}

fn host(http: &str) -> Host {
    Host::builder().tiers(tiers(http)).build().unwrap()
}

/// The shipped table with `[tiers.T2..T4.http]` set to `http`, as a file in `dir`.
fn tiers_file(dir: &std::path::Path, http: &str) -> std::path::PathBuf {
    let mut text = warden::policy::BUILTIN_TIERS_TOML.to_string();
    for tier in ["T2", "T3", "T4"] {
        let header = format!("[tiers.{tier}.http]\n");
        let start = text.find(&header).unwrap() + header.len();
        let end = start + text[start..].find("\n[").unwrap() + 1;
        text.replace_range(start..end, &format!("{http}\n"));
    }
    let path = dir.join("tiers.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Run the fetcher as `id` at `tier` with `objective`; the report and `fetched.txt`'s lines.
async fn fetch(
    host: &Host,
    id: &str,
    tier: Tier,
    objective: &str,
    extra: serde_json::Value,
) -> (warden::RunReport, Vec<String>) {
    let fetcher = agent("fetcher");
    host.register_agent(id, tier, Some(&fetcher), "test")
        .unwrap();
    host.submit_packet(&packet(id, id, objective, &["fetched.txt"], extra))
        .await
        .unwrap();
    let report = host.run(id, &fetcher).await.unwrap();
    let lines = match host.artifact_ref(id, "fetched.txt").await.unwrap() {
        Some(found) => String::from_utf8(host.artifact(&found.digest).unwrap().unwrap())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    (report, lines)
}

/// The `details` of the agent's `http.request` rows, as JSON, oldest first, allowed or not.
fn requests(host: &Host, id: &str) -> Vec<(String, serde_json::Value)> {
    host.ledger().flush().unwrap();
    host.ledger()
        .query(&LedgerQuery {
            agent_id: Some(id.into()),
            table: Some(Table::Actions),
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "http.request")
        .map(|row| {
            let decision = row.fields["decision"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let details = row.fields["details"]
                .as_str()
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(serde_json::Value::Null);
            (decision, details)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allowed_request_is_answered_and_recorded() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(r#"allow = ["http://127.0.0.1:{port}"]"#));
    let (report, lines) = fetch(
        &host,
        "fetch-ok",
        Tier::Builder,
        &format!(
            "fetch: GET http://127.0.0.1:{port}/hello; POST http://127.0.0.1:{port}/echo ping; GET http://127.0.0.1:{port}/redirect; GET http://127.0.0.1:{port}/{}",
            "x".repeat(5000)
        ),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(
        lines[..3],
        [
            format!("GET http://127.0.0.1:{port}/hello -> 200 26 hello from the test server"),
            format!("POST http://127.0.0.1:{port}/echo ping -> 200 4 ping"),
            // A redirect reaches the guest; the host does not follow it.
            format!("GET http://127.0.0.1:{port}/redirect -> 302 0 "),
        ]
    );
    assert!(lines[3].ends_with("-> 404 0 "), "{}", lines[3]);
    assert_eq!(server.hits(), 4);
    let rows = requests(&host, "fetch-ok");
    assert_eq!(rows.len(), 4, "{rows:?}");
    let (decision, first) = &rows[0];
    assert_eq!(decision, "allowed");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["scheme"], "http");
    assert_eq!(first["host"], "127.0.0.1");
    assert_eq!(first["port"], port);
    assert_eq!(first["path"], "/hello");
    assert_eq!(first["status"], 200);
    assert_eq!(first["response_bytes"], 26);
    assert_eq!(first["address"], format!("127.0.0.1:{port}"));
    assert!(first["duration_ms"].is_u64());
    assert_eq!(rows[1].1["request_bytes"], 4);
    assert_eq!(rows[2].1["status"], 302);
    // A guest's long URL is clipped in the row, not kept whole.
    let long = rows[3].1["path"].as_str().unwrap();
    assert!(
        long.len() < 2100 && long.ends_with("(2953 bytes cut)"),
        "{long}"
    );
    assert!(violations(&host, "fetch-ok").is_empty());
    let verified = host.ledger().verify().unwrap();
    assert!(verified.broken.is_none() && verified.registry.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_violations_and_never_reach_the_network() {
    let server = server().await;
    let port = server.port;
    // `localhost` is on the list, but it resolves to loopback, which no operator named.
    let host = host(&format!(
        r#"allow = ["http://127.0.0.1:{port}", "http://localhost:{port}"]"#
    ));
    let (report, lines) = fetch(
        &host,
        "fetch-refused",
        Tier::Builder,
        &format!("fetch: GET http://127.0.0.2:{port}/hello; GET http://localhost:{port}/hello"),
        json!({}),
    )
    .await;
    assert_eq!(server.hits(), 0);
    assert_eq!(
        violations(&host, "fetch-refused"),
        ["EGRESS_DENIED", "NETWORK_ESCAPE"]
    );
    let messages = violation_details(&host, "fetch-refused");
    assert!(
        messages[0].contains(&format!(
            "`GET` to `http://127.0.0.2:{port}` refused: not in `[tiers.T2.http] allow`"
        )) && messages[0].contains(&format!("`http://127.0.0.1:{port}`")),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("resolves to `127.0.0.1`, a loopback address")
            && messages[1].contains("`[tiers.T2.http] allow_networks`"),
        "{messages:?}"
    );
    // Reaching for loopback is a procedure violation: the first one revokes.
    assert!(
        matches!(report.outcome, RunOutcome::Revoked { .. }),
        "{:?}",
        report.outcome
    );
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_names_a_blocked_network_for_a_name() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(
        "allow = [\"http://localhost:{port}\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]"
    ));
    let (report, lines) = fetch(
        &host,
        "fetch-named",
        Tier::Builder,
        &format!("fetch: GET http://localhost:{port}/hello"),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(
        lines,
        [format!(
            "GET http://localhost:{port}/hello -> 200 26 hello from the test server"
        )]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_and_requests_per_run_are_bounded() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(
        "allow = [\"http://127.0.0.1:{port}\"]\nmax_response_bytes = 1048576\nmax_request_bytes = 8"
    ));
    fetch(
        &host,
        "fetch-bounded",
        Tier::Builder,
        &format!(
            "fetch: GET http://127.0.0.1:{port}/big; POST http://127.0.0.1:{port}/echo 0123456789"
        ),
        json!({}),
    )
    .await;
    // The big response was read up to the bound (one hit) and refused; the long body never
    // left the host.
    assert_eq!(server.hits(), 1);
    assert_eq!(
        violations(&host, "fetch-bounded"),
        ["QUOTA_EXCEEDED", "QUOTA_EXCEEDED"]
    );
    let messages = violation_details(&host, "fetch-bounded");
    assert!(
        messages[0].contains("larger than `[tiers.T2.http] max_response_bytes` (1048576 bytes)"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("larger than `[tiers.T2.http] max_request_bytes` (8 bytes)"),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_budget_of_a_run_is_counted() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(
        "allow = [\"http://127.0.0.1:{port}\"]\nmax_requests_per_run = 1"
    ));
    let (report, lines) = fetch(
        &host,
        "fetch-budget",
        Tier::Builder,
        &format!("fetch: GET http://127.0.0.1:{port}/hello; GET http://127.0.0.1:{port}/hello"),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(server.hits(), 1);
    assert!(
        lines[1].ends_with("-> denied: HttpRequestDenied"),
        "{lines:?}"
    );
    let messages = violation_details(&host, "fetch-budget");
    assert!(
        messages[0]
            .contains("request 2 of the run refused: `[tiers.T2.http] max_requests_per_run` is 1"),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_only_reads_and_the_packet_narrows_the_list() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(r#"allow = ["http://127.0.0.1:{port}"]"#));
    let (report, _) = fetch(
        &host,
        "fetch-plan",
        Tier::Builder,
        &format!(
            "fetch plan: POST http://127.0.0.1:{port}/echo x; GET http://127.0.0.1:{port}/hello"
        ),
        json!({}),
    )
    .await;
    let steps = &report.plan_steps;
    assert!(
        steps[0].ends_with("-> denied: HttpRequestDenied"),
        "{steps:?}"
    );
    assert!(steps[1].contains("-> 200 26"), "{steps:?}");
    assert_eq!(violations(&host, "fetch-plan"), ["PHASE_DENIED"]);
    assert!(
        violation_details(&host, "fetch-plan")[0]
            .contains("PLAN only reads (`GET`, `HEAD`, `OPTIONS`)"),
    );

    // The packet's `forbidden` patterns see `http:<scheme>://<host>:<port><path>`.
    let (report, _) = fetch(
        &host,
        "fetch-narrowed",
        Tier::Builder,
        &format!("fetch: GET http://127.0.0.1:{port}/hello; GET http://127.0.0.1:{port}/echo"),
        json!({"constraints": {"forbidden": ["http:*/echo*"]}}),
    )
    .await;
    assert_eq!(violations(&host, "fetch-narrowed"), ["FORBIDDEN_ACTION"]);
    assert!(
        matches!(report.outcome, RunOutcome::Revoked { .. }),
        "{:?}",
        report.outcome
    );
    assert_eq!(server.hits(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn below_the_tier_that_links_http_the_component_does_not_load() {
    let host = host(r#"allow = ["https://api.github.com"]"#);
    let fetcher = agent("fetcher");
    let error = host
        .register_agent("fetch-low", Tier::Operator, Some(&fetcher), "test")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("wasi:http") && error.contains("T2"),
        "{error}"
    );
}

#[test]
fn a_list_that_allows_everything_is_refused_at_load() {
    let text = warden::policy::BUILTIN_TIERS_TOML.replacen(
        "allow = []                    # e.g.",
        r#"allow = ["*"]                 # e.g."#,
        1,
    );
    let error = TierTable::from_toml_str(&text).unwrap_err().to_string();
    assert!(
        error.contains("tiers.T2.http") && error.contains("`*` would allow every host"),
        "{error}"
    );
}

/// HTTPS verifies the name the guest asked for (not the address the host dialled), against
/// Mozilla's roots and the CAs `warden.toml`'s `[http] roots` adds.
#[tokio::test(flavor = "multi_thread")]
async fn https_verifies_the_name_against_the_configured_roots() {
    let (server, ca) = http_server::start_tls().await;
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let http = format!(
        "allow = [\"https://localhost:{port}\", \"https://127.0.0.1:{port}\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]"
    );
    tiers_file(dir.path(), &http);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let config_path = dir.path().join("warden.toml");
    std::fs::write(
        &config_path,
        "policies = \"tiers.toml\"\n[http]\nroots = [\"ca.pem\"]\n",
    )
    .unwrap();
    let config = warden::config::WardenConfig::load(&config_path).unwrap();
    let host = config.builder(None).await.unwrap().build().unwrap();
    let (report, lines) = fetch(
        &host,
        "fetch-tls",
        Tier::Builder,
        // The certificate names `localhost`, not `127.0.0.1`: by address it does not verify.
        &format!("fetch: GET https://localhost:{port}/hello; GET https://127.0.0.1:{port}/hello"),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(
        lines[0],
        format!("GET https://localhost:{port}/hello -> 200 26 hello from the test server")
    );
    assert_eq!(
        lines[1],
        format!("GET https://127.0.0.1:{port}/hello -> failed: TlsProtocolError")
    );
    let rows = requests(&host, "fetch-tls");
    assert_eq!(rows[0].1["scheme"], "https");
    assert_eq!(rows[0].1["status"], 200);
    assert!(rows[1].1["status"].is_null(), "{rows:?}");

    // Without the CA the same server is not trusted.
    let untrusted = host_from(&dir, &http);
    let (_, lines) = fetch(
        &untrusted,
        "fetch-untrusted",
        Tier::Builder,
        &format!("fetch: GET https://localhost:{port}/hello"),
        json!({}),
    )
    .await;
    assert_eq!(
        lines,
        [format!(
            "GET https://localhost:{port}/hello -> failed: TlsProtocolError"
        )]
    );
    assert_eq!(server.hits(), 1);

    // A roots file that holds no certificate is refused with its name.
    std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
    let config = warden::config::WardenConfig::load(&config_path).unwrap();
    let error = config.builder(None).await.err().unwrap().to_string();
    assert!(
        error.contains("`[http] roots`") && error.contains("holds no certificate"),
        "{error}"
    );
}

fn host_from(dir: &tempfile::TempDir, http: &str) -> Host {
    Host::builder()
        .tiers(TierTable::from_file(tiers_file(dir.path(), http)).unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_timeout_fails_and_is_recorded() {
    let server = server().await;
    let port = server.port;
    let host = host(&format!(
        "allow = [\"http://127.0.0.1:{port}\"]\ntimeout = \"300ms\""
    ));
    let started = std::time::Instant::now();
    let (report, lines) = fetch(
        &host,
        "fetch-slow",
        Tier::Builder,
        &format!("fetch: GET http://127.0.0.1:{port}/slow"),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(
        lines,
        [format!(
            "GET http://127.0.0.1:{port}/slow -> failed: ConnectionTimeout"
        )]
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    host.ledger().flush().unwrap();
    let failed = host
        .ledger()
        .query(&LedgerQuery {
            agent_id: Some("fetch-slow".into()),
            table: Some(Table::Actions),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .find(|row| row.kind == "http.request")
        .unwrap();
    let error = failed.fields["error_message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("no response from `127.0.0.1` within 300ms"),
        "{:?}",
        failed.fields
    );
}

/// A replay answers from the journal, which holds no responses: it halts at the request and
/// never reaches the network.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_does_not_send_a_request_again() {
    let server = server().await;
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::builder()
        .data_dir(dir.path().join("data"))
        .tiers(tiers(&format!("allow = [\"http://127.0.0.1:{port}\"]")))
        .build()
        .unwrap();
    let (report, _) = fetch(
        &host,
        "fetch-replayed",
        Tier::Builder,
        &format!("fetch: GET http://127.0.0.1:{port}/hello"),
        json!({}),
    )
    .await;
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    assert_eq!(server.hits(), 1);
    let run = warden::RunId::new(&report.run_id).unwrap();
    let replay = host.replay(&run, Default::default()).await.unwrap();
    assert_eq!(server.hits(), 1);
    assert_ne!(replay.verdict, "identical", "{replay:?}");
    let said = format!("{replay:?}");
    assert!(
        said.contains("made HTTP request 1 while its journal was fed back"),
        "{said}"
    );
}

/// A secret the tier binds to a host reaches the guest as a placeholder; the host puts the
/// value in the header of a request to that host, and refuses the placeholder anywhere else.
#[tokio::test(flavor = "multi_thread")]
async fn a_bound_secret_goes_only_to_its_host_and_never_into_the_guest() {
    let server = server().await;
    let port = server.port;
    let dir = tempfile::tempdir().unwrap();
    let path = tiers_file(
        dir.path(),
        &format!(
            "allow = [\"http://127.0.0.1:{port}\", \"http://localhost:{port}\"]\nallow_networks = [\"127.0.0.0/8\", \"::1/128\"]"
        ),
    );
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "paths = [\"t3/*\", \"agents/{agent}/*\"]",
        &format!(
            "paths = [\"t3/*\", \"agents/{{agent}}/*\"]\nbound = {{ \"t3/api-token\" = [\"http://127.0.0.1:{port}\"] }}"
        ),
        1,
    );
    use warden::secrets::SecretBackend as _;
    let secrets = std::sync::Arc::new(warden::secrets::EmbeddedSecrets::in_memory());
    secrets.put("t3/api-token", "tok-REAL-VALUE").await.unwrap();
    let host = Host::builder()
        .tiers(TierTable::from_toml_str(&text).unwrap())
        .secrets(secrets)
        .build()
        .unwrap();
    let courier = agent("courier");
    let id = "courier-1";
    host.register_agent(id, Tier::Executor, Some(&courier), "test")
        .unwrap();
    host.submit_packet(&packet(
        id,
        id,
        &format!(
            "courier: GET http://127.0.0.1:{port}/auth t3/api-token; GET http://localhost:{port}/auth t3/api-token"
        ),
        &[],
        json!({}),
    ))
    .await
    .unwrap();
    let report = host.run(id, &courier).await.unwrap();
    // The bound host got the value (and echoed it); the other host got nothing.
    assert_eq!(server.hits(), 1);
    assert_eq!(violations(&host, id), ["SECRET_LEAK"]);
    let message = &violation_details(&host, id)[0];
    assert!(
        message.contains("a header carries the placeholder of secret `t3/api-token`")
            && message.contains(&format!("`http://127.0.0.1:{port}`")),
        "{message}"
    );
    // A leak is a procedure violation: the first revokes.
    assert!(
        matches!(report.outcome, RunOutcome::Revoked { .. }),
        "{:?}",
        report.outcome
    );
    // Nothing the host recorded holds the value.
    host.ledger().flush().unwrap();
    let everything = host
        .ledger()
        .query(&LedgerQuery {
            agent_id: Some(id.into()),
            limit: Some(10_000),
            ..Default::default()
        })
        .unwrap();
    let text =
        serde_json::to_string(&everything.iter().map(|r| &r.fields).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains("tok-REAL-VALUE"), "{text}");
    assert_eq!(requests(&host, id)[0].1["status"], 200);
}
