//! Files through Cloud Storage: an attempt's input files, secrets, `$FERRY_OUTPUTS`,
//! `$FERRY_SUBTASKS` and output files, under a prefix of its own in the staging bucket
//! (`runner.bucket`, else the launcher's `--google-batch-staging`).
//!
//! Batch mounts a bucket's path into a job as a volume (Cloud Storage FUSE on the job's VM),
//! so the job reaches its files as files, with the job's service account and no tool in the
//! image: the attempt's prefix is the task's volume at [`MOUNT`], and the job's command is the
//! task's wrapped in a small `sh` script ([`SCRIPT`]). Under the prefix:
//!
//! - `inputs.tar`: the input files as an archive of `ferry/`, made and checked by
//!   [`ferry_launcher::archive::append_inputs`], written before the job is created (and deleted
//!   by the job once unpacked when a file holds a secret);
//! - `secrets.sh`: the variables that hold a secret, and the command when an argument holds
//!   one, as `sh` the wrapper sources and then deletes before the task starts: never in the
//!   job's definition, which anyone allowed `batch.jobs.get` sees;
//! - `outputs.json`, `subtasks.json`: the files at `$FERRY_OUTPUTS` and `$FERRY_SUBTASKS`,
//!   copied there after the task succeeded;
//! - `files.tar`: the working directory as an archive of `ferry/` (when the task has
//!   `outputFiles`), of which the launcher keeps what matches the patterns, with the checks of
//!   every backend ([`ferry_launcher::archive::extract`]).
//!
//! The task runs in `/ferry` (`$TMPDIR/ferry` when the image's user cannot make `/ferry`),
//! `$FERRY_WORKING_DIR`, with `$FERRY_OUTPUTS` in a directory beside it, as on the docker
//! backend. The image needs `sh`, `mkdir`, `cp` and `rm`, and `tar` when the task has input or
//! output files. A staging step that fails ends the job with status [`STAGE_FAILED`] and says
//! why on its standard error, in the task's log. Release removes the prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_artifacts::Store;
use ferry_launcher::archive::{ExtractError, InputFile, Limits};
use ferry_launcher::backend::{AttemptError, BackendResult, Collected, Task};
use ferry_launcher::batch::{Filled, store_error};

/// The exit status of a job whose staging failed (as `docker run`'s own failures are 125).
pub const STAGE_FAILED: i32 = 125;

/// Where the attempt's prefix is mounted, on the job's VM and in its container. Batch mounts
/// volumes under `/mnt/disks/`.
pub const MOUNT: &str = "/mnt/disks/ferry";

/// The directory the task runs in, and the name of its archives' top directory.
const WORK: &str = "ferry";

/// The wrapper: `sh -c SCRIPT ferry-stage COMMAND...`. It runs the task as its child, passing
/// on SIGTERM (Batch's stop) so that the task gets its grace, and stages only after the task
/// succeeded.
pub const SCRIPT: &str = r#"set -u
fail() { echo "ferry-stage: $*" >&2; exit 125; }
s=${FERRY_STAGE_DIR:-/mnt/disks/ferry} files=${FERRY_STAGE_FILES:-} in_drop=${FERRY_STAGE_INPUTS_DROP:-}
unset FERRY_STAGE_DIR FERRY_STAGE_FILES FERRY_STAGE_INPUTS_DROP
[ -d "$s" ] || fail "the staging volume is not mounted at $s"
top=/
mkdir -p /ferry /ferry-outputs 2>/dev/null || top=${TMPDIR:-/tmp}/
w=${top}ferry o=${top}ferry-outputs
mkdir -p "$w" "$o" || fail "cannot make the working directory $w"
if [ -f "$s/inputs.tar" ]; then
  tar -xf "$s/inputs.tar" -C "$top" || fail "cannot unpack the input files into $w"
  [ -z "$in_drop" ] || rm -f "$s/inputs.tar"
fi
if [ -f "$s/secrets.sh" ]; then
  . "$s/secrets.sh" || fail "cannot read the task's secrets"
  rm -f "$s/secrets.sh"
fi
cd "$w" || fail "cannot enter $w"
export FERRY_WORKING_DIR="$w" FERRY_OUTPUTS="$o/outputs.json" FERRY_SUBTASKS="$o/subtasks.json"
# The task keeps standard error; the shell's own (a "Terminated" when the task dies of the
# SIGTERM passed on) goes nowhere while it waits, so that the task's log holds only the task's.
exec 3>&2 2>/dev/null
"$@" 2>&3 3>&- &
pid=$!
trap 'kill -TERM "$pid"' TERM INT
wait "$pid"
code=$?
while kill -0 "$pid"; do wait "$pid"; code=$?; done
exec 2>&3 3>&-
[ "$code" -eq 0 ] || exit "$code"
if [ -f "$FERRY_OUTPUTS" ]; then cp "$FERRY_OUTPUTS" "$s/outputs.json" || fail 'cannot send $FERRY_OUTPUTS'; fi
if [ -f "$FERRY_SUBTASKS" ]; then cp "$FERRY_SUBTASKS" "$s/subtasks.json" || fail 'cannot send $FERRY_SUBTASKS'; fi
if [ -n "$files" ]; then
  (cd "$top" && tar -cf "$s/files.tar" ferry) || fail "cannot archive the working directory for outputFiles"
fi
exit 0
"#;

/// `gs://BUCKET[/PREFIX]` for a bucket's URL or bare name, its name checked; the prefix
/// without `/` at its ends.
pub fn bucket_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = match s.strip_prefix("gs://") {
        Some(rest) => rest,
        None if !s.contains([':', '/']) => s,
        None => {
            return Err(format!(
                "{s:?} is not a Cloud Storage bucket: write its name, or gs://BUCKET[/PREFIX]"
            ));
        }
    };
    let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    if !(3..=222).contains(&name.len()) || !name.chars().all(ok) {
        return Err(format!(
            "{s:?}: {name:?} is not a bucket name (3 to 222 lowercase letters, digits, '-', '_' and '.')"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("{s:?}: the prefix must not hold '.' or '..'"));
    }
    Ok(if prefix.is_empty() {
        format!("gs://{name}")
    } else {
        format!("gs://{name}/{prefix}")
    })
}

/// Where staged files go, and where collected output files are kept. Clones share the
/// buckets opened.
#[derive(Debug, Clone)]
pub struct Staging {
    /// The staging bucket of tasks whose runner names none (`--google-batch-staging`).
    pub default: Option<Store>,
    /// The settings every bucket is opened with (the launcher's Cloud Storage endpoint and
    /// credentials: [`Staging::options`]).
    options: Vec<(String, String)>,
    /// The launcher's artifact directory, which output files are copied into (and from there
    /// to its artifact store, when it has one).
    pub artifact_dir: PathBuf,
    pub limits: Limits,
    /// The buckets opened so far, by URL.
    opened: Arc<Mutex<HashMap<String, Store>>>,
}

impl Staging {
    /// Staging in `default` (`gs://BUCKET[/PREFIX]` or a bucket's name) for tasks that name no
    /// bucket, every bucket opened with `options`.
    pub fn new(
        default: Option<&str>,
        options: Vec<(String, String)>,
        artifact_dir: PathBuf,
        limits: Limits,
    ) -> Result<Staging, String> {
        let mut staging = Staging {
            default: None,
            options,
            artifact_dir,
            limits,
            opened: Arc::default(),
        };
        if let Some(url) = default.map(str::trim).filter(|s| !s.is_empty()) {
            staging.default = Some(staging.open(url)?);
        }
        Ok(staging)
    }

    /// The store settings that reach Cloud Storage at `endpoint`, with no token when
    /// `anonymous` (an emulator) and Google's credential chain otherwise.
    pub fn options(endpoint: &str, anonymous: bool) -> Vec<(String, String)> {
        vec![
            ("base_url".into(), endpoint.into()),
            ("skip_signature".into(), anonymous.to_string()),
        ]
    }

    /// The staging bucket of a task whose runner names `bucket`, else the default; `None`
    /// when there is neither.
    pub fn for_task(&self, bucket: Option<&str>) -> BackendResult<Option<Store>> {
        match bucket.map(str::trim).filter(|b| !b.is_empty()) {
            None => Ok(self.default.clone()),
            Some(b) => self
                .open(b)
                .map(Some)
                .map_err(|why| AttemptError::Task(format!("runner.bucket: {why}"))),
        }
    }

    /// The bucket at `url` (a bucket's name, or `gs://BUCKET[/PREFIX]`), opened once.
    pub fn open(&self, url: &str) -> Result<Store, String> {
        let url = bucket_url(url)?;
        if let Some(store) = self.default.as_ref().filter(|s| s.url() == url) {
            return Ok(store.clone());
        }
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = opened.get(&url) {
            return Ok(store.clone());
        }
        let store = Store::open_with(&url, self.options.clone()).map_err(|e| e.to_string())?;
        opened.insert(url, store.clone());
        Ok(store)
    }
}

/// Where the job's volume comes from: `BUCKET/PATH` of the attempt's `prefix` in `store`.
pub fn remote_path(store: &Store, prefix: &str) -> String {
    let uri = store.uri(prefix);
    uri.strip_prefix("gs://").unwrap_or(&uri).to_string()
}

/// The staging bucket (`gs://BUCKET[/PREFIX]`) and the attempt's prefix (`JOB/TASK/ATTEMPT`)
/// of a job's volume, from its `BUCKET/PATH` ([`remote_path`]'s inverse): how the files of a
/// job the journal does not know are found.
pub fn from_remote_path(remote: &str) -> Option<(String, String)> {
    let mut parts = remote.trim_matches('/').rsplitn(4, '/');
    let (attempt, task, job, bucket) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if [attempt, task, job, bucket].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some((format!("gs://{bucket}"), format!("{job}/{task}/{attempt}")))
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// The job's command (the wrapper's arguments, with `sh` its entrypoint) and the variables
/// the wrapper reads: the task's input files and secrets written under `prefix` first.
pub async fn prepare(
    store: &Store,
    task: Task<'_>,
    prefix: &str,
    job: &Filled,
) -> BackendResult<(Vec<String>, Vec<(String, String)>)> {
    let d = task.dispatch;
    let mut env = vec![("FERRY_STAGE_DIR".to_string(), MOUNT.to_string())];
    if !d.input_files.is_empty() {
        let mut files = Vec::with_capacity(d.input_files.len());
        for (path, t) in &d.input_files {
            files.push(InputFile {
                path: path.clone(),
                contents: task.fill(t, &format!("inputFiles.{path}"), "")?.into_bytes(),
            });
        }
        let mut tar = tar::Builder::new(Vec::new());
        ferry_launcher::archive::append_inputs(&mut tar, WORK, &files).map_err(|e| match e {
            ExtractError::Refused(m) => AttemptError::Task(m),
            e => AttemptError::Platform(e.to_string()),
        })?;
        let archive = tar
            .into_inner()
            .map_err(|e| AttemptError::Platform(format!("cannot archive the input files: {e}")))?;
        store
            .put(&key(prefix, "inputs.tar"), archive.into())
            .await
            .map_err(|e| store_error("cannot stage the input files", e))?;
        // Input files that hold a secret are deleted once unpacked, as `secrets.sh` is.
        if d.input_files.values().any(|t| t.secrets().next().is_some()) {
            env.push(("FERRY_STAGE_INPUTS_DROP".into(), "1".into()));
        }
    }
    if job.has_secrets() {
        store
            .put(&key(prefix, "secrets.sh"), job.secrets_script()?.into())
            .await
            .map_err(|e| store_error("cannot stage the task's secrets", e))?;
    }
    if !d.output_files.is_empty() {
        env.push(("FERRY_STAGE_FILES".into(), "1".into()));
    }
    let mut args = Vec::with_capacity(job.command.len() + 3);
    args.extend(["-c", SCRIPT, "ferry-stage"].map(String::from));
    // A command holding a secret comes from the staged script.
    if !job.command_secret {
        args.extend(job.command.iter().cloned());
    }
    Ok((args, env))
}

/// What a job that succeeded staged: its outputs, its subtasks and the output files, these
/// copied into the artifact directory.
pub async fn collect(
    staging: &Staging,
    store: &Store,
    task: Task<'_>,
    prefix: &str,
) -> BackendResult<Collected> {
    ferry_launcher::batch::collect_staged(store, prefix, task, WORK, &staging.artifact_dir, staging.limits)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_named_or_refused() {
        assert_eq!(bucket_url("gs://my-bucket/runs/").unwrap(), "gs://my-bucket/runs");
        assert_eq!(bucket_url("my-bucket").unwrap(), "gs://my-bucket");
        for bad in ["s3://b", "gs://B", "gs://ab", "gs://bucket/../x", "a/b"] {
            assert!(bucket_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_is_opened_once_and_the_volume_names_the_attempts_prefix() {
        let options = Staging::options("http://127.0.0.1:9", true);
        let staging = Staging::new(
            Some("gs://b12/a/"),
            options,
            PathBuf::from("/x"),
            Limits::default(),
        )
        .unwrap();
        let store = staging.for_task(None).unwrap().unwrap();
        assert_eq!(store.url(), "gs://b12/a");
        assert_eq!(remote_path(&store, "j/t/a"), "b12/a/j/t/a");
        assert_eq!(staging.for_task(Some("b12")).unwrap().unwrap().url(), "gs://b12");
        assert_eq!(
            staging.for_task(Some("gs://b12/a")).unwrap().unwrap().url(),
            "gs://b12/a"
        );
        assert_eq!(
            from_remote_path(&remote_path(&store, "j/t/a")),
            Some(("gs://b12/a".to_string(), "j/t/a".to_string()))
        );
        assert_eq!(
            from_remote_path("b12/j/t/a"),
            Some(("gs://b12".to_string(), "j/t/a".to_string()))
        );
        assert_eq!(from_remote_path("b12/t/a"), None);
        let e = staging.for_task(Some("s3://b12")).unwrap_err().to_string();
        assert!(e.contains("runner.bucket"), "{e}");
    }
}
