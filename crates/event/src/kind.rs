//! Event types and the topics they travel on.
//!
//! Routing keeps classes of traffic apart so that one can never starve another: intake (work
//! arriving from outside), control (what the scheduler consumes), lifecycle (public state changes),
//! dispatch per backend (what one kind of launcher consumes) and logs.

use std::fmt;

use cloudevents::{AttributesReader, Event};

/// Prefix of every ferry event type.
pub const PREFIX: &str = "dev.ferry.";

pub const JOB_SUBMITTED: &str = "dev.ferry.job.submitted";
pub const JOB_PLANNED: &str = "dev.ferry.job.planned";
pub const JOB_REJECTED: &str = "dev.ferry.job.rejected";
pub const JOB_CANCEL: &str = "dev.ferry.job.cancel";
pub const JOB_RETRY: &str = "dev.ferry.job.retry";
pub const JOB_STARTED: &str = "dev.ferry.job.started";
pub const JOB_SUCCEEDED: &str = "dev.ferry.job.succeeded";
pub const JOB_FAILED: &str = "dev.ferry.job.failed";
pub const JOB_CANCELLED: &str = "dev.ferry.job.cancelled";

pub const FLOW_DEPLOY: &str = "dev.ferry.flow.deploy";
pub const FLOW_UNDEPLOY: &str = "dev.ferry.flow.undeploy";
pub const FLOW_DEPLOYED: &str = "dev.ferry.flow.deployed";
pub const FLOW_UNDEPLOYED: &str = "dev.ferry.flow.undeployed";
pub const FLOW_REJECTED: &str = "dev.ferry.flow.rejected";

pub const TASK_DISPATCHED: &str = "dev.ferry.task.dispatched";
pub const TASK_CANCEL: &str = "dev.ferry.task.cancel";
pub const TASK_ACCEPTED: &str = "dev.ferry.task.accepted";
pub const TASK_STARTED: &str = "dev.ferry.task.started";
pub const TASK_HEARTBEAT: &str = "dev.ferry.task.heartbeat";
pub const TASK_LOG: &str = "dev.ferry.task.log";
pub const TASK_FINISHED: &str = "dev.ferry.task.finished";
pub const TASK_RETRYING: &str = "dev.ferry.task.retrying";
pub const TASK_SUCCEEDED: &str = "dev.ferry.task.succeeded";
pub const TASK_FAILED: &str = "dev.ferry.task.failed";
pub const TASK_CANCELLED: &str = "dev.ferry.task.cancelled";
/// Tasks that had not started, cancelled together with their job (see
/// [`crate::payload::TasksState`]).
pub const TASKS_CANCELLED: &str = "dev.ferry.tasks.cancelled";
/// Finished tasks re-queued together by a job retry.
pub const TASKS_RETRYING: &str = "dev.ferry.tasks.retrying";

pub const LAUNCHER_PRESENCE: &str = "dev.ferry.launcher.presence";

/// Every event type ferry defines, with the schema file that describes its `data`.
pub const ALL: &[(&str, &str)] = &[
    (JOB_SUBMITTED, "job.submitted"),
    (JOB_PLANNED, "job.planned"),
    (JOB_REJECTED, "job.rejected"),
    (JOB_CANCEL, "job.cancel"),
    (JOB_RETRY, "job.retry"),
    (JOB_STARTED, "job.state"),
    (JOB_SUCCEEDED, "job.state"),
    (JOB_FAILED, "job.state"),
    (JOB_CANCELLED, "job.state"),
    (FLOW_DEPLOY, "flow.deploy"),
    (FLOW_UNDEPLOY, "flow.undeploy"),
    (FLOW_DEPLOYED, "flow.deployed"),
    (FLOW_UNDEPLOYED, "flow.undeployed"),
    (FLOW_REJECTED, "flow.rejected"),
    (TASK_DISPATCHED, "task.dispatched"),
    (TASK_CANCEL, "task.cancel"),
    (TASK_ACCEPTED, "task.accepted"),
    (TASK_STARTED, "task.started"),
    (TASK_HEARTBEAT, "task.heartbeat"),
    (TASK_LOG, "task.log"),
    (TASK_FINISHED, "task.finished"),
    (TASK_RETRYING, "task.state"),
    (TASK_SUCCEEDED, "task.state"),
    (TASK_FAILED, "task.state"),
    (TASK_CANCELLED, "task.state"),
    (TASKS_CANCELLED, "tasks.state"),
    (TASKS_RETRYING, "tasks.state"),
    (LAUNCHER_PRESENCE, "launcher.presence"),
];

/// A logical topic. Brokers map it to an exchange/queue (RabbitMQ) or a topic (Kafka).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Work arriving from outside: `job.submitted`, `flow.deploy` and `flow.undeploy`, and any
    /// non-ferry event (trigger candidates).
    Intake,
    /// What the scheduler consumes: planned jobs, commands, attempt reports.
    Control,
    /// Public state changes: job and task lifecycle, rejections.
    Lifecycle,
    /// Work for one backend's launchers: `task.dispatched`, shared among them.
    Dispatch(String),
    /// `task.cancel` for one backend: every launcher instance of it hears every cancel (each
    /// subscribes with its own ephemeral group), since only the one running the attempt can
    /// stop it.
    Cancel(String),
    /// `task.log` batches, kept apart so log volume never delays control traffic.
    Logs,
}

impl Topic {
    /// The topic's name, also used as the broker-side name suffix.
    pub fn name(&self) -> String {
        match self {
            Topic::Intake => "intake".into(),
            Topic::Control => "control".into(),
            Topic::Lifecycle => "lifecycle".into(),
            Topic::Dispatch(backend) => format!("dispatch.{backend}"),
            Topic::Cancel(backend) => format!("cancel.{backend}"),
            Topic::Logs => "logs".into(),
        }
    }

    /// Parses a name produced by [`Topic::name`].
    pub fn parse(name: &str) -> Option<Topic> {
        Some(match name {
            "intake" => Topic::Intake,
            "control" => Topic::Control,
            "lifecycle" => Topic::Lifecycle,
            "logs" => Topic::Logs,
            other => match other.split_once('.') {
                Some(("dispatch", backend)) if !backend.is_empty() => Topic::Dispatch(backend.to_string()),
                Some(("cancel", backend)) if !backend.is_empty() => Topic::Cancel(backend.to_string()),
                _ => return None,
            },
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// The extension naming the backend a dispatch or cancel event is for.
pub const EXT_BACKEND: &str = "ferrybackend";

/// The topic an event travels on, from its type (and, for dispatch traffic, its backend).
pub fn route(event: &Event) -> Topic {
    route_type(event.ty(), || {
        event
            .extension(EXT_BACKEND)
            .map(|v| v.to_string())
            .unwrap_or_else(|| "local".to_string())
    })
}

/// The topic for an event type; `backend` is asked only for dispatch-class types.
pub fn route_type(ty: &str, backend: impl FnOnce() -> String) -> Topic {
    match ty {
        JOB_SUBMITTED | FLOW_DEPLOY | FLOW_UNDEPLOY => Topic::Intake,
        JOB_PLANNED | JOB_CANCEL | JOB_RETRY | TASK_ACCEPTED | TASK_STARTED | TASK_HEARTBEAT
        | TASK_FINISHED | LAUNCHER_PRESENCE => Topic::Control,
        TASK_DISPATCHED => Topic::Dispatch(backend()),
        TASK_CANCEL => Topic::Cancel(backend()),
        TASK_LOG => Topic::Logs,
        t if t.starts_with(PREFIX) => Topic::Lifecycle,
        _ => Topic::Intake,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_through_their_names() {
        for t in [
            Topic::Intake,
            Topic::Control,
            Topic::Lifecycle,
            Topic::Logs,
            Topic::Dispatch("aws-batch".into()),
            Topic::Cancel("local".into()),
        ] {
            assert_eq!(Topic::parse(&t.name()), Some(t));
        }
        assert_eq!(Topic::parse("nonsense"), None);
        assert_eq!(Topic::parse("dispatch."), None);
    }

    #[test]
    fn control_and_logs_and_dispatch_are_separate() {
        let b = || "docker".to_string();
        assert_eq!(route_type(TASK_FINISHED, b), Topic::Control);
        assert_eq!(route_type(TASK_LOG, b), Topic::Logs);
        assert_eq!(route_type(TASK_DISPATCHED, b), Topic::Dispatch("docker".into()));
        assert_eq!(route_type(TASK_CANCEL, b), Topic::Cancel("docker".into()));
        assert_eq!(route_type(TASK_SUCCEEDED, b), Topic::Lifecycle);
        assert_eq!(route_type("com.acme.file.uploaded", b), Topic::Intake);
        assert_eq!(route_type(FLOW_DEPLOY, b), Topic::Intake);
        assert_eq!(route_type(FLOW_DEPLOYED, b), Topic::Lifecycle);
    }
}
