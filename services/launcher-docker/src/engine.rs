//! [`Engine`]: the calls a launcher backend makes on a Docker engine for one attempt's
//! container — create or adopt, start, inspect, stop, remove — and the two that span attempts,
//! [`Engine::list_owned`] and [`Engine::events`]. Logs are in [`crate::logs`], files in and out
//! in [`crate::files`].
//!
//! The engine is the truth about a container; events are only hints that it is worth looking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceRequest, HostConfig,
    HostConfigLogConfig, MountType, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};

use crate::error::{Error, Result, status_of};
use crate::spec::{Attempt, ContainerSpec, LABEL_ATTEMPT_ID, LABEL_LAUNCHER, PullPolicy};

/// Where the engine is when `DOCKER_HOST` is not set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long one engine request may take to answer (not counting a stream's body, which may
/// follow a container for hours). A stop waits for its grace on top of this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to one Docker engine. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(crate) docker: Docker,
    pub(crate) host: String,
    /// Whether an image runs its command as root, as last looked up, and when.
    root_images: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

/// How long a look at an image's user is trusted.
const IMAGE_USER_TTL: Duration = Duration::from_secs(60);

/// What [`Engine::create_or_adopt`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub id: String,
    pub name: String,
    /// The container existed already (a redelivered dispatch, or a restart after "create").
    pub adopted: bool,
}

/// A container's lifecycle state, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Created and not started yet.
    Created,
    Running,
    /// Ended on its own, by a signal or by a stop (`137` after SIGKILL, `143` after SIGTERM).
    Exited {
        code: i64,
    },
    /// Paused, restarting, being removed: none of them ferry's doing.
    Other(String),
}

/// One look at a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub state: State,
    /// The kernel killed a process of the container for exceeding its memory limit.
    pub oom_killed: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Why the engine could not run the container (a missing executable, say), if it says.
    pub error: Option<String>,
    /// The attempt and owner its labels name; `None` for a container that is not ferry's.
    pub attempt: Option<Attempt>,
    pub launcher: Option<String>,
    /// The working directory the command runs in (the image's when the spec named none).
    pub working_dir: String,
}

/// A container found by [`Engine::list_owned`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub id: String,
    pub name: String,
    pub attempt: Attempt,
    /// `created`, `running`, `exited`, …
    pub state: String,
}

/// A hint from the engine's event stream that a container changed: look at it with
/// [`Engine::inspect`] for the truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// `start`, `die`, `oom`, `destroy`.
    pub action: String,
    pub id: String,
    pub attempt_id: Option<String>,
    /// With `die`: the exit code the engine saw.
    pub exit_code: Option<i64>,
}

impl Engine {
    /// Connects to the engine `DOCKER_HOST` names, or [`DEFAULT_HOST`], and checks that it
    /// answers.
    pub async fn connect() -> Result<Engine> {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        Engine::connect_to(&host).await
    }

    /// Connects to the engine at `host` (`unix:///path`, `tcp://host:port`, `http://…`) and
    /// agrees on an API version with it, so that older engines (Debian's 20.10 speaks 1.41) work.
    pub async fn connect_to(host: &str) -> Result<Engine> {
        let no_engine = |source| Error::NoEngine {
            host: host.to_string(),
            source,
        };
        let docker = match host.strip_prefix("unix://") {
            Some(path) => pooled_unix(path),
            None => Docker::connect_with_host(host),
        }
        .map_err(no_engine)?
        .with_timeout(REQUEST_TIMEOUT);
        let docker = docker.negotiate_version().await.map_err(no_engine)?;
        Ok(Engine {
            docker,
            host: host.to_string(),
            root_images: Default::default(),
        })
    }

    /// The address this engine was reached at.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Creates the attempt's container, or adopts it if it exists already: the engine's "already
    /// exists" answer to the create (a redelivery, a restart after "create", two launchers
    /// racing) is an adoption, and the container of that name is looked at then. A container of
    /// that name that belongs to another attempt is refused, never reused. The spec is
    /// [checked](ContainerSpec::check) before anything is created, and the image pulled as its
    /// policy says: under `always` before the create (and before looking for an existing
    /// container, which is then adopted as it is); under `missing` only when the create says
    /// the engine has no such image. The container is never removed by the engine on its own:
    /// [`Engine::remove`] does it, once its logs and outputs are in.
    ///
    /// The create is tried first, rather than a look for the name: the look would cost every
    /// attempt a request to spare a rare one a failed create.
    pub async fn create_or_adopt(&self, spec: &ContainerSpec) -> Result<Created> {
        let name = spec.name();
        spec.check()?;
        if spec.pull == PullPolicy::Always {
            if let Some(found) = self.find(&name).await? {
                return adopt(&name, spec, &found);
            }
            self.pull(&spec.image).await?;
        }
        let mut pulled = spec.pull == PullPolicy::Always;
        loop {
            let options = CreateContainerOptionsBuilder::default().name(&name).build();
            return match self
                .docker
                .create_container(Some(options), create_body(spec))
                .await
            {
                Ok(r) => Ok(Created {
                    id: r.id,
                    name,
                    adopted: false,
                }),
                Err(e) if status_of(&e) == Some(409) => {
                    let found = self.created_by_another(&name).await?;
                    adopt(&name, spec, &found)
                }
                // No such image: pulled when the policy allows it, once.
                Err(e) if status_of(&e) == Some(404) => {
                    if spec.pull == PullPolicy::Never || pulled {
                        return Err(Error::ImageMissing {
                            image: spec.image.clone(),
                            host: self.host.clone(),
                        });
                    }
                    self.pull(&spec.image).await?;
                    pulled = true;
                    continue;
                }
                Err(e) if status_of(&e) == Some(400) => Err(Error::Refused(format!(
                    "the Docker engine refused the container for attempt {}: {}",
                    spec.attempt.attempt_id,
                    server_message(&e)
                ))),
                Err(e) => Err(Error::api(&self.host, "container create", e)),
            };
        }
    }

    /// The container another creator of the same name made. The engine reserves a name before
    /// the container can be inspected, so a create that lost the race may look too early: it
    /// looks again for a while.
    async fn created_by_another(&self, name: &str) -> Result<ContainerStatus> {
        let mut pause = Duration::from_millis(5);
        let mut waited = Duration::ZERO;
        loop {
            match self.find(name).await? {
                Some(found) => return Ok(found),
                None if waited < Duration::from_secs(10) => {
                    tokio::time::sleep(pause).await;
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                None => {
                    return Err(Error::Engine {
                        op: "container create",
                        status: 409,
                        message: format!(
                            "the name `{name}` is taken, but no container of that name appeared"
                        ),
                    });
                }
            }
        }
    }

    /// Whether `image` runs its command as root (it names no user, or root), looked up at most
    /// once a minute per image; `false` when the engine does not have it.
    pub async fn image_runs_as_root(&self, image: &str) -> Result<bool> {
        {
            let known = self.root_images.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((root, at)) = known.get(image)
                && at.elapsed() < IMAGE_USER_TTL
            {
                return Ok(*root);
            }
        }
        let root = match self.docker.inspect_image(image).await {
            Ok(i) => {
                let user = i.config.and_then(|c| c.user).unwrap_or_default();
                let name = user.split(':').next().unwrap_or_default();
                matches!(name, "" | "root" | "0")
            }
            Err(e) if status_of(&e) == Some(404) => return Ok(false),
            Err(e) => return Err(Error::api(&self.host, "image inspect", e)),
        };
        let mut known = self.root_images.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(image.to_string(), (root, Instant::now()));
        Ok(root)
    }

    /// Pulls `image` from its registry.
    async fn pull(&self, image: &str) -> Result<()> {
        tracing::info!(image, "pulling image");
        let options = CreateImageOptionsBuilder::default().from_image(image).build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            match step {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(Error::ImagePull {
                            image: image.to_string(),
                            not_found: detail.contains("not found") || detail.contains("manifest unknown"),
                            message: detail,
                        });
                    }
                }
                Err(e) => {
                    return Err(match status_of(&e) {
                        Some(status) => Error::ImagePull {
                            image: image.to_string(),
                            not_found: status == 404,
                            message: server_message(&e),
                        },
                        None => Error::api(&self.host, "image pull", e),
                    });
                }
            }
        }
        Ok(())
    }

    /// Starts a created container, at most once: one that runs, or has run and ended, is left
    /// as it is (the engine would run an ended container's command again, and a redelivered
    /// dispatch must never do that). A GPU request that the engine has no device driver for is
    /// refused here, when the engine first looks for the devices.
    pub async fn start(&self, name: &str) -> Result<()> {
        if self.inspect(name).await?.state != State::Created {
            return Ok(());
        }
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.start_error(name, e)),
        }
    }

    /// Starts a container this launcher has just created (and nothing else could have started
    /// meanwhile), without the look [`Engine::start`] takes first.
    pub async fn start_created(&self, name: &str) -> Result<()> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.start_error(name, e)),
        }
    }

    fn start_error(&self, name: &str, e: bollard::errors::Error) -> Error {
        if server_message(&e).contains("could not select device driver") {
            Error::Refused(format!(
                "resources.gpu cannot be honoured: the Docker engine at {} has no GPU device driver ({})",
                self.host,
                server_message(&e)
            ))
        } else {
            self.not_found_or(name, "container start", e)
        }
    }

    /// Waits until a started container is not running (at once for one that has ended, or was
    /// never started) and looks at it.
    pub async fn wait(&self, name: &str) -> Result<ContainerStatus> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut waiting = self.docker.wait_container(name, Some(options));
        while let Some(r) = waiting.next().await {
            match r {
                // A non-zero exit comes back as this error: the container has ended all the same.
                Ok(_) | Err(bollard::errors::Error::DockerContainerWaitError { .. }) => {}
                Err(e) => return Err(self.not_found_or(name, "container wait", e)),
            }
        }
        self.inspect(name).await
    }

    /// Looks at a container by name or id.
    pub async fn inspect(&self, name: &str) -> Result<ContainerStatus> {
        match self.docker.inspect_container(name, None).await {
            Ok(r) => Ok(status_from(r)),
            Err(e) => Err(self.not_found_or(name, "container inspect", e)),
        }
    }

    /// Looks at a container by name or id; `None` when there is none.
    pub async fn find(&self, name: &str) -> Result<Option<ContainerStatus>> {
        match self.inspect(name).await {
            Ok(s) => Ok(Some(s)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stops a container the way `docker stop` does: the stop signal (SIGTERM) to its init
    /// process, which passes it on to the command, then SIGKILL once `grace` (rounded up to whole
    /// seconds, the engine's unit) has passed. The engine keeps the timer, so the kill happens even
    /// if this launcher dies meanwhile. A container that has stopped or is gone counts as stopped.
    pub async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let t = i32::try_from(secs).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(t).build();
        // The engine answers once the container has stopped: wait for the grace on top.
        let docker = self
            .docker
            .clone()
            .with_timeout(REQUEST_TIMEOUT + Duration::from_secs(secs));
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(Error::api(&self.host, "container stop", e)),
        }
    }

    /// Removes a container, killing it if it still runs, with its anonymous volumes. Removing
    /// one that is gone already is not an error.
    pub async fn remove(&self, name: &str) -> Result<()> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(Error::api(&self.host, "container remove", e)),
        }
    }

    /// Every container, running or not, labelled as owned by the launcher instance `launcher`.
    pub async fn list_owned(&self, launcher: &str) -> Result<Vec<Owned>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_LAUNCHER}={launcher}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| Error::api(&self.host, "container list", e))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let attempt = Attempt::from_labels(c.labels.as_ref()?)?;
                Some(Owned {
                    id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    attempt,
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The engine's events about the containers of launcher instance `launcher` (start, die,
    /// oom, destroy), from `since` (seconds since the epoch; from now when `None`) on. Listing
    /// the owned containers and then following events since just before the listing misses
    /// nothing in between. They are hints: the stream breaks when the engine restarts, so a
    /// launcher still looks at what it runs from time to time.
    pub fn events(
        &self,
        launcher: &str,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<ContainerEvent>> + Send + 'static {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("label".to_string(), vec![format!("{LABEL_LAUNCHER}={launcher}")]),
            (
                "event".to_string(),
                ["start", "die", "oom", "destroy"].map(String::from).to_vec(),
            ),
        ]);
        let mut options = EventsOptionsBuilder::default().filters(&filters).build();
        options.since = since.map(|s| s.to_string());
        let host = self.host.clone();
        self.docker
            .events(Some(options))
            .map_err(move |e| Error::api(&host, "events", e))
            .try_filter_map(|m| async move {
                let Some(actor) = m.actor else { return Ok(None) };
                let attrs = actor.attributes.unwrap_or_default();
                Ok(Some(ContainerEvent {
                    action: m.action.unwrap_or_default(),
                    id: actor.id.unwrap_or_default(),
                    attempt_id: attrs.get(LABEL_ATTEMPT_ID).cloned(),
                    exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
                }))
            })
    }

    /// A 404 becomes [`Error::NotFound`] naming `name`; anything else as [`Error::api`].
    pub(crate) fn not_found_or(&self, name: &str, op: &'static str, e: bollard::errors::Error) -> Error {
        if status_of(&e) == Some(404) {
            Error::NotFound {
                name: name.to_string(),
            }
        } else {
            Error::api(&self.host, op, e)
        }
    }
}

fn adopt(name: &str, spec: &ContainerSpec, found: &ContainerStatus) -> Result<Created> {
    let owner = found.attempt.as_ref().map(|a| a.attempt_id.as_str());
    if owner != Some(spec.attempt.attempt_id.as_str()) {
        return Err(Error::NameTaken {
            name: name.to_string(),
            attempt_id: spec.attempt.attempt_id.clone(),
            other: owner.unwrap_or("(none: not a ferry container)").to_string(),
        });
    }
    Ok(Created {
        id: found.id.clone(),
        name: name.to_string(),
        adopted: true,
    })
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let (entrypoint, cmd) = match spec.command.split_first() {
        Some((first, rest)) => (Some(vec![first.clone()]), Some(rest.to_vec())),
        None => (None, None),
    };
    let mounts = spec
        .mounts
        .iter()
        .map(|m| bollard::models::Mount {
            target: Some(m.target.clone()),
            source: Some(m.source.clone()),
            typ: Some(if m.source.starts_with('/') {
                MountType::BIND
            } else {
                MountType::VOLUME
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    let device_requests = spec.gpus.as_ref().filter(|g| g.count > 0).map(|g| {
        vec![DeviceRequest {
            count: Some(i64::from(g.count)),
            capabilities: Some(vec![vec!["gpu".to_string()]]),
            ..Default::default()
        }]
    });
    let memory = spec.memory_bytes.map(|m| m as i64);
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd,
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.working_dir.clone(),
        user: spec.user.clone(),
        labels: Some(spec.labels()),
        volumes: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            // The command is not PID 1: an init process reaps zombies and passes SIGTERM on
            // (a PID 1 without a handler ignores it).
            init: Some(true),
            auto_remove: Some(false),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            // json-file without rotation: every line stays readable, by timestamp, until the
            // container is removed after its logs are in (see crate::logs for the cursor).
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::new()),
            }),
            network_mode: spec.network.clone(),
            mounts: (!mounts.is_empty()).then_some(mounts),
            nano_cpus: spec.cpu.map(|c| (c * 1e9).round() as i64),
            memory,
            memory_swap: memory,
            device_requests,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn status_from(r: ContainerInspectResponse) -> ContainerStatus {
    let state = r.state.unwrap_or_default();
    let labels = r
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    let code = state.exit_code.unwrap_or(0);
    ContainerStatus {
        id: r.id.unwrap_or_default(),
        name: r.name.unwrap_or_default().trim_start_matches('/').to_string(),
        state: match state.status {
            Some(ContainerStateStatusEnum::CREATED) => State::Created,
            Some(ContainerStateStatusEnum::RUNNING) => State::Running,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => State::Exited { code },
            Some(other) => State::Other(other.to_string()),
            None => State::Other(String::new()),
        },
        oom_killed: state.oom_killed.unwrap_or(false),
        started_at: engine_time(state.started_at.as_deref()),
        finished_at: engine_time(state.finished_at.as_deref()),
        error: state.error.filter(|e| !e.is_empty()),
        attempt: Attempt::from_labels(&labels),
        launcher: labels.get(LABEL_LAUNCHER).cloned(),
        working_dir: r
            .config
            .and_then(|c| c.working_dir)
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".to_string()),
    }
}

/// The engine writes "0001-01-01T00:00:00Z" for a time that has not happened.
fn engine_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    let t = DateTime::parse_from_rfc3339(s?).ok()?.with_timezone(&Utc);
    (t.timestamp() > 0).then_some(t)
}

fn server_message(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PullPolicy;

    #[test]
    fn only_the_attempts_own_container_is_adopted() {
        let spec = ContainerSpec {
            attempt: Attempt {
                job_id: "j".into(),
                task_id: "t".into(),
                attempt_id: "a1".into(),
                attempt: 1,
            },
            flow: None,
            namespace: None,
            launcher: "l".into(),
            image: "i".into(),
            pull: PullPolicy::Never,
            command: vec![],
            env: vec![],
            working_dir: None,
            user: None,
            network: None,
            mounts: vec![],
            cpu: None,
            memory_bytes: None,
            gpus: None,
            volumes: vec![],
        };
        let mut found = ContainerStatus {
            id: "c1".into(),
            name: "ferry-a1".into(),
            state: State::Created,
            oom_killed: false,
            started_at: None,
            finished_at: None,
            error: None,
            attempt: Some(spec.attempt.clone()),
            launcher: Some("other-instance".into()),
            working_dir: "/".into(),
        };
        let adopted = adopt("ferry-a1", &spec, &found).unwrap();
        assert_eq!((adopted.id.as_str(), adopted.adopted), ("c1", true));
        found.attempt.as_mut().unwrap().attempt_id = "a2".into();
        let e = adopt("ferry-a1", &spec, &found).unwrap_err();
        assert!(matches!(e, Error::NameTaken { .. }), "{e}");
        found.attempt = None;
        assert!(
            adopt("ferry-a1", &spec, &found)
                .unwrap_err()
                .to_string()
                .contains("not a ferry container")
        );
    }

    #[test]
    fn unset_engine_times_are_none() {
        assert_eq!(engine_time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(engine_time(None), None);
        let t = engine_time(Some("2026-12-06T07:19:37.123456789Z")).unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 123_456_789);
    }
}

/// A client of the engine's Unix socket at `path` that keeps idle connections for the next
/// request. bollard's own Unix client turns its pool off, so every request (seven per
/// container) paid a connect and the engine an accept; streams (logs, waits) still hold a
/// connection each for as long as they run. An idle connection is served by a task of the
/// runtime that opened it: an [`Engine`] is for one tokio runtime (a runtime blocked waiting for
/// another that uses its engine would hold that one's requests until they time out).
fn pooled_unix(path: &str) -> std::result::Result<Docker, bollard::errors::Error> {
    if !std::path::Path::new(path).exists() {
        return Err(bollard::errors::Error::SocketNotFoundError(path.to_string()));
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(UnixSocket(Arc::new(path.into())));
    Docker::connect_with_custom_transport(
        move |request: bollard::BollardRequest| {
            let client = client.clone();
            async move { Ok(client.request(request).await?) }
        },
        // Requests name no host the socket cares about.
        Some("http://localhost"),
        REQUEST_TIMEOUT.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
}

/// Connects to one Unix socket, whatever the request's URI.
#[derive(Clone)]
struct UnixSocket(Arc<std::path::PathBuf>);

impl tower_service::Service<http::Uri> for UnixSocket {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            let stream = tokio::net::UnixStream::connect(path.as_path()).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}
