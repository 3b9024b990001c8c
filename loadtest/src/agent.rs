//! Tasks run by a warm `ferry agent` rather than the local launcher: one agent of cluster
//! [`CLUSTER`] registering [`TASK`] as the run's no-op command, started beside the other
//! services and serving before the clock starts. The flows ask for it with `runner: { type:
//! agent, cluster: loadtest, task: noop@1.0 }`; the scheduler sends such a task to that
//! request's dispatch topic, whose shared queue the agent consumes.

use ferry_bus::Subscribe;
use ferry_event::Topic;
use ferry_event::agent::{self, TaskRef};

/// The cluster the load test's agent serves.
pub const CLUSTER: &str = "loadtest";
/// The task it registers, as the flows ask for it.
pub const TASK: &str = "noop@1.0";

/// What runs a deployment run's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// The local launcher (`ferry service launcher`).
    Local,
    /// One agent (`ferry agent --cluster loadtest`).
    Agent,
}

impl Runner {
    /// A task's runner and command, as fields of a flow's task in YAML flow style.
    pub fn fields(self, command: &str) -> String {
        match self {
            Runner::Local => format!(
                "runner: local, command: [{}]",
                serde_json::to_string(command).expect("a string serializes")
            ),
            // The agent's registered command is the no-op; the task adds no arguments.
            Runner::Agent => format!("runner: {{ type: agent, cluster: {CLUSTER}, task: {TASK} }}"),
        }
    }

    /// The backend whose dispatch and cancel topics carry the tasks.
    pub fn backend(self) -> String {
        match self {
            Runner::Local => "local".into(),
            Runner::Agent => agent::backend(CLUSTER, &task()),
        }
    }

    /// The topics a watcher of the run's control traffic (logs apart) listens to.
    pub fn topics(self) -> [Topic; 4] {
        [
            Topic::Control,
            Topic::Lifecycle,
            Topic::Dispatch(self.backend()),
            Topic::Cancel(self.backend()),
        ]
    }

    pub fn name(self) -> &'static str {
        match self {
            Runner::Local => "local launcher",
            Runner::Agent => "agent",
        }
    }
}

fn task() -> TaskRef {
    TASK.parse().expect("a valid task reference")
}

/// The agent's configuration file: [`TASK`] runs `command`.
pub fn config(command: &str) -> String {
    let task = task();
    format!(
        "tasks:\n  - name: {}\n    version: \"{}\"\n    command: [{}]\n",
        task.name,
        task.version,
        serde_json::to_string(command).expect("a string serializes")
    )
}

/// The consumer groups whose queues the agent's requests leave on the broker.
pub fn groups() -> Vec<Subscribe> {
    agent::served(CLUSTER, &task())
        .into_iter()
        .map(|backend| Subscribe::new(agent::group(&backend), [Topic::Dispatch(backend)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::{Kind, Shape};

    #[test]
    fn agent_flows_and_the_agent_configuration_are_valid() {
        let shape = Shape {
            kind: Kind::Fanout,
            width: 3,
            depth: 2,
        };
        let flow = shape.flow_on(&Runner::Agent.fields("/bin/true"));
        let valid = ferry_flow::validate(&flow, "agent.yaml").unwrap_or_else(|p| panic!("{p:?}\n{flow}"));
        assert_eq!(valid.flow().tasks.len(), 4);
        let runners: Vec<_> = valid.runners().collect();
        assert!(
            runners.iter().all(|r| r.route() == Runner::Agent.backend()),
            "{runners:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, config("/bin/true")).unwrap();
        let registry = ferry_launcher_local::agent::Registry::load(&file).unwrap();
        assert!(format!("{registry:?}").contains("noop"), "{registry:?}");
    }
}
