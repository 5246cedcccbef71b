//! The Port-compatible HTTP API under `/v1` (CONTRACT §5), plus `/healthz` and `/metrics`.
//!
//! Handlers translate JSON to app commands and back; every failure is
//! `{"ok": false, "error": "<code>", "message": "<what to do>"}` with a 4xx status.

mod auth;
mod catalog;
mod runs;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::{App, AppError};
use crate::config::ApiClient;
use crate::core::action::RequestError;
use crate::core::catalog::CatalogError;
use crate::core::run::RunError;

pub use auth::issue as issue_token;
pub use runs::run_json;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub app: App,
    pub clients: Arc<Vec<ApiClient>>,
    pub token_ttl_seconds: u64,
}

/// The API routes and the service endpoints.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/auth/access_token", post(runs::access_token))
        .route("/blueprints", get(catalog::blueprints))
        .route("/blueprints/{bp}", get(catalog::blueprint))
        .route(
            "/blueprints/{bp}/entities",
            get(catalog::entities).post(catalog::upsert_entity),
        )
        .route(
            "/blueprints/{bp}/entities/{id}",
            get(catalog::entity).delete(catalog::delete_entity),
        )
        .route("/actions", get(runs::actions))
        .route("/actions/{action}/runs", post(runs::create))
        .route("/actions/runs", get(runs::list))
        .route(
            "/actions/runs/{run}",
            get(runs::get_one).patch(runs::update),
        )
        .route(
            "/actions/runs/{run}/logs",
            get(runs::logs).post(runs::add_log),
        )
        .route("/actions/runs/{run}/events", get(runs::events))
        .route("/actions/runs/{run}/approval", patch(runs::decide))
        // Every answer under /v1 is the contract's JSON, also for what is not there.
        .fallback(|| async { ApiError::not_found("there is no such endpoint under /v1") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        });
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(|| async { Json(json!({"ok": true})) }))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            record_latency,
        ))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.app.metrics().render(),
    )
}

async fn record_latency(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // A client names the method; each name would be a series of its own for good.
    let method = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    state.app.metrics().http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// An API failure: status, a stable code, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"ok": false, "error": self.code, "message": self.message});
        if let Some(details) = self.details {
            body["details"] = details;
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        use StatusCode as S;
        let message = error.to_string();
        let (status, code) = match &error {
            AppError::Request(RequestError::UnknownAction { .. }) => {
                (S::NOT_FOUND, "action_not_found")
            }
            AppError::Request(RequestError::UnknownEntity { .. }) => {
                (S::NOT_FOUND, "entity_not_found")
            }
            AppError::Request(RequestError::NotPermitted { .. }) => (S::FORBIDDEN, "not_permitted"),
            AppError::Request(RequestError::EntityRequired { .. })
            | AppError::Request(RequestError::EntityNotExpected { .. }) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_entity")
            }
            AppError::Request(RequestError::Locked { .. }) => (S::CONFLICT, "resource_locked"),
            AppError::Request(RequestError::Inputs(problems)) => {
                let details: Vec<Value> = problems
                    .invalid
                    .iter()
                    .map(|v| json!({"input": v.field, "rule": v.rule.to_string()}))
                    .chain(
                        problems
                            .missing
                            .iter()
                            .map(|m| json!({"input": m, "rule": "is required"})),
                    )
                    .collect();
                return ApiError {
                    details: Some(Value::Array(details)),
                    ..ApiError::new(S::UNPROCESSABLE_ENTITY, "invalid_inputs", message)
                };
            }
            AppError::Run(RunError::SelfApproval { .. }) => (S::FORBIDDEN, "self_approval"),
            AppError::Run(RunError::NotApprover { .. }) => (S::FORBIDDEN, "not_approver"),
            AppError::Run(RunError::Ended { .. }) => (S::CONFLICT, "run_ended"),
            AppError::Run(RunError::AlreadyDecided { .. })
            | AppError::Run(RunError::AlreadyApprovedByYou { .. }) => {
                (S::CONFLICT, "already_decided")
            }
            AppError::Run(RunError::NoApprovalNeeded { .. }) => (S::CONFLICT, "no_approval_needed"),
            AppError::Run(RunError::BadTransition { .. }) => (S::CONFLICT, "invalid_transition"),
            AppError::Catalog(CatalogError::UnknownBlueprint(_)) => {
                (S::NOT_FOUND, "blueprint_not_found")
            }
            AppError::Catalog(CatalogError::NotFound { .. }) => (S::NOT_FOUND, "entity_not_found"),
            AppError::Catalog(CatalogError::Invalid(_)) => {
                (S::UNPROCESSABLE_ENTITY, "invalid_entity")
            }
            AppError::Catalog(CatalogError::InUse { .. }) => (S::CONFLICT, "entity_in_use"),
            AppError::Template(_) => (S::UNPROCESSABLE_ENTITY, "invalid_mapping"),
            AppError::RunNotFound(_) => (S::NOT_FOUND, "run_not_found"),
            AppError::Repeated(_) => (S::CONFLICT, "already_received"),
            AppError::Delivery(_) | AppError::MessageGone(_) | AppError::Store(_) => {
                tracing::error!(%error, "internal failure");
                return ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "portbot could not store the change; try again",
                );
            }
        };
        ApiError::new(status, code, message)
    }
}

/// A JSON body whose rejections are API errors, not axum's plain-text ones.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e| {
                let code = match e.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "bad_request",
                };
                ApiError::new(e.status(), code, e.body_text())
            })
    }
}

/// Path segments whose rejections (one that is not UTF-8, say) are API errors.
pub struct Segments<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Segments<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| Segments(path.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Query parameters whose rejections are API errors.
pub struct Params<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Params<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `{"ok": true, ...fields}`.
fn ok(fields: Value) -> Json<Value> {
    let mut body = json!({"ok": true});
    if let (Some(out), Value::Object(extra)) = (body.as_object_mut(), fields) {
        out.extend(extra);
    }
    Json(body)
}
