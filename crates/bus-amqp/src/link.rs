//! The connection to RabbitMQ, kept up by a supervisor task that reconnects with backoff.
//!
//! [`Shared::live`] holds the current connection and its confirm-mode publishing channel, or
//! `None` while disconnected. The supervisor watches the connection; when it breaks it clears
//! `live`, reconnects with bounded, jittered exponential backoff, declares the topology again
//! (the namespace and every group this process declared or consumes) and publishes the new
//! connection, which subscriptions pick up to consume again.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_bus::Subscribe;
use ferry_runtime::Backoff;
use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::topology::{self, Names};

/// The broker's `max_message_size` ferry assumes when the bus URL does not say: RabbitMQ 4's
/// default (3.x allows 128 MiB; `?max_message_size=BYTES` tells ferry so).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Longest wait for a connection to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat asked of the broker when the URL does not say (seconds): a silently dead peer is
/// noticed within about twice this.
const HEARTBEAT: u16 = 10;
/// How often the supervisor looks at the connection's state besides its error events.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// An open connection with its publishing channel.
pub struct Live {
    pub conn: Connection,
    /// Publisher confirms are on. Held while a batch is being sent, so a batch goes out whole
    /// and in order. The broker closes it when it refuses a message as too large; the next
    /// batch opens another ([`Live::publisher`]), leaving the connection, and every
    /// subscription on it, alone.
    publisher: tokio::sync::Mutex<Channel>,
    /// Set when publishing failed in a way a new channel does not mend: the supervisor then
    /// connects again and declares the topology again.
    broken: std::sync::atomic::AtomicBool,
    /// Counts connections, so a subscription can tell a new one from the one that failed it.
    pub generation: u64,
}

impl Live {
    pub fn usable(&self) -> bool {
        self.conn.status().connected() && !self.broken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the connection for the supervisor to replace.
    pub fn mark_broken(&self) {
        self.broken.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The publishing channel, held for a batch; a new one in confirm mode when the broker
    /// closed the last.
    pub async fn publisher(&self, endpoint: &str) -> Result<tokio::sync::MutexGuard<'_, Channel>> {
        let mut channel = self.publisher.lock().await;
        if !channel.status().connected() {
            let fresh = open_publisher(&self.conn, endpoint)
                .await
                .inspect_err(|_| self.mark_broken())?;
            tracing::info!(%endpoint, "opened a new publishing channel");
            *channel = fresh;
        }
        Ok(channel)
    }
}

/// A channel in confirm mode.
async fn open_publisher(conn: &Connection, endpoint: &str) -> Result<Channel> {
    let publisher = conn
        .create_channel()
        .await
        .map_err(|e| Error::from_lapin(endpoint, "the publishing channel", e))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| Error::from_lapin(endpoint, "publisher confirms", e))?;
    Ok(publisher)
}

/// What the bus, its subscriptions and the supervisor share.
pub struct Shared {
    uri: AMQPUri,
    /// The largest message the broker takes, as far as ferry knows: from the URL's
    /// `max_message_size`, [`DEFAULT_MAX_MESSAGE_SIZE`] otherwise, lowered when the broker
    /// refuses a message naming a smaller limit. A larger message is refused before it is
    /// sent: the broker would close the publishing channel for it.
    pub max_message_size: AtomicUsize,
    /// `host:port/vhost`, for messages (never the password).
    pub endpoint: String,
    pub names: Names,
    /// Every group declared or consumed by this process, declared again after a reconnect.
    groups: Mutex<BTreeMap<String, Subscribe>>,
    pub live: watch::Sender<Option<Arc<Live>>>,
    /// Poked by whoever sees an operation fail, so the supervisor looks at once.
    pub trouble: Notify,
    /// Cancelled when the bus and all its subscriptions are gone.
    pub stop: CancellationToken,
}

impl Shared {
    /// Parses the URL (without its `namespace` parameter, which is ferry's).
    pub fn new(url: &str, ns: &str) -> Result<Shared> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut max_message_size = DEFAULT_MAX_MESSAGE_SIZE;
        let mut rest: Vec<&str> = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            if kv.starts_with("namespace=") {
                continue;
            }
            if let Some(v) = kv.strip_prefix("max_message_size=") {
                max_message_size = match v.parse::<usize>() {
                    Ok(n) if n >= 4096 => n,
                    _ => {
                        return Err(Error::Url {
                            url: ferry_runtime::redact(url),
                            reason: format!(
                                "max_message_size={v:?} is not a number of bytes of at least 4096 \
                                 (the broker's max_message_size)"
                            ),
                        });
                    }
                };
                continue;
            }
            rest.push(kv);
        }
        let cleaned = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut uri: AMQPUri = cleaned.parse().map_err(|reason| Error::Url {
            url: ferry_runtime::redact(url),
            reason,
        })?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT);
        uri.query
            .connection_timeout
            .get_or_insert(CONNECT_TIMEOUT.as_millis() as u64);
        let endpoint = format!("{}:{}/{}", uri.authority.host, uri.authority.port, uri.vhost);
        let mut groups = BTreeMap::new();
        for g in topology::standard_groups() {
            groups.insert(g.group.clone(), g);
        }
        Ok(Shared {
            uri,
            max_message_size: AtomicUsize::new(max_message_size),
            endpoint,
            names: Names::new(ns),
            groups: Mutex::new(groups),
            live: watch::channel(None).0,
            trouble: Notify::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Remembers a group (merging its topics) so a reconnect declares it again.
    pub fn remember(&self, spec: &Subscribe) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let entry = groups
            .entry(spec.group.clone())
            .or_insert_with(|| Subscribe::new(spec.group.clone(), []));
        for t in &spec.topics {
            if !entry.topics.contains(t) {
                entry.topics.push(t.clone());
            }
        }
    }

    pub fn groups(&self) -> Vec<Subscribe> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.values().cloned().collect()
    }

    /// The current connection, if it is up.
    pub fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone().filter(|l| l.usable())
    }

    /// The current connection or the error a caller should retry on.
    pub fn require(&self) -> Result<Arc<Live>> {
        self.current().ok_or_else(|| Error::Disconnected {
            endpoint: self.endpoint.clone(),
        })
    }

    /// Declares a group's queue and bindings on the current connection.
    pub async fn declare_group(&self, live: &Live, spec: &Subscribe) -> Result<()> {
        let ch = self.channel(live, "a channel to declare a queue").await?;
        let r = topology::declare_group(&ch, &self.names, spec, &self.endpoint).await;
        close_quietly(&ch).await;
        if let Err(e) = &r
            && e.is_transient()
        {
            self.trouble.notify_one();
        }
        r
    }

    /// Opens a channel, reporting trouble if it fails.
    pub async fn channel(&self, live: &Live, what: &str) -> Result<Channel> {
        live.conn.create_channel().await.map_err(|e| {
            self.trouble.notify_one();
            Error::from_lapin(&self.endpoint, what, e)
        })
    }

    /// Opens a connection, declares everything and opens the publishing channel.
    pub async fn establish(&self, generation: u64) -> Result<Arc<Live>> {
        let props = ConnectionProperties::default().with_connection_name("ferry".into());
        let conn =
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(self.uri.clone(), props))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(Error::from_lapin(&self.endpoint, "the connection", e)),
                Err(_) => {
                    return Err(Error::Disconnected {
                        endpoint: self.endpoint.clone(),
                    });
                }
            };
        let setup = async {
            let what = "the topology";
            let ch = conn
                .create_channel()
                .await
                .map_err(|e| Error::from_lapin(&self.endpoint, what, e))?;
            topology::declare_base(&ch, &self.names, &self.endpoint).await?;
            for g in self.groups() {
                topology::declare_group(&ch, &self.names, &g, &self.endpoint).await?;
            }
            close_quietly(&ch).await;
            open_publisher(&conn, &self.endpoint).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(Ok(publisher)) => Ok(Arc::new(Live {
                conn,
                publisher: tokio::sync::Mutex::new(publisher),
                broken: Default::default(),
                generation,
            })),
            Ok(Err(e)) => {
                close_connection(&conn).await;
                Err(e)
            }
            Err(_) => {
                close_connection(&conn).await;
                Err(Error::Disconnected {
                    endpoint: self.endpoint.clone(),
                })
            }
        }
    }
}

pub async fn close_quietly(ch: &Channel) {
    if ch.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(5), ch.close(200, "OK".into())).await;
    }
}

async fn close_connection(conn: &Connection) {
    if conn.status().connected() {
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.close(200, "OK".into())).await;
    }
}

/// The reconnect backoff: the first wait 100-200 ms, doubling up to 2.5-5 s, jittered so that
/// the clients of a restarted broker do not all come back at once.
pub fn reconnect_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).jittered()
}

/// Keeps the connection up until `shared.stop` is cancelled, then closes it.
pub async fn supervise(shared: Arc<Shared>, first: Arc<Live>) {
    let mut current = Some(first);
    let mut generation = 1;
    let mut backoff = reconnect_backoff();
    loop {
        if let Some(live) = current.take() {
            watch_until_broken(&shared, &live).await;
            shared.live.send_replace(None);
            close_connection(&live.conn).await;
            if shared.stop.is_cancelled() {
                return;
            }
            tracing::warn!(endpoint = %shared.endpoint, "lost the RabbitMQ connection; reconnecting");
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        generation += 1;
        match shared.establish(generation).await {
            Ok(live) => {
                tracing::info!(endpoint = %shared.endpoint, generation, "reconnected to RabbitMQ");
                backoff.reset();
                shared.live.send_replace(Some(live.clone()));
                current = Some(live);
            }
            Err(e) => {
                tracing::warn!(endpoint = %shared.endpoint, error = %e, retry_in = ?delay, "reconnecting to RabbitMQ failed");
            }
        }
    }
}

async fn watch_until_broken(shared: &Shared, live: &Live) {
    let mut events = live.conn.events_listener();
    loop {
        if shared.stop.is_cancelled() || !live.usable() {
            return;
        }
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = shared.trouble.notified() => {}
            // Errors of single channels (a refused declaration) come here too: only the state
            // of the connection and the publishing channel, checked above, decides.
            ev = events.next() => match ev {
                Some(lapin::Event::Error(e)) => tracing::debug!(error = %e, "RabbitMQ error"),
                Some(_) => {}
                None => return,
            },
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_parameter_is_not_passed_to_the_client_and_passwords_stay_out_of_errors() {
        let s = Shared::new("amqp://u:p@127.0.0.1:5672/v?namespace=t1&heartbeat=5", "t1").unwrap();
        assert_eq!(s.endpoint, "127.0.0.1:5672/v");
        assert_eq!(s.uri.query.heartbeat, Some(5));
        assert_eq!(s.max_message_size.into_inner(), DEFAULT_MAX_MESSAGE_SIZE);
        let s = Shared::new(
            "amqps://u:p@h:5671/v?max_message_size=134217728&heartbeat=5",
            "t1",
        )
        .unwrap();
        assert_eq!(s.max_message_size.into_inner(), 128 * 1024 * 1024);
        assert_eq!(s.uri.query.heartbeat, Some(5));
        let e = Shared::new("amqp://u:secret@h/v?max_message_size=lots", "t1")
            .err()
            .unwrap();
        assert!(e.to_string().contains("max_message_size"), "{e}");
        let e = Shared::new("amqp://u:secret@[bad/v", "t1").err().unwrap();
        let msg = e.to_string();
        assert!(!msg.contains("secret") && msg.contains("amqp://USER"), "{msg}");
    }
}
