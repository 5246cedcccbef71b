//! Slash-command acks: portbot against a bare axum server that only checks Slack's signature.
//!
//! Two phases in one process, on 127.0.0.1, with the same load: `BENCH_CLIENTS` concurrent
//! keep-alive clients, each looping a freshly signed `/port add-documentdb mailer instances=2`
//! (unique `trigger_id` and channel per command, so no signature repeats: portbot refuses
//! replays), for `BENCH_WARMUP` s unmeasured then `BENCH_SECONDS` s measured.
//!
//! 1. bare: an axum route `POST /slack/commands` that checks the signature (HMAC-SHA256,
//!    constant-time compare, 5-minute window) and answers a small ephemeral JSON. It is the
//!    machine's ceiling for this work.
//! 2. portbot: the real app (`Application::build`) with Slack enabled, a store in a temporary
//!    directory and a fake Slack Web API in this process. Each command creates a durable run
//!    (the action needs approval: `WAITING_FOR_APPROVAL`) and the outbox posts its run card to
//!    the fake Slack afterwards, paced per channel as configured (1 message/s by default).
//!
//! The servers (and sled's threads) run on one tokio runtime, the load generator and the fake
//! Slack on another whose threads are named `load-*`, so their CPU can be told apart through
//! `/proc/self/task/*/stat`: "server CPU" is the process's CPU minus the load runtime's threads.
//! Both phases share the machine with the load generator alike.
//!
//! Run with `cargo bench --bench slack_commands` (about 25 s). Knobs (defaults in brackets):
//! `BENCH_SECONDS` [8], `BENCH_WARMUP` [2], `BENCH_CLIENTS` [64].

mod support;

use support::{clock_ticks, copy_dir, env_u64, percentile_ms, verdict};

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use portbot::config::Settings;
use portbot::startup::Application;

/// As in the `portbot` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-signing-secret";
const USER: &str = "UBENCH";
const TEXT: &str = "add-documentdb mailer instances=2";
const WINDOW_SECONDS: i64 = 5 * 60;
/// Prefix of the load runtime's thread names (a thread's `comm` keeps 15 bytes).
const LOAD_THREADS: &str = "load-";

const TARGET_SHARE: f64 = 0.35;
const TARGET_P99_MS: f64 = 10.0;
struct Knobs {
    seconds: u64,
    warmup: u64,
    clients: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            seconds: env_u64("BENCH_SECONDS", 8).max(1),
            warmup: env_u64("BENCH_WARMUP", 2),
            clients: env_u64("BENCH_CLIENTS", 64).max(1) as usize,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// CPU accounting from /proc.
/// (command name, utime + stime in seconds) from a `stat` file's text.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // The fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((comm, ticks as f64 / clock_ticks()))
}

/// CPU seconds of (the whole process, the load runtime's threads).
fn cpu_split() -> (f64, f64) {
    let process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
        .map_or(f64::NAN, |(_, cpu)| cpu);
    let mut load = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((comm, cpu)) = parse_stat(&stat) {
                if comm.starts_with(LOAD_THREADS) {
                    load += cpu;
                }
            }
        }
    }
    (process, load)
}

// ---------------------------------------------------------------------------------------------
// Signing, as Slack does.

fn sign(timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body.as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// The form Slack posts for `/port add-documentdb mailer instances=2`, unique per `n`.
fn slash_form(client: usize, n: u64) -> String {
    serde_urlencoded::to_string([
        ("token", "deprecated"),
        ("team_id", "T1"),
        ("team_domain", "acme"),
        ("channel_id", &format!("C{n:08}")),
        ("channel_name", "dev"),
        ("user_id", USER),
        ("user_name", "bench"),
        ("command", "/port"),
        ("text", TEXT),
        ("api_app_id", "A1"),
        ("is_enterprise_install", "false"),
        (
            "response_url",
            &format!("https://hooks.slack.invalid/commands/T1/{n}/bench"),
        ),
        ("trigger_id", &format!("{n}.{client}.b3nch{n:016x}")),
    ])
    .expect("the form encodes")
}

// ---------------------------------------------------------------------------------------------
// The bare server: checks the signature and answers.

fn bare_verify(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
    ) else {
        return false;
    };
    let Ok(at) = timestamp.trim().parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - at).abs() > WINDOW_SECONDS {
        return false;
    }
    let Some(given) = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
}

async fn bare_command(headers: HeaderMap, body: Bytes) -> axum::response::Response {
    if !bare_verify(&headers, &body) {
        return (StatusCode::UNAUTHORIZED, "bad signature").into_response();
    }
    axum::Json(json!({"response_type": "ephemeral", "text": "Got it."})).into_response()
}

async fn start_bare() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/slack/commands", axum::routing::post(bare_command));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

// ---------------------------------------------------------------------------------------------
// portbot, with a fake Slack Web API.

#[derive(Default)]
struct FakeSlack {
    /// `chat.postMessage` without `thread_ts`: a run card.
    cards: AtomicU64,
    /// `chat.postMessage` in a card's thread.
    replies: AtomicU64,
    /// Any other method (`chat.update` of the card).
    other: AtomicU64,
}

impl FakeSlack {
    fn snapshot(&self) -> [u64; 3] {
        [&self.cards, &self.replies, &self.other].map(|n| n.load(Ordering::Relaxed))
    }
}

async fn start_fake_slack(seen: Arc<FakeSlack>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/api/{method}",
        axum::routing::post(
            move |axum::extract::Path(method): axum::extract::Path<String>, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let in_thread = body.windows(11).any(|w| w == b"\"thread_ts\"");
                    if method == "chat.postMessage" && in_thread {
                        seen.replies.fetch_add(1, Ordering::Relaxed);
                    } else if method == "chat.postMessage" {
                        seen.cards.fetch_add(1, Ordering::Relaxed);
                    } else {
                        seen.other.fetch_add(1, Ordering::Relaxed);
                    }
                    axum::Json(json!({"ok": true, "ts": "1.000100"}))
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/api/")
}
/// Builds and starts portbot (on the current runtime); returns where it listens.
async fn start_portbot(dir: &Path, api_url: String) -> SocketAddr {
    let crate_root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = dir.join("catalog");
    copy_dir(&crate_root.join("config/catalog"), &catalog);
    let mut settings = Settings::load(None).expect("the default settings load");
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.storage.path = dir.join("db");
    settings.catalog.path = catalog;
    settings.slack.enabled = true;
    settings.slack.signing_secret = Some(serde_json::from_value(json!(SECRET)).unwrap());
    settings.slack.bot_token = Some(serde_json::from_value(json!("xoxb-bench")).unwrap());
    settings.slack.api_url = api_url;
    settings.slack.approval_channel = None;
    let developers = settings
        .teams
        .iter_mut()
        .find(|t| t.identifier == "developers")
        .expect("the default settings have a developers team");
    developers.slack_users.push(USER.into());
    let application = Application::build(settings).await.expect("portbot builds");
    let addr = application.local_addr();
    tokio::spawn(application.run_until_stopped());
    addr
}

// ---------------------------------------------------------------------------------------------
// Load generation.

#[derive(Default)]
struct Tally {
    latency_us: Vec<u32>,
    /// Acks with the expected body, at any time (warm-up included).
    acked_total: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    fn merge(&mut self, other: Tally) {
        self.latency_us.extend(other.latency_us);
        self.acked_total += other.acked_total;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// One signed command; Ok when answered 200 with `expect` in the body.
async fn send_command(
    http: &reqwest::Client,
    url: &str,
    client: usize,
    n: u64,
    expect: &str,
) -> Result<(), String> {
    let body = slash_form(client, n);
    let timestamp = chrono::Utc::now().timestamp();
    let signature = sign(timestamp, &body);
    let response = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("read: {e}"))?;
    if status == StatusCode::OK && text.contains(expect) {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}

/// `clients` tasks loop until `end`; commands sent after `measure_from` are recorded, and their
/// acks counted per second of the window in `per_second`.
async fn drive(
    http: reqwest::Client,
    url: String,
    expect: &'static str,
    clients: usize,
    counter: Arc<AtomicU64>,
    (measure_from, end): (Instant, Instant),
    per_second: Arc<Vec<AtomicU64>>,
) -> Tally {
    let url: Arc<str> = url.into();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, url, counter) = (http.clone(), url.clone(), counter.clone());
        let per_second = per_second.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match send_command(&http, &url, client, n, expect).await {
                    Ok(()) => {
                        tally.acked_total += 1;
                        if started >= measure_from {
                            let us = started.elapsed().as_micros().min(u32::MAX as u128);
                            tally.latency_us.push(us as u32);
                            let second = started.duration_since(measure_from).as_secs() as usize;
                            if let Some(bucket) = per_second.get(second) {
                                bucket.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        tally.error(e);
                        if tally.errors > 1000 {
                            break;
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("a client task panicked"));
    }
    total
}

struct Phase {
    name: &'static str,
    seconds: f64,
    acks: usize,
    p50: f64,
    p99: f64,
    max: f64,
    /// Acks of commands sent in each second of the window.
    per_second: Vec<u64>,
    /// CPU seconds in the window: the whole process, and the load runtime's share.
    process_cpu: f64,
    load_cpu: f64,
    errors: u64,
    first_error: Option<String>,
    /// Acks over the whole phase, warm-up included.
    acked_total: u64,
    /// What the fake Slack received in the window: cards, thread replies, other calls.
    slack_calls: [u64; 3],
}

impl Phase {
    fn rate(&self) -> f64 {
        self.acks as f64 / self.seconds
    }

    fn server_cpu(&self) -> f64 {
        self.process_cpu - self.load_cpu
    }
}
async fn phase(
    name: &'static str,
    http: &reqwest::Client,
    url: String,
    expect: &'static str,
    knobs: &Knobs,
    counter: Arc<AtomicU64>,
    slack: &FakeSlack,
) -> Phase {
    let measure_from = Instant::now() + Duration::from_secs(knobs.warmup);
    let end = measure_from + Duration::from_secs(knobs.seconds);
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..knobs.seconds).map(|_| AtomicU64::new(0)).collect());
    let load = tokio::spawn(drive(
        http.clone(),
        url,
        expect,
        knobs.clients,
        counter,
        (measure_from, end),
        per_second.clone(),
    ));
    tokio::time::sleep_until(measure_from.into()).await;
    let (cpu0, slack0) = (cpu_split(), slack.snapshot());
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, slack1) = (cpu_split(), slack.snapshot());
    let seconds = measure_from.elapsed().as_secs_f64();
    let mut tally = load.await.expect("the load generator panicked");
    tally.latency_us.sort_unstable();
    Phase {
        name,
        seconds,
        acks: tally.latency_us.len(),
        p50: percentile_ms(&tally.latency_us, 50.0),
        p99: percentile_ms(&tally.latency_us, 99.0),
        max: tally
            .latency_us
            .last()
            .map_or(f64::NAN, |&us| us as f64 / 1000.0),
        per_second: per_second
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
        process_cpu: cpu1.0 - cpu0.0,
        load_cpu: cpu1.1 - cpu0.1,
        errors: tally.errors,
        first_error: tally.first_error,
        acked_total: tally.acked_total,
        slack_calls: [0, 1, 2].map(|i| slack1[i] - slack0[i]),
    }
}

// ---------------------------------------------------------------------------------------------
fn main() {
    let knobs = Knobs::from_env();
    // portbot's Slack client honours proxy variables; the fake Slack is local. (Set before any
    // thread starts.)
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    std::env::set_var("no_proxy", "127.0.0.1,localhost");
    // Settings::load reads config/default.toml and the templates relative to the crate.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("srv")
        .enable_all()
        .build()
        .expect("the server runtime builds");
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(format!("{LOAD_THREADS}gen"))
        // Keep idle blocking threads, so their CPU stays in the load runtime's count.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .expect("the load runtime builds");
    let dir = tempfile::Builder::new()
        .prefix("portbot-slack-commands-")
        .tempdir()
        .expect("a temporary directory");

    let http = load.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(knobs.clients * 2)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("the HTTP client builds")
    });
    let counter = Arc::new(AtomicU64::new(0));
    // Slack's side: it runs with the load generator. Only portbot calls it.
    let slack = Arc::new(FakeSlack::default());
    let api_url = load.block_on(start_fake_slack(slack.clone()));

    let bare = servers.block_on(start_bare());
    eprintln!("phase bare ({bare}) ...");
    let bare_phase = load.block_on(phase(
        "bare axum (signature only)",
        &http,
        format!("http://{bare}/slack/commands"),
        "ephemeral",
        &knobs,
        counter.clone(),
        &slack,
    ));

    let portbot = servers.block_on(start_portbot(dir.path(), api_url));
    eprintln!("phase portbot ({portbot}) ...");
    let portbot_phase = load.block_on(phase(
        "portbot (durable run)",
        &http,
        format!("http://{portbot}/slack/commands"),
        "WAITING_FOR_APPROVAL",
        &knobs,
        counter.clone(),
        &slack,
    ));

    println!("{}", report(&knobs, cores, &bare_phase, &portbot_phase));
    // The servers' tasks are dropped with their runtimes, not shut down cleanly.
    load.shutdown_background();
    servers.shutdown_background();
}

fn report(knobs: &Knobs, cores: usize, bare: &Phase, portbot: &Phase) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "\n## portbot slack_commands benchmark\n\n\
         `/port {TEXT}`, freshly signed per command (HMAC-SHA256 checked by both servers), \
         {} concurrent keep-alive clients on 127.0.0.1, {} s warm-up + {} s measured per phase, \
         {cores} cores. Servers and load generator share this process and machine, the same way \
         in both phases: the servers run on their own tokio runtime ({cores} workers), the load \
         generator and the fake Slack on another ({cores} workers); server CPU is the process's \
         minus the load runtime's threads.\n",
        knobs.clients, knobs.warmup, knobs.seconds
    );
    let _ = writeln!(
        w,
        "| phase | commands/s | p50 ms | p99 ms | max ms | server CPU/command | \
         process CPU/command (incl. load generator) | errors |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in [bare, portbot] {
        let n = p.acks.max(1) as f64;
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} µs | {:.0} µs | {} |",
            p.name,
            p.rate(),
            p.p50,
            p.p99,
            p.max,
            p.server_cpu() / n * 1e6,
            p.process_cpu / n * 1e6,
            p.errors
        );
    }
    let _ = writeln!(w);
    for p in [bare, portbot] {
        let per_second: Vec<String> = p.per_second.iter().map(u64::to_string).collect();
        let _ = writeln!(
            w,
            "- {}: process {:.2} of {:.0} core-seconds ({:.0} %): load generator {:.2}, \
             server side {:.2}. Acks per second of the window: {}; {} acks in all, warm-up \
             included.",
            p.name,
            p.process_cpu,
            p.seconds * cores as f64,
            p.process_cpu / (p.seconds * cores as f64) * 100.0,
            p.load_cpu,
            p.server_cpu(),
            per_second.join(", "),
            p.acked_total
        );
        if let Some(e) = &p.first_error {
            let _ = writeln!(w, "  first error: {e}");
        }
    }
    let [cards, replies, other] = portbot.slack_calls;
    let _ = writeln!(
        w,
        "- portbot's outbox posted {cards} run cards, {replies} thread replies and {other} other \
         Slack calls in the window, for {} acked commands: cards are paced per channel \
         (slack.message_interval_ms) and delivered by at most slack.max_concurrent runs at once, \
         so most of their cost comes after the window and is not in the CPU/command above. Every \
         portbot ack said WAITING_FOR_APPROVAL: one durable run each.",
        portbot.acks
    );
    let share = portbot.rate() / bare.rate();
    let _ = writeln!(
        w,
        "\nportbot reaches {:.1} % of the bare server's commands/s.\n",
        share * 100.0
    );
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---:|---|");
    let _ = writeln!(
        w,
        "| ≥ {:.0} % of the bare server's commands/s | {:.1} % | {} |",
        TARGET_SHARE * 100.0,
        share * 100.0,
        verdict(share >= TARGET_SHARE)
    );
    let _ = writeln!(
        w,
        "| portbot ack p99 < {TARGET_P99_MS:.0} ms | {:.2} ms | {} |",
        portbot.p99,
        verdict(portbot.p99 < TARGET_P99_MS)
    );
    out
}
