//! Opens ferry's bus from a URL. The scheme picks the implementation; one whose cargo feature
//! this build lacks answers with an error that says so.
//!
//! | URL | bus | feature |
//! | --- | --- | --- |
//! | `memory://` | in-process ([`ferry_bus::MemoryBus`]) | always |
//! | `amqp://USER:PASS@HOST:PORT/VHOST` | RabbitMQ | `amqp` |
//! | `kafka://HOST:PORT[,HOST:PORT…]` | Kafka | `kafka` |
//!
//! Every URL may end in `?namespace=NAME` (default `ferry`) to keep deployments apart on one
//! broker.
//!
//! [`service`] starts a service as a process of its own, on the bus its `--bus` flag names.

pub mod service;

use std::sync::Arc;

use ferry_bus::{Bus, Error, MemoryBus, Result, Subscribe};

/// Opens the bus `url` names.
pub async fn bus(url: &str) -> Result<Arc<dyn Bus>> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    match scheme {
        "memory" => Ok(Arc::new(MemoryBus::new())),
        "amqp" | "amqps" => amqp(url).await,
        "kafka" => kafka(url).await,
        _ => Err(Error::Config(format!(
            "unsupported bus URL {url:?}: expected memory://, amqp://USER:PASS@HOST:PORT/VHOST or kafka://HOST:PORT"
        ))),
    }
}

/// A URL with its password replaced, for logs and messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:****{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

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
        let err = bus("nats://x").await.err().unwrap();
        assert!(
            err.to_string().contains("amqp://") && err.to_string().contains("kafka://"),
            "{err}"
        );
        assert!(!err.is_transient());
        assert!(bus("memory://").await.is_ok());
    }
}
