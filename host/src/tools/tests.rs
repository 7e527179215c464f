use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

const REGISTRY: &str = r#"
[[tool]]
name = "wc"
description = "count words of a workspace file"
min_tier = "T1"
full_tier = "T2"
argv = ["/usr/bin/wc", "-w", "{0}"]
check_argv = ["/bin/echo", "would run: wc -w {0}"]
args = ["[A-Za-z0-9._/-]{1,128}"]
max_args = 4
timeout = "5s"
max_output_bytes = 65536

[[tool]]
name = "echo"
description = "print its arguments"
min_tier = "T0"
full_tier = "T0"
argv = ["echo", "{args}"]
args = ["[a-z]+", "[0-9]+", '\$\(touch [^)]*\)']
max_args = 3

[[tool]]
name = "deploy"
description = "deploy a service"
min_tier = "T1"
full_tier = "T3"
argv = ["/bin/echo", "deploying", "{0}"]
args = ["svc-[a-z]+"]
max_args = 1
"#;

fn registry() -> ToolRegistry {
    ToolRegistry::from_toml_str(REGISTRY).unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A one-tool registry: `fields` are the tool's TOML lines, after a valid name and tiers.
fn one_tool(fields: &str) -> Result<ToolRegistry, ToolsError> {
    ToolRegistry::from_toml_str(&format!(
        "[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\n{fields}\n"
    ))
}

fn load_error(fields: &str) -> String {
    one_tool(fields).unwrap_err().to_string()
}

#[test]
fn loads_tools_in_order_and_resolves_bare_programs() {
    let registry = registry();
    let names: Vec<&str> = registry.tools().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["wc", "echo", "deploy"]);
    assert_eq!(registry.len(), 3);
    let wc = registry.get("wc").unwrap();
    assert_eq!((wc.min_tier, wc.full_tier), (Tier::Operator, Tier::Builder));
    assert_eq!(wc.timeout, Duration::from_millis(5000));
    assert_eq!(wc.program(), "/usr/bin/wc");
    let echo = registry.get("echo").unwrap();
    assert!(
        Path::new(echo.program()).is_absolute(),
        "{}",
        echo.program()
    );
    assert!(echo.program().ends_with("/echo"));
    assert_eq!(echo.timeout, DEFAULT_TIMEOUT);
    assert_eq!(echo.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
    assert!(registry.get("nope").is_none());
    assert!(ToolRegistry::empty().is_empty());
    assert!(ToolRegistry::from_toml_str("").unwrap().is_empty());
}

#[test]
fn confinement_is_on_by_default_with_bounded_resources() {
    let registry = registry();
    assert_eq!(registry.confinement(), Confinement::Landlock);
    let wc = registry.get("wc").unwrap();
    assert!(wc.read_paths.is_empty() && wc.write_paths.is_empty() && !wc.network);
    // The CPU limit follows the timeout unless given.
    assert_eq!(wc.cpu_time, Duration::from_secs(5));
    assert_eq!(registry.get("echo").unwrap().cpu_time, DEFAULT_TIMEOUT);
    assert_eq!(
        (
            wc.max_memory_bytes,
            wc.max_file_bytes,
            wc.max_processes,
            wc.max_arg_bytes,
            wc.max_total_arg_bytes
        ),
        (
            DEFAULT_MAX_MEMORY_BYTES,
            DEFAULT_MAX_FILE_BYTES,
            DEFAULT_MAX_PROCESSES,
            DEFAULT_MAX_ARG_BYTES,
            DEFAULT_MAX_TOTAL_ARG_BYTES
        )
    );
    let invocation = registry
        .prepare("echo", &strings(&["a"]), Tier::Observer)
        .unwrap();
    assert!(invocation.confined());

    let tool = one_tool(
        "argv = [\"/bin/echo\"]\nread_paths = [\"/usr/share\"]\nwrite_paths = [\"/tmp\"]\nnetwork = true\n\
         timeout = \"2s\"\ncpu_time = \"1500ms\"\nmax_memory_bytes = 33554432\nmax_file_bytes = 0\nmax_processes = 8",
    )
    .unwrap();
    let t = tool.get("t").unwrap();
    assert_eq!(t.read_paths, [PathBuf::from("/usr/share")]);
    assert_eq!(t.write_paths, [PathBuf::from("/tmp")]);
    assert!(t.network);
    assert_eq!(
        t.cpu_time,
        Duration::from_secs(2),
        "rounded up to whole seconds"
    );
    assert_eq!(
        (t.max_memory_bytes, t.max_file_bytes, t.max_processes),
        (33554432, 0, 8)
    );

    let unconfined =
        ToolRegistry::from_toml_str(&format!("confinement = \"none\"\n{REGISTRY}")).unwrap();
    assert_eq!(unconfined.confinement(), Confinement::Unconfined);
    let invocation = unconfined
        .prepare("echo", &strings(&["a"]), Tier::Observer)
        .unwrap();
    assert!(!invocation.confined());
    let error = ToolRegistry::from_toml_str("confinement = \"sometimes\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("unknown variant `sometimes`, expected `landlock` or `none`"),
        "{error}"
    );
}

#[test]
fn from_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tools.toml");
    std::fs::write(&path, REGISTRY).unwrap();
    assert_eq!(ToolRegistry::from_file(&path).unwrap().len(), 3);

    std::fs::write(&path, "[[tool]]\nname = \"x\"\n").unwrap();
    let error = ToolRegistry::from_file(&path).unwrap_err().to_string();
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(
        error.contains("(tool `x`)") && error.contains("missing field"),
        "{error}"
    );

    let missing = dir.path().join("missing.toml");
    let error = ToolRegistry::from_file(&missing).unwrap_err();
    assert!(matches!(error, ToolsError::Read { .. }), "{error}");
    assert!(error.to_string().contains("missing.toml"), "{error}");
}

#[test]
fn parse_errors_name_the_tool_line_and_field() {
    let error = load_error("argv = [\"/bin/echo\"]\nshell = true");
    assert!(error.contains("(tool `t`)"), "{error}");
    assert!(error.contains("unknown field `shell`"), "{error}");
    assert!(error.contains("line 7"), "{error}");

    let error = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T9\"\nfull_tier = \"T0\"\nargv = [\"/bin/echo\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("unknown tier `T9`") && error.contains("line 4"),
        "{error}"
    );

    let error = ToolRegistry::from_toml_str("[[tool]]\ndescription = \"d\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("(tool #1)") && error.contains("missing field `name`"),
        "{error}"
    );

    let error = ToolRegistry::from_toml_str("[tools]\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `tools`"), "{error}");
}

#[test]
fn validation_errors_name_the_tool_and_field() {
    let cases = [
        ("argv = []", "argv", "it is empty"),
        ("argv = [\"bin/echo\"]", "argv", "neither an absolute path"),
        (
            "argv = [\"/nonexistent/prog\"]",
            "argv",
            "not an executable file",
        ),
        ("argv = [\"/etc/passwd\"]", "argv", "not an executable file"),
        (
            "argv = [\"warden-no-such-program-42\"]",
            "argv",
            "is not on PATH",
        ),
        (
            "argv = [\"{0}\"]\nargs = [\".*\"]\nmax_args = 1",
            "argv",
            "placeholder",
        ),
        (
            "argv = [\"/bin/echo\", \"{1}\"]\nargs = [\".*\"]\nmax_args = 1",
            "argv",
            "`{1}` refers to argument 1",
        ),
        ("argv = [\"/bin/echo\", \"{0}\"]", "argv", "`max_args` is 0"),
        (
            "argv = [\"/bin/echo\", \"x{args}\"]",
            "argv",
            "whole element",
        ),
        (
            "argv = [\"/bin/echo\", \"{name}\"]",
            "argv",
            "unknown placeholder `{name}`",
        ),
        (
            "argv = [\"/bin/echo\"]\ncheck_argv = []",
            "check_argv",
            "it is empty",
        ),
        (
            "argv = [\"/bin/echo\"]\ncheck_argv = [\"/bin/echo\", \"{2}\"]\nargs = [\".*\"]\nmax_args = 2",
            "check_argv",
            "`{2}`",
        ),
        (
            "argv = [\"/bin/echo\"]\nargs = [\"(\"]\nmax_args = 1",
            "args",
            "pattern 0 `(` is not a valid regex",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_args = 2",
            "args",
            "no pattern is given",
        ),
        (
            "argv = [\"/bin/echo\"]\nargs = [\"x\"]",
            "max_args",
            "`max_args` is 0",
        ),
        (
            "argv = [\"/bin/echo\"]\ntimeout = \"0s\"",
            "timeout",
            "at least `1ms`",
        ),
        (
            "argv = [\"/bin/echo\"]\ntimeout_ms = 1500",
            "timeout_ms",
            "durations are strings now: write `timeout = \"1s 500ms\"`",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_output_bytes = 999999999",
            "max_output_bytes",
            "above the limit",
        ),
        (
            "argv = [\"/bin/echo\"]\nread_paths = [\"usr/share\"]",
            "read_paths",
            "`usr/share` is not an absolute path",
        ),
        (
            "argv = [\"/bin/echo\"]\nread_paths = [\"/nonexistent/dict\"]",
            "read_paths",
            "`/nonexistent/dict` cannot be used",
        ),
        (
            "argv = [\"/bin/echo\"]\nwrite_paths = [\"/nonexistent/out\"]",
            "write_paths",
            "exist when the registry is loaded",
        ),
        (
            "argv = [\"/bin/echo\"]\ncpu_time = \"0s\"",
            "cpu_time",
            "at least `1s`",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_memory_bytes = 4096",
            "max_memory_bytes",
            "too little address space",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_arg_bytes = 0",
            "max_arg_bytes",
            "refuse every argument",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_arg_bytes = 1000000",
            "max_arg_bytes",
            "above the limit of 65536",
        ),
        (
            "argv = [\"/bin/echo\"]\nmax_total_arg_bytes = 99999999",
            "max_total_arg_bytes",
            "above the limit of 1048576",
        ),
    ];
    for (fields, field, expected) in cases {
        let error = one_tool(fields).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(&error, ToolsError::Invalid { tool, field: f, .. } if tool == "t" && *f == field),
            "{fields}: {text}"
        );
        assert!(text.contains("(inline), tool `t`"), "{fields}: {text}");
        assert!(text.contains(expected), "{fields}: {text}");
    }
}

#[test]
fn tiers_names_and_duplicates_are_validated() {
    let error = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T2\"\nfull_tier = \"T1\"\nargv = [\"/bin/echo\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("field `full_tier`") && error.contains("below `min_tier`"),
        "{error}"
    );

    let error = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"a b\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/bin/echo\"]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("tool `a b`, field `name`"), "{error}");

    let tool = "[[tool]]\nname = \"t\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/bin/echo\"]\n";
    let error = ToolRegistry::from_toml_str(&format!("{tool}{tool}"))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("tool `t`, field `name`") && error.contains("twice"),
        "{error}"
    );
}

#[test]
fn unknown_tools_list_only_what_the_tier_may_call() {
    let error = registry().prepare("rm", &[], Tier::Architect).unwrap_err();
    assert!(
        matches!(&error, ToolsError::NotFound { tool, tier, known } if tool == "rm" && *tier == Tier::Architect && known.len() == 3)
    );
    assert!(
        error
            .to_string()
            .contains("tools it may call: `wc`, `echo`, `deploy`"),
        "{error}"
    );
    // `wc` and `deploy` need T1: an observer is never told they exist.
    let error = registry()
        .prepare("rm", &[], Tier::Observer)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "no tool named `rm` is available to tier T0 (observer); tools it may call: `echo`"
    );
    let error = ToolRegistry::empty()
        .prepare("rm", &[], Tier::Architect)
        .unwrap_err();
    assert!(error.to_string().contains("it may call no tool"), "{error}");
}

#[test]
fn callers_below_min_tier_are_denied() {
    let error = registry()
        .prepare("wc", &strings(&["a.txt"]), Tier::Observer)
        .unwrap_err();
    match &error {
        ToolsError::Denied { tool, tier, lowest } => {
            assert_eq!(
                (tool.as_str(), *tier, *lowest),
                ("wc", Tier::Observer, Tier::Operator)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.to_string().contains("T1 (operator)"), "{error}");
}

#[test]
fn arguments_are_checked_against_count_and_whole_patterns() {
    let registry = registry();
    let invalid = |tool: &str, args: &[&str]| match registry
        .prepare(tool, &strings(args), Tier::Architect)
        .unwrap_err()
    {
        ToolsError::InvalidArgument {
            index,
            value,
            problem,
            patterns,
            ..
        } => (index, value, problem, patterns.len()),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        invalid("deploy", &["svc-a", "svc-b"]),
        (
            1,
            Some("svc-b".into()),
            ArgumentProblem::TooMany { max: 1 },
            1
        )
    );
    // Patterns are anchored: a match inside the argument is not enough.
    assert_eq!(
        invalid("deploy", &["svc-a; rm -rf /"]),
        (
            0,
            Some("svc-a; rm -rf /".into()),
            ArgumentProblem::NoMatch,
            1
        )
    );
    assert_eq!(
        invalid("echo", &["abc", "12x"]),
        (1, Some("12x".into()), ArgumentProblem::NoMatch, 3)
    );
    assert_eq!(
        invalid("deploy", &[]),
        (0, None, ArgumentProblem::Missing { given: 0 }, 1)
    );
    let error = registry
        .prepare("echo", &strings(&["a\0b"]), Tier::Architect)
        .unwrap_err();
    assert!(matches!(
        &error,
        ToolsError::InvalidArgument {
            problem: ArgumentProblem::ContainsNul,
            ..
        }
    ));

    let text = registry
        .prepare("deploy", &strings(&["prod"]), Tier::Architect)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("argument 0 `prod`") && text.contains("`svc-[a-z]+`"),
        "{text}"
    );
    let text = registry
        .prepare("deploy", &[], Tier::Architect)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("uses `{0}`") && text.contains("pass at least 1"),
        "{text}"
    );
}

#[test]
fn arguments_are_bounded_in_size() {
    let bounded = one_tool(
        "argv = [\"/bin/echo\", \"{args}\"]\nargs = [\"[a-z]+\"]\nmax_args = 3\nmax_arg_bytes = 8\nmax_total_arg_bytes = 12",
    )
    .unwrap();
    let prepare = |args: &[&str]| bounded.prepare("t", &strings(args), Tier::Observer);
    assert!(prepare(&["abcdefgh", "abcd"]).is_ok(), "at the bounds");

    let error = prepare(&["abc", "abcdefghi"]).unwrap_err();
    assert!(
        matches!(
            &error,
            ToolsError::InvalidArgument {
                index: 1,
                problem: ArgumentProblem::TooLong { bytes: 9, max: 8 },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "tool `t` refused argument 1 `abcdefghi`: it is 9 bytes, above the tool's `max_arg_bytes` of 8; pass a shorter one (or a workspace file), or the operator may raise `max_arg_bytes`"
    );

    let error = prepare(&["abcdefgh", "abcde"]).unwrap_err();
    assert!(
        matches!(
            &error,
            ToolsError::InvalidArgument {
                index: 1,
                problem: ArgumentProblem::TotalTooLong { bytes: 13, max: 12 },
                ..
            }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("tool `t` refused argument 1 `abcde`")
            && text.contains("above the tool's `max_total_arg_bytes` of 12"),
        "{text}"
    );

    // The defaults: 4 KiB an argument, and the message shows only the start of it.
    let long = "a".repeat(DEFAULT_MAX_ARG_BYTES + 1);
    let error = registry()
        .prepare("echo", &[long], Tier::Observer)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&format!("`{}…`", "a".repeat(32)))
            && error.contains("it is 4097 bytes, above the tool's `max_arg_bytes` of 4096"),
        "{error}"
    );
}

#[test]
fn prepare_decides_check_mode_and_renders_argv() {
    let registry = registry();
    let args = strings(&["notes.txt"]);

    let real = registry.prepare("wc", &args, Tier::Builder).unwrap();
    assert!(!real.check_mode() && real.executes());
    assert_eq!(real.argv(), strings(&["/usr/bin/wc", "-w", "notes.txt"]));
    assert_eq!(real.tool(), "wc");
    assert_eq!(real.resource(), "tool:wc notes.txt");

    let check = registry.prepare("wc", &args, Tier::Operator).unwrap();
    assert!(check.check_mode() && check.executes());
    assert_eq!(
        check.argv(),
        strings(&["/bin/echo", "would run: wc -w notes.txt"])
    );

    let dry = registry
        .prepare("deploy", &strings(&["svc-web"]), Tier::Builder)
        .unwrap();
    assert!(dry.check_mode() && !dry.executes());
    assert_eq!(dry.argv(), strings(&["/bin/echo", "deploying", "svc-web"]));

    let none = registry.prepare("echo", &[], Tier::Observer).unwrap();
    assert_eq!(none.resource(), "tool:echo");
    assert_eq!(none.argv().len(), 1);
}

#[tokio::test]
async fn runs_the_program_with_a_clean_environment() {
    let registry = registry();
    let output = registry
        .prepare("echo", &strings(&["hello", "42"]), Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0);
    assert_eq!(output.stdout, "hello 42\n");
    assert_eq!(output.stderr, "");
    assert!(!output.check_mode && !output.truncated);
    assert_eq!(output.argv[1..], strings(&["hello", "42"]));

    let env = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"env\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/usr/bin/env\"]\n",
    )
    .unwrap();
    let output = env
        .prepare("env", &[], Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert_eq!(output.stdout, "PATH=/usr/bin:/bin\n");
}

#[tokio::test]
async fn runs_in_the_working_directory_and_reports_exit_codes() {
    let registry = ToolRegistry::from_toml_str(
        "[[tool]]\nname = \"pwd\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/bin/pwd\"]\n\
         [[tool]]\nname = \"false\"\ndescription = \"d\"\nmin_tier = \"T0\"\nfull_tier = \"T0\"\nargv = [\"/bin/false\"]\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let workspace: PathBuf = dir.path().canonicalize().unwrap();
    // As the capability layer calls it, with a `PathBuf`.
    let output = registry
        .prepare("pwd", &[], Tier::Observer)
        .unwrap()
        .run(Some(&workspace))
        .await
        .unwrap();
    assert_eq!(output.stdout.trim_end(), workspace.display().to_string());

    let output = registry
        .prepare("false", &[], Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert_eq!(output.exit_code, 1);

    let error = registry
        .prepare("pwd", &[], Tier::Observer)
        .unwrap()
        .run(Some(&workspace.join("missing")))
        .await
        .unwrap_err();
    assert!(matches!(error, ToolsError::Unavailable { .. }), "{error}");
    assert!(error.to_string().contains("missing"), "{error}");
}

#[tokio::test]
async fn a_tool_past_its_timeout_is_killed() {
    let registry = one_tool("argv = [\"/bin/sleep\", \"5\"]\ntimeout = \"200ms\"").unwrap();
    let started = Instant::now();
    let error = registry
        .prepare("t", &[], Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, ToolsError::Timeout { .. }), "{error}");
    assert!(error.to_string().contains("its 200ms limit"), "{error}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn check_mode_runs_check_argv_or_nothing() {
    let registry = registry();
    let output = registry
        .prepare("wc", &strings(&["notes.txt"]), Tier::Operator)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert!(output.check_mode);
    assert_eq!(output.stdout, "would run: wc -w notes.txt\n");

    // Nothing runs: `/bin/echo deploying` would print `deploying svc-web`; the rendered line
    // is returned instead.
    let output = registry
        .prepare("deploy", &strings(&["svc-web"]), Tier::Operator)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert!(output.check_mode);
    assert_eq!(output.exit_code, 0);
    assert_eq!(output.stdout, "/bin/echo deploying svc-web\n");
    assert_eq!(output.argv, strings(&["/bin/echo", "deploying", "svc-web"]));
}

#[tokio::test]
async fn output_past_the_limit_is_truncated() {
    let registry =
        one_tool("argv = [\"/usr/bin/seq\", \"1\", \"100000\"]\nmax_output_bytes = 10").unwrap();
    let output = registry
        .prepare("t", &[], Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert_eq!(output.exit_code, 0);
    assert!(output.truncated);
    assert_eq!(output.stdout, "1\n2\n3\n4\n5\n");
}

#[tokio::test]
async fn arguments_reach_the_program_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let payload = format!("$(touch {})", marker.display());
    let registry = one_tool(
        "argv = [\"/bin/echo\", \"{0}\", \"{1}\"]\nargs = ['\\$\\(touch [^)]*\\)', '[;&|` a-z/.]+']\nmax_args = 2",
    )
    .unwrap();
    let output = registry
        .prepare("t", &[payload.clone(), "; touch x".into()], Tier::Observer)
        .unwrap()
        .run(None)
        .await
        .unwrap();
    assert_eq!(output.stdout, format!("{payload} ; touch x\n"));
    assert!(!marker.exists(), "the argument was interpreted by a shell");
}
