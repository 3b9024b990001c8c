//! `ferry-log-collector`: the log collector alone, with the flags of `ferry service log-collector`.

ferry_connect::service_main!(
    "ferry-log-collector",
    "ferry's log collector: stores task.log events in the log store",
    async |flags: ferry_log_collector::ProcessFlags, common| Ok(flags.config(&common.data_dir).await?),
    ferry_log_collector::run
);
