//! Test agent for multi-agent coordination (and effects of every kind): during EXECUTE it
//! makes the blackboard, messaging, consensus, state, artifact, ledger and tool calls of its
//! script and writes how each ended to the blackboard entry `progress/<agent id>` (one line
//! per call: `<call> -> ok <result>` or `<call> -> <error>`).
//! It imports T1 interfaces, so it loads from T1 up.
//!
//! The script is the blackboard entry `problem/script:<agent id>` when present (so the
//! agents of one orchestrated task can each get their own), else the objective after
//! `probe:`. Calls are separated by `;`:
//!
//! | call                                   | does                                         |
//! |----------------------------------------|----------------------------------------------|
//! | `bb.read <section> <key>`              | read an entry (`none` when absent)           |
//! | `bb.write <section> <key> <value…>`    | write an entry                               |
//! | `bb.entries <section>`                 | list keys                                    |
//! | `msg.send <to> <kind> <body…>`         | direct message (kind `proposal`, `feedback`, `handoff`, or free-form) |
//! | `msg.broadcast <kind> <body…>`         | broadcast                                    |
//! | `msg.recv <timeout ms>`                | receive: `sender/kind/body` per message      |
//! | `msg.drain <count> <timeout ms>`       | receive until `count` messages or timeout    |
//! | `vote.propose <title> <required,…\|->` | open a proposal (voters: the task's agents, or the required ones): its id |
//! | `vote.propose-to <title> <voters,…\|-> <required,…\|->` | open a proposal with named voters: its id |
//! | `vote.finalize <id>`                   | make it the task's decision: `reached=… accepts=…` |
//! | `vote.validate <yes\|no> <note…>`      | the mediator's verdict                       |
//! | `vote.cast <id> <accept\|reject\|abstain> <reasoning…>` | vote              |
//! | `vote.tally <id>`                      | `reached=… accepts=… rejects=… missing=…`   |
//! | `vote.resolve <id> <note…>`            | settle a proposal                            |
//! | `vote.conflicts`                       | ids of proposals in conflict                 |
//! | `wait.bb <section> <key> <timeout ms>` | wait until an entry exists                   |
//! | `state.set <key> <value…>`             | write the agent's state                      |
//! | `art.put <name> <text…>`               | write an artifact: its digest                |
//! | `note <text…>`                         | a ledger note                                |
//! | `tool <name> <args…>`                  | run a tool: `exit=<code>`                    |
//! | `sleep <ms>`                           | sleep without calling the host               |
//! | `fail`                                 | end EXECUTE unsuccessfully (after the script) |
//!
//! `$last` in a call stands for the result of the previous successful call (a proposal id).

use std::time::{Duration, Instant};

use warden_sdk::blackboard::Section;
use warden_sdk::consensus::VoteChoice;
use warden_sdk::messaging::Kind;
use warden_sdk::prelude::*;

#[derive(Default)]
struct CoordProbe;

fn section(name: &str) -> Result<Section, String> {
    match name {
        "problem" => Ok(Section::Problem),
        "solutions" => Ok(Section::Solutions),
        "progress" => Ok(Section::Progress),
        "consensus" => Ok(Section::Consensus),
        other => Err(format!("no section `{other}`")),
    }
}

/// `a,b,c` as ids; `-` for none.
fn ids(list: &str) -> Vec<&str> {
    match list {
        "-" => Vec::new(),
        list => list.split(',').collect(),
    }
}

fn kind(name: &str) -> Kind {
    match name {
        "proposal" => Kind::Proposal,
        "feedback" => Kind::Feedback,
        "handoff" => Kind::Handoff,
        other => Kind::Other(other.to_string()),
    }
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Proposal => "proposal".into(),
        Kind::Feedback => "feedback".into(),
        Kind::Handoff => "handoff".into(),
        Kind::Other(other) => other.clone(),
    }
}

fn millis(text: Option<&str>) -> Result<Duration, String> {
    text.and_then(|t| t.parse().ok())
        .map(Duration::from_millis)
        .ok_or_else(|| "expected milliseconds".to_string())
}

fn messages(batch: &[warden_sdk::messaging::Message]) -> String {
    batch
        .iter()
        .map(|m| format!("{}/{}/{}", m.sender, kind_name(&m.kind), m.body))
        .collect::<Vec<_>>()
        .join(",")
}

/// One call; `Ok` carries the result text.
fn call(line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let rest = |from: usize| words.get(from..).map(|w| w.join(" ")).unwrap_or_default();
    let arg = |i: usize| {
        words
            .get(i)
            .copied()
            .ok_or_else(|| format!("missing argument {i}"))
    };
    let host = |e: Error| e.to_string();
    match words.first().copied().unwrap_or_default() {
        "bb.read" => Ok(blackboard::read(section(arg(1)?)?, arg(2)?)
            .map_err(host)?
            .unwrap_or_else(|| "none".into())),
        "bb.write" => {
            blackboard::write(section(arg(1)?)?, arg(2)?, &rest(3)).map_err(host)?;
            Ok(String::new())
        }
        "bb.entries" => Ok(blackboard::entries(section(arg(1)?)?)
            .map_err(host)?
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
            .join(",")),
        "msg.send" => messaging::send(arg(1)?, kind(arg(2)?), &rest(3))
            .map(|id| id.to_string())
            .map_err(host),
        "msg.broadcast" => messaging::broadcast(kind(arg(1)?), &rest(2))
            .map(|id| id.to_string())
            .map_err(host),
        "msg.recv" => Ok(messages(
            &messaging::receive(millis(words.get(1).copied())?).map_err(host)?,
        )),
        "msg.drain" => {
            let want: usize = arg(1)?
                .parse()
                .map_err(|_| "expected a count".to_string())?;
            let deadline = Instant::now() + millis(words.get(2).copied())?;
            let mut all = Vec::new();
            while all.len() < want {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                all.extend(messaging::receive(left).map_err(host)?);
            }
            Ok(messages(&all))
        }
        "vote.propose" => {
            let required = ids(arg(2)?);
            consensus::propose(arg(1)?, &rest(3), &[], &required).map_err(host)
        }
        "vote.propose-to" => {
            let (voters, required) = (ids(arg(2)?), ids(arg(3)?));
            consensus::propose(arg(1)?, &rest(4), &voters, &required).map_err(host)
        }
        "vote.finalize" => {
            let t = consensus::finalize(arg(1)?).map_err(host)?;
            Ok(format!("reached={} accepts={}", t.reached, t.accepts))
        }
        "vote.validate" => {
            consensus::validate(arg(1)? == "yes", &rest(2)).map_err(host)?;
            Ok(String::new())
        }
        "vote.cast" => {
            let choice = match arg(2)? {
                "accept" => VoteChoice::Accept,
                "reject" => VoteChoice::Reject,
                "abstain" => VoteChoice::Abstain,
                other => return Err(format!("no vote `{other}`")),
            };
            consensus::cast(arg(1)?, choice, &rest(3)).map_err(host)?;
            Ok(String::new())
        }
        "vote.tally" => {
            let t = consensus::tally(arg(1)?).map_err(host)?;
            Ok(format!(
                "reached={} accepts={} rejects={} abstains={} missing={} quorum={}",
                t.reached,
                t.accepts,
                t.rejects,
                t.abstains,
                t.missing.join(","),
                t.quorum
            ))
        }
        "vote.resolve" => {
            consensus::resolve(arg(1)?, &rest(2)).map_err(host)?;
            Ok(String::new())
        }
        "vote.conflicts" => Ok(consensus::proposals()
            .map_err(host)?
            .into_iter()
            .filter(|p| p.in_conflict)
            .map(|p| p.id)
            .collect::<Vec<_>>()
            .join(",")),
        "wait.bb" => {
            let (section, key) = (section(arg(1)?)?, arg(2)?);
            let deadline = Instant::now() + millis(words.get(3).copied())?;
            loop {
                if let Some(value) = blackboard::read(section, key).map_err(host)? {
                    return Ok(value);
                }
                if Instant::now() >= deadline {
                    return Err(format!("`{key}` did not appear"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        "state.set" => {
            state::set(arg(1)?, &rest(2)).map_err(host)?;
            Ok(String::new())
        }
        "art.put" => artifacts::put_text(arg(1)?, &rest(2)).map_err(host),
        "note" => {
            ledger::note(&rest(1)).map_err(host)?;
            Ok(String::new())
        }
        "tool" => {
            let args: Vec<&str> = words.get(2..).unwrap_or_default().to_vec();
            let output = tools::invoke(arg(1)?, &args).map_err(host)?;
            Ok(format!("exit={}", output.exit_code))
        }
        "fail" => Ok("failing".into()),
        "sleep" => {
            std::thread::sleep(millis(words.get(1).copied())?);
            Ok(String::new())
        }
        other => Err(format!("unknown call `{other}`")),
    }
}

impl Agent for CoordProbe {
    fn plan(&mut self, _packet: &Packet) -> Result<Plan, AgentError> {
        Ok(Plan {
            summary: "coordination probe".into(),
            steps: vec!["run the script during EXECUTE".into()],
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let script =
            match blackboard::read(Section::Problem, &format!("script:{}", packet.agent_id))? {
                Some(script) => script,
                None => packet
                    .objective
                    .trim()
                    .strip_prefix("probe:")
                    .unwrap_or_default()
                    .to_string(),
            };
        let mut last = String::new();
        let mut lines = Vec::new();
        for raw in script.split(';').map(str::trim).filter(|c| !c.is_empty()) {
            let line = raw.replace("$last", &last);
            match call(&line) {
                Ok(result) => {
                    lines.push(format!("{line} -> ok {result}").trim_end().to_string());
                    last = result;
                }
                Err(error) => lines.push(format!("{line} -> {error}")),
            }
        }
        let failing = lines.iter().any(|l| l.starts_with("fail ->"));
        let results = lines.join("\n");
        // Best effort: a revoked probe cannot write its results, and that is the point of
        // some tests.
        let _ = blackboard::write(Section::Progress, &packet.agent_id, &results);
        Ok(Outcome {
            success: !failing,
            summary: results,
            artifacts: vec![],
        })
    }

    fn verify(&mut self, _packet: &Packet, _outcome: &Outcome) -> Result<Verification, AgentError> {
        Ok(Verification {
            passed: true,
            findings: vec![],
        })
    }
}

warden_sdk::export_agent!(CoordProbe);
