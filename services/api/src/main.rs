//! `ferry-api`: the HTTP API alone, with the flags of `ferry service api`.

ferry_connect::service_main!(
    "ferry-api",
    "ferry's HTTP API: CloudEvents intake and the read model of jobs, tasks and logs",
    async |flags: ferry_api::ProcessFlags, common| Ok(flags.config(&common.data_dir)?),
    ferry_api::run
);
