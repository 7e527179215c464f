//! The pipeline templates shipped in `pipelines/` (`warden pipeline new --template`).

use std::sync::LazyLock;

use regex::Regex;

/// Name → YAML.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "infrastructure-deploy",
        include_str!("../../../pipelines/infrastructure-deploy.yaml"),
    ),
    (
        "code-review",
        include_str!("../../../pipelines/code-review.yaml"),
    ),
    (
        "research-synthesis",
        include_str!("../../../pipelines/research-synthesis.yaml"),
    ),
    (
        "incident-triage",
        include_str!("../../../pipelines/incident-triage.yaml"),
    ),
];

/// The template named `name`.
pub fn get(name: &str) -> Option<&'static str> {
    TEMPLATES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

static PARAM_LINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^(\s+)([A-Za-z0-9_-]+):\s*\{\s*default:\s*(\[[^\]]*\]|"[^"]*"|[^,}]*)(.*)$"#)
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

/// `template` with the defaults of the parameters in `params` set to the values given (a
/// list parameter takes `a,b,c`). The templates write each parameter on one line
/// (`name: {default: …}`), which is what this rewrites; comments and layout are kept.
pub fn with_defaults(template: &str, params: &[(String, String)]) -> Result<String, String> {
    let mut out = Vec::new();
    let mut done = Vec::new();
    for line in template.lines() {
        let rewritten = PARAM_LINE.captures(line).and_then(|c| {
            let name = &c[2];
            let (_, value) = params.iter().find(|(k, _)| k == name)?;
            let old = c[3].trim();
            let new = if old.starts_with('[') {
                serde_json::to_string(
                    &value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                )
                .ok()?
            } else if old == "true" || old == "false" || old.parse::<f64>().is_ok() {
                value.clone()
            } else {
                serde_json::to_string(value).ok()?
            };
            done.push(name.to_string());
            Some(format!("{}{name}: {{default: {new}{}", &c[1], &c[4]))
        });
        out.push(rewritten.unwrap_or_else(|| line.to_string()));
    }
    if let Some((k, _)) = params.iter().find(|(k, _)| !done.contains(k)) {
        return Err(format!("the template has no parameter `{k}`"));
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Catalog, Pipeline};

    #[test]
    fn every_template_parses_and_params_rewrite_defaults() {
        let tiers = crate::policy::TierTable::builtin().unwrap();
        let catalog = Catalog {
            agents: None,
            tiers: &tiers,
        };
        for (name, text) in TEMPLATES {
            let p = Pipeline::parse(text, name, &catalog).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.name, *name);
        }
        let text = with_defaults(
            get("incident-triage").unwrap(),
            &[
                ("severity".into(), "sev1".into()),
                ("services".into(), "db, cache".into()),
            ],
        )
        .unwrap();
        let p = Pipeline::parse(&text, "t", &catalog).unwrap();
        assert_eq!(
            p.params["severity"].default,
            Some(serde_json::json!("sev1"))
        );
        assert_eq!(
            p.params["services"].default,
            Some(serde_json::json!(["db", "cache"]))
        );
        assert!(
            with_defaults(get("code-review").unwrap(), &[("nope".into(), "1".into())])
                .unwrap_err()
                .contains("`nope`")
        );
        let bad = with_defaults(
            get("incident-triage").unwrap(),
            &[("severity".into(), "sev9".into())],
        )
        .unwrap();
        assert!(
            Pipeline::parse(&bad, "t", &catalog)
                .unwrap_err()
                .to_string()
                .contains("not among its allowed values")
        );
    }

    #[test]
    fn every_yaml_example_in_the_docs_parses() {
        let doc = include_str!("../../../docs/pipelines.md");
        let tiers = crate::policy::TierTable::builtin().unwrap();
        let catalog = Catalog {
            agents: None,
            tiers: &tiers,
        };
        let mut blocks = Vec::new();
        let mut block: Option<(usize, Vec<&str>)> = None;
        for (n, line) in doc.lines().enumerate() {
            match &mut block {
                None if line.trim_end() == "```yaml" => block = Some((n + 1, Vec::new())),
                None => {}
                Some((start, lines)) if line.trim_end() == "```" => {
                    blocks.push((*start, lines.join("\n") + "\n"));
                    block = None;
                }
                Some((_, lines)) => lines.push(line),
            }
        }
        assert!(
            block.is_none(),
            "a ```yaml block of docs/pipelines.md is not closed"
        );
        assert!(!blocks.is_empty(), "docs/pipelines.md has no ```yaml block");
        for (start, text) in &blocks {
            if let Err(e) = Pipeline::parse(text, "docs/pipelines.md", &catalog) {
                let problems: Vec<String> = e.0.iter().map(ToString::to_string).collect();
                panic!(
                    "the ```yaml block opened at line {start} of docs/pipelines.md (its lines count from the next line as 1): {}",
                    problems.join("; ")
                );
            }
        }
    }
}
