//! `warden pipeline …`: write, check, run and steer pipelines.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::json;

use super::{Env, default_actor, exit, output};
use warden::pipeline::{Catalog, Event, Pipeline, RunOptions, RunView, StageKind, Status};

#[derive(Subcommand)]
pub(super) enum PipelineCommand {
    /// Write a pipeline file from a shipped template (`infrastructure-deploy`, `code-review`,
    /// `research-synthesis`, `incident-triage`), with parameters' defaults set by `--param`.
    ///
    /// Example: `warden pipeline new --template infrastructure-deploy --param env=prod -o deploy.yaml`
    New {
        /// The template's name.
        #[arg(long)]
        template: String,
        /// Set a parameter's default: `name=value` (a list parameter takes `a,b,c`).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = key_value)]
        params: Vec<(String, String)>,
        /// Where to write it (default: `<template>.yaml`; never over an existing file).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Check a pipeline file against the registered agents and the tier table; every
    /// problem is printed at its line and column. Exit 3 when there is one.
    ///
    /// Example: `warden pipeline validate pipelines/infrastructure-deploy.yaml`
    Validate {
        /// The pipeline file (YAML).
        file: PathBuf,
    },
    /// Run a pipeline to its end, one line per step as it happens (`--json`: NDJSON events).
    /// A waiting gate is printed with the commands that decide it. Exit 5 unless it
    /// succeeded.
    ///
    /// Example: `warden pipeline run deploy.yaml --param env=staging`
    Run {
        /// The pipeline file (YAML).
        file: PathBuf,
        /// A parameter: `name=value` (a list parameter takes `a,b,c`).
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = key_value)]
        params: Vec<(String, String)>,
        /// Run stage STAGE with another component, for testing: `stage=file.wasm`. It runs as
        /// agent `<agent>.override.<stage>` at its agent's tier, recorded in the ledger.
        #[arg(long = "override", value_name = "STAGE=FILE", value_parser = key_value)]
        overrides: Vec<(String, String)>,
        /// Who runs it (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
        /// Queue it for `warden worker`s on the Redis of `--state` instead of running it
        /// here; prints its id.
        #[arg(long, conflicts_with = "overrides")]
        queue: bool,
    },
    /// Where a run stands: each stage's status, attempts, runs and artifacts, and a waiting
    /// gate with the commands that decide it.
    ///
    /// Example: `warden pipeline status pl-0193…`
    Status {
        /// The pipeline run (`warden pipeline list`).
        run: String,
    },
    /// Pipeline runs, newest first.
    ///
    /// Example: `warden pipeline list --limit 10`
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Approve a waiting human gate (once: a second decision is refused).
    ///
    /// Example: `warden pipeline approve pl-0193… review --comment "plan looks right"`
    Approve {
        /// The pipeline run.
        run: String,
        /// The gate's stage name.
        stage: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        comment: String,
        /// Who decides (recorded; must be among the gate's `approvers` if it names any).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Reject a waiting human gate: the pipeline stops (its `finally` stages run).
    ///
    /// Example: `warden pipeline reject pl-0193… review --comment "wrong region"`
    Reject {
        /// The pipeline run.
        run: String,
        /// The gate's stage name.
        stage: String,
        /// Why (recorded).
        #[arg(long, default_value = "")]
        comment: String,
        /// Who decides (recorded; must be among the gate's `approvers` if it names any).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Go on with a run whose host was killed: ended stages keep their outcome, an
    /// interrupted agent run resumes through its journal, a gate waits on.
    ///
    /// Example: `warden pipeline resume pl-0193…`
    Resume {
        /// The pipeline run.
        run: String,
    },
    /// Run a stage of an ended run again, and every stage that waits for it; the others
    /// keep what they did.
    ///
    /// Example: `warden pipeline retry pl-0193… --from execute`
    Retry {
        /// The pipeline run.
        run: String,
        /// The stage to run again.
        #[arg(long)]
        from: String,
        /// Who asks (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// Stop a run: nothing more starts, a waiting gate stops waiting, runs under way end as
    /// they would, then the `finally` stages run.
    ///
    /// Example: `warden pipeline cancel pl-0193…`
    Cancel {
        /// The pipeline run.
        run: String,
        /// Who cancels (recorded; default: `$USER`).
        #[arg(long, default_value_t = default_actor())]
        by: String,
    },
    /// The stages and what each waits for, as text or as Graphviz DOT.
    ///
    /// Example: `warden pipeline graph deploy.yaml --dot | dot -Tsvg > deploy.svg`
    Graph {
        /// The pipeline file (YAML).
        file: PathBuf,
        /// Graphviz DOT instead of text.
        #[arg(long)]
        dot: bool,
    },
}

/// `name=value`.
fn key_value(text: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not `name=value`"))?;
    if k.trim().is_empty() {
        return Err(format!("`{text}` has no name before `=`"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read pipeline file `{}`", file.display()))
}

pub(super) async fn pipeline(cx: &Env, command: PipelineCommand) -> Result<u8> {
    match command {
        PipelineCommand::New {
            template,
            params,
            output,
        } => new(cx, &template, &params, output),
        PipelineCommand::Validate { file } => {
            let host = cx.recorded_host().await?;
            let text = read(&file)?;
            match Pipeline::parse(
                &text,
                &file.display().to_string(),
                &host.pipeline_catalog()?,
            ) {
                Ok(p) => {
                    output::done(
                        cx.json,
                        &format!("pipeline `{}` is valid: {} stages", p.name, p.stages.len()),
                        json!({ "valid": true, "name": p.name, "stages": p.stages.len(), "digest": p.digest }),
                    );
                    Ok(exit::OK)
                }
                Err(errors) => {
                    if cx.json {
                        let problems: Vec<_> = errors
                            .0
                            .iter()
                            .map(|e| json!({ "line": e.line, "column": e.column, "message": e.message }))
                            .collect();
                        output::emit(
                            &json!({ "valid": false, "code": "PIPELINE_INVALID", "problems": problems })
                                .to_string(),
                        );
                    } else {
                        for e in &errors.0 {
                            eprintln!("{}", output::escape(&e.to_string()));
                        }
                        eprintln!("{} problems", errors.0.len());
                    }
                    Ok(exit::REFUSED)
                }
            }
        }
        PipelineCommand::Run {
            file,
            params,
            overrides,
            by,
            queue,
        } => {
            let host = cx.host().await?;
            let text = read(&file)?;
            let pipeline = host.load_pipeline(&text, &file.display().to_string())?;
            let options = RunOptions {
                params: params.into_iter().collect::<BTreeMap<_, _>>(),
                overrides: overrides
                    .into_iter()
                    .map(|(s, p)| (s, PathBuf::from(p)))
                    .collect(),
                actor: by,
                observer: Some(observer(cx.json)),
            };
            if queue {
                let url = redis_url(cx)?;
                let run = host.enqueue_pipeline(&url, &pipeline, options).await?;
                output::done(
                    cx.json,
                    &format!(
                        "queued pipeline run `{run}` for the workers (`warden pipeline status {run}`)"
                    ),
                    json!({ "queued": run }),
                );
                return Ok(exit::OK);
            }
            let view = host.run_pipeline(&pipeline, options).await?;
            finish(cx.json, &view)
        }
        PipelineCommand::Status { run } => {
            let host = cx.recorded_host().await?;
            let view = host.pipeline_run(&run)?;
            status(cx.json, &view);
            Ok(exit::OK)
        }
        PipelineCommand::List { limit } => {
            let host = cx.recorded_host().await?;
            let runs = host.pipeline_runs(limit)?;
            if cx.json {
                output::emit(&serde_json::to_string(&runs).unwrap_or_default());
            } else if runs.is_empty() {
                output::emit("no pipeline runs");
            } else {
                for r in &runs {
                    output::emit(&format!(
                        "{}  {:<24} {:<10} {}",
                        r.run_id,
                        output::escape(&r.name),
                        r.outcome.as_deref().unwrap_or("running"),
                        r.started_at
                    ));
                }
            }
            Ok(exit::OK)
        }
        PipelineCommand::Approve {
            run,
            stage,
            comment,
            by,
        } => decide(cx, &run, &stage, true, &by, &comment).await,
        PipelineCommand::Reject {
            run,
            stage,
            comment,
            by,
        } => decide(cx, &run, &stage, false, &by, &comment).await,
        PipelineCommand::Resume { run } => {
            let host = cx.recorded_host().await?;
            let view = host.resume_pipeline(&run, Some(observer(cx.json))).await?;
            finish(cx.json, &view)
        }
        PipelineCommand::Retry { run, from, by } => {
            let host = cx.recorded_host().await?;
            let view = host
                .retry_pipeline(&run, &from, &by, Some(observer(cx.json)))
                .await?;
            finish(cx.json, &view)
        }
        PipelineCommand::Cancel { run, by } => {
            let host = cx.recorded_host().await?;
            host.cancel_pipeline(&run, &by).await?;
            output::done(
                cx.json,
                &format!("cancelled pipeline run `{run}`: nothing more starts"),
                json!({ "cancelled": run, "by": by }),
            );
            Ok(exit::OK)
        }
        PipelineCommand::Graph { file, dot } => {
            let text = read(&file)?;
            let tiers = cx.tier_table()?;
            let catalog = Catalog {
                agents: None,
                tiers: &tiers,
            };
            let pipeline = Pipeline::parse(&text, &file.display().to_string(), &catalog)
                .map_err(|e| Error::Pipeline(warden::PipelineError::Invalid(e)))?;
            output::emit(&if dot {
                to_dot(&pipeline)
            } else {
                to_text(&pipeline)
            });
            Ok(exit::OK)
        }
    }
}

use warden::Error;

/// The Redis the workers share: `--state` (or `WARDEN_REDIS_URL`, or warden.toml's).
pub(super) fn redis_url(cx: &Env) -> Result<String> {
    match &cx.state {
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => Ok(url.clone()),
        _ => anyhow::bail!(Error::Invalid(
            "pipeline workers share a Redis: give `--state redis://host:port/db` (or `WARDEN_REDIS_URL`)".into()
        )),
    }
}

/// `warden worker`: take queued pipeline runs until stopped (or `max_runs`).
pub(super) async fn worker(
    cx: &Env,
    name: Option<String>,
    claim_after: std::time::Duration,
    heartbeat: std::time::Duration,
    max_runs: Option<usize>,
) -> Result<u8> {
    let url = redis_url(cx)?;
    let host = cx.host().await?;
    let mut options = warden::pipeline::WorkerOptions {
        claim_after,
        heartbeat,
        max_runs,
        observer: Some(observer(cx.json)),
        ..warden::pipeline::WorkerOptions::default()
    };
    if let Some(name) = name {
        options.name = name;
    }
    if cx.json {
        output::emit(
            &json!({ "event": "worker", "name": options.name, "queue": warden::pipeline::QUEUE, "group": warden::pipeline::GROUP })
                .to_string(),
        );
    } else {
        output::emit(&format!(
            "worker `{}` takes pipeline runs from `{}` (group `{}`)",
            output::escape(&options.name),
            warden::pipeline::QUEUE,
            warden::pipeline::GROUP
        ));
    }
    tokio::select! {
        done = host.work(&url, options) => {
            let done = done?;
            output::done(cx.json, &format!("worker finished {} runs", done.len()), json!({ "finished": done }));
            Ok(exit::OK)
        }
        _ = tokio::signal::ctrl_c() => Ok(exit::OK),
    }
}

async fn decide(
    cx: &Env,
    run: &str,
    stage: &str,
    approved: bool,
    by: &str,
    comment: &str,
) -> Result<u8> {
    let host = cx.recorded_host().await?;
    host.decide_gate(run, stage, approved, by, comment).await?;
    let verb = if approved { "approved" } else { "rejected" };
    output::done(
        cx.json,
        &format!("{verb} gate `{stage}` of pipeline run `{run}`"),
        json!({ "run": run, "stage": stage, "decision": verb, "by": by }),
    );
    Ok(exit::OK)
}

fn finish(json: bool, view: &RunView) -> Result<u8> {
    let outcome = view.outcome.as_deref().unwrap_or("interrupted");
    if json {
        output::emit(&json!({ "event": "result", "run": view }).to_string());
    } else {
        output::emit(&format!(
            "pipeline `{}` {outcome}: run `{}` (`warden pipeline status {}`)",
            output::escape(&view.name),
            view.run_id,
            view.run_id
        ));
    }
    Ok(if outcome == "succeeded" {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// Prints each event as it is recorded: one line for a person (with the seconds since the
/// run began), one JSON object per line under `--json`.
fn observer(json: bool) -> warden::pipeline::Observer {
    if !json && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return live();
    }
    let began = Instant::now();
    Arc::new(move |run: &str, event: &Event| {
        if json {
            let mut value = serde_json::to_value(event).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.remove("source");
                map.insert("run".into(), json!(run));
                map.insert("elapsed_ms".into(), json!(began.elapsed().as_millis()));
            }
            output::emit(&value.to_string());
            return;
        }
        let elapsed = began.elapsed().as_secs_f64();
        let line = match event {
            Event::GateOpen {
                stage,
                approvers,
                message,
                deadline_ms,
                ..
            } => {
                let left = deadline_ms.saturating_sub(warden_now_ms()) / 1000;
                let who = if approvers.is_empty() {
                    String::new()
                } else {
                    format!(" (approvers: {})", approvers.join(", "))
                };
                let line = format!("gate `{stage}` waits up to {left}s{who}: {message}");
                output::emit(&format!("[{elapsed:>7.1}s] {}", output::escape(&line)));
                format!(
                    "decide with `warden pipeline approve {run} {stage}` or `warden pipeline reject {run} {stage}`"
                )
            }
            Event::ItemEnd {
                stage,
                outcome,
                code,
                message,
                run_id,
                ..
            } => {
                let why = match code {
                    Some(code) => format!(" {code}: {message}"),
                    None => String::new(),
                };
                format!("stage `{stage}` run {run_id}: {}{why}", outcome.as_str())
            }
            Event::StageEnd {
                stage,
                outcome,
                message,
                ..
            } if !message.is_empty() => {
                format!("stage `{stage}`: {} ({message})", outcome.as_str())
            }
            other => other.summary(),
        };
        output::emit(&format!("[{elapsed:>7.1}s] {}", output::escape(&line)));
    })
}

/// On a terminal: one live line per stage (indicatif), its status and time, a spinner while
/// it runs; a waiting gate's line names the commands that decide it.
fn live() -> warden::pipeline::Observer {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let bars = MultiProgress::new();
    let stages: parking_lot::Mutex<std::collections::HashMap<String, (ProgressBar, Instant)>> =
        parking_lot::Mutex::new(std::collections::HashMap::new());
    let style = ProgressStyle::with_template("{spinner} {prefix:<24} {wide_msg} {elapsed:>5}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    Arc::new(move |run: &str, event: &Event| {
        let mut stages = stages.lock();
        let mut bar = |stage: &str| {
            stages
                .entry(stage.to_string())
                .or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(output::escape(stage).into_owned());
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    (bar, Instant::now())
                })
                .clone()
        };
        match event {
            Event::StageStart { stage, items, .. } => {
                bar(stage)
                    .0
                    .set_message(format!("running ({} runs)", items.len()));
            }
            Event::ItemStart {
                stage,
                item,
                attempt,
                agent,
                ..
            } => bar(stage).0.set_message(format!(
                "run {item} attempt {attempt}: agent {}",
                output::escape(agent)
            )),
            Event::GateOpen { stage, message, .. } => bar(stage).0.set_message(format!(
                "waiting: {}; `warden pipeline approve {run} {stage}` or `reject`",
                output::escape(message)
            )),
            Event::StageEnd {
                stage,
                outcome,
                message,
                ..
            } => {
                let (b, began) = bar(stage);
                let why = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", output::escape(message))
                };
                b.finish_with_message(format!(
                    "{}{why} ({:.1}s)",
                    outcome.as_str(),
                    began.elapsed().as_secs_f64()
                ));
            }
            Event::End { outcome } => {
                let _ = bars.println(format!("pipeline {outcome}"));
            }
            _ => {}
        }
    })
}

fn warden_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn status(json: bool, view: &RunView) {
    if json {
        output::emit(&serde_json::to_string(view).unwrap_or_default());
        return;
    }
    let mut out = format!(
        "pipeline `{}` run {}: {}\n  started {} by {} pid {}\n",
        output::escape(&view.name),
        view.run_id,
        view.outcome.as_deref().unwrap_or("running or interrupted"),
        view.started_at,
        output::escape(&view.host),
        view.pid
    );
    if let Some(by) = &view.cancelled_by {
        out.push_str(&format!("  cancelled by {}\n", output::escape(by)));
    }
    for (name, stage) in &view.stages {
        out.push_str(&format!(
            "  {:<24} {}",
            output::escape(name),
            stage.status.as_str()
        ));
        if let Some(code) = &stage.code {
            out.push_str(&format!(" {code}"));
        }
        if !stage.message.is_empty() {
            out.push_str(&format!(": {}", output::escape(&stage.message)));
        }
        out.push('\n');
        for item in &stage.items {
            if let Some(run) = &item.run_id {
                out.push_str(&format!(
                    "      attempt {} {} {}{}\n",
                    item.attempt,
                    run,
                    item.outcome.map_or("running", |o| o.as_str()),
                    item.agent
                        .as_ref()
                        .map(|a| format!(" (agent {})", output::escape(a)))
                        .unwrap_or_default()
                ));
            }
        }
        for (artifact, digest) in &stage.artifacts {
            out.push_str(&format!(
                "      artifact {} {digest}\n",
                output::escape(artifact)
            ));
        }
        if stage.status == Status::Waiting
            && let Some(gate) = &stage.gate
        {
            out.push_str(&format!(
                "      waits for a decision: `warden pipeline approve {} {name}` or `warden pipeline reject {} {name}`\n",
                view.run_id, view.run_id
            ));
            if !gate.approvers.is_empty() {
                out.push_str(&format!(
                    "      approvers: {}\n",
                    output::escape(&gate.approvers.join(", "))
                ));
            }
        }
    }
    output::emit(out.trim_end());
}

fn kind_of(kind: &StageKind) -> &'static str {
    match kind {
        StageKind::Agent(_) => "agent",
        StageKind::Gate(_) => "human-gate",
        StageKind::Task(_) => "task",
    }
}

fn to_text(p: &Pipeline) -> String {
    let mut out = format!("pipeline `{}`\n", p.name);
    for s in &p.stages {
        let needs: Vec<&str> = s.needs.iter().map(|&j| p.stages[j].name.as_str()).collect();
        out.push_str(&format!(
            "  {}{} [{}]{}\n",
            if s.finally { "finally " } else { "" },
            s.name,
            kind_of(&s.kind),
            if needs.is_empty() {
                String::new()
            } else {
                format!(" ← {}", needs.join(", "))
            }
        ));
    }
    out.trim_end().to_string()
}

fn to_dot(p: &Pipeline) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n", q(&p.name));
    for s in &p.stages {
        let shape = match s.kind {
            StageKind::Agent(_) => "box",
            StageKind::Gate(_) => "diamond",
            StageKind::Task(_) => "box3d",
        };
        let style = if s.finally { ", style=dashed" } else { "" };
        out.push_str(&format!("  {} [shape={shape}{style}];\n", q(&s.name)));
    }
    for s in &p.stages {
        for &j in &s.needs {
            out.push_str(&format!("  {} -> {};\n", q(&p.stages[j].name), q(&s.name)));
        }
    }
    out.push('}');
    out
}

fn new(
    cx: &Env,
    template: &str,
    params: &[(String, String)],
    output: Option<PathBuf>,
) -> Result<u8> {
    let Some(text) = warden::pipeline::templates::get(template) else {
        let names: Vec<&str> = warden::pipeline::templates::TEMPLATES
            .iter()
            .map(|(n, _)| *n)
            .collect();
        anyhow::bail!(Error::Pipeline(warden::PipelineError::Param(format!(
            "no pipeline template `{template}`; the templates: {names:?}"
        ))));
    };
    let text = warden::pipeline::templates::with_defaults(text, params)
        .map_err(|e| Error::Pipeline(warden::PipelineError::Param(e)))?;
    let tiers = cx.tier_table()?;
    let catalog = Catalog {
        agents: None,
        tiers: &tiers,
    };
    let pipeline = Pipeline::parse(&text, template, &catalog)
        .map_err(|e| Error::Pipeline(warden::PipelineError::Invalid(e)))?;
    let path = output.unwrap_or_else(|| PathBuf::from(format!("{template}.yaml")));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot create `{}` (an existing file is never replaced)",
                path.display()
            )
        })?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    output::done(
        cx.json,
        &format!(
            "wrote `{}` ({} stages); check it with `warden pipeline validate {}`",
            path.display(),
            pipeline.stages.len(),
            path.display()
        ),
        json!({ "written": path, "template": template, "stages": pipeline.stages.len() }),
    );
    Ok(exit::OK)
}
