//! Opens ferry's bus from a URL. The scheme picks the implementation; one whose cargo feature
//! this build lacks answers with an error that says so.
//!
//! | URL | bus | feature |
//! | --- | --- | --- |
//! | `memory://` | in-process ([`ferry_bus::MemoryBus`]) | always |
//! | `amqp://USER:PASS@HOST:PORT/VHOST`, `amqps://…` (TLS) | RabbitMQ | `amqp` |
//! | `kafka://HOST:PORT[,HOST:PORT…]` | Kafka | `kafka` |
//!
//! Every URL may end in `?namespace=NAME` (default `ferry`) to keep deployments apart on one
//! broker.
//!
//! Services sign what they publish and refuse forged events ([`ferry_bus::signing`]) with the
//! keys [`Auth`] names. A broker is shared with whoever can publish on it, so opening one
//! without keys takes an explicit opt-in; the in-memory bus, which no other process reaches,
//! runs unsigned unless keys are given.
//!
//! [`service`] starts a service as a process of its own, on the bus its `--bus` flag names;
//! [`endpoint`] serves its metrics, liveness and readiness (`--metrics ADDR`).

pub mod endpoint;
pub mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_bus::metered::Metered;
use ferry_bus::signing::{Keyring, Signed};
use ferry_bus::{Bus, Error, MemoryBus, Result, Subscribe};

/// The environment variable naming the bus key file.
pub const KEYS_ENV: &str = "FERRY_BUS_KEY_FILE";
/// The environment variable that, set to `1` or `true`, runs on a broker without signing.
pub const INSECURE_ENV: &str = "FERRY_INSECURE_UNSIGNED_BUS";

/// Whether events on the bus are signed and checked.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Sign with the ring's first key; accept events signed with any of its keys.
    Signed(Keyring),
    /// Neither sign nor check.
    Unsigned,
}

impl Auth {
    /// Decides from what an operator gave: a key file is used; without one, the in-memory bus
    /// runs unsigned, and a broker only when `insecure` says so.
    pub fn resolve(url: &str, key_file: Option<&Path>, insecure: bool) -> Result<Auth> {
        if let Some(path) = key_file {
            return Ok(Auth::Signed(Keyring::load(path)?));
        }
        if insecure || is_memory(url) {
            if !is_memory(url) {
                tracing::warn!(
                    "events on the bus are neither signed nor checked: anyone who can publish on the broker can run commands through ferry"
                );
            }
            return Ok(Auth::Unsigned);
        }
        Err(Error::Config(no_keys_message()))
    }

    /// [`Auth::resolve`] from the environment: [`KEYS_ENV`] names the key file, [`INSECURE_ENV`]
    /// opts out.
    pub fn from_env(url: &str) -> Result<Auth> {
        let file = std::env::var_os(KEYS_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let insecure = std::env::var(INSECURE_ENV)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false);
        Auth::resolve(url, file.as_deref(), insecure)
    }
}

/// What to say when a broker is opened without keys.
pub fn no_keys_message() -> String {
    format!(
        "no bus key: services on a broker sign their events so that nobody else who can publish \
         there can forge them. Create a key file once with `ferry key create FILE`, give the same \
         file to every service (--bus-key-file FILE or {KEYS_ENV}=FILE), or run unsigned with \
         --insecure-unsigned-bus ({INSECURE_ENV}=1)"
    )
}

fn is_memory(url: &str) -> bool {
    url.starts_with("memory://")
}

/// Opens the bus `url` names, signing and checking events as [`Auth::from_env`] decides.
pub async fn bus(url: &str) -> Result<Arc<dyn Bus>> {
    open(url, Auth::from_env(url)?).await
}

/// Opens the bus `url` names, signing and checking events as `auth` says.
/// What goes through it is counted in ferry's metrics ([`ferry_bus::metered`]).
pub async fn open(url: &str, auth: Auth) -> Result<Arc<dyn Bus>> {
    let raw = raw(url).await?;
    let bus: Arc<dyn Bus> = match auth {
        Auth::Signed(keys) => Arc::new(Signed::new(raw, keys)),
        Auth::Unsigned => raw,
    };
    Ok(traced(Arc::new(Metered::new(bus))))
}

/// `bus` with each publish a span of the trace it happens in ([`ferry_bus::traced::Traced`]),
/// when this process exports traces; `bus` itself otherwise.
pub fn traced(bus: Arc<dyn Bus>) -> Arc<dyn Bus> {
    if ferry_runtime::trace::enabled() {
        Arc::new(ferry_bus::traced::Traced::new(bus))
    } else {
        bus
    }
}

/// Opens the bus `url` names as it is: nothing is signed or checked. For tools that speak to
/// the broker as an outside system would.
pub async fn raw(url: &str) -> Result<Arc<dyn Bus>> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "memory" => Ok(Arc::new(MemoryBus::new())),
        "amqp" | "amqps" => amqp(url).await,
        "kafka" => kafka(url).await,
        _ => Err(Error::Config(format!(
            "unsupported bus URL {:?}: expected memory://, amqp://USER:PASS@HOST:PORT/VHOST, amqps://… or kafka://HOST:PORT",
            redact(url)
        ))),
    }
}

pub use ferry_runtime::redact;

/// Removes the namespace `url` names from its broker: on RabbitMQ its exchanges and the queues
/// of `groups` (declared first, so that a group that never subscribed is removed too) with the
/// dead-letter and unrouted queues. Elsewhere it does nothing: an in-memory bus goes with its
/// process, and ferry's Kafka bus does not delete topics.
pub async fn remove_namespace(url: &str, groups: &[Subscribe]) -> Result<()> {
    #[cfg(feature = "amqp")]
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        let bus = ferry_bus_amqp::AmqpBus::connect(url).await?;
        for spec in groups {
            bus.declare(spec).await?;
        }
        return bus.delete_namespace().await;
    }
    let _ = (url, groups);
    Ok(())
}

#[cfg(feature = "amqp")]
async fn amqp(url: &str) -> Result<Arc<dyn Bus>> {
    Ok(Arc::new(ferry_bus_amqp::AmqpBus::connect(url).await?))
}

#[cfg(not(feature = "amqp"))]
async fn amqp(_url: &str) -> Result<Arc<dyn Bus>> {
    Err(not_enabled("amqp", "RabbitMQ"))
}

#[cfg(feature = "kafka")]
async fn kafka(url: &str) -> Result<Arc<dyn Bus>> {
    Ok(Arc::new(ferry_bus_kafka::KafkaBus::connect(url).await?))
}

#[cfg(not(feature = "kafka"))]
async fn kafka(_url: &str) -> Result<Arc<dyn Bus>> {
    Err(not_enabled("kafka", "Kafka"))
}

#[allow(dead_code)]
fn not_enabled(feature: &str, what: &str) -> Error {
    Error::Config(format!(
        "{what} is not enabled in this build of ferry: build it with the `{feature}` feature of ferry-connect"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact("amqp://guest:secret@h:5672/v"),
            "amqp://guest:****@h:5672/v"
        );
        assert_eq!(redact("kafka://h:9092"), "kafka://h:9092");
    }

    #[tokio::test]
    async fn unknown_schemes_say_what_is_accepted() {
        let err = raw("nats://x").await.err().unwrap();
        assert!(
            err.to_string().contains("amqp://") && err.to_string().contains("kafka://"),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(raw("memory://").await.is_ok());
    }

    #[test]
    fn a_broker_without_keys_takes_an_explicit_opt_in() {
        let err = Auth::resolve("amqp://g:g@h/v", None, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("ferry key create") && msg.contains("--insecure-unsigned-bus"),
            "{msg}"
        );
        assert!(matches!(
            Auth::resolve("kafka://h:1", None, true),
            Ok(Auth::Unsigned)
        ));
        assert!(matches!(
            Auth::resolve("memory://", None, false),
            Ok(Auth::Unsigned)
        ));
    }

    #[test]
    fn a_key_file_signs_even_on_the_memory_bus() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus.keys");
        let (text, id) = ferry_bus::signing::new_key_file();
        std::fs::write(&path, text).unwrap();
        match Auth::resolve("memory://", Some(&path), false).unwrap() {
            Auth::Signed(ring) => assert_eq!(ring.signing_id(), id),
            Auth::Unsigned => panic!("the key file was not used"),
        }
        let err = Auth::resolve("amqp://h/v", Some(&dir.path().join("missing")), false).unwrap_err();
        assert!(err.to_string().contains("cannot read the bus key file"), "{err}");
    }
}
