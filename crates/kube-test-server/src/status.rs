//! Errors as the API server sends them: a `Status` object with the HTTP code, a machine-readable
//! `reason` (`AlreadyExists`, `NotFound`, `Invalid`, `Expired`, `BadRequest`) and a message
//! worded like the real one's, so that clients (kube-rs: `Error::Api`) see what they would see.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::store::Kind;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<(Kind, String)>,
}

impl ApiError {
    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", kind.qualified()),
            details: Some((kind, name.to_string())),
        }
    }

    pub fn already_exists(kind: Kind, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", kind.qualified()),
            details: Some((kind, name.to_string())),
        }
    }

    /// `422 Invalid`: the object breaks a validation rule; `field` and `why` as the API says.
    pub fn invalid(kind: Kind, name: &str, field: &str, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!(
                "{} \"{name}\" is invalid: {field}: {why}",
                match kind {
                    Kind::Job => "Job.batch",
                    Kind::Pod => "Pod",
                    Kind::Secret => "Secret",
                }
            ),
            details: Some((kind, name.to_string())),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    /// `410 Gone`: a watch asked for a version the history no longer holds.
    pub fn expired(version: u64, oldest: u64) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {version} ({oldest})"),
            details: None,
        }
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some((kind, name)) = &self.details {
            status["details"] = json!({"name": name, "group": kind.group(), "kind": kind.plural()});
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.to_status())).into_response()
    }
}

/// The `Status` a delete that removed the object at once answers with.
pub fn deleted(kind: Kind, name: &str, uid: Option<&str>) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": kind.group(), "kind": kind.plural(), "uid": uid},
    })
}
