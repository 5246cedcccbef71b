//! Gateway mode, for bots Discord cannot reach over HTTPS: with `discord.gateway = true`
//! portbot keeps a WebSocket to Discord's gateway and receives the same interactions there
//! (`INTERACTION_CREATE`), answering each through `POST /interactions/{id}/{token}/callback`
//! with the same code as the HTTP endpoint.
//!
//! The connection follows Discord's gateway protocol (v10, JSON): `Hello` gives the heartbeat
//! interval; portbot identifies with the bot token (no intents: interactions need none), sends
//! heartbeats with the last sequence number, and treats a heartbeat that was not acknowledged
//! by the next one as a dead connection. When the connection drops, or Discord asks
//! (`Reconnect`), portbot resumes the session, so Discord replays the events it missed; when
//! Discord says the session cannot be resumed, it identifies anew. Opening is retried after a
//! growing pause. (serenity's gateway client would bring its cache, its event loop and a
//! second WebSocket stack; Slack's Socket Mode already uses tokio-tungstenite.)

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::interaction::Interaction;
use super::{respond, DiscordState};
use crate::config::Secret;

/// The longest pause before connecting again.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Gateway opcodes (Discord's `topics/opcodes-and-status-codes`).
const DISPATCH: u64 = 0;
const HEARTBEAT: u64 = 1;
const IDENTIFY: u64 = 2;
const RESUME: u64 = 6;
const RECONNECT: u64 = 7;
const INVALID_SESSION: u64 = 9;
const HELLO: u64 = 10;
const HEARTBEAT_ACK: u64 = 11;

/// What survives a dropped connection: enough to resume.
#[derive(Default)]
struct Session {
    id: Option<String>,
    resume_url: Option<String>,
    /// The last sequence number received.
    seq: Option<u64>,
}

/// Keeps a gateway connection until the process stops.
pub fn spawn(state: DiscordState, token: Secret) {
    tokio::spawn(async move {
        let mut session = Session::default();
        let mut pause = Duration::from_millis(500);
        loop {
            match connect(&state, &token, &mut session).await {
                Ok(()) => pause = Duration::from_millis(500),
                Err(error) => {
                    tracing::warn!(%error, ?pause, "Discord gateway connection failed; will retry");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
            }
        }
    });
}

/// One connection: resumed when there is a session, else a new one; returns when it ends.
async fn connect(
    state: &DiscordState,
    token: &Secret,
    session: &mut Session,
) -> Result<(), String> {
    let base = match (&session.id, &session.resume_url) {
        (Some(_), Some(url)) => url.clone(),
        _ => {
            let gateway = state
                .api
                .request(Method::GET, "/gateway/bot", None)
                .await
                .map_err(|e| e.to_string())?;
            gateway["url"]
                .as_str()
                .ok_or("GET /gateway/bot gave no url")?
                .to_owned()
        }
    };
    let url = format!("{}/?v=10&encoding=json", base.trim_end_matches('/'));
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| format!("cannot open the gateway: {e}"))?;
    let (mut outgoing, mut incoming) = socket.split();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(3600));
    let mut acknowledged = true;
    loop {
        tokio::select! {
            message = incoming.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1000, |f| u16::from(f.code));
                        return closed(code, session);
                    }
                    None => return Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.to_string()),
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else { continue };
                if let Some(seq) = payload["s"].as_u64() {
                    session.seq = Some(seq);
                }
                match payload["op"].as_u64() {
                    Some(HELLO) => {
                        heartbeat = tokio::time::interval(heartbeat_every(&payload["d"]));
                        heartbeat.tick().await;
                        let hello = match &session.id {
                            Some(id) => json!({"op": RESUME, "d": {"token": token.expose(), "session_id": id, "seq": session.seq}}),
                            None => json!({"op": IDENTIFY, "d": {
                                "token": token.expose(),
                                "intents": 0,
                                "properties": {"os": std::env::consts::OS, "browser": "portbot", "device": "portbot"},
                            }}),
                        };
                        send(&mut outgoing, &hello).await?;
                    }
                    Some(HEARTBEAT) => send(&mut outgoing, &json!({"op": HEARTBEAT, "d": session.seq})).await?,
                    Some(HEARTBEAT_ACK) => acknowledged = true,
                    Some(RECONNECT) => return Ok(()),
                    Some(INVALID_SESSION) => {
                        if payload["d"] != true {
                            *session = Session::default();
                        }
                        return Ok(());
                    }
                    Some(DISPATCH) => match payload["t"].as_str() {
                        Some("READY") => {
                            session.id = payload["d"]["session_id"].as_str().map(str::to_owned);
                            session.resume_url = payload["d"]["resume_gateway_url"].as_str().map(str::to_owned);
                        }
                        Some("INTERACTION_CREATE") => {
                            // Answered off the read loop, so a slow answer holds up nothing.
                            let state = state.clone();
                            let data = payload["d"].clone();
                            tokio::spawn(async move { answer(&state, data).await });
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
            _ = heartbeat.tick() => {
                if !acknowledged {
                    return Err("the gateway stopped acknowledging heartbeats".into());
                }
                acknowledged = false;
                send(&mut outgoing, &json!({"op": HEARTBEAT, "d": session.seq})).await?;
            }
        }
    }
}

/// How often to send heartbeats, from `Hello`'s data: as Discord says, but at most every
/// 100 ms (an interval of zero would panic), and every 41.25 s (Discord's usual) when it does
/// not say.
fn heartbeat_every(hello: &Value) -> Duration {
    let every = hello["heartbeat_interval"].as_u64().unwrap_or(41_250);
    Duration::from_millis(every.max(100))
}

/// What a close code means for the session (Discord's gateway close event codes): 4007 and
/// 4009 need a new session; 4004 and 4010–4014 are settings Discord refuses (the token, the
/// intents), reported as errors; anything else resumes.
fn closed(code: u16, session: &mut Session) -> Result<(), String> {
    match code {
        4004 | 4010..=4014 => Err(format!(
            "Discord closed the gateway with code {code}: check discord.bot_token and the application's settings"
        )),
        4007 | 4009 => {
            *session = Session::default();
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn send<S>(outgoing: &mut S, payload: &Value) -> Result<(), String>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    outgoing
        .send(Message::text(payload.to_string()))
        .await
        .map_err(|e| e.to_string())
}

/// Answers one interaction through its callback route.
async fn answer(state: &DiscordState, data: Value) {
    let (id, token) = (
        data["id"].as_str().unwrap_or_default().to_owned(),
        data["token"].as_str().unwrap_or_default().to_owned(),
    );
    let interaction = match Interaction::from_value(data) {
        Ok(interaction) => interaction,
        Err(error) => {
            tracing::warn!(%error, "an unreadable interaction from the gateway");
            return;
        }
    };
    let response: Value =
        serde_json::from_slice(&respond(state, interaction).await).expect("answers are JSON");
    let path = format!("/interactions/{id}/{token}/callback");
    if let Err(error) = state
        .api
        .request(Method::POST, &path, Some(&response))
        .await
    {
        tracing::warn!(%error, "a gateway interaction's answer was not delivered");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::edge_input;

    #[test]
    fn the_heartbeat_is_discords_or_the_usual_one() {
        let every = |hello: Value| heartbeat_every(&hello);
        assert_eq!(
            every(json!({"heartbeat_interval": 45_000})),
            Duration::from_secs(45)
        );
        assert_eq!(
            every(json!({"heartbeat_interval": 0})),
            Duration::from_millis(100)
        );
        assert_eq!(
            every(json!({"heartbeat_interval": "x"})),
            Duration::from_millis(41_250)
        );
        assert_eq!(every(json!(null)), Duration::from_millis(41_250));
    }

    proptest! {
        /// `tokio::time::interval` panics on zero; no `Hello` gives it that.
        #[test]
        fn any_hello_gives_a_heartbeat(
            hello in edge_input::json(&["heartbeat_interval", "_trace"], &["41250"]),
        ) {
            prop_assert!(heartbeat_every(&hello) >= Duration::from_millis(100));
        }
    }
}
