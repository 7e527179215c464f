//! Bad input gets a clear error naming what was wrong, and nothing already recorded is lost.

#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use serde_json::json;
use warden::policy::TierTable;
use warden::tools::ToolRegistry;
use warden::{Host, Packet, Tier};
use warden_tests::{agent, packet, run};

/// A host on disk with one completed run in its ledger.
async fn host_with_history(dir: &std::path::Path) -> (Host, u64) {
    let host = warden_tests::builder_with("[]")
        .data_dir(dir)
        .build()
        .unwrap();
    let p = packet("hello", "t-history", "greet", &[], json!({}));
    run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    host.ledger().flush().unwrap();
    let rows = host.ledger().verify().unwrap().rows;
    assert!(rows > 10);
    (host, rows)
}

fn rows_intact(dir: &std::path::Path, at_least: u64) {
    let host = Host::builder().data_dir(dir).build().unwrap();
    let report = host.ledger().verify().unwrap();
    assert!(report.broken.is_none(), "{report:?}");
    assert!(report.rows >= at_least, "rows {} < {at_least}", report.rows);
}

#[tokio::test]
async fn a_malformed_packet_is_refused_and_history_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (host, rows) = host_with_history(dir.path()).await;
    for (text, expect) in [
        ("{", "not valid JSON"),
        (
            r#"{"agent_id":"hello","task_id":"t","objective":""}"#,
            "`objective`",
        ),
        (
            r#"{"agent_id":"hello","task_id":"t","objective":"x","deliverables":["../up"]}"#,
            "deliverables[0]",
        ),
        (
            r#"{"agent_id":"hello","task_id":"t","objective":"x","extra":true}"#,
            "unknown field `extra`",
        ),
        (
            r#"{"agent_id":"he llo","task_id":"t","objective":"x"}"#,
            "`agent_id`",
        ),
    ] {
        let err = Packet::from_json(text).unwrap_err().to_string();
        assert!(err.contains(expect), "{text}: {err}");
    }
    // A packet corrupted in the state store is refused at BOOTSTRAP, not run.
    rusqlite::Connection::open(dir.path().join("state.db"))
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO strings (key, value) VALUES ('agent:hello:packet', '{\"agent_id\":\"hello\"')",
            [],
        )
        .unwrap();
    let err = host.run("hello", &agent("hello")).await.unwrap_err();
    assert!(err.to_string().contains("INVALID_PACKET"), "{err}");
    drop(host);
    rows_intact(dir.path(), rows);
}

#[tokio::test]
async fn a_malformed_component_is_refused_and_history_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (host, rows) = host_with_history(dir.path()).await;
    let err = host
        .register_agent("junk", Tier::Operator, Some(b"\0asm not really"), "test")
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("not a valid WebAssembly component") && message.contains("wasm32-wasip2"),
        "{message}"
    );
    assert!(
        host.ledger().agent("junk").unwrap().is_none(),
        "nothing registered"
    );
    // A core module is not a component either.
    let err = host
        .register_agent("junk", Tier::Operator, Some(b"\0asm\x01\0\0\0"), "test")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("not a valid WebAssembly component"),
        "{err}"
    );
    // Both refusals are in the ledger, though nothing was registered.
    let refused = warden_tests::actions(&host, "junk");
    assert_eq!(refused, ["agent.register", "agent.register"], "{refused:?}");
    // And a refused registration is not a registration the registry lost.
    let verified = host.ledger().verify().unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    // An agent registered without a component, run with bytes that are none: refused at
    // BOOTSTRAP, recorded, and the junk never becomes its binding.
    host.register_agent("unbound", Tier::Operator, None, "test")
        .unwrap();
    host.submit_packet(&packet("unbound", "t-junk", "greet", &[], json!({})))
        .await
        .unwrap();
    let err = host.run("unbound", b"\0asm\x01\0\0\0").await.unwrap_err();
    assert_eq!(
        err.refusal().map(|r| r.code()),
        Some("INVALID_COMPONENT"),
        "{err}"
    );
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
    assert_eq!(
        host.ledger()
            .agent("unbound")
            .unwrap()
            .unwrap()
            .component_digest,
        None
    );
    assert!(warden_tests::actions(&host, "unbound").contains(&"bootstrap".to_string()));
    // Then the real component runs and is bound.
    let report = host.run("unbound", &agent("hello")).await.unwrap();
    assert_eq!(report.outcome, warden::RunOutcome::Completed, "{report:?}");
    drop(host);
    rows_intact(dir.path(), rows);
}

#[tokio::test]
async fn a_malformed_tier_table_is_refused_and_history_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (host, rows) = host_with_history(dir.path()).await;
    drop(host);
    let bad =
        warden::policy::BUILTIN_TIERS_TOML.replace("memory_bytes = 67108864", "memory_bytes = 0");
    let file = dir.path().join("tiers.toml");
    std::fs::write(&file, bad).unwrap();
    let err = TierTable::from_file(&file).unwrap_err().to_string();
    assert!(
        err.contains("`tiers.T0.memory_bytes` must be greater than 0")
            && err.contains("tiers.toml"),
        "{err}"
    );
    std::fs::write(&file, "revision = \"x\"\n[defaults]\n").unwrap();
    let err = TierTable::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("not valid TOML for a tier table"), "{err}");
    rows_intact(dir.path(), rows);
}

#[tokio::test]
async fn a_malformed_tools_file_is_refused_and_history_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (host, rows) = host_with_history(dir.path()).await;
    drop(host);
    let file = dir.path().join("tools.toml");
    for (text, expect) in [
        ("[[tool]]\nname = \"x\"\n", "x"),
        (
            "[[tool]]\nname=\"x\"\ndescription=\"d\"\nmin_tier=\"T9\"\nfull_tier=\"T1\"\nargv=[\"/bin/echo\"]\nargs=[]\nmax_args=0\ntimeout = \"10ms\"\n",
            "T9",
        ),
        (
            "[[tool]]\nname=\"x\"\ndescription=\"d\"\nmin_tier=\"T1\"\nfull_tier=\"T1\"\nargv=[\"/bin/echo\"]\nargs=[\"(unclosed\"]\nmax_args=1\ntimeout = \"10ms\"\n",
            "(unclosed",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let err = ToolRegistry::from_file(&file).unwrap_err().to_string();
        assert!(
            err.contains(expect) && err.contains("tools.toml"),
            "{text}: {err}"
        );
    }
    rows_intact(dir.path(), rows);
}

#[tokio::test]
async fn a_corrupt_ledger_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ledger.db"),
        b"this is not a database, it is a text file",
    )
    .unwrap();
    let before = std::fs::read(dir.path().join("ledger.db")).unwrap();
    let err = Host::builder()
        .data_dir(dir.path())
        .build()
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("ledger"), "{err}");
    assert_eq!(std::fs::read(dir.path().join("ledger.db")).unwrap(), before);
}
