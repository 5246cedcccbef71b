//! The Discord REST calls portbot makes (messages, threads, DMs, command registration, edits of
//! an interaction's response): JSON with `Authorization: Bot …`, Discord's error bodies as typed
//! errors, and its rate limits honoured per route.
//!
//! Discord tells the limits in headers (`X-RateLimit-Remaining`, `X-RateLimit-Reset-After`) and,
//! when one is hit, in a 429 whose body carries `retry_after` in (float) seconds, with `global`
//! for the bot-wide limit. A route that has no requests left waits until its reset before the
//! next request; a 429 is waited out and the request sent again. (serenity's own client either
//! ignores the configured API root, with its rate limiter on, or drops `retry_after`, with it
//! off; so portbot keeps its own, as for Slack.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use crate::chat::pace::Pace;
use crate::config::Secret;

/// Blocked routes kept before the expired ones are dropped.
const MAX_BLOCKED: usize = 256;

/// Sent as `User-Agent`, in the form Discord asks bots to use.
const USER_AGENT: &str = concat!(
    "DiscordBot (https://github.com/portbot/portbot, ",
    env!("CARGO_PKG_VERSION"),
    ")"
);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DiscordApiError {
    #[error("Discord refused {route} (HTTP {status}, code {code}): {message}")]
    Refused {
        route: String,
        status: u16,
        /// Discord's JSON error code (10003 unknown channel, 50001 missing access, ...).
        code: u64,
        message: String,
    },
    #[error("Discord could not be reached for {route}: {reason}")]
    Unreachable { route: String, reason: String },
}

impl DiscordApiError {
    /// Discord's JSON error code, when it refused.
    pub fn code(&self) -> Option<u64> {
        match self {
            DiscordApiError::Refused { code, .. } => Some(*code),
            DiscordApiError::Unreachable { .. } => None,
        }
    }
}

#[derive(Clone)]
pub struct DiscordApi {
    http: reqwest::Client,
    /// The API root without a trailing `/` (`https://discord.com/api/v10`).
    base: String,
    token: Secret,
    /// Per route (and `"global"`): no request before this instant.
    blocked: Arc<Mutex<HashMap<String, Instant>>>,
    /// Spaces the bot's requests to stay under Discord's global limit.
    pace: Pace,
}

impl DiscordApi {
    /// A client that sends at most `per_second` requests a second (Discord allows a bot 50);
    /// interaction responses and follow-ups are exempt, as Discord exempts them.
    pub fn new(base: &str, token: Secret, per_second: u32) -> DiscordApi {
        DiscordApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("the HTTP client builds"),
            base: base.trim_end_matches('/').to_owned(),
            token,
            blocked: Arc::default(),
            pace: Pace::new(Duration::from_secs(1) / per_second.max(1)),
        }
    }

    /// Sends a request and returns Discord's JSON answer (`null` for an empty one), waiting
    /// out rate limits as Discord asks.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, DiscordApiError> {
        let route = route_of(&method, path);
        let exempt = path.starts_with("/interactions/") || path.starts_with("/webhooks/");
        loop {
            if !exempt {
                self.pace.wait("global").await;
            }
            self.wait_for(&route).await;
            let unreachable = |reason: String| DiscordApiError::Unreachable {
                route: route.clone(),
                reason,
            };
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header("authorization", format!("Bot {}", self.token.expose()))
                .header("user-agent", USER_AGENT);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(body).expect("JSON values serialise"));
            }
            let response = request
                .send()
                .await
                .map_err(|e| unreachable(e.without_url().to_string()))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response
                .text()
                .await
                .map_err(|e| unreachable(e.without_url().to_string()))?;
            let answer: Value = match text.is_empty() {
                true => Value::Null,
                false => serde_json::from_str(&text).unwrap_or(Value::Null),
            };
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            };
            if status == 429 {
                let wait = answer["retry_after"]
                    .as_f64()
                    .or_else(|| header("retry-after"))
                    .unwrap_or(1.0);
                let scope = match answer["global"].as_bool() == Some(true) {
                    true => "global".to_owned(),
                    false => route.clone(),
                };
                tracing::debug!(%route, wait, "Discord is rate limiting");
                self.block(&scope, wait);
                continue;
            }
            if header("x-ratelimit-remaining") == Some(0.0) {
                self.block(&route, header("x-ratelimit-reset-after").unwrap_or(1.0));
            }
            if status >= 500 {
                return Err(unreachable(format!("HTTP {status}")));
            }
            if status >= 400 {
                return Err(DiscordApiError::Refused {
                    route,
                    status,
                    code: answer["code"].as_u64().unwrap_or(0),
                    message: answer["message"]
                        .as_str()
                        .unwrap_or("no message")
                        .to_owned(),
                });
            }
            return Ok(answer);
        }
    }

    fn block(&self, scope: &str, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.clamp(0.0, 3600.0)
        } else {
            1.0
        };
        let now = Instant::now();
        let until = now + Duration::from_secs_f64(seconds);
        let mut blocked = self.blocked.lock().expect("rate limit lock poisoned");
        // A route per interaction token: the ones whose block has passed are dropped.
        if blocked.len() >= MAX_BLOCKED {
            blocked.retain(|_, until| *until > now);
        }
        let entry = blocked.entry(scope.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    async fn wait_for(&self, route: &str) {
        let until = {
            let blocked = self.blocked.lock().expect("rate limit lock poisoned");
            [route, "global"]
                .iter()
                .filter_map(|scope| blocked.get(*scope).copied())
                .max()
        };
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A route as Discord buckets it: the method and path, with the ids of messages (and other
/// minor parameters) replaced, so all messages of one channel share a bucket. An interaction's
/// token (`/webhooks/{application}/{token}/...`) is a major parameter too, but it lets anyone
/// answer as the bot, and routes are logged: it stands as a digest of itself.
fn route_of(method: &Method, path: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut route = String::from(method.as_str());
    let (mut before, mut previous) = ("", "");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        route.push('/');
        let major = matches!(
            previous,
            "channels" | "guilds" | "webhooks" | "applications"
        );
        if before == "webhooks" {
            let digest = Sha256::digest(part.as_bytes());
            route.push_str(":token-");
            route.push_str(&hex::encode(&digest[..4]));
        } else if part.chars().all(|c| c.is_ascii_digit()) && !major {
            route.push_str(":id");
        } else {
            route.push_str(part);
        }
        (before, previous) = (previous, part);
    }
    route
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_one_channel_share_a_route() {
        assert_eq!(
            route_of(&Method::PATCH, "/channels/123/messages/456"),
            route_of(&Method::PATCH, "/channels/123/messages/789")
        );
        assert_ne!(
            route_of(&Method::POST, "/channels/123/messages"),
            route_of(&Method::POST, "/channels/124/messages")
        );
    }

    #[test]
    fn an_interaction_token_is_not_in_its_route() {
        let route = |token: &str| {
            route_of(
                &Method::PATCH,
                &format!("/webhooks/1100/{token}/messages/@original"),
            )
        };
        let token = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDpzZWNyZXQ";
        assert!(!route(token).contains(token), "{}", route(token));
        assert!(route(token).starts_with("PATCH/webhooks/1100/:token-"));
        assert_ne!(
            route(token),
            route("another-token"),
            "each token its bucket"
        );
    }
}
