//! The events the scheduler acts on, decoded.

use ferry_event::payload::{
    JobCancel, JobRetry, LauncherPresence, TaskAccepted, TaskFinished, TaskHeartbeat, TaskStarted,
};
use ferry_event::{AttributesReader, Event, kind};

use super::planned::PlannedJson;

/// A launcher's word about an attempt, with the launcher it came from (`ferrylauncher`; absent
/// from launchers of older versions and from reports written in a launcher's place).
#[derive(Clone)]
pub(crate) struct Sent<T> {
    pub(crate) p: T,
    pub(crate) launcher: Option<String>,
}

/// An event the scheduler acts on, decoded. Cloning is cheap: a planned job's JSON is shared.
#[derive(Clone)]
pub(crate) enum Input {
    Planned(PlannedJson),
    Cancel(JobCancel),
    Retry(JobRetry),
    Accepted(Sent<TaskAccepted>),
    Started(Sent<TaskStarted>),
    Heartbeat(Sent<TaskHeartbeat>),
    Finished(Box<Sent<TaskFinished>>),
    /// Of no job: it skips the inbox (it is idempotent) and takes no job lock.
    Presence(LauncherPresence),
}

impl Input {
    /// `Ok(None)` for events that are not the scheduler's; `Err` with a reason for events that
    /// are, but cannot be read.
    ///
    /// A `job.planned` is checked whole here but kept as its JSON, taken out of the event: its
    /// tasks are decoded a chunk at a time as they are inserted (see [`PlannedJson`]).
    pub(crate) fn decode(event: &mut Event) -> std::result::Result<Option<Input>, String> {
        use ferry_event::decode;
        if event.ty() == kind::JOB_PLANNED {
            return PlannedJson::take(event).map(|p| Some(Input::Planned(p)));
        }
        let launcher = ferry_event::envelope::launcher_of(event);
        let r = match event.ty() {
            kind::JOB_CANCEL => decode(event).map(Input::Cancel),
            kind::JOB_RETRY => decode(event).map(Input::Retry),
            kind::TASK_ACCEPTED => decode(event).map(|p| Input::Accepted(Sent { p, launcher })),
            kind::TASK_STARTED => decode(event).map(|p| Input::Started(Sent { p, launcher })),
            kind::TASK_HEARTBEAT => decode(event).map(|p| Input::Heartbeat(Sent { p, launcher })),
            kind::TASK_FINISHED => decode(event).map(|p| Input::Finished(Box::new(Sent { p, launcher }))),
            kind::LAUNCHER_PRESENCE => decode(event).map(Input::Presence),
            _ => return Ok(None),
        };
        r.map(Some).map_err(|e| e.to_string())
    }

    /// The job it is about; `None` for a launcher's presence.
    pub(crate) fn job_id(&self) -> Option<&str> {
        Some(match self {
            Input::Planned(p) => &p.job_id,
            Input::Cancel(p) => &p.job_id,
            Input::Retry(p) => &p.job_id,
            Input::Accepted(s) => &s.p.job_id,
            Input::Started(s) => &s.p.job_id,
            Input::Heartbeat(s) => &s.p.job_id,
            Input::Finished(s) => &s.p.job_id,
            Input::Presence(_) => return None,
        })
    }

    /// The attempt it is about and the launcher it came from, for a launcher's word that says.
    pub(super) fn launcher_word(&self) -> Option<(&str, &str)> {
        let (attempt, launcher) = match self {
            Input::Accepted(s) => (&s.p.attempt_id, &s.launcher),
            Input::Started(s) => (&s.p.attempt_id, &s.launcher),
            Input::Heartbeat(s) => (&s.p.attempt_id, &s.launcher),
            Input::Finished(s) => (&s.p.attempt_id, &s.launcher),
            _ => return None,
        };
        Some((attempt.as_str(), launcher.as_deref()?))
    }

    /// Applied again without harm, and frequent: kept out of the inbox.
    pub(super) fn idempotent(&self) -> bool {
        matches!(self, Input::Heartbeat(_) | Input::Presence(_))
    }
}

#[cfg(test)]
mod tests {
    use ferry_event::EventBuilder;

    use super::*;

    #[test]
    fn planned_events_are_checked_then_kept_as_json() {
        let b = EventBuilder::new("test");
        let ok = serde_json::json!({"jobId": "j", "flowId": "f", "tasks": [
            {"id": "a", "runner": {"type": "local"}, "command": ["true"]}
        ]});
        let mut e = b.job(kind::JOB_PLANNED, "j", &ok);
        let Ok(Some(Input::Planned(p))) = Input::decode(&mut e) else {
            panic!("a valid job.planned decodes");
        };
        assert!(e.data().is_none(), "the data is taken out of the event");
        let head = p.head().unwrap();
        assert_eq!((head.job_id.as_str(), head.tasks.len()), ("j", 1));
        let bad = serde_json::json!({"jobId": "j", "flowId": "f", "tasks": [
            {"id": "a", "runner": {"type": "nowhere"}, "command": ["true"]}
        ]});
        let mut e = b.job(kind::JOB_PLANNED, "j", &bad);
        let err = Input::decode(&mut e).err().expect("a bad task is refused");
        assert!(err.contains("not valid for its type"), "{err}");
        assert!(
            e.data().is_some(),
            "a refused event keeps its data for the dead letter"
        );
    }
}
