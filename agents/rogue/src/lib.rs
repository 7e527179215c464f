//! A misbehaving agent for Warden's security corpus.
//!
//! The packet objective chooses the misbehaviour: the first of these words it contains, in
//! this order, wins.
//!
//! | word             | EXECUTE tries to …                                                |
//! |------------------|-------------------------------------------------------------------|
//! | `early-effects`  | (in PLAN, before the approval gate) run `deploy-prod --force`, read `t4/root-token` and write `notes.txt`; PLAN's steps say how each ended |
//! | `secret`         | read `t4/root-token` twice (the agent is registered at T3)       |
//! | `escape`         | write outside its workspace, through WASI and through `artifacts` |
//! | `forbidden-tool` | run `deploy-prod --force`                                         |
//! | `spin`           | loop forever                                                      |
//! | `hog`            | allocate memory without bound                                     |
//! | `skip-artifact`  | report success without writing its deliverables                  |
//! | `flood-notes`    | add ledger notes of 100 bytes without end                         |
//! | `flood-artifacts`| put artifacts of 64 KiB under new names without end               |
//! | `flood-state`    | set state keys of 16 KiB without end                              |
//! | `flood-board`    | write blackboard entries of 16 KiB without end                    |
//! | `flood-messages` | broadcast messages of 16 KiB without end                          |
//! | `huge-plan`      | (in PLAN) return a plan whose summary is 8 MiB                    |
//! | `huge-error`     | (in PLAN) fail with an error message of 8 MiB                     |
//!
//! A flood keeps going through refusals, as a runaway agent would, until the host revokes it
//! (or after a million calls); its deliverables then say how far it got.
//! | `fill-disk`      | write 1 MiB chunks into `/workspace/fill.bin` until a write fails (at most 256 MiB), then once more, then grow the file by 1 MiB |
//! | `fill-files`     | create empty files `/workspace/files/N` until a creation fails (at most 20,000) |
//! | `hold-descriptors` | open `/workspace` until refused, hold them 2 s, close one, open one more |
//!
//! With none of them it behaves. When the host lets it go on after an attempt, it writes what
//! happened into its deliverables for a human to read.
//!
//! Built with the `overreach` feature (crate `rogue-overreach`) it also calls `tools::list`
//! in PLAN. That variant is registered at T0, whose world lacks `tools`, so the host must
//! refuse to load it. It leaves out the `secret` attempt so that `tools` is the only
//! interface above T0 that it imports, and the refusal has exactly one cause.

use std::hint::black_box;

use warden_sdk::prelude::*;

/// What the agent is going to try.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Attempt {
    EarlyEffects,
    Secret,
    Escape,
    ForbiddenTool,
    Spin,
    Hog,
    SkipArtifact,
    FloodNotes,
    FloodArtifacts,
    FloodState,
    FloodBoard,
    FloodMessages,
    HugePlan,
    HugeError,
    FillDisk,
    FillFiles,
    HoldDescriptors,
    #[default]
    Behave,
}

impl Attempt {
    const WORDS: [(&str, Attempt); 17] = [
        ("early-effects", Attempt::EarlyEffects),
        ("secret", Attempt::Secret),
        ("escape", Attempt::Escape),
        ("forbidden-tool", Attempt::ForbiddenTool),
        ("spin", Attempt::Spin),
        ("hog", Attempt::Hog),
        ("skip-artifact", Attempt::SkipArtifact),
        ("flood-notes", Attempt::FloodNotes),
        ("flood-artifacts", Attempt::FloodArtifacts),
        ("flood-state", Attempt::FloodState),
        ("flood-board", Attempt::FloodBoard),
        ("flood-messages", Attempt::FloodMessages),
        ("huge-plan", Attempt::HugePlan),
        ("huge-error", Attempt::HugeError),
        ("fill-disk", Attempt::FillDisk),
        ("fill-files", Attempt::FillFiles),
        ("hold-descriptors", Attempt::HoldDescriptors),
    ];

    fn from_objective(objective: &str) -> Self {
        Self::WORDS
            .iter()
            .find(|(word, _)| objective.contains(word))
            .map_or(Attempt::Behave, |&(_, attempt)| attempt)
    }
}

#[derive(Default)]
struct Rogue {
    attempt: Attempt,
}

impl Agent for Rogue {
    fn plan(&mut self, packet: &Packet) -> Result<Plan, AgentError> {
        #[cfg(feature = "overreach")]
        let _ = tools::list();

        self.attempt = Attempt::from_objective(&packet.objective);
        let steps = match self.attempt {
            Attempt::EarlyEffects => early_effects(),
            Attempt::HugeError => return Err(AgentError::new("x".repeat(HUGE))),
            attempt => vec![format!("{attempt:?}")],
        };
        let summary = match self.attempt {
            Attempt::HugePlan => "x".repeat(HUGE),
            attempt => format!("attempt: {attempt:?}"),
        };
        Ok(Plan {
            summary,
            steps,
            confidence: 1.0,
        })
    }

    fn execute(&mut self, packet: &Packet, _plan: &Plan) -> Result<Outcome, AgentError> {
        let log = match self.attempt {
            Attempt::EarlyEffects => vec!["early effects were tried in PLAN".to_owned()],
            Attempt::Secret => read_secret(),
            Attempt::Escape => escape_workspace(),
            Attempt::ForbiddenTool => run_forbidden_tool(),
            Attempt::Spin => spin(),
            Attempt::Hog => hog(),
            Attempt::FillDisk => fill_disk(),
            Attempt::FillFiles => fill_files(),
            Attempt::HoldDescriptors => hold_descriptors(),
            Attempt::SkipArtifact => {
                return Ok(Outcome {
                    success: true,
                    summary: "all deliverables written".into(),
                    artifacts: packet.deliverables.clone(),
                });
            }
            Attempt::FloodNotes => flood("ledger::note", |i| ledger::note(&format!("{i:0>100}"))),
            Attempt::FloodArtifacts => {
                let content = vec![0x5A; 64 << 10];
                flood("artifacts::put", |i| {
                    artifacts::put(&format!("flood/{i:07}.bin"), &content).map(drop)
                })
            }
            Attempt::FloodState => {
                let value = "s".repeat(16 << 10);
                flood("state::set", |i| {
                    state::set(&format!("flood-{i:07}"), &value)
                })
            }
            Attempt::FloodBoard => flood_board(),
            Attempt::FloodMessages => flood_messages(),
            Attempt::HugePlan | Attempt::HugeError => vec!["the host let PLAN pass".to_owned()],
            Attempt::Behave => vec!["behaved: nothing attempted".to_owned()],
        };

        let text = format!(
            "rogue attempt {:?} for objective `{}`:\n{}\n",
            self.attempt,
            packet.objective,
            log.join("\n")
        );
        for name in &packet.deliverables {
            artifacts::put_text(name, &text)?;
        }
        Ok(Outcome {
            success: true,
            summary: log.join("; "),
            artifacts: packet.deliverables.clone(),
        })
    }
}

/// Effects the approval gate is there to hold back, tried before it.
#[cfg(not(feature = "overreach"))]
fn early_effects() -> Vec<String> {
    let tool = match tools::invoke("deploy-prod", &["--force"]) {
        Ok(out) if out.check_mode => "tools.invoke deploy-prod --force: check mode".to_owned(),
        Ok(out) => format!(
            "tools.invoke deploy-prod --force: RAN ({})",
            out.stdout.trim()
        ),
        Err(e) => format!("tools.invoke deploy-prod --force: refused ({e})"),
    };
    vec![
        tool,
        outcome("secrets.get t4/root-token", secrets::get("t4/root-token")),
        outcome(
            "artifacts.put notes.txt",
            artifacts::put_text("notes.txt", "early"),
        ),
    ]
}

#[cfg(feature = "overreach")]
fn early_effects() -> Vec<String> {
    Vec::new()
}

/// Describes the result of one attempt for the log.
fn outcome<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> String {
    match result {
        Ok(_) => format!("{what}: ALLOWED"),
        Err(e) => format!("{what}: refused ({e})"),
    }
}

#[cfg(not(feature = "overreach"))]
fn read_secret() -> Vec<String> {
    // Twice: the second refusal repeats the first, which the error budget counts separately.
    (0..2)
        .map(|_| outcome("secrets::get(t4/root-token)", secrets::get("t4/root-token")))
        .collect()
}

#[cfg(feature = "overreach")]
fn read_secret() -> Vec<String> {
    vec!["secrets: left out of the overreach variant".to_owned()]
}

fn escape_workspace() -> Vec<String> {
    let payload = b"written by rogue from outside its workspace\n";
    vec![
        outcome(
            "fs write /workspace/../escape.txt",
            std::fs::write("/workspace/../escape.txt", payload),
        ),
        outcome(
            "fs write /tmp/warden-escape.txt",
            std::fs::write("/tmp/warden-escape.txt", payload),
        ),
        outcome(
            "artifacts::put(../../escape.txt)",
            artifacts::put("../../escape.txt", payload),
        ),
    ]
}

fn run_forbidden_tool() -> Vec<String> {
    vec![outcome(
        "tools::invoke(deploy-prod --force)",
        tools::invoke("deploy-prod", &["--force"]),
    )]
}

/// The size of a huge plan's summary or error message: 8 MiB.
const HUGE: usize = 8 << 20;

/// Calls `call(0)`, `call(1)`, … through every refusal until the host revokes the agent, or
/// a million calls; says how many were stored and how the last refusal read.
fn flood(what: &str, mut call: impl FnMut(u64) -> Result<(), Error>) -> Vec<String> {
    let (mut stored, mut refused, mut last) = (0u64, 0u64, String::new());
    for i in 0..1_000_000u64 {
        match call(i) {
            Ok(()) => stored += 1,
            Err(e @ Error::Revoked(_)) => {
                last = e.to_string();
                refused += 1;
                break;
            }
            Err(e) => {
                last = e.to_string();
                refused += 1;
            }
        }
    }
    vec![format!(
        "{what}: {stored} stored, {refused} refused; last: {last}"
    )]
}

#[cfg(not(feature = "overreach"))]
fn flood_board() -> Vec<String> {
    let value = "b".repeat(16 << 10);
    flood("blackboard::write", |i| {
        blackboard::write(
            blackboard::Section::Progress,
            &format!("flood-{i:07}"),
            &value,
        )
    })
}

#[cfg(not(feature = "overreach"))]
fn flood_messages() -> Vec<String> {
    let body = "m".repeat(16 << 10);
    flood("messaging::broadcast", |_| {
        messaging::broadcast(messaging::Kind::Other("FLOOD".into()), &body).map(drop)
    })
}

#[cfg(feature = "overreach")]
fn flood_board() -> Vec<String> {
    vec!["blackboard: left out of the overreach variant".to_owned()]
}

#[cfg(feature = "overreach")]
fn flood_messages() -> Vec<String> {
    vec!["messaging: left out of the overreach variant".to_owned()]
}

/// Burns fuel (or wall-clock time) until the host stops it.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Grows memory 1 MiB at a time, writing every byte, until the host stops it.
fn hog() -> ! {
    const CHUNK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![0xA5; CHUNK]);
        black_box(&mut hoard);
    }
}

/// An error as the log shows it: its kind and its message.
fn describe(error: &std::io::Error) -> String {
    format!("{:?}: {error}", error.kind())
}

/// Writes 1 MiB chunks until a write fails, then tries one more chunk. Stops at 256 MiB
/// without a failure, so a host without a quota is not filled.
fn fill_disk() -> Vec<String> {
    use std::io::Write;
    const CHUNK: usize = 1 << 20;
    const MAX: u64 = 256 << 20;
    let chunk = vec![0x5A; CHUNK];
    let mut file = match std::fs::File::create("/workspace/fill.bin") {
        Ok(file) => file,
        Err(e) => {
            return vec![format!(
                "fill-disk: cannot create the file: {}",
                describe(&e)
            )];
        }
    };
    let mut written: u64 = 0;
    let error = loop {
        if written >= MAX {
            return vec![format!(
                "fill-disk: wrote {written} bytes and was never refused"
            )];
        }
        match file.write_all(&chunk) {
            Ok(()) => written += CHUNK as u64,
            Err(e) => break e,
        }
    };
    let again = match file.write_all(&chunk) {
        Ok(()) => "ALLOWED".to_owned(),
        Err(e) => format!("refused ({})", describe(&e)),
    };
    let grow = match file.set_len(written + CHUNK as u64) {
        Ok(()) => "ALLOWED".to_owned(),
        Err(e) => format!("refused ({})", describe(&e)),
    };
    vec![
        format!(
            "fill-disk: wrote {written} bytes in whole chunks, then: {}",
            describe(&error)
        ),
        format!("fill-disk: one more chunk: {again}"),
        format!("fill-disk: growing the file by a chunk: {grow}"),
    ]
}

/// Creates empty files until a creation fails; stops at 20,000 without a failure.
fn fill_files() -> Vec<String> {
    const MAX: u64 = 20_000;
    if let Err(e) = std::fs::create_dir_all("/workspace/files") {
        return vec![format!(
            "fill-files: cannot create the directory: {}",
            describe(&e)
        )];
    }
    let mut created: u64 = 0;
    loop {
        if created >= MAX {
            return vec![format!(
                "fill-files: created {created} files and was never refused"
            )];
        }
        match std::fs::File::create(format!("/workspace/files/{created}")) {
            Ok(_) => created += 1,
            Err(e) => {
                return vec![format!(
                    "fill-files: created {created} files, then: {}",
                    describe(&e)
                )];
            }
        }
    }
}

/// Opens `/workspace` until refused, holds every descriptor for 2 s (while a neighbour runs),
/// then closes one and opens one more.
fn hold_descriptors() -> Vec<String> {
    let mut held = Vec::new();
    let error = loop {
        match std::fs::File::open("/workspace") {
            Ok(file) => held.push(file),
            Err(e) => break e,
        }
    };
    let mut log = vec![format!(
        "hold-descriptors: opened {} descriptors, then: {}",
        held.len(),
        describe(&error)
    )];
    std::thread::sleep(std::time::Duration::from_secs(2));
    held.pop();
    log.push(match std::fs::File::open("/workspace") {
        Ok(file) => {
            held.push(file);
            "hold-descriptors: after closing one, one more opened".to_owned()
        }
        Err(e) => format!(
            "hold-descriptors: after closing one, still refused: {}",
            describe(&e)
        ),
    });
    log.push(format!("hold-descriptors: held {} at the end", held.len()));
    log
}

warden_sdk::export_agent!(Rogue);
