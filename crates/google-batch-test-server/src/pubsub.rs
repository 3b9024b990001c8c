//! Publishing jobs' state changes to Pub/Sub, as Batch does for a job's `notifications`: each
//! change becomes a message on the job's topic, published in the order the changes happened by
//! one task that sends them to a Pub/Sub REST API (`POST /v1/{topic}:publish`).

use std::collections::BTreeMap;

use base64::Engine;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Notice {
    /// `projects/P/topics/T`.
    pub topic: String,
    pub attributes: BTreeMap<String, String>,
    /// The message's data: the change's description, as Batch sends it.
    pub data: String,
}

/// Where job records send their notices; the publisher sends them on.
#[derive(Debug, Clone)]
pub struct Outbox(mpsc::UnboundedSender<Notice>);

impl Outbox {
    /// Starts the publisher of the Pub/Sub at `endpoint` (`http://127.0.0.1:PORT`), which ends
    /// with `shutdown`.
    pub fn start(endpoint: &str, shutdown: CancellationToken, tasks: &TaskTracker) -> Outbox {
        let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let http = reqwest::Client::new();
        tasks.spawn(async move {
            loop {
                let notice = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = rx.recv() => match n {
                        Some(n) => n,
                        None => return,
                    },
                };
                let body = serde_json::json!({
                    "messages": [{
                        "data": base64::engine::general_purpose::STANDARD.encode(notice.data.as_bytes()),
                        "attributes": notice.attributes,
                    }]
                });
                let url = format!("{endpoint}/v1/{}:publish", notice.topic);
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => tracing::warn!(topic = %notice.topic, status = %r.status(), "Pub/Sub refused a job notification"),
                    Err(e) => tracing::warn!(topic = %notice.topic, error = %e, "cannot publish a job notification"),
                }
            }
        });
        Outbox(tx)
    }

    /// Queues `notice`; never blocks (the job's record is locked while it changes).
    pub fn publish(&self, notice: Notice) {
        // The publisher is gone only once the server shuts down.
        let _ = self.0.send(notice);
    }
}
