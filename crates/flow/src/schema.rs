//! The flow's JSON Schema, derived from the types in [`crate::model`] plus the runner
//! parameters of [`ferry_event::payload::Runner`].

use std::borrow::Cow;
use std::sync::OnceLock;

use ferry_event::payload::{RUNNER_TYPES, Runner};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use crate::model::{Duration, Flow, RunnerSpec};

/// The `$id` of the flow schema.
pub const FLOW_SCHEMA_ID: &str = "https://ferry.dev/schemas/flow.schema.json";

/// The accepted form of a duration, as a regular expression.
pub const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h|d)( ?[0-9]+(ms|s|m|h|d))*$";

/// The JSON Schema (draft 2020-12) of the flow format, for editors (yaml-language-server) and
/// for checking flows in other tools.
pub fn flow_schema() -> Schema {
    let root = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Flow>();
    let generated = match root.to_value() {
        Value::Object(map) => map,
        other => return Schema::try_from(other).unwrap_or_default(),
    };
    let mut ordered = Map::new();
    if let Some(v) = generated.get("$schema") {
        ordered.insert("$schema".into(), v.clone());
    }
    ordered.insert("$id".into(), FLOW_SCHEMA_ID.into());
    for (k, v) in generated {
        if k != "$schema" {
            ordered.insert(k, v);
        }
    }
    Schema::from(ordered)
}

/// The flow schema as JSON, generated once.
pub(crate) fn flow_schema_value() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| flow_schema().to_value())
}

/// Each runner type's schema as `ferry_event` defines it: `(type, object schema)`.
pub(crate) fn runner_variants() -> &'static [(String, Map<String, Value>)] {
    static VARIANTS: OnceLock<Vec<(String, Map<String, Value>)>> = OnceLock::new();
    VARIANTS.get_or_init(|| {
        // Inlined, so that a parameter of a type of its own (a pull policy, a mount) needs no
        // `$defs` entry in the flow schema that embeds these variants.
        let mut settings = SchemaSettings::draft2020_12();
        settings.inline_subschemas = true;
        let schema = settings
            .into_generator()
            .into_root_schema_for::<Runner>()
            .to_value();
        let mut out = Vec::new();
        let variants = schema.get("oneOf").and_then(Value::as_array);
        for v in variants.into_iter().flatten() {
            let Some(obj) = v.as_object() else { continue };
            let ty = obj
                .get("properties")
                .and_then(|p| p.get("type"))
                .and_then(|t| t.get("const"))
                .and_then(Value::as_str);
            if let Some(ty) = ty {
                out.push((ty.to_string(), obj.clone()));
            }
        }
        out
    })
}

/// The parameters a runner type requires (besides `type`).
pub(crate) fn required_params(ty: &str) -> Vec<String> {
    runner_variants()
        .iter()
        .find(|(t, _)| t == ty)
        .and_then(|(_, s)| s.get("required"))
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .filter(|k| *k != "type")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A runner variant with only `type` required, since `defaults` may supply the rest.
fn task_runner_variant(variant: &Map<String, Value>) -> Value {
    let mut v = variant.clone();
    v.insert("required".into(), Value::Array(vec!["type".into()]));
    Value::Object(v)
}

/// A runner variant's parameters without `type`, as found under `defaults`.
fn defaults_variant(variant: &Map<String, Value>) -> Value {
    let mut v = variant.clone();
    v.remove("required");
    if let Some(Value::Object(props)) = v.get_mut("properties") {
        props.remove("type");
    }
    Value::Object(v)
}

impl JsonSchema for RunnerSpec {
    fn schema_name() -> Cow<'static, str> {
        "Runner".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut any_of = vec![json_schema!({
            "title": "runner type",
            "description": "A runner type with no parameters, or whose parameters all come from `defaults`.",
            "type": "string",
            "enum": RUNNER_TYPES,
        })
        .to_value()];
        any_of.extend(runner_variants().iter().map(|(_, v)| task_runner_variant(v)));
        json_schema!({
            "title": "runner",
            "description": "Where a task runs: a runner type name (`local`), or a mapping with `type` and that backend's parameters. Parameters missing here are taken from the flow's `defaults` for that type.",
            "anyOf": any_of,
        })
    }
}

/// Schema of the flow's `defaults`: runner parameters per backend.
pub(crate) struct DefaultsSchema;

impl JsonSchema for DefaultsSchema {
    fn schema_name() -> Cow<'static, str> {
        "Defaults".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let props: Map<String, Value> = runner_variants()
            .iter()
            .map(|(t, v)| (t.clone(), defaults_variant(v)))
            .collect();
        json_schema!({
            "description": "Runner parameters per backend name, merged under each task's runner parameters (the task's own win).",
            "type": "object",
            "properties": props,
            "propertyNames": { "title": "backend", "enum": RUNNER_TYPES },
            "additionalProperties": false,
        })
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: numbers with units `ms`, `s`, `m`, `h` or `d`, e.g. `30s`, `10m`, `1h30m`.",
            "type": "string",
            "pattern": DURATION_PATTERN,
            "examples": ["30s", "10m", "1h30m"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_identified_and_typed_for_editors() {
        let s = flow_schema().to_value();
        assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(s["$id"], FLOW_SCHEMA_ID);
        assert_eq!(s["title"], "ferry flow");
        let runner = &s["$defs"]["Runner"]["anyOf"];
        assert_eq!(runner[0]["enum"].as_array().unwrap().len(), RUNNER_TYPES.len());
        assert_eq!(runner.as_array().unwrap().len(), RUNNER_TYPES.len() + 1);
        assert_eq!(s["$defs"]["Duration"]["pattern"], DURATION_PATTERN);
        assert_eq!(s["properties"]["tasks"]["minItems"], 1);
    }

    #[test]
    fn every_runner_type_has_its_parameters() {
        let names: Vec<_> = runner_variants().iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(names, RUNNER_TYPES);
        assert_eq!(required_params("docker"), ["image"]);
        assert!(required_params("local").is_empty());
    }
}
