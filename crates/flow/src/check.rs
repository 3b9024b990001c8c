//! Validation of a parsed flow tree: structure (driven by the flow JSON Schema) and meaning
//! (ids, dependencies, cycles, templates, paths, durations, runners). Both passes look at the
//! positioned tree, so every problem is reported at once with its place in the source.

use std::collections::HashMap;

use ferry_event::payload::{Problem, RUNNER_TYPES};
use serde_json::{Map, Value as J};

use crate::rules;
use crate::schema::{flow_schema_value, required_params};
use crate::template::FlowTemplate;
use crate::yaml::{Node, Pos, Value, truncate};

/// Most dependency cycles described one by one.
const MAX_CYCLES: usize = 20;

/// Which pass found a problem. Problems at the same place are listed in this order, so that
/// checking a flow a task at a time reports them as checking it whole does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Structure,
    Head,
    Ids,
    Deps,
    Cycles,
    Tasks,
    Upstream,
}

/// Problems found so far, with their place and pass for sorting.
pub(crate) struct Report<'a> {
    name: &'a str,
    phase: Phase,
    problems: Vec<(Pos, Phase, Problem)>,
}

impl<'a> Report<'a> {
    pub fn new(name: &'a str) -> Self {
        Report {
            name,
            phase: Phase::Structure,
            problems: Vec::new(),
        }
    }

    /// The pass the next problems come from.
    pub fn phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    pub fn add(&mut self, pos: Pos, field: &str, message: impl Into<String>) {
        self.problems.push((
            pos,
            self.phase,
            Problem {
                location: Some(format!("{}:{}:{}", self.name, pos.line, pos.col)),
                field: (!field.is_empty()).then(|| field.to_string()),
                message: message.into(),
            },
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    fn any_under(&self, prefix: &str) -> bool {
        self.problems.iter().any(|(_, _, p)| {
            p.field.as_deref().is_some_and(|f| {
                f.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
        })
    }

    /// The problems in source order.
    pub fn into_problems(mut self) -> Vec<Problem> {
        self.problems.sort_by_key(|(pos, phase, _)| (*pos, *phase));
        self.problems.into_iter().map(|(_, _, p)| p).collect()
    }
}

/// `base.key`, or `base["key"]` when the key is not a plain name.
pub(crate) fn field(base: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (base.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{base}.{key}"),
        (_, false) => format!("{base}[{}]", J::String(key.to_string())),
    }
}

/// The closest candidate, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = strsim::damerau_levenshtein(&lower, &c.to_lowercase());
        let longest = lower.chars().count().max(c.chars().count());
        if d < longest && d <= (longest / 3).max(1) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn suggestion<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    did_you_mean(word, candidates)
        .map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// `a, b, c` (at most 20 names, then how many more).
fn list<'c>(names: impl IntoIterator<Item = &'c str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let mut out = names
        .iter()
        .take(20)
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 20 {
        out.push_str(&format!(" and {} more", names.len() - 20));
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

// ----------------------------------------------------------------------------------------------
// Structure, driven by the flow schema
// ----------------------------------------------------------------------------------------------

struct Walker<'r, 'n> {
    root: &'static J,
    report: &'r mut Report<'n>,
    /// The top-level `tasks` list was taken apart while parsing: its items are walked one at
    /// a time ([`task_structure`]) and there is at least one.
    tasks_apart: bool,
}

/// Checks the tree against the flow schema: types, unknown and missing fields, enums, bounds.
pub(crate) fn structure(root: &Node, report: &mut Report<'_>) {
    let schema = flow_schema_value();
    report.phase(Phase::Structure);
    Walker {
        root: schema,
        report,
        tasks_apart: false,
    }
    .walk(schema, root, "");
}

/// Like [`structure`], for a flow whose (non-empty) `tasks` were taken apart while parsing:
/// everything but the tasks' items, which [`task_structure`] checks one at a time.
pub(crate) fn head_structure(head: &Node, report: &mut Report<'_>) {
    let schema = flow_schema_value();
    report.phase(Phase::Structure);
    Walker {
        root: schema,
        report,
        tasks_apart: true,
    }
    .walk(schema, head, "");
}

/// The structure of task `i`, as [`structure`] checks it within the whole flow.
pub(crate) fn task_structure(i: usize, task: &Node, report: &mut Report<'_>) {
    let schema = flow_schema_value();
    report.phase(Phase::Structure);
    let mut w = Walker {
        root: schema,
        report,
        tasks_apart: false,
    };
    let Some(items) = schema
        .get("properties")
        .and_then(|p| p.get("tasks"))
        .map(|s| w.resolve(s))
        .and_then(|s| s.get("items"))
    else {
        return;
    };
    w.walk(items, task, &format!("tasks[{i}]"));
}

fn first_sentence(s: &str) -> &str {
    match s.find(". ") {
        Some(i) => &s[..=i],
        None => s,
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
}

fn type_fits(ty: &str, node: &Node) -> bool {
    matches!(
        (ty, &node.value),
        ("null", Value::Null)
            | ("boolean", Value::Bool(_))
            | ("integer", Value::Int(_))
            | ("number", Value::Int(_) | Value::Float(_))
            | ("string", Value::Str(_))
            | ("array", Value::Seq(_))
            | ("object", Value::Map(_))
    )
}

fn type_name(ty: &str) -> &str {
    match ty {
        "null" => "nothing",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        "string" => "a string",
        "array" => "a list",
        "object" => "a mapping",
        other => other,
    }
}

fn types_of(schema: &J) -> Vec<&str> {
    match schema.get("type") {
        Some(J::String(t)) => vec![t.as_str()],
        Some(J::Array(ts)) => ts.iter().filter_map(J::as_str).collect(),
        _ => Vec::new(),
    }
}

impl<'r, 'n> Walker<'r, 'n> {
    fn resolve(&self, mut schema: &'static J) -> &'static J {
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(J::as_str) else {
                break;
            };
            let Some(name) = r.strip_prefix("#/$defs/") else {
                break;
            };
            match self.root.get("$defs").and_then(|d| d.get(name)) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    /// Whether `node`'s kind is one the schema takes at all (nested alternatives included).
    fn accepts_kind(&self, schema: &'static J, node: &Node) -> bool {
        let schema = self.resolve(schema);
        if let Some(alts) = alternatives(schema) {
            return alts.iter().any(|a| self.accepts_kind(a, node));
        }
        let types = types_of(schema);
        types.is_empty() || types.iter().any(|t| type_fits(t, node))
    }

    fn expected(&self, schema: &'static J) -> Vec<&'static str> {
        let schema = self.resolve(schema);
        if let Some(alts) = alternatives(schema) {
            let mut out: Vec<&str> = Vec::new();
            for a in alts {
                for t in self.expected(a) {
                    if !out.contains(&t) {
                        out.push(t);
                    }
                }
            }
            return out;
        }
        types_of(schema).into_iter().map(type_name).collect()
    }

    fn walk(&mut self, schema: &'static J, node: &Node, path: &str) {
        let schema = self.resolve(schema);
        match schema {
            J::Bool(true) => return,
            J::Bool(false) => {
                self.report.add(node.pos, path, "no value is allowed here");
                return;
            }
            _ => {}
        }
        if let Some(alts) = alternatives(schema) {
            self.walk_alternatives(schema, alts, node, path);
            return;
        }
        if !self.accepts_kind(schema, node) {
            self.wrong_type(schema, node, path);
            return;
        }
        if let Some(c) = schema.get("const")
            && node.to_json() != *c
        {
            self.report.add(
                node.pos,
                path,
                format!("must be `{}`, found {}", plain(c), node.kind()),
            );
        }
        if let Some(values) = schema.get("enum").and_then(J::as_array) {
            let v = node.to_json();
            if !values.contains(&v) {
                let names: Vec<String> = values.iter().map(plain).collect();
                self.unknown(schema, node.pos, path, &plain(&v), &names);
            }
        }
        match &node.value {
            Value::Int(_) | Value::Float(_) => self.bounds(schema, node, path),
            Value::Seq(_) if self.tasks_apart && path == "tasks" => {}
            Value::Seq(items) => {
                if let Some(min) = schema.get("minItems").and_then(J::as_u64)
                    && (items.len() as u64) < min
                {
                    let desc = schema.get("description").and_then(J::as_str).unwrap_or("");
                    let what = lower_first(first_sentence(desc).trim_end_matches('.'));
                    let msg = if min == 1 {
                        format!("must not be empty ({what})")
                    } else {
                        format!("must hold at least {min} items ({what})")
                    };
                    self.report.add(node.pos, path, msg);
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.walk(item_schema, item, &format!("{path}[{i}]"));
                    }
                }
            }
            Value::Map(entries) => {
                let props = schema.get("properties").and_then(J::as_object);
                let extra = schema.get("additionalProperties");
                for e in entries {
                    let child = field(path, &e.key);
                    if let Some(s) = props.and_then(|p| p.get(&*e.key)) {
                        self.walk(s, &e.value, &child);
                    } else {
                        match extra {
                            Some(J::Bool(false)) if schema.get("propertyNames").is_some() => {
                                let names = &schema["propertyNames"];
                                let accepted: Vec<String> = names
                                    .get("enum")
                                    .and_then(J::as_array)
                                    .map(|a| a.iter().map(plain).collect())
                                    .unwrap_or_default();
                                self.unknown(names, e.key_pos, &child, &e.key, &accepted);
                            }
                            Some(J::Bool(false)) => {
                                let accepted: Vec<&str> = props
                                    .map(|p| p.keys().map(String::as_str).collect())
                                    .unwrap_or_default();
                                self.report.add(
                                    e.key_pos,
                                    &child,
                                    format!(
                                        "unknown field `{}`{}; accepted fields: {}",
                                        e.key,
                                        suggestion(&e.key, accepted.iter().copied()),
                                        list(accepted.iter().copied())
                                    ),
                                );
                            }
                            Some(s @ J::Object(_)) => self.walk(s, &e.value, &child),
                            _ => {}
                        }
                    }
                }
                for req in schema
                    .get("required")
                    .and_then(J::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(J::as_str)
                {
                    if node.entry(req).is_none() {
                        let desc = props
                            .and_then(|p| p.get(req))
                            .map(|s| self.resolve(s))
                            .and_then(|s| s.get("description"))
                            .and_then(J::as_str)
                            .map(|d| format!(" ({})", lower_first(first_sentence(d).trim_end_matches('.'))))
                            .unwrap_or_default();
                        self.report.add(
                            node.pos,
                            &field(path, req),
                            format!("missing required field `{req}`{desc}"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    /// A value outside an enumeration, named by the schema's title.
    fn unknown(&mut self, schema: &J, pos: Pos, path: &str, shown: &str, names: &[String]) {
        let what = schema.get("title").and_then(J::as_str).unwrap_or("value");
        self.report.add(
            pos,
            path,
            format!(
                "unknown {what} `{shown}`{}; accepted: {}",
                suggestion(shown, names.iter().map(String::as_str)),
                list(names.iter().map(String::as_str))
            ),
        );
    }

    fn wrong_type(&mut self, schema: &'static J, node: &Node, path: &str) {
        let expected = self.expected(schema);
        let mut msg = format!("expected {}, found {}", expected.join(" or "), node.kind());
        if expected.contains(&"a string")
            && matches!(node.value, Value::Int(_) | Value::Float(_) | Value::Bool(_))
        {
            msg.push_str("; put it in quotes to write it as a string");
        }
        self.report.add(node.pos, path, msg);
    }

    fn bounds(&mut self, schema: &J, node: &Node, path: &str) {
        let v = match node.value {
            Value::Int(i) => i as f64,
            Value::Float(f) => f,
            _ => return,
        };
        let (mut min, mut max) = match schema.get("format").and_then(J::as_str) {
            Some("int32") => (Some(i32::MIN as f64), Some(i32::MAX as f64)),
            Some("uint32") => (Some(0.0), Some(u32::MAX as f64)),
            Some("uint64" | "uint") => (Some(0.0), None),
            _ => (None, None),
        };
        if let Some(m) = schema.get("minimum").and_then(J::as_f64) {
            min = Some(min.map_or(m, |x| x.max(m)));
        }
        if let Some(m) = schema.get("maximum").and_then(J::as_f64) {
            max = Some(max.map_or(m, |x| x.min(m)));
        }
        if let Some(m) = min.filter(|m| v < *m) {
            self.report
                .add(node.pos, path, format!("must be at least {m}, found {v}"));
        } else if let Some(m) = max.filter(|m| v > *m) {
            self.report
                .add(node.pos, path, format!("must be at most {m}, found {v}"));
        }
    }

    fn walk_alternatives(&mut self, schema: &'static J, alts: &'static [J], node: &Node, path: &str) {
        let fitting: Vec<&'static J> = alts.iter().filter(|a| self.accepts_kind(a, node)).collect();
        match fitting.as_slice() {
            [] => self.wrong_type(schema, node, path),
            [only] => self.walk(only, node, path),
            _ => {
                let consts: Option<Vec<&J>> = fitting.iter().map(|a| self.resolve(a).get("const")).collect();
                if let Some(consts) = consts {
                    let v = node.to_json();
                    if !consts.contains(&&v) {
                        let names: Vec<String> = consts.iter().map(|c| plain(c)).collect();
                        self.unknown(schema, node.pos, path, &plain(&v), &names);
                    }
                    return;
                }
                if let (Some(entries), Some(tag)) = (node.as_map(), discriminator(self, &fitting)) {
                    let what = schema.get("title").and_then(J::as_str).unwrap_or("value");
                    let consts: Vec<(&str, &'static J)> = fitting
                        .iter()
                        .filter_map(|a| {
                            let a = self.resolve(a);
                            let c = a.get("properties")?.get(tag)?.get("const")?.as_str()?;
                            Some((c, a))
                        })
                        .collect();
                    let names = consts.iter().map(|(c, _)| *c);
                    match entries.iter().find(|e| &*e.key == tag) {
                        None => self.report.add(
                            node.pos,
                            &field(path, tag),
                            format!(
                                "missing required field `{tag}`: the {what} {tag}, one of {}",
                                list(names)
                            ),
                        ),
                        Some(e) => match consts.iter().find(|(c, _)| e.value.as_str() == Some(*c)) {
                            Some((_, branch)) => self.walk(branch, node, path),
                            None => {
                                let shown = e.value.as_str().map_or_else(|| e.value.kind(), str::to_string);
                                self.report.add(
                                    e.value.pos,
                                    &field(path, tag),
                                    format!(
                                        "unknown {what} {tag} `{shown}`{}; accepted: {}",
                                        suggestion(&shown, names.clone()),
                                        list(names)
                                    ),
                                );
                            }
                        },
                    }
                    return;
                }
                // No tag to pick by: the first alternative that fits wins; else report the first.
                let name = self.report.name;
                for a in &fitting {
                    let mut trial = Report::new(name);
                    Walker {
                        root: self.root,
                        report: &mut trial,
                        tasks_apart: false,
                    }
                    .walk(a, node, path);
                    if trial.is_empty() {
                        return;
                    }
                }
                self.walk(fitting[0], node, path);
            }
        }
    }
}

fn alternatives(schema: &'static J) -> Option<&'static [J]> {
    schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(J::as_array)
        .map(Vec::as_slice)
}

/// A property every alternative fixes with `const`: the tag that picks one.
fn discriminator(w: &Walker<'_, '_>, alts: &[&'static J]) -> Option<&'static str> {
    let first = w.resolve(alts.first()?);
    let props = first.get("properties")?.as_object()?;
    props
        .iter()
        .find(|(k, v)| {
            v.get("const").is_some()
                && alts.iter().all(|a| {
                    w.resolve(a)
                        .get("properties")
                        .and_then(|p| p.get(k.as_str()))
                        .and_then(|p| p.get("const"))
                        .is_some()
                })
        })
        .map(|(k, _)| k.as_str())
}

fn plain(v: &J) -> String {
    match v {
        J::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ----------------------------------------------------------------------------------------------
// Meaning
// ----------------------------------------------------------------------------------------------

/// A task id (or flow id) is a plain name: it appears in paths and in templates.
fn id_problem(id: &str, max: usize, extra: &[char]) -> Option<String> {
    let allowed = match extra {
        [init @ .., last] => {
            let init: String = init.iter().map(|c| format!(", `{c}`")).collect();
            format!("{init} or `{last}`")
        }
        [] => String::new(),
    };
    if id.is_empty()
        || id.chars().count() > max
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    {
        Some(format!(
            "`{}` is not a valid id: use 1 to {max} letters, digits{allowed}",
            truncate(id, 80)
        ))
    } else {
        None
    }
}

/// A duration in milliseconds: numbers with units `ms`, `s`, `m`, `h`, `d`, e.g. `1h30m`.
pub(crate) fn duration_ms(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{}` is not a duration: write numbers with units ms, s, m, h or d, e.g. `30s`, `10m`, `1h30m`",
            truncate(s, 40)
        )
    };
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if i > 0 && b[i] == b' ' {
            i += 1;
        }
        let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        i += digits;
        let unit = if b[i..].starts_with(b"ms") {
            2
        } else if matches!(b.get(i), Some(b's' | b'm' | b'h' | b'd')) {
            1
        } else {
            return Err(bad());
        };
        i += unit;
    }
    if b.is_empty() {
        return Err(bad());
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{}: {e}", bad()))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long a duration"))
}

fn env_name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        Some(format!(
            "`{}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit",
            truncate(name, 40)
        ))
    } else if name.starts_with("FERRY_") {
        Some(format!(
            "`{name}` is reserved: ferry sets the FERRY_* variables of a task itself"
        ))
    } else {
        None
    }
}

/// A template reference to check once the task graph is known.
struct OutputRef {
    task: String,
    pos: Pos,
    field: String,
}

/// What the task-graph checks need of one task, read while its part of the tree is at hand.
pub(crate) struct TaskFacts {
    id: Option<(String, Pos)>,
    /// Dependencies written as strings: name, place and index in `dependsOn`.
    deps: Vec<(String, Pos, usize)>,
    refs: Vec<OutputRef>,
}

/// Checks what the schema cannot express. Only well-shaped parts are looked at: the structure
/// pass has reported the rest already.
pub(crate) fn meaning(root: &Node, report: &mut Report<'_>) {
    let declared = head_meaning(root, report);
    let Some(tasks) = root.get("tasks").and_then(Node::as_seq) else {
        return;
    };
    let facts = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| task_meaning(i, t, root, &declared, report))
        .collect();
    graph(facts, report);
}

/// The flow's own fields: ids, inputs, triggers. Returns the declared inputs' names.
pub(crate) fn head_meaning(root: &Node, report: &mut Report<'_>) -> Vec<String> {
    report.phase(Phase::Head);
    if let Some(id) = root.get("id")
        && let Some(msg) = id.as_str().and_then(|s| id_problem(s, 128, &['_', '-', '.']))
    {
        report.add(id.pos, "id", format!("flow {msg}"));
    }
    if let Some(ns) = root.get("namespace")
        && let Some(msg) = ns.as_str().and_then(|s| id_problem(s, 128, &['_', '-', '.']))
    {
        report.add(ns.pos, "namespace", format!("namespace {msg}"));
    }
    let declared = inputs(root, report);
    for (i, t) in root
        .get("triggers")
        .and_then(Node::as_seq)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        trigger_meaning(i, t, &declared, report);
    }
    declared
}

/// Trigger `i`: its matches are well formed, and its inputs are declared and fill from the
/// event.
fn trigger_meaning(i: usize, t: &Node, declared: &[String], report: &mut Report<'_>) {
    let base = format!("triggers[{i}]");
    let given = |key: &str| t.get(key).filter(|n| !matches!(n.value, Value::Null));
    let kind = match (given("on"), given("schedule")) {
        (Some(_), Some(schedule)) => {
            report.add(
                schedule.pos,
                &format!("{base}.schedule"),
                "a trigger has either `on:` (the events that start a job) or `schedule:` (a cron expression), \
                 not both; write two triggers",
            );
            return;
        }
        (None, None) => {
            report.add(
                t.pos,
                &base,
                "a trigger needs `on:` (the events that start a job, e.g. `on: { type: com.acme.file.uploaded }`) \
                 or `schedule:` (a cron expression, e.g. `schedule: \"0 2 * * *\"`)",
            );
            return;
        }
        (None, Some(schedule)) => {
            schedule_meaning(&base, schedule, t.get("timezone"), report);
            crate::trigger::Kind::Schedule
        }
        (Some(_), None) => {
            if let Some(zone) = t.get("timezone") {
                report.add(
                    zone.pos,
                    &format!("{base}.timezone"),
                    "`timezone` is for a `schedule:`; an event trigger (`on:`) has none",
                );
            }
            crate::trigger::Kind::Event
        }
    };
    if let Some(on) = t.get("on") {
        for attr in ["type", "source", "subject"] {
            text_match(on.get(attr), &format!("{base}.on.{attr}"), report);
        }
        for e in on.get("data").and_then(Node::as_map).unwrap_or(&[]) {
            let path = field(&format!("{base}.on.data"), &e.key);
            if e.key.split('.').any(str::is_empty) {
                report.add(
                    e.key_pos,
                    &path,
                    format!(
                        "`{}` is not a data path: write the field names from the top of the event's data joined by `.`, e.g. `order.id` or `lines.0.sku`",
                        truncate(&e.key, 60)
                    ),
                );
            }
            if matches!(e.value.value, Value::Str(_))
                || e.value.as_map().is_some_and(|m| {
                    m.len() == 1 && ["exact", "prefix", "suffix", "glob"].contains(&&*m[0].key)
                })
            {
                text_match(Some(&e.value), &path, report);
            }
        }
    }
    for e in t.get("inputs").and_then(Node::as_map).unwrap_or(&[]) {
        let path = field(&format!("{base}.inputs"), &e.key);
        if !declared.iter().any(|d| **d == *e.key) {
            report.add(
                e.key_pos,
                &path,
                format!(
                    "the trigger gives input `{}`, which the flow does not declare{}; declared inputs: {}",
                    truncate(&e.key, 40),
                    suggestion(&e.key, declared.iter().map(String::as_str)),
                    list(declared.iter().map(String::as_str))
                ),
            );
        }
        for (at, message) in
            crate::trigger::check_inputs(&Map::from_iter([(e.key.to_string(), e.value.to_json())]), kind)
        {
            report.add(e.value.pos, &format!("{base}.inputs.{at}"), message);
        }
    }
}

/// A schedule's cron expression and time zone, each at its place.
fn schedule_meaning(base: &str, schedule: &Node, zone: Option<&Node>, report: &mut Report<'_>) {
    let Some(expression) = schedule.as_str() else {
        return;
    };
    let zone_name = zone.and_then(Node::as_str);
    if let Err((expression_problem, zone_problem)) = crate::schedule::Schedule::parse(expression, zone_name) {
        if let Some(message) = expression_problem {
            report.add(schedule.pos, &format!("{base}.schedule"), message);
        }
        if let (Some(message), Some(zone)) = (zone_problem, zone) {
            report.add(zone.pos, &format!("{base}.timezone"), message);
        }
    }
}

/// A `type`, `source`, `subject` or data match, if written as a [`crate::model::TextMatch`].
fn text_match(node: Option<&Node>, path: &str, report: &mut Report<'_>) {
    let Some(node) = node else { return };
    let Ok(m) = serde_json::from_value::<crate::model::TextMatch>(node.to_json()) else {
        return;
    };
    if let Some(msg) = m.problem() {
        report.add(node.pos, path, msg);
    }
}

/// Task `i` on its own: its id, templates, files, env, durations, resources and runner (with
/// the flow's `defaults`, from `root`). Returns what [`graph`] needs of it.
pub(crate) fn task_meaning(
    i: usize,
    t: &Node,
    root: &Node,
    declared: &[String],
    report: &mut Report<'_>,
) -> TaskFacts {
    report.phase(Phase::Ids);
    let id = t.get("id").and_then(|n| n.as_str().map(|s| (s, n.pos)));
    if let Some((id, pos)) = id
        && let Some(msg) = id_problem(id, 64, &['_', '-'])
    {
        report.add(
            pos,
            &format!("tasks[{i}].id"),
            format!("task {msg} (ids appear in paths and in `{{{{ outputs.ID.KEY }}}}`)"),
        );
    }
    let written = t.get("dependsOn").and_then(Node::as_seq).unwrap_or(&[]);
    let mut deps = Vec::with_capacity(written.len());
    for (j, d) in written.iter().enumerate() {
        if let Some(name) = d.as_str() {
            deps.push((name.to_string(), d.pos, j));
        }
    }
    report.phase(Phase::Tasks);
    let defaults = root.get("defaults").and_then(Node::as_map).unwrap_or(&[]);
    let base = format!("tasks[{i}]");
    let mut task_refs = Vec::new();
    let mut template = |node: &Node, path: String, report: &mut Report<'_>| {
        let Some(s) = node.as_str() else { return };
        match FlowTemplate::parse(s) {
            Err(msg) => report.add(node.pos, &path, msg),
            Ok(t) => {
                for name in t.inputs() {
                    if !declared.iter().any(|d| d == name) {
                        report.add(
                            node.pos,
                            &path,
                            format!(
                                "`{{{{ inputs.{name} }}}}` refers to an input the flow does not declare{}; declared inputs: {}",
                                suggestion(name, declared.iter().map(String::as_str)),
                                list(declared.iter().map(String::as_str))
                            ),
                        );
                    }
                }
                for (task, _) in t.outputs() {
                    task_refs.push(OutputRef {
                        task: task.to_string(),
                        pos: node.pos,
                        field: path.clone(),
                    });
                }
            }
        }
    };
    let runner_type = t
        .get("runner")
        .and_then(|r| r.as_str().or_else(|| r.get("type").and_then(Node::as_str)));
    if t.get("command").is_none() && runner_type != Some(ferry_event::agent::RUNNER) {
        report.add(
            t.pos,
            &format!("{base}.command"),
            "missing required field `command` (the program and its arguments, run without a shell; \
             only `runner: agent` tasks may leave it out)"
                .to_string(),
        );
    }
    for (j, c) in t
        .get("command")
        .and_then(Node::as_seq)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        template(c, format!("{base}.command[{j}]"), report);
    }
    for e in t.get("env").and_then(Node::as_map).unwrap_or(&[]) {
        let path = field(&format!("{base}.env"), &e.key);
        if let Some(msg) = env_name_problem(&e.key) {
            report.add(e.key_pos, &path, msg);
        }
        template(&e.value, path, report);
    }
    for e in t.get("inputFiles").and_then(Node::as_map).unwrap_or(&[]) {
        let path = field(&format!("{base}.inputFiles"), &e.key);
        if let Err(msg) = rules::input_file_name(&e.key) {
            report.add(e.key_pos, &path, format!("`{}`: {msg}", truncate(&e.key, 60)));
        }
        template(&e.value, path, report);
    }
    for (j, p) in t
        .get("outputFiles")
        .and_then(Node::as_seq)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        if let Some(Err(msg)) = p.as_str().map(rules::output_pattern) {
            report.add(p.pos, &format!("{base}.outputFiles[{j}]"), msg);
        }
    }
    if let Some(d) = t.get("timeout")
        && let Some(s) = d.as_str()
    {
        match duration_ms(s) {
            Err(msg) => report.add(d.pos, &format!("{base}.timeout"), msg),
            Ok(0) => report.add(
                d.pos,
                &format!("{base}.timeout"),
                "a timeout must be longer than 0",
            ),
            Ok(_) => {}
        }
    }
    if let Some(d) = t.get("retry").and_then(|r| r.get("initial"))
        && let Some(Err(msg)) = d.as_str().map(duration_ms)
    {
        report.add(d.pos, &format!("{base}.retry.initial"), msg);
    }
    if let Some(r) = t.get("resources") {
        if let Some(m) = r.get("memory")
            && let Some(Err(msg)) = m.as_str().map(rules::memory_bytes)
        {
            report.add(m.pos, &format!("{base}.resources.memory"), msg);
        }
        if let Some(c) = r.get("cpu") {
            let cpu = match c.value {
                Value::Int(i) => Some(i as f64),
                Value::Float(f) => Some(f),
                _ => None,
            };
            if cpu.is_some_and(|c| c <= 0.0 || !c.is_finite()) {
                report.add(
                    c.pos,
                    &format!("{base}.resources.cpu"),
                    "cpu must be more than 0 (fractions like 0.5 are fine)",
                );
            }
        }
        if let Some(kind) = r.get("gpuType")
            && let Some(name) = kind.as_str()
        {
            let count = r.get("gpu").and_then(|g| match g.value {
                Value::Int(i) => u32::try_from(i).ok(),
                _ => None,
            });
            let typed = ferry_event::payload::Resources {
                gpu: count,
                gpu_type: Some(name.to_string()),
                ..Default::default()
            };
            if let Err(msg) = typed.gpus() {
                report.add(kind.pos, &format!("{base}.resources.gpuType"), &msg);
            }
        }
    }
    if let Some(r) = t.get("runner") {
        runner(r, defaults, &format!("{base}.runner"), report);
    }
    TaskFacts {
        id: id.map(|(s, pos)| (s.to_string(), pos)),
        deps,
        refs: task_refs,
    }
}

/// The task graph: duplicate ids, unknown dependencies, cycles, and outputs used from tasks
/// that are not upstream.
pub(crate) fn graph(facts: Vec<TaskFacts>, report: &mut Report<'_>) {
    let mut named = Vec::with_capacity(facts.len());
    let mut written = Vec::with_capacity(facts.len());
    let mut refs = Vec::with_capacity(facts.len());
    for f in facts {
        named.push(f.id);
        written.push(f.deps);
        refs.push(f.refs);
    }
    let ids: Vec<Option<&str>> = named
        .iter()
        .map(|n| n.as_ref().map(|(s, _)| s.as_str()))
        .collect();

    // Ids, first come first served.
    report.phase(Phase::Ids);
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    for (i, n) in named.iter().enumerate() {
        let Some((id, pos)) = n else { continue };
        match index.get(id.as_str()) {
            Some(&first) => {
                let at = named[first].as_ref().map_or(*pos, |(_, p)| *p);
                report.add(
                    *pos,
                    &format!("tasks[{i}].id"),
                    format!(
                        "duplicate task id `{id}`: tasks[{first}] at {}:{}:{} already uses it",
                        report.name, at.line, at.col
                    ),
                );
            }
            None => {
                index.insert(id, i);
            }
        }
    }

    // Dependencies.
    report.phase(Phase::Deps);
    let mut deps: Vec<Vec<(usize, Pos, usize)>> = Vec::with_capacity(written.len());
    for (i, w) in written.iter().enumerate() {
        let mut resolved = Vec::with_capacity(w.len());
        for (name, pos, j) in w {
            match index.get(name.as_str()) {
                Some(&target) => {
                    if !resolved.iter().any(|(x, _, _)| *x == target) {
                        resolved.push((target, *pos, *j));
                    }
                }
                None => report.add(
                    *pos,
                    &format!("tasks[{i}].dependsOn[{j}]"),
                    format!(
                        "unknown task `{name}`{}; tasks in this flow: {}",
                        suggestion(name, index.keys().copied()),
                        list(
                            ids.iter()
                                .enumerate()
                                .filter_map(|(k, id)| id.filter(|id| index.get(id) == Some(&k)))
                        )
                    ),
                ),
            }
        }
        deps.push(resolved);
    }
    drop(written);
    report.phase(Phase::Cycles);
    cycles(&deps, &ids, report);
    report.phase(Phase::Upstream);
    upstream(&refs, &deps, &index, &ids, report);
}

/// Declared inputs' names; checks names and that defaults fit their type.
fn inputs(root: &Node, report: &mut Report<'_>) -> Vec<String> {
    let mut names = Vec::new();
    for e in root.get("inputs").and_then(Node::as_map).unwrap_or(&[]) {
        let path = field("inputs", &e.key);
        if !e
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || e.key.is_empty()
        {
            report.add(
                e.key_pos,
                &path,
                format!(
                    "`{}` is not a valid input name: use letters, digits, `_` and `-` (it is written `{{{{ inputs.NAME }}}}`)",
                    truncate(&e.key, 40)
                ),
            );
        }
        names.push(e.key.to_string());
        let ty = e.value.get("type").and_then(Node::as_str).unwrap_or("string");
        if let Some(d) = e.value.get("default") {
            let fits = match ty {
                "string" => matches!(d.value, Value::Str(_)),
                "integer" => matches!(d.value, Value::Int(_)),
                "number" => matches!(d.value, Value::Int(_) | Value::Float(_)),
                "boolean" => matches!(d.value, Value::Bool(_)),
                _ => true,
            };
            if !fits {
                report.add(
                    d.pos,
                    &format!("{path}.default"),
                    format!(
                        "the default must be of the input's type `{ty}`, found {}",
                        d.kind()
                    ),
                );
            }
        }
    }
    names
}

/// Checks the runner type and its parameters once the flow's defaults are merged in.
fn runner(node: &Node, defaults: &[crate::yaml::Entry], path: &str, report: &mut Report<'_>) {
    let (ty, params): (&str, Map<String, J>) = match &node.value {
        Value::Str(t) => (t, Map::new()),
        Value::Map(entries) => {
            let Some(t) = node.get("type").and_then(Node::as_str) else {
                return;
            };
            let params = entries
                .iter()
                .filter(|e| &*e.key != "type")
                .map(|e| (e.key.to_string(), e.value.to_json()))
                .collect();
            (t, params)
        }
        _ => return,
    };
    if !RUNNER_TYPES.contains(&ty) || report.any_under(path) || report.any_under(&format!("defaults.{ty}")) {
        return;
    }
    let defaults: Option<Map<String, J>> = defaults
        .iter()
        .find(|e| &*e.key == ty)
        .and_then(|e| e.value.as_map())
        .map(|m| m.iter().map(|e| (e.key.to_string(), e.value.to_json())).collect());
    let merged = rules::runner_params(ty, defaults.as_ref(), params);
    let missing: Vec<String> = required_params(ty)
        .into_iter()
        .filter(|k| merged.get(k).is_none_or(J::is_null))
        .collect();
    if !missing.is_empty() {
        for k in missing {
            report.add(
                node.pos,
                path,
                format!(
                    "runner `{ty}` needs `{k}`: set it on the task's runner or under `defaults.{ty}.{k}`"
                ),
            );
        }
        return;
    }
    if let Err(e) = rules::runner(merged) {
        report.add(node.pos, path, e);
    }
}

/// Reports each dependency cycle, with its path. Iterative depth-first search: no recursion.
fn cycles(deps: &[Vec<(usize, Pos, usize)>], ids: &[Option<&str>], report: &mut Report<'_>) {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; deps.len()];
    let mut found = 0usize;
    let name = |i: usize| ids[i].unwrap_or("?");
    for start in 0..deps.len() {
        if color[start] != WHITE {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        color[start] = GREY;
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            if next == deps[node].len() {
                color[node] = BLACK;
                stack.pop();
                continue;
            }
            top.1 += 1;
            let (target, pos, j) = deps[node][next];
            match color[target] {
                WHITE => {
                    color[target] = GREY;
                    stack.push((target, 0));
                }
                GREY => {
                    found += 1;
                    if found <= MAX_CYCLES {
                        let from = stack.iter().rposition(|(n, _)| *n == target).unwrap_or(0);
                        let mut path: Vec<&str> = stack[from..].iter().map(|(n, _)| name(*n)).collect();
                        path.push(name(target));
                        report.add(
                            pos,
                            &format!("tasks[{node}].dependsOn[{j}]"),
                            format!(
                                "dependency cycle: {} (each task depends on the next); remove one of these dependencies",
                                path.join(" -> ")
                            ),
                        );
                    }
                }
                _ => {}
            }
        }
    }
    if found > MAX_CYCLES {
        report.add(
            Pos::default(),
            "tasks",
            format!("{} more dependency cycles are not shown", found - MAX_CYCLES),
        );
    }
}

/// Checks that each `{{ outputs.T.K }}` names a task upstream of the task using it.
fn upstream(
    refs: &[Vec<OutputRef>],
    deps: &[Vec<(usize, Pos, usize)>],
    index: &HashMap<&str, usize>,
    ids: &[Option<&str>],
    report: &mut Report<'_>,
) {
    // Ancestors are searched only for tasks whose references are not direct dependencies;
    // `seen` is stamped per search so it is allocated once.
    let mut seen: Vec<usize> = vec![usize::MAX; deps.len()];
    let mut queue: Vec<usize> = Vec::new();
    for (u, task_refs) in refs.iter().enumerate() {
        let mut searched = false;
        for r in task_refs {
            let Some(&t) = index.get(r.task.as_str()) else {
                report.add(
                    r.pos,
                    &r.field,
                    format!(
                        "`{{{{ outputs.{}.… }}}}` refers to unknown task `{}`{}",
                        r.task,
                        r.task,
                        suggestion(&r.task, index.keys().copied())
                    ),
                );
                continue;
            };
            if deps[u].iter().any(|(d, _, _)| *d == t) {
                continue;
            }
            if !searched {
                searched = true;
                queue.clear();
                queue.extend(deps[u].iter().map(|(d, _, _)| *d));
                for &d in &queue {
                    seen[d] = u;
                }
                let mut k = 0;
                while k < queue.len() {
                    let x = queue[k];
                    k += 1;
                    for &(d, _, _) in &deps[x] {
                        if seen[d] != u {
                            seen[d] = u;
                            queue.push(d);
                        }
                    }
                }
            }
            if seen[t] != u || t == u {
                let me = ids[u].unwrap_or("?");
                report.add(
                    r.pos,
                    &r.field,
                    format!(
                        "uses the outputs of task `{}`, which is not upstream of `{me}`: add `{}` to the `dependsOn` of `{me}` (directly or through another task)",
                        r.task, r.task
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_say_what_is_accepted() {
        assert_eq!(duration_ms("30s"), Ok(30_000));
        assert_eq!(duration_ms("10m"), Ok(600_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("1h 30m"), Ok(5_400_000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert_eq!(duration_ms("2d"), Ok(172_800_000));
        for bad in ["", "30", "s", "10 m", "1.5h", "10min", "-1s", "1h30"] {
            let e = duration_ms(bad).unwrap_err();
            assert!(e.contains("e.g. `30s`"), "{bad}: {e}");
        }
    }

    #[test]
    fn suggestions_are_for_likely_typos_only() {
        assert_eq!(did_you_mean("dependOn", ["id", "dependsOn"]), Some("dependsOn"));
        assert_eq!(did_you_mean("dokcer", ["local", "docker"]), Some("docker"));
        assert_eq!(did_you_mean("a", ["b"]), None);
        assert_eq!(did_you_mean("xyzzy", ["command"]), None);
    }

    #[test]
    fn field_paths_quote_keys_that_are_not_plain_names() {
        assert_eq!(field("", "tasks"), "tasks");
        assert_eq!(field("tasks[0].env", "A_B"), "tasks[0].env.A_B");
        assert_eq!(
            field("tasks[0].inputFiles", "main.py"),
            "tasks[0].inputFiles[\"main.py\"]"
        );
    }
}
