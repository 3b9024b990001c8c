//! Triggers: which events start a job of a flow, and the inputs they give it.
//!
//! - [`EventMatch::matches`] tells whether an event ([`EventFacts`]) matches a trigger's `on`:
//!   its `type`, `source` and `subject` as exact text, prefix, suffix or glob
//!   ([`TextMatch`]), and fields of its JSON data ([`ValueMatch`]);
//! - [`inputs`] fills a trigger's `inputs` from the event (`{{ event.data.day }}`), giving the
//!   inputs a submission would have carried; the planner then checks them like a submission's;
//! - [`tick_inputs`] fills a schedule's `inputs` from its tick (`{{ trigger.time }}`,
//!   [`crate::schedule::Tick`]). A schedule's inputs cannot refer to an event, nor an event
//!   trigger's to a tick: [`check_inputs`] says so.
//!
//! A trigger's templates are their own small language, apart from the task templates of
//! [`crate::template`]: they are filled once, when the event arrives, and what they produce is
//! a JSON value, never a template again.

use serde_json::{Map, Value};

use crate::model::{EventMatch, TextForm, TextMatch, ValueMatch};
use crate::schedule::Tick;

/// What a trigger may look at in an event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFacts {
    pub id: String,
    pub source: String,
    pub ty: String,
    pub subject: Option<String>,
    /// The event's `time`, RFC 3339, when it has one.
    pub time: Option<String>,
    /// The event's data, when it is JSON.
    pub data: Option<Value>,
}

/// What may appear between `{{` and `}}` in an event trigger's inputs.
pub const ACCEPTED: &str = "`{{ event.id }}`, `{{ event.source }}`, `{{ event.type }}`, `{{ event.subject }}`, \
     `{{ event.time }}`, `{{ event.data }}` or `{{ event.data.PATH }}`";

/// What may appear between `{{` and `}}` in a schedule's inputs.
pub const ACCEPTED_SCHEDULE: &str =
    "`{{ trigger.time }}` (the tick, RFC 3339) or `{{ trigger.date }}` (its date, YYYY-MM-DD)";

/// Which kind of trigger an input template belongs to: what it may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `on:` an event: `{{ event.… }}`.
    Event,
    /// `schedule:`: `{{ trigger.time }}`, `{{ trigger.date }}`.
    Schedule,
}

impl Kind {
    fn accepted(self) -> &'static str {
        match self {
            Kind::Event => ACCEPTED,
            Kind::Schedule => ACCEPTED_SCHEDULE,
        }
    }
}

impl TextMatch {
    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            TextMatch::Text(t) if is_glob(t) => glob_matches(t, text),
            TextMatch::Text(t) | TextMatch::Form(TextForm::Exact(t)) => t == text,
            TextMatch::Form(TextForm::Prefix(p)) => text.starts_with(p.as_str()),
            TextMatch::Form(TextForm::Suffix(s)) => text.ends_with(s.as_str()),
            TextMatch::Form(TextForm::Glob(g)) => glob_matches(g, text),
        }
    }

    /// What is wrong with it, if anything: an empty text or a glob that does not parse.
    pub fn problem(&self) -> Option<String> {
        let (glob, text) = match self {
            TextMatch::Text(t) => (is_glob(t), t),
            TextMatch::Form(TextForm::Glob(g)) => (true, g),
            TextMatch::Form(TextForm::Exact(t) | TextForm::Prefix(t) | TextForm::Suffix(t)) => (false, t),
        };
        if text.is_empty() {
            return Some("must not be empty".into());
        }
        if glob && let Err(e) = glob::Pattern::new(text) {
            return Some(format!(
                "`{text}` is not a valid glob ({}); `*` matches any run of characters, `?` one character, \
                 `[abc]` one of them; write `{{ exact: … }}` to match the text as it is",
                e.msg
            ));
        }
        None
    }
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?'])
}

fn glob_matches(pattern: &str, text: &str) -> bool {
    // Checked when the flow was validated: a pattern that does not parse matches nothing.
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches(text))
}

impl ValueMatch {
    /// Whether a data field (absent: `None`) matches.
    pub fn matches(&self, field: Option<&Value>) -> bool {
        match (self, field) {
            (_, None) => false,
            (ValueMatch::Text(m), Some(Value::String(s))) => m.matches(s),
            (ValueMatch::Text(_), Some(_)) => false,
            (ValueMatch::Equals(v), Some(f)) => v == f,
        }
    }
}

impl EventMatch {
    /// Whether the event matches every condition.
    pub fn matches(&self, event: &EventFacts) -> bool {
        self.ty.matches(&event.ty)
            && self.source.as_ref().is_none_or(|m| m.matches(&event.source))
            && self
                .subject
                .as_ref()
                .is_none_or(|m| event.subject.as_deref().is_some_and(|s| m.matches(s)))
            && self
                .data
                .iter()
                .all(|(path, m)| m.matches(event.data.as_ref().and_then(|d| data_path(d, path))))
    }
}

/// The value at a dotted path (`a.b.0.c`; a number indexes an array), if there is one.
pub fn data_path<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// One reference in a trigger's input template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Id,
    Source,
    Type,
    Subject,
    Time,
    /// `event.data` (empty path) or `event.data.PATH`.
    Data(String),
    /// `trigger.time`: a schedule's tick.
    TickTime,
    /// `trigger.date`: a schedule's tick's date.
    TickDate,
}

/// One piece of a trigger's input template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Ref(Reference),
}

/// Parses a trigger input string into literal text and references, for a trigger of `kind`.
pub fn parse(s: &str, kind: Kind) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "`{{{{` at character {} is not closed by `}}}}`; a trigger's inputs may use {}",
                s.len() - rest.len() + start + 1,
                kind.accepted()
            ));
        };
        pieces.push(Piece::Ref(reference(after[..end].trim(), kind)?));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_string()));
    }
    Ok(pieces)
}

fn reference(expr: &str, kind: Kind) -> Result<Reference, String> {
    let r = match expr {
        "event.id" => Reference::Id,
        "event.source" => Reference::Source,
        "event.type" => Reference::Type,
        "event.subject" => Reference::Subject,
        "event.time" => Reference::Time,
        "event.data" => Reference::Data(String::new()),
        "trigger.time" => Reference::TickTime,
        "trigger.date" => Reference::TickDate,
        other => match other.strip_prefix("event.data.") {
            Some(path)
                if path
                    .split('.')
                    .all(|k| !k.is_empty() && !k.contains(char::is_whitespace)) =>
            {
                Reference::Data(path.to_string())
            }
            _ => {
                let hint = if other.starts_with("inputs.") || other.starts_with("outputs.") {
                    match kind {
                        Kind::Event => {
                            " (a trigger's inputs are filled from the event, before the job has inputs or outputs)"
                        }
                        Kind::Schedule => {
                            " (a schedule's inputs are filled at its tick, before the job has inputs or outputs)"
                        }
                    }
                } else {
                    ""
                };
                return Err(format!(
                    "unknown trigger template expression `{{{{ {other} }}}}`{hint}; a trigger's inputs may use {}",
                    kind.accepted()
                ));
            }
        },
    };
    let is_tick = matches!(r, Reference::TickTime | Reference::TickDate);
    match kind {
        Kind::Schedule if !is_tick => Err(format!(
            "`{{{{ {expr} }}}}` refers to an event, and a schedule starts its jobs without one; \
             a schedule's inputs may use {ACCEPTED_SCHEDULE}"
        )),
        Kind::Event if is_tick => Err(format!(
            "`{{{{ {expr} }}}}` is a schedule's tick, and this trigger is started by an event (`on:`); \
             use `{{{{ event.time }}}}` for the event's time; an event trigger's inputs may use {ACCEPTED}"
        )),
        _ => Ok(r),
    }
}

/// Every problem with the templates of a trigger of `kind`'s inputs: `(input path, message)`.
pub fn check_inputs(inputs: &Map<String, Value>, kind: Kind) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (name, value) in inputs {
        walk(value, name, &mut |path, s| {
            if let Err(e) = parse(s, kind) {
                problems.push((path.to_string(), e));
            }
        });
    }
    problems
}

fn walk(value: &Value, path: &str, f: &mut impl FnMut(&str, &str)) {
    match value {
        Value::String(s) => f(path, s),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| walk(v, &format!("{path}[{i}]"), f)),
        Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, &format!("{path}.{k}"), f)),
        _ => {}
    }
}

/// A trigger's `inputs` filled from the event: every string value's templates are replaced. A
/// string that is one reference alone becomes the referred value (a number stays a number, an
/// object stays an object); within other text a value is inserted as its text (a string as
/// it is, anything else as compact JSON). A reference to something the event lacks is an
/// error naming the input, e.g. ``input `day`: the event has no `data.day` ``.
pub fn inputs(inputs: &Map<String, Value>, event: &EventFacts) -> Result<Map<String, Value>, String> {
    fill_all(inputs, Facts::Event(event))
}

/// A schedule's `inputs` filled from its tick, as [`inputs`] fills an event trigger's.
pub fn tick_inputs(inputs: &Map<String, Value>, tick: &Tick) -> Result<Map<String, Value>, String> {
    fill_all(inputs, Facts::Tick(tick))
}

/// What a trigger's inputs are filled from.
#[derive(Clone, Copy)]
enum Facts<'a> {
    Event(&'a EventFacts),
    Tick(&'a Tick),
}

impl Facts<'_> {
    fn kind(self) -> Kind {
        match self {
            Facts::Event(_) => Kind::Event,
            Facts::Tick(_) => Kind::Schedule,
        }
    }
}

fn fill_all(inputs: &Map<String, Value>, facts: Facts<'_>) -> Result<Map<String, Value>, String> {
    inputs
        .iter()
        .map(|(name, v)| {
            Ok((
                name.clone(),
                fill(v, facts).map_err(|e| format!("input `{name}`: {e}"))?,
            ))
        })
        .collect()
}

fn fill(value: &Value, facts: Facts<'_>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => fill_text(s, facts)?,
        Value::Array(a) => Value::Array(a.iter().map(|v| fill(v, facts)).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), fill(v, facts)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn fill_text(s: &str, facts: Facts<'_>) -> Result<Value, String> {
    let pieces = parse(s, facts.kind())?;
    if let [Piece::Ref(r)] = pieces.as_slice() {
        return resolve(r, facts);
    }
    let mut out = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => match resolve(r, facts)? {
                Value::String(v) => out.push_str(&v),
                v => out.push_str(&v.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

fn resolve(r: &Reference, facts: Facts<'_>) -> Result<Value, String> {
    let text = |v: &str| Ok(Value::String(v.to_string()));
    let event = match (facts, r) {
        (Facts::Tick(tick), Reference::TickTime) => return text(&tick.time),
        (Facts::Tick(tick), Reference::TickDate) => return text(&tick.date),
        // `parse` refused these for the other kind of trigger.
        (Facts::Tick(_), _) => return Err("a schedule's tick has no event".to_string()),
        (Facts::Event(event), _) => event,
    };
    match r {
        Reference::Id => text(&event.id),
        Reference::Source => text(&event.source),
        Reference::Type => text(&event.ty),
        Reference::Subject => event
            .subject
            .as_deref()
            .map_or_else(|| Err("the event has no `subject`".to_string()), text),
        Reference::Time => event
            .time
            .as_deref()
            .map_or_else(|| Err("the event has no `time`".to_string()), text),
        Reference::Data(path) => {
            let Some(data) = &event.data else {
                return Err("the event has no JSON data".to_string());
            };
            if path.is_empty() {
                return Ok(data.clone());
            }
            data_path(data, path)
                .cloned()
                .ok_or_else(|| format!("the event has no `data.{path}`"))
        }
        Reference::TickTime | Reference::TickDate => Err("an event trigger has no schedule tick".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn m(v: Value) -> EventMatch {
        serde_json::from_value(v).unwrap()
    }

    fn event() -> EventFacts {
        EventFacts {
            id: "e-1".into(),
            source: "s3://landing/2026/report.csv".into(),
            ty: "com.acme.file.uploaded".into(),
            subject: Some("report.csv".into()),
            time: Some("2026-12-06T02:00:00Z".into()),
            data: Some(json!({"day": "2026-12-06", "rows": 42, "tags": ["a", "b"], "meta": {"ok": true}})),
        }
    }

    #[test]
    fn text_forms_match_as_written() {
        let e = event();
        for (on, expected) in [
            (json!({"type": "com.acme.file.uploaded"}), true),
            (json!({"type": "com.acme.file.deleted"}), false),
            (json!({"type": "com.acme.*"}), true),
            (json!({"type": {"prefix": "com.acme."}}), true),
            (json!({"type": {"suffix": ".uploaded"}}), true),
            (json!({"type": {"suffix": ".deleted"}}), false),
            (json!({"type": {"exact": "com.acme.*"}}), false),
            (json!({"type": {"glob": "com.acme.file.upload??"}}), true),
            (
                json!({"type": "com.acme.file.uploaded", "source": "s3://landing/*"}),
                true,
            ),
            (
                json!({"type": "com.acme.file.uploaded", "source": "s3://other/*"}),
                false,
            ),
            (
                json!({"type": "com.acme.file.uploaded", "subject": {"suffix": ".csv"}}),
                true,
            ),
            (
                json!({"type": "com.acme.file.uploaded", "subject": "*.json"}),
                false,
            ),
        ] {
            assert_eq!(m(on.clone()).matches(&e), expected, "{on}");
        }
        let no_subject = EventFacts {
            subject: None,
            ..event()
        };
        assert!(!m(json!({"type": "com.acme.*", "subject": "*"})).matches(&no_subject));
        assert!(m(json!({"type": "com.acme.*"})).matches(&no_subject));
    }

    #[test]
    fn data_fields_match_by_path_and_value() {
        let e = event();
        for (data, expected) in [
            (json!({"day": "2026-*"}), true),
            (json!({"day": {"prefix": "2025"}}), false),
            (json!({"rows": 42}), true),
            (json!({"rows": 43}), false),
            (json!({"rows": "42"}), false),
            (json!({"tags.1": "b"}), true),
            (json!({"meta.ok": true}), true),
            (json!({"meta.missing": true}), false),
            (json!({"day": "2026-12-06", "rows": 42}), true),
            (json!({"day": "2026-12-06", "rows": 1}), false),
        ] {
            let on = json!({"type": "com.acme.file.uploaded", "data": data});
            assert_eq!(m(on.clone()).matches(&e), expected, "{on}");
        }
        let no_data = EventFacts {
            data: None,
            ..event()
        };
        assert!(!m(json!({"type": "com.acme.*", "data": {"rows": 42}})).matches(&no_data));
    }

    #[test]
    fn inputs_are_filled_from_the_event() {
        let given: Map<String, Value> = serde_json::from_value(json!({
            "day": "{{ event.data.day }}",
            "rows": "{{ event.data.rows }}",
            "label": "{{event.source}}#{{ event.id }} ({{ event.data.rows }} rows)",
            "meta": "{{ event.data.meta }}",
            "fixed": 7,
            "nested": {"subject": "{{ event.subject }}"}
        }))
        .unwrap();
        let filled = inputs(&given, &event()).unwrap();
        assert_eq!(
            Value::Object(filled),
            json!({
                "day": "2026-12-06",
                "rows": 42,
                "label": "s3://landing/2026/report.csv#e-1 (42 rows)",
                "meta": {"ok": true},
                "fixed": 7,
                "nested": {"subject": "report.csv"}
            })
        );
    }

    #[test]
    fn a_missing_reference_names_the_input() {
        let given: Map<String, Value> =
            serde_json::from_value(json!({"day": "{{ event.data.date }}"})).unwrap();
        let e = inputs(&given, &event()).unwrap_err();
        assert_eq!(e, "input `day`: the event has no `data.date`");
    }

    #[test]
    fn unknown_expressions_are_problems() {
        let given: Map<String, Value> = serde_json::from_value(
            json!({"a": "{{ inputs.x }}", "b": ["{{ event.nope }}"], "c": "{{ event.id"}),
        )
        .unwrap();
        let problems = check_inputs(&given, Kind::Event);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert_eq!(problems[0].0, "a");
        assert!(
            problems[0].1.contains("before the job has inputs"),
            "{}",
            problems[0].1
        );
        assert_eq!(problems[1].0, "b[0]");
        assert!(problems[2].1.contains("not closed"), "{}", problems[2].1);
    }

    #[test]
    fn a_schedule_fills_the_tick_and_refuses_event_references() {
        let given: Map<String, Value> = serde_json::from_value(json!({
            "at": "{{ trigger.time }}",
            "day": "{{trigger.date}}",
            "label": "nightly run of {{ trigger.date }}",
            "fixed": 3
        }))
        .unwrap();
        assert!(check_inputs(&given, Kind::Schedule).is_empty());
        let tick = Tick {
            time: "2026-12-07T02:00:00+01:00".into(),
            date: "2026-12-07".into(),
        };
        assert_eq!(
            Value::Object(tick_inputs(&given, &tick).unwrap()),
            json!({
                "at": "2026-12-07T02:00:00+01:00",
                "day": "2026-12-07",
                "label": "nightly run of 2026-12-07",
                "fixed": 3
            })
        );
        // An event's templates in a schedule, and a tick's in an event trigger, are problems.
        let problems = check_inputs(
            &serde_json::from_value(json!({"day": "{{ event.data.day }}"})).unwrap(),
            Kind::Schedule,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].1.contains("a schedule starts its jobs without one"),
            "{}",
            problems[0].1
        );
        assert!(problems[0].1.contains("trigger.time"), "{}", problems[0].1);
        let problems = check_inputs(
            &serde_json::from_value(json!({"at": "{{ trigger.time }}"})).unwrap(),
            Kind::Event,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("event.time"), "{}", problems[0].1);
        assert!(
            tick_inputs(
                &serde_json::from_value(json!({"x": "{{ event.id }}"})).unwrap(),
                &tick
            )
            .is_err()
        );
    }

    #[test]
    fn bad_globs_are_problems() {
        assert!(TextMatch::Text("a*[".into()).problem().is_some());
        assert!(TextMatch::Text("a*".into()).problem().is_none());
        assert!(TextMatch::Form(TextForm::Exact("a[".into())).problem().is_none());
        assert!(
            TextMatch::Form(TextForm::Prefix(String::new()))
                .problem()
                .is_some()
        );
    }
}
