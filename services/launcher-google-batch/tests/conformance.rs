//! The launcher conformance suite against the google-batch backend: Batch jobs on the Google
//! Batch test server, run as containers on the test Docker engine, their files staged on
//! fake-gcs-server and their output read from the server's Cloud Logging.

mod common;

use std::sync::Arc;

use ferry_launcher::conformance::Target;

ferry_launcher::launcher_conformance!(async {
    match common::gcs() {
        Ok(gcs) => Arc::new(common::BatchTarget::new(gcs).await) as Arc<dyn Target>,
        Err(why) => Arc::new(common::Skip(why)) as Arc<dyn Target>,
    }
});
