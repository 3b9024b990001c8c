//! The CloudEvents HTTP protocol binding (version 1.0): reading an event from a request.
//!
//! - binary mode: attributes in `ce-*` headers, `content-type` is `datacontenttype`, the body is
//!   `data`;
//! - structured mode: `content-type: application/cloudevents+json`, the body is the event in the
//!   JSON event format;
//! - batch mode: `content-type: application/cloudevents-batch+json`, the body is a JSON array of
//!   events in the JSON event format.
//!
//! Every problem with a request is collected, not just the first, each naming the header or
//! field at fault.

use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use base64::Engine as _;
use ferry_event::Event;
use ferry_event::cloudevents::event::ExtensionValue;
use ferry_event::cloudevents::{AttributesWriter, Data, EventBuilder as _, EventBuilderV10};
use ferry_event::payload::Problem;
use serde_json::{Map, Value};

pub(crate) const STRUCTURED: &str = "application/cloudevents+json";
pub(crate) const BATCH: &str = "application/cloudevents-batch+json";

/// How a request carries its event(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    Binary,
    Structured,
    Batch,
    /// `application/cloudevents+FORMAT` with a format other than JSON.
    UnsupportedFormat(String),
}

/// The request's mode, from its `content-type`.
pub(crate) fn mode(headers: &HeaderMap) -> Mode {
    let media = content_type(headers)
        .map(|ct| media_type(&ct))
        .unwrap_or_default();
    match media.as_str() {
        STRUCTURED => Mode::Structured,
        BATCH => Mode::Batch,
        m if m.starts_with("application/cloudevents") => Mode::UnsupportedFormat(m.to_string()),
        _ => Mode::Binary,
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The media type of a `content-type` value, lower case, without parameters.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether data of this content type is JSON.
pub(crate) fn is_json(content_type: &str) -> bool {
    let m = media_type(content_type);
    m == "application/json" || m == "text/json" || m.ends_with("+json")
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        location: None,
        field: Some(field.into()),
        message: message.into(),
    }
}

/// The attributes every event has, collected before building it.
#[derive(Default)]
struct Attrs {
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    subject: Option<String>,
    time: Option<chrono::DateTime<chrono::Utc>>,
    dataschema: Option<url::Url>,
    extensions: Vec<(String, ExtensionValue)>,
}

impl Attrs {
    fn build(
        self,
        data: Option<(String, Data)>,
        problems: &mut Vec<Problem>,
        name: &dyn Fn(&str) -> String,
    ) -> Option<Event> {
        for (attr, value) in [("id", &self.id), ("source", &self.source), ("type", &self.ty)] {
            let field = name(attr);
            let named = problems
                .iter()
                .any(|p| p.field.as_deref() == Some(field.as_str()));
            if value.is_none() && !named {
                problems.push(problem(
                    field,
                    format!("the required attribute `{attr}` is missing"),
                ));
            }
        }
        if !problems.is_empty() {
            return None;
        }
        let mut b = EventBuilderV10::new()
            .id(self.id.unwrap_or_default())
            .source(self.source.unwrap_or_default())
            .ty(self.ty.unwrap_or_default());
        if let Some(s) = self.subject {
            b = b.subject(s);
        }
        if let Some(t) = self.time {
            b = b.time(t);
        }
        for (k, v) in self.extensions {
            b = b.extension(&k, v);
        }
        let mut event = match b.build() {
            Ok(e) => e,
            Err(e) => {
                problems.push(problem(name("id"), format!("not a valid CloudEvent: {e}")));
                return None;
            }
        };
        if let Some((ct, data)) = data {
            event.set_data(ct, data);
        }
        if let Some(schema) = self.dataschema {
            event.set_dataschema(Some(schema));
        }
        Some(event)
    }
}

/// Checks a non-empty string attribute.
fn required_text(value: &str, field: &str, problems: &mut Vec<Problem>) -> Option<String> {
    if value.is_empty() {
        problems.push(problem(field, "must not be empty"));
        None
    } else {
        Some(value.to_string())
    }
}

fn parse_time(
    value: &str,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    match chrono::DateTime::parse_from_rfc3339(value) {
        Ok(t) => Some(t.with_timezone(&chrono::Utc)),
        Err(e) => {
            problems.push(problem(
                field,
                format!("`{value}` is not an RFC 3339 timestamp ({e}); e.g. 2026-01-31T12:00:00Z"),
            ));
            None
        }
    }
}

fn parse_url(value: &str, field: &str, problems: &mut Vec<Problem>) -> Option<url::Url> {
    match url::Url::parse(value) {
        Ok(u) => Some(u),
        Err(e) => {
            problems.push(problem(field, format!("`{value}` is not an absolute URI: {e}")));
            None
        }
    }
}

/// CloudEvents extension names: lower-case ASCII letters and digits.
fn valid_extension_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn check_spec_version(value: Option<&str>, field: &str, problems: &mut Vec<Problem>) {
    match value {
        Some("1.0") => {}
        Some(other) => problems.push(problem(
            field,
            format!("specversion `{other}` is not supported: send 1.0"),
        )),
        None => problems.push(problem(
            field,
            "the required attribute `specversion` is missing (send 1.0)",
        )),
    }
}

// ----------------------------------------------------------------------------------------------
// Binary mode
// ----------------------------------------------------------------------------------------------

/// Reads a binary-mode event: `ce-*` headers, `content-type`, body.
pub(crate) fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Event, Vec<Problem>> {
    let mut problems = Vec::new();
    if !headers.keys().any(|k| k.as_str().starts_with("ce-")) {
        return Err(vec![Problem {
            location: None,
            field: None,
            message: format!(
                "the request is not a CloudEvent: send the ce-specversion, ce-id, ce-source and ce-type \
                 headers with the data as the body (binary mode), or the event as JSON with \
                 content-type {STRUCTURED} (structured mode)"
            ),
        }]);
    }
    let mut attrs = Attrs::default();
    let mut spec = None;
    for (name, value) in headers {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let header = name.as_str();
        let value = match value.to_str().map(percent_decode) {
            Ok(Ok(v)) => v,
            _ => {
                problems.push(problem(
                    header,
                    "the value is not valid (percent-encoded) UTF-8 text",
                ));
                continue;
            }
        };
        match attr {
            "specversion" => spec = Some(value),
            "id" => attrs.id = required_text(&value, header, &mut problems),
            "source" => attrs.source = required_text(&value, header, &mut problems),
            "type" => attrs.ty = required_text(&value, header, &mut problems),
            "subject" => attrs.subject = Some(value),
            "time" => attrs.time = parse_time(&value, header, &mut problems),
            "dataschema" => attrs.dataschema = parse_url(&value, header, &mut problems),
            // In binary mode the content type travels in `content-type`.
            "datacontenttype" => {}
            ext if valid_extension_name(ext) => attrs
                .extensions
                .push((ext.to_string(), ExtensionValue::String(value))),
            ext => problems.push(problem(
                header,
                format!("`{ext}` is not a valid extension name: use lower-case letters and digits"),
            )),
        }
    }
    check_spec_version(spec.as_deref(), "ce-specversion", &mut problems);
    let data = if body.is_empty() {
        None
    } else {
        let ct = content_type(headers).unwrap_or_else(|| "application/octet-stream".to_string());
        Some((ct, Data::Binary(body.to_vec())))
    };
    let header_name = |attr: &str| format!("ce-{attr}");
    attrs.build(data, &mut problems, &header_name).ok_or(problems)
}

/// Decodes `%XX` escapes (the HTTP binding percent-encodes header values that are not printable
/// ASCII).
fn percent_decode(s: &str) -> Result<String, ()> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

// ----------------------------------------------------------------------------------------------
// Structured and batch mode
// ----------------------------------------------------------------------------------------------

/// Reads a structured-mode event: the body is one event in the JSON event format.
pub(crate) fn structured(body: &[u8]) -> Result<Event, Vec<Problem>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => from_json(obj, ""),
        Ok(other) => Err(vec![problem(
            "body",
            format!(
                "a structured-mode event is a JSON object, not {}",
                json_kind(&other)
            ),
        )]),
        Err(e) => Err(vec![problem("body", format!("the body is not valid JSON: {e}"))]),
    }
}

/// Reads a batch: the body is a JSON array of events in the JSON event format. Problems are
/// named by the event's index (`[2].type`).
pub(crate) fn batch(body: &[u8]) -> Result<Vec<Event>, Vec<Problem>> {
    let items = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(other) => {
            return Err(vec![problem(
                "body",
                format!("a batch is a JSON array of events, not {}", json_kind(&other)),
            )]);
        }
        Err(e) => return Err(vec![problem("body", format!("the body is not valid JSON: {e}"))]),
    };
    let mut events = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let prefix = format!("[{i}].");
        match item {
            Value::Object(obj) => match from_json(obj, &prefix) {
                Ok(e) => events.push(e),
                Err(p) => problems.extend(p),
            },
            other => problems.push(problem(
                format!("[{i}]"),
                format!("an event is a JSON object, not {}", json_kind(&other)),
            )),
        }
    }
    if problems.is_empty() {
        Ok(events)
    } else {
        Err(problems)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event in the JSON event format; `prefix` names it within a batch.
fn from_json(obj: Map<String, Value>, prefix: &str) -> Result<Event, Vec<Problem>> {
    let mut problems = Vec::new();
    let field = |name: &str| format!("{prefix}{name}");
    let mut attrs = Attrs::default();
    let mut spec = None;
    let mut content_type = None;
    let mut data = None;
    let mut data_base64 = None;
    for (key, value) in obj {
        let f = field(&key);
        let text = |problems: &mut Vec<Problem>| match &value {
            Value::String(s) => Some(s.clone()),
            other => {
                problems.push(problem(&f, format!("must be a string, not {}", json_kind(other))));
                None
            }
        };
        match key.as_str() {
            "specversion" => spec = text(&mut problems),
            "id" => attrs.id = text(&mut problems).and_then(|v| required_text(&v, &f, &mut problems)),
            "source" => attrs.source = text(&mut problems).and_then(|v| required_text(&v, &f, &mut problems)),
            "type" => attrs.ty = text(&mut problems).and_then(|v| required_text(&v, &f, &mut problems)),
            "subject" => attrs.subject = text(&mut problems),
            "time" => attrs.time = text(&mut problems).and_then(|v| parse_time(&v, &f, &mut problems)),
            "dataschema" => attrs.dataschema = text(&mut problems).and_then(|v| parse_url(&v, &f, &mut problems)),
            "datacontenttype" => content_type = text(&mut problems),
            "data" => data = Some(value),
            "data_base64" => data_base64 = text(&mut problems),
            ext if valid_extension_name(ext) => match value {
                Value::String(s) => attrs.extensions.push((key, ExtensionValue::String(s))),
                Value::Bool(b) => attrs.extensions.push((key, ExtensionValue::Boolean(b))),
                Value::Number(n) if n.as_i64().is_some() => {
                    attrs.extensions.push((key, ExtensionValue::Integer(n.as_i64().unwrap_or_default())))
                }
                other => problems.push(problem(
                    &f,
                    format!(
                        "extension `{ext}` must be a string, a boolean or an integer, not {}",
                        json_kind(&other)
                    ),
                )),
            },
            ext => problems.push(problem(
                &f,
                format!("`{ext}` is not a CloudEvents attribute nor a valid extension name (lower-case letters and digits)"),
            )),
        }
    }
    check_spec_version(spec.as_deref(), &field("specversion"), &mut problems);
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            problems.push(problem(
                field("data_base64"),
                "send either `data` or `data_base64`, not both",
            ));
            None
        }
        (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
            Ok(bytes) => Some((
                content_type.unwrap_or_else(|| "application/octet-stream".into()),
                Data::Binary(bytes),
            )),
            Err(e) => {
                problems.push(problem(field("data_base64"), format!("not valid base64: {e}")));
                None
            }
        },
        (Some(value), None) => {
            let ct = content_type.unwrap_or_else(|| "application/json".into());
            if is_json(&ct) {
                Some((ct, Data::Binary(value.to_string().into_bytes())))
            } else if let Value::String(s) = value {
                Some((ct, Data::String(s)))
            } else {
                problems.push(problem(
                    field("data"),
                    format!("data of content type `{ct}` must be a JSON string (or use data_base64)"),
                ));
                None
            }
        }
        (None, None) => None,
    };
    attrs.build(data, &mut problems, &field).ok_or(problems)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use ferry_event::AttributesReader;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn fields(problems: &[Problem]) -> Vec<String> {
        problems.iter().filter_map(|p| p.field.clone()).collect()
    }

    #[test]
    fn binary_mode_reads_headers_and_body() {
        let h = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "e1"),
            ("ce-source", "/acme"),
            ("ce-type", "com.acme.thing"),
            ("ce-subject", "caf%C3%A9"),
            ("ce-time", "2026-01-31T12:00:00Z"),
            ("ce-acmetenant", "t1"),
            ("content-type", "text/plain"),
        ]);
        let e = binary(&h, b"hello").unwrap();
        assert_eq!(
            (e.id(), e.source().as_str(), e.ty()),
            ("e1", "/acme", "com.acme.thing")
        );
        assert_eq!(e.subject(), Some("café"));
        assert_eq!(e.datacontenttype(), Some("text/plain"));
        assert_eq!(e.data(), Some(&Data::Binary(b"hello".to_vec())));
        assert_eq!(
            ferry_event::envelope::extension(&e, "acmetenant").as_deref(),
            Some("t1")
        );
        assert_eq!(e.time().map(|t| t.timestamp()), Some(1_769_860_800));
    }

    #[test]
    fn binary_mode_names_every_bad_header() {
        let h = headers(&[
            ("ce-specversion", "0.3"),
            ("ce-id", ""),
            ("ce-time", "yesterday"),
            ("ce-bad_name", "x"),
        ]);
        let f = fields(&binary(&h, b"").unwrap_err());
        for want in [
            "ce-specversion",
            "ce-id",
            "ce-time",
            "ce-bad_name",
            "ce-source",
            "ce-type",
        ] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
    }

    #[test]
    fn a_request_without_ce_headers_is_told_both_modes() {
        let p = binary(&HeaderMap::new(), b"{}").unwrap_err();
        assert!(
            p[0].message.contains("ce-specversion") && p[0].message.contains(STRUCTURED),
            "{p:?}"
        );
    }

    #[test]
    fn structured_mode_reads_json_data_and_extensions() {
        let body = serde_json::json!({
            "specversion": "1.0", "id": "e2", "source": "/x", "type": "com.acme.t",
            "data": {"a": 1}, "acmeflag": true, "acmecount": 3
        });
        let e = structured(body.to_string().as_bytes()).unwrap();
        let v: Value = ferry_event::decode(&e).unwrap();
        assert_eq!(v, serde_json::json!({"a": 1}));
        assert_eq!(e.datacontenttype(), Some("application/json"));
        assert_eq!(e.extension("acmecount"), Some(&ExtensionValue::Integer(3)));
    }

    #[test]
    fn structured_mode_reads_base64_data() {
        let body = serde_json::json!({
            "specversion": "1.0", "id": "e3", "source": "/x", "type": "t",
            "datacontenttype": "application/octet-stream", "data_base64": "AAEC"
        });
        let e = structured(body.to_string().as_bytes()).unwrap();
        assert_eq!(e.data(), Some(&Data::Binary(vec![0, 1, 2])));
    }

    #[test]
    fn structured_mode_names_every_problem() {
        let body = serde_json::json!({"specversion": "1.0", "id": 5, "type": "", "Bad": 1, "ext": [1]});
        let f = fields(&structured(body.to_string().as_bytes()).unwrap_err());
        for want in ["id", "type", "source", "Bad", "ext"] {
            assert!(f.iter().any(|x| x == want), "{want} not in {f:?}");
        }
        let p = structured(b"[1]").unwrap_err();
        assert!(p[0].message.contains("JSON object"), "{p:?}");
        let p = structured(b"{nope").unwrap_err();
        assert!(p[0].message.contains("not valid JSON"), "{p:?}");
    }

    #[test]
    fn batches_name_problems_by_index() {
        let body = serde_json::json!([
            {"specversion": "1.0", "id": "a", "source": "/x", "type": "t"},
            {"specversion": "1.0", "id": "b", "source": "/x"},
            7
        ]);
        let f = fields(&batch(body.to_string().as_bytes()).unwrap_err());
        assert_eq!(f, ["[1].type", "[2]"]);
    }

    #[test]
    fn modes_come_from_the_content_type() {
        let m = |ct: &str| mode(&headers(&[("content-type", ct)]));
        assert_eq!(m("application/cloudevents+json; charset=utf-8"), Mode::Structured);
        assert_eq!(m("Application/CloudEvents-Batch+JSON"), Mode::Batch);
        assert_eq!(m("application/json"), Mode::Binary);
        assert!(matches!(
            m("application/cloudevents+avro"),
            Mode::UnsupportedFormat(_)
        ));
    }
}
