//! The `WEBHOOK` backend: Port's run payload, signed the way Port signs it, retried with
//! exponential backoff on connection errors, 429 and 5xx.
//!
//! Signature: `x-port-signature: v1,<base64 HMAC-SHA256(secret, "<timestamp>.<raw body>")>`
//! with `x-port-timestamp` in epoch seconds; the secret is the backend API client's.

use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use hmac::{Hmac, Mac};
use std::cell::LazyCell;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use super::{Dispatcher, Outcome};
use crate::config::ClientRole;
use crate::core::action::{absolute_url, Action, HookUrl, WebhookInvocation};
use crate::core::catalog::Entity;
use crate::core::ids::{ActionId, BlueprintId, EntityId, Identity, RunId};
use crate::core::run::{EntityView, Run, RunStatus};
use crate::core::template;

pub const SIGNATURE_HEADER: &str = "x-port-signature";
pub const TIMESTAMP_HEADER: &str = "x-port-timestamp";

/// `v1,<base64 signature>` of a body sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Port's default webhook body, written straight from the run: a webhook per run made this
/// the dispatcher's busiest code, and a JSON tree built and dropped per run cost more than
/// sending it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DefaultBody<'a> {
    action: &'a ActionId,
    resource_type: &'static str,
    status: &'static str,
    trigger: Trigger<'a>,
    context: BodyContext<'a>,
    payload: Payload<'a>,
}

#[derive(Serialize)]
struct Trigger<'a> {
    by: By<'a>,
    origin: &'a str,
    #[serde(with = "crate::core::timestamp")]
    at: DateTime<Utc>,
    operation: &'static str,
}

#[derive(Serialize)]
struct By<'a> {
    user: &'a Identity,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BodyContext<'a> {
    entity: Option<&'a EntityId>,
    blueprint: &'a BlueprintId,
    run_id: &'a RunId,
}

#[derive(Serialize)]
struct Payload<'a> {
    entity: EntityView<'a>,
    action: PayloadAction<'a>,
    properties: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct PayloadAction<'a> {
    identifier: &'a ActionId,
    title: &'a str,
    blueprint: &'a BlueprintId,
    operation: &'static str,
}

impl<'a> DefaultBody<'a> {
    fn new(run: &'a Run, action: &'a Action, entity: Option<&'a Entity>) -> Self {
        DefaultBody {
            action: &action.identifier,
            resource_type: "run",
            status: "TRIGGERED",
            trigger: Trigger {
                by: By {
                    user: &run.created_by,
                },
                origin: &run.origin,
                at: run.created_at,
                operation: action.operation.as_str(),
            },
            context: BodyContext {
                entity: run.entity.as_ref().map(|e| &e.identifier),
                blueprint: &action.blueprint,
                run_id: &run.id,
            },
            payload: Payload {
                entity: EntityView(entity),
                action: PayloadAction {
                    identifier: &action.identifier,
                    title: &action.title,
                    blueprint: &action.blueprint,
                    operation: action.operation.as_str(),
                },
                properties: &run.properties,
            },
        }
    }
}

/// A webhook request to send, rendered over the run's context.
struct HookRequest {
    url: url::Url,
    body: Vec<u8>,
    /// The hook's own headers, besides the content type and Port's signature headers.
    headers: Vec<(String, String)>,
}

/// Why a run's webhook request could not be built.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// The URL template rendered to something that is not a URL.
    #[error("{0}")]
    Url(String),
}

/// Renders the hook for a run. A hook with no templates (a plain URL, the default body, no
/// headers) needs no context at all.
fn build(
    run: &Run,
    action: &Action,
    hook: &WebhookInvocation,
    entity: Option<&Entity>,
) -> Result<HookRequest, BuildError> {
    let context = LazyCell::new(|| run.template_context(entity));
    let url = match &hook.url {
        HookUrl::Fixed(url) => url.clone(),
        HookUrl::Template(text) => {
            absolute_url(&template::render_text(text, &context)?).map_err(BuildError::Url)?
        }
    };
    let body = match &hook.body {
        Some(body) => serde_json::to_vec(&template::render_value(body, &context)?),
        None => serde_json::to_vec(&DefaultBody::new(run, action, entity)),
    }
    .expect("JSON values serialise");
    let headers = hook
        .headers
        .iter()
        .map(|(k, v)| Ok((k.clone(), template::render_text(v, &context)?)))
        .collect::<Result<Vec<_>, template::TemplateError>>()?;
    Ok(HookRequest { url, body, headers })
}

enum Attempt {
    /// The status, and the body (for a redirect, where it points).
    Answered(reqwest::StatusCode, String),
    Unreachable(String),
}

pub(super) async fn invoke(
    dispatcher: &Dispatcher,
    run: &Run,
    action: &Action,
    hook: &WebhookInvocation,
) -> Outcome {
    let built = dispatcher
        .app
        .with_run_entity(run, |entity| build(run, action, hook, entity));
    let HookRequest { url, body, headers } = match built {
        Ok(parts) => parts,
        Err(error) => {
            return dispatcher
                .end(
                    &run.id,
                    format!("the webhook could not be built: {error}"),
                    RunStatus::Failure,
                )
                .await
        }
    };
    let clients = &dispatcher.config.clients;
    let secret = match &hook.client_id {
        Some(id) => clients.iter().find(|c| &c.client_id == id),
        None => clients.iter().find(|c| c.role == ClientRole::Backend),
    }
    .map(|c| c.client_secret.clone());
    let method =
        reqwest::Method::from_bytes(hook.method.as_bytes()).unwrap_or(reqwest::Method::POST);

    let settings = &dispatcher.config.webhook;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(
            settings.initial_backoff_ms,
        ))
        .with_max_delay(std::time::Duration::from_millis(settings.max_backoff_ms))
        .with_max_times(settings.max_attempts.saturating_sub(1))
        .with_jitter()
        .build();
    for attempt in 1.. {
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = dispatcher
            .http
            .request(method.clone(), url.clone())
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .body(body.clone());
        if let Some(secret) = &secret {
            request = request.header(SIGNATURE_HEADER, sign(secret.expose(), timestamp, &body));
        }
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let outcome = match request.send().await {
            Ok(response) if response.status().is_redirection() => {
                // Where it points, without a query that may carry a token.
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| l.split(['?', '#']).next())
                    .unwrap_or_default()
                    .to_owned();
                Attempt::Answered(response.status(), location)
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                Attempt::Answered(status, text)
            }
            Err(error) => Attempt::Unreachable(without_url(&error)),
        };
        let retryable = match &outcome {
            Attempt::Unreachable(_) => true,
            Attempt::Answered(status, _) => status.is_server_error() || status.as_u16() == 429,
        };
        if !retryable {
            let Attempt::Answered(status, text) = outcome else {
                unreachable!()
            };
            return finish(dispatcher, run, hook, status, &text).await;
        }
        dispatcher.app.metrics().backend_error("WEBHOOK");
        let reason = match &outcome {
            Attempt::Unreachable(e) => e.clone(),
            Attempt::Answered(status, _) => format!("HTTP {}", status.as_u16()),
        };
        match delays.next() {
            Some(delay) => {
                dispatcher
                    .log(
                        &run.id,
                        format!(
                            "webhook attempt {attempt} failed ({reason}); retrying in {:.1}s",
                            delay.as_secs_f64()
                        ),
                    )
                    .await;
                tokio::time::sleep(delay).await;
            }
            None => {
                return dispatcher
                    .end(
                        &run.id,
                        format!("the webhook backend could not be reached after {attempt} attempts: {reason}"),
                        RunStatus::Failure,
                    )
                    .await;
            }
        }
    }
    unreachable!("the attempt loop returns")
}

async fn finish(
    dispatcher: &Dispatcher,
    run: &Run,
    hook: &WebhookInvocation,
    status: reqwest::StatusCode,
    text: &str,
) -> Outcome {
    let code = status.as_u16();
    let excerpt: String = text.chars().take(500).collect();
    match (status.is_success(), hook.synchronized) {
        (true, true) => {
            dispatcher
                .end(
                    &run.id,
                    format!("the webhook answered HTTP {code}"),
                    RunStatus::Success,
                )
                .await
        }
        (true, false) => Ok(Some(
            format!("webhook delivered (HTTP {code}); waiting for the backend to report").into(),
        )),
        (false, _) if status.is_redirection() => {
            let to = match excerpt.as_str() {
                "" => String::new(),
                location => format!(" to {location}"),
            };
            dispatcher
                .end(
                    &run.id,
                    format!("the webhook answered HTTP {code}, a redirect{to}: portbot does not follow redirects, since the request is signed for the action's url; set the url to where the backend is"),
                    RunStatus::Failure,
                )
                .await
        }
        (false, _) => {
            dispatcher
                .end(
                    &run.id,
                    format!("the webhook backend refused the run: HTTP {code} {excerpt}"),
                    RunStatus::Failure,
                )
                .await
        }
    }
}

/// A connection error without the URL, which may carry a token in its query.
pub(crate) fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(inner) = source {
        detail = inner.to_string();
        source = inner.source();
    }
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}
