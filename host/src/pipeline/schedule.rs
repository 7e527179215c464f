//! What a pipeline run does next: a pure function of the pipeline and its recorded view.

use serde_json::{Value as Json, json};

use super::expr::Scope;
use super::record::{Outcome, RunView, Status};
use super::spec::{OnFailure, Pipeline, StageKind, ancestors};

/// One step the runner takes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Start stage `0`.
    Start(usize),
    /// Stage `0` does not run, for the reason given (and its code: `PIPELINE_TIMEOUT` when the
    /// pipeline's deadline passed).
    Skip(usize, String, Option<&'static str>),
    /// Stage `0` fails before it runs (its `when` cannot be evaluated).
    Fail(usize, String),
}

/// The code of a stage skipped because the pipeline's deadline passed.
pub(crate) const TIMEOUT: &str = "PIPELINE_TIMEOUT";

/// Why the run starts no more ordinary stages, if it does not.
pub(crate) fn stopping(pipeline: &Pipeline, view: &RunView, now_ms: u64) -> Option<String> {
    if let Some(by) = &view.cancelled_by {
        return Some(format!("cancelled by {by}"));
    }
    if timed_out(view, now_ms) {
        return Some("the pipeline's timeout passed".into());
    }
    pipeline
        .stages
        .iter()
        .filter(|s| !s.finally)
        .find_map(|s| match view.status(&s.name) {
            Status::Ended(Outcome::Rejected) => Some(format!("gate `{}` was rejected", s.name)),
            Status::Ended(Outcome::Failed) if s.on_failure != OnFailure::Continue => {
                Some(format!("stage `{}` failed", s.name))
            }
            _ => None,
        })
}

/// The steps that can be taken now: every pending stage whose stages it waits for have
/// ended, in file order.
pub(crate) fn next(pipeline: &Pipeline, view: &RunView, now_ms: u64) -> Vec<Step> {
    let stop = stopping(pipeline, view, now_ms);
    let mut steps = Vec::new();
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if view.status(&stage.name) != Status::Pending {
            continue;
        }
        let ready = stage
            .needs
            .iter()
            .all(|&j| view.status(&pipeline.stages[j].name).is_ended());
        if !ready {
            continue;
        }
        if !stage.finally
            && let Some(why) = &stop
        {
            let code = (timed_out(view, now_ms) && view.cancelled_by.is_none()).then_some(TIMEOUT);
            steps.push(Step::Skip(i, format!("not started: {why}"), code));
            continue;
        }
        match &stage.when {
            None => steps.push(Step::Start(i)),
            Some(when) => match when.test(&scope(pipeline, view, i, None)) {
                Ok(true) => steps.push(Step::Start(i)),
                Ok(false) => steps.push(Step::Skip(
                    i,
                    format!("`when: {}` is false", when.source()),
                    None,
                )),
                Err(e) => steps.push(Step::Fail(i, format!("`when` cannot be evaluated: {e}"))),
            },
        }
    }
    steps
}

/// How the run ended, once every stage has.
pub(crate) fn finished(pipeline: &Pipeline, view: &RunView, now_ms: u64) -> Option<&'static str> {
    let all_ended = pipeline
        .stages
        .iter()
        .all(|s| view.status(&s.name).is_ended());
    if !all_ended {
        return None;
    }
    if view.cancelled_by.is_some() {
        return Some("cancelled");
    }
    let failed = |s: &super::spec::Stage| {
        view.status(&s.name) == Status::Ended(Outcome::Failed)
            && (s.finally || s.on_failure != OnFailure::Continue)
    };
    if pipeline.stages.iter().any(|s| {
        matches!(s.kind, StageKind::Gate(_))
            && view.status(&s.name) == Status::Ended(Outcome::Rejected)
    }) {
        return Some("rejected");
    }
    // Stages the deadline kept from starting, or cut mid-run.
    let cut = pipeline.stages.iter().any(|s| {
        let code = view.stages.get(&s.name).and_then(|v| v.code.as_deref());
        code == Some(TIMEOUT)
            || (timed_out(view, now_ms) && !s.finally && code == Some("DEADLINE_EXCEEDED"))
    });
    if cut {
        return Some("timed_out");
    }
    if pipeline.stages.iter().any(failed) {
        return Some("failed");
    }
    Some("succeeded")
}

fn timed_out(view: &RunView, now_ms: u64) -> bool {
    view.deadline_ms.is_some_and(|d| now_ms >= d)
}

/// What stage `i`'s expressions see: the run's parameters, and each stage it waits for.
pub(crate) fn scope(pipeline: &Pipeline, view: &RunView, i: usize, item: Option<Json>) -> Scope {
    let mut stages = serde_json::Map::new();
    for j in ancestors(&pipeline.stages, i) {
        let s = &pipeline.stages[j];
        let v = view.stage_view(&s.name);
        let attempts: u32 = v.items.iter().map(|i| i.attempt).max().unwrap_or(0);
        stages.insert(
            s.name.clone(),
            json!({
                "outcome": v.status.as_str(),
                "code": v.code.clone().unwrap_or_default(),
                "artifacts": v.artifacts,
                "metrics": {
                    "runs": v.items.len(),
                    "attempts": attempts,
                    "failed_runs": v.items.iter().filter(|i| i.outcome == Some(Outcome::Failed)).count(),
                },
                "decided_by": v.gate.as_ref().and_then(|g| g.decision.as_ref()).map(|d| d.by.clone()),
            }),
        );
    }
    Scope {
        params: view.params.clone(),
        stages: Json::Object(stages),
        item,
        pipeline: json!({"name": pipeline.name, "run": view.run_id}),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::pipeline::record::Event;
    use crate::pipeline::spec::Catalog;
    use crate::tier::Tier;

    fn pipeline(yaml: &str) -> Pipeline {
        let tiers = crate::policy::TierTable::builtin().unwrap();
        let catalog = Catalog {
            agents: Some(HashMap::from([
                ("a".to_string(), Tier::Operator),
                ("b".to_string(), Tier::Operator),
            ])),
            tiers: &tiers,
        };
        Pipeline::parse(yaml, "t.yaml", &catalog).unwrap()
    }

    fn view(events: Vec<Event>) -> RunView {
        let mut all = vec![Event::Start {
            name: "p".into(),
            digest: String::new(),
            source: String::new(),
            params: json!({"env": "prod"}),
            overrides: BTreeMap::new(),
            host: String::new(),
            pid: 0,
            deadline_ms: Some(1000),
            by: String::new(),
        }];
        all.extend(events);
        let rows: Vec<(String, Event)> = all.into_iter().map(|e| (String::new(), e)).collect();
        RunView::fold("pl-1", &rows).unwrap()
    }

    fn end(stage: &str, outcome: Outcome) -> Event {
        Event::StageEnd {
            stage: stage.into(),
            round: 0,
            outcome,
            code: None,
            message: String::new(),
            artifacts: BTreeMap::new(),
        }
    }

    const YAML: &str = "pipeline:\n  name: p\n  params:\n    env: {default: dev}\n  stages:\n    - one: {agent: a}\n    - two: {agent: b, requires: []}\n    - three: {agent: a, requires: [one, two], when: \"params.env == 'prod'\"}\n    - four: {agent: b, requires: [one], on_failure: continue}\n  finally:\n    - tidy: {agent: a}\n";

    #[test]
    fn independent_stages_start_together_and_dependents_wait() {
        let p = pipeline(YAML);
        assert_eq!(
            next(&p, &view(vec![]), 0),
            vec![Step::Start(0), Step::Start(1)]
        );
        let v = view(vec![end("one", Outcome::Success)]);
        assert_eq!(next(&p, &v, 0), vec![Step::Start(1), Step::Start(3)]);
        let v = view(vec![
            end("one", Outcome::Success),
            end("two", Outcome::Success),
        ]);
        assert_eq!(next(&p, &v, 0), vec![Step::Start(2), Step::Start(3)]);
    }

    #[test]
    fn when_false_skips_and_a_failure_stops_all_but_finally() {
        let p = pipeline(&YAML.replace("default: dev", "default: x"));
        let mut v = view(vec![
            end("one", Outcome::Success),
            end("two", Outcome::Success),
        ]);
        v.params = json!({"env": "dev"});
        assert!(
            matches!(&next(&p, &v, 0)[0], Step::Skip(2, why, None) if why.contains("is false"))
        );

        let v = view(vec![end("one", Outcome::Failed)]);
        let steps = next(&p, &v, 0);
        assert!(
            matches!(&steps[1], Step::Skip(3, why, None) if why.contains("stage `one` failed")),
            "{steps:?}"
        );
        let v = view(vec![
            end("one", Outcome::Failed),
            end("two", Outcome::Success),
            end("three", Outcome::Skipped),
            end("four", Outcome::Skipped),
        ]);
        assert_eq!(
            next(&p, &v, 0),
            vec![Step::Start(4)],
            "finally runs after a failure"
        );
        let v = view(vec![
            end("one", Outcome::Success),
            end("two", Outcome::Success),
            end("three", Outcome::Success),
            end("four", Outcome::Failed),
            end("tidy", Outcome::Success),
        ]);
        assert_eq!(
            finished(&p, &v, 0),
            Some("succeeded"),
            "`continue` does not fail the run"
        );
        let v = view(vec![
            end("one", Outcome::Failed),
            end("two", Outcome::Success),
            end("three", Outcome::Skipped),
            end("four", Outcome::Skipped),
            end("tidy", Outcome::Success),
        ]);
        assert_eq!(finished(&p, &v, 0), Some("failed"));
        assert_eq!(finished(&p, &view(vec![]), 0), None);
    }

    #[test]
    fn a_deadline_or_a_cancel_stops_new_stages() {
        let p = pipeline(YAML);
        assert!(
            matches!(&next(&p, &view(vec![]), 1000)[0], Step::Skip(0, why, Some(TIMEOUT)) if why.contains("timeout"))
        );
        let v = view(vec![Event::Cancel { by: "op".into() }]);
        assert!(
            matches!(&next(&p, &v, 0)[0], Step::Skip(0, why, None) if why.contains("cancelled by op"))
        );
    }
}
