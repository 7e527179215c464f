//! Signed components: a tier that requires a signature by a trusted key refuses an unsigned,
//! wrongly signed or altered component at registration and at load, and records the signer
//! of one it accepts; `warden keys generate`, `sign` and `verify` from the CLI.
#![expect(
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::path::Path;
use std::process::Command;

use warden::ledger::{LedgerQuery, Table};
use warden::policy::TierTable;
use warden::signing::{self, Verdict};
use warden::{Host, RunOutcome, Tier};
use warden_tests::{agent, builder_with, packet, warden_bin};

/// The shipped tier table with `signed_by = ["release"]` at T3, in `dir/tiers.toml`, and the
/// `release` key pair: its public half in `dir/keys/`, its secret in `dir/secret/`.
fn table_requiring_release(dir: &Path) -> (std::path::PathBuf, signing::GeneratedKey) {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/tiers.toml"),
    )
    .unwrap();
    let table = shipped.replacen("[tiers.T3]\n", "[tiers.T3]\nsigned_by = [\"release\"]\n", 1);
    assert_ne!(table, shipped, "the shipped table has a `[tiers.T3]` line");
    let path = dir.join("tiers.toml");
    std::fs::write(&path, table).unwrap();
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    let made = signing::generate(&dir.join("secret"), "release").unwrap();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::copy(&made.public, dir.join("keys/release.pub")).unwrap();
    (path, made)
}

fn host_with(table: &Path) -> Host {
    builder_with("[]")
        .tiers(TierTable::from_file(table).unwrap())
        .build()
        .unwrap()
}

/// A custom section appended: still a valid component, no longer the bytes that were signed.
fn altered(mut component: Vec<u8>) -> Vec<u8> {
    let name = b"x";
    component.extend_from_slice(&[0, (name.len() + 2) as u8, name.len() as u8]);
    component.extend_from_slice(name);
    component.push(1);
    component
}

#[tokio::test]
async fn a_tier_requiring_a_signature_loads_only_what_a_trusted_key_signed() {
    let dir = tempfile::tempdir().unwrap();
    let (table, release) = table_requiring_release(dir.path());
    let host = host_with(&table);
    let plain = agent("hello");

    // Unsigned: refused at registration, the tier's requirement in the message.
    let error = host
        .register_agent("hello", Tier::Executor, Some(&plain), "test")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("SIGNATURE_REQUIRED: "), "{error}");
    assert!(
        error.contains("at tier T3 (executor): it is not signed; the tier requires a signature by `release` (policies/keys/release.pub)"),
        "{error}"
    );

    // Signed by a key the table does not trust.
    let other_dir = tempfile::tempdir().unwrap();
    let other = signing::generate(other_dir.path(), "other").unwrap();
    let foreign = signing::sign(&plain, &other.secret).unwrap();
    let error = host
        .register_agent("hello", Tier::Executor, Some(&foreign), "test")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("SIGNATURE_INVALID: "), "{error}");

    // Signed, then altered.
    let signed = signing::sign(&plain, &release.secret).unwrap();
    let error = host
        .register_agent(
            "hello",
            Tier::Executor,
            Some(&altered(signed.clone())),
            "test",
        )
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("SIGNATURE_INVALID: "), "{error}");

    // Signed by the trusted key: registered and run, the signer recorded both times.
    host.register_agent("hello", Tier::Executor, Some(&signed), "test")
        .unwrap();
    let p = packet(
        "hello",
        "task-signed",
        "say hello",
        &[],
        serde_json::json!({}),
    );
    host.submit_packet(&p).await.unwrap();
    let report = host.run("hello", &signed).await.unwrap();
    assert!(
        matches!(report.outcome, RunOutcome::Completed),
        "{:?}",
        report.outcome
    );
    host.ledger().flush().unwrap();
    let rows = host
        .ledger()
        .query(&LedgerQuery {
            agent_id: Some("hello".into()),
            table: Some(Table::Actions),
            ..LedgerQuery::default()
        })
        .unwrap();
    let signed_rows: Vec<_> = rows
        .iter()
        .filter(|r| r.kind == "component.signature")
        .collect();
    assert_eq!(
        signed_rows.len(),
        2,
        "registration and load: {signed_rows:?}"
    );
    for row in signed_rows {
        let details = row.fields["details"].as_str().unwrap_or_default();
        assert!(details.contains("\"signer\":\"release\""), "{details}");
        assert!(details.contains(&release.fingerprint), "{details}");
    }

    // A tier that requires nothing loads the unsigned build.
    host.register_agent("plain", Tier::Operator, Some(&plain), "test")
        .unwrap();
}

#[tokio::test]
async fn a_table_naming_a_key_it_does_not_hold_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let (table, _) = table_requiring_release(dir.path());
    std::fs::remove_file(dir.path().join("keys/release.pub")).unwrap();
    let error = TierTable::from_file(&table).unwrap_err().to_string();
    assert!(
        error.contains(
            "`tiers.T3.signed_by` names key `release`, which is not among the trusted keys (none)"
        ),
        "{error}"
    );
}

#[test]
fn the_cli_generates_signs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (table, _) = table_requiring_release(dir.path());
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!("policies = {:?}\n", table.display().to_string()),
    )
    .unwrap();
    let component = dir.path().join("hello.wasm");
    std::fs::write(&component, agent("hello")).unwrap();
    let warden = |args: &[&str]| {
        Command::new(warden_bin())
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap()
    };
    let path = component.to_str().unwrap();
    let unsigned = warden(&["verify", path]);
    assert_eq!(unsigned.status.code(), Some(3), "{unsigned:?}");
    assert!(String::from_utf8_lossy(&unsigned.stdout).contains("none (unsigned)"));

    let key = dir.path().join("secret/release.key");
    let signed = warden(&["sign", path, "--key", key.to_str().unwrap()]);
    assert!(signed.status.success(), "{signed:?}");
    let verified = warden(&["--json", "verify", path]);
    assert!(verified.status.success(), "{verified:?}");
    let value: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(value["status"], "signed");
    assert_eq!(value["signers"][0]["name"], "release");
    assert_eq!(
        signing::verify(
            &std::fs::read(&component).unwrap(),
            &signing::Keyring::from_dir(&dir.path().join("keys")).unwrap()
        ),
        Verdict::Signed(vec!["release".into()])
    );

    let made = warden(&[
        "keys",
        "generate",
        "ci",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    assert!(dir.path().join("ci.key").exists() && dir.path().join("ci.pub").exists());
    let again = warden(&[
        "keys",
        "generate",
        "ci",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1), "a key is never overwritten");
}
