//! Files through S3: an attempt's input files, `$FERRY_OUTPUTS`, `$FERRY_SUBTASKS` and output
//! files, staged under a prefix of its own in the staging bucket (`--aws-batch-staging`).
//!
//! A Batch job has no volume the launcher can write into or read from, and the task's image
//! is the user's: the job's command is the task's, wrapped in a small `sh` script ([`SCRIPT`])
//! that fetches the inputs before the task runs and sends what it left after it succeeded,
//! through presigned URLs — one per object, each good for one method and until it expires, so
//! the job needs no AWS credentials or role of its own for them, and can touch nothing else in
//! the bucket. Under the attempt's prefix:
//!
//! - `inputs.tar`: the input files as an archive of `ferry/` (when the task has some), made
//!   and checked by [`ferry_launcher::archive::append_inputs`], put before the job is submitted
//!   (and deleted by the job once fetched when a file holds a secret);
//! - `secrets.sh`: the variables that hold a secret, and the command when an argument holds
//!   one, as `sh` the wrapper sources (then deletes, from its disk and the bucket) before the
//!   task starts: never in the job's container overrides, which DescribeJobs shows;
//! - `outputs.json`, `subtasks.json`: the files at `$FERRY_OUTPUTS` and `$FERRY_SUBTASKS`, when
//!   the task wrote them;
//! - `files.tar`: the working directory as an archive of `ferry/` (when the task has
//!   `outputFiles`), of which the launcher keeps what matches the patterns, with the checks
//!   of every backend ([`ferry_launcher::archive::extract`]).
//!
//! The task runs in `/ferry` (`$TMPDIR/ferry` when the image's user cannot make `/ferry`),
//! `$FERRY_WORKING_DIR`, with `$FERRY_OUTPUTS` in a directory beside it, as on the docker
//! backend. The image needs `sh`; to fetch input files `tar` and one of `curl`, `wget` or
//! `python3`; to send outputs and output files `curl` or `python3` (and `tar` for output
//! files). A staging step that fails (an image without those tools, a bucket that refuses)
//! ends the job with status [`STAGE_FAILED`] and says why on its standard error, in the task's
//! log. Release removes the prefix.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_artifacts::{Method, Store};
use ferry_launcher::archive::{ExtractError, InputFile, Limits};
use ferry_launcher::backend::{AttemptError, BackendResult, Collected, Task};
use ferry_launcher::batch::{Filled, store_error};

/// The exit status of a job whose staging failed (as `docker run`'s own failures are 125).
pub const STAGE_FAILED: i32 = 125;

/// The directory the task runs in, and the name of its archives' top directory.
const WORK: &str = "ferry";

/// The longest a presigned URL is good for (S3's limit with SigV4).
const MAX_URL_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long the job's results may take to arrive beyond its pending deadline and timeout.
const URL_MARGIN: Duration = Duration::from_secs(3600);

/// The wrapper: `sh -c SCRIPT ferry-stage COMMAND...`. It keeps the URLs from its environment
/// and takes them out of the task's; runs the task as its child, passing on SIGTERM (Batch's
/// stop) so that the task gets its grace; and stages only after the task succeeded.
pub const SCRIPT: &str = r#"set -u
fail() { echo "ferry-stage: $*" >&2; exit 125; }
py='import os,shutil,sys,urllib.request as u
m,url,f=sys.argv[1:4]
if m=="get":
    with u.urlopen(url) as r, open(f,"wb") as o: shutil.copyfileobj(r,o)
elif m=="delete":
    u.urlopen(u.Request(url,method="DELETE")).close()
else:
    with open(f,"rb") as i: u.urlopen(u.Request(url,data=i,method="PUT",headers={"Content-Length":str(os.path.getsize(f)),"Content-Type":"application/octet-stream"})).close()'
fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --retry 5 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  elif command -v python3 >/dev/null 2>&1; then python3 -c "$py" get "$1" "$2"
  else fail "the image has none of curl, wget or python3 to fetch the input files with"; fi
}
drop() {
  [ -n "$1" ] || return 0
  if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null -X DELETE "$1" || true
  elif command -v python3 >/dev/null 2>&1; then python3 -c "$py" delete "$1" - || true; fi
}
send() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --retry 5 -o /dev/null -T "$1" "$2"
  elif command -v python3 >/dev/null 2>&1; then python3 -c "$py" put "$2" "$1"
  else fail "the image has neither curl nor python3 to send $3 with"; fi
}
s_in=${FERRY_STAGE_INPUTS:-} s_out=${FERRY_STAGE_OUTPUTS:-} s_sub=${FERRY_STAGE_SUBTASKS:-} s_files=${FERRY_STAGE_FILES:-}
s_sec=${FERRY_STAGE_SECRETS:-} s_drop=${FERRY_STAGE_SECRETS_DROP:-} s_in_drop=${FERRY_STAGE_INPUTS_DROP:-}
unset FERRY_STAGE_INPUTS FERRY_STAGE_OUTPUTS FERRY_STAGE_SUBTASKS FERRY_STAGE_FILES FERRY_STAGE_SECRETS FERRY_STAGE_SECRETS_DROP \
  FERRY_STAGE_INPUTS_DROP
top=/
mkdir -p /ferry /ferry-outputs 2>/dev/null || top=${TMPDIR:-/tmp}/
w=${top}ferry o=${top}ferry-outputs
mkdir -p "$w" "$o" || fail "cannot make the working directory $w"
if [ -n "$s_in" ]; then
  fetch "$s_in" "$o/.inputs.tar" || fail "cannot fetch the input files"
  tar -xf "$o/.inputs.tar" -C "$top" || fail "cannot unpack the input files into $w"
  rm -f "$o/.inputs.tar"
  drop "$s_in_drop"
fi
if [ -n "$s_sec" ]; then
  mask=$(umask)
  umask 077
  fetch "$s_sec" "$o/.secrets.sh" || fail "cannot fetch the task's secrets"
  . "$o/.secrets.sh" || fail "cannot read the task's secrets"
  rm -f "$o/.secrets.sh"
  umask "$mask"
  drop "$s_drop"
fi
cd "$w" || fail "cannot enter $w"
export FERRY_WORKING_DIR="$w" FERRY_OUTPUTS="$o/outputs.json" FERRY_SUBTASKS="$o/subtasks.json"
"$@" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
wait "$pid"
code=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done
[ "$code" -eq 0 ] || exit "$code"
if [ -f "$FERRY_OUTPUTS" ]; then send "$FERRY_OUTPUTS" "$s_out" '$FERRY_OUTPUTS' || fail 'cannot send $FERRY_OUTPUTS'; fi
if [ -f "$FERRY_SUBTASKS" ]; then send "$FERRY_SUBTASKS" "$s_sub" '$FERRY_SUBTASKS' || fail 'cannot send $FERRY_SUBTASKS'; fi
if [ -n "$s_files" ]; then
  cd "$top" && tar -cf "$o/.files.tar" ferry || fail "cannot archive the working directory for outputFiles"
  send "$o/.files.tar" "$s_files" "the output files" || fail "cannot send the output files"
fi
exit 0
"#;

/// Where staged files go, and where collected output files are kept. Clones share the
/// buckets opened.
#[derive(Debug, Clone)]
pub struct Staging {
    /// The staging bucket of tasks whose runner names none (`--aws-batch-staging`).
    pub default: Option<Store>,
    /// The settings a task's own bucket is opened with (the launcher's region and endpoint;
    /// the region is the task's when it names one).
    pub options: Vec<(String, String)>,
    /// The launcher's artifact directory, which output files are copied into (and from there
    /// to its artifact store, when it has one).
    pub artifact_dir: PathBuf,
    pub limits: Limits,
    /// The buckets opened so far, by region (empty: the launcher's) and URL.
    opened: Arc<Mutex<HashMap<(String, String), Store>>>,
}

impl Staging {
    pub fn new(
        default: Option<Store>,
        options: Vec<(String, String)>,
        artifact_dir: PathBuf,
        limits: Limits,
    ) -> Staging {
        Staging {
            default,
            options,
            artifact_dir,
            limits,
            opened: Arc::default(),
        }
    }

    /// The staging bucket of a task whose runner names `bucket` (`runner.bucket`, a bucket's
    /// name or `s3://BUCKET[/PREFIX]`, reached in `region`, the task's, when given), else the
    /// default (in the launcher's region, wherever the task runs); `None` when there is
    /// neither.
    pub fn for_task(&self, bucket: Option<&str>, region: Option<&str>) -> BackendResult<Option<Store>> {
        match bucket.map(str::trim).filter(|b| !b.is_empty()) {
            None => Ok(self.default.clone()),
            Some(b) if b.starts_with("s3://") => self.open(b, region).map(Some),
            Some(b) if !b.contains([':', '/']) => self.open(&format!("s3://{b}"), region).map(Some),
            Some(b) => Err(AttemptError::Task(format!(
                "runner.bucket {b:?} is not an S3 bucket: write its name, or s3://BUCKET[/PREFIX]"
            ))),
        }
    }

    /// The bucket at `url` (an attempt's, as journaled), reached in `region` (else the
    /// launcher's), opened once. The default bucket is the launcher's, in its region, whatever
    /// `region` says.
    pub fn open(&self, url: &str, region: Option<&str>) -> BackendResult<Store> {
        if let Some(store) = self
            .default
            .as_ref()
            .filter(|s| s.url() == url.trim_end_matches('/'))
        {
            return Ok(store.clone());
        }
        let region = region.filter(|r| !r.is_empty());
        let key = (region.unwrap_or_default().to_string(), url.to_string());
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = opened.get(&key) {
            return Ok(store.clone());
        }
        let mut options = self.options.clone();
        if let Some(region) = region {
            options.retain(|(k, _)| k != "region");
            options.push(("region".into(), region.to_string()));
        }
        let store =
            Store::open_with(url, options).map_err(|e| AttemptError::Task(format!("runner.bucket: {e}")))?;
        if store.kind() != ferry_artifacts::Kind::S3 {
            return Err(AttemptError::Task(format!(
                "runner.bucket {url:?}: jobs fetch and send their files with URLs that S3 signs: name an S3 bucket"
            )));
        }
        opened.insert(key, store.clone());
        Ok(store)
    }
}

fn key(prefix: &str, name: &str) -> String {
    format!("{prefix}/{name}")
}

/// The job's command and the environment its wrapper reads: `command` wrapped in [`SCRIPT`],
/// the task's input files put under `prefix`, and a URL for each thing the job may send back.
pub async fn prepare(
    store: &Store,
    task: Task<'_>,
    prefix: &str,
    job: &Filled,
    url_life: Duration,
) -> BackendResult<(Vec<String>, Vec<(String, String)>)> {
    let d = task.dispatch;
    let mut env = Vec::with_capacity(6);
    let sign = |method: Method, name: &'static str| {
        let key = key(prefix, name);
        async move {
            store
                .signed_url(method, &key, url_life)
                .await
                .map(String::from)
                .map_err(|e| store_error("cannot sign a staging URL", e))
        }
    };
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
        let inputs = key(prefix, "inputs.tar");
        store
            .put(&inputs, archive.into())
            .await
            .map_err(|e| store_error("cannot stage the input files", e))?;
        env.push((
            "FERRY_STAGE_INPUTS".into(),
            sign(Method::GET, "inputs.tar").await?,
        ));
        // Input files that hold a secret are deleted once fetched, as `secrets.sh` is: their
        // URL, shown by DescribeJobs, then reads nothing.
        if d.input_files.values().any(|t| t.secrets().next().is_some()) {
            env.push((
                "FERRY_STAGE_INPUTS_DROP".into(),
                sign(Method::DELETE, "inputs.tar").await?,
            ));
        }
    }
    if job.has_secrets() {
        store
            .put(&key(prefix, "secrets.sh"), job.secrets_script()?.into())
            .await
            .map_err(|e| store_error("cannot stage the task's secrets", e))?;
        env.push((
            "FERRY_STAGE_SECRETS".into(),
            sign(Method::GET, "secrets.sh").await?,
        ));
        env.push((
            "FERRY_STAGE_SECRETS_DROP".into(),
            sign(Method::DELETE, "secrets.sh").await?,
        ));
    }
    env.push((
        "FERRY_STAGE_OUTPUTS".into(),
        sign(Method::PUT, "outputs.json").await?,
    ));
    env.push((
        "FERRY_STAGE_SUBTASKS".into(),
        sign(Method::PUT, "subtasks.json").await?,
    ));
    if !d.output_files.is_empty() {
        env.push(("FERRY_STAGE_FILES".into(), sign(Method::PUT, "files.tar").await?));
    }
    let mut wrapped = Vec::with_capacity(job.command.len() + 4);
    wrapped.extend(["sh", "-c", SCRIPT, "ferry-stage"].map(String::from));
    // A command holding a secret comes from the staged script.
    if !job.command_secret {
        wrapped.extend(job.command.iter().cloned());
    }
    Ok((wrapped, env))
}

/// How long the URLs of an attempt must stay good: while its job may wait and run, and an
/// hour more, at most S3's seven days.
pub fn url_life(pending_deadline: Duration, timeout_ms: Option<u64>, grace: Duration) -> Duration {
    match timeout_ms {
        Some(ms) => (pending_deadline + Duration::from_millis(ms) + grace + URL_MARGIN).min(MAX_URL_LIFE),
        None => MAX_URL_LIFE,
    }
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
    fn urls_last_while_the_job_may_wait_and_run_and_no_longer_than_s3_allows() {
        let ten_min = Duration::from_secs(600);
        assert_eq!(
            url_life(ten_min, Some(60_000), Duration::from_secs(30)),
            Duration::from_secs(600 + 60 + 30 + 3600)
        );
        assert_eq!(url_life(ten_min, None, Duration::ZERO), MAX_URL_LIFE);
        assert_eq!(
            url_life(ten_min, Some(30 * 24 * 3600 * 1000), Duration::ZERO),
            MAX_URL_LIFE
        );
    }

    /// The wrapper run by the machine's own `sh` with a stand-in for each tool: inputs land in
    /// the working directory, the task sees none of the staging URLs, outputs go where their
    /// URL says, and a failed task's status comes back unchanged with nothing sent.
    #[test]
    fn the_wrapper_stages_around_the_task_with_the_images_own_tools() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let sent = dir.path().join("sent");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&sent).unwrap();
        // A curl that "fetches" a local file and "sends" by copying into `sent/<url>`.
        let curl = format!(
            "#!/bin/sh\nout=; up=; while [ $# -gt 1 ]; do case $1 in -o) out=$2; shift;; -T) up=$2; shift;; esac; shift; done\n\
             if [ -n \"$up\" ]; then cp \"$up\" {sent}/$1; else cp \"$1\" \"$out\"; fi\n",
            sent = sent.display()
        );
        // A mkdir that cannot make /ferry, as for an image's user who is not root.
        let mkdir = "#!/bin/sh\nfor a; do case $a in /ferry|/ferry-outputs) exit 1;; esac; done\nexec /bin/mkdir \"$@\"\n";
        for (name, script) in [("curl", curl.as_str()), ("mkdir", mkdir)] {
            std::fs::write(bin.join(name), script).unwrap();
            std::fs::set_permissions(
                bin.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )
            .unwrap();
        }
        let mut tar = tar::Builder::new(Vec::new());
        ferry_launcher::archive::append_inputs(
            &mut tar,
            WORK,
            &[InputFile {
                path: "in/data.txt".into(),
                contents: b"hello".to_vec(),
            }],
        )
        .unwrap();
        let inputs = dir.path().join("inputs.tar");
        std::fs::write(&inputs, tar.into_inner().unwrap()).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let run = |task: &str| {
            std::process::Command::new("sh")
                .args(["-c", SCRIPT, "ferry-stage", "sh", "-c", task])
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .env("TMPDIR", &tmp)
                .env("FERRY_STAGE_INPUTS", &inputs)
                .env("FERRY_STAGE_OUTPUTS", "outputs")
                .env("FERRY_STAGE_SUBTASKS", "subtasks")
                .env("FERRY_STAGE_FILES", "files")
                .output()
                .unwrap()
        };
        let out = run(
            "set -e; [ -z \"${FERRY_STAGE_OUTPUTS:-}\" ]; [ \"$(cat in/data.txt)\" = hello ]; \
             echo '{\"n\": 1}' > \"$FERRY_OUTPUTS\"; mkdir out; echo r > out/report.txt",
        );
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(sent.join("outputs")).unwrap(),
            "{\"n\": 1}\n"
        );
        assert!(!sent.join("subtasks").exists());
        let mut names: Vec<String> = tar::Archive::new(std::fs::File::open(sent.join("files")).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert!(names.contains(&"ferry/out/report.txt".to_string()), "{names:?}");
        for f in ["outputs", "files"] {
            std::fs::remove_file(sent.join(f)).unwrap();
        }
        std::fs::remove_dir_all(tmp.join("ferry")).unwrap();
        let out = run("echo '{}' > \"$FERRY_OUTPUTS\"; exit 3");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(std::fs::read_dir(&sent).unwrap().count(), 0);

        // Secrets: the staged script sets the variables and, when an argument holds one, the
        // whole command; the file is gone before the task runs.
        let job = Filled {
            command: vec![
                "sh".into(),
                "-c".into(),
                "echo \"$1 $TOKEN\"; ls -a \"$FERRY_WORKING_DIR/../ferry-outputs\"".into(),
                "x".into(),
                "it's".into(),
            ],
            command_secret: true,
            env: Vec::new(),
            secret_env: vec![("TOKEN".into(), "a 'quoted' $value\n".into())],
        };
        let secrets = dir.path().join("secrets.sh");
        std::fs::write(&secrets, job.secrets_script().unwrap()).unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", SCRIPT, "ferry-stage"])
            .env_clear()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("TMPDIR", &tmp)
            .env("FERRY_STAGE_SECRETS", &secrets)
            .env("FERRY_STAGE_SECRETS_DROP", "dropped")
            .env("FERRY_STAGE_OUTPUTS", "outputs")
            .env("FERRY_STAGE_SUBTASKS", "subtasks")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with("it's a 'quoted' $value\n"), "{stdout}");
        assert!(!stdout.contains(".secrets.sh"), "{stdout}");
    }
}
