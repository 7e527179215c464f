//! The smallest complete agent the README shows: it is the README's block, at most 15 lines,
//! and it runs through every phase with the SDK's defaults for PLAN, VERIFY and REPORT.

use serde_json::json;
use warden::Tier;
use warden_tests::{host, packet, run};

const SOURCE: &str = include_str!("../../agents/greeter/src/lib.rs");
const README: &str = include_str!("../../README.md");

#[test]
fn the_readme_shows_the_agent_as_it_is_and_it_fits_in_15_lines() {
    assert!(
        README.contains(&format!("```rust,ignore\n{SOURCE}```")),
        "README.md's agent block differs from agents/greeter/src/lib.rs"
    );
    let lines = SOURCE.lines().count();
    assert!(lines <= 15, "agents/greeter is {lines} lines");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_smallest_agent_runs_every_phase_on_the_sdk_defaults() {
    let host = host();
    let p = packet(
        "greeter",
        "greet-1",
        "greet the team",
        &["greeting.txt"],
        json!({}),
    );
    let report = run(&host, "greeter", "greeter", Tier::Operator, &p)
        .await
        .unwrap();
    assert!(report.outcome.is_success(), "{:?}", report.outcome);
    // The default plan names the objective and a step per deliverable.
    assert_eq!(report.plan_summary.as_deref(), Some("greet the team"));
    assert_eq!(report.plan_steps, ["write greeting.txt"]);
    let found = host
        .artifact_ref("greet-1", "greeting.txt")
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(host.artifact(&found.digest).unwrap().unwrap()).unwrap();
    assert_eq!(text, "Hello from Warden! Objective: greet the team\n");
    assert!(
        report
            .report_summary
            .as_deref()
            .unwrap()
            .contains("verification passed"),
        "{:?}",
        report.report_summary
    );
}
