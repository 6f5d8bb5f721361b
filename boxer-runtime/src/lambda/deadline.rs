//! When to stop the program so that the answer beats the invocation's
//! deadline.
//!
//! Lambda freezes or kills an instance at the deadline: whatever the program
//! printed last, its exit status and the node's leave are lost unless the
//! runtime stops the program early enough. The deadline comes in the
//! `Lambda-Runtime-Deadline-Ms` header, but not every Runtime API sends a
//! real one (cargo-lambda's emulator sends the constant `600000`), so a
//! deadline that is absent or implausible falls back to the event's
//! `timeout_secs`, else to Lambda's maximum. Pure functions of their inputs,
//! tested below; the clock is read by the caller.

use std::time::Duration;

/// Lambda's longest invocation.
pub const MAX_INVOCATION: Duration = Duration::from_secs(15 * 60);

/// How far beyond [`MAX_INVOCATION`] a deadline may seem to be and still be
/// believed: the clocks of the Lambda service and of the sandbox are both
/// NTP-synchronised, so a minute is far beyond any real skew while a wrong
/// unit or a constant (600000 ms) stays out.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(60);

/// Time kept after the program has ended, for shipping its last output and
/// exit status (one rendezvous round trip, < 0.3 s between any two regions;
/// a few QUIC retransmissions on a lossy path), leaving the cluster (a close
/// frame) and posting the answer to the local Runtime API (~1 ms). 3 s holds
/// all that with room; it is taken from the program's run time only at the
/// very end of a 15 min invocation.
pub const REPORT_MARGIN: Duration = Duration::from_secs(3);

/// Where the deadline came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineSource {
    /// `Lambda-Runtime-Deadline-Ms`.
    Header,
    /// The event's `timeout_secs` (the header was absent or implausible).
    EventTimeout,
    /// [`MAX_INVOCATION`] (neither of the above).
    LambdaMaximum,
}

/// When to stop the program, counted from when the invocation was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// Time the invocation has in all.
    pub budget: Duration,
    /// Send SIGTERM this long after the invocation was received.
    pub sigterm_after: Duration,
    /// Then wait this long before SIGKILL (the event's grace, shortened when
    /// the budget is too small for it).
    pub grace: Duration,
    /// Where `budget` came from.
    pub source: DeadlineSource,
}

/// The invocation's time budget: the header's deadline if plausible
/// (`now_ms` is the wall clock at receipt, ms since the epoch), else
/// `timeout`, else [`MAX_INVOCATION`].
pub fn budget(header_ms: Option<u64>, now_ms: u64, timeout: Option<Duration>) -> (Duration, DeadlineSource) {
    let plausible = MAX_INVOCATION + DEADLINE_SLACK;
    if let Some(deadline) = header_ms
        && deadline > now_ms
        && Duration::from_millis(deadline - now_ms) <= plausible
    {
        return (Duration::from_millis(deadline - now_ms), DeadlineSource::Header);
    }
    match timeout {
        Some(t) if !t.is_zero() => (t.min(MAX_INVOCATION), DeadlineSource::EventTimeout),
        _ => (MAX_INVOCATION, DeadlineSource::LambdaMaximum),
    }
}

/// Plans the stop: the program ends (at the latest SIGKILL) [`REPORT_MARGIN`]
/// before the deadline, after `grace` of SIGTERM; a grace longer than half
/// of what is left is cut to that half, so the program always gets to run.
pub fn plan(header_ms: Option<u64>, now_ms: u64, timeout: Option<Duration>, grace: Duration) -> StopPlan {
    let (budget, source) = budget(header_ms, now_ms, timeout);
    let usable = budget.saturating_sub(REPORT_MARGIN);
    let grace = grace.min(usable / 2);
    StopPlan { budget, sigterm_after: usable - grace, grace, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;
    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_plausible_header_wins() {
        let p = plan(Some(NOW + 60_000), NOW, Some(S(900)), S(10));
        assert_eq!(p.source, DeadlineSource::Header);
        assert_eq!((p.budget, p.sigterm_after, p.grace), (S(60), S(60) - REPORT_MARGIN - S(10), S(10)));
        // 15 min + slack ahead is still believed.
        assert_eq!(budget(Some(NOW + 960_000), NOW, None).1, DeadlineSource::Header);
    }

    #[test]
    fn implausible_headers_fall_back_to_the_event_timeout_then_the_maximum() {
        // The emulator's constant, a past deadline, one far ahead, none.
        for header in [Some(600_000), Some(NOW - 1), Some(NOW), Some(NOW + 3_600_000), None] {
            assert_eq!(budget(header, NOW, Some(S(6))), (S(6), DeadlineSource::EventTimeout), "{header:?}");
            assert_eq!(budget(header, NOW, None), (MAX_INVOCATION, DeadlineSource::LambdaMaximum), "{header:?}");
        }
        assert_eq!(budget(None, NOW, Some(S(5000))).0, MAX_INVOCATION);
        assert_eq!(budget(None, NOW, Some(S(0))).1, DeadlineSource::LambdaMaximum);
    }

    #[test]
    fn the_grace_is_cut_when_time_is_short() {
        // The end-to-end test's case: 6 s timeout, 1 s grace.
        let p = plan(None, NOW, Some(S(6)), S(1));
        assert_eq!((p.sigterm_after, p.grace), (S(2), S(1)));
        // A grace longer than the budget leaves the program half of it.
        let p = plan(None, NOW, Some(S(13)), S(60));
        assert_eq!((p.sigterm_after, p.grace), (S(5), S(5)));
        // A budget below the margin stops at once.
        let p = plan(Some(NOW + 1000), NOW, None, S(10));
        assert_eq!((p.sigterm_after, p.grace), (Duration::ZERO, Duration::ZERO));
    }
}
