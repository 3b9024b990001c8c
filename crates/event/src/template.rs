//! Structured templates.
//!
//! A flow's `{{ … }}` expressions are parsed once, by the planner, into a [`Template`]: a list of
//! literal text and placeholders. Each stage fills in what it knows and passes the rest on
//! unchanged: the planner fills inputs, the scheduler fills upstream outputs at dispatch time, the
//! launcher fills the working directory and secrets at launch. Because values are inserted as
//! literal parts and never parsed again, a value containing `{{ secret('X') }}` or shell syntax is
//! inert text.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Part {
    /// Literal text.
    Text(String),
    /// `{{ outputs.TASK.KEY }}`: an output of an upstream task, filled at dispatch.
    Output { task: String, key: String },
    /// `{{ workingDir }}`: the attempt's working directory, filled at launch.
    WorkingDir,
    /// `{{ secret('NAME') }}`: a secret resolved at launch, never stored.
    Secret(String),
}

/// A string with placeholders. Serialized as a plain JSON string when it holds only text, and as
/// an array of [`Part`]s otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

impl Template {
    /// A template that is only the given text.
    pub fn text(s: impl Into<String>) -> Self {
        let s = s.into();
        if s.is_empty() {
            Template(Vec::new())
        } else {
            Template(vec![Part::Text(s)])
        }
    }

    /// The literal text if the template holds no placeholder.
    pub fn as_text(&self) -> Option<String> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                _ => return None,
            }
        }
        Some(out)
    }

    /// Upstream outputs this template refers to, as `(task, key)`.
    pub fn outputs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().filter_map(|p| match p {
            Part::Output { task, key } => Some((task.as_str(), key.as_str())),
            _ => None,
        })
    }

    /// Secret names this template refers to.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Replaces placeholders for which `f` returns text; others are kept. Adjacent text parts
    /// are merged so that a fully resolved template is a single text part.
    pub fn fill<E>(&self, mut f: impl FnMut(&Part) -> Result<Option<String>, E>) -> Result<Template, E> {
        let mut out: Vec<Part> = Vec::with_capacity(self.0.len());
        for p in &self.0 {
            let part = match p {
                Part::Text(t) => Part::Text(t.clone()),
                other => match f(other)? {
                    Some(text) => Part::Text(text),
                    None => other.clone(),
                },
            };
            match (out.last_mut(), part) {
                (Some(Part::Text(prev)), Part::Text(t)) => prev.push_str(&t),
                (_, Part::Text(t)) if t.is_empty() => {}
                (_, part) => out.push(part),
            }
        }
        Ok(Template(out))
    }
}

impl fmt::Display for Template {
    /// The template in flow syntax (`{{ … }}` for placeholders).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Part::Text(t) => f.write_str(t)?,
                Part::Output { task, key } => write!(f, "{{{{ outputs.{task}.{key} }}}}")?,
                Part::WorkingDir => f.write_str("{{ workingDir }}")?,
                Part::Secret(name) => write!(f, "{{{{ secret('{name}') }}}}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.as_text() {
            Some(text) => s.serialize_str(&text),
            None => self.0.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Parts(Vec<Part>),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Text(t) => Template::text(t),
            Repr::Parts(parts) => Template(parts),
        })
    }
}

impl JsonSchema for Template {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Template".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let parts = generator.subschema_for::<Vec<Part>>();
        schemars::json_schema!({
            "description": "Text, or a list of parts when it holds placeholders still to be filled.",
            "anyOf": [ { "type": "string" }, parts ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_templates_serialize_as_strings() {
        let t = Template::text("hello");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"hello\"");
        let back: Template = serde_json::from_str("\"hello\"").unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn placeholders_survive_a_round_trip() {
        let t = Template(vec![
            Part::Text("--out=".into()),
            Part::WorkingDir,
            Part::Output {
                task: "a".into(),
                key: "rows".into(),
            },
            Part::Secret("TOKEN".into()),
        ]);
        let json = serde_json::to_string(&t).unwrap();
        let back: Template = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            t.to_string(),
            "--out={{ workingDir }}{{ outputs.a.rows }}{{ secret('TOKEN') }}"
        );
    }

    #[test]
    fn filled_values_are_never_parsed_again() {
        let t = Template(vec![Part::Output {
            task: "a".into(),
            key: "k".into(),
        }]);
        let filled = t
            .fill(|_| Ok::<_, ()>(Some("{{ secret('TOKEN') }}; rm -rf /".into())))
            .unwrap();
        assert_eq!(filled.secrets().count(), 0);
        assert_eq!(filled.as_text().unwrap(), "{{ secret('TOKEN') }}; rm -rf /");
    }
}
