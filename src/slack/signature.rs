//! Slack request signing: `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret,
//! "v0:<timestamp>:<raw body>")>` with `X-Slack-Request-Timestamp`, at most 5 minutes old.
//!
//! Written here rather than taken from slack-morphism because its verifier reads the real clock,
//! which rules out testing against Slack's published example, and this one also refuses a
//! signature seen before (a replay inside the window). The signatures seen are kept in memory
//! only, so a request signed before this process started is refused as well: it may have been
//! taken by the process before (Slack does not send a command or a click again, so only a
//! replay, or a request caught in transit by the restart, is refused this way).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// How old a request may be, either way, in seconds.
const WINDOW_SECONDS: i64 = 5 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the request is not signed")]
    Missing,
    #[error("the request's timestamp is more than 5 minutes from now")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
    #[error("this signed request was already received")]
    Replayed,
    #[error("this request was signed before portbot started; it may have been received before")]
    BeforeStart,
}

pub struct Verifier {
    secret: Secret,
    seen: Mutex<Seen>,
    /// When the process started (Unix seconds): requests signed earlier are refused.
    not_before: i64,
}

/// Signatures accepted within the window, as the MACs they decode to (so `A2` and `a2`, which
/// decode alike, are one signature). Pruned from the front as they expire, so a check costs the
/// same however many are kept; only Slack can add one, as each was checked first.
#[derive(Default)]
struct Seen {
    /// When each signature stops being acceptable (its timestamp + the window), in arrival order.
    expiries: VecDeque<(i64, Mac256)>,
    signatures: HashSet<Mac256>,
}

/// An HMAC-SHA256.
type Mac256 = [u8; 32];

impl Verifier {
    /// A verifier for requests signed with `secret` from `started` (Unix seconds) on.
    pub fn new(secret: Secret, started: i64) -> Verifier {
        Verifier {
            secret,
            seen: Mutex::default(),
            not_before: started,
        }
    }

    /// Checks a request received at `now` (Unix seconds).
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(SignatureError::Missing);
        };
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::Missing)?;
        if now.abs_diff(at) > WINDOW_SECONDS.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        let given: Mac256 = signature
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|mac| mac.try_into().ok())
            .ok_or(SignatureError::Mismatch)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.expose().as_bytes())
            .expect("HMAC takes any key");
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| SignatureError::Mismatch)?;
        if at < self.not_before {
            return Err(SignatureError::BeforeStart);
        }
        let mut seen = self.seen.lock().expect("replay cache poisoned");
        while let Some((expiry, _)) = seen.expiries.front() {
            if *expiry >= now {
                break;
            }
            let (_, gone) = seen.expiries.pop_front().expect("just looked");
            seen.signatures.remove(&gone);
        }
        if !seen.signatures.insert(given) {
            return Err(SignatureError::Replayed);
        }
        seen.expiries
            .push_back((at.saturating_add(WINDOW_SECONDS), given));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(
            serde_json::from_value(serde_json::json!(secret)).unwrap(),
            0,
        )
    }

    /// Slack's published example (PROTOCOL-NOTES §2).
    #[test]
    fn slacks_own_example_verifies() {
        let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let signature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let v = verifier("8f742231b10e8888abcd99yyyzzz85a5");
        let at = 1531420618;
        assert_eq!(
            v.verify(
                Some("1531420618"),
                Some(signature),
                body.as_bytes(),
                at + 10
            ),
            Ok(())
        );
        assert_eq!(
            v.verify(
                Some("1531420618"),
                Some(signature),
                body.as_bytes(),
                at + 20
            ),
            Err(SignatureError::Replayed)
        );
        let fresh = verifier("8f742231b10e8888abcd99yyyzzz85a5");
        assert_eq!(
            fresh.verify(Some("1531420618"), Some(signature), b"tampered", at),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            fresh.verify(
                Some("1531420618"),
                Some(signature),
                body.as_bytes(),
                at + 301
            ),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            fresh.verify(None, Some(signature), body.as_bytes(), at),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_replay_with_the_signature_in_other_letters_is_refused() {
        let body = "text=hello";
        let v = verifier("secret");
        let at = 1_700_000_000;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(format!("v0:{at}:{body}").as_bytes());
        let lower = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let upper = format!("v0={}", lower[3..].to_uppercase());
        let timestamp = at.to_string();
        let check =
            |signature: &str| v.verify(Some(&timestamp), Some(signature), body.as_bytes(), at);
        assert_eq!(check(&upper), Ok(()));
        assert_eq!(check(&lower), Err(SignatureError::Replayed));
        assert_eq!(check(&upper), Err(SignatureError::Replayed));
    }

    #[test]
    fn a_request_signed_before_the_process_started_is_refused() {
        let at = 1_700_000_000;
        let v = Verifier::new(
            serde_json::from_value(serde_json::json!("secret")).unwrap(),
            at,
        );
        let check = |timestamp: i64| {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
            mac.update(format!("v0:{timestamp}:body").as_bytes());
            let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
            v.verify(
                Some(&timestamp.to_string()),
                Some(&signature),
                b"body",
                at + 1,
            )
        };
        assert_eq!(check(at - 1), Err(SignatureError::BeforeStart));
        assert_eq!(check(at), Ok(()));
    }

    #[test]
    fn timestamps_at_the_ends_of_the_range_are_stale_not_a_panic() {
        let v = verifier("secret");
        for timestamp in [i64::MIN, i64::MAX] {
            assert_eq!(
                v.verify(
                    Some(&timestamp.to_string()),
                    Some("v0=00"),
                    b"",
                    1_700_000_000
                ),
                Err(SignatureError::Stale)
            );
        }
    }

    proptest! {
        /// Whatever the two headers say, the answer is a refusal, never a panic.
        #[test]
        fn any_headers_are_refused(
            timestamp in prop::option::of(prop_oneof![any::<i64>().prop_map(|t| t.to_string()), ".{0,24}"]),
            signature in prop::option::of(prop_oneof!["v0=[0-9a-fA-F]{0,70}", ".{0,80}"]),
            body in any::<Vec<u8>>(),
            now in any::<i64>(),
        ) {
            let v = verifier("secret");
            prop_assert!(v.verify(timestamp.as_deref(), signature.as_deref(), &body, now).is_err());
        }
    }
}
