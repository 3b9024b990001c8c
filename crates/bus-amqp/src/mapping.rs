//! CloudEvents on AMQP 0-9-1 messages (see `docs/amqp-binding.md`).
//!
//! Sending uses binary content mode: the body is the event's data, the `content_type` property
//! its `datacontenttype`, `message_id` its id, `timestamp` its time in seconds, and every other
//! attribute and extension a `cloudEvents:NAME` header (the time in full RFC 3339). Receiving
//! also accepts structured content mode: `content_type: application/cloudevents+json` and the
//! whole event as the JSON body. Headers spelled `cloudEvents_NAME` (the prefix some JMS-based
//! clients use) are read too.

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_event::Event;
use ferry_event::cloudevents::Data;
use ferry_event::cloudevents::event::{AttributeValue, SpecVersion};
use ferry_event::cloudevents::message::{
    self, BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer,
    StructuredDeserializer, StructuredSerializer,
};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Prefix of the headers that carry CloudEvents attributes and extensions.
pub const HEADER_PREFIX: &str = "cloudEvents:";
/// The alternative prefix accepted on receive.
const HEADER_PREFIX_ALT: &str = "cloudEvents_";
/// Content type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Content type of a batch message: a JSON array of events in the CloudEvents JSON format.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";
/// AMQP delivery mode of a message the broker writes to disk.
pub const PERSISTENT: u8 = 2;

/// Why a message is not a CloudEvent ferry can read, or an event cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error(
        "not a CloudEvent: the message has neither a `cloudEvents:specversion` header (binary \
         mode) nor content type `application/cloudevents+json` (structured mode)"
    )]
    NotACloudEvent,
    #[error(
        "header `{name}` holds an AMQP {ty} value; CloudEvents attributes must be strings, \
         booleans, integers or (for `time`) timestamps"
    )]
    UnsupportedHeader { name: String, ty: String },
    #[error("header `{name}` is not valid UTF-8")]
    NotUtf8 { name: String },
    #[error("invalid CloudEvent: {0}")]
    Invalid(#[from] message::Error),
    #[error("event {id}: attribute name `{name}` is too long for an AMQP header name")]
    NameTooLong { id: String, name: String },
    #[error(
        "event {id}: the `datacontenttype` {value:?} is longer than the 255 bytes an AMQP \
         property holds"
    )]
    TooLong { id: String, value: String },
    #[error("a batch message (content type {BATCH_CONTENT_TYPE}) must hold a JSON array of events: {0}")]
    NotABatch(serde_json::Error),
    #[error("event {index} of the batch is not a CloudEvent in the JSON format: {error}")]
    BadBatchEvent { index: usize, error: serde_json::Error },
    #[error("event {id} cannot be written in the JSON format: {error}")]
    NotJson { id: String, error: serde_json::Error },
}

/// An AMQP message: its properties and body.
#[derive(Debug, Clone)]
pub struct AmqpMessage {
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Maps an event to a persistent binary-mode message.
pub fn to_amqp(event: &Event) -> Result<AmqpMessage, MappingError> {
    let writer = BinaryDeserializer::deserialize_binary(event.clone(), Writer::default())?;
    let Writer {
        mut properties,
        headers,
        body,
        error,
    } = writer;
    if let Some(mut e) = error {
        if let MappingError::TooLong { id, .. } | MappingError::NameTooLong { id, .. } = &mut e {
            *id = ferry_event::AttributesReader::id(event).to_string();
        }
        return Err(e);
    }
    properties = properties.with_delivery_mode(PERSISTENT).with_headers(headers);
    Ok(AmqpMessage {
        properties,
        body: body.unwrap_or_default(),
    })
}

/// An event in the CloudEvents JSON format, ready to join a batch message. Data that is JSON
/// (ferry's payloads are) goes in as `data`, as it is; other data as `data_base64`.
pub fn to_json(event: &Event) -> Result<Vec<u8>, MappingError> {
    let not_json = |error| MappingError::NotJson {
        id: ferry_event::AttributesReader::id(event).to_string(),
        error,
    };
    let json_data = match event.data() {
        Some(Data::Binary(bytes))
            if is_json(ferry_event::AttributesReader::datacontenttype(event))
                && serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok() =>
        {
            bytes.as_slice()
        }
        // The CloudEvents SDK writes the rest: JSON values, strings, other binary data.
        _ => return serde_json::to_vec(event).map_err(not_json),
    };
    let mut out = Vec::with_capacity(256 + json_data.len());
    out.push(b'{');
    for (name, value) in event.iter() {
        serde_json::to_writer(&mut out, name).map_err(not_json)?;
        out.push(b':');
        match value {
            AttributeValue::Boolean(b) => serde_json::to_writer(&mut out, b),
            AttributeValue::Integer(i) => serde_json::to_writer(&mut out, i),
            AttributeValue::Time(t) => {
                serde_json::to_writer(&mut out, &t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }
            other => serde_json::to_writer(&mut out, &other.to_string()),
        }
        .map_err(not_json)?;
        out.push(b',');
    }
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(json_data);
    out.push(b'}');
    Ok(out)
}

/// Whether a `datacontenttype` says JSON (`application/json`, `…+json`, parameters allowed).
fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// A persistent batch message of events already in the JSON format ([`to_json`]); its
/// `message_id` is `id`, when given (the first event's).
pub fn to_amqp_batch<'a>(id: Option<&str>, events: impl ExactSizeIterator<Item = &'a [u8]>) -> AmqpMessage {
    let mut body = Vec::with_capacity(2 + events.len() * 1024);
    body.push(b'[');
    for (i, json) in events.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(json);
    }
    body.push(b']');
    let mut properties = BasicProperties::default()
        .with_content_type(ShortString::from(BATCH_CONTENT_TYPE))
        .with_delivery_mode(PERSISTENT);
    if let Some(id) = id.and_then(|id| ShortString::try_new(id.to_string()).ok()) {
        properties = properties.with_message_id(id);
    }
    AmqpMessage { properties, body }
}

/// Whether a message is a batch message ([`BATCH_CONTENT_TYPE`]).
pub fn is_batch(properties: &BasicProperties) -> bool {
    properties
        .content_type()
        .as_ref()
        .is_some_and(|ct| ct.as_str().starts_with(BATCH_CONTENT_TYPE))
}

/// One event of a batch message: where its JSON is in the body, and the event or why it is
/// not one.
pub type BatchItem = (std::ops::Range<usize>, Result<Event, MappingError>);

/// Reads the events of a batch message, each on its own so that one unreadable event leaves
/// the others readable. The whole message fails only when it is not a JSON array.
pub fn from_amqp_batch(body: &[u8]) -> Result<Vec<BatchItem>, MappingError> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(MappingError::NotABatch)?;
    let base = body.as_ptr() as usize;
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let start = raw.get().as_ptr() as usize - base;
            let event = serde_json::from_str::<Event>(raw.get())
                .map_err(|error| MappingError::BadBatchEvent { index, error });
            (start..start + raw.get().len(), event)
        })
        .collect())
}

/// Reads an event from a binary- or structured-mode message.
pub fn from_amqp(properties: &BasicProperties, body: &[u8]) -> Result<Event, MappingError> {
    let reader = Reader {
        properties,
        body,
        bad_header: None,
    };
    let encoding = reader.encoding();
    let result = match encoding {
        Encoding::STRUCTURED => StructuredDeserializer::into_event(reader),
        Encoding::BINARY => {
            let mut bad = None;
            let r = Reader {
                bad_header: Some(&mut bad),
                ..reader
            };
            let event = BinaryDeserializer::into_event(r);
            if let Some(e) = bad {
                return Err(e);
            }
            event
        }
        _ => return Err(MappingError::NotACloudEvent),
    };
    Ok(result?)
}

#[derive(Default)]
struct Writer {
    properties: BasicProperties,
    headers: FieldTable,
    body: Option<Vec<u8>>,
    error: Option<MappingError>,
}

fn header_value(value: MessageAttributeValue) -> AMQPValue {
    match value {
        MessageAttributeValue::Boolean(b) => AMQPValue::Boolean(b),
        MessageAttributeValue::Integer(i) => AMQPValue::LongLongInt(i),
        MessageAttributeValue::DateTime(t) => {
            AMQPValue::LongString(t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into())
        }
        other => AMQPValue::LongString(other.to_string().into()),
    }
}

impl Writer {
    fn header(&mut self, name: &str, value: AMQPValue) {
        // The spec limits attribute and extension names to 20 letters and digits; a longer
        // name cannot be an AMQP header name (255 bytes).
        match ShortString::try_new(format!("{HEADER_PREFIX}{name}")) {
            Ok(key) => {
                self.headers.insert(key, value);
            }
            Err(_) => {
                self.error.get_or_insert(MappingError::NameTooLong {
                    id: String::new(),
                    name: name.to_string(),
                });
            }
        }
    }
}

impl BinarySerializer<Writer> for Writer {
    fn set_spec_version(mut self, sv: SpecVersion) -> message::Result<Self> {
        self.header("specversion", AMQPValue::LongString(sv.to_string().into()));
        Ok(self)
    }

    fn set_attribute(mut self, name: &str, value: MessageAttributeValue) -> message::Result<Self> {
        match (name, &value) {
            ("datacontenttype", v) => {
                let v = v.to_string();
                match ShortString::try_new(v.clone()) {
                    Ok(s) => self.properties = self.properties.with_content_type(s),
                    Err(_) => {
                        self.error.get_or_insert(MappingError::TooLong {
                            id: String::new(),
                            value: v,
                        });
                    }
                }
                return Ok(self);
            }
            ("id", v) => {
                // An id longer than AMQP's short string still travels in the header.
                if let Ok(s) = ShortString::try_new(v.to_string()) {
                    self.properties = self.properties.with_message_id(s);
                }
            }
            ("time", MessageAttributeValue::DateTime(t)) => {
                if let Ok(secs) = u64::try_from(t.timestamp()) {
                    self.properties = self.properties.with_timestamp(secs);
                }
            }
            _ => {}
        }
        self.header(name, header_value(value));
        Ok(self)
    }

    fn set_extension(mut self, name: &str, value: MessageAttributeValue) -> message::Result<Self> {
        self.header(name, header_value(value));
        Ok(self)
    }

    fn end_with_data(mut self, bytes: Vec<u8>) -> message::Result<Self> {
        self.body = Some(bytes);
        Ok(self)
    }

    fn end(self) -> message::Result<Self> {
        Ok(self)
    }
}

struct Reader<'a> {
    properties: &'a BasicProperties,
    body: &'a [u8],
    /// Where a header that cannot be an attribute is reported, more precisely than the
    /// CloudEvents SDK's error type allows.
    bad_header: Option<&'a mut Option<MappingError>>,
}

impl<'a> Reader<'a> {
    /// The CloudEvents headers: full header name, attribute name, value.
    fn ce_headers(&self) -> Vec<(&'a str, &'a str, &'a AMQPValue)> {
        let properties: &'a BasicProperties = self.properties;
        let Some(headers) = properties.headers() else {
            return Vec::new();
        };
        headers
            .inner()
            .iter()
            .filter_map(|(k, v)| {
                let full = k.as_str();
                let name = full
                    .strip_prefix(HEADER_PREFIX)
                    .or_else(|| full.strip_prefix(HEADER_PREFIX_ALT))?;
                Some((full, name, v))
            })
            .collect()
    }

    fn content_type(&self) -> Option<&'a str> {
        let properties: &'a BasicProperties = self.properties;
        properties.content_type().as_ref().map(|s| s.as_str())
    }
}

fn attribute_value(full: &str, value: &AMQPValue) -> Result<MessageAttributeValue, MappingError> {
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec())
            .map(MessageAttributeValue::String)
            .map_err(|_| MappingError::NotUtf8 {
                name: full.to_string(),
            })
    };
    Ok(match value {
        AMQPValue::LongString(s) => text(s.as_bytes())?,
        AMQPValue::ShortString(s) => MessageAttributeValue::String(s.to_string()),
        AMQPValue::Boolean(b) => MessageAttributeValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::ShortShortUInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::ShortInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::ShortUInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::LongInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::LongUInt(i) => MessageAttributeValue::Integer((*i).into()),
        AMQPValue::LongLongInt(i) => MessageAttributeValue::Integer(*i),
        AMQPValue::Timestamp(secs) => match timestamp(*secs) {
            Some(t) => MessageAttributeValue::DateTime(t),
            None => return Err(unsupported(full, value)),
        },
        AMQPValue::ByteArray(b) => text(b.as_slice())?,
        other => return Err(unsupported(full, other)),
    })
}

fn unsupported(full: &str, value: &AMQPValue) -> MappingError {
    MappingError::UnsupportedHeader {
        name: full.to_string(),
        ty: value.get_type().to_string(),
    }
}

fn timestamp(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
}

impl BinaryDeserializer for Reader<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(self, mut visitor: V) -> message::Result<R> {
        let fail = |slot: Option<&mut Option<MappingError>>, e: MappingError| {
            let text = e.to_string();
            if let Some(slot) = slot {
                *slot = Some(e);
            }
            Err(message::Error::Other { source: text.into() })
        };
        let headers = self.ce_headers();
        let Some(&(full, _, sv)) = headers.iter().find(|(_, n, _)| *n == "specversion") else {
            return Err(message::Error::WrongEncoding {});
        };
        let sv = match attribute_value(full, sv) {
            Ok(v) => v.to_string(),
            Err(e) => return fail(self.bad_header, e),
        };
        let spec_version = SpecVersion::try_from(sv.as_str())?;
        let attributes = spec_version.attribute_names();
        visitor = visitor.set_spec_version(spec_version)?;

        let content_type = self.content_type();
        if let Some(ct) = content_type {
            visitor = visitor.set_attribute("datacontenttype", MessageAttributeValue::String(ct.into()))?;
        }
        let mut has_time = false;
        for &(full, name, value) in &headers {
            if name == "specversion" || (name == "datacontenttype" && content_type.is_some()) {
                continue;
            }
            let value = match attribute_value(full, value) {
                Ok(v) => v,
                Err(e) => return fail(self.bad_header, e),
            };
            if attributes.contains(&name) {
                has_time |= name == "time";
                visitor = visitor.set_attribute(name, value)?;
            } else {
                visitor = visitor.set_extension(name, value)?;
            }
        }
        if !has_time && let Some(t) = self.properties.timestamp().and_then(timestamp) {
            visitor = visitor.set_attribute("time", MessageAttributeValue::DateTime(t))?;
        }
        if self.body.is_empty() && content_type.is_none() {
            visitor.end()
        } else {
            visitor.end_with_data(self.body.to_vec())
        }
    }
}

impl StructuredDeserializer for Reader<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(self, visitor: V) -> message::Result<R> {
        visitor.set_structured_event(self.body.to_vec())
    }
}

impl MessageDeserializer for Reader<'_> {
    fn encoding(&self) -> Encoding {
        let structured = self
            .content_type()
            .is_some_and(|ct| ct.starts_with(STRUCTURED_CONTENT_TYPE));
        if structured {
            Encoding::STRUCTURED
        } else if self
            .ce_headers()
            .iter()
            .any(|(_, name, _)| *name == "specversion")
        {
            Encoding::BINARY
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// The value of a string header, if the message has it.
pub fn string_header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// `properties` with `name` set to a string header.
pub fn with_string_header(
    properties: BasicProperties,
    name: &str,
    value: impl Into<Vec<u8>>,
) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    properties.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_event::cloudevents::event::ExtensionValue;
    use ferry_event::{AttributesReader, EventBuilder, kind};

    fn sample() -> Event {
        EventBuilder::new("ferry/test/1").dispatch(
            kind::TASK_DISPATCHED,
            "job-1",
            "task-1",
            "attempt-1",
            "local",
            &serde_json::json!({"text": "héllo", "n": [1, 2.5, null]}),
        )
    }

    fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    fn binary(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers(pairs))
    }

    fn assert_same(got: &Event, sent: &Event) {
        assert_eq!(got.id(), sent.id());
        assert_eq!(got.ty(), sent.ty());
        assert_eq!(got.source(), sent.source());
        assert_eq!(got.subject(), sent.subject());
        assert_eq!(got.time(), sent.time());
        assert_eq!(got.datacontenttype(), sent.datacontenttype());
        let exts = |e: &Event| {
            let mut v: Vec<(String, String)> = e
                .iter_extensions()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(exts(got), exts(sent));
        let (a, b): (serde_json::Value, serde_json::Value) = (
            ferry_event::decode(got).unwrap(),
            ferry_event::decode(sent).unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn binary_mode_round_trips_every_attribute_and_extension() {
        let mut sent = sample();
        sent.set_extension("ferryattempt", ExtensionValue::Integer(3));
        sent.set_extension("flag", ExtensionValue::Boolean(true));
        let msg = to_amqp(&sent).unwrap();
        let p = &msg.properties;
        assert_eq!(*p.delivery_mode(), Some(PERSISTENT));
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some(sent.id()));
        let time = sent.time().unwrap();
        assert_eq!(*p.timestamp(), Some(time.timestamp() as u64));
        assert_eq!(
            string_header(p, "cloudEvents:time").unwrap(),
            time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
        assert_eq!(string_header(p, "cloudEvents:specversion").unwrap(), "1.0");
        assert_eq!(string_header(p, "cloudEvents:ferrybackend").unwrap(), "local");
        let table = p.headers().as_ref().unwrap().inner();
        assert_eq!(
            table.get("cloudEvents:ferryattempt"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert!(!table.contains_key("cloudEvents:datacontenttype"));
        let got = from_amqp(p, &msg.body).unwrap();
        assert_same(&got, &sent);
        assert_eq!(got.extension("ferryattempt"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(got.extension("flag"), Some(&ExtensionValue::Boolean(true)));
    }

    #[test]
    fn structured_mode_is_read() {
        let sent = sample();
        let body = serde_json::to_vec(&sent).unwrap();
        let p = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into());
        let got = from_amqp(&p, &body).unwrap();
        assert_same(&got, &sent);
    }

    #[test]
    fn a_hand_made_binary_message_is_read_and_time_falls_back_to_the_timestamp() {
        let p = binary(&[
            ("cloudEvents:specversion", s("1.0")),
            ("cloudEvents:id", s("e-1")),
            ("cloudEvents:source", s("s3://landing")),
            ("cloudEvents_type", AMQPValue::ShortString("com.acme.x".into())),
            ("cloudEvents:partitionkey", s("job-7")),
            ("unrelated", s("ignored")),
        ])
        .with_timestamp(1_700_000_000);
        let e = from_amqp(&p, b"{\"a\":1}").unwrap();
        assert_eq!(e.id(), "e-1");
        assert_eq!(e.ty(), "com.acme.x");
        assert_eq!(e.source().to_string(), "s3://landing");
        assert_eq!(e.time().unwrap().timestamp(), 1_700_000_000);
        assert_eq!(
            ferry_event::envelope::extension(&e, "partitionkey").as_deref(),
            Some("job-7")
        );
        assert!(e.extension("unrelated").is_none());
        let v: serde_json::Value = ferry_event::decode(&e).unwrap();
        assert_eq!(v["a"], 1);
    }

    fn err(p: &BasicProperties, body: &[u8]) -> String {
        from_amqp(p, body).unwrap_err().to_string()
    }

    #[test]
    fn a_message_without_cloudevents_markers_is_refused() {
        let e = err(
            &BasicProperties::default().with_content_type("text/plain".into()),
            b"hello",
        );
        assert!(e.contains("not a CloudEvent"), "{e}");
    }

    #[test]
    fn missing_required_attributes_are_refused() {
        let p = binary(&[
            ("cloudEvents:specversion", s("1.0")),
            ("cloudEvents:source", s("x")),
            ("cloudEvents:type", s("t")),
        ]);
        let e = err(&p, b"{}");
        assert!(e.contains("id"), "{e}");
    }

    #[test]
    fn an_unknown_specversion_is_refused() {
        let p = binary(&[
            ("cloudEvents:specversion", s("2.7")),
            ("cloudEvents:id", s("1")),
            ("cloudEvents:source", s("x")),
            ("cloudEvents:type", s("t")),
        ]);
        let e = err(&p, b"{}");
        assert!(e.contains("2.7"), "{e}");
    }

    #[test]
    fn invalid_json_in_structured_mode_is_refused() {
        let p = BasicProperties::default().with_content_type(STRUCTURED_CONTENT_TYPE.into());
        let e = err(&p, b"{\"specversion\": \"1.0\", ");
        assert!(e.contains("json"), "{e}");
        let e = err(&p, br#"{"specversion": "1.0", "id": "1", "type": "t"}"#);
        assert!(e.contains("source"), "{e}");
    }

    #[test]
    fn headers_of_unusable_types_are_refused_with_their_name() {
        let p = binary(&[
            ("cloudEvents:specversion", s("1.0")),
            ("cloudEvents:id", s("1")),
            ("cloudEvents:source", s("x")),
            ("cloudEvents:type", s("t")),
            ("cloudEvents:weird", AMQPValue::Double(1.5)),
        ]);
        let e = err(&p, b"{}");
        assert!(e.contains("cloudEvents:weird"), "{e}");
        let p = binary(&[
            ("cloudEvents:specversion", s("1.0")),
            ("cloudEvents:id", AMQPValue::LongString(vec![0xff, 0xfe].into())),
            ("cloudEvents:source", s("x")),
            ("cloudEvents:type", s("t")),
        ]);
        let e = err(&p, b"{}");
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn a_bad_time_is_refused() {
        let p = binary(&[
            ("cloudEvents:specversion", s("1.0")),
            ("cloudEvents:id", s("1")),
            ("cloudEvents:source", s("x")),
            ("cloudEvents:type", s("t")),
            ("cloudEvents:time", s("yesterday")),
        ]);
        let e = err(&p, b"{}");
        assert!(e.contains("time"), "{e}");
    }
}
