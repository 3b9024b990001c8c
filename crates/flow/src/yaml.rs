//! YAML (and so JSON) parsed into a tree that remembers where each node was written.
//!
//! The tree is built without recursion from the parser's event stream, and nesting is bounded,
//! so hostile input can neither overflow the stack nor blow up through aliases: what a document
//! expands to is bounded in values and in bytes of text, aliases counted at their full size
//! each time they are used (a few aliases of a long string make a small file large).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

/// Deepest nesting accepted. Flows need about six levels; this bounds every later recursion.
pub(crate) const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to, aliases included.
pub(crate) const MAX_NODES: usize = 5_000_000;
/// Most bytes of text (keys and scalars) a document may expand to, aliases included. Far above
/// any flow a bus carries (the largest message ferry publishes is 64 MiB, and the plan a flow
/// becomes is larger than the flow), far below what would strain the planner's memory.
pub const MAX_EXPANDED_BYTES: usize = 64 * 1024 * 1024;

/// A place in the source: line and column, both from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub line: u32,
    pub col: u32,
}

impl Pos {
    fn of(m: &Marker) -> Pos {
        // 32 bits each keep every node of a large flow small; past 4 billion, the place is capped.
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Pos {
            line: at(m.line()),
            col: at(m.col().saturating_add(1)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// Shared by every mapping that uses the same key: a large flow repeats a few keys a lot.
    pub key: Arc<str>,
    pub key_pos: Pos,
    pub value: Node,
}

impl Node {
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The entry under `key`, if this is a mapping that has it.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| &*e.key == key)
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|e| &e.value)
    }

    /// How a person would name what was written here.
    pub fn kind(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".into(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(f) => format!("the number {f}"),
            Value::Str(s) => format!("the string {:?}", truncate(s, 40)),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// The node as JSON. Non-finite floats, which JSON cannot hold, become null.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.to_string(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Why a source could not be read as one YAML document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl SyntaxError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        SyntaxError {
            pos,
            message: message.into(),
        }
    }
}

impl From<ScanError> for SyntaxError {
    fn from(e: ScanError) -> Self {
        SyntaxError::at(Pos::of(e.marker()), format!("invalid YAML: {}", e.info()))
    }
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<Entry>,
        key: Option<(String, Pos)>,
    },
}

/// Parses one YAML document. An empty document is `Null` at 1:1.
pub(crate) fn parse(source: &str) -> Result<Node, SyntaxError> {
    parse_with(source, None)
}

/// Parses one YAML document like [`parse`], but hands each item of the top-level `tasks` list
/// to `on_task` as soon as it is complete instead of keeping it in the tree (where the list is
/// left empty): a large flow can be converted a task at a time without being held whole.
pub(crate) fn parse_tasks_apart(source: &str, on_task: &mut dyn FnMut(Node)) -> Result<Node, SyntaxError> {
    parse_with(source, Some(on_task))
}

fn parse_with(source: &str, mut on_task: Option<&mut dyn FnMut(Node)>) -> Result<Node, SyntaxError> {
    let mut parser = Parser::new_from_str(source);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    let mut bytes = 0usize;
    let too_many_bytes = |pos: Pos, how: &str| {
        SyntaxError::at(
            pos,
            format!(
                "the document expands to more than {} MiB of text{how}; a flow this large \
                 cannot be planned: write the values out once, or split the flow",
                MAX_EXPANDED_BYTES / (1024 * 1024)
            ),
        )
    };
    let mut keys: HashSet<Arc<str>> = HashSet::new();
    loop {
        let (event, mark) = parser.next_token()?;
        let pos = Pos::of(&mark);
        let node = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::at(
                        pos,
                        "a flow file holds one YAML document; remove the second `---` and what follows it",
                    ));
                }
                continue;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SyntaxError::at(
                        pos,
                        format!("nesting is deeper than {MAX_DEPTH} levels"),
                    ));
                }
                stack.push(match event {
                    Event::SequenceStart(..) => Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    _ => Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    },
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match stack.pop() {
                    // Collections are exactly as long as written: a large flow is mostly
                    // short lists and small mappings.
                    Some(Frame::Seq {
                        pos,
                        anchor,
                        mut items,
                    }) => {
                        items.shrink_to_fit();
                        // Block collections are marked after their first item: use the earlier.
                        let pos = items.first().map_or(pos, |i| pos.min(i.pos));
                        (
                            Node {
                                pos,
                                value: Value::Seq(items),
                            },
                            anchor,
                        )
                    }
                    Some(Frame::Map {
                        pos,
                        anchor,
                        mut entries,
                        ..
                    }) => {
                        entries.shrink_to_fit();
                        let pos = entries.first().map_or(pos, |e| pos.min(e.key_pos));
                        (
                            Node {
                                pos,
                                value: Value::Map(entries),
                            },
                            anchor,
                        )
                    }
                    None => return Err(SyntaxError::at(pos, "unbalanced YAML collection")),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => {
                let Some(node) = anchors.get(&id) else {
                    return Err(SyntaxError::at(pos, "alias to an unknown anchor"));
                };
                let (n, b) = weigh(node);
                nodes += n;
                if nodes > MAX_NODES {
                    return Err(SyntaxError::at(
                        pos,
                        format!("the document expands to more than {MAX_NODES} values through aliases"),
                    ));
                }
                bytes = bytes.saturating_add(b);
                if bytes > MAX_EXPANDED_BYTES {
                    return Err(too_many_bytes(pos, " through aliases (this one is used here)"));
                }
                Node {
                    pos,
                    value: node.value.clone(),
                }
            }
            Event::Scalar(mut text, style, anchor, tag) => {
                // The scanner leaves room to grow in each scalar; a flow keeps many short ones.
                text.shrink_to_fit();
                bytes = bytes.saturating_add(text.len());
                if bytes > MAX_EXPANDED_BYTES {
                    return Err(too_many_bytes(pos, ""));
                }
                let node = Node {
                    pos,
                    value: scalar(text, style, tag.as_ref()),
                };
                if anchor > 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
        };
        nodes += 1;
        if nodes > MAX_NODES {
            return Err(SyntaxError::at(
                pos,
                format!("the document holds more than {MAX_NODES} values"),
            ));
        }
        if let (
            Some(f),
            [
                Frame::Map {
                    key: Some((k, _)), ..
                },
                Frame::Seq { .. },
            ],
        ) = (on_task.as_mut(), stack.as_slice())
            && k == "tasks"
        {
            f(node);
            continue;
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => {
                    let text = match node.value {
                        Value::Str(s) => s,
                        Value::Null => String::new(),
                        Value::Bool(b) => b.to_string(),
                        Value::Int(i) => i.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            return Err(SyntaxError::at(
                                node.pos,
                                "mapping keys must be plain text, not lists or mappings",
                            ));
                        }
                    };
                    if let Some(first) = entries.iter().find(|e| *e.key == *text) {
                        return Err(SyntaxError::at(
                            node.pos,
                            format!(
                                "duplicate key `{text}` (first at line {}, column {})",
                                first.key_pos.line, first.key_pos.col
                            ),
                        ));
                    }
                    *key = Some((text, node.pos));
                }
                Some((k, key_pos)) => entries.push(Entry {
                    key: intern(&mut keys, k),
                    key_pos,
                    value: node,
                }),
            },
        }
    }
    Ok(root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        value: Value::Null,
    }))
}

/// The shared copy of a mapping key.
fn intern(keys: &mut HashSet<Arc<str>>, key: String) -> Arc<str> {
    match keys.get(key.as_str()) {
        Some(k) => k.clone(),
        None => {
            let k: Arc<str> = key.into();
            keys.insert(k.clone());
            k
        }
    }
}

/// How many values a node holds and how many bytes of text (keys and strings; other scalars
/// as written, about), counted as they would be if written out.
fn weigh(node: &Node) -> (usize, usize) {
    // Iterative: aliased subtrees are bounded by MAX_DEPTH, but stay off the stack anyway.
    let (mut n, mut bytes) = (0usize, 0usize);
    let mut todo = vec![node];
    while let Some(x) = todo.pop() {
        n += 1;
        bytes = bytes.saturating_add(match &x.value {
            Value::Str(s) => s.len(),
            Value::Seq(items) => {
                todo.extend(items.iter());
                0
            }
            Value::Map(entries) => {
                todo.extend(entries.iter().map(|e| &e.value));
                entries.iter().map(|e| e.key.len()).sum()
            }
            Value::Null | Value::Bool(_) => 4,
            Value::Int(_) | Value::Float(_) => 8,
        });
    }
    (n, bytes)
}

fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(tag) = tag
        && (tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!")
    {
        match tag.suffix.as_str() {
            "str" => return Value::Str(text),
            "null" => return Value::Null,
            _ => {}
        }
    }
    if style != TScalarStyle::Plain {
        return Value::Str(text);
    }
    match yaml_rust2::Yaml::from_str(&text) {
        yaml_rust2::Yaml::Null => Value::Null,
        yaml_rust2::Yaml::Boolean(b) => Value::Bool(b),
        yaml_rust2::Yaml::Integer(i) => Value::Int(i),
        real @ yaml_rust2::Yaml::Real(_) => match real.as_f64() {
            Some(f) => Value::Float(f),
            None => Value::Str(text),
        },
        _ => Value::Str(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_line_and_column() {
        let root = parse("id: x\ntasks:\n  - id: a\n    command: [echo, 'hi', 3]\n").unwrap();
        assert_eq!(root.pos, Pos { line: 1, col: 1 });
        let tasks = root.get("tasks").unwrap();
        assert_eq!(tasks.pos, Pos { line: 3, col: 3 });
        let task = &tasks.as_seq().unwrap()[0];
        assert_eq!(task.pos, Pos { line: 3, col: 5 });
        let cmd = task.get("command").unwrap().as_seq().unwrap();
        assert_eq!(cmd[1].pos, Pos { line: 4, col: 21 });
        assert_eq!(cmd[1].value, Value::Str("hi".into()));
        assert_eq!(cmd[2].value, Value::Int(3));
        assert_eq!(task.entry("command").unwrap().key_pos, Pos { line: 4, col: 5 });
    }

    #[test]
    fn json_is_yaml() {
        let root = parse("{\"id\": \"x\", \"n\": 1.5, \"ok\": true, \"none\": null}").unwrap();
        assert_eq!(
            root.to_json(),
            serde_json::json!({"id": "x", "n": 1.5, "ok": true, "none": null})
        );
    }

    #[test]
    fn quoted_scalars_stay_strings() {
        let root = parse("a: '5'\nb: \"true\"\nc: !!str 7\nd: 7\n").unwrap();
        assert_eq!(
            root.to_json(),
            serde_json::json!({"a": "5", "b": "true", "c": "7", "d": 7})
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("id: x\ntasks: [a, b\n").unwrap_err();
        assert!(err.message.contains("invalid YAML"), "{err:?}");
        assert_eq!(err.pos.line, 3);
    }

    #[test]
    fn duplicate_keys_and_second_documents_are_refused() {
        let err = parse("id: a\nid: b\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 1 });
        assert!(err.message.contains("duplicate key `id`"), "{err:?}");
        let err = parse("id: a\n---\nid: b\n").unwrap_err();
        assert!(err.message.contains("one YAML document"), "{err:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing() {
        // Flow style: the scanner's own limit answers first.
        let err = parse(&"[".repeat(100_000)).unwrap_err();
        assert!(err.message.contains("limit"), "{err:?}");
        // Block style: ours does.
        let block: String = (0..200).map(|i| format!("{}- \n", "  ".repeat(i))).collect();
        let err = parse(&block).unwrap_err();
        assert!(err.message.contains("nesting is deeper than 64"), "{err:?}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&src).unwrap_err();
        assert!(err.message.contains("aliases"), "{err:?}");
    }

    #[test]
    fn aliases_of_long_text_are_refused_by_their_expanded_size() {
        // About 100 KB of text, used 1,000 times: 100 MB written out, yet only a few thousand
        // values, far below MAX_NODES.
        let long = "x".repeat(100 * 1024);
        let mut src = format!("s: &s '{long}'\nl: &l [*s, *s, *s, *s, *s, *s, *s, *s, *s, *s]\n");
        src.push_str("m: &m [*l, *l, *l, *l, *l, *l, *l, *l, *l, *l]\n");
        src.push_str("tasks: [*m, *m, *m, *m, *m, *m, *m, *m, *m, *m]\n");
        assert!(src.len() < 110 * 1024);
        let err = parse(&src).unwrap_err();
        assert!(
            err.message.contains("more than 64 MiB of text through aliases"),
            "{err:?}"
        );
        assert_eq!(err.pos.line, 4, "located at the alias that goes past the limit");
        // The same text used a few times is fine.
        let few = format!("s: &s '{long}'\nl: [*s, *s, *s]\n");
        assert!(parse(&few).is_ok());
    }

    #[test]
    fn tasks_can_be_taken_apart_as_they_are_parsed() {
        let src = "tasks:\n  - {id: a, n: [1]}\n  - id: b\nid: x\nother: [{tasks: [1]}]\n";
        let mut tasks = Vec::new();
        let root = parse_tasks_apart(src, &mut |n| tasks.push(n)).unwrap();
        let whole = parse(src).unwrap();
        assert_eq!(tasks, whole.get("tasks").unwrap().as_seq().unwrap());
        assert_eq!(root.get("tasks").unwrap().as_seq(), Some(&[][..]));
        assert_eq!(root.get("other"), whole.get("other"));
        assert_eq!(root.get("id"), whole.get("id"));
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let root = parse("base: &b {image: x}\nother: *b\n").unwrap();
        assert_eq!(root.to_json()["other"], serde_json::json!({"image": "x"}));
    }
}
