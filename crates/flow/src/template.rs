//! `{{ … }}` expressions in flow strings.
//!
//! A flow string parses into a [`FlowTemplate`]: literal text, references to the job's inputs
//! (filled by [`crate::plan`]) and the placeholders of [`ferry_event::template::Part`] that later
//! stages fill.

use ferry_event::template::{Part, Template};

use crate::check::did_you_mean;

/// One piece of a flow string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// `{{ inputs.NAME }}`.
    Input(String),
    /// A placeholder filled after planning (never [`Part::Text`]).
    Later(Part),
}

/// A parsed flow string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowTemplate(pub Vec<Piece>);

/// What may appear between `{{` and `}}`.
pub const ACCEPTED: &str =
    "`{{ inputs.NAME }}`, `{{ outputs.TASK.KEY }}`, `{{ workingDir }}` or `{{ secret('NAME') }}`";

impl FlowTemplate {
    /// Parses a flow string.
    pub fn parse(s: &str) -> Result<FlowTemplate, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else {
                return Err(format!(
                    "`{{{{` at character {} is not closed by `}}}}`; templates are {ACCEPTED}",
                    s.len() - rest.len() + start + 1
                ));
            };
            pieces.push(expression(after[..end].trim())?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(FlowTemplate(pieces))
    }

    /// Input names referred to.
    pub fn inputs(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Input(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Upstream outputs referred to, as `(task, key)`.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|p| match p {
            Piece::Later(Part::Output { task, key }) => Some((task.as_str(), key.as_str())),
            _ => None,
        })
    }

    /// Replaces each input reference with the text `input` gives it, as literal text that is
    /// never parsed again.
    pub fn fill_inputs(&self, mut input: impl FnMut(&str) -> String) -> Template {
        let mut parts: Vec<Part> = Vec::with_capacity(self.0.len());
        for piece in &self.0 {
            let part = match piece {
                Piece::Text(t) => Part::Text(t.clone()),
                Piece::Input(name) => Part::Text(input(name)),
                Piece::Later(p) => p.clone(),
            };
            match (parts.last_mut(), part) {
                (_, Part::Text(t)) if t.is_empty() => {}
                (Some(Part::Text(prev)), Part::Text(t)) => prev.push_str(&t),
                (_, part) => parts.push(part),
            }
        }
        Template(parts)
    }
}

fn is_name(s: &str, extra: &[char]) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

fn expression(expr: &str) -> Result<Piece, String> {
    if expr == "workingDir" {
        return Ok(Piece::Later(Part::WorkingDir));
    }
    if let Some(name) = expr.strip_prefix("inputs.") {
        if !is_name(name, &['_', '-']) {
            return Err(format!(
                "`{{{{ {expr} }}}}`: an input name has letters, digits, `_` and `-` only"
            ));
        }
        return Ok(Piece::Input(name.to_string()));
    }
    if let Some(path) = expr.strip_prefix("outputs.") {
        let (task, key) = path.split_once('.').unwrap_or((path, ""));
        if !is_name(task, &['_', '-']) || key.split('.').any(|k| !is_name(k, &['_', '-'])) {
            return Err(format!(
                "`{{{{ {expr} }}}}`: write `{{{{ outputs.TASK.KEY }}}}` with a task id and a key (a dotted path into the task's outputs)"
            ));
        }
        return Ok(Piece::Later(Part::Output {
            task: task.to_string(),
            key: key.to_string(),
        }));
    }
    if let Some(args) = expr.strip_prefix("secret") {
        let inner = args
            .trim()
            .strip_prefix('(')
            .and_then(|a| a.strip_suffix(')'))
            .map(str::trim);
        let name = inner.and_then(|i| {
            i.strip_prefix('\'')
                .and_then(|n| n.strip_suffix('\''))
                .or_else(|| i.strip_prefix('"').and_then(|n| n.strip_suffix('"')))
        });
        return match name {
            Some(n) if is_name(n, &['_']) => Ok(Piece::Later(Part::Secret(n.to_string()))),
            _ => Err(format!(
                "`{{{{ {expr} }}}}`: write `{{{{ secret('NAME') }}}}` with a name of letters, digits and `_`"
            )),
        };
    }
    let head = expr.split(['.', '(', ' ']).next().unwrap_or(expr);
    let hint = did_you_mean(head, ["inputs", "outputs", "workingDir", "secret"])
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default();
    Err(format!(
        "unknown template expression `{{{{ {expr} }}}}`{hint}; accepted are {ACCEPTED}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Vec<Piece> {
        FlowTemplate::parse(s).unwrap().0
    }

    #[test]
    fn every_expression_parses_with_or_without_spaces() {
        assert_eq!(
            parse("--day={{inputs.day}}/{{ workingDir }}"),
            [
                Piece::Text("--day=".into()),
                Piece::Input("day".into()),
                Piece::Text("/".into()),
                Piece::Later(Part::WorkingDir)
            ]
        );
        assert_eq!(
            parse("{{ outputs.extract.stats.rows }}"),
            [Piece::Later(Part::Output {
                task: "extract".into(),
                key: "stats.rows".into()
            })]
        );
        assert_eq!(
            parse("{{ secret('TOKEN') }}{{secret(\"B_2\")}}"),
            [
                Piece::Later(Part::Secret("TOKEN".into())),
                Piece::Later(Part::Secret("B_2".into()))
            ]
        );
        assert_eq!(parse("plain } { text"), [Piece::Text("plain } { text".into())]);
    }

    #[test]
    fn anything_else_is_an_error_that_says_what_is_accepted() {
        let e = FlowTemplate::parse("{{ input.day }}").unwrap_err();
        assert!(e.contains("unknown template expression `{{ input.day }}`"), "{e}");
        assert!(e.contains("did you mean `inputs`"), "{e}");
        assert!(e.contains("workingDir"), "{e}");
        for bad in [
            "{{ }}",
            "{{ env.HOME }}",
            "{{ outputs.a }}",
            "{{ outputs.a..b }}",
            "{{ secret(TOKEN) }}",
            "{{ secret('A-B') }}",
            "{{ inputs.a b }}",
        ] {
            assert!(FlowTemplate::parse(bad).is_err(), "{bad} was accepted");
        }
        let e = FlowTemplate::parse("echo {{ inputs.day").unwrap_err();
        assert!(e.contains("not closed"), "{e}");
    }

    #[test]
    fn filled_inputs_are_literal_text() {
        let t = FlowTemplate::parse("a {{ inputs.x }} b {{ workingDir }}").unwrap();
        let filled = t.fill_inputs(|_| "{{ secret('T') }}; rm -rf /".into());
        assert_eq!(
            filled.0,
            [
                Part::Text("a {{ secret('T') }}; rm -rf / b ".into()),
                Part::WorkingDir
            ]
        );
        assert_eq!(filled.secrets().count(), 0);
    }
}
