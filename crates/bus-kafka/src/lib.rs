//! ferry's bus on Kafka (and Kafka-compatible brokers such as tansu), through librdkafka.
//!
//! [`KafkaBus::connect`] takes `kafka://HOST:PORT[,HOST:PORT…][?namespace=NS&partitions=N&replication=R&fetch_wait_ms=W]`.
//! Each logical [`Topic`](ferry_event::Topic) is the Kafka topic `NS.<name>` (`ferry.control`,
//! `ferry.dispatch.local`, …) and dead letters go to `NS.dead`; topics are created with the
//! configured partition count when missing. A ferry consumer group `G` is the Kafka group `NS.G`.
//!
//! - Publishing is idempotent with `acks=all`; the message key is the event's `partitionkey`
//!   (its job), so a job's events stay in order on one partition. A batch is sent whole and then
//!   every delivery report is awaited.
//! - Consuming never auto-commits: acknowledgements are tracked per partition and the group's
//!   offset advances only over a contiguous run of acknowledged messages, so a crash redelivers
//!   exactly what was not acknowledged (and possibly some that were, later in the partition).
//! - A nack (or a delivery dropped unsettled) rewinds its partition to that message: it and every
//!   later message of the partition are delivered again, in order.
//! - New groups start at the earliest retained offset, so nothing published before the first
//!   consumer of a group started is lost. Ephemeral subscriptions get a fresh group assigned
//!   every partition at its end, and commit nothing.
//!
//! docs/kafka-binding.md at the repository root describes all of this for outside producers.
//!
//! [`binding`] is the CloudEvents Kafka protocol binding (binary mode, `ce_` headers; structured
//! mode accepted on receive); [`config`] parses the URL.

pub mod binding;
pub mod config;
mod consumer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ferry_bus::{Bus, Subscribe, Subscription};
use ferry_event::{AttributesReader, Event, Topic, route};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

pub use config::Config;

/// How long a produced message may wait for its broker acknowledgement before publishing fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long creating topics may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a broker's metadata in a readiness check.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Longest wait for room in the producer's local queue while publishing one batch.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(30);
/// The largest message ferry publishes (key, headers and value), and the `max.message.bytes`
/// of the topics it creates. Kafka's default is 1 MB; the `job.planned` of a 100,000-task job
/// is about 8 MB.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What the producer allows on top of a message for the record batch around it.
const BATCH_OVERHEAD: usize = 64 * 1024;

/// What went wrong talking to Kafka.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL cannot work; nothing was contacted.
    #[error(
        "invalid Kafka bus URL {url:?}: {why} (expected kafka://HOST:PORT[,HOST:PORT…][?namespace=NS&partitions=N&replication=R&fetch_wait_ms=W])"
    )]
    Url { url: String, why: String },
    /// librdkafka refused the client configuration.
    #[error("the Kafka client configuration was refused: {0}")]
    Client(#[source] Box<KafkaError>),
    /// The broker is unreachable, slow, or failed a request that may succeed later.
    #[error("Kafka brokers {brokers} unavailable while {doing}: {source}; retry later")]
    Unavailable {
        brokers: String,
        doing: String,
        #[source]
        source: Box<KafkaError>,
    },
    /// The broker refused to create a topic for a reason retrying will not fix.
    #[error(
        "Kafka refused to create topic {topic}: {code} (check the partitions and replication in the bus URL and the broker's topic policy)"
    )]
    Topic { topic: String, code: RDKafkaErrorCode },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

impl From<Error> for ferry_bus::Error {
    fn from(e: Error) -> Self {
        if e.is_transient() {
            ferry_bus::Error::Unavailable(e.to_string())
        } else {
            ferry_bus::Error::Config(e.to_string())
        }
    }
}

/// The bus on a Kafka cluster. Cloning shares the producer and the admin client.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    /// Kafka topics known to exist, so each is created at most once per bus.
    topics: tokio::sync::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.inner.config)
            .finish()
    }
}

impl KafkaBus {
    /// Connects to `kafka://HOST:PORT[,HOST:PORT…][?namespace=NS&partitions=N&replication=R&fetch_wait_ms=W]`
    /// and creates the namespace's fixed topics (intake, control, lifecycle, logs, dead) if
    /// they are missing. Per-backend dispatch topics are created when first used.
    pub async fn connect(url: &str) -> ferry_bus::Result<KafkaBus> {
        Ok(Self::open(Config::parse(url)?).await?)
    }

    /// [`KafkaBus::connect`] with a parsed configuration.
    pub async fn open(config: Config) -> Result<KafkaBus, Error> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", format!("ferry-{}", config.namespace))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
            .set(
                "message.max.bytes",
                (MAX_MESSAGE_BYTES + BATCH_OVERHEAD).to_string(),
            )
            .create()
            .map_err(|e| Error::Client(Box::new(e)))?;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .create()
            .map_err(|e| Error::Client(Box::new(e)))?;
        let bus = KafkaBus {
            inner: Arc::new(Inner {
                config,
                producer,
                admin,
                topics: Default::default(),
            }),
        };
        let fixed = [Topic::Intake, Topic::Control, Topic::Lifecycle, Topic::Logs];
        let mut names: Vec<String> = fixed.iter().map(|t| bus.inner.config.topic(t)).collect();
        names.push(bus.inner.config.dead_topic());
        bus.ensure_topics(names).await?;
        Ok(bus)
    }

    /// The parsed bus URL.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Creates the Kafka topics that this bus has not yet seen to exist. A topic that already
    /// exists is fine.
    async fn ensure_topics(&self, names: impl IntoIterator<Item = String>) -> Result<(), Error> {
        let mut known = self.inner.topics.lock().await;
        let missing: Vec<String> = names
            .into_iter()
            .filter(|n| !known.contains(n))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let c = &self.inner.config;
        let max_message = MAX_MESSAGE_BYTES.to_string();
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|n| {
                NewTopic::new(n, c.partitions, TopicReplication::Fixed(c.replication))
                    .set("max.message.bytes", &max_message)
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(ADMIN_TIMEOUT))
            .request_timeout(Some(ADMIN_TIMEOUT));
        let results = self
            .inner
            .admin
            .create_topics(&new, &opts)
            .await
            .map_err(|source| self.unavailable("creating topics", source))?;
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, partitions = c.partitions, "created Kafka topic");
                    known.insert(name);
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    known.insert(name);
                }
                Err((topic, code)) if is_permanent(code) => {
                    return Err(Error::Topic { topic, code });
                }
                Err((topic, code)) => {
                    return Err(
                        self.unavailable(&format!("creating topic {topic}"), KafkaError::AdminOp(code))
                    );
                }
            }
        }
        Ok(())
    }

    fn unavailable(&self, doing: &str, source: KafkaError) -> Error {
        Error::Unavailable {
            brokers: self.inner.config.brokers.clone(),
            doing: doing.to_string(),
            source: Box::new(source),
        }
    }

    /// Enqueues one message, waiting (bounded) while librdkafka's local queue is full.
    async fn enqueue(
        &self,
        topic: &str,
        msg: &binding::Message,
        deadline: tokio::time::Instant,
    ) -> Result<DeliveryFuture, Error> {
        let mut headers = OwnedHeaders::new_with_capacity(msg.headers.len());
        for (key, value) in &msg.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &msg.key {
            record = record.key(k.as_slice());
        }
        if let Some(v) = &msg.value {
            record = record.payload(v.as_slice());
        }
        loop {
            match self.inner.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.unavailable(&format!("producing to {topic}"), e)),
            }
        }
    }

    /// Produces messages, all before awaiting any delivery report, and waits for every report.
    async fn produce(&self, messages: &[(String, binding::Message)]) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + QUEUE_FULL_WAIT;
        let mut pending = Vec::with_capacity(messages.len());
        for (topic, msg) in messages {
            pending.push((topic, self.enqueue(topic, msg, deadline).await?));
        }
        for (topic, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    return Err(self.unavailable(&format!("producing to {topic}"), e));
                }
                Err(_) => {
                    return Err(self.unavailable(&format!("producing to {topic}"), KafkaError::Canceled));
                }
            }
        }
        Ok(())
    }
}

/// Whether a produce error says the message is larger than the client or broker allows.
fn too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// Topic creation errors that retrying with the same URL will not fix.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidReplicaAssignment
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
}

#[async_trait]
impl Bus for KafkaBus {
    fn max_event_bytes(&self) -> Option<usize> {
        // Headers carry the attributes with a few bytes each besides their text.
        Some(MAX_MESSAGE_BYTES - 16 * 1024)
    }

    /// Asks a broker for the cluster's metadata (no topic): it answers when one is reachable.
    async fn check(&self) -> ferry_bus::Result<()> {
        let inner = self.inner.clone();
        let brokers = self.inner.config.brokers.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            inner
                .producer
                .client()
                .fetch_metadata(None, CHECK_TIMEOUT)
                .map(drop)
                .map_err(|e| ferry_bus::Error::Unavailable(format!("Kafka at {brokers}: {e}")))
        })
        .await
        .map_err(|e| ferry_bus::Error::Unavailable(format!("checking Kafka: {e}")))?
    }

    async fn publish(&self, events: &[Event]) -> ferry_bus::Result<()> {
        let messages: Vec<(String, binding::Message)> = events
            .iter()
            .map(|e| (self.inner.config.topic(&route(e)), binding::encode(e)))
            .collect();
        for (event, (_, message)) in events.iter().zip(&messages) {
            let size = message.size();
            if size > MAX_MESSAGE_BYTES {
                return Err(ferry_bus::Error::TooLarge {
                    event_id: event.id().to_string(),
                    size,
                    limit: Some(MAX_MESSAGE_BYTES),
                });
            }
        }
        self.ensure_topics(messages.iter().map(|(t, _)| t.clone()))
            .await?;
        self.produce(&messages).await.map_err(|e| match e {
            // A topic created before with a smaller limit, or a broker that allows less: named
            // by the largest message of the batch.
            Error::Unavailable { source, .. } if too_large(&source) => {
                tracing::warn!(
                    error = %source,
                    "Kafka refused a message as too large: raise the topic's max.message.bytes \
                     (ferry creates its topics with {MAX_MESSAGE_BYTES}) or the broker's message.max.bytes"
                );
                let (event, size) = events
                    .iter()
                    .zip(&messages)
                    .map(|(e, (_, m))| (e, m.size()))
                    .max_by_key(|(_, size)| *size)
                    .expect("a refused batch holds a message");
                ferry_bus::Error::TooLarge {
                    event_id: event.id().to_string(),
                    size,
                    limit: None,
                }
            }
            // Whatever else failed, the caller publishes the batch again later.
            e => ferry_bus::Error::Unavailable(e.to_string()),
        })
    }

    async fn subscribe(&self, spec: Subscribe) -> ferry_bus::Result<Subscription> {
        self.declare(&spec).await?;
        Ok(consumer::subscribe(self, &spec).await?)
    }

    /// Creates the group's topics. Kafka keeps what is published to them, and a group without
    /// committed offsets starts at the earliest one, so nothing published after this returns
    /// (or before) is missed by the group.
    async fn declare(&self, spec: &Subscribe) -> ferry_bus::Result<()> {
        if spec.topics.is_empty() {
            return Err(ferry_bus::Error::Config(format!(
                "group {:?} subscribes to no topic",
                spec.group
            )));
        }
        let names = spec.topics.iter().map(|t| self.inner.config.topic(t));
        Ok(self.ensure_topics(names).await?)
    }
}
