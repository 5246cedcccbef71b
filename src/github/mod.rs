//! GitHub: a small REST client for what portbot's GitHub backends need, and the webhook
//! endpoint (`webhook`) that tells portbot what happened to pull requests, checks and
//! workflow runs.
//!
//! Every call carries `Authorization: Bearer <github.token>`, GitHub's media type, API version
//! and a User-Agent. A call is retried (bounded by `github.max_attempts`) on connection errors,
//! 5xx, and rate limits: 429, or 403 with `retry-after` or `x-ratelimit-remaining: 0`, waiting
//! for `retry-after` or `x-ratelimit-reset` (at most `github.max_backoff_ms`). Any other answer
//! is returned for the caller to judge (404 and 422 often mean "already done" here).

pub mod webhook;

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::backends::without_url;
use crate::config::{GithubSettings, Secret};

/// GitHub's REST API version portbot speaks.
const API_VERSION: &str = "2022-11-28";

/// A call that did not get an answer to judge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GitHubError {
    #[error("github.token is not set (PORTBOT__GITHUB__TOKEN), so portbot cannot call GitHub")]
    NoToken,
    #[error("GitHub did not answer {what} after {attempts} attempts: {reason}")]
    GaveUp {
        what: String,
        attempts: usize,
        reason: String,
    },
    #[error("GitHub refused {what}: HTTP {status} {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
}

/// An answer from GitHub: its status and JSON body (`Null` when empty).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    /// GitHub's `message` (and first error), for reasons shown to users.
    pub fn message(&self) -> String {
        let message = self.body["message"].as_str().unwrap_or_default();
        match self.body["errors"][0]["message"].as_str() {
            Some(detail) => format!("{message} ({detail})"),
            None => message.to_owned(),
        }
    }

    /// The answer when it is a success, else [`GitHubError::Refused`] naming `what`.
    pub fn success(self, what: &str) -> Result<Value, GitHubError> {
        if self.status.is_success() {
            Ok(self.body)
        } else {
            Err(GitHubError::Refused {
                what: what.to_owned(),
                status: self.status.as_u16(),
                message: self.message(),
            })
        }
    }
}

#[derive(Clone)]
pub struct GitHub {
    http: reqwest::Client,
    api_url: String,
    token: Option<Secret>,
    settings: GithubSettings,
}

impl GitHub {
    pub fn new(settings: &GithubSettings) -> GitHub {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_seconds))
            .user_agent(concat!("portbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        GitHub {
            http,
            api_url: settings.api_url.trim_end_matches('/').to_owned(),
            token: settings.token.clone(),
            settings: settings.clone(),
        }
    }

    /// Calls `path` (below the API URL), retrying what is worth retrying; `what` names the
    /// call in messages.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, GitHubError> {
        let token = self.token.as_ref().ok_or(GitHubError::NoToken)?;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.settings.max_backoff_ms))
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let url = format!("{}{path}", self.api_url);
        for attempt in 1.. {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .header("accept", "application/vnd.github+json")
                .header("x-github-api-version", API_VERSION);
            if let Some(body) = body {
                request = request.json(body);
            }
            let (reason, asked_wait) = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let wait = rate_limit_wait(status, response.headers());
                    let retry = status.is_server_error() || wait.is_some();
                    let text = response.text().await.unwrap_or_default();
                    if !retry {
                        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
                        return Ok(Answer { status, body });
                    }
                    let kind = if wait.is_some() {
                        "rate limited"
                    } else {
                        "server error"
                    };
                    (format!("HTTP {} ({kind})", status.as_u16()), wait)
                }
                Err(error) => (without_url(&error), None),
            };
            let Some(backoff) = delays.next() else {
                return Err(GitHubError::GaveUp {
                    what: what.to_owned(),
                    attempts: attempt,
                    reason,
                });
            };
            let max = Duration::from_millis(self.settings.max_backoff_ms);
            let wait = asked_wait.map_or(backoff, |w| w.min(max));
            tracing::info!(what, attempt, %reason, ?wait, "GitHub call failed; retrying");
            tokio::time::sleep(wait).await;
        }
        unreachable!("the attempt loop returns")
    }

    pub async fn get(&self, path: &str, what: &str) -> Result<Answer, GitHubError> {
        self.call(Method::GET, path, None, what).await
    }

    pub async fn post(&self, path: &str, body: &Value, what: &str) -> Result<Answer, GitHubError> {
        self.call(Method::POST, path, Some(body), what).await
    }
}

/// How long a rate-limited answer asks to wait: 429, or 403 with `retry-after` or
/// `x-ratelimit-remaining: 0` (GitHub's primary and secondary limits).
fn rate_limit_wait(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let limited = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (number("retry-after").is_some() || number("x-ratelimit-remaining") == Some(0)));
    if !limited {
        return None;
    }
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    Some(match number("x-ratelimit-reset") {
        Some(reset) => Duration::from_secs(reset.saturating_sub(now).max(1)),
        // GitHub: without either header, wait at least a minute.
        None => Duration::from_secs(60),
    })
}

/// Percent-encodes a path for a URL, keeping its `/`.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|part| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
        .replace('+', "%20")
}

/// Percent-encodes one query value.
pub fn encode_query(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
