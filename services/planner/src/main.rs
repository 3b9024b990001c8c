//! `ferry-planner`: the planner alone, with the flags of `ferry service planner`.

ferry_connect::service_main!(
    "ferry-planner",
    "ferry's planner: turns job submissions into planned or rejected jobs",
    async |flags: ferry_planner::Flags, _| Ok(flags.config()),
    ferry_planner::run
);
