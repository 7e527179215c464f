//! The tier gate at load (imports) and at call (every host function).

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use serde_json::json;
use warden::{RunOutcome, Tier};
use warden_tests::{agent, builder_with, host, packet, run, violations};

/// The lowest tier each example component can load at, from its imports.
const LOWEST: &[(&str, Tier)] = &[
    ("bench-guest", Tier::Observer),     // state
    ("hello", Tier::Observer),           // artifacts
    ("rogue-overreach", Tier::Operator), // tools
    ("planner", Tier::Operator),         // llm, tools
    ("rogue", Tier::Executor),           // secrets
];

#[tokio::test]
async fn load_gate_for_every_tier_and_component() {
    let host = host();
    for &(component, lowest) in LOWEST {
        let bytes = agent(component);
        let summary = host.inspect_component(&bytes, component).unwrap();
        assert_eq!(
            summary.lowest_tier,
            Some(lowest),
            "{component}: {summary:?}"
        );
        for tier in Tier::ALL {
            let id = format!("{component}-{}", tier.code().to_lowercase());
            let registered = host.register_agent(&id, tier, Some(&bytes), "test");
            if tier >= lowest {
                assert!(registered.is_ok(), "{component} at {tier}: {registered:?}");
            } else {
                let err = registered.unwrap_err();
                let message = err.to_string();
                assert!(
                    matches!(&err, warden::Error::Refused(r) if r.code() == "IMPORT_ABOVE_TIER"),
                    "{message}"
                );
                assert!(
                    message.contains(&format!("tier {tier}")),
                    "names the tier: {message}"
                );
                assert!(
                    message.contains("lowest tier granting it: T"),
                    "names the lowest tier: {message}"
                );
            }
        }
    }
}

#[tokio::test]
async fn load_gate_at_bootstrap_for_an_agent_registered_without_a_component() {
    let host = host();
    host.register_agent("overreach", Tier::Observer, None, "test")
        .unwrap();
    host.submit_packet(&packet("overreach", "t-over", "plan", &[], json!({})))
        .await
        .unwrap();
    let err = host
        .run("overreach", &agent("rogue-overreach"))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("IMPORT_ABOVE_TIER") && message.contains("warden:agent/tools"),
        "{message}"
    );
    assert!(message.contains("T1 (operator)"), "{message}");
    assert_eq!(violations(&host, "overreach"), ["IMPORT_ABOVE_TIER"]);
}

#[tokio::test]
async fn call_gate_tools_by_tier() {
    // The planner's plan asks for `wc` (check mode below T2) and `deploy-prod` (min T3).
    let tools =
        r#"[{"name":"wc","args":["notes.txt"]},{"name":"deploy-prod","args":["--dry-run"]}]"#;
    for (tier, wc_check, deploy) in [
        (Tier::Operator, true, "denied"),
        (Tier::Builder, false, "denied"),
        (Tier::Executor, false, "check"),
    ] {
        let host = builder_with(tools).build().unwrap();
        let id = format!("planner-{}", tier.code());
        let p = packet(
            &id,
            &format!("t-tools-{}", tier.code()),
            "plan the work",
            &["notes.md"],
            json!({ "error_budget": { "max_same_error_repeats": 5 } }),
        );
        let report = run(&host, &id, "planner", tier, &p).await.unwrap();
        let log = String::from_utf8(host_artifact(&host, &report, "execution-log.md")).unwrap();
        assert_eq!(
            log.contains("check mode: would run wc -w notes.txt"),
            wc_check,
            "{tier}: {log}"
        );
        match deploy {
            "denied" => {
                assert!(
                    violations(&host, &id).contains(&"TIER_DENIED".to_string()),
                    "{tier}"
                );
                assert!(
                    log.contains("lowest tier") || log.contains("T3"),
                    "{tier}: {log}"
                );
            }
            _ => assert!(
                log.contains("deploying --dry-run") || log.contains("check"),
                "{tier}: {log}"
            ),
        }
    }
}

fn host_artifact(host: &warden::Host, report: &warden::RunReport, name: &str) -> Vec<u8> {
    let reference = report
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no artifact `{name}` in {:?}", report.artifacts));
    host.artifact(&reference.digest)
        .unwrap()
        .expect("artifact content")
}

#[tokio::test]
async fn call_gate_secrets_by_tier() {
    let host = host();
    host.secrets()
        .put("t3/db-password", "hunter2")
        .await
        .unwrap();
    host.secrets().put("t4/root-token", "root").await.unwrap();

    // T3 reading a T4 path: denied (the rogue tries twice: same error twice revokes).
    let p = packet(
        "rogue-secret",
        "t-sec3",
        "attempt: secret",
        &["evidence.md"],
        json!({}),
    );
    let report = run(&host, "rogue-secret", "rogue", Tier::Executor, &p)
        .await
        .unwrap();
    assert!(
        matches!(&report.outcome, RunOutcome::Revoked { reason, .. } if reason == "ERROR_BUDGET_EXCEEDED"),
        "{report:?}"
    );
    let v = violations(&host, "rogue-secret");
    assert_eq!(v.iter().filter(|v| *v == "TIER_DENIED").count(), 2, "{v:?}");

    // T4 reading the same path is allowed (after approval).
    host.approve("t-sec4", "alice").await.unwrap();
    let p = packet(
        "rogue-arch",
        "t-sec4",
        "attempt: secret",
        &["evidence.md"],
        json!({}),
    );
    let report = run(&host, "rogue-arch", "rogue", Tier::Architect, &p)
        .await
        .unwrap();
    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");
    assert!(violations(&host, "rogue-arch").is_empty());
}

/// Probe at a tier: the steps of its plan, one per call, `<call> -> ok` or the error.
async fn probe(
    tier: warden::Tier,
    calls: &str,
    extra: serde_json::Value,
) -> (warden::Host, Vec<String>) {
    let host = host();
    let id = format!("probe-{}", tier.code());
    let p = packet(
        &id,
        &format!("t-probe-{}", tier.code()),
        &format!("probe: {calls}"),
        &[],
        extra,
    );
    host.approve(&p.task_id, "test").await.unwrap();
    let report = run(&host, &id, "probe", tier, &p).await.unwrap();
    (host, report.plan_steps)
}

#[tokio::test]
async fn call_gate_artifact_names_by_tier() {
    // T0 writes plan artifacts only; T1 and up write any name, but in PLAN, before the
    // approval gate, every tier writes only plan artifacts.
    for tier in Tier::ALL {
        let (host, steps) = probe(
            tier,
            "artifacts.put plan.md; artifacts.put notes.txt",
            json!({}),
        )
        .await;
        let id = format!("probe-{}", tier.code());
        assert_eq!(steps[0], "artifacts.put plan.md -> ok", "{tier}");
        assert!(
            steps[1].starts_with("artifacts.put notes.txt -> denied"),
            "{tier}: {steps:?}"
        );
        if tier == Tier::Observer {
            assert!(
                steps[1].contains("lowest tier that may write it: T1 (operator)"),
                "{steps:?}"
            );
            assert_eq!(violations(&host, &id), ["TIER_DENIED"]);
        } else {
            assert!(
                steps[1].contains("in PLAN, before the approval gate"),
                "{tier}: {steps:?}"
            );
            assert_eq!(violations(&host, &id), ["PHASE_DENIED"]);
            let (_, executed) = probe_execute(tier, "artifacts.put notes.txt").await;
            assert_eq!(executed, ["artifacts.put notes.txt -> ok"], "{tier}");
        }
    }
}

/// The probe's calls made in EXECUTE, after the approval gate (`probe execute: …`).
async fn probe_execute(tier: warden::Tier, calls: &str) -> (warden::Host, Vec<String>) {
    let host = host();
    let id = format!("probe-x-{}", tier.code());
    let p = packet(
        &id,
        &format!("t-probe-x-{}", tier.code()),
        &format!("probe execute: {calls}"),
        &[],
        json!({}),
    );
    host.approve(&p.task_id, "test").await.unwrap();
    let report = run(&host, &id, "probe", tier, &p).await.unwrap();
    (host, report.verification_findings)
}

/// Deliverables are sealed from VERIFY on: what was verified is what is packaged.
#[tokio::test]
async fn a_deliverable_cannot_be_rewritten_after_execute() {
    let host = host();
    let p = packet(
        "sealer",
        "t-seal",
        "probe execute: artifacts.put out.txt | verify: artifacts.put out.txt; artifacts.put extra.txt",
        &["out.txt"],
        json!({}),
    );
    let report = run(&host, "sealer", "probe", Tier::Operator, &p)
        .await
        .unwrap();
    let findings = &report.verification_findings;
    assert_eq!(findings[0], "artifacts.put out.txt -> ok", "{findings:?}");
    assert!(
        findings[1].starts_with("artifacts.put out.txt -> denied")
            && findings[1].contains("deliverables are sealed from VERIFY on"),
        "{findings:?}"
    );
    assert_eq!(findings[2], "artifacts.put extra.txt -> ok", "{findings:?}");
    assert_eq!(violations(&host, "sealer"), ["PHASE_DENIED"]);
    let out: Vec<_> = report
        .artifacts
        .iter()
        .filter(|a| a.name == "out.txt")
        .collect();
    assert_eq!(out.len(), 1, "{:?}", report.artifacts);

    // PACKAGE's chained row names the sealed deliverable with the digest VERIFY found.
    let rows = host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("sealer".into()),
            kind: Some("package".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let details: serde_json::Value =
        serde_json::from_str(rows[0].fields["details"].as_str().unwrap()).unwrap();
    assert_eq!(
        details["deliverables"]["out.txt"]["digest"], out[0].digest,
        "{details}"
    );
    assert_eq!(details["deliverables"].as_object().unwrap().len(), 1);
    let written: Vec<&str> = details["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        written.contains(&"out.txt") && written.contains(&"extra.txt"),
        "{details}"
    );
}

/// Before the approval gate a T4 agent can do nothing the gate is there to hold back: its
/// tool runs in check mode, its secret stays closed, its artifact is not written.
#[tokio::test]
async fn a_t4_agent_can_do_nothing_in_plan_that_the_gate_holds_back() {
    let host = host();
    let p = packet(
        "early",
        "t-early",
        "early-effects before approval",
        &["evidence.md"],
        json!({}),
    );
    host.approve("t-early", "test").await.unwrap();
    let report = run(&host, "early", "rogue", Tier::Architect, &p)
        .await
        .unwrap();
    let steps = &report.plan_steps;
    assert_eq!(
        steps[0], "tools.invoke deploy-prod --force: check mode",
        "{steps:?}"
    );
    assert!(
        steps[1].starts_with("secrets.get t4/root-token: refused")
            && steps[1].contains("secrets are closed in PLAN"),
        "{steps:?}"
    );
    assert!(
        steps[2].starts_with("artifacts.put notes.txt: refused")
            && steps[2].contains("in PLAN, before the approval gate"),
        "{steps:?}"
    );
    assert_eq!(violations(&host, "early"), ["PHASE_DENIED", "PHASE_DENIED"]);
    assert!(
        report.artifacts.iter().all(|a| a.name != "notes.txt"),
        "{:?}",
        report.artifacts
    );
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
}

#[tokio::test]
async fn call_gate_packet_scope_and_forbidden_at_every_tier() {
    for tier in Tier::ALL {
        let extra = json!({ "constraints": { "scope": ["state:allowed*", "ledger:*"], "forbidden": ["state:secret-*"] } });
        let (host, steps) = probe(
            tier,
            "state.get allowed-key; state.get elsewhere; ledger.note fine",
            extra.clone(),
        )
        .await;
        assert_eq!(steps[0], "state.get allowed-key -> ok", "{tier}");
        assert!(
            steps[1].contains("outside the packet's scope"),
            "{tier}: {steps:?}"
        );
        assert_eq!(steps[2], "ledger.note fine -> ok", "{tier}");
        assert_eq!(
            violations(&host, &format!("probe-{}", tier.code())),
            ["OUT_OF_SCOPE"]
        );

        // A forbidden resource is a procedure violation: revoked at once, at any tier.
        let id = format!("probe-{}", tier.code());
        let host = warden_tests::host();
        let p = packet(
            &id,
            "t-forbidden",
            "probe: state.get secret-key; state.get allowed-key",
            &[],
            extra,
        );
        let report = run(&host, &id, "probe", tier, &p).await.unwrap();
        assert!(
            matches!(&report.outcome, warden::RunOutcome::Revoked { reason, details } if reason == "PROCEDURE_VIOLATION" && details.contains("forbids `state:secret-*`")),
            "{tier}: {:?}",
            report.outcome
        );
        assert_eq!(violations(&host, &id), ["FORBIDDEN_ACTION"]);
    }
}

#[tokio::test]
async fn wasi_is_deny_by_default_and_the_workspace_is_read_only_below_t2() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    // A listening socket on loopback: a refused connect is the sandbox, not a missing server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let outside = format!("/tmp/warden-outside-{}.txt", std::process::id());
    for tier in [Tier::Operator, Tier::Builder] {
        let id = format!("sandbox-{}", tier.code());
        let calls =
            format!("fs.write /workspace/note.txt; fs.write {outside}; net.connect {addr}; env");
        let p = packet(
            &id,
            &format!("t-{id}"),
            &format!("probe: {calls}"),
            &[],
            json!({}),
        );
        let report = run(&host, &id, "probe", tier, &p).await.unwrap();
        let steps = report.plan_steps;
        let written = dir.path().join("workspaces").join(&id).join("note.txt");
        if tier == Tier::Operator {
            assert!(
                steps[0].contains("io error"),
                "T1 workspace is read-only: {steps:?}"
            );
            assert!(!written.exists());
        } else {
            assert_eq!(steps[0], "fs.write /workspace/note.txt -> ok", "{steps:?}");
            assert_eq!(std::fs::read_to_string(&written).unwrap(), "probe");
        }
        assert!(
            steps[1].contains("io error"),
            "no preopen outside the workspace: {steps:?}"
        );
        assert!(steps[2].contains("io error"), "no sockets: {steps:?}");
        assert_eq!(steps[3], "env -> ok", "no env, no args: {steps:?}");
    }
    assert!(!std::path::Path::new(&outside).exists());
}
