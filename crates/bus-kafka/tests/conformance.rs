//! The shared bus conformance suite, on a Kafka-compatible broker (FERRY_TEST_KAFKA).

mod common;

ferry_bus::conformance_tests!(common::fresh_bus());
