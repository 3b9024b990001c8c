//! The launcher every other test here dispatches to (`sim::launcher`) passes the launcher
//! conformance suite, configured as those tests configure it: same runner type, same shutdown
//! policy, the same platform with a script. So what the scheduler is tested against is held to
//! what every real launcher is held to.

mod sim;

use std::sync::Arc;

use ferry_launcher::testing::DoubleTarget;

ferry_launcher::launcher_conformance!(async {
    Arc::new(DoubleTarget(
        sim::platform(Arc::new(|_| sim::succeed(1))),
        sim::POLICY,
    ))
});
