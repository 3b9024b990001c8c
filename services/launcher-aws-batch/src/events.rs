//! Batch's state-change events as hints: EventBridge delivers each "Batch Job State Change" of
//! the account to an SQS queue (`infra/terraform` makes the rule and the queue); one task
//! long-polls it and hands the job ids to the [`Poller`](crate::aws::Poller)s of every region, each of which
//! describes those of the jobs it watches at once instead of at its next round. The queue is
//! the launcher's own, in its region: jobs of other regions get hints only when their regions'
//! rules deliver there too, and their pollers' interval otherwise. DescribeJobs stays the truth: an event is never taken for a
//! job's state, a lost or late one only leaves the job to the poller's interval, and a
//! duplicate costs one more describe.
//!
//! Every message received is deleted once read, whatever it holds: a hint is worth nothing
//! later, and one that cannot be read (another rule's event, a test message) would otherwise
//! come back for ever.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use ferry_runtime::Backoff;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::aws::Regions;

/// The `detail-type` of Batch's job state changes.
pub const DETAIL_TYPE: &str = "Batch Job State Change";

/// How long one ReceiveMessage waits for a message (SQS's longest long poll).
const LONG_POLL_SECS: i32 = 20;

/// The job id of a Batch job state change, as EventBridge delivers it (the event itself as
/// the message body); `None` for anything else.
pub fn job_id(body: &str) -> Option<String> {
    let event: Value = serde_json::from_str(body).ok()?;
    if event["detail-type"].as_str() != Some(DETAIL_TYPE) {
        return None;
    }
    event["detail"]["jobId"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
}

/// Listens on the queue at `queue_url` until `stop`, hinting the pollers of `regions` with
/// every job state change received. A queue that cannot be read is tried again with a growing wait (the poller
/// goes on at its interval meanwhile).
pub fn listen(sqs: aws_sdk_sqs::Client, queue_url: String, regions: Arc<Regions>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).jittered();
        tracing::info!(queue = %queue_url, "reading Batch job state changes from SQS");
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return,
                r = sqs
                    .receive_message()
                    .queue_url(&queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(LONG_POLL_SECS)
                    .send() => r,
            };
            let out = match received {
                Ok(out) => {
                    backoff.reset();
                    out
                }
                Err(e) => {
                    tracing::warn!(queue = %queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot read Batch's state changes from SQS; the poller's interval decides meanwhile");
                    if !backoff.wait(&stop).await {
                        return;
                    }
                    continue;
                }
            };
            let messages = out.messages();
            if messages.is_empty() {
                continue;
            }
            let ids: Vec<String> = messages
                .iter()
                .filter_map(|m| m.body().and_then(job_id))
                .collect();
            let hinted = regions.hint(&ids);
            tracing::debug!(received = messages.len(), hinted, "Batch job state changes");
            let entries: Vec<DeleteMessageBatchRequestEntry> = messages
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle()?)
                        .build()
                        .ok()
                })
                .collect();
            if let Err(e) = sqs
                .delete_message_batch()
                .queue_url(&queue_url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                // They come back after their visibility timeout: a hint again, harmless.
                tracing::warn!(queue = %queue_url, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "cannot delete Batch state changes read from SQS");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_batch_job_state_changes_name_a_job() {
        let event = r#"{"version":"0","id":"c8f9c4b5","detail-type":"Batch Job State Change","source":"aws.batch",
            "account":"123456789012","time":"2026-12-07T10:00:00Z","region":"us-east-1",
            "resources":["arn:aws:batch:us-east-1:123456789012:job/4c7599ae"],
            "detail":{"jobName":"ferry-a1","jobId":"4c7599ae","jobQueue":"arn:…","status":"SUCCEEDED"}}"#;
        assert_eq!(job_id(event).as_deref(), Some("4c7599ae"));
        for other in [
            r#"{"detail-type":"ECS Task State Change","detail":{"jobId":"x"}}"#,
            r#"{"detail-type":"Batch Job State Change","detail":{}}"#,
            r#"{"detail-type":"Batch Job State Change","detail":{"jobId":""}}"#,
            "not json",
            "",
        ] {
            assert_eq!(job_id(other), None, "{other}");
        }
    }
}
