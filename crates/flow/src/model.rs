//! The typed flow format. The JSON Schema in `schemas/flow.schema.json` is derived from these
//! types, so the doc comments below are what an editor shows while a flow is written.

use std::collections::BTreeMap;

use ferry_event::payload::{Backoff, Resources};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A ferry flow: a named graph of tasks, run as a job with the given inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ferry flow")]
pub struct Flow {
    /// The flow's id: letters, digits, `_`, `-` and `.`, at most 128 characters.
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub id: String,
    /// A namespace grouping related flows (e.g. a team or a project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub namespace: Option<String>,
    /// What the flow does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Values a submission provides, used in templates as `{{ inputs.NAME }}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Input>,
    /// Events that start a job of this flow when they are published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// Runner parameters per backend, merged under each task's own runner parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(with = "crate::schema::DefaultsSchema")]
    pub defaults: BTreeMap<String, Map<String, Value>>,
    /// Most tasks of one job running at once (1 runs them one after another). No limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// The tasks. A task starts once every task in its `dependsOn` has succeeded.
    #[schemars(length(min = 1))]
    pub tasks: Vec<Task>,
}

/// The type of an input value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(title = "input type")]
pub enum InputType {
    /// Text, used as is.
    #[default]
    String,
    /// A whole number; in templates, its decimal text.
    Integer,
    /// A number; in templates, its JSON text.
    Number,
    /// `true` or `false`.
    Boolean,
    /// Any JSON value; in templates, its compact JSON text.
    Json,
}

impl InputType {
    pub fn as_str(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Integer => "integer",
            InputType::Number => "number",
            InputType::Boolean => "boolean",
            InputType::Json => "json",
        }
    }
}

/// A declared input of the flow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Input {
    /// The value's type (default `string`). A string given for an `integer`, `number` or
    /// `boolean` input is converted (`--input n=5`).
    #[serde(default, rename = "type")]
    pub ty: InputType,
    /// Whether a submission must provide it (when there is no `default`).
    #[serde(default)]
    pub required: bool,
    /// The value used when a submission does not provide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What the input means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Starts a job when a matching event is published (`on`), or at each tick of a schedule
/// (`schedule`). A trigger has exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    /// Which events start a job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<EventMatch>,
    /// When jobs start: a cron expression of 5 fields (minute, hour, day of month, month, day
    /// of week, e.g. `0 2 * * *` for 02:00 every day), of 6 with seconds first
    /// (`*/10 * * * * *`), or one of `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`.
    /// Each tick starts one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Paris` (default `UTC`).
    /// Daylight saving time is followed: see docs/triggers.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The job's inputs, by name. For an event trigger, string values may refer to the event:
    /// `{{ event.id }}`, `{{ event.source }}`, `{{ event.type }}`, `{{ event.subject }}`,
    /// `{{ event.time }}`, `{{ event.data }}` and `{{ event.data.PATH }}`; for a schedule, to
    /// the tick: `{{ trigger.time }}` (RFC 3339, in the schedule's time zone) and
    /// `{{ trigger.date }}` (`YYYY-MM-DD`, in that zone). A value that is one reference alone
    /// takes the referred value as it is (a number stays a number).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
}

/// Matches CloudEvents by their attributes and data. Every condition given must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventMatch {
    /// The CloudEvents `type`, e.g. `com.acme.file.uploaded` (see `source` for the forms).
    #[serde(rename = "type")]
    pub ty: TextMatch,
    /// The CloudEvents `source`: a string (exact, or a glob when it holds `*` or `?`), or
    /// `{ exact: … }`, `{ prefix: … }`, `{ suffix: … }` or `{ glob: … }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TextMatch>,
    /// The CloudEvents `subject`, in the forms of `source`; an event without one never matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<TextMatch>,
    /// Fields of the event's JSON data, by dotted path (`order.lines.0.sku`): a string matches
    /// a string field in the forms of `source`; any other value must equal the field.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, ValueMatch>,
}

/// How a text attribute matches: a string is exact, or a glob when it holds `*` or `?`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TextMatch {
    /// The text itself; with `*` (any run of characters), `?` (one character) or `[abc]` (one
    /// of them) it is a glob.
    Text(String),
    /// One of the explicit forms.
    Form(TextForm),
}

/// An explicit form of [`TextMatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum TextForm {
    /// Exactly this text, even if it holds `*` or `?`.
    Exact(String),
    /// Text that starts with this.
    Prefix(String),
    /// Text that ends with this.
    Suffix(String),
    /// A glob: `*` any run of characters, `?` one character, `[abc]` one of them.
    Glob(String),
}

/// How a data field matches: text in the forms of [`TextMatch`], or any other JSON value, which
/// the field must equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ValueMatch {
    /// A string field matching this.
    Text(TextMatch),
    /// A field equal to this value.
    Equals(Value),
}

/// One task of a flow: a command run on a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Task {
    /// The task's id, unique in the flow: letters, digits, `_` and `-`, at most 64 characters.
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9_-]+$"))]
    pub id: String,
    /// What the task does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the task runs: a runner type (`local`) or `{ type: ..., ...parameters }`.
    pub runner: RunnerSpec,
    /// The program and its arguments, run without a shell. Items may hold templates. Required
    /// but on `runner: agent` tasks, where they are arguments appended to the agent's command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Tasks that must succeed before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Files written into the working directory before the command runs: relative path to
    /// content. Contents may hold templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_files: BTreeMap<String, String>,
    /// Glob patterns, relative to the working directory, of files to collect after the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_files: Vec<String>,
    /// Environment variables. Values may hold templates. Names starting with `FERRY_` are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Compute the task asks for.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// How long one attempt may run before it is stopped, e.g. `30s`, `10m`, `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How often the task is tried when an attempt fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Among ready tasks, higher priorities start first (default 0).
    #[serde(default, skip_serializing_if = "is_default")]
    pub priority: i32,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A task's runner as written: a type name, or a mapping with `type` and the backend's
/// parameters. The parameters are complete only after the flow's `defaults` are merged in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RunnerSpec {
    /// `runner: local`.
    Type(String),
    /// `runner: { type: docker, image: ... }`.
    Params(Map<String, Value>),
}

impl RunnerSpec {
    /// The runner type named, if any.
    pub fn type_name(&self) -> Option<&str> {
        match self {
            RunnerSpec::Type(t) => Some(t),
            RunnerSpec::Params(p) => p.get("type").and_then(Value::as_str),
        }
    }
}

/// Retries of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included: 3 means up to two retries.
    #[schemars(range(min = 1))]
    pub attempts: u32,
    /// How the delay between attempts grows: `constant` (default) or `exponential` (doubling).
    #[serde(default)]
    pub backoff: Backoff,
    /// The delay before the first retry (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<Duration>,
}

/// A duration: numbers with units `ms`, `s`, `m`, `h` or `d`, e.g. `30s`, `10m`, `1h30m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub String);

impl Duration {
    /// The duration in milliseconds, or what is wrong with it.
    pub fn to_ms(&self) -> Result<u64, String> {
        crate::check::duration_ms(&self.0)
    }
}
