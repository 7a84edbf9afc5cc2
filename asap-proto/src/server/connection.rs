//! The connection budget: how many connections may be open (in all and per
//! client IP), which waiting connection gives way when the budget is full, and
//! when a connection that waits for a request head is closed (header and
//! keep-alive timeouts). One [`ConnectionBudget`] serves all connections of a
//! listener; the adapter keeps it behind a lock and closes what it says.
//!
//! ```text
//! adapter                                      ConnectionBudget
//! accept ───────────── handle_open(ip, now) ─▶ Accepted(id) | Refused(503 + Retry-After)
//! first byte of a head handle_head_started ──▶ (header timeout from here on a kept-alive one)
//! head complete ────── handle_request(id) ───▶ busy: never reaped, no head timeout
//! answer written ───── handle_response(id) ──▶ waiting again (keep-alive timeout)
//! socket closed ────── handle_closed(id)
//! accept failed: EMFILE handle_descriptors_exhausted(now) (gives way: oldest waiting)
//! sleep until poll_timeout(), then handle_timeout(now)
//! after every input:   poll_close() ─────────▶ Close { id, answer }: write answer, close
//! ```
//!
//! ```
//! use std::time::{Duration, Instant};
//! use asap_proto::server::{Admission, ConnectionBudget, ConnectionLimits, Timeouts};
//!
//! let limits = ConnectionLimits { max_connections: Some(2), max_per_ip: Some(2), ..Default::default() };
//! let mut budget = ConnectionBudget::new(&limits, &Timeouts::default(), None);
//! let t0 = Instant::now(); // adapters read the clock; the core is handed it
//! let ip = [127, 0, 0, 1].into();
//! let Admission::Accepted(idle) = budget.handle_open(ip, t0) else { panic!() };
//! let Admission::Accepted(busy) = budget.handle_open(ip, t0) else { panic!() };
//! budget.handle_request(busy, t0);
//! // Full: the waiting connection gives way to the newcomer.
//! let Admission::Accepted(_new) = budget.handle_open(ip, t0 + Duration::from_millis(1)) else { panic!() };
//! let close = budget.poll_close().unwrap();
//! assert_eq!(close.id, idle);
//! assert!(close.answer.is_none()); // it had sent nothing: just close it
//! // A deadline is reported, never slept on.
//! let at = budget.poll_timeout().unwrap();
//! budget.handle_timeout(at);
//! assert!(budget.poll_close().is_some()); // the newcomer sent no head in time
//! assert!(budget.poll_timeout().is_none()); // the busy one has no head timeout
//! ```

use core::net::IpAddr;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use http::Response;

use super::answer;
use super::body_budget::checked_add;
use super::config::{ConnectionLimits, Timeouts};

/// One connection known to a [`ConnectionBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(u64);

/// The verdict on a new connection.
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Serve it; report its life with this id.
    Accepted(ConnectionId),
    /// Write this (503, `Retry-After`, `Connection: close`) and close it: every
    /// connection that could give way is busy with a request.
    Refused(Response<Vec<u8>>),
}

/// Why the budget closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The head was not complete within [`Timeouts::header`].
    HeaderTimeout,
    /// Kept alive with no request for [`Timeouts::keep_alive`].
    KeepAliveTimeout,
    /// It was waiting when the budget was full and a new connection came (or
    /// descriptors ran out): the oldest waiting connection gives way.
    GaveWay,
}

/// A connection to close now. It no longer counts against the budget.
#[derive(Debug)]
#[must_use]
pub struct Close {
    /// Which.
    pub id: ConnectionId,
    /// Why.
    pub reason: CloseReason,
    /// Write this first when present (part of a head arrived, so an answer still
    /// makes sense: 408 for a timeout, 503 when it gave way); else just close.
    pub answer: Option<Response<Vec<u8>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No request under way: since when, whether it ever had one, and when the
    /// first byte of a head came.
    Waiting {
        since: Instant,
        kept_alive: bool,
        head_started: Option<Instant>,
    },
    /// A request is being read or answered, or the connection was upgraded.
    Busy,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    peer: IpAddr,
    state: State,
}

/// Accounting of open connections: a budget in all and per IP, the oldest
/// waiting connection giving way first, and the head/keep-alive deadlines.
/// Memory is bounded by the budget.
#[derive(Debug)]
pub struct ConnectionBudget {
    max: usize,
    per_ip: usize,
    header: Duration,
    keep_alive: Duration,
    retry_after_secs: u64,
    next_id: u64,
    entries: HashMap<ConnectionId, Entry>,
    per_ip_open: HashMap<IpAddr, usize>,
    /// Waiting connections, oldest first (they give way in this order).
    waiting: BTreeSet<(Instant, ConnectionId)>,
    waiting_by_ip: HashMap<IpAddr, BTreeSet<(Instant, ConnectionId)>>,
    deadlines: BTreeSet<(Instant, ConnectionId)>,
    closing: VecDeque<Close>,
}

impl ConnectionBudget {
    /// A budget from `limits` for a process whose soft descriptor limit is
    /// `fd_limit` (see [`ConnectionLimits::resolve`]).
    #[must_use]
    pub fn new(limits: &ConnectionLimits, timeouts: &Timeouts, fd_limit: Option<u64>) -> Self {
        let (max, per_ip) = limits.resolve(fd_limit);
        Self {
            max,
            per_ip,
            header: timeouts.header,
            keep_alive: timeouts.keep_alive,
            retry_after_secs: limits.retry_after_secs,
            next_id: 0,
            entries: HashMap::new(),
            per_ip_open: HashMap::new(),
            waiting: BTreeSet::new(),
            waiting_by_ip: HashMap::new(),
            deadlines: BTreeSet::new(),
            closing: VecDeque::new(),
        }
    }

    /// Most open connections.
    #[must_use]
    pub fn max_connections(&self) -> usize {
        self.max
    }

    /// Most open connections per client IP.
    #[must_use]
    pub fn max_per_ip(&self) -> usize {
        self.per_ip
    }

    /// Connections counted as open.
    #[must_use]
    pub fn open(&self) -> usize {
        self.entries.len()
    }

    /// Input: a connection from `peer` was accepted at `now`. When the budget
    /// (or `peer`'s share) is full, the oldest waiting connection (of `peer`,
    /// for its share) gives way ([`poll_close`](Self::poll_close)); when none
    /// waits, the newcomer is refused.
    pub fn handle_open(&mut self, peer: IpAddr, now: Instant) -> Admission {
        if self.per_ip_open.get(&peer).copied().unwrap_or(0) >= self.per_ip {
            let oldest = self
                .waiting_by_ip
                .get(&peer)
                .and_then(BTreeSet::first)
                .map(|&(_, id)| id);
            match oldest {
                Some(id) => self.give_way(id),
                None => {
                    return Admission::Refused(answer::busy(
                        self.retry_after_secs,
                        &format!(
                            "this client already has {} connections open, its share",
                            self.per_ip
                        ),
                    ))
                }
            }
        }
        if self.entries.len() >= self.max {
            match self.waiting.first().map(|&(_, id)| id) {
                Some(id) => self.give_way(id),
                None => {
                    return Admission::Refused(answer::busy(
                        self.retry_after_secs,
                        &format!("all {} connections are busy", self.max),
                    ))
                }
            }
        }
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        *self.per_ip_open.entry(peer).or_insert(0) += 1;
        self.entries.insert(
            id,
            Entry {
                peer,
                state: State::Busy,
            },
        );
        self.set_waiting(id, now, false);
        Admission::Accepted(id)
    }

    /// Input: the first byte of a head arrived on a waiting connection; a
    /// kept-alive one now has [`Timeouts::header`] to complete it.
    pub fn handle_head_started(&mut self, id: ConnectionId, now: Instant) {
        let Some(&Entry { state, .. }) = self.entries.get(&id) else {
            return;
        };
        let State::Waiting {
            since,
            kept_alive,
            head_started: None,
        } = state
        else {
            return;
        };
        let started = State::Waiting {
            since,
            kept_alive,
            head_started: Some(now),
        };
        if let (Some(old), Some(new)) = (self.deadline_of(state), self.deadline_of(started)) {
            self.deadlines.remove(&(old, id));
            self.deadlines.insert((new, id));
        }
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.state = started;
        }
    }

    /// Input: a complete head arrived; the connection is busy until
    /// [`handle_response`](Self::handle_response) (or for good, once upgraded).
    /// `false` when the budget already closed it (answer nothing more on it).
    pub fn handle_request(&mut self, id: ConnectionId, _now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        let state = std::mem::replace(&mut entry.state, State::Busy);
        let peer = entry.peer;
        self.unlist(id, peer, state);
        true
    }

    /// Input: the answer went out at `now`; the connection waits for its next request.
    pub fn handle_response(&mut self, id: ConnectionId, now: Instant) {
        if matches!(self.entries.get(&id), Some(e) if e.state == State::Busy) {
            self.set_waiting(id, now, true);
        }
    }

    /// Input: the connection is closed (by the peer, or after a [`Close`]).
    pub fn handle_closed(&mut self, id: ConnectionId) {
        if let Some(entry) = self.entries.remove(&id) {
            self.forget(id, entry);
        }
    }

    /// Input: accepting failed for lack of descriptors: the oldest waiting
    /// connection gives way, if any (the adapter retries the accept after).
    pub fn handle_descriptors_exhausted(&mut self, _now: Instant) {
        if let Some(&(_, id)) = self.waiting.first() {
            self.give_way(id);
        }
    }

    /// The next head or keep-alive deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Input: deadlines up to `now` passed; the expired connections are
    /// handed out by [`poll_close`](Self::poll_close). Early calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            let Some(entry) = self.entries.remove(&id) else {
                self.deadlines.remove(&(at, id));
                continue;
            };
            let (reason, answer) = match entry.state {
                State::Waiting {
                    head_started: Some(_),
                    ..
                } => (
                    CloseReason::HeaderTimeout,
                    Some(answer::request_timeout(&format!(
                        "the request head was not complete within {} s (header timeout)",
                        self.header.as_secs_f64()
                    ))),
                ),
                State::Waiting {
                    kept_alive: true, ..
                } => (CloseReason::KeepAliveTimeout, None),
                _ => (CloseReason::HeaderTimeout, None),
            };
            self.forget(id, entry);
            self.closing.push_back(Close { id, reason, answer });
        }
    }

    /// The next connection to close, with what to write first.
    pub fn poll_close(&mut self) -> Option<Close> {
        self.closing.pop_front()
    }

    fn give_way(&mut self, id: ConnectionId) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        let answer = matches!(
            entry.state,
            State::Waiting {
                head_started: Some(_),
                ..
            }
        )
        .then(|| answer::busy(self.retry_after_secs, "the connection budget is full"));
        self.forget(id, entry);
        self.closing.push_back(Close {
            id,
            reason: CloseReason::GaveWay,
            answer,
        });
    }

    fn set_waiting(&mut self, id: ConnectionId, now: Instant, kept_alive: bool) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let state = State::Waiting {
            since: now,
            kept_alive,
            head_started: None,
        };
        entry.state = state;
        let peer = entry.peer;
        self.waiting.insert((now, id));
        self.waiting_by_ip
            .entry(peer)
            .or_default()
            .insert((now, id));
        if let Some(at) = self.deadline_of(state) {
            self.deadlines.insert((at, id));
        }
    }

    /// Removes `id` from the waiting and deadline indexes.
    fn unlist(&mut self, id: ConnectionId, peer: IpAddr, state: State) {
        if let State::Waiting { since, .. } = state {
            self.waiting.remove(&(since, id));
            if let Some(set) = self.waiting_by_ip.get_mut(&peer) {
                set.remove(&(since, id));
                if set.is_empty() {
                    self.waiting_by_ip.remove(&peer);
                }
            }
            if let Some(at) = self.deadline_of(state) {
                self.deadlines.remove(&(at, id));
            }
        }
    }

    fn forget(&mut self, id: ConnectionId, entry: Entry) {
        self.unlist(id, entry.peer, entry.state);
        if let Some(n) = self.per_ip_open.get_mut(&entry.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_ip_open.remove(&entry.peer);
            }
        }
    }

    /// The head/keep-alive deadline of a state (`None`: busy, no deadline here).
    fn deadline_of(&self, state: State) -> Option<Instant> {
        let State::Waiting {
            since,
            kept_alive,
            head_started,
        } = state
        else {
            return None;
        };
        Some(match (kept_alive, head_started) {
            // A new connection owes a head from the start.
            (false, _) => checked_add(since, self.header),
            (true, Some(at)) => checked_add(at, self.header),
            (true, None) => checked_add(since, self.keep_alive),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        // One base for the whole test binary: tests compare instants built from it.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(crate::test_clock::base)
    }

    fn at(ms: u64) -> Instant {
        t0() + Duration::from_millis(ms)
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn budget(max: usize, per_ip: usize) -> ConnectionBudget {
        let limits = ConnectionLimits {
            max_connections: Some(max),
            max_per_ip: Some(per_ip),
            retry_after_secs: 3,
        };
        let timeouts = Timeouts {
            header: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            ..Timeouts::default()
        };
        ConnectionBudget::new(&limits, &timeouts, None)
    }

    fn accept(b: &mut ConnectionBudget, peer: IpAddr, now: Instant) -> ConnectionId {
        match b.handle_open(peer, now) {
            Admission::Accepted(id) => id,
            Admission::Refused(r) => panic!("refused: {:?}", r.body()),
        }
    }

    #[test]
    fn a_full_budget_of_busy_connections_refuses_with_503_and_retry_after() {
        let mut b = budget(2, 2);
        for _ in 0..2 {
            let id = accept(&mut b, ip(1), t0());
            assert!(b.handle_request(id, t0()));
        }
        let Admission::Refused(r) = b.handle_open(ip(2), at(1)) else {
            panic!("accepted past the budget")
        };
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(
            r.body(),
            br#"{"detail":"Server busy: all 2 connections are busy; retry after 3 s"}"#
        );
        assert!(b.poll_close().is_none());
        assert_eq!(b.open(), 2);
    }

    #[test]
    fn the_oldest_waiting_connection_gives_way_and_one_with_a_partial_head_is_told_so() {
        let mut b = budget(3, 3);
        let old = accept(&mut b, ip(1), at(0));
        let partial = accept(&mut b, ip(1), at(1));
        let busy = accept(&mut b, ip(2), at(2));
        b.handle_head_started(partial, at(3));
        assert!(b.handle_request(busy, at(3)));
        let _a = accept(&mut b, ip(3), at(4));
        let c = b.poll_close().unwrap();
        assert_eq!(
            (c.id, c.reason, c.answer.is_none()),
            (old, CloseReason::GaveWay, true)
        );
        let _b = accept(&mut b, ip(3), at(5));
        let c = b.poll_close().unwrap();
        assert_eq!(c.id, partial);
        assert_eq!(c.answer.unwrap().status(), 503);
        assert_eq!(b.open(), 3);
        // The closed ones report closing later: harmless.
        b.handle_closed(old);
        b.handle_closed(partial);
        assert_eq!(b.open(), 3);
    }

    #[test]
    fn an_ip_over_its_share_gives_way_from_its_own_connections_only() {
        let mut b = budget(10, 2);
        let other = accept(&mut b, ip(9), at(0));
        let mine = accept(&mut b, ip(1), at(1));
        let busy = accept(&mut b, ip(1), at(2));
        assert!(b.handle_request(busy, at(2)));
        let _new = accept(&mut b, ip(1), at(3));
        assert_eq!(b.poll_close().unwrap().id, mine);
        assert!(b.poll_close().is_none());
        // Its share is now one busy + one waiting; make both busy: refused.
        assert!(b.handle_request(_new, at(4)));
        let Admission::Refused(r) = b.handle_open(ip(1), at(5)) else {
            panic!()
        };
        assert!(std::str::from_utf8(r.body()).unwrap().contains("its share"));
        let _ = other;
    }

    #[test]
    fn head_and_keep_alive_deadlines() {
        let mut b = budget(10, 10);
        let fresh = accept(&mut b, ip(1), at(0));
        assert_eq!(b.poll_timeout(), Some(at(10_000)));
        // Served at 1 s: kept alive until 31 s.
        assert!(b.handle_request(fresh, at(500)));
        assert_eq!(b.poll_timeout(), None);
        b.handle_response(fresh, at(1_000));
        assert_eq!(b.poll_timeout(), Some(at(31_000)));
        // Its next head starts at 25 s: 10 s to finish it.
        b.handle_head_started(fresh, at(25_000));
        assert_eq!(b.poll_timeout(), Some(at(35_000)));
        b.handle_timeout(at(34_999));
        assert!(b.poll_close().is_none());
        b.handle_timeout(at(35_000));
        let c = b.poll_close().unwrap();
        assert_eq!(c.reason, CloseReason::HeaderTimeout);
        let r = c.answer.unwrap();
        assert_eq!(r.status(), 408);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(b.open(), 0);

        let idle = accept(&mut b, ip(1), at(0));
        assert!(b.handle_request(idle, at(1)));
        b.handle_response(idle, at(2));
        b.handle_timeout(at(30_002));
        let c = b.poll_close().unwrap();
        assert_eq!(
            (c.id, c.reason, c.answer.is_none()),
            (idle, CloseReason::KeepAliveTimeout, true)
        );

        let silent = accept(&mut b, ip(1), at(0));
        b.handle_timeout(at(10_000));
        let c = b.poll_close().unwrap();
        assert_eq!(
            (c.id, c.reason, c.answer.is_none()),
            (silent, CloseReason::HeaderTimeout, true)
        );
    }

    #[test]
    fn descriptor_exhaustion_closes_the_oldest_waiting_connection() {
        let mut b = budget(10, 10);
        let a = accept(&mut b, ip(1), at(0));
        let _b = accept(&mut b, ip(1), at(1));
        b.handle_descriptors_exhausted(at(2));
        assert_eq!(b.poll_close().unwrap().id, a);
        // Closed connections answer nothing more.
        assert!(!b.handle_request(a, at(3)));
    }

    #[test]
    fn the_budget_follows_the_descriptor_limit() {
        let b = ConnectionBudget::new(
            &ConnectionLimits::default(),
            &Timeouts::default(),
            Some(256),
        );
        assert_eq!((b.max_connections(), b.max_per_ip()), (160, 80));
        let b = ConnectionBudget::new(&ConnectionLimits::default(), &Timeouts::default(), Some(10));
        assert_eq!((b.max_connections(), b.max_per_ip()), (1, 1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Open(u8),
        HeadStarted(usize),
        Request(usize),
        Response(usize),
        Closed(usize),
        Exhausted,
        Advance(u64),
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..4).prop_map(Op::Open),
            2 => (0usize..16).prop_map(Op::HeadStarted),
            2 => (0usize..16).prop_map(Op::Request),
            2 => (0usize..16).prop_map(Op::Response),
            1 => (0usize..16).prop_map(Op::Closed),
            1 => Just(Op::Exhausted),
            2 => (0u64..20_000).prop_map(Op::Advance),
            2 => Just(Op::Timeout),
        ]
    }

    proptest! {
        /// Open connections never exceed the budget or a share; every close has
        /// a cause (a deadline passed, a newcomer at a full budget, exhaustion)
        /// and names a connection that was open and not busy; after
        /// handle_timeout(now) the next deadline is later than now.
        #[test]
        fn budget_invariants(max in 1usize..6, per_ip in 1usize..6, ops in proptest::collection::vec(op(), 0..80)) {
            let mut b = budget(max, per_ip);
            let mut now = t0();
            let mut ids: Vec<ConnectionId> = Vec::new();
            let mut open: HashMap<ConnectionId, (IpAddr, bool)> = HashMap::new();
            for op in ops {
                let mut cause = false;
                match op {
                    Op::Open(n) => {
                        let full = open.len() >= b.max_connections()
                            || open.values().filter(|(p, _)| *p == ip(n)).count() >= b.max_per_ip();
                        cause = full;
                        if let Admission::Accepted(id) = b.handle_open(ip(n), now) {
                            ids.push(id);
                            open.insert(id, (ip(n), false));
                        } else {
                            prop_assert!(full);
                        }
                    }
                    Op::HeadStarted(i) => if let Some(&id) = ids.get(i) { b.handle_head_started(id, now) },
                    Op::Request(i) => if let Some(&id) = ids.get(i) {
                        let known = b.handle_request(id, now);
                        prop_assert_eq!(known, open.contains_key(&id));
                        if let Some(e) = open.get_mut(&id) { e.1 = true; }
                    },
                    Op::Response(i) => if let Some(&id) = ids.get(i) {
                        b.handle_response(id, now);
                        if let Some(e) = open.get_mut(&id) { e.1 = false; }
                    },
                    Op::Closed(i) => if let Some(&id) = ids.get(i) { b.handle_closed(id); open.remove(&id); },
                    Op::Exhausted => { cause = true; b.handle_descriptors_exhausted(now) },
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Timeout => {
                        cause = b.poll_timeout().is_some_and(|t| t <= now);
                        b.handle_timeout(now);
                        if let Some(t) = b.poll_timeout() { prop_assert!(t > now); }
                    }
                }
                while let Some(c) = b.poll_close() {
                    prop_assert!(cause, "close without a cause: {:?}", c);
                    let Some((_, busy)) = open.remove(&c.id) else { panic!("closed an unknown connection") };
                    prop_assert!(!busy, "a busy connection was closed");
                }
                prop_assert_eq!(b.open(), open.len());
                prop_assert!(b.open() <= b.max_connections());
                prop_assert!(b.waiting.len() <= b.open() && b.deadlines.len() <= b.open());
            }
        }
    }
}
