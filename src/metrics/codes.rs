//! The status-code dimension of `fulcrum_requests_total`: one handle per code a client received.
//!
//! A server may send any three-digit code (100..=999; the HTTP/1 codec refuses others), and each
//! must land on its own series without a collision, and without a registry lookup (a lock and
//! label allocations) after the first time. The codes are grouped by their first digit: nine
//! classes, each a block of 100 `OnceLock<Counter>` allocated the first time a code of that class
//! is seen, so a set that has seen only 2xx, 3xx, 4xx and 5xx costs 9 × 16 bytes of class slots
//! plus 4 blocks of 100 × 24 bytes (about 9.5 KiB), and one that has seen nothing 144 bytes.
//! After a code's first use, counting it is two atomic loads and one atomic add.

use std::sync::{Arc, OnceLock};

use metrics::{counter, Counter};

use super::REQUESTS_TOTAL;

/// Codes per class (x00..=x99).
const PER_CLASS: usize = 100;

/// One class's handles, `OnceLock`s so that any worker may register a code first.
type Block = [OnceLock<Counter>; PER_CLASS];

/// `fulcrum_requests_total{listener,upstream,server,code}` for one (listener, upstream, server).
pub struct CodeCounters {
    pub(super) labels: Arc<[(&'static str, String); 3]>,
    /// Classes 1xx..=9xx.
    classes: [OnceLock<Box<Block>>; 9],
}

impl CodeCounters {
    /// Handles for one label set; `upstream` and `server` are empty where no server was involved.
    /// Nothing is registered until a code is first counted.
    pub fn new(listener: &str, upstream: &str, server: &str) -> Self {
        CodeCounters {
            labels: Arc::new([
                ("listener", listener.to_string()),
                ("upstream", upstream.to_string()),
                ("server", server.to_string()),
            ]),
            classes: Default::default(),
        }
    }

    /// Counts one response sent to the client with status `code` (100..=999).
    pub fn inc(&self, code: u16) {
        let index = usize::from(code);
        let Some(class) = self.classes.get((index / PER_CLASS).wrapping_sub(1)) else {
            // Not a status code: neither the codec nor `http::StatusCode` makes one.
            debug_assert!(false, "status code {code} outside 100..=999");
            return;
        };
        let block = class.get_or_init(|| Box::new(std::array::from_fn(|_| OnceLock::new())));
        block[index % PER_CLASS]
            .get_or_init(|| self.register(code))
            .increment(1);
    }

    fn register(&self, code: u16) -> Counter {
        let [l, u, s] = &*self.labels;
        counter!(REQUESTS_TOTAL, l.0 => l.1.clone(), u.0 => u.1.clone(), s.0 => s.1.clone(), "code" => code.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    /// The value of `fulcrum_requests_total{...,code="CODE"}` in `text`, if rendered.
    fn value(text: &str, code: u16) -> Option<u64> {
        let needle = format!("code=\"{code}\"");
        let values: Vec<u64> = text
            .lines()
            .filter(|l| l.starts_with(REQUESTS_TOTAL) && l.contains(&needle))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(values.len() <= 1, "two series for code {code}:\n{text}");
        values.first().copied()
    }

    #[test]
    fn every_code_counts_on_its_own_series() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = CodeCounters::new("web", "app", "10.0.0.1:80");
        // Code c is counted c % 7 + 1 times, so neighbours and the pairs that shared a slot
        // under `code % 64` (429/301, 500/308, 431/303, 421/101) get different counts.
        metrics::with_local_recorder(&recorder, || {
            for code in 100..=999u16 {
                for _ in 0..code % 7 + 1 {
                    counters.inc(code);
                }
            }
        });
        let text = handle.render();
        for code in 100..=999u16 {
            assert_eq!(value(&text, code), Some(u64::from(code % 7 + 1)), "{code}");
        }
        for (a, b) in [(429, 301), (500, 308), (431, 303), (421, 101)] {
            assert_ne!(value(&text, a), value(&text, b), "{a}/{b}");
        }
    }

    #[test]
    fn a_code_is_registered_once_then_counted_through_its_handle() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counters = CodeCounters::new("web", "app", "10.0.0.1:80");
        metrics::with_local_recorder(&recorder, || {
            counters.inc(429);
            counters.inc(301);
        });
        // No recorder is installed here: a code resolved by name again would count nowhere.
        for _ in 0..9 {
            counters.inc(429);
            counters.inc(301);
        }
        let text = handle.render();
        assert_eq!(value(&text, 429), Some(10));
        assert_eq!(value(&text, 301), Some(10));
        assert_eq!(value(&text, 200), None, "nothing registered before use");
    }
}
