//! Output files and `$FERRY_SUBTASKS` out of a pod whose task has ended: the pod's stage
//! container ([`crate::spec::STAGE_CONTAINER`]) holds the working directory and the subtasks'
//! directory, and one `pods/exec` of `tar` in it streams the directory to the launcher, which
//! keeps the regular files matching the task's patterns ([`ferry_launcher::archive`]: links
//! never followed, hostile names refuse the whole archive, counts and sizes capped) in the
//! artifact store. `$FERRY_SUBTASKS` comes the same way, one file in an archive
//! ([`subtasks`]): a link, a pipe or a directory there is refused, never followed or read.
//!
//! One exec of the whole directory rather than a listing and then an archive of the matches:
//! one request instead of two, no file name ever passes through a shell or a command line, and
//! the patterns are matched by the same code on every backend (the docker backend reads the
//! engine's archive of the directory the same way).

use std::path::Path;
use std::time::Duration;

use ferry_event::payload::OutputFile;
use ferry_launcher::archive::{ExtractError, Limits};
use ferry_launcher::backend::{AttemptError, BackendResult};
use ferry_launcher::collect::MAX_SUBTASKS_BYTES;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use crate::cache::{Cache, Container, Lookup};
use crate::error::{attempt_error, status};
use crate::spec::{STAGE_CONTAINER, STAGE_DIR, STAGE_SUBTASKS_DIR, SUBTASKS_FILE};

/// The least collecting waits for the stage container to run: it starts after the task's
/// (its image pulled then), and the task may have ended first.
const MIN_STAGE_START: Duration = Duration::from_secs(60);

/// What of `tar`'s stderr goes into an error message.
const MAX_STDERR: usize = 2048;

/// The stage container of one Job's pod.
pub struct Stage<'a> {
    pub namespace: &'a str,
    pub job: &'a str,
    /// The stage container's image, for messages.
    pub image: &'a str,
    /// How long the stage container may take to start (the pending deadline; at least a minute).
    pub start_within: Duration,
}

/// Where the output files go and what is taken.
pub struct Collect<'a> {
    pub patterns: &'a [String],
    pub dest: &'a Path,
    pub limits: Limits,
}

/// Waits for the stage container of the Job's pod to run; the pod's name. `what` is what is
/// taken out, for messages.
async fn stage_running(cache: &Cache, c: &Stage<'_>, what: &str) -> BackendResult<String> {
    let within = c.start_within.max(MIN_STAGE_START);
    let until = tokio::time::Instant::now() + within;
    loop {
        let mut changes = cache.subscribe();
        let image = c.image;
        match cache.pod(c.namespace, c.job) {
            Lookup::Pod(pod) => match &pod.stage {
                Container::Running => return Ok(pod.name),
                Container::Terminated { code, reason, .. } => {
                    return Err(AttemptError::Platform(format!(
                        "{what}: the stage container of pod {}/{} (image {image}) ended ({reason}, status {code}) \
                         before the files were collected, and they went with it: the stage image (--kube-stage-image) \
                         must run `sh -c` and `sleep`",
                        c.namespace, pod.name
                    )));
                }
                Container::Waiting { reason, message } if tokio::time::Instant::now() >= until => {
                    return Err(AttemptError::Platform(format!(
                        "{what}: the stage container of pod {}/{} (image {image}) did not start: {reason}: {message} \
                         (--kube-stage-image)",
                        c.namespace, pod.name
                    )));
                }
                _ if tokio::time::Instant::now() >= until => {
                    return Err(AttemptError::Platform(format!(
                        "{what}: the stage container of pod {}/{} (image {image}) did not start within {}s",
                        c.namespace,
                        pod.name,
                        within.as_secs()
                    )));
                }
                _ => {}
            },
            // Gone, or not shown by the watch yet: the API says which.
            Lookup::Absent => match cache.ask(c.namespace, c.job).await {
                Ok(Lookup::Pod(_)) => continue,
                Ok(_) => {
                    return Err(AttemptError::Platform(format!(
                        "{what}: the pod of Job {}/{} is gone, and its files with it",
                        c.namespace, c.job
                    )));
                }
                Err(e) => tracing::debug!(job = %c.job, error = %e, "cannot look for the Job's pod"),
            },
            Lookup::NotSynced => {}
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}

/// A `tar` run in the stage container: its archive on stdout, what it said on stderr (at most
/// [`MAX_STDERR`] of it), and its status once the stream has ended.
struct Tar<'a> {
    /// The request, for messages.
    what: String,
    /// What it takes out, for messages.
    taken: &'a str,
    /// The stage container's image, for messages.
    image: &'a str,
    stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    exit: std::pin::Pin<Box<dyn std::future::Future<Output = Option<Status>> + Send>>,
    /// Held until the command's status came or is given up on.
    _process: kube::api::AttachedProcess,
}

/// Runs `command` in the stage container of `pod`; `taken` names what it takes out, for
/// messages.
async fn tar<'a>(
    pods: &Api<Pod>,
    stage: &Stage<'a>,
    pod: &str,
    taken: &'a str,
    command: &[&str],
) -> BackendResult<Tar<'a>> {
    let what = format!("pods/exec of `tar` in pod {}/{pod}", stage.namespace);
    let params = AttachParams::default()
        .container(STAGE_CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(256 * 1024);
    let mut process = match pods.exec(pod, command.iter().copied(), &params).await {
        Ok(p) => p,
        Err(e) if status(&e) == Some(403) => {
            return Err(AttemptError::Platform(format!(
                "the Kubernetes API refused {what}: {e}: collecting {taken} needs the launcher's \
                 service account to be allowed `create` on `pods/exec` (infra/kubernetes/rbac.yaml)"
            )));
        }
        // 400: the container is not running (any more); 404: the pod is gone.
        Err(e) if matches!(status(&e), Some(400 | 404)) => {
            return Err(AttemptError::Platform(format!(
                "{}; {taken} went with the pod",
                attempt_error(&what, e).message()
            )));
        }
        Err(e) => return Err(attempt_error(&what, e)),
    };
    let (Some(stdout), Some(mut stderr), Some(exit)) =
        (process.stdout(), process.stderr(), process.take_status())
    else {
        return Err(AttemptError::Platform(format!("{what}: no output stream")));
    };
    let stderr = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let room = MAX_STDERR.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..n.min(room)]);
        }
        kept
    });
    Ok(Tar {
        what,
        taken,
        image: stage.image,
        stdout: Box::new(stdout),
        stderr,
        exit: Box::pin(exit),
        _process: process,
    })
}

impl Tar<'_> {
    /// Reads the archive with `read` on a blocking thread, then the rest of the stream (the
    /// padding of its last record: the stream's end is what brings the command's status). What
    /// `read` refuses is the task's doing, and the command is not waited for; a broken stream
    /// is the platform's, with what the command said.
    async fn read<T: Send + 'static>(
        &mut self,
        read: impl FnOnce(&mut dyn std::io::Read) -> Result<T, ExtractError> + Send + 'static,
    ) -> BackendResult<T> {
        let stdout = std::mem::replace(&mut self.stdout, Box::new(tokio::io::empty()));
        let mut reader = tokio_util::io::SyncIoBridge::new(stdout);
        let read = tokio::task::spawn_blocking(move || {
            let out = read(&mut reader)?;
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| ExtractError::Io {
                what: "reading the rest of the archive".into(),
                source,
            })?;
            Ok(out)
        })
        .await
        .map_err(|e| AttemptError::Platform(format!("{}: {e}", self.what)))?;
        match read {
            Ok(x) => Ok(x),
            Err(ExtractError::Refused(m)) => Err(AttemptError::Task(m)),
            Err(ExtractError::Io { what: w, source }) => {
                let said = self.failure(Duration::from_secs(5)).await.unwrap_or_default();
                Err(AttemptError::Platform(format!(
                    "{}: {w}: {source} {said} (the stage image {} must have `sh`, `sleep` and `tar`; \
                     --kube-stage-image)",
                    self.what, self.image
                )))
            }
        }
    }

    /// Waits for the command's status: an error naming what it took out unless it succeeded.
    async fn finish(mut self) -> BackendResult<()> {
        match self.failure(Duration::from_secs(30)).await {
            None => Ok(()),
            Some(said) => Err(AttemptError::Platform(format!(
                "{}: {} failed: {said} — the stage image {} (--kube-stage-image) must have `sh`, `sleep` and `tar`",
                self.taken, self.what, self.image
            ))),
        }
    }

    /// What the command said of its end, waiting at most `within`: `None` when it succeeded.
    /// Called once.
    async fn failure(&mut self, within: Duration) -> Option<String> {
        let exit = tokio::time::timeout(within, &mut self.exit).await.ok().flatten();
        if exit.as_ref().and_then(|s| s.status.as_deref()) == Some("Success") {
            return None;
        }
        let said = exit
            .and_then(|s| s.message)
            .unwrap_or_else(|| "the command's status never came".into());
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr);
        let stderr = stderr.trim();
        Some(format!(
            "{said}{}{stderr}",
            if stderr.is_empty() { "" } else { ": " }
        ))
    }
}

/// Takes the files matching the patterns out of the pod into `dest`.
pub async fn collect(
    pods: &Api<Pod>,
    cache: &Cache,
    stage: &Stage<'_>,
    c: Collect<'_>,
) -> BackendResult<Vec<OutputFile>> {
    let mut compiled = Vec::with_capacity(c.patterns.len());
    for p in c.patterns {
        ferry_launcher::collect::check_pattern(p).map_err(AttemptError::Task)?;
        compiled.push(
            glob::Pattern::new(p)
                .map_err(|e| AttemptError::Task(format!("outputFiles: pattern {p:?} is invalid: {e}")))?,
        );
    }
    if compiled.is_empty() {
        return Ok(Vec::new());
    }
    let taken = "outputFiles";
    let pod = stage_running(cache, stage, taken).await?;
    let (parent, base) = STAGE_DIR.rsplit_once('/').unwrap_or(("", STAGE_DIR));
    let command = [
        "tar",
        "-cf",
        "-",
        "-C",
        if parent.is_empty() { "/" } else { parent },
        base,
    ];
    let mut tar = tar(pods, stage, &pod, taken, &command).await?;
    let dest = c.dest.to_path_buf();
    let base = base.to_string();
    let limits = c.limits;
    let extracted = tar
        .read(move |reader| ferry_launcher::archive::extract(reader, &base, &compiled, &dest, limits))
        .await?;
    if let Err(e) = tar.finish().await {
        // Whatever it took is removed: a failed archive may be a partial one.
        for f in &extracted.files {
            let _ = std::fs::remove_file(&f.stored);
        }
        return Err(e);
    }
    extracted.into_output_files()
}

/// What the task wrote at `$FERRY_SUBTASKS` ([`SUBTASKS_FILE`]), at most
/// [`MAX_SUBTASKS_BYTES`]; `None` when it wrote nothing there.
pub async fn subtasks(pods: &Api<Pod>, cache: &Cache, stage: &Stage<'_>) -> BackendResult<Option<Vec<u8>>> {
    let taken = "$FERRY_SUBTASKS";
    let pod = stage_running(cache, stage, taken).await?;
    let name = SUBTASKS_FILE.rsplit_once('/').map_or(SUBTASKS_FILE, |(_, n)| n);
    // An archive of the one file, or an empty stream when there is none (`-L`: a link is
    // archived as a link, and refused). No name the task chose reaches the command.
    let script = format!(
        "cd {STAGE_SUBTASKS_DIR} && if [ -e {name} ] || [ -L {name} ]; then exec tar -cf - {name}; fi"
    );
    let command = ["sh", "-c", script.as_str()];
    let mut tar = tar(pods, stage, &pod, taken, &command).await?;
    let shown = format!("{taken} ({SUBTASKS_FILE})");
    let read = tar
        .read(move |reader| {
            // An empty stream is no archive at all: nothing was written.
            let mut first = [0u8; 1];
            let n = reader.read(&mut first).map_err(|source| ExtractError::Io {
                what: format!("reading the archive of {shown}"),
                source,
            })?;
            if n == 0 {
                return Ok(None);
            }
            ferry_launcher::archive::read_one(
                std::io::Read::chain(&first[..], reader),
                &shown,
                MAX_SUBTASKS_BYTES,
            )
        })
        .await?;
    tar.finish().await?;
    Ok(read)
}
