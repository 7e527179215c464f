//! argv templates: `{0}`, `{1}`… substitute one argument inside an element, `{args}` as a whole
//! element expands to every argument, `{{` and `}}` are literal braces.

/// One element of an argv template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Element {
    /// `{args}`: every argument, each its own element.
    AllArgs,
    Text(Vec<Piece>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Literal(String),
    Arg(usize),
}

/// A parsed argv template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Template {
    elements: Vec<Element>,
}

impl Template {
    /// Parse every element; the error says which element is wrong and how.
    pub(super) fn parse(argv: &[String]) -> Result<Template, String> {
        let elements = argv
            .iter()
            .enumerate()
            .map(|(index, element)| {
                parse_element(element)
                    .map_err(|message| format!("element {index} `{element}`: {message}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Template { elements })
    }

    /// The program, if the first element is plain text (placeholders there would let the
    /// caller choose what runs).
    pub(super) fn literal_program(&self) -> Option<String> {
        match self.elements.first()? {
            Element::Text(pieces) => pieces
                .iter()
                .map(|piece| match piece {
                    Piece::Literal(text) => Some(text.as_str()),
                    Piece::Arg(_) => None,
                })
                .collect(),
            Element::AllArgs => None,
        }
    }

    /// The highest `{N}` used, if any.
    pub(super) fn max_index(&self) -> Option<usize> {
        self.elements
            .iter()
            .flat_map(|element| match element {
                Element::Text(pieces) => pieces.as_slice(),
                Element::AllArgs => &[],
            })
            .filter_map(|piece| match piece {
                Piece::Arg(index) => Some(*index),
                Piece::Literal(_) => None,
            })
            .max()
    }

    /// The argv for `args`, with `program` as element 0. `Err(index)` names the first `{N}`
    /// that `args` does not fill.
    pub(super) fn render(&self, program: &str, args: &[String]) -> Result<Vec<String>, usize> {
        let mut argv = vec![program.to_string()];
        for element in self.elements.iter().skip(1) {
            match element {
                Element::AllArgs => argv.extend(args.iter().cloned()),
                Element::Text(pieces) => {
                    let mut text = String::new();
                    for piece in pieces {
                        match piece {
                            Piece::Literal(literal) => text.push_str(literal),
                            Piece::Arg(index) => text.push_str(args.get(*index).ok_or(*index)?),
                        }
                    }
                    argv.push(text);
                }
            }
        }
        Ok(argv)
    }
}

fn parse_element(element: &str) -> Result<Element, String> {
    if element == "{args}" {
        return Ok(Element::AllArgs);
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "`{{{name}` is not closed; write `{{{{` for a literal brace"
                            ));
                        }
                    }
                }
                if name == "args" {
                    return Err("`{args}` must be a whole element, not part of one".into());
                }
                let index = name
                    .parse::<usize>()
                    .ok()
                    .filter(|_| name.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        format!(
                            "unknown placeholder `{{{name}}}`; use `{{0}}`, `{{1}}`…, a whole-element `{{args}}`, or `{{{{` for a literal brace"
                        )
                    })?;
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Arg(index));
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(Element::Text(pieces))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(argv: &[&str]) -> Result<Template, String> {
        Template::parse(&argv.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_positional_all_and_escaped_placeholders() {
        let t = template(&["prog", "-n", "x={0}/{1}", "{args}", "{{0}}", ""]).unwrap();
        assert_eq!(t.max_index(), Some(1));
        assert_eq!(t.literal_program().as_deref(), Some("prog"));
        let argv = t.render("/bin/prog", &strings(&["a", "b"])).unwrap();
        assert_eq!(
            argv,
            strings(&["/bin/prog", "-n", "x=a/b", "a", "b", "{0}", ""])
        );
        assert_eq!(t.render("/bin/prog", &strings(&["a"])), Err(1));
    }

    #[test]
    fn refuses_malformed_placeholders() {
        for (argv, expected) in [
            (vec!["p", "{x}"], "unknown placeholder `{x}`"),
            (vec!["p", "{+1}"], "unknown placeholder `{+1}`"),
            (vec!["p", "a{args}"], "whole element"),
            (vec!["p", "{0"], "not closed"),
        ] {
            let error = template(&argv).unwrap_err();
            assert!(error.contains(expected), "{argv:?}: {error}");
            assert!(error.starts_with("element 1"), "{error}");
        }
    }

    #[test]
    fn a_placeholder_program_is_not_literal() {
        assert_eq!(template(&["{0}"]).unwrap().literal_program(), None);
        assert_eq!(template(&["{args}"]).unwrap().literal_program(), None);
        assert_eq!(
            template(&["/bin/{{x}}"])
                .unwrap()
                .literal_program()
                .as_deref(),
            Some("/bin/{x}")
        );
    }
}
