//! Client-credential tokens (`POST /v1/auth/access_token`) and the caller of each request.
//!
//! Tokens are stateless: `<payload>.<HMAC of the payload with the client's secret>`, so they
//! survive restarts without being stored, and rotating a client's secret revokes its tokens.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{ApiError, ApiState};
use crate::config::{ApiClient, ClientRole};
use crate::core::ids::Identity;

#[derive(Serialize, Deserialize)]
struct TokenPayload {
    /// Client id.
    c: String,
    /// Expiry, Unix seconds.
    e: i64,
}

fn mac(secret: &str, payload: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(payload.as_bytes());
    mac
}

/// A token for `client`, valid until `expires` (Unix seconds).
pub fn issue(client: &ApiClient, expires: i64) -> String {
    let payload = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&TokenPayload {
            c: client.client_id.clone(),
            e: expires,
        })
        .expect("the payload serialises"),
    );
    let signature = mac(client.client_secret.expose(), &payload)
        .finalize()
        .into_bytes();
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The client a token belongs to, if the token is genuine and unexpired.
fn verify<'a>(clients: &'a [ApiClient], token: &str, now: i64) -> Option<&'a ApiClient> {
    let (payload, signature) = token.split_once('.')?;
    let decoded: TokenPayload =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let client = clients.iter().find(|c| c.client_id == decoded.c)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    mac(client.client_secret.expose(), payload)
        .verify_slice(&signature)
        .ok()?;
    (decoded.e > now).then_some(client)
}

/// The authenticated caller, and the user it acts for.
pub struct Caller {
    pub role: ClientRole,
    /// `?run_as=` for an admin client, else the client itself (`client:<id>`).
    pub acting_as: Identity,
}

impl Caller {
    /// Refuses backend clients: they report on runs but never run or decide.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            ClientRole::Admin => Ok(()),
            ClientRole::Backend => Err(ApiError::forbidden(
                "backend clients may report on runs and upsert entities, but not run or approve actions",
            )),
        }
    }
}

#[derive(Deserialize)]
struct RunAs {
    run_as: Option<String>,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <accessToken>`; get a token from POST /v1/auth/access_token"))?;
        let client = verify(&state.clients, token.trim(), chrono::Utc::now().timestamp())
            .ok_or_else(|| ApiError::unauthorized("the access token is invalid or has expired"))?;
        let run_as = Query::<RunAs>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::bad_request(e.body_text()))?
            .0
            .run_as;
        let acting_as = match (client.role, run_as) {
            (_, None) => Identity::api_client(&client.client_id),
            (ClientRole::Admin, Some(user)) => Identity::try_from(user)
                .map_err(|e| ApiError::bad_request(format!("run_as: {e}")))?,
            (ClientRole::Backend, Some(_)) => {
                return Err(ApiError::forbidden(
                    "only admin clients may act for a user (run_as)",
                ))
            }
        };
        Ok(Caller {
            role: client.role,
            acting_as,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::config::Secret;
    use crate::edge_input;

    fn client(secret: &str) -> ApiClient {
        serde_json::from_value(
            serde_json::json!({"client_id": "ci", "client_secret": secret, "role": "admin"}),
        )
        .unwrap()
    }

    #[test]
    fn tokens_verify_until_they_expire_or_the_secret_changes() {
        let clients = vec![client("s3cret")];
        let token = issue(&clients[0], 100);
        assert!(verify(&clients, &token, 99).is_some());
        assert!(verify(&clients, &token, 100).is_none());
        assert!(verify(&[client("rotated")], &token, 0).is_none());
        assert!(verify(&clients, "garbage", 0).is_none());
        assert!(verify(&clients, &format!("{token}x"), 0).is_none());
        let _ = Secret::clone(&clients[0].client_secret);
    }

    proptest! {
        /// A bearer token as a caller sends it: any text, two base64 parts, or a payload that
        /// decodes to JSON with any signature.
        #[test]
        fn any_token_is_refused(token in prop_oneof![
            edge_input::text(),
            "[A-Za-z0-9_=+/-]{0,60}\\.[A-Za-z0-9_=+/-]{0,60}",
            (edge_input::json(&["c", "e"], &["ci"]), "[A-Za-z0-9_-]{0,50}")
                .prop_map(|(payload, mac)| format!("{}.{mac}", URL_SAFE_NO_PAD.encode(payload.to_string()))),
        ], now in any::<i64>()) {
            prop_assert!(verify(&[client("s3cret")], &token, now).is_none());
        }
    }
}
