//! The launcher conformance suite against the aws-batch backend: Batch jobs on moto, run as
//! containers on the test Docker engine, their output read from moto's CloudWatch Logs.

mod common;

use std::sync::Arc;

use ferry_launcher::conformance::Target;

ferry_launcher::launcher_conformance!(async {
    match common::moto() {
        Ok(endpoint) => Arc::new(common::BatchTarget::new(endpoint).await) as Arc<dyn Target>,
        Err(why) => Arc::new(common::Skip(why)) as Arc<dyn Target>,
    }
});
