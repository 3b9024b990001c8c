//! The launcher conformance suite against the runtime's test double: a remote-style backend
//! with no local process, whose compute outlives the launcher. Running it here keeps the
//! double as honest as the backends it stands in for; and since the double can take any
//! shutdown policy, the runtime's three are each run through the whole suite; and once more
//! with compute that queues on its platform before it runs.

use std::sync::Arc;
use std::time::Duration;

use ferry_launcher::ShutdownPolicy;
use ferry_launcher::testing::DoubleTarget;

/// Compute that outlives the launcher: the next start adopts it.
mod detach {
    use super::*;
    ferry_launcher::launcher_conformance!(async { Arc::new(DoubleTarget::new(ShutdownPolicy::Detach)) });
}

/// Compute that waits on its platform before it runs (a pod Pending): accepted, then started.
mod queued {
    use super::*;
    ferry_launcher::launcher_conformance!(async {
        Arc::new(DoubleTarget::queued(
            ShutdownPolicy::Detach,
            Duration::from_millis(150),
        ))
    });
}

/// Compute stopped with the launcher.
mod kill {
    use super::*;
    ferry_launcher::launcher_conformance!(async { Arc::new(DoubleTarget::new(ShutdownPolicy::Kill)) });
}

/// Running attempts may end on their own for a grace longer than the suite's tasks run.
mod drain {
    use super::*;
    ferry_launcher::launcher_conformance!(async {
        Arc::new(DoubleTarget::new(ShutdownPolicy::Drain(Duration::from_secs(5))))
    });
}

/// A grace shorter than the task: drained, then stopped and lost.
mod drain_short {
    use super::*;
    ferry_launcher::launcher_conformance!(async {
        Arc::new(DoubleTarget::new(ShutdownPolicy::Drain(Duration::from_millis(
            200,
        ))))
    });
}
