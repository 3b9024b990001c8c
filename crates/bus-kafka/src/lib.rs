//! ferry's bus on Kafka.

use ferry_bus::{Error, Result};

/// The bus on a Kafka cluster.
#[derive(Debug)]
pub struct KafkaBus {}

impl KafkaBus {
    /// Connects to `kafka://HOST:PORT[,HOST:PORT…][?namespace=NAME&partitions=N]`.
    pub async fn connect(_url: &str) -> Result<KafkaBus> {
        Err(Error::Config("the Kafka bus is not written yet".into()))
    }
}

#[async_trait::async_trait]
impl ferry_bus::Bus for KafkaBus {
    async fn publish(&self, _events: &[ferry_event::Event]) -> Result<()> {
        Err(Error::Unavailable("not written yet".into()))
    }

    async fn subscribe(&self, _spec: ferry_bus::Subscribe) -> Result<ferry_bus::Subscription> {
        Err(Error::Unavailable("not written yet".into()))
    }
}
