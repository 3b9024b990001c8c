//! ferry's bus on RabbitMQ.

use ferry_bus::{Error, Result};

/// The bus on a RabbitMQ virtual host.
#[derive(Debug)]
pub struct AmqpBus {}

impl AmqpBus {
    /// Connects to `amqp://USER:PASS@HOST:PORT/VHOST[?namespace=NAME]`.
    pub async fn connect(_url: &str) -> Result<AmqpBus> {
        Err(Error::Config("the RabbitMQ bus is not written yet".into()))
    }
}

#[async_trait::async_trait]
impl ferry_bus::Bus for AmqpBus {
    async fn publish(&self, _events: &[ferry_event::Event]) -> Result<()> {
        Err(Error::Unavailable("not written yet".into()))
    }

    async fn subscribe(&self, _spec: ferry_bus::Subscribe) -> Result<ferry_bus::Subscription> {
        Err(Error::Unavailable("not written yet".into()))
    }
}
