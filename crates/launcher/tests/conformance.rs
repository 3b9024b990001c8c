//! The launcher conformance suite against the runtime's test double: a remote-style backend
//! with no local process, whose compute outlives the launcher. Running it here keeps the
//! double as honest as the backends it stands in for.

mod double;

ferry_launcher::launcher_conformance!(async { std::sync::Arc::new(double::DoubleTarget::new()) });
