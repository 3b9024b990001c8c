//! What a Batch job's details say of its attempt: running, waiting (and for how long it may),
//! or ended, and whose fault an end was; and where its output is.

use std::time::Duration;

use aws_sdk_batch::types::{JobDetail, JobStatus};
use ferry_launcher::backend::{ComputeState, Exit};

/// Whether Batch is done with the job.
pub(crate) fn is_terminal(s: &JobStatus) -> bool {
    matches!(s, JobStatus::Succeeded | JobStatus::Failed)
}

/// The job's log stream: the one Batch names, else the awslogs driver's default
/// (`<job definition name>/default/<job id>`) once the job started.
pub(crate) fn stream_name(job: &JobDetail) -> Option<String> {
    if let Some(s) = job.container().and_then(|c| c.log_stream_name()) {
        return Some(s.to_string());
    }
    job.started_at()?;
    let def = job.job_definition()?;
    let name = def.rsplit_once("job-definition/").map_or(def, |(_, n)| n);
    let name = name.split(':').next().unwrap_or(name);
    Some(format!("{name}/default/{}", job.job_id()?))
}

/// The state of a job that has not run yet, created at `created_ms`: pending until its
/// deadline, then ended with the reason (Batch's, else the usual causes).
pub(crate) fn waiting_state(
    name: &str,
    status: &JobStatus,
    created_ms: i64,
    now_ms: i64,
    deadline: Duration,
    reason: Option<&str>,
) -> ComputeState {
    let waited = Duration::from_millis(u64::try_from(now_ms - created_ms).unwrap_or(0));
    if waited <= deadline {
        return ComputeState::Pending;
    }
    ComputeState::Exited(Exit {
        code: None,
        error: Some(format!(
            "AWS Batch job {name} was still {} after {}s, past its pending deadline of {}s: {} \
             (runner.pendingDeadlineSeconds)",
            status.as_str(),
            waited.as_secs(),
            deadline.as_secs(),
            reason.unwrap_or(
                "its compute environment has no capacity for it, or no instance type it allows fits the job's \
                 resources"
            )
        )),
        reason: Some("PendingDeadlineExceeded".into()),
    })
}

/// How a FAILED job ended, and whose fault that was.
pub(crate) fn failed(name: &str, job: &JobDetail, code: Option<i32>) -> ComputeState {
    let status_reason = job.status_reason().unwrap_or("");
    let container_reason = job.container().and_then(|c| c.reason()).unwrap_or("");
    let timed_out = status_reason.contains("Job attempt duration exceeded timeout");
    let oom = container_reason.starts_with("OutOfMemoryError");
    let reason = if timed_out {
        Some("DeadlineExceeded".to_string())
    } else if oom {
        Some("OOMKilled".to_string())
    } else {
        None
    };
    let by_ferry = status_reason.starts_with("ferry: ");
    match code {
        Some(code) => {
            let mut error = format!("exited with status {code}");
            if timed_out {
                error.push_str(" after its AWS Batch timeout (timeout.attemptDurationSeconds)");
            } else if oom {
                error.push_str(&format!(": {container_reason}"));
            } else if !by_ferry
                && !status_reason.is_empty()
                && status_reason != "Essential container in task exited"
            {
                error.push_str(&format!(" ({status_reason})"));
            }
            ComputeState::Exited(Exit {
                code: Some(code),
                error: Some(error),
                reason,
            })
        }
        None if timed_out || oom || by_ferry || is_task_container_failure(container_reason) => {
            let why = [status_reason, container_reason]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(": ");
            ComputeState::Exited(Exit {
                code: None,
                error: Some(format!("AWS Batch job {name} failed: {why}")),
                reason,
            })
        }
        // No exit code and no reason of the task's: its host went away (a Spot instance
        // reclaimed), or it was terminated behind ferry's back.
        None => ComputeState::Vanished(format!(
            "AWS Batch job {name} failed without an exit code: {}",
            if status_reason.is_empty() && container_reason.is_empty() {
                "Batch gave no reason".to_string()
            } else {
                [status_reason, container_reason]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": ")
            }
        )),
    }
}

/// Container failures that the task's own definition causes (an image that cannot be pulled,
/// a command that cannot start): the same on every try.
fn is_task_container_failure(reason: &str) -> bool {
    [
        "CannotPullContainerError",
        "CannotStartContainerError",
        "CannotInspectContainerError",
        "ResourceInitializationError",
    ]
    .iter()
    .any(|p| reason.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_batch::types::ContainerDetail;

    fn job(status: JobStatus, reason: Option<&str>, container_reason: Option<&str>) -> JobDetail {
        JobDetail::builder()
            .job_name("ferry-a1")
            .job_id("id-1")
            .status(status)
            .set_status_reason(reason.map(String::from))
            .container(
                ContainerDetail::builder()
                    .set_reason(container_reason.map(String::from))
                    .build(),
            )
            .build()
    }

    #[test]
    fn failed_jobs_are_the_tasks_fault_when_it_exited_or_its_definition_is_wrong() {
        match failed("ferry-a1", &job(JobStatus::Failed, None, None), Some(3)) {
            ComputeState::Exited(e) => {
                assert_eq!(
                    (e.code, e.error.as_deref()),
                    (Some(3), Some("exited with status 3"))
                )
            }
            other => panic!("{other:?}"),
        }
        let timed_out = job(
            JobStatus::Failed,
            Some("Job attempt duration exceeded timeout"),
            None,
        );
        match failed("ferry-a1", &timed_out, None) {
            ComputeState::Exited(e) => assert_eq!(e.reason.as_deref(), Some("DeadlineExceeded")),
            other => panic!("{other:?}"),
        }
        let oom = job(
            JobStatus::Failed,
            None,
            Some("OutOfMemoryError: Container killed due to memory usage"),
        );
        match failed("ferry-a1", &oom, Some(137)) {
            ComputeState::Exited(e) => {
                assert_eq!(e.reason.as_deref(), Some("OOMKilled"));
                assert!(e.error.unwrap().contains("OutOfMemoryError"));
            }
            other => panic!("{other:?}"),
        }
        let pull = job(
            JobStatus::Failed,
            None,
            Some("CannotPullContainerError: pull image manifest has been retried"),
        );
        assert!(matches!(failed("ferry-a1", &pull, None), ComputeState::Exited(_)));
        // A host that went away: the platform's.
        let spot = job(
            JobStatus::Failed,
            Some("Host EC2 (instance i-0abc) terminated."),
            None,
        );
        assert!(matches!(
            failed("ferry-a1", &spot, None),
            ComputeState::Vanished(m) if m.contains("Host EC2")
        ));
    }

    #[test]
    fn a_job_waiting_past_its_pending_deadline_ends_with_the_reason() {
        let deadline = Duration::from_secs(60);
        let runnable = JobStatus::Runnable;
        assert_eq!(
            waiting_state("ferry-a1", &runnable, 1_000, 61_000, deadline, None),
            ComputeState::Pending
        );
        match waiting_state("ferry-a1", &runnable, 1_000, 62_000, deadline, None) {
            ComputeState::Exited(e) => {
                assert_eq!(e.reason.as_deref(), Some("PendingDeadlineExceeded"));
                let error = e.error.unwrap();
                assert!(
                    error.contains("still RUNNABLE after 61s") && error.contains("no capacity"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        match waiting_state(
            "ferry-a1",
            &JobStatus::Starting,
            0,
            120_000,
            deadline,
            Some("CannotPullContainerError"),
        ) {
            ComputeState::Exited(e) => assert!({
                let error = e.error.unwrap();
                error.contains("still STARTING after 120s")
                    && error.ends_with("60s: CannotPullContainerError (runner.pendingDeadlineSeconds)")
            }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_log_stream_is_batchs_or_the_drivers_default() {
        let named = JobDetail::builder()
            .container(
                ContainerDetail::builder()
                    .log_stream_name("def/default/x")
                    .build(),
            )
            .build();
        assert_eq!(stream_name(&named).as_deref(), Some("def/default/x"));
        let unnamed = JobDetail::builder()
            .job_id("id-9")
            .started_at(1)
            .job_definition("arn:aws:batch:us-east-1:123456789012:job-definition/ferry-abc:3")
            .build();
        assert_eq!(stream_name(&unnamed).as_deref(), Some("ferry-abc/default/id-9"));
        let not_started = JobDetail::builder()
            .job_id("id-9")
            .job_definition("arn:aws:batch:us-east-1:123456789012:job-definition/ferry-abc:3")
            .build();
        assert_eq!(stream_name(&not_started), None);
    }
}
