//! Discord interaction acks: portbot against a bare axum server that only checks Discord's
//! Ed25519 signature.
//!
//! Two phases in one process, on 127.0.0.1, with the same load: `BENCH_CLIENTS` concurrent
//! keep-alive clients, each looping a signed `/port action:add-documentdb entity:mailer
//! inputs:instances=2` interaction (signed with the RFC 8032 test-1 key, a unique interaction
//! id, token and channel each, so nothing is a repeat: portbot answers a repeated id once).
//! Each phase measures `BENCH_SECONDS` s in `BENCH_ROUNDS` slices that alternate with the other
//! phase's, each after `BENCH_WARMUP` s unmeasured. The interactions of a slice are signed
//! before it starts (45,000 per second of the slice, on every core, with that
//! moment's timestamp), so that the load generator's own Ed25519 signing does not take the
//! servers' CPU; any beyond those are signed as they are sent, and the report says how many.
//!
//! 1. bare: an axum route `POST /discord/interactions` that checks the timestamp (5-minute
//!    window) and the signature with the verifier portbot uses (serenity's
//!    `interactions_endpoint::Verifier`, ed25519-dalek underneath) and answers a small
//!    ephemeral type-4 JSON. It is the machine's ceiling for this work.
//! 2. portbot: the real app (`Application::build`) with Discord enabled, a store in a temporary
//!    directory, no approval channel, and a fake Discord REST API in this process. Each
//!    interaction creates a durable run (the action needs approval: `WAITING_FOR_APPROVAL`, in
//!    a type-4 ephemeral answer) and the outbox then posts its run card to the fake Discord,
//!    starts the card's thread, replies in it and edits the card.
//!
//! The runtimes and CPU accounting are those of `slack_commands` (`support::load`): "server
//! CPU" is the process's CPU minus the load runtime's threads, which also run the fake
//! Discord.
//!
//! The fake Discord has no rate limits, but portbot keeps to Discord's global limit for a bot
//! (`discord.requests_per_second`, 50), so its outbox posts cards, threads and replies at that
//! pace beside the acks, as it would against Discord; most runs' messages are still queued
//! (durably) when the window ends. `PORTBOT__DISCORD__REQUESTS_PER_SECOND=100000` shows the
//! acks with delivery running flat out beside them (portbot's settings read `PORTBOT__…`
//! variables).
//!
//! Run with `cargo bench --bench discord_interactions` (about 45 s). Knobs (defaults in
//! brackets): `BENCH_SECONDS` [8], `BENCH_WARMUP` [1], `BENCH_CLIENTS` [64], `BENCH_ROUNDS` [4].

mod support;

use support::load::{developers, Bench, BuildRequest, Phase, Platform};
use support::verdict;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use serenity::interactions_endpoint::Verifier;

use portbot::config::Settings;

/// RFC 8032 test 1: the secret key, and its public key as `discord.public_key` takes it.
const SECRET_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const PUBLIC_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const BOT_TOKEN: &str = "discord-bench-bot-token";
const APPLICATION_ID: &str = "1100000000000000001";
const GUILD: &str = "1000000000000000001";
/// The developer who types `/port` (in the shipped `developers` team).
const DEV: &str = "1300000000000000001";
/// Interaction `n` has id `INTERACTION_IDS + n` and is typed in channel `CHANNEL_IDS + n`.
const INTERACTION_IDS: u64 = 1_400_000_000_000_000_000;
const CHANNEL_IDS: u64 = 1_200_000_000_000_000_000;
/// The fake Discord's message ids start here, so a post to a channel id at or above it is a
/// post in a card's thread (a thread has its message's id).
const MESSAGE_IDS: u64 = 1_700_000_000_000_000_000;
const ACTION: &str = "add-documentdb";
const ENTITY: &str = "mailer";
const INPUTS: &str = "instances=2";
const WINDOW_SECONDS: i64 = 5 * 60;

/// Interaction response type 4 (a message) with the ephemeral flag (64), as serde_json writes
/// both answers.
const EPHEMERAL_MESSAGE: [&str; 2] = ["\"type\":4", "\"flags\":64"];
const TARGET_P99_MS: f64 = 10.0;

// ---------------------------------------------------------------------------------------------
// Interactions, signed as Discord signs them.

/// The `/port` interaction Discord posts as interaction `n` of the bench, with every field
/// Discord sends (written out, not built as a value: the load generator builds one per request).
fn port_interaction(n: u64) -> String {
    let id = INTERACTION_IDS + n;
    let channel = CHANNEL_IDS + n;
    format!(
        r#"{{"id":"{id}","application_id":"{APPLICATION_ID}","type":2,"data":{{"id":"1500000000000000001","name":"port","type":1,"options":[{{"name":"action","type":3,"value":"{ACTION}"}},{{"name":"entity","type":3,"value":"{ENTITY}"}},{{"name":"inputs","type":3,"value":"{INPUTS}"}}]}},"guild_id":"{GUILD}","channel":{{"id":"{channel}","type":0,"guild_id":"{GUILD}","name":"dev"}},"channel_id":"{channel}","member":{{"user":{{"id":"{DEV}","username":"bench","global_name":"Bench","discriminator":"0","avatar":null}},"roles":[],"permissions":"2248473465835073","joined_at":"2026-01-01T00:00:00.000000+00:00","deaf":false,"mute":false,"flags":0,"pending":false,"nick":null,"avatar":null}},"token":"bench-interaction-token-{n}","version":1,"app_permissions":"2248473465835073","locale":"en-US","guild_locale":"en-US","entitlements":[],"authorizing_integration_owners":{{"0":"{GUILD}"}},"context":0,"attachment_size_limit":26214400}}"#
    )
}

/// Interactions signed before each phase, per second of the phase: more than either server
/// answers here. Signing (about 20 µs each) would otherwise take the servers' CPU.
const PRESIGNED_PER_SECOND: u64 = 45_000;
/// Interactions of the portbot phase that ran past the pre-signed ones and were signed as sent.
static SIGNED_LATE: AtomicU64 = AtomicU64::new(0);
/// How far apart the interactions of two slices are numbered: more than a slice sends. Each
/// slice's interactions must be new to portbot, which takes an interaction id once (its
/// receipts) and answers a copy "received already".
const NUMBERS_PER_SLICE: u64 = 1 << 32;
/// Slices given their numbers so far.
static SLICES: AtomicU64 = AtomicU64::new(0);

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(
        &hex::decode(SECRET_KEY)
            .unwrap()
            .try_into()
            .expect("32 bytes"),
    )
}

/// The signatures of interactions `first..first + count` at `timestamp`, made on every core.
fn presign(timestamp: &str, first: u64, count: u64) -> Vec<[u8; 64]> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per_thread = count.div_ceil(cores);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cores)
            .map(|t| {
                scope.spawn(move || {
                    let key = signing_key();
                    (t * per_thread..((t + 1) * per_thread).min(count))
                        .map(|n| sign(&key, timestamp, &port_interaction(first + n)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a signing thread panicked"))
            .collect()
    })
}

fn sign(key: &SigningKey, timestamp: &str, body: &str) -> [u8; 64] {
    key.sign(format!("{timestamp}{body}").as_bytes()).to_bytes()
}

/// A slice's requests to `url`: interaction `n` of the slice (an id, token and channel no
/// other slice uses), signed (Ed25519 over timestamp and body) before the slice began, or when
/// sent if the slice outran the pre-signed ones.
fn signed_interaction(url: String) -> Arc<BuildRequest> {
    let knobs = support::load::Knobs::from_env();
    let slice = knobs.warmup as f64 + knobs.slice_seconds();
    let count = (slice * PRESIGNED_PER_SECOND as f64).ceil() as u64;
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let started = std::time::Instant::now();
    let first = SLICES.fetch_add(1, Ordering::Relaxed) * NUMBERS_PER_SLICE;
    let signatures = presign(&timestamp, first, count);
    eprintln!(
        "  {count} interactions signed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (next, key) = (AtomicU64::new(0), signing_key());
    Arc::new(move |http, _client, _n| {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let body = port_interaction(first + n);
        let (timestamp, signature) = match signatures.get(n as usize) {
            Some(signature) => (timestamp.clone(), *signature),
            None => {
                SIGNED_LATE.fetch_add(1, Ordering::Relaxed);
                let now = chrono::Utc::now().timestamp().to_string();
                let signature = sign(&key, &now, &body);
                (now, signature)
            }
        };
        http.post(&url)
            .header("content-type", "application/json")
            .header("x-signature-ed25519", hex::encode(signature))
            .header("x-signature-timestamp", timestamp)
            .body(body)
    })
}

// ---------------------------------------------------------------------------------------------
// The bare server: checks the signature and answers.

fn bare_verify(verifier: &Verifier, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header("x-signature-ed25519"),
        header("x-signature-timestamp"),
    ) else {
        return false;
    };
    let Ok(at) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - at).abs() > WINDOW_SECONDS {
        return false;
    }
    verifier.verify(signature, timestamp, body).is_ok()
}

async fn bare_interaction(
    State(verifier): State<Arc<Verifier>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !bare_verify(&verifier, &headers, &body) {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    axum::Json(json!({"type": 4, "data": {"content": "Got it.", "flags": 64}})).into_response()
}

fn bare_router() -> axum::Router {
    let key: [u8; 32] = hex::decode(PUBLIC_KEY).unwrap().try_into().unwrap();
    let verifier = Verifier::try_new(key).expect("the RFC 8032 public key is valid");
    axum::Router::new()
        .route(
            "/discord/interactions",
            axum::routing::post(bare_interaction),
        )
        .with_state(Arc::new(verifier))
}

// ---------------------------------------------------------------------------------------------
// portbot, with a fake Discord REST API.

#[derive(Default)]
struct FakeDiscord {
    /// `POST /channels/{channel}/messages` in a channel: a run card.
    cards: AtomicU64,
    /// `POST /channels/{channel}/messages/{message}/threads`: the card's thread.
    threads: AtomicU64,
    /// `POST /channels/{thread}/messages`: a reply in a card's thread.
    replies: AtomicU64,
    /// `PATCH /channels/{channel}/messages/{message}`: an edit of the card.
    edits: AtomicU64,
    /// Anything else (a deferred answer's edit through `/webhooks/…` would land here).
    other: AtomicU64,
    next_message: AtomicU64,
}

impl FakeDiscord {
    fn new() -> FakeDiscord {
        FakeDiscord {
            next_message: AtomicU64::new(MESSAGE_IDS),
            ..FakeDiscord::default()
        }
    }

    fn snapshot(&self) -> [u64; 5] {
        [
            &self.cards,
            &self.threads,
            &self.replies,
            &self.edits,
            &self.other,
        ]
        .map(|n| n.load(Ordering::Relaxed))
    }

    /// Answers like Discord, with only the fields portbot reads: a posted message gets a new
    /// unique id, a thread has its message's id, edits and anything else succeed.
    fn answer(&self, method: &Method, path: &str) -> Value {
        let count = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        let route = path.strip_prefix("/api/v10/").unwrap_or(path);
        let parts: Vec<&str> = route.split('/').collect();
        match (method.as_str(), parts.as_slice()) {
            ("POST", ["channels", channel, "messages"]) => {
                let in_thread = channel.parse::<u64>().is_ok_and(|id| id >= MESSAGE_IDS);
                count(if in_thread {
                    &self.replies
                } else {
                    &self.cards
                });
                let id = count(&self.next_message).to_string();
                json!({"id": id, "channel_id": channel, "type": 0})
            }
            ("POST", ["channels", channel, "messages", message, "threads"]) => {
                count(&self.threads);
                json!({"id": message, "type": 11, "parent_id": channel})
            }
            ("PATCH", ["channels", channel, "messages", message]) => {
                count(&self.edits);
                json!({"id": message, "channel_id": channel, "type": 0})
            }
            _ => {
                count(&self.other);
                json!({"id": "1", "channel_id": "0", "type": 0})
            }
        }
    }
}

/// Discord's REST API under `/api/v10` as portbot calls it.
fn fake_discord(seen: Arc<FakeDiscord>) -> axum::Router {
    axum::Router::new().fallback(move |method: Method, uri: Uri| {
        let seen = seen.clone();
        async move { axum::Json(seen.answer(&method, uri.path())) }
    })
}

/// portbot with Discord on `api_url`, `DEV` a developer and no approval channel (runs wait for
/// approval all the same; only the approval requests are not posted).
fn discord_settings(settings: &mut Settings, api_url: String) {
    settings.discord.enabled = true;
    settings.discord.bot_token = Some(serde_json::from_value(json!(BOT_TOKEN)).unwrap());
    settings.discord.public_key = Some(PUBLIC_KEY.into());
    settings.discord.application_id = Some(APPLICATION_ID.into());
    settings.discord.api_url = api_url;
    settings.discord.approval_channel = None;
    developers(settings).discord_users.push(DEV.into());
}

// ---------------------------------------------------------------------------------------------
fn main() {
    portbot::allocator::purge_freed_memory_sooner();
    let bench = Bench::new();
    let discord = Arc::new(FakeDiscord::new());
    let seen = discord.clone();
    let [bare, portbot] = bench.bare_then_portbot(Platform {
        name: "discord-interactions",
        route: "/discord/interactions",
        request: signed_interaction,
        bare: bare_router(),
        bare_answer: &EPHEMERAL_MESSAGE,
        portbot_answer: &[
            EPHEMERAL_MESSAGE[0],
            EPHEMERAL_MESSAGE[1],
            "WAITING_FOR_APPROVAL",
        ],
        fake: fake_discord(discord),
        api_path: "/api/v10",
        configure: discord_settings,
        calls: Box::new(move || seen.snapshot()),
    });
    println!("{}", report(&bench, &bare, &portbot));
    bench.stop();
}

fn report(bench: &Bench, bare: &Phase<5>, portbot: &Phase<5>) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = write!(
        w,
        "\n## portbot discord_interactions benchmark\n\n\
         `/port action:{ACTION} entity:{ENTITY} inputs:{INPUTS}`, a fresh interaction per \
         request (unique id, token and channel; Ed25519-signed by the load generator before \
         each phase, {} of them signed as sent, checked by both servers with serenity's \
         verifier), ",
        SIGNED_LATE.load(Ordering::Relaxed)
    );
    support::load::write_setup(w, bench, "Discord");
    support::load::write_table(w, "interaction", &[bare, portbot]);
    support::load::write_cpu_notes(w, bench.cores, &[bare, portbot]);
    let [cards, threads, replies, edits, other] = portbot.platform_calls;
    let calls: u64 = portbot.platform_calls.iter().sum();
    let _ = writeln!(
        w,
        "- portbot's outbox made {cards} run card posts, {threads} thread starts, {replies} \
         thread replies, {edits} card edits and {other} other Discord calls in the window, for \
         {} acked interactions ({:.1} calls each). Unlike Slack's, Discord messages are not \
         paced per channel (portbot waits only when Discord's rate-limit headers or a 429 say \
         so, and the fake sends neither), so the outbox delivers as fast as \
         discord.max_concurrent runs at once allow: what it delivered in the window is in the \
         server CPU/interaction above, on the same cores as the acks. Each ack counted above was \
         a type-4 ephemeral answer saying WAITING_FOR_APPROVAL: one durable run each; a \
         deferral (type 5) or any other answer counts as an error.",
        portbot.acks,
        calls as f64 / portbot.acks.max(1) as f64
    );
    let _ = writeln!(
        w,
        "- Process RSS at the window's end: {:.0} MiB in the bare phase, {:.0} MiB in \
         portbot's.",
        bare.rss_mib, portbot.rss_mib
    );
    let _ = writeln!(
        w,
        "\nportbot reaches {:.1} % of the bare server's interactions/s.\n",
        portbot.rate() / bare.rate() * 100.0
    );
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---:|---|");
    let _ = writeln!(
        w,
        "| portbot ack p99 < {TARGET_P99_MS:.0} ms | {:.2} ms | {} |",
        portbot.p99,
        verdict(portbot.p99 < TARGET_P99_MS)
    );
    let _ = writeln!(
        w,
        "| every portbot interaction acked (no refusal, deferral or failure) | {} errors | {} |",
        portbot.errors,
        verdict(portbot.errors == 0)
    );
    out
}
