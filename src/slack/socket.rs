//! Socket Mode, for workspaces where Slack cannot reach portbot over HTTPS: with
//! `slack.app_token` (`xapp-…`, scope `connections:write`) portbot opens a WebSocket to Slack
//! (`apps.connections.open`) and receives the same slash commands and interactions there.
//!
//! Each envelope is answered by the same code as the HTTP endpoints, and acknowledged with its
//! `envelope_id`, the answer as its `payload` where the envelope `accepts_response_payload`.
//! The socket is reopened whenever Slack closes it or asks to (`disconnect`), after a growing
//! pause when opening fails, and when it has gone silent: portbot pings every
//! `slack.socket_ping_interval_ms`, and a socket that sent nothing (not even a pong) for two
//! intervals is taken for dead (PROTOCOL-NOTES: such sockets have stayed open for hours, and
//! Slack does not send again what it could not deliver).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::interactions::interaction_reply;
use super::{command_reply, SlackState, SlashCommand};
use crate::config::Secret;

/// The longest pause before opening the socket again.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Keeps a Socket Mode connection open until the process stops, pinging it every `ping_every`.
pub fn spawn(state: SlackState, app_token: Secret, ping_every: Duration) {
    let state = Arc::new(state);
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(500);
        loop {
            match session(&state, &app_token, ping_every).await {
                Ok(()) => pause = Duration::from_millis(500),
                Err(error) => {
                    tracing::warn!(%error, ?pause, "Socket Mode connection failed; will retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    });
}

/// One connection, until Slack closes it, asks for a new one, or falls silent.
async fn session(
    state: &Arc<SlackState>,
    app_token: &Secret,
    ping_every: Duration,
) -> Result<(), String> {
    let opened = state
        .api
        .with_token(app_token.clone())
        .call("apps.connections.open", &json!({}))
        .await
        .map_err(|e| e.to_string())?;
    let url = opened["url"]
        .as_str()
        .ok_or("apps.connections.open gave no url")?;
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("cannot open the socket: {e}"))?;
    let (mut outgoing, mut incoming) = socket.split();
    let (acks, mut to_send) = mpsc::unbounded_channel::<String>();
    let mut pings = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            message = incoming.next() => {
                heard = Instant::now();
                match message {
                Some(Ok(Message::Text(text))) => {
                    let Ok(envelope) = serde_json::from_str::<Value>(&text) else { continue };
                    if envelope["type"] == "disconnect" {
                        return Ok(());
                    }
                    let Some(envelope) = Envelope::read(envelope) else { continue };
                    // Answered off the read loop, so a slow answer holds up no other envelope.
                    let (state, acks) = (state.clone(), acks.clone());
                    tokio::spawn(async move {
                        if let Some(ack) = answer(&state, envelope).await {
                            let _ = acks.send(ack.to_string());
                        }
                    });
                }
                Some(Ok(Message::Ping(data))) => {
                    outgoing.send(Message::Pong(data)).await.map_err(|e| e.to_string())?;
                }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error.to_string()),
                }
            }
            _ = pings.tick() => {
                let silent = heard.elapsed();
                if silent >= 2 * ping_every {
                    tracing::warn!(?silent, "the Socket Mode connection went silent; opening a new one");
                    return Ok(());
                }
                outgoing.send(Message::Ping(Default::default())).await.map_err(|e| e.to_string())?;
            }
            Some(ack) = to_send.recv() => {
                outgoing.send(Message::text(ack)).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// One envelope, as read from its JSON.
struct Envelope {
    id: String,
    /// Whether Slack takes the answer in the ack.
    accepts_payload: bool,
    carried: Carried,
}

/// What an envelope carries.
enum Carried {
    Command(SlashCommand),
    Interaction(Value),
    /// Nothing portbot answers (the envelope is still acknowledged).
    Other,
}

impl Envelope {
    /// The envelope `envelope` is; `None` for one without an id (`hello`).
    fn read(mut envelope: Value) -> Option<Envelope> {
        let id = envelope["envelope_id"].as_str()?.to_owned();
        let accepts_payload = envelope["accepts_response_payload"] == true;
        let payload = envelope
            .get_mut("payload")
            .map(Value::take)
            .unwrap_or_default();
        let carried = match envelope["type"].as_str() {
            Some("slash_commands") => {
                serde_json::from_value(payload).map_or(Carried::Other, Carried::Command)
            }
            Some("interactive") => Carried::Interaction(payload),
            _ => Carried::Other,
        };
        Some(Envelope {
            id,
            accepts_payload,
            carried,
        })
    }
}

/// The acknowledgement of one envelope, with the answer as its payload.
async fn answer(state: &Arc<SlackState>, envelope: Envelope) -> Option<Value> {
    let response = match envelope.carried {
        Carried::Command(form) => Some(command_reply(state, form).await),
        Carried::Interaction(payload) => Some(interaction_reply(state, payload).await),
        Carried::Other => None,
    };
    let mut ack = json!({ "envelope_id": envelope.id });
    // Slack allows an answer in the ack only where the envelope says so.
    if let Some(response) = response.filter(|_| envelope.accepts_payload) {
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .ok()?;
        if let Ok(body) = serde_json::from_slice::<Value>(&body) {
            ack["payload"] = body;
        }
    }
    Some(ack)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::edge_input;

    const FIELDS: &[&str] = &["envelope_id", "type", "payload", "accepts_response_payload"];
    const WORDS: &[&str] = &[
        "slash_commands",
        "interactive",
        "disconnect",
        "hello",
        "events_api",
    ];

    /// Envelopes, mostly objects of the envelope's fields, whose payload is mostly a slash
    /// command's fields.
    fn envelope() -> impl Strategy<Value = String> {
        let commands = || {
            edge_input::json(
                super::super::tests::COMMAND_FIELDS,
                super::super::tests::WORDS,
            )
        };
        (edge_input::json(FIELDS, WORDS), commands()).prop_map(|(mut envelope, payload)| {
            if let Some(fields) = envelope.as_object_mut() {
                fields.insert("payload".into(), payload);
            }
            envelope.to_string()
        })
    }

    #[test]
    fn envelopes_are_read_by_type() {
        let command = json!({"envelope_id": "e1", "type": "slash_commands", "accepts_response_payload": true, "payload": {"user_id": "U1", "text": "help"}});
        let read = Envelope::read(command).unwrap();
        assert!(read.accepts_payload);
        assert!(matches!(read.carried, Carried::Command(form) if form.text == "help"));
        let bad = json!({"envelope_id": "e2", "type": "slash_commands", "payload": 7});
        assert!(matches!(
            Envelope::read(bad).unwrap().carried,
            Carried::Other
        ));
        assert!(Envelope::read(json!({"type": "hello"})).is_none());
        assert!(Envelope::read(json!([1])).is_none());
    }

    proptest! {
        /// What the read loop does with a text frame, for any text and any JSON.
        #[test]
        fn envelopes_never_panic(text in prop_oneof![edge_input::text(), envelope()]) {
            if let Ok(envelope) = serde_json::from_str::<Value>(&text) {
                let _ = Envelope::read(envelope);
            }
        }
    }
}
