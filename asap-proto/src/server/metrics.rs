//! Request metrics served at `GET /asap/metrics` (OpenMetrics text), as the
//! reference exposes them. Not part of the peer protocol; for operators.
//!
//! Label values come from closed sets (known payload kinds, HTTP status codes),
//! so hostile input cannot grow the metric families without bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::model::PayloadKind;

/// `Content-Type` of the metrics document.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Counters and a latency histogram of `POST /asap`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    requests: BTreeMap<(&'static str, u16), u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

impl Metrics {
    /// Records one `POST /asap`: its payload kind (when the envelope decoded),
    /// the HTTP status it got, and how long it took.
    pub fn record(&mut self, kind: Option<PayloadKind>, status: u16, elapsed: Duration) {
        let label = kind.map_or("none", PayloadKind::payload_type);
        *self.requests.entry((label, status)).or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += secs;
    }

    /// Records a finished exchange ([`Reply::record`](super::Reply::record)) at `now`.
    pub fn handle_record(&mut self, record: &super::RequestRecord, now: std::time::Instant) {
        let elapsed = now.saturating_duration_since(record.started);
        self.record(record.kind, record.status, elapsed);
    }

    /// Total requests recorded.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.count
    }

    /// The OpenMetrics text document.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# TYPE asap_requests counter\n# HELP asap_requests Requests to POST /asap by payload type and HTTP status.\n");
        for ((payload_type, status), n) in &self.requests {
            let _ = writeln!(
                out,
                "asap_requests_total{{payload_type=\"{payload_type}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# TYPE asap_request_duration_seconds histogram\n# HELP asap_request_duration_seconds Time to answer POST /asap, handler included.\n");
        for (le, n) in BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(
                out,
                "asap_request_duration_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "asap_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "asap_request_duration_seconds_count {}", self.count);
        let _ = writeln!(
            out,
            "asap_request_duration_seconds_sum {}",
            self.sum_seconds
        );
        out.push_str("# EOF\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bounded_families() {
        let mut m = Metrics::default();
        m.record(
            Some(PayloadKind::TaskRequest),
            200,
            Duration::from_micros(300),
        );
        m.record(None, 200, Duration::from_millis(2));
        m.record(None, 413, Duration::from_secs(9));
        let text = m.render();
        assert!(
            text.contains("asap_requests_total{payload_type=\"task.request\",status=\"200\"} 1")
        );
        assert!(text.contains("asap_requests_total{payload_type=\"none\",status=\"413\"} 1"));
        assert!(text.contains("asap_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("asap_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.ends_with("# EOF\n"));
    }
}
