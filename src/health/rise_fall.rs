//! A server's health as active checks see it (HAProxy's `check ... rise R fall F`).
//!
//! A checked server starts up, so a restart of Fulcrum sends traffic at once. Its first failed check
//! marks it down at once (HAProxy's behaviour: a server that fails its very first check is not given
//! `fall` chances). After that, `fall` failures in a row take it down and `rise` passes in a row
//! bring it back; a result that agrees with the current state resets the opposite count.

use std::time::SystemTime;

/// One check's outcome, as `/status` shows it in `last_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Whether the check passed.
    pub ok: bool,
    /// What was seen: the status code, or why it failed (`connect refused`, `timeout after 1s`).
    pub detail: String,
    /// When the check ended (wall clock, for people reading `/status`).
    pub at: SystemTime,
}

/// The check-driven state of one server.
#[derive(Debug, Clone)]
pub struct Health {
    up: bool,
    checked: bool,
    passes: u32,
    fails: u32,
    last: Option<CheckReport>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: true,
            checked: false,
            passes: 0,
            fails: 0,
            last: None,
        }
    }
}

/// A change of [`Health`] and why it happened, for the one log line each change gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new state: true = up.
    pub up: bool,
    /// In the operator's words: `connect refused`, `3 consecutive failures (last: status 503)`.
    pub reason: String,
}

impl Health {
    /// Whether the checks let the server take traffic.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The last check's outcome, if one has run.
    pub fn last(&self) -> Option<&CheckReport> {
        self.last.as_ref()
    }

    /// Feeds one check's outcome; returns the change it caused, if any.
    pub fn record(&mut self, report: CheckReport, rise: u32, fall: u32) -> Option<Change> {
        let first = !self.checked;
        self.checked = true;
        let ok = report.ok;
        let detail = report.detail.clone();
        self.last = Some(report);
        if ok {
            self.fails = 0;
            if self.up {
                return None;
            }
            self.passes += 1;
            if self.passes < rise {
                return None;
            }
            self.passes = 0;
            self.up = true;
            return Some(Change {
                up: true,
                reason: format!("{rise} consecutive passes (last: {detail})"),
            });
        }
        self.passes = 0;
        if !self.up {
            return None;
        }
        self.fails += 1;
        if first {
            self.fails = 0;
            self.up = false;
            return Some(Change {
                up: false,
                reason: format!("first check failed: {detail}"),
            });
        }
        if self.fails < fall {
            return None;
        }
        self.fails = 0;
        self.up = false;
        Some(Change {
            up: false,
            reason: format!("{fall} consecutive failures (last: {detail})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ok: bool) -> CheckReport {
        CheckReport {
            ok,
            detail: if ok {
                "200".into()
            } else {
                "status 503".into()
            },
            at: SystemTime::UNIX_EPOCH,
        }
    }

    /// Feeds `results` with rise = 2, fall = 3 and returns the state after each.
    fn run(results: &[bool]) -> Vec<bool> {
        let mut h = Health::default();
        results
            .iter()
            .map(|&ok| {
                h.record(report(ok), 2, 3);
                h.is_up()
            })
            .collect()
    }

    #[test]
    fn a_server_starts_up_and_its_first_failure_takes_it_down_at_once() {
        assert!(Health::default().is_up());
        let mut h = Health::default();
        let change = h.record(report(false), 2, 3).expect("a change");
        assert_eq!(
            change,
            Change {
                up: false,
                reason: "first check failed: status 503".into()
            }
        );
        assert!(!h.is_up());
        assert_eq!(h.last(), Some(&report(false)));
    }

    #[test]
    fn after_the_first_check_fall_failures_in_a_row_take_it_down() {
        assert_eq!(run(&[true, false, false, false]), [true, true, true, false]);
        // A pass between failures resets the count.
        assert_eq!(
            run(&[true, false, false, true, false, false, false]),
            [true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn rise_passes_in_a_row_bring_it_back() {
        assert_eq!(run(&[false, true, true]), [false, false, true]);
        assert_eq!(
            run(&[false, true, false, true, true]),
            [false, false, false, false, true]
        );
    }

    #[test]
    fn changes_name_their_reason() {
        let mut h = Health::default();
        h.record(report(true), 2, 3);
        assert_eq!(h.record(report(false), 2, 3), None);
        assert_eq!(h.record(report(false), 2, 3), None);
        let down = h.record(report(false), 2, 3).unwrap();
        assert_eq!(down.reason, "3 consecutive failures (last: status 503)");
        assert_eq!(h.record(report(true), 2, 3), None);
        let up = h.record(report(true), 2, 3).unwrap();
        assert_eq!(
            up,
            Change {
                up: true,
                reason: "2 consecutive passes (last: 200)".into()
            }
        );
    }

    #[test]
    fn rise_and_fall_of_one_act_on_each_result() {
        let mut h = Health::default();
        h.record(report(true), 1, 1);
        assert!(h.record(report(false), 1, 1).is_some());
        assert!(h.record(report(true), 1, 1).is_some());
        assert!(h.is_up());
    }
}
