//! The load machinery of the in-process chat benches (`slack_commands`, `discord_interactions`):
//! two tokio runtimes whose CPU can be told apart through `/proc`, `BENCH_CLIENTS` keep-alive
//! clients looping one freshly built request each until a deadline, a warm-up then a measured
//! slice, slices of the bare server and of portbot alternating, merged into a [`Phase`] each,
//! and the table and notes that report phases.
//!
//! What is platform-specific stays with each bench: how one request is built and signed
//! ([`BuildRequest`]), what a good answer contains, and what its fake platform counts.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portbot::config::{Settings, TeamSettings};
use portbot::startup::Application;
use reqwest::StatusCode;

use super::{clock_ticks, copy_dir, env_u64, percentile_ms, Errors};

/// Prefix of the load runtime's thread names (a thread's `comm` keeps 15 bytes).
pub const LOAD_THREADS: &str = "load-";

/// How long and how hard each phase runs.
pub struct Knobs {
    /// Measured seconds per phase, over all its slices.
    pub seconds: u64,
    /// Unmeasured seconds before each slice.
    pub warmup: u64,
    pub clients: usize,
    /// How many slices each phase's window is cut into; the phases' slices alternate.
    pub rounds: u64,
}

impl Knobs {
    /// `BENCH_SECONDS` [8], `BENCH_WARMUP` [1], `BENCH_CLIENTS` [64], `BENCH_ROUNDS` [4]; and
    /// `BENCH_TRACE=FILE` writes every measured answer's time and latency there (see [`trace`]).
    pub fn from_env() -> Knobs {
        Knobs {
            seconds: env_u64("BENCH_SECONDS", 8).max(1),
            warmup: env_u64("BENCH_WARMUP", 1),
            clients: env_u64("BENCH_CLIENTS", 64).max(1) as usize,
            rounds: env_u64("BENCH_ROUNDS", 4).max(1),
        }
    }

    /// Measured seconds of one slice.
    pub fn slice_seconds(&self) -> f64 {
        self.seconds as f64 / self.rounds as f64
    }
}

// ---------------------------------------------------------------------------------------------
// CPU and memory from /proc.

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

/// The process's resident memory in MiB (`VmRSS`), or NaN.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The two runtimes and the client.

/// The servers' runtime, the load generator's (with the fake platform), and the load's client.
pub struct Bench {
    pub knobs: Knobs,
    pub cores: usize,
    /// The servers under test (and sled's threads); threads named `srv`.
    pub servers: tokio::runtime::Runtime,
    /// The load generator and the fake platform; threads named `load-gen`.
    pub load: tokio::runtime::Runtime,
    /// The load's keep-alive HTTP client.
    pub http: reqwest::Client,
}

impl Bench {
    /// Prepares the process (proxy variables, working directory) and builds both runtimes.
    pub fn new() -> Bench {
        let knobs = Knobs::from_env();
        // portbot's platform clients honour proxy variables; the fake platform is local. (Set
        // before any thread starts.)
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
        let http = load.block_on(async {
            reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(knobs.clients * 2)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("the HTTP client builds")
        });
        Bench {
            knobs,
            cores,
            servers,
            load,
            http,
        }
    }

    /// The two phases, with the same load: the platform's bare server, then portbot with the
    /// platform enabled (its store in a temporary directory) against the platform's fake.
    /// The servers run on the server runtime, the fake platform on the load runtime.
    pub fn bare_then_portbot<const N: usize>(&self, platform: Platform<N>) -> [Phase<N>; 2] {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portbot-{}-", platform.name))
            .tempdir()
            .expect("a temporary directory");
        // Unique across both phases: portbot refuses (or answers once) what it has seen.
        let counter = Arc::new(AtomicU64::new(0));
        let against = |name: &'static str, server: SocketAddr, expect: &'static [&'static str]| {
            let short = name.split(' ').next().unwrap_or(name);
            eprintln!("phase {short} ({server}) ...");
            let url = format!("http://{server}{}", platform.route);
            self.load.block_on(phase(
                self,
                name,
                (platform.request)(url),
                expect,
                counter.clone(),
                &platform.calls,
            ))
        };
        // Only portbot calls the fake platform.
        let fake = self.load.block_on(serve(platform.fake));
        let api_url = format!("http://{fake}{}", platform.api_path);

        let bare = self.servers.block_on(serve(platform.bare));
        let configure = platform.configure;
        let portbot = self
            .servers
            .block_on(start_portbot(dir.path(), |s| configure(s, api_url)));
        // This machine's speed drifts by tens of percent within a minute: slices that alternate
        // give both phases the same share of fast and slow moments, so their ratio holds.
        let (mut bare_slices, mut portbot_slices) = (Vec::new(), Vec::new());
        for _ in 0..self.knobs.rounds {
            bare_slices.push(against(
                "bare axum (signature only)",
                bare,
                platform.bare_answer,
            ));
            portbot_slices.push(against(
                "portbot (durable run)",
                portbot,
                platform.portbot_answer,
            ));
        }
        [Phase::merge(bare_slices), Phase::merge(portbot_slices)]
    }

    /// Drops both runtimes without waiting for the servers' tasks: they are not shut down
    /// cleanly.
    pub fn stop(self) {
        self.load.shutdown_background();
        self.servers.shutdown_background();
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

/// Serves `router` on a fresh loopback port (on the current runtime); returns the address.
pub async fn serve(router: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Builds and starts portbot (on the current runtime) with the default settings, a store in
/// `dir` and a copy of the shipped catalog, changed by `configure` (the platform under test);
/// returns where it listens.
pub async fn start_portbot(dir: &Path, configure: impl FnOnce(&mut Settings)) -> SocketAddr {
    let crate_root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = dir.join("catalog");
    copy_dir(&crate_root.join("config/catalog"), &catalog);
    let mut settings = Settings::load(None).expect("the default settings load");
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.storage.path = dir.join("db");
    settings.catalog.path = catalog;
    configure(&mut settings);
    let application = Application::build(settings).await.expect("portbot builds");
    let addr = application.local_addr();
    tokio::spawn(application.run_until_stopped());
    addr
}

/// The shipped `developers` team, whom the bench's user joins (it may run `add-documentdb`).
pub fn developers(settings: &mut Settings) -> &mut TeamSettings {
    settings
        .teams
        .iter_mut()
        .find(|t| t.identifier == "developers")
        .expect("the default settings have a developers team")
}

// ---------------------------------------------------------------------------------------------
// Load generation.

/// Builds request number `n` (unique in the process) of client task `client`, ready to send.
pub type BuildRequest =
    dyn Fn(&reqwest::Client, usize, u64) -> reqwest::RequestBuilder + Send + Sync;

/// What a two-phase chat bench needs of its platform.
pub struct Platform<const N: usize> {
    /// For the temporary directory's name (`slack-commands`).
    pub name: &'static str,
    /// The endpoint both servers serve (`/slack/commands`).
    pub route: &'static str,
    /// The request builder for a server's endpoint URL: signed as the platform signs.
    pub request: fn(String) -> Arc<BuildRequest>,
    /// The bare server: signature check and a small answer on `route`.
    pub bare: axum::Router,
    /// What a good answer contains (all of it), from the bare server and from portbot.
    pub bare_answer: &'static [&'static str],
    pub portbot_answer: &'static [&'static str],
    /// The fake platform API portbot calls, and its root's path (`/api/`).
    pub fake: axum::Router,
    pub api_path: &'static str,
    /// Enables the platform in portbot's settings, with the fake's API root URL.
    pub configure: fn(&mut Settings, String),
    /// Reads the fake platform's counters.
    pub calls: Box<dyn Fn() -> [u64; N]>,
}

/// Microseconds from the bench's first reading of this clock to `at`.
fn bench_clock_us(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_micros() as u64
}

/// Appends one line per measured answer to `path`: `<phase> <sent at, µs> <latency, µs>`. To
/// see when slow answers come (a tail in bursts at one moment of each second is work on a
/// timer; spread evenly, it is queueing), `BENCH_TRACE=FILE`.
fn trace(path: &str, phase: &str, tally: &Tally) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    let mut out = std::io::BufWriter::new(file.expect("the trace file opens"));
    for (at, us) in tally.started_us.iter().zip(&tally.latency_us) {
        writeln!(out, "{phase} {at} {us}").expect("the trace is written");
    }
}

#[derive(Default)]
struct Tally {
    latency_us: Vec<u32>,
    /// When each of those was sent, on [`bench_clock_us`]'s clock, in the same order.
    started_us: Vec<u64>,
    /// Good answers, at any time (warm-up included).
    acked_total: u64,
    errors: Errors,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latency_us.extend(other.latency_us);
        self.started_us.extend(other.started_us);
        self.acked_total += other.acked_total;
        self.errors.merge(other.errors);
    }
}

/// Sends one request; Ok when answered 200 with every string of `expect` in the body.
async fn send(
    http: &reqwest::Client,
    request: &BuildRequest,
    client: usize,
    n: u64,
    expect: &[&str],
) -> Result<(), String> {
    let response = request(http, client, n)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("read: {e}"))?;
    if status == StatusCode::OK && expect.iter().all(|part| text.contains(part)) {
        Ok(())
    } else {
        Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}

/// `clients` tasks loop until `end`; requests sent after `measure_from` are recorded, and their
/// good answers counted per second of the window in `per_second`.
async fn drive(
    http: reqwest::Client,
    request: Arc<BuildRequest>,
    expect: &'static [&'static str],
    clients: usize,
    counter: Arc<AtomicU64>,
    (measure_from, end): (Instant, Instant),
    per_second: Arc<Vec<AtomicU64>>,
) -> Tally {
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (http, request, counter) = (http.clone(), request.clone(), counter.clone());
        let per_second = per_second.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                match send(&http, &*request, client, n, expect).await {
                    Ok(()) => {
                        tally.acked_total += 1;
                        if started >= measure_from {
                            let us = started.elapsed().as_micros().min(u32::MAX as u128);
                            tally.latency_us.push(us as u32);
                            tally.started_us.push(bench_clock_us(started));
                            let second = started.duration_since(measure_from).as_secs() as usize;
                            if let Some(bucket) = per_second.get(second) {
                                bucket.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        tally.errors.record(e);
                        if tally.errors.count > 1000 {
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

/// One phase's results; `N` counters of the fake platform.
pub struct Phase<const N: usize> {
    pub name: &'static str,
    pub seconds: f64,
    pub acks: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Every good answer's latency, sorted once the slices are merged.
    latency_us: Vec<u32>,
    /// Good answers to requests sent in each second of the window.
    pub per_second: Vec<u64>,
    /// CPU seconds in the window: the whole process, and the load runtime's share.
    pub process_cpu: f64,
    pub load_cpu: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Good answers over the whole phase, warm-up included.
    pub acked_total: u64,
    /// What the fake platform's counters gained in the window.
    pub platform_calls: [u64; N],
    /// The process's resident memory at the window's end, MiB.
    pub rss_mib: f64,
}

impl<const N: usize> Phase<N> {
    /// One phase from its slices, in the order they ran.
    fn merge(slices: Vec<Phase<N>>) -> Phase<N> {
        let mut slices = slices.into_iter();
        let mut whole = slices.next().expect("a phase has a slice");
        for slice in slices {
            whole.seconds += slice.seconds;
            whole.acks += slice.acks;
            whole.latency_us.extend(slice.latency_us);
            whole.per_second.extend(slice.per_second);
            whole.process_cpu += slice.process_cpu;
            whole.load_cpu += slice.load_cpu;
            whole.errors += slice.errors;
            whole.first_error = whole.first_error.or(slice.first_error);
            whole.acked_total += slice.acked_total;
            for (sum, more) in whole.platform_calls.iter_mut().zip(slice.platform_calls) {
                *sum += more;
            }
            whole.rss_mib = slice.rss_mib;
        }
        whole.latency_us.sort_unstable();
        whole.p50 = percentile_ms(&whole.latency_us, 50.0);
        whole.p99 = percentile_ms(&whole.latency_us, 99.0);
        whole.max = whole
            .latency_us
            .last()
            .map_or(f64::NAN, |&us| us as f64 / 1000.0);
        whole
    }

    pub fn rate(&self) -> f64 {
        self.acks as f64 / self.seconds
    }

    pub fn server_cpu(&self) -> f64 {
        self.process_cpu - self.load_cpu
    }
}

/// One phase against a server: `request` builds each request, and a good answer is a 200 whose
/// body contains every string of `expect`. `calls` reads the fake platform's counters; the
/// phase reports what they gained in the window.
async fn phase<const N: usize>(
    bench: &Bench,
    name: &'static str,
    request: Arc<BuildRequest>,
    expect: &'static [&'static str],
    counter: Arc<AtomicU64>,
    calls: &dyn Fn() -> [u64; N],
) -> Phase<N> {
    let knobs = &bench.knobs;
    let measure_from = Instant::now() + Duration::from_secs(knobs.warmup);
    let end = measure_from + Duration::from_secs_f64(knobs.slice_seconds());
    let seconds = knobs.slice_seconds().ceil() as usize;
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let load = tokio::spawn(drive(
        bench.http.clone(),
        request,
        expect,
        knobs.clients,
        counter,
        (measure_from, end),
        per_second.clone(),
    ));
    tokio::time::sleep_until(measure_from.into()).await;
    let (cpu0, calls0) = (cpu_split(), calls());
    tokio::time::sleep_until(end.into()).await;
    let (cpu1, calls1, rss) = (cpu_split(), calls(), rss_mib());
    let seconds = measure_from.elapsed().as_secs_f64();
    let tally = load.await.expect("the load generator panicked");
    if let Ok(path) = std::env::var("BENCH_TRACE") {
        trace(&path, name, &tally);
    }
    Phase {
        name,
        seconds,
        acks: tally.latency_us.len(),
        p50: f64::NAN,
        p99: f64::NAN,
        max: f64::NAN,
        latency_us: tally.latency_us,
        per_second: per_second
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect(),
        process_cpu: cpu1.0 - cpu0.0,
        load_cpu: cpu1.1 - cpu0.1,
        errors: tally.errors.count,
        first_error: tally.errors.first,
        acked_total: tally.acked_total,
        platform_calls: std::array::from_fn(|i| calls1[i] - calls0[i]),
        rss_mib: rss,
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/// How both phases ran, after the bench's words on its requests; `fake` names the platform.
pub fn write_setup(w: &mut String, bench: &Bench, fake: &str) {
    let (knobs, cores) = (&bench.knobs, bench.cores);
    let _ = writeln!(
        w,
        "{} concurrent keep-alive clients on 127.0.0.1, {} s measured per phase in {} slices that \
         alternate between the phases, each after {} s of warm-up, {cores} cores. Servers and load generator share this process and machine, the same way \
         in both phases: the servers run on their own tokio runtime ({cores} workers), the load \
         generator and the fake {fake} on another ({cores} workers); server CPU is the process's \
         minus the load runtime's threads.\n",
        knobs.clients, knobs.seconds, knobs.rounds, knobs.warmup
    );
}

/// The phases' table; `unit` names one request (`command`, `interaction`).
pub fn write_table<const N: usize>(w: &mut String, unit: &str, phases: &[&Phase<N>]) {
    let _ = writeln!(
        w,
        "| phase | {unit}s/s | p50 ms | p99 ms | max ms | server CPU/{unit} | \
         process CPU/{unit} (incl. load generator) | errors |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for p in phases {
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
}

/// A line a phase: where the CPU went, good answers per second of the window, the first error.
pub fn write_cpu_notes<const N: usize>(w: &mut String, cores: usize, phases: &[&Phase<N>]) {
    for p in phases {
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
}
