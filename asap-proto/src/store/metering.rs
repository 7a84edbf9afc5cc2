//! [`MeteringStore`]: usage events per agent (spec §17.4), the models, and the in-memory store.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::timestamp_calendar::{civil_from_days, days_from_civil};
use crate::model::{Timestamp, UnixTime};

/// The largest value a metric may hold: SQLite integers are signed 64-bit.
pub const MAX_METRIC_VALUE: u64 = i64::MAX as u64;

/// Metrics of one usage event; members in wire order, each defaulting to 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageMetrics {
    /// Input token count.
    pub tokens_in: u64,
    /// Output token count.
    pub tokens_out: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// Number of API calls.
    pub api_calls: u64,
}

/// One usage event (spec §17.4): who did work for whom, how much, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    /// Task identifier.
    pub task_id: String,
    /// Agent that produced the usage (a free string, not URN-checked).
    pub agent_id: String,
    /// Consumer (caller) identifier.
    pub consumer_id: String,
    /// Token, duration and API call metrics.
    #[serde(default)]
    pub metrics: UsageMetrics,
    /// When the event occurred.
    pub timestamp: Timestamp,
}

/// Usage of one agent summed over a period (spec §17.4); members in wire order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageAggregate {
    /// Agent identifier.
    pub agent_id: String,
    /// The period's name (`hour`, `day`, `week`, `month`, `total`; free string on the wire).
    pub period: String,
    /// Σ (`tokens_in` + `tokens_out`).
    #[serde(default)]
    pub total_tokens: u64,
    /// Σ `duration_ms`.
    #[serde(default)]
    pub total_duration: u64,
    /// Number of events (the reference calls it tasks; an event is counted per record).
    #[serde(default)]
    pub total_tasks: u64,
    /// Σ `api_calls`.
    #[serde(default)]
    pub total_api_calls: u64,
}

impl UsageAggregate {
    /// An aggregate with every total at zero.
    #[must_use]
    pub fn zero(agent_id: &str, period: AggregatePeriod) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            period: period.as_str().to_owned(),
            total_tokens: 0,
            total_duration: 0,
            total_tasks: 0,
            total_api_calls: 0,
        }
    }

    /// Adds one event's metrics (saturating).
    pub fn add(&mut self, m: &UsageMetrics) {
        self.total_tokens = self
            .total_tokens
            .saturating_add(m.tokens_in.saturating_add(m.tokens_out));
        self.total_duration = self.total_duration.saturating_add(m.duration_ms);
        self.total_tasks = self.total_tasks.saturating_add(1);
        self.total_api_calls = self.total_api_calls.saturating_add(m.api_calls);
    }
}

/// The calendar period an aggregate covers, in UTC.
///
/// The reference's `aggregate(agent_id, period)` **ignores `period`** and sums
/// every event of the agent (spec §17.4). asap-rs fixes that: a period is the
/// UTC calendar bucket that contains the `at` instant given to
/// [`MeteringStore::aggregate`], half-open `[start, end)`:
///
/// | period | bucket |
/// |---|---|
/// | `Hour` | the clock hour |
/// | `Day` | the UTC day, from 00:00 |
/// | `Week` | the ISO week, from Monday 00:00 |
/// | `Month` | the calendar month, from the 1st 00:00 |
/// | `Total` | every event of the agent (the reference's behaviour for any period) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregatePeriod {
    /// The UTC clock hour containing `at`.
    Hour,
    /// The UTC day containing `at`.
    Day,
    /// The ISO week (Monday to Sunday, UTC) containing `at`.
    Week,
    /// The calendar month (UTC) containing `at`.
    Month,
    /// All events, whenever they happened.
    Total,
}

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

impl AggregatePeriod {
    /// Every period, shortest first.
    pub const ALL: [AggregatePeriod; 5] = [
        AggregatePeriod::Hour,
        AggregatePeriod::Day,
        AggregatePeriod::Week,
        AggregatePeriod::Month,
        AggregatePeriod::Total,
    ];

    /// The name used in [`UsageAggregate::period`].
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregatePeriod::Hour => "hour",
            AggregatePeriod::Day => "day",
            AggregatePeriod::Week => "week",
            AggregatePeriod::Month => "month",
            AggregatePeriod::Total => "total",
        }
    }

    /// The half-open UTC bucket `[start, end)` containing `at`; `None` for [`Total`](Self::Total).
    ///
    /// ```
    /// use asap_proto::model::{Timestamp, UnixTime};
    /// use asap_proto::store::AggregatePeriod;
    /// let at = "2026-01-07T15:30:00Z".parse::<Timestamp>().unwrap().unix(); // a Wednesday
    /// let (start, end) = AggregatePeriod::Week.bounds(at).unwrap();
    /// assert_eq!(Timestamp::from_unix(start).to_string(), "2026-01-05T00:00:00Z");
    /// assert_eq!(Timestamp::from_unix(end).to_string(), "2026-01-12T00:00:00Z");
    /// ```
    #[must_use]
    pub fn bounds(self, at: UnixTime) -> Option<(UnixTime, UnixTime)> {
        let secs = at.as_secs();
        let days = secs.div_euclid(SECS_PER_DAY);
        let day_start = |d: i64| UnixTime::from_micros(d * SECS_PER_DAY * MICROS_PER_SEC);
        match self {
            AggregatePeriod::Hour => {
                let h = secs.div_euclid(3600) * 3600;
                Some((UnixTime::from_secs(h), UnixTime::from_secs(h + 3600)))
            }
            AggregatePeriod::Day => Some((day_start(days), day_start(days + 1))),
            AggregatePeriod::Week => {
                // 1970-01-01 was a Thursday: Monday is weekday 0.
                let monday = days - (days + 3).rem_euclid(7);
                Some((day_start(monday), day_start(monday + 7)))
            }
            AggregatePeriod::Month => {
                let (y, m, _) = civil_from_days(days);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some((
                    day_start(days_from_civil(y, m, 1)),
                    day_start(days_from_civil(ny, nm, 1)),
                ))
            }
            AggregatePeriod::Total => None,
        }
    }
}

impl fmt::Display for AggregatePeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An aggregation period name that is not one of `hour`, `day`, `week`, `month`, `total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown aggregation period {0:?}; use 'hour', 'day', 'week', 'month' or 'total'")]
pub struct ParsePeriodError(pub String);

impl FromStr for AggregatePeriod {
    type Err = ParsePeriodError;
    /// Parses a period name (trimmed, case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        AggregatePeriod::ALL
            .into_iter()
            .find(|p| p.as_str() == lower)
            .ok_or_else(|| ParsePeriodError(s.to_owned()))
    }
}

/// Usage events per agent, as the reference's `MeteringStore` (spec §17.4).
///
/// Semantics every backend follows (checked by `store::contract`):
///
/// * [`record`](Self::record) appends; recording the same event twice counts it twice.
///   The event's timestamp is stored as a UTC instant (a naive timestamp is
///   taken as UTC), so queries compare instants, never offsets; events come
///   back with a `Z` timestamp.
/// * [`query`](Self::query) returns the agent's events with
///   `start ≤ timestamp ≤ end`, oldest first, ties in recording order.
/// * [`aggregate`](Self::aggregate) sums the agent's events in the calendar
///   bucket of `period` that contains `at` (see [`AggregatePeriod`]); this fixes
///   the reference, whose `aggregate` ignores the period.
pub trait MeteringStore {
    /// Records one event.
    ///
    /// Fails with [`StoreError::InvalidInput`] if a metric exceeds [`MAX_METRIC_VALUE`].
    fn record(&mut self, event: &UsageEvent) -> Result<(), StoreError>;

    /// The agent's events with `start ≤ timestamp ≤ end`, oldest first; empty if `start > end`.
    fn query(
        &self,
        agent_id: &str,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Vec<UsageEvent>, StoreError>;

    /// The agent's usage in the `period` bucket containing `at` (`at` is ignored for `Total`).
    fn aggregate(
        &self,
        agent_id: &str,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError>;

    /// Records every event; nothing is recorded if one is invalid. Backends that
    /// can commit them together do so (SQLite: one transaction, one sync).
    fn record_batch(&mut self, events: &[UsageEvent]) -> Result<(), StoreError> {
        for e in events {
            e.normalized()?;
        }
        events.iter().try_for_each(|e| self.record(e))
    }
}

impl<M: MeteringStore + ?Sized> MeteringStore for Box<M> {
    fn record(&mut self, event: &UsageEvent) -> Result<(), StoreError> {
        (**self).record(event)
    }
    fn query(
        &self,
        agent_id: &str,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        (**self).query(agent_id, start, end)
    }
    fn aggregate(
        &self,
        agent_id: &str,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError> {
        (**self).aggregate(agent_id, period, at)
    }
    fn record_batch(&mut self, events: &[UsageEvent]) -> Result<(), StoreError> {
        (**self).record_batch(events)
    }
}

impl UsageEvent {
    /// Checks what every backend requires before recording, and returns the
    /// event as stored (timestamp normalised to UTC).
    pub fn normalized(&self) -> Result<UsageEvent, StoreError> {
        let m = &self.metrics;
        for (name, v) in [
            ("tokens_in", m.tokens_in),
            ("tokens_out", m.tokens_out),
            ("duration_ms", m.duration_ms),
            ("api_calls", m.api_calls),
        ] {
            if v > MAX_METRIC_VALUE {
                return Err(StoreError::InvalidInput {
                    what: "usage metrics",
                    reason: format!("{name} = {v} exceeds the maximum {MAX_METRIC_VALUE}"),
                });
            }
        }
        let mut event = self.clone();
        event.timestamp = Timestamp::from_unix(self.timestamp.unix());
        Ok(event)
    }
}

/// An in-memory [`MeteringStore`]; events are kept per agent in time order,
/// so queries and aggregates cost O(log n + events in range). Bounded: past
/// [`with_retained_events`](Self::with_retained_events) events (default
/// [`DEFAULT_MEMORY_RETAINED_EVENTS`]) the oldest is forgotten.
#[derive(Debug, Clone)]
pub struct MemoryMeteringStore {
    agents: BTreeMap<String, BTreeMap<(i64, u64), UsageEvent>>,
    seq: u64,
    len: usize,
    retained_events: usize,
}

/// Usage events an in-memory metering store keeps by default (oldest, by
/// timestamp, forgotten first): bounded memory on a long-running agent.
pub const DEFAULT_MEMORY_RETAINED_EVENTS: usize = 100_000;

impl Default for MemoryMeteringStore {
    fn default() -> Self {
        Self::with_retained_events(DEFAULT_MEMORY_RETAINED_EVENTS)
    }
}

impl MemoryMeteringStore {
    /// An empty store keeping [`DEFAULT_MEMORY_RETAINED_EVENTS`] events.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping at most `events` events (at least 1).
    #[must_use]
    pub fn with_retained_events(events: usize) -> Self {
        Self {
            agents: BTreeMap::new(),
            seq: 0,
            len: 0,
            retained_events: events.max(1),
        }
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .agents
            .iter()
            .filter_map(|(agent, events)| events.first_key_value().map(|(k, _)| (*k, agent)))
            .min()
            .map(|(_, agent)| agent.clone());
        if let Some(agent) = oldest {
            if let Some(events) = self.agents.get_mut(&agent) {
                events.pop_first();
                self.len -= 1;
                if events.is_empty() {
                    self.agents.remove(&agent);
                }
            }
        }
    }

    /// Number of events held, over all agents.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store holds no event.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    fn range(
        &self,
        agent_id: &str,
        lo: (i64, u64),
        hi: std::ops::Bound<(i64, u64)>,
    ) -> impl Iterator<Item = &UsageEvent> {
        use std::ops::Bound;
        let valid = match hi {
            Bound::Included(h) | Bound::Excluded(h) => lo <= h,
            Bound::Unbounded => true,
        };
        self.agents
            .get(agent_id)
            .filter(|_| valid)
            .into_iter()
            .flat_map(move |events| events.range((Bound::Included(lo), hi)).map(|(_, e)| e))
    }
}

impl MeteringStore for MemoryMeteringStore {
    fn record(&mut self, event: &UsageEvent) -> Result<(), StoreError> {
        let event = event.normalized()?;
        let key = (event.timestamp.unix().as_micros(), self.seq);
        self.seq += 1;
        // The agent's key is allocated once, not per event.
        match self.agents.get_mut(event.agent_id.as_str()) {
            Some(events) => {
                events.insert(key, event);
            }
            None => {
                self.agents
                    .insert(event.agent_id.clone(), BTreeMap::from([(key, event)]));
            }
        }
        self.len += 1;
        while self.len > self.retained_events {
            self.forget_oldest();
        }
        Ok(())
    }

    fn query(
        &self,
        agent_id: &str,
        start: UnixTime,
        end: UnixTime,
    ) -> Result<Vec<UsageEvent>, StoreError> {
        use std::ops::Bound;
        if start > end {
            return Ok(Vec::new());
        }
        Ok(self
            .range(
                agent_id,
                (start.as_micros(), 0),
                Bound::Included((end.as_micros(), u64::MAX)),
            )
            .cloned()
            .collect())
    }

    fn aggregate(
        &self,
        agent_id: &str,
        period: AggregatePeriod,
        at: UnixTime,
    ) -> Result<UsageAggregate, StoreError> {
        use std::ops::Bound;
        let mut agg = UsageAggregate::zero(agent_id, period);
        let (lo, hi) = match period.bounds(at) {
            Some((s, e)) => ((s.as_micros(), 0), Bound::Excluded((e.as_micros(), 0))),
            None => ((i64::MIN, 0), Bound::Unbounded),
        };
        for e in self.range(agent_id, lo, hi) {
            agg.add(&e.metrics);
        }
        Ok(agg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> UnixTime {
        s.parse::<Timestamp>().unwrap().unix()
    }
    fn show(u: UnixTime) -> String {
        Timestamp::from_unix(u).to_string()
    }

    #[test]
    fn the_oldest_events_are_forgotten_past_the_bound() {
        let mut s = MemoryMeteringStore::with_retained_events(3);
        for (i, agent) in ["a", "b", "a", "b", "a"].iter().enumerate() {
            let e = UsageEvent {
                task_id: format!("t{i}"),
                agent_id: (*agent).into(),
                consumer_id: "c".into(),
                metrics: super::super::UsageMetrics::default(),
                timestamp: Timestamp::from_unix(UnixTime::from_secs(100 + i as i64)),
            };
            s.record(&e).unwrap();
            assert!(s.len() <= 3);
        }
        let all = |agent: &str| {
            s.query(agent, UnixTime::from_secs(0), UnixTime::from_secs(1000))
                .unwrap()
                .into_iter()
                .map(|e| e.task_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(all("a"), ["t2", "t4"]);
        assert_eq!(all("b"), ["t3"]);
    }

    #[test]
    fn period_bounds() {
        let at = t("2024-02-29T23:59:59.999999Z");
        let b = |p: AggregatePeriod| {
            p.bounds(at)
                .map(|(s, e)| (show(s), show(e)))
                .unwrap_or_default()
        };
        assert_eq!(
            b(AggregatePeriod::Hour),
            ("2024-02-29T23:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        assert_eq!(
            b(AggregatePeriod::Day),
            ("2024-02-29T00:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        // 2024-02-29 is a Thursday.
        assert_eq!(
            b(AggregatePeriod::Week),
            ("2024-02-26T00:00:00Z".into(), "2024-03-04T00:00:00Z".into())
        );
        assert_eq!(
            b(AggregatePeriod::Month),
            ("2024-02-01T00:00:00Z".into(), "2024-03-01T00:00:00Z".into())
        );
        assert_eq!(AggregatePeriod::Total.bounds(at), None);
        let dec = t("2025-12-31T12:00:00Z");
        let (s, e) = AggregatePeriod::Month.bounds(dec).unwrap();
        assert_eq!(
            (show(s), show(e)),
            ("2025-12-01T00:00:00Z".into(), "2026-01-01T00:00:00Z".into())
        );
        // Before the epoch too.
        let (s, _) = AggregatePeriod::Week
            .bounds(t("1969-12-31T10:00:00Z"))
            .unwrap();
        assert_eq!(show(s), "1969-12-29T00:00:00Z");
    }

    #[test]
    fn period_names() {
        for p in AggregatePeriod::ALL {
            assert_eq!(p.as_str().parse::<AggregatePeriod>(), Ok(p));
        }
        assert_eq!(" Day ".parse::<AggregatePeriod>(), Ok(AggregatePeriod::Day));
        let err = "year".parse::<AggregatePeriod>().unwrap_err();
        assert!(err.to_string().contains("'hour', 'day'"), "{err}");
    }

    #[test]
    fn models_match_the_reference_json() {
        let text = r#"{"task_id":"task_1","agent_id":"urn:asap:agent:echo-server","consumer_id":"urn:asap:agent:client","metrics":{"tokens_in":10,"tokens_out":5,"duration_ms":120,"api_calls":2},"timestamp":"2026-01-01T00:00:00Z"}"#;
        let e: UsageEvent = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), text);
        let e: UsageEvent = serde_json::from_str(
            r#"{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(e.metrics, UsageMetrics::default());
        assert!(serde_json::from_str::<UsageEvent>(
            r#"{"task_id":"t","agent_id":"a","consumer_id":"c","timestamp":"2026-01-01T00:00:00Z","x":1}"#
        )
        .is_err());
        let agg = UsageAggregate::zero("a", AggregatePeriod::Day);
        assert_eq!(
            serde_json::to_string(&agg).unwrap(),
            r#"{"agent_id":"a","period":"day","total_tokens":0,"total_duration":0,"total_tasks":0,"total_api_calls":0}"#
        );
    }
}
