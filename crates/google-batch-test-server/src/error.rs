//! Errors as Google's REST APIs send them: `{"error": {"code": 404, "message": "…",
//! "status": "NOT_FOUND"}}`, the HTTP code and the canonical `google.rpc.Code` name, so that a
//! client sees what it would see from Batch or Cloud Logging.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: StatusCode,
    /// The canonical code's name: `INVALID_ARGUMENT`, `NOT_FOUND`, …
    pub status: &'static str,
    pub message: String,
}

impl ApiError {
    /// 400: the request is wrong and will stay wrong when retried.
    pub fn invalid_argument(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            status: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }

    /// 400: the request is well formed but the resource is not in a state that allows it.
    pub fn failed_precondition(message: impl Into<String>) -> ApiError {
        ApiError {
            code: StatusCode::BAD_REQUEST,
            status: "FAILED_PRECONDITION",
            message: message.into(),
        }
    }

    pub fn not_found(name: &str) -> ApiError {
        ApiError {
            code: StatusCode::NOT_FOUND,
            status: "NOT_FOUND",
            message: format!("Resource \"{name}\" was not found"),
        }
    }

    pub fn already_exists(name: &str) -> ApiError {
        ApiError {
            code: StatusCode::CONFLICT,
            status: "ALREADY_EXISTS",
            message: format!("Resource \"{name}\" already exists"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "code": self.code.as_u16(),
            "message": self.message,
            "status": self.status,
        }});
        (self.code, Json(body)).into_response()
    }
}
