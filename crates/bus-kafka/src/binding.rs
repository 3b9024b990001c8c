//! The CloudEvents Kafka protocol binding: how an [`Event`] becomes a Kafka message and back.
//!
//! ferry writes binary content mode: every context attribute is a `ce_<name>` header (UTF-8),
//! `datacontenttype` is the `content-type` header, the data is the message value and the
//! `partitionkey` extension is the message key. On receive it also accepts structured content
//! mode (`content-type: application/cloudevents+json`, the whole event as the JSON value).
//! docs/kafka-binding.md describes the mapping for producers outside ferry.

use chrono::SecondsFormat;
use ferry_event::Event;
use ferry_event::cloudevents::event::{AttributesWriter, Data, EventBuilderV10, ExtensionValue};
use ferry_event::cloudevents::{AttributesReader, EventBuilder as _};
use ferry_event::envelope::EXT_PARTITION_KEY;

/// Prefix of the headers that carry context attributes in binary mode.
pub const HEADER_PREFIX: &str = "ce_";
/// The header carrying `datacontenttype` in binary mode, or the structured-mode media type.
pub const CONTENT_TYPE: &str = "content-type";
/// Media type of structured content mode (JSON event format).
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The only `specversion` this binding reads.
pub const SPEC_VERSION: &str = "1.0";

/// A Kafka message without its topic: what a producer writes and a consumer reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub key: Option<Vec<u8>>,
    /// In order; a name may repeat (the first occurrence counts when reading).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub value: Option<Vec<u8>>,
}

impl Message {
    /// Bytes of key, headers and value.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        self.key.as_ref().map_or(0, Vec::len) + headers + self.value.as_ref().map_or(0, Vec::len)
    }

    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<Option<&[u8]>> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }
}

/// Why a Kafka message is not a CloudEvent this binding can read. Reading it again will never
/// work: such a message is dead-lettered with this text as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error(
        "not a CloudEvent: no `ce_specversion` header (binary mode) and `content-type` is not \
         `application/cloudevents+json` (structured mode)"
    )]
    NotACloudEvent,
    #[error("unsupported CloudEvents specversion {0:?}: only \"1.0\" is accepted")]
    SpecVersion(String),
    #[error("binary-mode CloudEvent lacks the required header `ce_{0}`")]
    Missing(&'static str),
    #[error("header `{0}` is not valid UTF-8")]
    NotUtf8(String),
    #[error("header `ce_{name}` has an invalid value {value:?}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: String,
    },
    #[error("structured-mode CloudEvent is not valid JSON event format: {0}")]
    Structured(String),
}

/// Encodes an event in binary content mode.
pub fn encode(event: &Event) -> Message {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = Vec::with_capacity(8);
    let mut put = |name: &str, value: String| {
        headers.push((format!("{HEADER_PREFIX}{name}"), Some(value.into_bytes())));
    };
    put("specversion", event.specversion().to_string());
    put("id", event.id().to_string());
    put("source", event.source().to_string());
    put("type", event.ty().to_string());
    if let Some(s) = event.subject() {
        put("subject", s.to_string());
    }
    if let Some(t) = event.time() {
        put("time", t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    if let Some(s) = event.dataschema() {
        put("dataschema", s.to_string());
    }
    let mut extensions: Vec<_> = event.iter_extensions().collect();
    extensions.sort_by_key(|(name, _)| *name);
    for (name, value) in extensions {
        put(name, extension_text(value));
    }
    if let Some(ct) = event.datacontenttype() {
        headers.push((CONTENT_TYPE.to_string(), Some(ct.as_bytes().to_vec())));
    }
    let key = event
        .extension(EXT_PARTITION_KEY)
        .map(|v| extension_text(v).into_bytes());
    let value = event.data().map(|d| match d {
        Data::Binary(b) => b.clone(),
        Data::String(s) => s.clone().into_bytes(),
        Data::Json(v) => v.to_string().into_bytes(),
    });
    Message { key, headers, value }
}

fn extension_text(v: &ExtensionValue) -> String {
    match v {
        ExtensionValue::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Decodes a message in binary or structured content mode.
pub fn decode(msg: &Message) -> Result<Event, BindingError> {
    let content_type = text(msg, CONTENT_TYPE)?;
    let structured = content_type.as_deref().is_some_and(|ct| {
        ct.len() >= STRUCTURED.len() && ct[..STRUCTURED.len()].eq_ignore_ascii_case(STRUCTURED)
    });
    if structured && msg.header("ce_specversion").is_none() {
        return decode_structured(msg);
    }
    decode_binary(msg, content_type)
}

fn text(msg: &Message, name: &str) -> Result<Option<String>, BindingError> {
    match msg.header(name) {
        None | Some(None) => Ok(None),
        Some(Some(bytes)) => String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| BindingError::NotUtf8(name.to_string())),
    }
}

fn decode_structured(msg: &Message) -> Result<Event, BindingError> {
    let value = msg.value.as_deref().unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| BindingError::Structured(e.to_string()))?;
    match json.get("specversion") {
        Some(serde_json::Value::String(v)) if v == SPEC_VERSION => {}
        Some(serde_json::Value::String(v)) => return Err(BindingError::SpecVersion(v.clone())),
        _ => {
            return Err(BindingError::Structured(
                "the `specversion` member is missing or not a string".into(),
            ));
        }
    }
    let mut event: Event =
        serde_json::from_value(json).map_err(|e| BindingError::Structured(e.to_string()))?;
    key_as_partition_key(msg, &mut event)?;
    Ok(event)
}

fn decode_binary(msg: &Message, content_type: Option<String>) -> Result<Event, BindingError> {
    let spec = text(msg, "ce_specversion")?.ok_or(BindingError::NotACloudEvent)?;
    if spec != SPEC_VERSION {
        return Err(BindingError::SpecVersion(spec));
    }
    let required = |name: &'static str| -> Result<String, BindingError> {
        match text(msg, &format!("{HEADER_PREFIX}{name}"))? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(BindingError::Missing(name)),
        }
    };
    let mut builder = EventBuilderV10::new()
        .id(required("id")?)
        .source(required("source")?)
        .ty(required("type")?);
    let mut dataschema = None;
    let mut datacontenttype = content_type;
    for (name, _) in &msg.headers {
        let Some(attr) = name.strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let Some(value) = text(msg, name)? else {
            continue;
        };
        match attr {
            "specversion" | "id" | "source" | "type" => {}
            "subject" => builder = builder.subject(value),
            "time" => {
                let t = chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| BindingError::Invalid {
                    name: "time",
                    value: value.clone(),
                    why: format!("not an RFC 3339 timestamp ({e})"),
                })?;
                builder = builder.time(t.with_timezone(&chrono::Utc));
            }
            "dataschema" => dataschema = Some(value),
            "datacontenttype" => {
                datacontenttype.get_or_insert(value);
            }
            ext => builder = builder.extension(ext, value),
        }
    }
    let mut event = builder.build().map_err(|e| BindingError::Invalid {
        name: "source",
        value: String::new(),
        why: e.to_string(),
    })?;
    if let Some(schema) = dataschema {
        let url = ferry_event::cloudevents::event::TryIntoUrl::into_url(schema.as_str()).map_err(|e| {
            BindingError::Invalid {
                name: "dataschema",
                value: schema.clone(),
                why: format!("not an absolute URI ({e})"),
            }
        })?;
        event.set_dataschema(Some(url));
    }
    if let Some(value) = &msg.value {
        match datacontenttype {
            Some(ct) => {
                event.set_data(ct, Data::Binary(value.clone()));
            }
            None => {
                event.set_data_unchecked(Data::Binary(value.clone()));
            }
        }
    } else if let Some(ct) = datacontenttype {
        event.set_datacontenttype(Some(ct));
    }
    key_as_partition_key(msg, &mut event)?;
    Ok(event)
}

/// A message key with no `partitionkey` attribute becomes that attribute, so that an outside
/// producer that keys its messages keeps that order through ferry.
fn key_as_partition_key(msg: &Message, event: &mut Event) -> Result<(), BindingError> {
    if event.extension(EXT_PARTITION_KEY).is_some() {
        return Ok(());
    }
    if let Some(key) = &msg.key {
        let key =
            String::from_utf8(key.clone()).map_err(|_| BindingError::NotUtf8("the message key".into()))?;
        event.set_extension(EXT_PARTITION_KEY, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ferry_event::{EventBuilder, kind};

    use super::*;

    fn sample() -> Event {
        EventBuilder::new("ferry/test/1").dispatch(
            kind::TASK_DISPATCHED,
            "job-1",
            "task-2",
            "attempt-3",
            "local",
            &serde_json::json!({"a": [1, "é"]}),
        )
    }

    fn header(msg: &Message, name: &str) -> String {
        String::from_utf8(msg.header(name).flatten().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn binary_mode_puts_attributes_in_ce_headers_and_the_job_in_the_key() {
        let e = sample();
        let msg = encode(&e);
        assert_eq!(msg.key.as_deref(), Some(&b"job-1"[..]));
        assert_eq!(header(&msg, "ce_specversion"), "1.0");
        assert_eq!(header(&msg, "ce_id"), e.id());
        assert_eq!(header(&msg, "ce_type"), kind::TASK_DISPATCHED);
        assert_eq!(header(&msg, "ce_source"), "ferry/test/1");
        assert_eq!(header(&msg, "ce_subject"), "job-1/task-2");
        assert_eq!(header(&msg, "ce_ferrybackend"), "local");
        assert_eq!(header(&msg, "ce_partitionkey"), "job-1");
        assert_eq!(header(&msg, "content-type"), "application/json");
        let t = header(&msg, "ce_time");
        assert!(chrono::DateTime::parse_from_rfc3339(&t).is_ok(), "{t}");
        let v: serde_json::Value = serde_json::from_slice(msg.value.as_deref().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, "é"]}));
    }

    #[test]
    fn binary_mode_round_trips() {
        let e = sample();
        let back = decode(&encode(&e)).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn structured_mode_is_read() {
        let e = sample();
        let msg = Message {
            key: None,
            headers: vec![(
                "content-type".into(),
                Some(b"application/cloudevents+json; charset=utf-8".to_vec()),
            )],
            value: Some(serde_json::to_vec(&e).unwrap()),
        };
        let back = decode(&msg).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.ty(), e.ty());
        assert_eq!(back.extension("ferryattempt"), e.extension("ferryattempt"));
        let v: serde_json::Value = ferry_event::decode(&back).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1, "é"]}));
    }

    #[test]
    fn a_message_key_becomes_the_partition_key_when_absent() {
        let mut msg = encode(&sample());
        msg.headers.retain(|(n, _)| n != "ce_partitionkey");
        msg.key = Some(b"outside-job".to_vec());
        let e = decode(&msg).unwrap();
        assert_eq!(
            e.extension("partitionkey").map(|v| v.to_string()).as_deref(),
            Some("outside-job")
        );
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let without = |name: &str| {
            let mut msg = encode(&sample());
            msg.headers.retain(|(n, _)| n != name);
            decode(&msg).unwrap_err()
        };
        assert_eq!(without("ce_specversion"), BindingError::NotACloudEvent);
        assert_eq!(without("ce_id"), BindingError::Missing("id"));
        assert_eq!(without("ce_source"), BindingError::Missing("source"));
        assert_eq!(without("ce_type"), BindingError::Missing("type"));

        let mut msg = encode(&sample());
        msg.headers[0].1 = Some(b"0.3".to_vec());
        assert_eq!(decode(&msg).unwrap_err(), BindingError::SpecVersion("0.3".into()));

        let mut msg = encode(&sample());
        for (n, v) in &mut msg.headers {
            if n == "ce_time" {
                *v = Some(b"yesterday".to_vec());
            }
        }
        let err = decode(&msg).unwrap_err().to_string();
        assert!(err.contains("ce_time") && err.contains("RFC 3339"), "{err}");

        let mut msg = encode(&sample());
        msg.headers[1].1 = Some(vec![0xff, 0xfe]);
        assert_eq!(decode(&msg).unwrap_err(), BindingError::NotUtf8("ce_id".into()));

        let garbage = Message {
            key: None,
            headers: vec![],
            value: Some(b"hello".to_vec()),
        };
        assert_eq!(decode(&garbage).unwrap_err(), BindingError::NotACloudEvent);

        let bad_json = Message {
            key: None,
            headers: vec![("content-type".into(), Some(STRUCTURED.as_bytes().to_vec()))],
            value: Some(b"{not json".to_vec()),
        };
        assert!(matches!(
            decode(&bad_json).unwrap_err(),
            BindingError::Structured(_)
        ));
        let not_an_event = Message {
            value: Some(br#"{"specversion":"1.0","id":"x"}"#.to_vec()),
            ..bad_json.clone()
        };
        assert!(matches!(
            decode(&not_an_event).unwrap_err(),
            BindingError::Structured(_)
        ));
        let old = Message {
            value: Some(br#"{"specversion":"0.3","id":"x","type":"t","source":"s"}"#.to_vec()),
            ..bad_json
        };
        assert_eq!(decode(&old).unwrap_err(), BindingError::SpecVersion("0.3".into()));
    }
}
