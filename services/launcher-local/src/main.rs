//! `ferry-launcher-local`: the local launcher alone, with the flags of `ferry service launcher`.

ferry_connect::service_main!(
    "ferry-launcher-local",
    "ferry's local launcher: runs dispatched task attempts as local processes",
    async |flags: ferry_launcher_local::Flags, common| Ok(flags.config(&common.data_dir)?),
    ferry_launcher_local::run
);
