//! The workspace quota: an agent with a writable workspace cannot write more bytes, or create
//! more files, than its tier's `workspace_bytes` and `workspace_files`; the first refusal is a
//! `RESOURCE_LIMIT` violation charged to the error budget.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a failure is a failed test, with the value in the message"
)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde_json::json;
use warden::policy::BUILTIN_TIERS_TOML;
use warden::{Host, RunOutcome, RunReport, Tier, TierTable};
use warden_tests::{agent, builder_with, packet, violations};

/// A filesystem block: what a file or directory may take on disk beyond its bytes.
const BLOCK: u64 = 4096;

/// The built-in table with `key = value` in `[tiers.T3]`.
fn t3_with(key: &str, value: u64) -> TierTable {
    let (before, t3) = BUILTIN_TIERS_TOML
        .split_once("[tiers.T3]\n")
        .expect("a T3 section");
    let (own, rest) = t3.split_once("\n\n").expect("T3's own keys");
    let own: String = own
        .lines()
        .map(|line| {
            if line.starts_with(&format!("{key} =")) {
                format!("{key} = {value}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(own.contains(&format!("{key} = {value}")), "{own}");
    TierTable::from_toml_str(&format!("{before}[tiers.T3]\n{own}\n\n{rest}")).expect("tier table")
}

/// Apparent bytes (file and symlink lengths), bytes on disk (allocated blocks) and entries
/// under `root`.
fn usage(root: &Path) -> (u64, u64, u64) {
    let (mut bytes, mut disk, mut entries) = (0, 0, 0);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let metadata = entry.path().symlink_metadata().unwrap();
            entries += 1;
            disk += metadata.blocks() * 512;
            if metadata.is_dir() {
                dirs.push(entry.path());
            } else {
                bytes += metadata.len();
            }
        }
    }
    (bytes, disk, entries)
}

/// Run the rogue at T3 with `attempt` on a data-directory host; the report and its evidence.
async fn run_rogue(host: &Host, id: &str, attempt: &str) -> (RunReport, String) {
    let rogue = agent("rogue");
    host.register_agent(id, Tier::Executor, Some(&rogue), "test")
        .unwrap();
    host.submit_packet(&packet(
        id,
        &format!("task-{id}"),
        &format!("attempt: {attempt}"),
        &["evidence.md"],
        json!({}),
    ))
    .await
    .unwrap();
    let report = host.run(id, &rogue).await.unwrap();
    let evidence = report
        .artifacts
        .iter()
        .find(|a| a.name == "evidence.md")
        .and_then(|a| host.artifact(&a.digest).unwrap())
        .map(|bytes| String::from_utf8(bytes).unwrap())
        .unwrap_or_default();
    (report, evidence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filler_stops_at_its_quota_and_the_refusal_is_recorded_and_charged() {
    const QUOTA: u64 = 8 << 20;
    let dir = tempfile::tempdir().unwrap();
    let host = builder_with("[]")
        .data_dir(dir.path())
        .tiers(t3_with("workspace_bytes", QUOTA))
        .build()
        .unwrap();
    let (report, evidence) = run_rogue(&host, "filler", "fill-disk").await;

    // The filler was refused at the quota with an ordinary I/O error, and went on: a write
    // through a stream fails as wasi-libc reports every failed stream write (`EIO`), growing
    // the file with `set-size` as `quota` (`EDQUOT`).
    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");
    assert!(
        evidence.contains(&format!("wrote {QUOTA} bytes in whole chunks, then: ")),
        "{evidence}"
    );
    assert!(evidence.contains("one more chunk: refused ("), "{evidence}");
    assert!(
        evidence.contains("growing the file by a chunk: refused (QuotaExceeded"),
        "{evidence}"
    );
    // On disk: the bytes are within the quota exactly, the blocks within one per entry more.
    let (bytes, disk, entries) = usage(&dir.path().join("workspaces/filler"));
    assert_eq!(entries, 1);
    assert!(bytes <= QUOTA, "{bytes} bytes in the workspace");
    assert!(
        disk <= QUOTA + (entries + 1) * BLOCK,
        "{disk} bytes on disk"
    );
    // Recorded once and charged once, although refused twice.
    assert_eq!(violations(&host, "filler"), ["RESOURCE_LIMIT"]);
    assert_eq!(report.budget.total_errors, 1, "{:?}", report.budget);
    assert!(!report.compliant);

    // The next run finds the workspace full (its size at boot counts) and is refused at once.
    host.submit_packet(&packet(
        "filler",
        "task-filler-2",
        "attempt: fill-disk",
        &["evidence.md"],
        json!({}),
    ))
    .await
    .unwrap();
    let again = host.run("filler", &agent("rogue")).await.unwrap();
    let evidence = again
        .artifacts
        .iter()
        .find(|a| a.name == "evidence.md")
        .and_then(|a| host.artifact(&a.digest).unwrap())
        .map(|bytes| String::from_utf8(bytes).unwrap())
        .unwrap_or_default();
    assert!(
        evidence.contains("wrote 0 bytes in whole chunks, then: "),
        "{evidence}"
    );
    let (bytes, _, _) = usage(&dir.path().join("workspaces/filler"));
    assert!(bytes <= QUOTA, "{bytes} bytes in the workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_creator_stops_at_its_file_quota() {
    const FILES: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let host = builder_with("[]")
        .data_dir(dir.path())
        .tiers(t3_with("workspace_files", FILES))
        .build()
        .unwrap();
    let (report, evidence) = run_rogue(&host, "creator", "fill-files").await;

    assert_eq!(report.outcome, RunOutcome::Completed, "{report:?}");
    // The `files` directory is one of the entries.
    assert!(
        evidence.contains(&format!("created {} files, then: QuotaExceeded", FILES - 1)),
        "{evidence}"
    );
    let (_, _, entries) = usage(&dir.path().join("workspaces/creator"));
    assert_eq!(entries, FILES);
    assert_eq!(violations(&host, "creator"), ["RESOURCE_LIMIT"]);
    assert_eq!(report.budget.total_errors, 1, "{:?}", report.budget);
}
