//! The launcher conformance suite against the ray backend: Ray jobs on a real Ray head bound to
//! 127.0.0.1 (the test scripts' one, or one this test process starts).

mod common;

use std::sync::Arc;

use ferry_launcher::conformance::Target;

ferry_launcher::launcher_conformance!(async {
    if !common::ray_given("ray conformance") {
        return Arc::new(common::Skip) as Arc<dyn Target>;
    }
    Arc::new(common::RayTarget::new()) as Arc<dyn Target>
});
