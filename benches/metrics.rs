//! Cost of recording one response time: the exporter's histogram (what
//! `fulcrum_upstream_response_seconds` used before) against Fulcrum's fixed atomic buckets
//! (`metrics::ResponseHistogram`), and the cost of counting a status code and asking a log site
//! whether it may write. Run with `cargo bench --bench metrics` (`-- --warm-up-time 1
//! --measurement-time 3` for a shorter run).
//!
//! Group `response_histogram_record`:
//! - `exporter` and `atomic_buckets`: one thread recording into one server's histogram;
//! - `exporter_two_threads` and `atomic_buckets_two_threads`: two threads recording into the same
//!   histogram at once (two workers sending to one server); the figure is the slower thread's time
//!   divided by `iters`, per sample per thread, so contention shows as a larger figure.
//!
//! The exporter keeps every sample until its upkeep drains them (the daemon ran it every 5 s), so
//! its runs drain every [`UPKEEP_EVERY`] samples, outside the timed part: the figure is the
//! recording alone, as a worker pays it, and leaves the upkeep's own cost out in its favour.
//!
//! Group `request_path`: `code_counter_inc` (a status code already seen, `CodeCounters::inc`),
//! `log_limit_suppressed` (a warning site inside its quiet second, `LogLimit::allow`), and finding
//! the third of three listeners' counters: `listener_by_id` (`ByListener::get`) against
//! `listener_by_name`, the scan comparing names that it replaced.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::metrics::{
    listener_id, ByListener, CodeCounters, LogLimit, ResponseHistogram, RESPONSE_BUCKETS,
};
use metrics::Histogram;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use tokio::time::Instant;

/// Samples between two upkeeps of the exporter (far fewer than 5 s of a busy server).
const UPKEEP_EVERY: u64 = 100_000;

/// A response time that lands in a middle bucket.
const SAMPLE: Duration = Duration::from_micros(3_700);

/// A recorder configured as the daemon's was, and one server's histogram on it.
fn exporter() -> (PrometheusRecorder, PrometheusHandle, Histogram) {
    let recorder = PrometheusBuilder::new()
        .set_buckets(RESPONSE_BUCKETS)
        .expect("buckets")
        .build_recorder();
    let handle = recorder.handle();
    let histogram = metrics::with_local_recorder(
        &recorder,
        || metrics::histogram!("fulcrum_upstream_response_seconds", "upstream" => "app", "server" => "10.0.0.1:80"),
    );
    (recorder, handle, histogram)
}

/// Runs `record` `iters` times on each of `threads` threads started together, `between` after
/// every [`UPKEEP_EVERY`] of them untimed; returns the slowest thread's timed total.
fn timed(
    threads: usize,
    iters: u64,
    record: impl Fn() + Sync,
    between: impl Fn() + Sync,
) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let mut total = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(UPKEEP_EVERY);
                        let started = Instant::now();
                        for _ in 0..n {
                            record();
                        }
                        total += started.elapsed();
                        left -= n;
                        between();
                    }
                    total
                })
            })
            .collect();
        runs.into_iter()
            .map(|r| r.join().expect("bench thread"))
            .max()
            .expect("one thread at least")
    })
}

fn histograms(c: &mut Criterion) {
    let mut group = c.benchmark_group("response_histogram_record");
    let (_recorder, handle, exported) = exporter();
    let ours = ResponseHistogram::new("app", "10.0.0.1:80");
    for threads in [1, 2] {
        let suffix = if threads == 1 { "" } else { "_two_threads" };
        group.bench_function(format!("exporter{suffix}"), |b| {
            b.iter_custom(|iters| {
                timed(
                    threads,
                    iters,
                    || exported.record(black_box(SAMPLE).as_secs_f64()),
                    || handle.run_upkeep(),
                )
            })
        });
        group.bench_function(format!("atomic_buckets{suffix}"), |b| {
            b.iter_custom(|iters| timed(threads, iters, || ours.record(black_box(SAMPLE)), || ()))
        });
    }
    group.finish();
}

fn request_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_path");
    let recorder = PrometheusBuilder::new().build_recorder();
    let counters = CodeCounters::new("web", "app", "10.0.0.1:80");
    metrics::with_local_recorder(&recorder, || counters.inc(200));
    group.bench_function("code_counter_inc", |b| {
        b.iter(|| counters.inc(black_box(200)))
    });
    let site = LogLimit::new();
    site.allow();
    group.bench_function("log_limit_suppressed", |b| {
        b.iter(|| black_box(site.allow()))
    });
    let names = ["public_http", "public_https", "internal_api"];
    let listeners: Vec<(_, Arc<str>)> = names
        .iter()
        .map(|n| (listener_id(n), Arc::from(*n)))
        .collect();
    let by_id = ByListener::new(&listeners, "app", "10.0.0.1:80");
    let wanted = listener_id("internal_api");
    group.bench_function("listener_by_id", |b| {
        b.iter(|| black_box(by_id.get(black_box(wanted)).is_some()))
    });
    let by_name: Vec<(Arc<str>, CodeCounters)> = names
        .iter()
        .map(|n| (Arc::from(*n), CodeCounters::new(n, "app", "10.0.0.1:80")))
        .collect();
    let wanted: Arc<str> = Arc::from("internal_api");
    group.bench_function("listener_by_name", |b| {
        b.iter(|| {
            let name: &str = black_box(&wanted);
            black_box(by_name.iter().find(|(n, _)| &**n == name).is_some())
        })
    });
    group.finish();
}

criterion_group!(benches, histograms, request_path);
criterion_main!(benches);
