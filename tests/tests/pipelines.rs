//! Pipelines end to end: the shipped templates on the scripted LLM, gates decided once,
//! retries, fan-out, handoff, `retry --from`, and a host killed at every step of a pipeline
//! resumed without repeating a stage.

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use warden::llm::ScriptedProvider;
use warden::pipeline::{Outcome, RunOptions, RunView, Status, templates};
use warden::{Host, PipelineError, Tier};
use warden_tests::{agent, agents_dir, warden_bin};

/// A host over a data directory (file ledger, embedded state) with the demo's scripted LLM.
fn host(dir: &Path) -> Host {
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/demo/llm-rules.toml"),
    )
    .unwrap();
    Host::builder()
        .data_dir(dir)
        .llm(Arc::new(ScriptedProvider::from_toml_str(&rules).unwrap()))
        .tools(warden::tools::ToolRegistry::from_toml_str(warden_tests::TOOLS_TOML).unwrap())
        .build()
        .unwrap()
}

fn register(host: &Host, agents: &[(&str, &str, Tier)]) {
    for (id, component, tier) in agents {
        host.register_agent(id, *tier, Some(&agent(component)), "test")
            .unwrap();
    }
}

/// Wait until `check` holds of the run's view (the run goes on in another task).
async fn until(host: &Host, run: &str, what: &str, check: impl Fn(&RunView) -> bool) -> RunView {
    for _ in 0..600 {
        if let Ok(view) = host.pipeline_run(run)
            && check(&view)
        {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("pipeline run `{run}` never got to: {what}");
}

/// The id of the latest pipeline run.
async fn latest_run(host: &Host) -> String {
    for _ in 0..400 {
        if let Some(run) = host.pipeline_runs(1).unwrap().first() {
            return run.run_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no pipeline run started");
}

/// Completed agent runs of the pipeline's task, per agent.
fn completed(host: &Host, run: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in host
        .ledger()
        .runs(&warden::ledger::RunFilter {
            task: Some(run.to_string()),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
    {
        if r.status == "completed" {
            *out.entry(r.agent_id).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_deploy_runs_through_a_gate_decided_once_and_retries_from_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("planner", "planner", Tier::Builder),
            ("hello", "hello", Tier::Operator),
        ],
    );
    let text = templates::with_defaults(templates::get("infrastructure-deploy").unwrap(), &[])
        .unwrap()
        .replace(
            "        on_timeout: reject\n",
            "        on_timeout: reject\n        approvers: [alice]\n",
        );
    let pipeline = host
        .load_pipeline(&text, "infrastructure-deploy.yaml")
        .unwrap();
    let runner = {
        let host = host.clone();
        let pipeline = pipeline.clone();
        tokio::spawn(async move {
            let options = RunOptions {
                params: BTreeMap::from([("env".to_string(), "prod".to_string())]),
                actor: "test".into(),
                ..RunOptions::default()
            };
            host.run_pipeline(&pipeline, options).await
        })
    };
    let run = latest_run(&host).await;
    let view = until(&host, &run, "the review gate waiting", |v| {
        v.stage_view("review").status == Status::Waiting
    })
    .await;
    assert_eq!(
        view.stage_view("plan").status,
        Status::Ended(Outcome::Success)
    );
    assert_eq!(
        view.stage_view("execute").status,
        Status::Pending,
        "execute waits for the gate"
    );
    let gate = view.stage_view("review").gate.unwrap();
    assert!(
        gate.message
            .contains("apply the plan to prod? (artifact terraform-plan.md, sha256:"),
        "{}",
        gate.message
    );

    // Only an approver decides, and only once.
    let err = host
        .decide_gate(&run, "review", true, "mallory", "")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            warden::Error::Pipeline(PipelineError::NotAnApprover { .. })
        ),
        "{err}"
    );
    host.decide_gate(&run, "review", true, "alice", "looks right")
        .await
        .unwrap();
    let err = host
        .decide_gate(&run, "review", false, "alice", "")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("GATE_ALREADY_DECIDED: gate `review` of pipeline run")
            && err.to_string().contains("approved by alice"),
        "{err}"
    );
    let view = runner.await.unwrap().unwrap();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"));
    assert!(
        view.stage_view("review")
            .message
            .contains("approved by alice: looks right")
    );
    let verify = view.stage_view("verify");
    assert!(
        verify.artifacts.contains_key("verify-prod.txt"),
        "params reach deliverables: {verify:?}"
    );
    assert_eq!(
        completed(&host, &run),
        BTreeMap::from([("hello".into(), 1), ("planner".into(), 2)])
    );
    let rows = host
        .ledger()
        .query(&warden::ledger::LedgerQuery {
            agent_id: Some("pipeline".into()),
            task_id: Some(run.clone()),
            kind: Some("pipeline.gate.refuse".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1, "a refused decider is recorded");

    // A retry from `execute` runs it and what waits for it; `plan` keeps its run.
    let err = host.resume_pipeline(&run, None).await.unwrap_err();
    assert!(err.to_string().starts_with("PIPELINE_ENDED"), "{err}");
    let again = host
        .retry_pipeline(&run, "execute", "test", None)
        .await
        .unwrap();
    assert_eq!(again.outcome.as_deref(), Some("succeeded"));
    assert_eq!(again.round, 1);
    assert_eq!(
        completed(&host, &run),
        BTreeMap::from([("hello".into(), 2), ("planner".into(), 3)]),
        "plan ran once, execute and verify twice"
    );
    assert_eq!(again.stage_view("plan").round, 0);
    assert_eq!(again.stage_view("verify").round, 1);
    assert!(host.ledger().verify().unwrap().broken.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_triage_fans_out_skips_a_false_when_and_hands_a_failure_on() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("planner", "planner", Tier::Builder),
            ("hello", "hello", Tier::Operator),
        ],
    );
    // The remediation agent is revoked: its stage fails at once, is not retried (a revoked
    // agent never is), and is handed to `hello`.
    host.revoke("planner", "test: a revoked remediator", "test")
        .await
        .unwrap();
    let text = templates::with_defaults(
        templates::get("incident-triage").unwrap(),
        &[("services".into(), "api,worker,db".into())],
    )
    .unwrap()
    .replace(
        "        on_failure: {handoff: hello}\n",
        "        on_failure: {handoff: hello}\n        retry: {attempts: 3, backoff: 10ms}\n",
    );
    let pipeline = host.load_pipeline(&text, "incident-triage.yaml").unwrap();
    let view = host
        .run_pipeline(&pipeline, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"), "{view:#?}");
    let triage = view.stage_view("triage");
    assert_eq!(triage.items.len(), 3, "one run per service");
    for service in ["api", "worker", "db"] {
        assert!(
            triage
                .artifacts
                .contains_key(&format!("triage-{service}.txt")),
            "{triage:?}"
        );
    }
    let page = view.stage_view("page");
    assert_eq!(page.status, Status::Ended(Outcome::Skipped));
    assert!(
        page.message
            .contains("`when: params.severity == 'sev1'` is false"),
        "{}",
        page.message
    );
    let remediate = view.stage_view("remediate");
    assert_eq!(
        remediate.status,
        Status::Ended(Outcome::Success),
        "{remediate:?}"
    );
    assert_eq!(remediate.items.len(), 2, "the failed run and the handoff's");
    assert_eq!(
        remediate.items[0].attempt, 1,
        "a revoked agent is not retried"
    );
    assert_eq!(
        remediate.items[0].code.as_deref(),
        Some("AGENT_PREVIOUSLY_REVOKED")
    );
    assert_eq!(remediate.items[1].agent.as_deref(), Some("hello"));
    let handoff = host
        .artifact_ref(&view.run_id, "handoff/remediate.json")
        .await
        .unwrap()
        .unwrap();
    let content = String::from_utf8(host.artifact(&handoff.digest).unwrap().unwrap()).unwrap();
    assert!(
        content.contains("AGENT_PREVIOUSLY_REVOKED")
            && content.contains("\"failed_agent\":\"planner\""),
        "{content}"
    );
    assert_eq!(
        view.stage_view("timeline").status,
        Status::Ended(Outcome::Success)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stage_is_retried_with_backoff_and_continue_lets_the_rest_run() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("probe", "probe", Tier::Operator),
            ("hello", "hello", Tier::Operator),
        ],
    );
    let yaml = r#"
pipeline:
  name: flaky
  stages:
    - slow:
        agent: probe
        objective: "probe: sleep 5000"
        timeout: 300ms
        retry: {attempts: 2, backoff: 50ms, on: [DEADLINE_EXCEEDED]}
        on_failure: continue
    - after:
        agent: hello
        requires: [slow]
        when: "stages.slow.outcome == 'failed' && stages.slow.metrics.attempts == 2"
        artifacts: [after.txt]
"#;
    let pipeline = host.load_pipeline(yaml, "flaky.yaml").unwrap();
    let view = host
        .run_pipeline(&pipeline, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        view.outcome.as_deref(),
        Some("succeeded"),
        "`continue` does not fail the run: {view:#?}"
    );
    let slow = view.stage_view("slow");
    assert_eq!(slow.status, Status::Ended(Outcome::Failed));
    assert_eq!(slow.items[0].attempt, 2, "retried once");
    assert_eq!(slow.code.as_deref(), Some("DEADLINE_EXCEEDED"));
    assert_eq!(
        view.stage_view("after").status,
        Status::Ended(Outcome::Success),
        "the condition saw both attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_nobody_decides_follows_on_timeout_and_a_cancel_stops_a_waiting_gate() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(&host, &[("hello", "hello", Tier::Operator)]);
    let yaml = |on_timeout: &str, timeout: &str| {
        format!(
            "pipeline:\n  name: gated\n  stages:\n    - hello: {{agent: hello, artifacts: [a.txt]}}\n    - gate: {{type: human-gate, timeout: {timeout}, on_timeout: {on_timeout}}}\n    - after: {{agent: hello, artifacts: [b.txt]}}\n  finally:\n    - tidy: {{agent: hello, artifacts: [c.txt]}}\n"
        )
    };
    for (on_timeout, outcome, gate) in [
        ("reject", "rejected", Outcome::Rejected),
        ("approve", "succeeded", Outcome::Success),
        ("fail", "failed", Outcome::Failed),
    ] {
        let p = host
            .load_pipeline(&yaml(on_timeout, "200ms"), "g.yaml")
            .unwrap();
        let view = host.run_pipeline(&p, RunOptions::default()).await.unwrap();
        assert_eq!(view.outcome.as_deref(), Some(outcome), "{on_timeout}");
        let g = view.stage_view("gate");
        assert_eq!(g.status, Status::Ended(gate), "{on_timeout}");
        assert!(g.message.contains("by host"), "{on_timeout}: {}", g.message);
        assert_eq!(
            view.stage_view("tidy").status,
            Status::Ended(Outcome::Success),
            "finally runs"
        );
    }
    let p = host
        .load_pipeline(&yaml("reject", "10m"), "g.yaml")
        .unwrap();
    let runner = {
        let host = host.clone();
        tokio::spawn(async move { host.run_pipeline(&p, RunOptions::default()).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let run = host.pipeline_runs(1).unwrap()[0].run_id.clone();
    until(&host, &run, "the gate waiting", |v| {
        v.stage_view("gate").status == Status::Waiting
    })
    .await;
    host.cancel_pipeline(&run, "test").await.unwrap();
    let view = runner.await.unwrap().unwrap();
    assert_eq!(view.outcome.as_deref(), Some("cancelled"));
    assert_eq!(
        view.stage_view("gate").status,
        Status::Ended(Outcome::Cancelled)
    );
    assert_eq!(
        view.stage_view("after").status,
        Status::Ended(Outcome::Skipped)
    );
    assert_eq!(
        view.stage_view("tidy").status,
        Status::Ended(Outcome::Success)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn research_synthesis_runs_a_task_stage_and_its_artifacts_reach_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("alpha", "alpha", Tier::Operator),
            ("beta", "beta", Tier::Operator),
            ("gamma", "gamma", Tier::Builder),
            ("hello", "hello", Tier::Operator),
        ],
    );
    let pipeline = host
        .load_pipeline(
            templates::get("research-synthesis").unwrap(),
            "research-synthesis.yaml",
        )
        .unwrap();
    let view = host
        .run_pipeline(&pipeline, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"), "{view:#?}");
    let research = view.stage_view("research");
    assert_eq!(
        research.items[0].message, "consensus reached",
        "{research:?}"
    );
    for name in ["alpha-research.md", "beta-synthesis.md"] {
        assert!(research.artifacts.contains_key(name), "{research:?}");
        assert!(
            host.artifact_ref(&view.run_id, name)
                .await
                .unwrap()
                .is_some(),
            "`{name}` is linked into the pipeline's task"
        );
    }
    let task = format!("{}.research", view.run_id);
    assert!(
        completed(&host, &task).contains_key("alpha"),
        "the task ran in its own task id"
    );
    assert_eq!(
        view.stage_view("report").status,
        Status::Ended(Outcome::Success)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_review_runs_its_second_opinion_when_asked_and_its_summary_always() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("planner", "planner", Tier::Builder),
            ("hello", "hello", Tier::Operator),
        ],
    );
    let pipeline = host
        .load_pipeline(templates::get("code-review").unwrap(), "code-review.yaml")
        .unwrap();
    for (large, second, decision) in [
        ("true", Outcome::Success, false),
        ("false", Outcome::Skipped, true),
    ] {
        let runner = {
            let host = host.clone();
            let pipeline = pipeline.clone();
            let options = RunOptions {
                params: BTreeMap::from([("large".to_string(), large.to_string())]),
                ..RunOptions::default()
            };
            tokio::spawn(async move { host.run_pipeline(&pipeline, options).await })
        };
        let run = loop {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let runs = host.pipeline_runs(5).unwrap();
            if let Some(r) = runs
                .iter()
                .find(|r| r.params["large"] == json!(large == "true"))
            {
                break r.run_id.clone();
            }
        };
        until(&host, &run, "the sign-off waiting", |v| {
            v.stage_view("sign-off").status == Status::Waiting
        })
        .await;
        host.decide_gate(&run, "sign-off", decision, "lead", "")
            .await
            .unwrap();
        let view = runner.await.unwrap().unwrap();
        assert_eq!(
            view.stage_view("second-opinion").status,
            Status::Ended(second),
            "large={large}"
        );
        assert_eq!(
            view.outcome.as_deref(),
            Some(if decision { "succeeded" } else { "rejected" })
        );
        assert_eq!(
            view.stage_view("summary").status,
            Status::Ended(Outcome::Success),
            "finally runs after a rejection too"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_runs_as_a_stand_in_agent_at_its_agents_tier() {
    let dir = tempfile::tempdir().unwrap();
    let host = host(dir.path());
    register(
        &host,
        &[
            ("planner", "planner", Tier::Builder),
            ("hello", "hello", Tier::Operator),
        ],
    );
    let swapped = dir.path().join("swapped.wasm");
    std::fs::write(&swapped, agent("hello")).unwrap();
    let pipeline = host
        .load_pipeline(
            templates::get("incident-triage").unwrap(),
            "incident-triage.yaml",
        )
        .unwrap();
    let options = RunOptions {
        overrides: vec![("remediate".to_string(), swapped.clone())],
        actor: "tester".into(),
        ..RunOptions::default()
    };
    let view = host.run_pipeline(&pipeline, options).await.unwrap();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"), "{view:#?}");
    let remediate = view.stage_view("remediate");
    assert_eq!(
        remediate.items[0].agent.as_deref(),
        Some("planner.override.remediate")
    );
    let stand_in = host
        .ledger()
        .agent("planner.override.remediate")
        .unwrap()
        .unwrap();
    assert_eq!(
        stand_in.tier,
        Tier::Builder,
        "at the tier of the agent it stands in for"
    );
    assert_eq!(
        view.overrides["remediate"].path,
        swapped.display().to_string()
    );
    assert_eq!(view.started_by, "tester");
    let err = host
        .run_pipeline(
            &pipeline,
            RunOptions {
                overrides: vec![("nope".to_string(), swapped)],
                ..RunOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("has no stage `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specialists_run_their_tools_in_check_mode_below_the_full_tier() {
    let dir = tempfile::tempdir().unwrap();
    let tools = warden::tools::ToolRegistry::from_file(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/specialist/tools.toml"),
    )
    .unwrap();
    let host = Host::builder()
        .data_dir(dir.path())
        .tools(tools)
        .build()
        .unwrap();
    register(
        &host,
        &[
            ("terraform", "specialist", Tier::Builder),
            ("ansible", "specialist", Tier::Operator),
            ("code-review", "specialist", Tier::Operator),
        ],
    );
    let yaml = r#"
pipeline:
  name: specialists
  stages:
    - review: {agent: code-review, objective: "code-review: the network change", artifacts: [code-review-report.md]}
    - plan: {agent: terraform, objective: "terraform: staging network", artifacts: [terraform-report.md]}
    - configure: {agent: ansible, objective: "ansible: staging hosts", artifacts: [ansible-report.md], requires: [review]}
"#;
    let pipeline = host.load_pipeline(yaml, "specialists.yaml").unwrap();
    let view = host
        .run_pipeline(&pipeline, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(view.outcome.as_deref(), Some("succeeded"), "{view:#?}");
    let report = |name: &str| {
        let a = view
            .stages
            .values()
            .find_map(|s| s.artifacts.get(name).cloned())
            .unwrap_or_else(|| panic!("no `{name}`"));
        String::from_utf8(host.artifact(&a).unwrap().unwrap()).unwrap()
    };
    let terraform = report("terraform-report.md");
    assert!(
        terraform.contains("check mode: would run terraform plan")
            && terraform.contains("check mode: would run terraform apply"),
        "T2 is below both tools' full tier: {terraform}"
    );
    let ansible = report("ansible-report.md");
    assert!(
        ansible.contains("check mode: would run ansible-playbook --check"),
        "{ansible}"
    );
    assert!(
        !ansible.contains("ansible-apply"),
        "T1 does not see a T2 tool: {ansible}"
    );
    assert!(report("code-review-report.md").contains("would run git diff --stat"));
}

fn command(data: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(warden_bin());
    command
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("WARDEN_LOG", "error")
        .env_remove("VAULT_ADDR")
        .env_remove("WARDEN_CONFIG")
        .current_dir(data);
    command
}

fn warden(data: &Path, args: &[&str]) -> Output {
    command(data, args).output().unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    // One document, or NDJSON events of which the last is the result.
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(last))
        .unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {text}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

fn killed(out: &std::process::ExitStatus) -> bool {
    std::os::unix::process::ExitStatusExt::signal(out) == Some(9)
}

fn gate_waits(data: &Path, run: &str) -> bool {
    let out = warden(data, &["--json", "pipeline", "status", run]);
    out.status.success() && json(&out)["stages"]["gate"]["status"] == "waiting"
}

/// `warden pipeline run` killed after each step it records before its gate (and inside an
/// agent's run), resumed to the gate, the gate approved while no host runs, then resumed and
/// killed after each step again until it ends: every stage ran to success exactly once.
#[test]
fn a_pipeline_killed_at_every_step_resumes_without_repeating_a_stage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let hello = agents_dir().join("hello.wasm");
    for id in ["one", "two", "three"] {
        let out = warden(
            data,
            &[
                "agents",
                "register",
                id,
                "--tier",
                "T1",
                "--component",
                hello.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let file = data.join("p.yaml");
    std::fs::write(
        &file,
        "pipeline:\n  name: killed\n  stages:\n    - a: {agent: one, artifacts: [a.txt]}\n    - fan: {agent: \"${{ item }}\", for_each: [two, three], requires: [a], artifacts: [\"fan-${{ item }}.txt\"]}\n    - gate: {type: human-gate, timeout: 10m}\n    - b: {agent: one, artifacts: [b.txt]}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let mut kills = 0;
    let mut faults: Vec<String> = vec!["before:2".into(), "after:4".into()];
    faults.extend((1..=30).map(|n| format!("pipeline:{n}")));
    let runs = |data: &Path| -> Vec<String> {
        let list = json(&warden(
            data,
            &["--json", "pipeline", "list", "--limit", "100"],
        ));
        list.as_array()
            .unwrap()
            .iter()
            .map(|r| r["run_id"].as_str().unwrap().to_string())
            .collect()
    };
    for fault in &faults {
        let earlier = runs(data);
        let mut child = command(data, &["--json", "pipeline", "run", file])
            .env("WARDEN_FAULT_KILL", fault)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut run_id = None;
        let reached_gate = loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(
                    killed(&status),
                    "{fault}: the run was not killed: {status:?}"
                );
                break false;
            }
            if run_id.is_none() {
                run_id = runs(data).into_iter().find(|r| !earlier.contains(r));
            }
            if let Some(run) = &run_id
                && gate_waits(data, run)
            {
                child.kill().unwrap();
                child.wait().unwrap();
                break true;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        if reached_gate && fault.starts_with("pipeline:") {
            // Every step before the gate was a kill point; the rest are tested below.
            break;
        }
        kills += 1;
        let run = runs(data)
            .into_iter()
            .find(|r| !earlier.contains(r))
            .unwrap_or_else(|| panic!("{fault}: killed before its run began"));
        // Resume to the gate, and kill that host too while the gate waits.
        let mut resume = command(data, &["--json", "pipeline", "resume", &run])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut waited = 0;
        while !gate_waits(data, &run) {
            if let Some(status) = resume.try_wait().unwrap() {
                panic!("{fault}: the resume ended ({status}) before the gate");
            }
            std::thread::sleep(Duration::from_millis(25));
            waited += 1;
            assert!(waited < 1200, "{fault}: the resume never reached the gate");
        }
        resume.kill().unwrap();
        resume.wait().unwrap();
        // Decided while no host runs it: the next resume finds the decision.
        let out = warden(
            data,
            &["--json", "pipeline", "approve", &run, "gate", "--by", "ops"],
        );
        assert!(
            out.status.success(),
            "{fault}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let out = warden(
            data,
            &["--json", "pipeline", "approve", &run, "gate", "--by", "ops"],
        );
        assert_eq!(json(&out)["code"], "GATE_ALREADY_DECIDED", "{fault}");
        // Past the gate, killed after each step again until it ends.
        let mut result = None;
        for k in 1..=40 {
            let out = command(data, &["--json", "pipeline", "resume", &run])
                .env("WARDEN_FAULT_KILL", format!("pipeline:{k}"))
                .output()
                .unwrap();
            if out.status.success() {
                result = Some(json(&out));
                break;
            }
            if !killed(&out.status) && json(&out)["code"] == "PIPELINE_ENDED" {
                // The kill came just after the run's end was recorded.
                let status = json(&warden(data, &["--json", "pipeline", "status", &run]));
                result = Some(serde_json::json!({ "run": status }));
                break;
            }
            assert!(
                killed(&out.status),
                "{fault}, then pipeline:{k}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let result = result.unwrap_or_else(|| panic!("{fault}: the pipeline never ended"));
        assert_eq!(result["run"]["outcome"], "succeeded", "{fault}: {result}");
        let runs = json(&warden(
            data,
            &[
                "--json",
                "runs",
                "list",
                "--task",
                &run,
                "--status",
                "completed",
            ],
        ));
        let mut per_agent = BTreeMap::new();
        for r in runs["runs"].as_array().unwrap() {
            *per_agent
                .entry(r["agent_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            per_agent,
            BTreeMap::from([
                ("one".to_string(), 2),
                ("three".into(), 1),
                ("two".into(), 1)
            ]),
            "{fault}: every stage ran to success once"
        );
    }
    assert!(
        kills >= 10,
        "killed at {kills} steps; the fault points need `--features fault-points`, which `cargo xtask test` enables"
    );
    let verify = json(&warden(data, &["--json", "ledger", "verify"]));
    assert!(verify["broken"].is_null(), "{verify}");
}
