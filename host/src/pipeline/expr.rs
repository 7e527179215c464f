//! Expressions of a pipeline: `when:` conditions and the `${{ … }}` of templated text, both
//! in CEL (the Common Expression Language Kubernetes uses), via the `cel` crate.
//!
//! What an expression sees (its [`Scope`]): `params` (the run's parameters), `stages` (each
//! earlier stage's `outcome`, `artifacts` by name → digest, and `metrics`), `item` (the
//! current element of a `for_each`) and `pipeline` (`name`, `run`). Names are checked when a
//! pipeline is validated ([`Expr::references`]), so a typo is an error before anything runs.

use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde_json::Value as Json;

/// The variables an expression may name.
pub(crate) const VARIABLES: [&str; 4] = ["params", "stages", "item", "pipeline"];

/// Longest expression accepted: pipelines are written by people, and a bound keeps a
/// generated file from making the parser work without end.
const MAX_EXPR_BYTES: usize = 4096;

/// One compiled CEL expression.
#[derive(Clone)]
pub(crate) struct Expr {
    source: String,
    program: Arc<cel::Program>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

/// What an expression names: used to check it against the pipeline before it runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct References {
    /// Top-level variables (`params`, `stages`, …).
    pub variables: Vec<String>,
    /// `params.<name>`.
    pub params: Vec<String>,
    /// `stages.<name>`.
    pub stages: Vec<String>,
    /// `stages.<stage>.artifacts.<name>` (or `['name']`).
    pub artifacts: Vec<(String, String)>,
}

static PARAM: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\bparams\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([^'"]+)['"]\s*\])"#)
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});
static STAGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"\bstages\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([^'"]+)['"]\s*\])"#)
        .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});
static ARTIFACT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"\bstages\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([^'"]+)['"]\s*\])\s*\.\s*artifacts\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['"]([^'"]+)['"]\s*\])"#,
    )
    .unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"))
});

fn capture(c: &regex::Captures<'_>, a: usize, b: usize) -> String {
    c.get(a)
        .or_else(|| c.get(b))
        .map_or_else(String::new, |m| m.as_str().to_string())
}

impl Expr {
    /// Compile `source`; the error is CEL's, in one line.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let source = source.trim();
        if source.is_empty() {
            return Err("an empty expression".into());
        }
        if source.len() > MAX_EXPR_BYTES {
            return Err(format!(
                "an expression of {} bytes; at most {MAX_EXPR_BYTES} are accepted",
                source.len()
            ));
        }
        let program = cel::Program::compile(source).map_err(|errors| {
            let first = errors.errors.first().map_or_else(
                || "does not parse".to_string(),
                |e| {
                    format!(
                        "does not parse at column {}: {}",
                        e.pos.1 + 1,
                        e.msg.replace('\n', " ")
                    )
                },
            );
            format!("`{source}` {first}")
        })?;
        Ok(Expr {
            source: source.to_string(),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names it uses.
    pub fn references(&self) -> References {
        let refs = self.program.references();
        let mut variables: Vec<String> = refs.variables().into_iter().map(str::to_string).collect();
        variables.sort();
        variables.dedup();
        let params = PARAM
            .captures_iter(&self.source)
            .map(|c| capture(&c, 1, 2))
            .collect();
        let stages = STAGE
            .captures_iter(&self.source)
            .map(|c| capture(&c, 1, 2))
            .collect();
        let artifacts = ARTIFACT
            .captures_iter(&self.source)
            .map(|c| (capture(&c, 1, 2), capture(&c, 3, 4)))
            .collect();
        References {
            variables,
            params,
            stages,
            artifacts,
        }
    }

    /// Evaluate in `scope`, as JSON.
    pub fn eval(&self, scope: &Scope) -> Result<Json, String> {
        let mut context = cel::Context::default();
        for (name, value) in [
            ("params", &scope.params),
            ("stages", &scope.stages),
            ("pipeline", &scope.pipeline),
        ] {
            add(&mut context, name, value)?;
        }
        if let Some(item) = &scope.item {
            add(&mut context, "item", item)?;
        }
        let value = self
            .program
            .execute(&context)
            .map_err(|e| format!("`{}` failed: {e}", self.source))?;
        value
            .json()
            .map_err(|e| format!("`{}` gave a value JSON cannot hold: {e}", self.source))
    }

    /// Evaluate a condition: it must give a boolean.
    pub fn test(&self, scope: &Scope) -> Result<bool, String> {
        match self.eval(scope)? {
            Json::Bool(b) => Ok(b),
            other => Err(format!(
                "`{}` gave {}, where a condition must give true or false",
                self.source,
                kind_of(&other)
            )),
        }
    }
}

fn add(context: &mut cel::Context<'_, '_>, name: &str, value: &Json) -> Result<(), String> {
    let value = cel::to_value(value).map_err(|e| format!("`{name}` is not a CEL value: {e}"))?;
    context.add_variable_from_value(name.to_string(), value);
    Ok(())
}

fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "text",
        Json::Array(_) => "a list",
        Json::Object(_) => "a map",
    }
}

/// What expressions of one stage see.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scope {
    /// Parameter name → value.
    pub params: Json,
    /// Stage name → `{outcome, artifacts, metrics}`.
    pub stages: Json,
    /// The current `for_each` element.
    pub item: Option<Json>,
    /// `{name, run}`.
    pub pipeline: Json,
}

/// Text with `${{ expr }}` parts.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// Parse `text`: every `${{` needs its `}}`, and what is between must compile.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 3..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("`${{{{` without its `}}}}` in `{text}`"))?;
            parts.push(Part::Expr(Expr::compile(&after[..end])?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// The text itself when it has no expression.
    pub fn literal(&self) -> Option<String> {
        match self.parts.as_slice() {
            [] => Some(String::new()),
            [Part::Text(t)] => Some(t.clone()),
            _ => None,
        }
    }

    /// The expression when the template is exactly one `${{ expr }}` (a `for_each` list).
    pub fn sole_expr(&self) -> Option<&Expr> {
        match self.parts.as_slice() {
            [Part::Expr(e)] => Some(e),
            _ => None,
        }
    }

    /// Its expressions.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    /// The text with each expression's value in place: text as itself, numbers and booleans
    /// written out; a list or a map is refused.
    pub fn render(&self, scope: &Scope) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match e.eval(scope)? {
                    Json::String(s) => out.push_str(&s),
                    Json::Null => {}
                    v @ (Json::Bool(_) | Json::Number(_)) => out.push_str(&v.to_string()),
                    other => {
                        return Err(format!(
                            "`${{{{ {} }}}}` gave {}, where text is needed",
                            e.source(),
                            kind_of(&other)
                        ));
                    }
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope {
            params: json!({"env": "prod", "regions": ["eu", "us"], "replicas": 3}),
            stages: json!({"plan": {"outcome": "success", "artifacts": {"terraform-plan": "sha256:ab"}, "metrics": {"attempts": 1}}}),
            item: Some(json!("eu")),
            pipeline: json!({"name": "deploy", "run": "pl-1"}),
        }
    }

    #[test]
    fn conditions_see_params_stages_and_items() {
        let e = Expr::compile("params.env == 'prod' && stages.plan.outcome == 'success'").unwrap();
        assert!(e.test(&scope()).unwrap());
        let e = Expr::compile("'terraform-plan' in stages.plan.artifacts && item == 'eu'").unwrap();
        assert!(e.test(&scope()).unwrap());
        let e = Expr::compile("params.replicas > 5").unwrap();
        assert!(!e.test(&scope()).unwrap());
        let e = Expr::compile("params.env").unwrap();
        assert!(
            e.test(&scope())
                .unwrap_err()
                .contains("must give true or false")
        );
    }

    #[test]
    fn a_bad_expression_says_where() {
        let err = Expr::compile("params.env == ").unwrap_err();
        assert!(err.contains("does not parse at column"), "{err}");
        assert!(Expr::compile("  ").is_err());
        assert!(
            Expr::compile(&"1+".repeat(3000))
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn references_name_params_stages_and_artifacts() {
        let e = Expr::compile(
            "params.env == 'x' && stages.plan.artifacts.tfplan != '' && stages['re-view'].outcome == 'success' && params['x-y'] == 1",
        )
        .unwrap();
        let r = e.references();
        assert_eq!(r.variables, vec!["params", "stages"]);
        assert_eq!(r.params, vec!["env", "x-y"]);
        assert_eq!(r.stages, vec!["plan", "re-view"]);
        assert_eq!(
            r.artifacts,
            vec![("plan".to_string(), "tfplan".to_string())]
        );
    }

    #[test]
    fn templates_render_text_and_refuse_lists() {
        let t = Template::parse("deploy to ${{ params.env }} x${{ params.replicas }} from ${{ stages.plan.artifacts['terraform-plan'] }}").unwrap();
        assert_eq!(
            t.render(&scope()).unwrap(),
            "deploy to prod x3 from sha256:ab"
        );
        assert!(t.literal().is_none());
        assert_eq!(
            Template::parse("plain").unwrap().literal().unwrap(),
            "plain"
        );
        let t = Template::parse("${{ params.regions }}").unwrap();
        assert!(t.sole_expr().is_some());
        assert!(t.render(&scope()).unwrap_err().contains("a list"));
        assert!(
            Template::parse("${{ params.env")
                .unwrap_err()
                .contains("without its")
        );
    }
}
