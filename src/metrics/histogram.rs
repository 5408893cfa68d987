//! `fulcrum_upstream_response_seconds`: a Prometheus histogram of fixed buckets kept in atomics.
//!
//! The exporter's own histogram appends every sample to a shared buffer that only its upkeep drains
//! (memory grows with the request rate between upkeeps, and each sample is a write to a shared
//! list); this one costs two relaxed atomic adds per sample: the sample's bucket and the sum in
//! microseconds. Buckets are stored per interval (not cumulative); rendering adds them up, and the
//! count is their total, so `+Inf` and `_count` always agree. A u64 sum of microseconds lasts 580
//! millennia of summed response time.
//!
//! Every histogram is listed in a process-wide registry by `Weak` reference and rendered while its
//! server's state lives: a server removed by a reload stops being rendered once its last in-flight
//! request has finished (Prometheus expects a removed series to disappear). A server that is removed
//! and added back while its old state still lives gets the same histogram, so one label set is never
//! rendered twice.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{RESPONSE_BUCKETS, UPSTREAM_RESPONSE_SECONDS};

/// Buckets: one per bound in [`RESPONSE_BUCKETS`], and one above the last.
const BUCKETS: usize = RESPONSE_BUCKETS.len() + 1;

/// The upper bounds in nanoseconds, so a sample is compared exactly (`le` is inclusive).
const BOUNDS_NANOS: [u64; BUCKETS - 1] = {
    let mut out = [0; BUCKETS - 1];
    let mut i = 0;
    while i < out.len() {
        out[i] = (RESPONSE_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
};

/// Every histogram by its labels, for [`render_all`] (in label order) and for a server added back.
/// An entry whose server is gone is swept at the next render.
static REGISTRY: Mutex<BTreeMap<String, Weak<ResponseHistogram>>> = Mutex::new(BTreeMap::new());

/// The response times of one server of one upstream.
pub struct ResponseHistogram {
    /// `upstream="...",server="..."`, escaped once.
    labels: String,
    buckets: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl ResponseHistogram {
    /// The histogram of `server` in `upstream`: the live one if that server has one, else a new one.
    pub fn new(upstream: &str, server: &str) -> Arc<Self> {
        let labels = format!(
            "upstream=\"{}\",server=\"{}\"",
            escape(upstream),
            escape(server)
        );
        let mut registry = lock();
        if let Some(live) = registry.get(&labels).and_then(Weak::upgrade) {
            return live;
        }
        let histogram = Arc::new(ResponseHistogram {
            labels: labels.clone(),
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
        });
        registry.insert(labels, Arc::downgrade(&histogram));
        histogram
    }

    /// Records one response time.
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Appends this histogram's `_bucket`, `_sum` and `_count` lines to `out`.
    fn render(&self, out: &mut String) {
        let name = UPSTREAM_RESPONSE_SECONDS;
        let labels = &self.labels;
        let mut cumulative = 0u64;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match RESPONSE_BUCKETS.get(i) {
                Some(le) => writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}"),
                None => writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"),
            }
            .expect("writing to a String");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        writeln!(out, "{name}_sum{{{labels}}} {sum}").expect("writing to a String");
        writeln!(out, "{name}_count{{{labels}}} {cumulative}").expect("writing to a String");
    }
}

/// Appends every live histogram to `out` in the Prometheus text format, under one `# TYPE` line.
pub fn render_all(out: &mut String) {
    let live: Vec<Arc<ResponseHistogram>> = {
        let mut registry = lock();
        registry.retain(|_, w| w.strong_count() > 0);
        registry.values().filter_map(Weak::upgrade).collect()
    };
    if live.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    writeln!(out, "# TYPE {UPSTREAM_RESPONSE_SECONDS} histogram").expect("writing to a String");
    for histogram in live {
        histogram.render(out);
    }
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<String, Weak<ResponseHistogram>>> {
    // Every update is one insert or retain: a panic elsewhere cannot leave it half-written.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A label value as the text format quotes it (backslash, double quote and newline escaped).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `text` for upstream `upstream`.
    fn lines_of(text: &str, upstream: &str) -> Vec<String> {
        let needle = format!("upstream=\"{upstream}\"");
        text.lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    fn rendered() -> String {
        let mut out = String::new();
        render_all(&mut out);
        out
    }

    #[test]
    fn samples_land_in_cumulative_buckets_with_inclusive_bounds() {
        let h = ResponseHistogram::new("hist-buckets", "10.0.0.1:80");
        for nanos in [
            1_000_000,
            1_000_100,
            3_000_000,
            40_000_000,
            40_000_000,
            31_000_000_000,
        ] {
            h.record(Duration::from_nanos(nanos));
        }
        let text = rendered();
        let p = "fulcrum_upstream_response_seconds";
        let l = "upstream=\"hist-buckets\",server=\"10.0.0.1:80\"";
        let expected: Vec<String> = [
            ("0.001", 1),
            ("0.0025", 2),
            ("0.005", 3),
            ("0.01", 3),
            ("0.025", 3),
            ("0.05", 5),
            ("0.1", 5),
            ("0.25", 5),
            ("0.5", 5),
            ("1", 5),
            ("2.5", 5),
            ("5", 5),
            ("10", 5),
            ("30", 5),
            ("+Inf", 6),
        ]
        .iter()
        .map(|(le, n)| format!("{p}_bucket{{{l},le=\"{le}\"}} {n}"))
        .chain([
            format!("{p}_sum{{{l}}} 31.085"),
            format!("{p}_count{{{l}}} 6"),
        ])
        .collect();
        assert_eq!(lines_of(&text, "hist-buckets"), expected);
        assert!(text.contains("# TYPE fulcrum_upstream_response_seconds histogram\n"));
    }

    #[test]
    fn a_dropped_histogram_is_no_longer_rendered() {
        let h = ResponseHistogram::new("hist-dropped", "10.0.0.1:80");
        h.record(Duration::from_millis(2));
        assert_eq!(lines_of(&rendered(), "hist-dropped").len(), BUCKETS + 2);
        drop(h);
        assert!(lines_of(&rendered(), "hist-dropped").is_empty());
    }

    #[test]
    fn a_server_added_back_while_its_histogram_lives_shares_it() {
        let old = ResponseHistogram::new("hist-shared", "10.0.0.1:80");
        old.record(Duration::from_millis(2));
        let new = ResponseHistogram::new("hist-shared", "10.0.0.1:80");
        new.record(Duration::from_millis(2));
        assert!(Arc::ptr_eq(&old, &new));
        let count = lines_of(&rendered(), "hist-shared")
            .into_iter()
            .filter(|l| l.contains("_count"))
            .collect::<Vec<_>>();
        assert_eq!(count.len(), 1, "{count:?}");
        assert!(count[0].ends_with(" 2"), "{count:?}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb"), "a\\nb");
    }
}
