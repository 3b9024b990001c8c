//! The bus conformance suite against RabbitMQ, each test in its own namespace.

mod common;

ferry_bus::conformance_tests!(common::LockedBus::fresh());
