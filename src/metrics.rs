//! Prometheus metrics: runs by status, API latency, backend latency and errors.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::core::run::RunStatus;

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    http: HistogramVec,
    backend_seconds: HistogramVec,
    backend_errors: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("portbot".into()), None).expect("valid prefix");
        let runs = IntCounterVec::new(
            Opts::new(
                "runs_total",
                "Runs that entered each status since the process started",
            ),
            &["status"],
        )
        .expect("valid metric");
        let http = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP requests by route and status",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ]),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let backend_seconds = HistogramVec::new(
            HistogramOpts::new(
                "backend_duration_seconds",
                "Backend invocations by kind and outcome",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
            &["backend", "outcome"],
        )
        .expect("valid metric");
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "backend_errors_total",
                "Failed backend attempts (each retry counts)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        for c in [
            Box::new(runs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http.clone()),
            Box::new(backend_seconds.clone()),
            Box::new(backend_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for status in RunStatus::ALL {
            runs.with_label_values(&[status.as_str()]);
        }
        Metrics {
            registry,
            runs,
            http,
            backend_seconds,
            backend_errors,
        }
    }

    pub fn run_entered(&self, status: RunStatus) {
        self.runs.with_label_values(&[status.as_str()]).inc();
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http
            .with_label_values(&[method, route, &status.to_string()])
            .observe(elapsed.as_secs_f64());
    }

    pub fn backend_finished(&self, backend: &str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "success" } else { "failure" };
        self.backend_seconds
            .with_label_values(&[backend, outcome])
            .observe(elapsed.as_secs_f64());
    }

    pub fn backend_error(&self, backend: &str) {
        self.backend_errors.with_label_values(&[backend]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
