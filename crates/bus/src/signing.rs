//! Authentic events: every service signs what it publishes and checks what it consumes.
//!
//! Anyone who can publish on the broker could otherwise forge a `task.finished` (a job succeeds
//! with made-up outputs while the real process runs on) or a `task.dispatched` (any command
//! runs). [`Signed`] wraps any [`Bus`]:
//!
//! - publishing, it adds the extension attribute `ferrysig` = `v1:KEYID:SIGNATURE` to each event:
//!   HMAC-SHA256, under the first key of the deployment's [`Keyring`], over a canonical encoding
//!   of the event's attributes (`specversion`, `id`, `source`, `type`, `subject`, `time` to the
//!   millisecond, `datacontenttype`, `dataschema`, every extension but `ferrysig`) and its data;
//! - consuming from any topic but `intake`, it dead-letters an event that is unsigned, signed
//!   with a key the keyring lacks, or whose signature does not match, with the reason, and
//!   never hands it to the service. Intake stays open: outside systems publish submissions and
//!   trigger events there unsigned, and the planner checks them as requests. A delivery tells
//!   whether it was verified and so whether its `source` can be believed
//!   ([`Delivery::verified_source`]).
//!
//! A replayed signed event (an old one published again as it was) passes the check: it is
//! authentic. Consumers are idempotent by event id (the scheduler's inbox, the launcher's
//! attempt ids, the log store's `(attempt, seq)`), within what each remembers: a launcher
//! forgets finished attempts after a day, and another instance never knew them
//! (`docs/security.md`, "Replays"). Events are
//! not refused for an old `time`: after a long broker outage, redeliveries of events published
//! hours before are legitimate and must be applied.
//!
//! Keys rotate without downtime: every key of the ring is accepted, the first one signs. See
//! `docs/security.md` for the steps.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry_event::cloudevents::event::ExtensionValue;
use ferry_event::cloudevents::{AttributesReader, Data};
use ferry_event::{Event, Topic};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Bus, Consumer, Delivery, Error, Result, Subscribe, Subscription};

/// The extension attribute carrying an event's signature.
pub use ferry_event::envelope::EXT_SIGNATURE;
/// The version of the signature scheme, the first part of [`EXT_SIGNATURE`]'s value.
const VERSION: &str = "v1";
/// Fewest secret bytes a key may have.
pub const MIN_SECRET_BYTES: usize = 32;
/// How many random bytes [`Keyring::generate`] gives a new key.
const NEW_SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a key file cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the bus key file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{origin}, line {line}: {message}")]
    Line {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin} holds no key: add a line `KEY-ID SECRET`, or create the file with `ferry key create`")]
    Empty { origin: String },
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::Config(e.to_string())
    }
}

/// Why an event's signature was not accepted. Its text is the dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the event is not signed (no `{EXT_SIGNATURE}` attribute): ferry's services accept \
         unsigned events only on the intake topic"
    )]
    Missing,
    #[error("the `{EXT_SIGNATURE}` attribute {0:?} is not `{VERSION}:KEY-ID:SIGNATURE`")]
    Malformed(String),
    #[error("the event is signed with key {key:?}, which is not in this service's keyring (it has {known})")]
    UnknownKey { key: String, known: String },
    #[error(
        "the signature (key {key:?}) does not match the event: it was altered after signing, \
         or signed with another secret under the same key id"
    )]
    Mismatch { key: String },
}

/// One signing key: an id that travels with each signature and a secret that never does.
#[derive(Clone)]
struct Key {
    id: String,
    mac: HmacSha256,
}

/// The keys of a deployment: the first signs, every one verifies.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Keyring").field("keys", &self.ids()).finish()
    }
}

/// Whether a key id is usable: it is written into every signature and the key file.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl Keyring {
    /// Reads a key file: one key a line, `KEY-ID SECRET` with the secret in base64 (at least
    /// [`MIN_SECRET_BYTES`] bytes); empty lines and lines starting with `#` are ignored. The
    /// first key signs.
    pub fn parse(text: &str, origin: &str) -> Result<Keyring, KeyError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| KeyError::Line {
                origin: origin.to_string(),
                line: i + 1,
                message,
            };
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [id, secret] = parts[..] else {
                return Err(bad("expected `KEY-ID SECRET` (two words)".into()));
            };
            if !valid_id(id) {
                return Err(bad(format!(
                    "key id {id:?} is not valid: use 1 to 64 letters, digits, `-`, `_` or `.`"
                )));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(bad(format!("key id {id:?} appears twice")));
            }
            let secret = STANDARD
                .decode(secret)
                .map_err(|e| bad(format!("the secret of key {id:?} is not base64: {e}")))?;
            if secret.len() < MIN_SECRET_BYTES {
                return Err(bad(format!(
                    "the secret of key {id:?} has {} bytes; use at least {MIN_SECRET_BYTES} random bytes (`ferry key add` makes one)",
                    secret.len()
                )));
            }
            keys.push(Key::new(id.to_string(), &secret));
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                origin: origin.to_string(),
            });
        }
        Ok(Keyring { keys })
    }

    /// Reads a key file ([`Keyring::parse`]). A file others than its owner can read is used, with
    /// a warning: whoever reads it can sign as any of ferry's services.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(
                    path = %path.display(),
                    "the bus key file can be read by others than its owner: `chmod 600` it"
                );
            }
        }
        Keyring::parse(&text, &path.display().to_string())
    }

    /// A ring of one new random key.
    pub fn generate() -> Keyring {
        let (id, secret) = new_key();
        Keyring {
            keys: vec![Key::new(id, &secret)],
        }
    }

    /// The key ids, the signing one first.
    pub fn ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// The id of the key that signs.
    pub fn signing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Signs an event: sets (or replaces) its `ferrysig` attribute.
    pub fn sign(&self, event: &mut Event) {
        let key = &self.keys[0];
        let mut mac = key.mac.clone();
        feed(&mut mac, event);
        let sig = STANDARD.encode(mac.finalize().into_bytes());
        event.set_extension(EXT_SIGNATURE, format!("{VERSION}:{}:{sig}", key.id));
    }

    /// Checks an event's signature; the id of the key that made it when it matches.
    pub fn verify(&self, event: &Event) -> Result<&str, SignatureError> {
        let value = match event.extension(EXT_SIGNATURE) {
            Some(ExtensionValue::String(s)) => s.as_str(),
            Some(other) => return Err(SignatureError::Malformed(other.to_string())),
            None => return Err(SignatureError::Missing),
        };
        let malformed = || SignatureError::Malformed(crate::truncated(value, 80));
        let mut parts = value.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let sig = STANDARD.decode(sig).map_err(|_| malformed())?;
        let Some(key) = self.keys.iter().find(|k| k.id == id) else {
            return Err(SignatureError::UnknownKey {
                key: crate::truncated(id, 64),
                known: self.ids().join(", "),
            });
        };
        let mut mac = key.mac.clone();
        feed(&mut mac, event);
        // Compared in constant time.
        mac.verify_slice(&sig)
            .map_err(|_| SignatureError::Mismatch { key: key.id.clone() })?;
        Ok(&key.id)
    }
}

impl Key {
    fn new(id: String, secret: &[u8]) -> Key {
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        Key { id, mac }
    }
}

/// A new key: an id that says when it was made, and random secret bytes.
fn new_key() -> (String, Vec<u8>) {
    let suffix: u32 = rand::random();
    let id = format!("{}-{suffix:08x}", chrono::Utc::now().format("%Y%m%d"));
    let secret: Vec<u8> = (0..NEW_SECRET_BYTES).map(|_| rand::random::<u8>()).collect();
    (id, secret)
}

/// A key file's line for a new random key (`KEY-ID SECRET`), and its id.
pub fn new_key_line() -> (String, String) {
    let (id, secret) = new_key();
    (format!("{id} {}", STANDARD.encode(secret)), id)
}

/// The text of a new key file holding one new key, and the key's id.
pub fn new_key_file() -> (String, String) {
    let (line, id) = new_key_line();
    let text = format!(
        "# ferry bus keys: one key a line, `KEY-ID SECRET` (base64). The first key signs what the\n\
         # services publish; every key here is accepted. Keep this file secret (mode 600): whoever\n\
         # reads it can publish as ferry. Rotation: see docs/security.md.\n{line}\n"
    );
    (text, id)
}

/// Feeds the canonical encoding of an event to the MAC: each attribute as its name and its
/// value, each part length-prefixed so that no two events encode alike, absent attributes
/// marked as such, extensions sorted by name, then the data.
fn feed(mac: &mut HmacSha256, event: &Event) {
    fn part(mac: &mut HmacSha256, bytes: &[u8]) {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    }
    fn attr(mac: &mut HmacSha256, name: &str, value: Option<&str>) {
        part(mac, name.as_bytes());
        match value {
            Some(v) => {
                mac.update(&[1]);
                part(mac, v.as_bytes());
            }
            None => mac.update(&[0]),
        }
    }
    mac.update(b"ferry-event-signature\0v1\0");
    attr(mac, "specversion", Some(&event.specversion().to_string()));
    attr(mac, "id", Some(event.id()));
    attr(mac, "source", Some(event.source().as_str()));
    attr(mac, "type", Some(event.ty()));
    attr(mac, "subject", event.subject());
    // Brokers keep the time to the millisecond.
    let time = event.time().map(|t| t.timestamp_millis().to_string());
    attr(mac, "time", time.as_deref());
    attr(mac, "datacontenttype", event.datacontenttype());
    let schema = event.dataschema().map(|u| u.to_string());
    attr(mac, "dataschema", schema.as_deref());
    let mut extensions: Vec<(&str, String)> = event
        .iter_extensions()
        .filter(|(name, _)| *name != EXT_SIGNATURE)
        .map(|(name, value)| {
            let text = match value {
                ExtensionValue::String(s) => s.clone(),
                other => other.to_string(),
            };
            (name, text)
        })
        .collect();
    extensions.sort();
    mac.update(&(extensions.len() as u64).to_be_bytes());
    for (name, value) in &extensions {
        attr(mac, &format!("ext:{name}"), Some(value));
    }
    match event.data() {
        None => attr(mac, "data", None),
        Some(Data::Binary(b)) => {
            mac.update(b"data\x01");
            part(mac, b);
        }
        Some(Data::String(s)) => {
            mac.update(b"data\x01");
            part(mac, s.as_bytes());
        }
        Some(Data::Json(v)) => {
            // As every binding writes a JSON value: compact, in its order.
            let bytes = serde_json::to_vec(v).unwrap_or_default();
            mac.update(b"data\x01");
            part(mac, &bytes);
        }
    }
}

/// Whether events consumed from a topic must be signed: all but intake, where outside
/// systems publish.
pub fn must_verify(topic: &Topic) -> bool {
    !matches!(topic, Topic::Intake)
}

/// Whether an unsigned event may be delivered: only to a subscription that takes intake, only
/// from intake, and only of a type that belongs there (a submission or an outside event). The
/// topic a delivery names comes from the broker's message (on RabbitMQ a header its publisher
/// wrote), so it alone decides nothing: ferry's own types always need a signature, whatever
/// queue they were put in and whatever topic they claim.
fn may_be_unsigned(takes_intake: bool, d: &Delivery) -> bool {
    takes_intake && !must_verify(&d.topic) && !must_verify(&ferry_event::route(&d.event))
}

/// A bus that signs every event it publishes and verifies every event it delivers (see the
/// module's documentation).
pub struct Signed {
    inner: Arc<dyn Bus>,
    keys: Arc<Keyring>,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed").field("keys", &self.keys).finish()
    }
}

impl Signed {
    pub fn new(inner: Arc<dyn Bus>, keys: Keyring) -> Signed {
        Signed {
            inner,
            keys: Arc::new(keys),
        }
    }

    /// The bus underneath, which neither signs nor verifies.
    pub fn inner(&self) -> &Arc<dyn Bus> {
        &self.inner
    }
}

#[async_trait]
impl Bus for Signed {
    async fn publish(&self, events: &[Event]) -> Result<()> {
        let signed: Vec<Event> = events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                self.keys.sign(&mut e);
                e
            })
            .collect();
        self.inner.publish(&signed).await
    }

    async fn subscribe(&self, spec: Subscribe) -> Result<Subscription> {
        let group = spec.group.clone();
        let takes_intake = spec.topics.iter().any(|t| !must_verify(t));
        let inner = self.inner.subscribe(spec).await?;
        Ok(Subscription::new(Box::new(Verifying {
            inner,
            keys: self.keys.clone(),
            group,
            takes_intake,
        })))
    }

    async fn declare(&self, spec: &Subscribe) -> Result<()> {
        self.inner.declare(spec).await
    }

    fn max_event_bytes(&self) -> Option<usize> {
        // Room for the signature attribute.
        self.inner.max_event_bytes().map(|n| n.saturating_sub(256))
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }
}

/// The consumer of a [`Signed`] bus: hands out verified deliveries, dead-letters the rest.
struct Verifying {
    inner: Subscription,
    keys: Arc<Keyring>,
    group: String,
    /// The subscription takes the intake topic, the only one unsigned events may come from.
    takes_intake: bool,
}

impl Verifying {
    /// The delivery, marked verified when its signature is, and why it is refused, if it is.
    fn check(&self, mut d: Delivery) -> (Delivery, Option<SignatureError>) {
        match self.keys.verify(&d.event) {
            Ok(key) => {
                d.signed_with = Some(key.into());
                (d, None)
            }
            Err(_) if may_be_unsigned(self.takes_intake, &d) => (d, None),
            Err(e) => (d, Some(e)),
        }
    }

    fn refused(&self, d: &Delivery, e: &SignatureError) {
        tracing::warn!(
            group = %self.group,
            topic = %d.topic,
            event_id = %d.event.id(),
            event_type = %d.event.ty(),
            source = %d.event.source(),
            reason = %e,
            "refusing an event whose signature is not valid"
        );
    }
}

#[async_trait]
impl Consumer for Verifying {
    async fn recv(&mut self) -> Option<Result<Delivery>> {
        loop {
            let d = match self.inner.next().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            match self.check(d) {
                (d, None) => return Some(Ok(d)),
                (d, Some(e)) => {
                    self.refused(&d, &e);
                    // Abandoned here (the caller gave up waiting), the delivery is given back
                    // and refused again when it comes.
                    if let Err(err) = d.dead_letter(&e.to_string()).await {
                        return Some(Err(err));
                    }
                }
            }
        }
    }

    fn try_recv(&mut self) -> Option<Delivery> {
        loop {
            let d = self.inner.try_next()?;
            match self.check(d) {
                (d, None) => return Some(d),
                (d, Some(e)) => {
                    self.refused(&d, &e);
                    tokio::spawn(async move {
                        if let Err(err) = d.dead_letter(&e.to_string()).await {
                            tracing::warn!(error = %err, "dead-lettering a refused event failed; it comes again");
                        }
                    });
                }
            }
        }
    }

    async fn close(self: Box<Self>) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use ferry_event::{EventBuilder, kind};

    use super::*;

    fn finished() -> Event {
        EventBuilder::new("ferry/launcher-local/h-1").task(
            kind::TASK_FINISHED,
            "job-1",
            "t",
            Some("a-1"),
            &serde_json::json!({"outcome": "succeeded", "outputs": {"n": 1}}),
        )
    }

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text, "test").unwrap()
    }

    #[test]
    fn a_signed_event_verifies_and_any_change_breaks_it() {
        let keys = Keyring::generate();
        let mut e = finished();
        keys.sign(&mut e);
        assert_eq!(keys.verify(&e), Ok(keys.signing_id()));
        let sig = ferry_event::envelope::extension(&e, EXT_SIGNATURE).unwrap();
        assert!(sig.starts_with(&format!("v1:{}:", keys.signing_id())), "{sig}");

        type Change = Box<dyn Fn(&mut Event)>;
        let tampered: Vec<Change> = vec![
            Box::new(|e| {
                e.set_data(
                    "application/json",
                    Data::Binary(br#"{"outcome":"failed"}"#.to_vec()),
                );
            }),
            Box::new(|e| {
                e.set_source("ferry/elsewhere");
            }),
            Box::new(|e| {
                e.set_type(kind::TASK_DISPATCHED);
            }),
            Box::new(|e| {
                e.set_subject(Some("job-2/t"));
            }),
            Box::new(|e| {
                e.set_extension("ferryattempt", "a-2");
            }),
            Box::new(|e| {
                e.set_extension("ferrynew", "x");
            }),
            Box::new(|e| {
                e.set_id("another");
            }),
            Box::new(|e| {
                e.set_time(Some(chrono::Utc::now() + chrono::Duration::seconds(5)));
            }),
        ];
        use ferry_event::cloudevents::AttributesWriter;
        for (i, change) in tampered.iter().enumerate() {
            let mut t = e.clone();
            change(&mut t);
            assert!(
                matches!(keys.verify(&t), Err(SignatureError::Mismatch { .. })),
                "change {i} was not noticed"
            );
        }
    }

    #[test]
    fn json_data_verifies_as_bytes_or_as_a_value() {
        let keys = Keyring::generate();
        let mut e = finished();
        keys.sign(&mut e);
        let mut as_value = e.clone();
        let v: serde_json::Value = ferry_event::decode(&e).unwrap();
        as_value.set_data("application/json", Data::Json(v));
        assert!(keys.verify(&as_value).is_ok());
    }

    #[test]
    fn unsigned_unknown_and_malformed_signatures_are_told_apart() {
        let keys = Keyring::generate();
        let e = finished();
        assert_eq!(keys.verify(&e), Err(SignatureError::Missing));
        let other = Keyring::generate();
        let mut s = finished();
        other.sign(&mut s);
        let err = keys.verify(&s).unwrap_err();
        assert!(matches!(err, SignatureError::UnknownKey { .. }), "{err}");
        assert!(
            err.to_string().contains(keys.signing_id()),
            "names the known keys: {err}"
        );
        let mut m = finished();
        m.set_extension(EXT_SIGNATURE, "v2:x:y");
        assert!(matches!(keys.verify(&m), Err(SignatureError::Malformed(_))));
        // The same id with another secret: a mismatch, not a pass.
        let (line, _) = new_key_line();
        let secret = line.split_whitespace().nth(1).unwrap();
        let imposter = ring(&format!("{} {secret}", keys.signing_id()));
        let mut i = finished();
        imposter.sign(&mut i);
        assert!(matches!(keys.verify(&i), Err(SignatureError::Mismatch { .. })));
    }

    #[test]
    fn every_key_of_the_ring_verifies_and_the_first_signs() {
        let (old_line, old_id) = new_key_line();
        let (new_line, new_id) = new_key_line();
        let before = ring(&old_line);
        let during = ring(&format!("{old_line}\n{new_line}\n"));
        let after = ring(&format!("# rotated\n\n{new_line}\n{old_line}\n"));
        assert_eq!(during.signing_id(), old_id);
        assert_eq!(after.signing_id(), new_id);
        let mut by_old = finished();
        before.sign(&mut by_old);
        let mut by_new = finished();
        after.sign(&mut by_new);
        assert_eq!(after.verify(&by_old), Ok(old_id.as_str()));
        assert_eq!(during.verify(&by_new), Ok(new_id.as_str()));
        assert!(
            before.verify(&by_new).is_err(),
            "a ring without the new key refuses it"
        );
    }

    #[test]
    fn key_files_say_what_is_wrong_and_where() {
        let (line, _) = new_key_line();
        for (text, says) in [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            ("k1\n", "line 1: expected `KEY-ID SECRET`"),
            ("k/1 AAAA\n", "key id \"k/1\" is not valid"),
            ("k1 not*base64\n", "not base64"),
            ("k1 c2hvcnQ=\n", "at least 32"),
        ] {
            let err = Keyring::parse(text, "keys.txt").unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let dup = format!("{line}\n{line}\n");
        let err = Keyring::parse(&dup, "keys.txt").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("twice"), "{err}");
        let (file, id) = new_key_file();
        assert_eq!(ring(&file).ids(), [id.as_str()]);
        assert!(!format!("{:?}", ring(&file)).contains(line.split(' ').nth(1).unwrap()));
    }
}
