//! What can go wrong talking to RabbitMQ, split into "retry later" and "will never work".

use lapin::ErrorKind;

use crate::mapping::MappingError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bus URL cannot be used.
    #[error(
        "bus URL {url:?} is not valid: {reason}; expected \
         amqp://USER:PASS@HOST:PORT/VHOST[?namespace=NAME]"
    )]
    Url { url: String, reason: String },
    /// The broker answered but refused: bad credentials, an unknown vhost, no permission.
    #[error(
        "RabbitMQ at {endpoint} refused {what}: {reason}; check the user, password and vhost \
         in the bus URL and the user's permissions on the vhost"
    )]
    Refused {
        endpoint: String,
        what: String,
        reason: String,
    },
    /// A queue or exchange exists with other settings than ferry declares.
    #[error(
        "RabbitMQ refused to declare {what}: {reason}; it exists with other settings (another \
         ferry version or a manual declaration): delete it or use another namespace"
    )]
    Topology { what: String, reason: String },
    /// The broker cannot be reached or the connection broke; it is retried.
    #[error("RabbitMQ at {endpoint} is unreachable ({what}): {source}")]
    Unreachable {
        endpoint: String,
        what: String,
        #[source]
        source: Box<lapin::Error>,
    },
    /// The broker refused a message as larger than its `max_message_size`.
    #[error(
        "RabbitMQ at {endpoint} refused event {event_id} ({size} bytes) as too large ({reason}); \
         raise max_message_size in the broker's configuration or make the event smaller"
    )]
    TooLarge {
        endpoint: String,
        event_id: String,
        size: usize,
        /// The broker's limit, when its message says.
        limit: Option<usize>,
        reason: String,
    },
    /// The broker did not answer in time; it is retried.
    #[error("RabbitMQ at {endpoint} did not answer {what} within {after:?}")]
    TimedOut {
        endpoint: String,
        what: String,
        after: std::time::Duration,
    },
    /// Not connected at the moment; a reconnection is under way.
    #[error("not connected to RabbitMQ at {endpoint}: reconnecting, try again shortly")]
    Disconnected { endpoint: String },
    /// The broker did not confirm a publish: nacked, returned or no answer in time.
    #[error("RabbitMQ did not confirm event {event_id} on {routing_key}: {reason}")]
    NotConfirmed {
        event_id: String,
        routing_key: String,
        reason: String,
    },
    /// An event that cannot be put on AMQP as it is.
    #[error("cannot publish: {0}")]
    Mapping(#[from] MappingError),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::TimedOut { .. }
                | Error::Disconnected { .. }
                | Error::NotConfirmed { .. }
        )
    }

    /// Classifies an error from an operation on an open connection.
    pub(crate) fn from_lapin(endpoint: &str, what: impl Into<String>, e: lapin::Error) -> Error {
        let what = what.into();
        if let ErrorKind::ProtocolError(amqp) = e.kind() {
            let reason = format!("{} {}", amqp.get_id(), amqp.get_message());
            match amqp.get_id() {
                // ACCESS_REFUSED, NOT_ALLOWED (unknown vhost), and a failed login.
                403 | 530 => {
                    return Error::Refused {
                        endpoint: endpoint.to_string(),
                        what,
                        reason,
                    };
                }
                // PRECONDITION_FAILED: declared before with other arguments.
                406 => return Error::Topology { what, reason },
                _ => {}
            }
        }
        Error::Unreachable {
            endpoint: endpoint.to_string(),
            what,
            source: Box::new(e),
        }
    }
}

/// Whether a refusal's reason says the message is too large (`PRECONDITION_FAILED - message
/// size N is larger than configured max size M`), and then the limit, if it reads.
pub(crate) fn too_large_limit(reason: &str) -> Option<Option<usize>> {
    let (_, after) = reason.split_once("larger than configured max size")?;
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(digits.parse().ok())
}

impl From<Error> for ferry_bus::Error {
    fn from(e: Error) -> Self {
        if let Error::TooLarge {
            event_id,
            size,
            limit,
            ..
        } = e
        {
            return ferry_bus::Error::TooLarge {
                event_id,
                size,
                limit,
            };
        }
        if e.is_transient() {
            ferry_bus::Error::Unavailable(e.to_string())
        } else {
            ferry_bus::Error::Config(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_as_too_large_is_recognised_with_its_limit() {
        let reason =
            "406 PRECONDITION_FAILED - message size 20971520 is larger than configured max size 16777216";
        assert_eq!(too_large_limit(reason), Some(Some(16777216)));
        assert_eq!(
            too_large_limit("406 PRECONDITION_FAILED - inequivalent arg 'durable'"),
            None
        );
    }

    #[test]
    fn only_connection_trouble_is_transient() {
        let d = Error::Disconnected {
            endpoint: "127.0.0.1:5672".into(),
        };
        assert!(d.is_transient());
        assert!(matches!(
            ferry_bus::Error::from(d),
            ferry_bus::Error::Unavailable(_)
        ));
        let t = Error::Topology {
            what: "queue ns.g".into(),
            reason: "406 PRECONDITION_FAILED".into(),
        };
        assert!(!t.is_transient());
        let msg = ferry_bus::Error::from(t).to_string();
        assert!(msg.contains("another namespace"), "{msg}");
    }
}
