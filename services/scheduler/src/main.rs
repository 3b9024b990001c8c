//! `ferry-scheduler`: the scheduler alone, with the flags of `ferry service scheduler`.

ferry_connect::service_main!(
    "ferry-scheduler",
    "ferry's scheduler: job and task state, release, retries, leases",
    async |flags: ferry_scheduler::Flags, common| Ok(flags.config(&common.data_dir)),
    ferry_scheduler::run
);
