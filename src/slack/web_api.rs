//! The Slack Web API calls portbot makes (`chat.postMessage`, `chat.update`, …): JSON bodies
//! with the bot token, Slack's `{ok, error}` answers and its 429 `Retry-After`, as typed errors
//! the delivery can act on; and the late answers it posts to a command's `response_url`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;

use crate::config::Secret;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SlackApiError {
    #[error("Slack is rate limiting this method; retry in {0:?}")]
    RateLimited(Duration),
    #[error("Slack refused `{method}`: {error}")]
    Refused { method: String, error: String },
    #[error("Slack could not be reached for `{method}`: {reason}")]
    Unreachable { method: String, reason: String },
}

#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    /// The API root, ending in `/` (`https://slack.com/api/`).
    base: String,
    /// Each method's URL, parsed once: parsing it cost a call about 18,000 instructions.
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
    token: Secret,
}

impl SlackApi {
    pub fn new(base: &str, token: Secret) -> SlackApi {
        let mut base = base.to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        SlackApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base,
            urls: Arc::default(),
            token,
        }
    }

    /// The same client with another token (the app-level token of Socket Mode).
    pub fn with_token(&self, token: Secret) -> SlackApi {
        SlackApi {
            token,
            ..self.clone()
        }
    }

    fn url(&self, method: &str) -> Result<reqwest::Url, String> {
        let mut urls = self.urls.lock().expect("Slack URL lock poisoned");
        if let Some(url) = urls.get(method) {
            return Ok(url.clone());
        }
        let text = format!("{}{method}", self.base);
        let url = reqwest::Url::parse(&text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        urls.insert(method.to_owned(), url.clone());
        Ok(url)
    }

    /// Posts a message to a command's `response_url`, tried up to three times (after 1 s, then
    /// 2 s, or as long as a 429 asks) while Slack cannot be reached or asks to wait. The URL is
    /// the request's own, which carries its authority: the bot token is not sent there. Only
    /// Slack's own response URLs are posted to (`https://hooks.slack.com/…`), or those on the
    /// origin of `slack.api_url` (a proxy or a fake Slack), so a forged or mistaken URL cannot
    /// make portbot post a user's answer anywhere else.
    pub async fn respond(&self, response_url: &str, body: String) -> Result<(), SlackApiError> {
        let method = "response_url";
        let failed = |reason: String| SlackApiError::Unreachable {
            method: method.to_owned(),
            reason,
        };
        let url = crate::core::action::absolute_url(response_url).map_err(failed)?;
        if !self.answers_at(&url) {
            return Err(SlackApiError::Refused {
                method: method.to_owned(),
                error: format!(
                    "`{}` is neither Slack's (https://hooks.slack.com) nor slack.api_url's origin",
                    url.origin().ascii_serialization()
                ),
            });
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_times(2)
            .build();
        loop {
            let sent = self
                .http
                .post(url.clone())
                .header("content-type", "application/json; charset=utf-8")
                .body(body.clone())
                .send()
                .await;
            let (asked, error) = match sent {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) if response.status().as_u16() == 429 => {
                    (Some(retry_after(&response)), "HTTP 429".to_owned())
                }
                Ok(response) if response.status().is_server_error() => {
                    (None, format!("HTTP {}", response.status().as_u16()))
                }
                Ok(response) => {
                    return Err(SlackApiError::Refused {
                        method: method.to_owned(),
                        error: format!("HTTP {}", response.status().as_u16()),
                    })
                }
                Err(error) => (None, error.without_url().to_string()),
            };
            let Some(delay) = delays.next() else {
                return Err(failed(error));
            };
            tokio::time::sleep(asked.map_or(delay, |asked| asked.max(delay))).await;
        }
    }

    /// Whether `url` may take a command's late answer: on Slack's hooks host, or on the
    /// origin of the configured Web API.
    fn answers_at(&self, url: &reqwest::Url) -> bool {
        let slack = url.scheme() == "https" && url.host_str() == Some("hooks.slack.com");
        slack || reqwest::Url::parse(&self.base).is_ok_and(|base| base.origin() == url.origin())
    }

    /// Calls a Web API method with a JSON body; the answer when Slack says `ok`.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, SlackApiError> {
        self.call_text(method, body.to_string()).await
    }

    /// [`SlackApi::call`] with the body's JSON text.
    pub async fn call_text(&self, method: &str, body: String) -> Result<Value, SlackApiError> {
        let unreachable = |reason: String| SlackApiError::Unreachable {
            method: method.to_owned(),
            reason,
        };
        let response = self
            .http
            .post(self.url(method).map_err(unreachable)?)
            .bearer_auth(self.token.expose())
            .header("content-type", "application/json; charset=utf-8")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(e.without_url().to_string()))?;
        let status = response.status();
        if status.as_u16() == 429 {
            return Err(SlackApiError::RateLimited(retry_after(&response)));
        }
        if status.is_server_error() {
            return Err(unreachable(format!("HTTP {}", status.as_u16())));
        }
        let answer: Value = response
            .json()
            .await
            .map_err(|e| unreachable(format!("the answer is not JSON: {e}")))?;
        if answer["ok"] == Value::Bool(true) {
            Ok(answer)
        } else {
            Err(SlackApiError::Refused {
                method: method.to_owned(),
                error: answer["error"]
                    .as_str()
                    .unwrap_or("unknown_error")
                    .to_owned(),
            })
        }
    }
}

/// How long a 429 asks to wait (`Retry-After`, seconds; 1 when it does not say).
fn retry_after(response: &reqwest::Response) -> Duration {
    let seconds = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1);
    Duration::from_secs(seconds)
}
