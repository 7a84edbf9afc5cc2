//! The two halves of reliable delivery under arbitrary operation sequences
//! (quinn's model): the sender's AckTracker and the receiver's DedupWindow,
//! with time moving forward by fuzzed steps. Invariants are checked after
//! every operation, and at the end every tracked envelope must have ended
//! exactly once and every waiter must have come back exactly once.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use asap_proto::model::{
    AckStatus, AgentUrn, Envelope, MessageAck, Payload, TaskCancel, Timestamp, UnixTime,
};
use asap_proto::reliability::{
    set_requires_ack, AckConfig, AckEvent, AckGiveUp, AckMatch, AckTracker, Admission, DedupConfig,
    DedupError, DedupKey, DedupTicket, DedupWindow, RetransmitCause,
};
use asap_proto::server::ReplayWindow;
use libfuzzer_sys::fuzz_target;

const WALL0: i64 = 1_767_225_600;

fn envelope(id: &str, stamp: UnixTime) -> Envelope {
    let mut e = Envelope::new(
        id.into(),
        Timestamp::from_unix(stamp),
        AgentUrn::new("urn:asap:agent:a").unwrap(),
        AgentUrn::new("urn:asap:agent:b").unwrap(),
        Payload::TaskCancel(TaskCancel {
            task_id: "t".into(),
            reason: None,
        }),
    );
    assert!(set_requires_ack(&mut e));
    e
}

struct Sender {
    tracker: AckTracker,
    max_retries: u32,
    max_pending: usize,
    /// id → (envelope as tracked, retransmissions after timeouts)
    live: HashMap<String, (Envelope, u32)>,
    tracked: usize,
    ended: usize,
}

impl Sender {
    /// Drains the tracker's events after `cause` and checks each one has it.
    fn drain(&mut self, cause: Cause, now: Instant, wall: UnixTime) {
        while let Some(ev) = self.tracker.poll_event() {
            match ev {
                AckEvent::Retransmit {
                    envelope,
                    cause: why,
                    ..
                } => {
                    let expected = match cause {
                        Cause::Timeout => RetransmitCause::AckTimeout,
                        Cause::Reconnect => RetransmitCause::Reconnect,
                        other => panic!("retransmission without a cause after {other:?}"),
                    };
                    assert_eq!(why, expected);
                    let (tracked, retries) = self
                        .live
                        .get_mut(&envelope.id)
                        .expect("retransmission of an ended envelope");
                    assert_eq!(
                        &*envelope, &*tracked,
                        "a retransmission is the tracked envelope"
                    );
                    if why == RetransmitCause::AckTimeout {
                        *retries += 1;
                        assert!(*retries <= self.max_retries, "more retries than configured");
                    }
                    // A receiver whose clock is 30 s ahead still accepts it.
                    let receiver_now = wall.saturating_add(Duration::from_secs(30));
                    assert!(
                        ReplayWindow::default().check(tracked, receiver_now).is_ok(),
                        "retransmission outside the replay window"
                    );
                }
                AckEvent::Acked {
                    envelope_id,
                    status,
                    ..
                } => {
                    match &cause {
                        Cause::Ack(id, st) => assert_eq!((id, st), (&envelope_id, &status)),
                        other => panic!("ack event without an ack after {other:?}"),
                    }
                    assert!(self.live.remove(&envelope_id).is_some(), "second outcome");
                    self.ended += 1;
                }
                AckEvent::GaveUp {
                    envelope_id,
                    reason,
                    ..
                } => {
                    assert!(
                        matches!(cause, Cause::Timeout | Cause::Reconnect | Cause::Close),
                        "give-up without a cause"
                    );
                    assert_eq!(reason == AckGiveUp::Closed, matches!(cause, Cause::Close));
                    assert!(self.live.remove(&envelope_id).is_some(), "second outcome");
                    self.ended += 1;
                }
                _ => unreachable!("no other events exist"),
            }
        }
        assert_eq!(self.tracker.len(), self.live.len());
        assert!(self.tracker.len() <= self.max_pending);
        if matches!(cause, Cause::Timeout) {
            if let Some(d) = self.tracker.poll_timeout() {
                assert!(d > now, "ack deadline not after the now just handled");
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Cause {
    Track,
    Ack(String, AckStatus),
    Timeout,
    Reconnect,
    Close,
}

struct Receiver {
    window: DedupWindow<u64>,
    config: DedupConfig,
    /// Live tickets and the waiters registered on each.
    tickets: Vec<(DedupTicket, Vec<u64>)>,
    registered: HashSet<u64>,
    returned: HashSet<u64>,
    next_waiter: u64,
}

impl Receiver {
    fn take(&mut self, i: u8) -> Option<(DedupTicket, Vec<u64>)> {
        if self.tickets.is_empty() {
            return None;
        }
        let n = usize::from(i) % self.tickets.len();
        Some(self.tickets.swap_remove(n))
    }

    fn handed_back(&mut self, expected: Vec<u64>, got: Vec<u64>) {
        assert_eq!(expected, got, "waiters come back in order, all of them");
        for w in got {
            assert!(self.returned.insert(w), "waiter handed back twice");
        }
    }

    fn check_bounds(&self) {
        let s = self.window.stats();
        let c = self.window.config();
        assert!(s.completed <= c.max_completed);
        assert!(s.in_flight <= c.max_in_flight);
        assert!(s.waiters <= c.max_waiters);
        assert!(s.held_bytes <= c.max_bytes, "dedup bytes over budget");
        assert_eq!(s.in_flight, self.tickets.len());
        assert_eq!(s.completed + s.in_flight, self.window.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let second = data.get(1).copied().unwrap_or(0);
    let t0 = Instant::now();
    let mut now = t0;
    let wall = |now: Instant| UnixTime::from_secs(WALL0).saturating_add(now - t0);

    let max_retries = u32::from(flags % 4);
    let max_pending = 1 + usize::from((flags >> 2) % 6);
    let mut sender = Sender {
        tracker: AckTracker::new(AckConfig {
            max_retries,
            max_pending,
            await_processed: flags & 0x20 != 0,
            jitter_ratio: if flags & 0x40 != 0 { 0.1 } else { 0.0 },
            jitter_seed: u64::from(second),
            ..AckConfig::default()
        }),
        max_retries,
        max_pending,
        live: HashMap::new(),
        tracked: 0,
        ended: 0,
    };
    let dedup_config = DedupConfig {
        max_completed: 1 + usize::from(second % 4),
        max_in_flight: 1 + usize::from((second >> 2) % 4),
        max_waiters: 1 + usize::from((second >> 4) % 4),
        max_bytes: if flags & 0x80 != 0 { 160 } else { 1 << 20 },
        ..DedupConfig::default()
    };
    let mut receiver = Receiver {
        window: DedupWindow::new(dedup_config),
        config: dedup_config,
        tickets: Vec::new(),
        registered: HashSet::new(),
        returned: HashSet::new(),
        next_waiter: 0,
    };

    for pair in data.chunks(2).skip(1) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        match op % 10 {
            0 => now += Duration::from_millis(u64::from(arg) * 997),
            1 => {
                let id = format!("e{}", arg % 8);
                let age = Duration::from_secs(u64::from(arg / 8) * 15);
                let e = envelope(&id, wall(now).saturating_sub(age));
                let expect_ok = !sender.live.contains_key(&id) && sender.live.len() < max_pending;
                let res = sender.tracker.track(&e, now, wall(now));
                assert_eq!(res.is_ok(), expect_ok, "{res:?}");
                if res.is_ok() {
                    sender.live.insert(id, (e, 0));
                    sender.tracked += 1;
                }
                sender.drain(Cause::Track, now, wall(now));
            }
            2 => {
                let id = format!("e{}", arg % 8);
                let status = [
                    AckStatus::Received,
                    AckStatus::Processed,
                    AckStatus::Rejected,
                ][usize::from(arg / 8 % 3)];
                let m = sender.tracker.handle_ack(
                    &MessageAck {
                        original_envelope_id: id.clone(),
                        status,
                        error: None,
                    },
                    now,
                );
                assert_eq!(m == AckMatch::Unknown, !sender.live.contains_key(&id));
                sender.drain(Cause::Ack(id, status), now, wall(now));
            }
            3 => {
                sender.tracker.handle_timeout(now);
                sender.drain(Cause::Timeout, now, wall(now));
            }
            4 if arg % 8 == 0 => {
                sender.tracker.handle_close(now);
                sender.drain(Cause::Close, now, wall(now));
            }
            4 => {
                sender.tracker.handle_reconnect(now);
                sender.drain(Cause::Reconnect, now, wall(now));
            }
            5 | 6 => {
                let key = DedupKey::new(
                    AgentUrn::new(if arg & 0x80 != 0 {
                        "urn:asap:agent:a"
                    } else {
                        "urn:asap:agent:b"
                    })
                    .unwrap(),
                    format!("e{}", arg % 8),
                );
                let running = receiver.tickets.iter().position(|(t, _)| t.key() == &key);
                receiver.next_waiter += 1;
                let w = receiver.next_waiter;
                match receiver.window.check(key, w, wall(now)) {
                    Ok(Admission::New(t)) => {
                        assert!(running.is_none(), "a running envelope admitted twice");
                        receiver.tickets.push((t, Vec::new()));
                    }
                    Ok(Admission::InProgress) => {
                        let i = running.expect("in progress without a running handler");
                        receiver.tickets[i].1.push(w);
                        receiver.registered.insert(w);
                    }
                    Ok(Admission::Duplicate(_)) => assert!(running.is_none()),
                    Err(DedupError::WaitersFull { .. }) => assert!(running.is_some()),
                    Err(_) => assert!(running.is_none()),
                }
            }
            7 => {
                if let Some((t, expected)) = receiver.take(arg) {
                    let got = receiver
                        .window
                        .handle_completed(&t, vec![arg; usize::from(arg % 64)], wall(now))
                        .unwrap();
                    receiver.handed_back(expected, got);
                    assert!(
                        receiver.window.handle_abandoned(&t).is_err(),
                        "a spent ticket is refused"
                    );
                }
            }
            8 => {
                if let Some((t, expected)) = receiver.take(arg) {
                    let got = receiver.window.handle_abandoned(&t).unwrap();
                    receiver.handed_back(expected, got);
                }
            }
            _ if arg % 4 == 0 => {
                // A restart: completed entries survive through their records;
                // running handlers and their waiters are lost with the process.
                let rows = receiver.window.records();
                let n = rows.len();
                receiver.window = DedupWindow::new(receiver.config);
                assert!(receiver.window.restore(rows, wall(now)) <= n);
                for (_, waiters) in receiver.tickets.drain(..) {
                    for w in waiters {
                        receiver.registered.remove(&w);
                    }
                }
            }
            _ => {
                receiver.window.handle_timeout(wall(now));
                if let Some(d) = receiver.window.poll_timeout() {
                    assert!(d > wall(now), "dedup expiry not after the now just handled");
                }
            }
        }
        receiver.check_bounds();
    }

    // Left alone, every tracked envelope ends, exactly once.
    let mut rounds = 0;
    while let Some(at) = sender.tracker.poll_timeout() {
        now = now.max(at);
        sender.tracker.handle_timeout(now);
        sender.drain(Cause::Timeout, now, wall(now));
        rounds += 1;
        assert!(rounds < 1_000, "ack deadlines never run out");
    }
    assert!(sender.live.is_empty());
    assert_eq!(
        sender.ended, sender.tracked,
        "exactly one outcome per tracked envelope"
    );

    // Every registered waiter comes back exactly once.
    while let Some((t, expected)) = receiver.take(0) {
        let got = receiver
            .window
            .handle_completed(&t, Vec::new(), wall(now))
            .unwrap();
        receiver.handed_back(expected, got);
    }
    assert_eq!(receiver.registered, receiver.returned);
    receiver.check_bounds();
});
