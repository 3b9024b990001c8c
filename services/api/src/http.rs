//! The HTTP routes.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_bus::Bus;
use ferry_event::cloudevents::{AttributesWriter, Data};
use ferry_event::envelope::{self, EXT_JOB, EXT_PARTITION_KEY, EXT_TRACEPARENT};
use ferry_event::payload::{
    FlowDeploy, FlowSource, FlowUndeploy, JobCancel, JobPlanned, JobRetry, JobSubmitted, Problem,
};
use ferry_event::{AttributesReader, Event, kind};
use ferry_log_collector::LogStore;
use ferry_runtime::CancellationToken;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::Config;
use crate::auth::{Authenticator, Principal, Scope};
use crate::guard::{self, AllowedHosts};
use crate::intake::{self, Mode};
use crate::store::{ReadModel, Reservation};

/// Seconds a client is asked to wait before retrying when the bus is unavailable.
const RETRY_AFTER_SECS: u64 = 5;
/// Jobs listed when `limit` is not given, and the most listed at once.
const JOBS_DEFAULT: u32 = 50;
const JOBS_MAX: u32 = 1000;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub bus: Arc<dyn Bus>,
    pub model: ReadModel,
    pub logs: LogStore,
    pub config: Arc<Config>,
    /// The artifact stores output files are served from.
    pub artifacts: Arc<Vec<ferry_artifacts::Store>>,
    /// Bumped after every read model commit.
    pub changed: watch::Receiver<u64>,
    /// Ends streaming responses when the service stops.
    pub shutdown: CancellationToken,
}

/// The routes, behind the guards: every request must name an allowed host and arrive within
/// the request timeout; every route but `/healthz` and `/readyz` needs a credential. Each
/// request's latency is recorded by route template and status class.
pub(crate) fn router(state: AppState, auth: Authenticator, hosts: Arc<AllowedHosts>) -> Router {
    let limit = state.config.body_limit;
    let timeout = state.config.request_timeout;
    let protected = Router::new()
        .route("/events", post(post_events))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/events", get(crate::follow::job_events))
        .route("/jobs/{id}/logs", get(crate::follow::job_logs))
        .route("/jobs/{id}/files/{task}/{*path}", get(get_file))
        .route("/launchers", get(list_launchers))
        .route("/agents", get(list_agents))
        .route("/flows", get(list_flows).post(post_flow))
        .route_layer(from_fn_with_state(auth, guard::authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .route_layer(axum::middleware::from_fn(guard::measure))
        .layer(DefaultBodyLimit::max(limit))
        .layer(from_fn_with_state(timeout, guard::deadline))
        .layer(from_fn_with_state(hosts, guard::check_host))
        .with_state(state)
}

// ----------------------------------------------------------------------------------------------
// Errors
// ----------------------------------------------------------------------------------------------

/// A refused request: status, a sentence, and the problems found (`{"error", "problems"}`).
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: String,
    problems: Vec<Problem>,
    retry_after: bool,
    /// The largest body accepted, on a 413 for the request's size (`limitBytes`).
    limit: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            problems: Vec::new(),
            retry_after: false,
            limit: None,
        }
    }

    pub fn bad_request(error: impl Into<String>, problems: Vec<Problem>) -> Self {
        ApiError {
            problems,
            ..ApiError::new(StatusCode::BAD_REQUEST, error)
        }
    }

    /// The principal may not do this: 403.
    pub fn forbidden(error: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, error)
    }

    pub fn unknown_job(job_id: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("job {job_id:?} is not known (GET /jobs lists the known jobs)"),
        )
    }

    /// Trying again later may work: 503 with `Retry-After`.
    pub fn unavailable(error: impl Into<String>) -> Self {
        ApiError {
            retry_after: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error)
        }
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        tracing::warn!(error = %e, "request failed");
        if e.is_transient() {
            ApiError::unavailable(format!("{e}; retry later"))
        } else {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

impl From<ferry_log_collector::Error> for ApiError {
    fn from(e: ferry_log_collector::Error) -> Self {
        match e {
            ferry_log_collector::Error::InvalidCursor(_) => {
                ApiError::bad_request(e.to_string(), vec![field_problem("after", e.to_string())])
            }
            other => crate::Error::Logs(other).into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error, "problems": self.problems });
        if let Some(limit) = self.limit {
            body["limitBytes"] = json!(limit);
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

pub(crate) fn field_problem(field: &str, message: impl Into<String>) -> Problem {
    Problem {
        location: None,
        field: Some(field.to_string()),
        message: message.into(),
    }
}

/// A query string that did not parse, as a 400 naming the parameter.
pub(crate) fn bad_query(e: QueryRejection) -> ApiError {
    let text = e.body_text();
    ApiError::bad_request("invalid query string", vec![field_problem("query", text)])
}

// ----------------------------------------------------------------------------------------------
// Authorization
// ----------------------------------------------------------------------------------------------

/// 403 unless the principal holds `scope`; `what` is what it tried ("cancel jobs").
pub(crate) fn require(p: &Principal, scope: Scope, what: &str) -> Result<(), ApiError> {
    if p.has(scope) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "token {:?} may not {what}: that needs scope `{scope}`, and it has {}",
        p.name,
        p.scope_list()
    )))
}

/// 403 unless the principal may act in `namespace`.
pub(crate) fn require_namespace(p: &Principal, namespace: &str, what: &str) -> Result<(), ApiError> {
    if p.in_namespace(namespace) {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "token {:?} may not {what} in namespace `{namespace}`: it is limited to {}",
        p.name,
        p.namespace_list()
    )))
}

/// For a request about one job: 403 without `scope`; 404 for an unknown job, and the very same
/// 404 for a job outside the principal's namespaces (or whose namespace is not known until it is
/// planned), so that a limited token cannot tell another team's job ids from unused ones.
pub(crate) async fn authorize_job(
    state: &AppState,
    p: &Principal,
    job_id: &str,
    scope: Scope,
    what: &str,
) -> Result<(), ApiError> {
    require(p, scope, what)?;
    if !state.model.job_exists(job_id).await? {
        return Err(ApiError::unknown_job(job_id));
    }
    if p.namespaces.is_none() {
        return Ok(());
    }
    match state.model.namespace_of(job_id).await? {
        Some(ns) if p.in_namespace(&ns) => Ok(()),
        _ => {
            tracing::debug!(token = %p.name, job_id, "a job outside the token's namespaces answered as unknown");
            Err(ApiError::unknown_job(job_id))
        }
    }
}

// ----------------------------------------------------------------------------------------------
// GET /healthz
// ----------------------------------------------------------------------------------------------

async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state
        .model
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("{e}")))?;
    Ok(Json(json!({ "status": "ok" })))
}

// ----------------------------------------------------------------------------------------------
// GET /readyz
// ----------------------------------------------------------------------------------------------

/// Ready as every ferry process is (`ferry_connect::endpoint`): the bus and the api's
/// databases (read model, log store) answer. 503 names what does not.
async fn readyz(State(state): State<AppState>) -> Response {
    match ferry_connect::endpoint::readiness(state.bus.as_ref()).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(failed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failed.join("\n")),
        )
            .into_response(),
    }
}

// ----------------------------------------------------------------------------------------------
// POST /events
// ----------------------------------------------------------------------------------------------

/// An event checked and ready to publish, with what to answer once it is.
struct Accepted {
    event: Event,
    job_id: Option<String>,
    /// The flow id of an accepted submission, to record the job as submitted.
    submitted_flow: Option<String>,
    /// The digest this request reserved the job id for, to give back if it is not published.
    reserved: Option<String>,
    /// False for a resubmission of a job published already: answered, not published again.
    publish: bool,
    /// Where the job's trace goes on from (when traces are exported): the event's intake here.
    span: tracing::Span,
}

impl Accepted {
    fn plain(event: Event, job_id: Option<String>) -> Accepted {
        Accepted {
            event,
            job_id,
            submitted_flow: None,
            reserved: None,
            publish: true,
            span: tracing::Span::none(),
        }
    }
}

/// Gives back the job ids reserved for submissions that are not being published after all.
async fn release(state: &AppState, accepted: &[Accepted]) {
    for a in accepted {
        if let (Some(job_id), Some(digest)) = (&a.job_id, &a.reserved)
            && let Err(e) = state.model.release_submission(job_id, digest).await
        {
            tracing::warn!(job_id, error = %e, "giving back a reserved job id failed");
        }
    }
}

async fn post_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                limit: Some(state.config.body_limit),
                ..ApiError::new(
                    status,
                    format!(
                        "the request body is larger than the {} bytes accepted",
                        state.config.body_limit
                    ),
                )
            }
        } else {
            ApiError::new(status, format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    let events = match intake::mode(&headers) {
        Mode::Binary => vec![intake::binary(&headers, &body).map_err(not_an_event)?],
        Mode::Structured => vec![intake::structured(&body).map_err(not_an_event)?],
        Mode::Batch => intake::batch(&body).map_err(not_an_event)?,
        Mode::UnsupportedFormat(m) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "event format {m} is not supported: use {} or {}",
                    intake::STRUCTURED,
                    intake::BATCH
                ),
            ));
        }
    };
    let batch = intake::mode(&headers) == Mode::Batch;
    if batch && events.is_empty() {
        return Err(ApiError::bad_request(
            "the batch is empty",
            vec![field_problem("body", "send at least one event")],
        ));
    }
    let mut accepted = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        match accept(&state, &principal, event).await {
            Ok(a) => accepted.push(a),
            Err(mut e) if batch => {
                release(&state, &accepted).await;
                // Name the event within the batch; a batch is published whole or not at all.
                for p in &mut e.problems {
                    p.field = Some(format!("[{i}].{}", p.field.as_deref().unwrap_or("")));
                }
                e.error = format!("event [{i}] of the batch: {}", e.error);
                if e.status == StatusCode::NOT_FOUND {
                    e.status = StatusCode::BAD_REQUEST;
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    let to_publish: Vec<Event> = accepted
        .iter()
        .filter(|a| a.publish)
        .map(|a| a.event.clone())
        .collect();
    let span = accepted
        .iter()
        .map(|a| a.span.clone())
        .find(|s| !s.is_none())
        .unwrap_or_else(tracing::Span::none);
    if !to_publish.is_empty()
        && let Err(e) = publish(&state, &to_publish).instrument(span).await
    {
        release(&state, &accepted).await;
        return Err(e);
    }
    for a in &accepted {
        tracing::info!(
            event_id = %a.event.id(),
            event_type = %a.event.ty(),
            job_id = a.job_id.as_deref().unwrap_or(""),
            "event accepted"
        );
        if let (Some(job_id), Some(flow_id)) = (&a.job_id, &a.submitted_flow) {
            // The job is on the bus either way; the read model catches up from job.planned.
            if let Err(e) = state
                .model
                .record_submitted(job_id, flow_id, ferry_event::now_ms())
                .await
            {
                tracing::warn!(job_id, error = %e, "recording the submitted job failed");
            }
        }
    }
    let answer = |a: &Accepted| match &a.job_id {
        Some(job_id) => json!({ "id": a.event.id(), "jobId": job_id }),
        None => json!({ "id": a.event.id() }),
    };
    if batch {
        let items: Vec<Value> = accepted.iter().map(answer).collect();
        return Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": items }))).into_response());
    }
    let Some(a) = accepted.first() else {
        return Err(ApiError::bad_request("no event in the request", Vec::new()));
    };
    let mut response = (StatusCode::ACCEPTED, Json(answer(a))).into_response();
    if let (Some(job_id), Some(_)) = (&a.job_id, &a.submitted_flow)
        && let Ok(v) = HeaderValue::from_str(&format!("/jobs/{job_id}"))
    {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

fn not_an_event(problems: Vec<Problem>) -> ApiError {
    let error = match problems.len() {
        1 => format!("invalid CloudEvent: {}", problems[0]),
        n => format!("invalid CloudEvent: {n} problems"),
    };
    ApiError::bad_request(error, problems)
}

/// Publishes and waits for the bus to confirm, within the configured time.
async fn publish(state: &AppState, events: &[Event]) -> Result<(), ApiError> {
    let limit = state.config.publish_timeout;
    match tokio::time::timeout(limit, state.bus.publish(events)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.is_transient() || matches!(e, ferry_bus::Error::Closed) => {
            tracing::warn!(error = %e, "publishing failed");
            Err(ApiError::unavailable(format!(
                "the event was not accepted: {e}; retry later"
            )))
        }
        Ok(Err(e @ ferry_bus::Error::TooLarge { .. })) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the event was not accepted: {e}"),
        )),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "publishing failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the event was not accepted: {e}"),
            ))
        }
        Err(_) => Err(ApiError::unavailable(format!(
            "the bus did not confirm the event within {}; retry later",
            humantime::format_duration(limit)
        ))),
    }
}

/// Checks one event, and that the principal may post it, and prepares it for publishing.
async fn accept(state: &AppState, principal: &Principal, event: Event) -> Result<Accepted, ApiError> {
    let ty = event.ty().to_string();
    match ty.as_str() {
        kind::JOB_SUBMITTED => {
            require(principal, Scope::Submit, "submit jobs")?;
            accept_submission(state, principal, event).await
        }
        kind::JOB_CANCEL => {
            require(principal, Scope::Cancel, "cancel jobs")?;
            let c: JobCancel = decode_data(&event, "{\"jobId\": \"…\", \"reason\": \"…\"}")?;
            accept_command(state, principal, event, c.job_id, "cancel jobs").await
        }
        kind::JOB_RETRY => {
            require(principal, Scope::Cancel, "retry jobs")?;
            let r: JobRetry = decode_data(&event, "{\"jobId\": \"…\"}")?;
            accept_command(state, principal, event, r.job_id, "retry jobs").await
        }
        kind::FLOW_DEPLOY => {
            require(principal, Scope::Submit, "deploy flows")?;
            accept_deploy(principal, event).await
        }
        kind::FLOW_UNDEPLOY => {
            require(principal, Scope::Submit, "undeploy flows")?;
            let mut event = event;
            let u: FlowUndeploy = decode_data(&event, "{\"namespace\": \"optional\", \"flowId\": \"…\"}")?;
            let namespace = u
                .namespace
                .as_deref()
                .unwrap_or(ferry_event::payload::DEFAULT_NAMESPACE);
            require_namespace(principal, namespace, "undeploy flows")?;
            stamp_flow(
                &mut event,
                &envelope::flow_key(u.namespace.as_deref(), &u.flow_id),
            );
            Ok(Accepted::plain(event, None))
        }
        t if t.starts_with(kind::PREFIX) => Err(ApiError::bad_request(
            format!("event type {t} cannot be posted"),
            vec![field_problem(
                "type",
                format!(
                    "`{t}` is emitted by ferry's services; post {}, {}, {}, {}, {} or an event type of your own",
                    kind::JOB_SUBMITTED,
                    kind::JOB_CANCEL,
                    kind::JOB_RETRY,
                    kind::FLOW_DEPLOY,
                    kind::FLOW_UNDEPLOY
                ),
            )],
        )),
        _ => {
            // Triggers of any namespace may start a job from an event of one's own.
            require(principal, Scope::Submit, "post events")?;
            if principal.namespaces.is_some() {
                return Err(ApiError::forbidden(format!(
                    "token {:?} may not post events of its own ({ty}): triggers of any namespace may act on them, \
                     and the token is limited to {}",
                    principal.name,
                    principal.namespace_list()
                )));
            }
            Ok(Accepted::plain(event, None))
        }
    }
}

fn decode_data<T: serde::de::DeserializeOwned>(event: &Event, example: &str) -> Result<T, ApiError> {
    ferry_event::decode(event).map_err(|e| {
        let message = match e {
            ferry_event::DecodeError::NoData { .. } => format!("the event has no data; send {example}"),
            ferry_event::DecodeError::Invalid { source, .. } => {
                format!("the data is not valid for {}: {source}", event.ty())
            }
        };
        ApiError::bad_request(
            format!("invalid {} event", event.ty()),
            vec![field_problem("data", message)],
        )
    })
}

/// Names the job on an event: the Kafka key, the job extension, the trace, the subject. When
/// traces are exported, the event's intake is a span of the job's trace, continuing the trace
/// the event came with (a foreign one is linked), and the event goes on from that span.
fn stamp_job(event: &mut Event, job_id: &str) -> tracing::Span {
    event.set_extension(EXT_PARTITION_KEY, job_id.to_string());
    event.set_extension(EXT_JOB, job_id.to_string());
    if event.subject().is_none() {
        event.set_subject(Some(job_id.to_string()));
    }
    if !ferry_runtime::trace::enabled() {
        if envelope::extension(event, EXT_TRACEPARENT).is_none() {
            event.set_extension(EXT_TRACEPARENT, envelope::traceparent(job_id));
        }
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "intake",
        event_id = %event.id(),
        event_type = %event.ty(),
        job_id
    );
    ferry_runtime::trace::follow(&span, event);
    event.set_extension(EXT_TRACEPARENT, span.in_scope(|| envelope::traceparent(job_id)));
    span
}

async fn accept_command(
    state: &AppState,
    principal: &Principal,
    mut event: Event,
    job_id: String,
    what: &str,
) -> Result<Accepted, ApiError> {
    authorize_job(state, principal, &job_id, Scope::Cancel, what).await?;
    let span = stamp_job(&mut event, &job_id);
    Ok(Accepted {
        span,
        ..Accepted::plain(event, Some(job_id))
    })
}

/// A submission: its flow and inputs are validated and planned here so that a bad one is
/// refused with every problem and never published. A job id means one job: the same
/// submission again is the same job (answered, not published again once it was), another one
/// under a taken id is refused with 409.
async fn accept_submission(
    state: &AppState,
    principal: &Principal,
    mut event: Event,
) -> Result<Accepted, ApiError> {
    const EXAMPLE: &str = "{\"flow\": \"<flow YAML>\" or {…}, \"inputs\": {…}, \"jobId\": \"optional\"}";
    let submitted: JobSubmitted = decode_data(&event, EXAMPLE)?;
    let (job_id, field) = match &submitted.job_id {
        Some(id) => (id.clone(), "data.jobId"),
        None => (event.id().to_string(), "id"),
    };
    if let Err(message) = ferry_flow::check_job_id(&job_id) {
        let message = if field == "id" {
            format!("{message} (the event id is the job id when data.jobId is absent)")
        } else {
            message
        };
        return Err(ApiError::bad_request(
            "invalid job id",
            vec![field_problem(field, message)],
        ));
    }
    let planned = {
        let submitted = submitted.clone();
        let job_id = job_id.clone();
        tokio::task::spawn_blocking(move || plan(&submitted, &job_id)).await
    };
    let planned = validated(planned, "the flow or its inputs are")?;
    let namespace = crate::digest::namespace_of(&planned);
    require_namespace(principal, namespace, "submit jobs")?;
    let digest = crate::digest::of_plan(&planned);
    let reservation = state
        .model
        .reserve_submission(&job_id, &digest, namespace, ferry_event::now_ms())
        .await?;
    let (reserved, publish) = match reservation {
        Reservation::New => (Some(digest), true),
        Reservation::Same { recorded } => (None, !recorded),
        Reservation::Taken => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "job id {job_id:?} is taken by another submission (a job id means one job): submit the same \
                     flow and inputs to get that job again, or choose another job id"
                ),
            ));
        }
    };
    // Fill in the job id, keeping everything else the submitter sent in `data` as it was.
    let mut data: Value = ferry_event::decode(&event).map_err(|e| {
        ApiError::bad_request(
            "invalid job submission",
            vec![field_problem("data", e.to_string())],
        )
    })?;
    if let Value::Object(obj) = &mut data {
        obj.insert("jobId".into(), Value::String(job_id.clone()));
    }
    event.set_data("application/json", Data::Binary(data.to_string().into_bytes()));
    let span = stamp_job(&mut event, &job_id);
    Ok(Accepted {
        span,
        event,
        job_id: Some(job_id),
        submitted_flow: Some(planned.flow_id),
        reserved,
        publish,
    })
}

/// A deploy: its flow is validated here so that a bad one is refused with every problem and
/// never published, and the principal must be allowed to submit in the flow's namespace.
async fn accept_deploy(principal: &Principal, mut event: Event) -> Result<Accepted, ApiError> {
    const EXAMPLE: &str = "{\"flow\": \"<flow YAML>\" or {…}, \"flowName\": \"optional\"}";
    let request: FlowDeploy = decode_data(&event, EXAMPLE)?;
    let name = request.flow_name.clone().unwrap_or_else(|| "flow".into());
    let source = match &request.flow {
        FlowSource::Text(text) => text.clone(),
        FlowSource::Object(obj) => serde_json::to_string_pretty(obj).unwrap_or_default(),
    };
    let checked =
        tokio::task::spawn_blocking(move || ferry_flow::validate(&source, &name).map(|v| v.flow().clone()))
            .await;
    let flow = validated(checked, "the flow is")?;
    let namespace = flow
        .namespace
        .as_deref()
        .unwrap_or(ferry_event::payload::DEFAULT_NAMESPACE);
    require_namespace(principal, namespace, "deploy flows")?;
    stamp_flow(
        &mut event,
        &envelope::flow_key(flow.namespace.as_deref(), &flow.id),
    );
    Ok(Accepted::plain(event, None))
}

/// Names the flow a registry request is about: its subject and Kafka key, so that one flow's
/// requests stay in order.
fn stamp_flow(event: &mut Event, key: &str) {
    event.set_extension(EXT_PARTITION_KEY, key.to_string());
    event.set_subject(Some(key.to_string()));
}

/// The outcome of a flow check run off the request threads: its value, or a 400 listing every
/// problem ("`what` not valid (N problems)").
fn validated<T>(
    joined: Result<Result<T, Vec<Problem>>, tokio::task::JoinError>,
    what: &str,
) -> Result<T, ApiError> {
    match joined {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(problems)) => {
            let n = problems.len();
            let error = format!("{what} not valid ({n} problem{})", if n == 1 { "" } else { "s" });
            Err(ApiError::bad_request(error, problems))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("validating the flow failed unexpectedly: {e}"),
        )),
    }
}

/// Validates a submission's flow and plans its job, collecting every problem.
fn plan(submitted: &JobSubmitted, job_id: &str) -> Result<JobPlanned, Vec<Problem>> {
    let name = submitted.flow_name.as_deref().unwrap_or("flow");
    let source = match &submitted.flow {
        FlowSource::Text(text) => text.clone(),
        FlowSource::Object(obj) => serde_json::to_string_pretty(obj).map_err(|e| {
            vec![field_problem(
                "data.flow",
                format!("the flow object cannot be read as JSON: {e}"),
            )]
        })?,
    };
    let flow = ferry_flow::validate(&source, name)?;
    ferry_flow::plan(&flow, job_id, &submitted.inputs)
}

// ----------------------------------------------------------------------------------------------
// GET /jobs, GET /jobs/{id}
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
}

async fn list_jobs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, Scope::Read, "read jobs")?;
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(JOBS_DEFAULT);
    if limit == 0 || limit > JOBS_MAX {
        return Err(ApiError::bad_request(
            "invalid limit",
            vec![field_problem("limit", format!("use 1 to {JOBS_MAX}"))],
        ));
    }
    // A token limited to namespaces sees their jobs only.
    let namespaces = principal.namespaces();
    let jobs = state.model.jobs_in(limit, namespaces.as_deref()).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

async fn get_job(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize_job(&state, &principal, &id, Scope::Read, "read jobs").await?;
    match state.model.job_detail(&id).await? {
        Some(detail) => Ok(Json(serde_json::to_value(detail).unwrap_or(Value::Null))),
        None => Err(ApiError::unknown_job(&id)),
    }
}

// ----------------------------------------------------------------------------------------------
// GET /jobs/{id}/files/{task}/{path}
// ----------------------------------------------------------------------------------------------

/// An output file of a task's last succeeded attempt, as its bytes, read from the artifact store
/// that holds it: for whoever may read the job. A file in no store this api serves is 404,
/// saying where it is and how to serve it.
async fn get_file(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, task, path)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    authorize_job(&state, &principal, &id, Scope::Read, "read jobs").await?;
    let not_found = |why: String| ApiError::new(StatusCode::NOT_FOUND, why);
    let Some(files) = state.model.output_files(&id, &task).await? else {
        return Err(not_found(format!("job {id} has no task {task:?}")));
    };
    let Some(file) = files.into_iter().find(|f| f.path == path) else {
        return Err(not_found(format!(
            "task {task:?} of job {id} has no output file {path:?} (`ferry files {id}` lists them)"
        )));
    };
    let Some((store, key)) = state
        .artifacts
        .iter()
        .find_map(|s| s.key_of(&file.uri).ok().map(|key| (s, key)))
    else {
        return Err(not_found(format!(
            "output file {path:?} is kept at {}, in no artifact store this api serves (--serve-artifacts)",
            file.uri
        )));
    };
    let (size, stream) = store.get(&key).await.map_err(|e| match e {
        ferry_artifacts::Error::NotFound(_) => not_found(format!(
            "output file {path:?} is no longer at {} (removed after its retention?)",
            file.uri
        )),
        e => {
            tracing::warn!(uri = %file.uri, error = %e, "cannot read an output file");
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                format!("cannot read output file {path:?}: {e}"),
            )
        }
    })?;
    let name = path.rsplit('/').next().unwrap_or("file");
    // Only characters that need no quoting in a header: the name is the task's to choose.
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        )
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(axum::body::Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

// ----------------------------------------------------------------------------------------------
// GET /flows, POST /flows
// ----------------------------------------------------------------------------------------------

/// The deployed flows (of the principal's namespaces), as the planner's registry announced them.
async fn list_flows(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, Scope::Read, "list flows")?;
    let namespaces = principal.namespaces();
    let flows = state.model.flows(namespaces.as_deref()).await?;
    Ok(Json(json!({ "flows": flows })))
}

/// Deploys a flow: the body is a `dev.ferry.flow.deploy` payload (`{"flow": …, "flowName":
/// …}`), checked and published as that event would be through `POST /events`.
async fn post_flow(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("cannot read the request body: {}", e.body_text()),
        )
    })?;
    let request: FlowDeploy = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid deploy request",
            vec![field_problem(
                "body",
                format!("{e}; send {{\"flow\": \"<flow YAML>\" or {{…}}, \"flowName\": \"optional\"}}"),
            )],
        )
    })?;
    let event = ferry_event::EventBuilder::new(ferry_runtime::instance_source("api")).flow(
        kind::FLOW_DEPLOY,
        "",
        &request,
    );
    require(&principal, Scope::Submit, "deploy flows")?;
    let accepted = accept_deploy(&principal, event).await?;
    publish(&state, std::slice::from_ref(&accepted.event)).await?;
    let flow = accepted.event.subject().unwrap_or_default().to_string();
    tracing::info!(event_id = %accepted.event.id(), flow, "flow deploy accepted");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": accepted.event.id(), "flow": flow })),
    )
        .into_response())
}

/// The launchers heard from in the last day: which backends have one running, and how busy.
/// They are the deployment's, not a namespace's: a token limited to namespaces cannot list them.
async fn list_launchers(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, Scope::Read, "list launchers")?;
    if principal.namespaces().is_some() {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not list launchers: they serve every namespace, and it is limited to some",
            principal.name
        )));
    }
    let launchers = state.model.launchers().await?;
    Ok(Json(json!({ "launchers": launchers })))
}

/// The agents heard from in the last day: cluster, registered tasks, capacity and attempts
/// running. Like launchers, they are the deployment's, not a namespace's.
async fn list_agents(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    require(&principal, Scope::Read, "list agents")?;
    if principal.namespaces().is_some() {
        return Err(ApiError::forbidden(format!(
            "token {:?} may not list agents: they serve every namespace, and it is limited to some",
            principal.name
        )));
    }
    let agents = state.model.agents().await?;
    Ok(Json(json!({ "agents": agents })))
}

/// How long streaming responses wait between looks at the read model when nothing woke them.
pub(crate) fn poll(config: &Config) -> Duration {
    config.follow_poll.max(Duration::from_millis(10))
}
