//! Output files out of a pod whose task has ended: the pod's stage container
//! ([`crate::spec::STAGE_CONTAINER`]) holds the working directory, and one `pods/exec` of `tar`
//! in it streams the directory to the launcher, which keeps the regular files matching the
//! task's patterns ([`ferry_launcher::archive`]: links never followed, hostile names refuse the
//! whole archive, counts and sizes capped) in the artifact store.
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
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::AsyncReadExt;

use crate::cache::{Cache, Container, Lookup};
use crate::error::{attempt_error, status};
use crate::spec::{STAGE_CONTAINER, STAGE_DIR};

/// The least collecting waits for the stage container to run: it starts after the task's
/// (its image pulled then), and the task may have ended first.
const MIN_STAGE_START: Duration = Duration::from_secs(60);

/// What of `tar`'s stderr goes into an error message.
const MAX_STDERR: usize = 2048;

/// Where the files go and what is taken.
pub struct Collect<'a> {
    pub namespace: &'a str,
    pub job: &'a str,
    /// The stage container's image, for messages.
    pub image: &'a str,
    pub patterns: &'a [String],
    pub dest: &'a Path,
    pub limits: Limits,
    /// How long the stage container may take to start (the pending deadline; at least a minute).
    pub start_within: Duration,
}

/// Waits for the stage container of the Job's pod to run; the pod's name.
async fn stage_running(cache: &Cache, c: &Collect<'_>) -> BackendResult<String> {
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
                        "outputFiles: the stage container of pod {}/{} (image {image}) ended ({reason}, status {code}) \
                         before the files were collected, and they went with it: the stage image (--kube-stage-image) \
                         must run `sh -c` and `sleep`",
                        c.namespace, pod.name
                    )));
                }
                Container::Waiting { reason, message } if tokio::time::Instant::now() >= until => {
                    return Err(AttemptError::Platform(format!(
                        "outputFiles: the stage container of pod {}/{} (image {image}) did not start: {reason}: {message} \
                         (--kube-stage-image)",
                        c.namespace, pod.name
                    )));
                }
                _ if tokio::time::Instant::now() >= until => {
                    return Err(AttemptError::Platform(format!(
                        "outputFiles: the stage container of pod {}/{} (image {image}) did not start within {}s",
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
                        "outputFiles: the pod of Job {}/{} is gone, and its files with it",
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

/// Takes the files matching the patterns out of the pod into `dest`.
pub async fn collect(pods: &Api<Pod>, cache: &Cache, c: Collect<'_>) -> BackendResult<Vec<OutputFile>> {
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
    let pod = stage_running(cache, &c).await?;
    let what = format!("pods/exec of `tar` in pod {}/{pod}", c.namespace);
    let (parent, base) = STAGE_DIR.rsplit_once('/').unwrap_or(("", STAGE_DIR));
    let params = AttachParams::default()
        .container(STAGE_CONTAINER)
        .stdin(false)
        .stdout(true)
        .stderr(true)
        .max_stdout_buf_size(256 * 1024);
    let command = [
        "tar",
        "-cf",
        "-",
        "-C",
        if parent.is_empty() { "/" } else { parent },
        base,
    ];
    let mut process = match pods.exec(&pod, command, &params).await {
        Ok(p) => p,
        Err(e) if status(&e) == Some(403) => {
            return Err(AttemptError::Platform(format!(
                "the Kubernetes API refused {what}: {e}: collecting outputFiles needs the launcher's \
                 service account to be allowed `create` on `pods/exec` (infra/kubernetes/rbac.yaml)"
            )));
        }
        // 400: the container is not running (any more); 404: the pod is gone.
        Err(e) if matches!(status(&e), Some(400 | 404)) => {
            return Err(AttemptError::Platform(format!(
                "{}; the output files went with the pod",
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
    let errors = tokio::spawn(async move {
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
    let reader = tokio_util::io::SyncIoBridge::new(stdout);
    let dest = c.dest.to_path_buf();
    let base = base.to_string();
    let limits = c.limits;
    let extracted = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let out = ferry_launcher::archive::extract(&mut reader, &base, &compiled, &dest, limits)?;
        // What follows the archive's end (the padding of its last record) is read too: the
        // stream's end is what brings the command's status.
        std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| ExtractError::Io {
            what: "reading the rest of the archive".into(),
            source,
        })?;
        Ok::<_, ExtractError>(out)
    })
    .await
    .map_err(|e| AttemptError::Platform(format!("{what}: {e}")))?;
    let extracted = match extracted {
        Ok(x) => x,
        // The task's doing: nothing collected is left, and the command is not waited for.
        Err(ExtractError::Refused(m)) => return Err(AttemptError::Task(m)),
        Err(ExtractError::Io { what: w, source }) => {
            let exit = tokio::time::timeout(Duration::from_secs(5), exit)
                .await
                .ok()
                .flatten();
            let said = exit.and_then(|s| s.message).unwrap_or_default();
            return Err(AttemptError::Platform(format!(
                "{what}: {w}: {source} {said} (the stage image {} must have `tar`; --kube-stage-image)",
                c.image
            )));
        }
    };
    let exit = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .ok()
        .flatten();
    let stderr = errors.await.unwrap_or_default();
    match exit {
        Some(s) if s.status.as_deref() == Some("Success") => {}
        other => {
            // Whatever it took is removed: a failed archive may be a partial one.
            for f in &extracted.files {
                let _ = std::fs::remove_file(&f.stored);
            }
            let said = other
                .and_then(|s| s.message)
                .unwrap_or_else(|| "the command's status never came".into());
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(AttemptError::Platform(format!(
                "outputFiles: `tar` in the stage container of pod {}/{pod} (image {}) failed: {said}{}{} \
                 — the stage image (--kube-stage-image) must have `sh`, `sleep` and `tar`",
                c.namespace,
                c.image,
                if stderr.trim().is_empty() { "" } else { ": " },
                stderr.trim()
            )));
        }
    }
    extracted.into_output_files()
}
