//! The audit ledger end to end: a real run's rows chain, and tampering is detected.

use serde_json::json;
use warden::Tier;
use warden_tests::{packet, run};

#[tokio::test]
async fn an_edited_row_is_detected_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let host = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let p = packet("hello", "t-tamper", "greet", &[], json!({}));
    run(&host, "hello", "hello", Tier::Operator, &p)
        .await
        .unwrap();
    let before = host.ledger().verify().unwrap();
    assert!(before.broken.is_none());
    drop(host);

    // Someone rewrites history: the revocation-free run now claims a different decision.
    let db = rusqlite::Connection::open(dir.path().join("ledger.db")).unwrap();
    let id: i64 = db
        .query_row("SELECT id FROM agent_actions WHERE action = 'phase.enter' ORDER BY id LIMIT 1 OFFSET 2", [], |r| r.get(0))
        .unwrap();
    db.execute(
        "UPDATE agent_actions SET decision = 'SKIPPED' WHERE id = ?1",
        [id],
    )
    .unwrap();
    drop(db);

    let host = warden::Host::builder()
        .data_dir(dir.path())
        .build()
        .unwrap();
    let after = host.ledger().verify().unwrap();
    let broken = after.broken.expect("tampering detected");
    let text = broken.to_string();
    assert!(text.contains("agent_actions"), "{text}");
    assert!(text.contains(&id.to_string()), "{text}");
}

#[tokio::test]
async fn two_hosts_on_one_data_dir_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let a = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let b = warden_tests::builder_with("[]")
        .data_dir(dir.path())
        .build()
        .unwrap();
    let pa = packet("hello-a", "t-a", "greet", &[], json!({}));
    let pb = packet("hello-b", "t-b", "greet", &[], json!({}));
    let (ra, rb) = tokio::join!(
        run(&a, "hello-a", "hello", Tier::Operator, &pa),
        run(&b, "hello-b", "hello", Tier::Operator, &pb)
    );
    assert!(ra.unwrap().outcome.is_success());
    assert!(rb.unwrap().outcome.is_success());
    a.ledger().flush().unwrap();
    b.ledger().flush().unwrap();
    let report = a.ledger().verify().unwrap();
    assert!(report.broken.is_none(), "{report:?}");
}
