//! The launcher conformance suite against the kubernetes backend: Jobs on the test API server,
//! whose pods run for real as containers on the private Docker engine.

mod common;

use std::sync::Arc;

use ferry_launcher::conformance::Target;

ferry_launcher::launcher_conformance!(async {
    if !common::docker_given("kubernetes conformance") {
        return Arc::new(common::Skip) as Arc<dyn Target>;
    }
    Arc::new(common::Kube::new().await) as Arc<dyn Target>
});
