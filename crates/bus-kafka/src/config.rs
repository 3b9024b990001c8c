//! The bus URL: `kafka://HOST:PORT[,HOST:PORT…][?namespace=NS&partitions=N&replication=R&fetch_wait_ms=W]`.

use crate::Error;

/// Partitions of each topic ferry creates, unless the URL says otherwise.
pub const DEFAULT_PARTITIONS: i32 = 6;
/// Replication factor of each topic ferry creates, unless the URL says otherwise.
pub const DEFAULT_REPLICATION: i32 = 1;
/// How long a consumer's fetch may wait at the broker for data (librdkafka's
/// `fetch.wait.max.ms`), unless the URL says otherwise. A broker answers a waiting fetch as
/// soon as data comes, Apache Kafka does; tansu answers librdkafka's only when the wait is
/// over (measured: a hop took 42 ms with 100, about 1 ms with 10), so the default keeps it
/// short. On Apache Kafka a longer wait (Kafka's own default is 500) costs no latency and
/// fewer idle fetches.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 10;

/// What a `kafka://` URL configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `HOST:PORT,HOST:PORT…`, as librdkafka's `bootstrap.servers` takes it.
    pub brokers: String,
    /// Prefix of every topic and consumer group name.
    pub namespace: String,
    /// Partitions of the topics this bus creates.
    pub partitions: i32,
    /// Replication factor of the topics this bus creates.
    pub replication: i32,
    /// librdkafka's `fetch.wait.max.ms` for consumers.
    pub fetch_wait_ms: u32,
}

impl Config {
    /// Parses a bus URL.
    pub fn parse(url: &str) -> Result<Config, Error> {
        let bad = |why: String| Error::Url {
            url: url.to_string(),
            why,
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("the scheme must be kafka://".into()))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() {
            return Err(bad("no broker address is given".into()));
        }
        for host in hosts.split(',') {
            let port = host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
            match port {
                Some((h, Ok(p))) if !h.is_empty() && p != 0 => {}
                _ => return Err(bad(format!("broker address {host:?} is not HOST:PORT"))),
            }
        }
        let namespace = ferry_bus::namespace_of(url).map_err(|e| bad(e.to_string()))?;
        let mut config = Config {
            brokers: hosts.to_string(),
            namespace,
            partitions: DEFAULT_PARTITIONS,
            replication: DEFAULT_REPLICATION,
            fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let count = |what: &str| -> Result<i32, Error> {
                match v.parse::<i32>() {
                    Ok(n) if (1..=10_000).contains(&n) => Ok(n),
                    _ => Err(bad(format!("{what}={v:?} is not a whole number from 1 to 10000"))),
                }
            };
            match k {
                "namespace" => {}
                "partitions" => config.partitions = count("partitions")?,
                "replication" => config.replication = count("replication")?,
                "fetch_wait_ms" => {
                    config.fetch_wait_ms = match v.parse::<u32>() {
                        Ok(n) if (1..=60_000).contains(&n) => n,
                        _ => {
                            return Err(bad(format!(
                                "fetch_wait_ms={v:?} is not a whole number of milliseconds from 1 to 60000"
                            )));
                        }
                    }
                }
                other
                    if ["security", "sasl", "ssl"]
                        .iter()
                        .any(|p| other.to_ascii_lowercase().replace('_', ".").starts_with(p)) =>
                {
                    return Err(bad(format!(
                        "{other:?}: TLS and SASL are not supported by this build's Kafka client \
                         (librdkafka is built without OpenSSL and SASL); reach the brokers over a \
                         private network, or see docs/security.md"
                    )));
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?}: accepted are namespace, partitions, replication and fetch_wait_ms"
                    )));
                }
            }
        }
        Ok(config)
    }

    /// The Kafka topic that carries a logical topic (`NS.control`, `NS.dispatch.local`, …).
    pub fn topic(&self, topic: &ferry_event::Topic) -> String {
        format!("{}.{}", self.namespace, topic.name())
    }

    /// The dead-letter topic, `NS.dead`.
    pub fn dead_topic(&self) -> String {
        format!("{}.dead", self.namespace)
    }

    /// The Kafka consumer group of a ferry group, `NS.GROUP`.
    pub fn group(&self, group: &str) -> String {
        format!("{}.{group}", self.namespace)
    }

    /// The logical topic a Kafka topic of this namespace carries.
    pub fn logical(&self, kafka_topic: &str) -> Option<ferry_event::Topic> {
        let name = kafka_topic.strip_prefix(&self.namespace)?.strip_prefix('.')?;
        ferry_event::Topic::parse(name)
    }
}

#[cfg(test)]
mod tests {
    use ferry_event::Topic;

    use super::*;

    #[test]
    fn urls_name_brokers_namespace_and_topic_shape() {
        let c =
            Config::parse("kafka://a:9092,b:9093?namespace=t1&partitions=3&replication=2&fetch_wait_ms=500")
                .unwrap();
        assert_eq!(c.brokers, "a:9092,b:9093");
        assert_eq!((c.namespace.as_str(), c.partitions, c.replication), ("t1", 3, 2));
        assert_eq!(c.fetch_wait_ms, 500);
        assert_eq!(c.topic(&Topic::Dispatch("local".into())), "t1.dispatch.local");
        assert_eq!(c.dead_topic(), "t1.dead");
        assert_eq!(c.group("scheduler"), "t1.scheduler");
        assert_eq!(c.logical("t1.control"), Some(Topic::Control));
        assert_eq!(c.logical("t2.control"), None);

        let d = Config::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(
            (d.namespace.as_str(), d.partitions, d.replication, d.fetch_wait_ms),
            ("ferry", 6, 1, 10)
        );
        assert_eq!(d.topic(&Topic::Control), "ferry.control");
    }

    #[test]
    fn bad_urls_say_what_is_accepted() {
        for (url, says) in [
            ("amqp://h:1", "kafka://"),
            ("kafka://", "no broker"),
            ("kafka://host", "HOST:PORT"),
            ("kafka://h:x", "HOST:PORT"),
            ("kafka://h:1?partitions=0", "partitions"),
            ("kafka://h:1?partitions=many", "partitions"),
            ("kafka://h:1?fetch_wait_ms=0", "fetch_wait_ms"),
            ("kafka://h:1?colour=red", "accepted are namespace"),
            (
                "kafka://h:1?security.protocol=SASL_SSL",
                "TLS and SASL are not supported",
            ),
            (
                "kafka://h:1?sasl_mechanism=PLAIN",
                "TLS and SASL are not supported",
            ),
            ("kafka://h:1?namespace=a.b", "namespace"),
        ] {
            let err = Config::parse(url).unwrap_err();
            assert!(!err.is_transient());
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }
}
