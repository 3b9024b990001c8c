//! `ferry-planner`: the planner alone, with the flags of `ferry service planner`.

ferry_connect::service_main!(
    "ferry-planner",
    "ferry's planner: turns job submissions and triggering events into planned or rejected jobs",
    async |flags: ferry_planner::Flags, common| Ok(flags.config(&common.data_dir)),
    ferry_planner::run
);
