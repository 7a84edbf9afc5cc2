//! Which pooled connection to use: [`Pool`] (spec 13.7,
//! `WebSocketConnectionPool(max_size=10, idle_timeout=60 s)`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Pool policy. `Default` is the reference's: 10 connections, 60 s idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections open at once (idle and in use).
    pub max_size: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_size: 10,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What [`Pool::checkout`] decided.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Checkout<C> {
    /// Use this idle connection (the oldest idle one: FIFO).
    Reuse(C),
    /// Open a new connection (a slot is reserved: [`Pool::checkin`] or
    /// [`Pool::handle_lost`] it later).
    Open,
    /// Every slot is in use: wait for a [`Pool::checkin`] and ask again.
    Wait,
}

/// The bookkeeping of a connection pool, sans I/O: idle connections in FIFO
/// order with the time each went idle, and the slots in use. The adapter
/// owns the connections (`C`), opens and closes them.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::ws::{Checkout, Pool, PoolConfig};
/// let t0 = Instant::now();
/// let mut pool: Pool<&str> = Pool::new(PoolConfig { max_size: 1, ..Default::default() });
/// assert_eq!(pool.checkout(t0).0, Checkout::Open);
/// assert_eq!(pool.checkout(t0).0, Checkout::Wait);          // the one slot is taken
/// pool.checkin("conn-1", t0);
/// assert_eq!(pool.checkout(t0).0, Checkout::Reuse("conn-1"));
/// pool.checkin("conn-1", t0);
/// let (decision, stale) = pool.checkout(t0 + Duration::from_secs(61));
/// assert_eq!((decision, stale), (Checkout::Open, vec!["conn-1"])); // close the stale one
/// ```
#[derive(Debug)]
pub struct Pool<C> {
    config: PoolConfig,
    idle: VecDeque<(C, Instant)>,
    in_use: usize,
}

impl<C> Pool<C> {
    /// An empty pool.
    #[must_use]
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            idle: VecDeque::new(),
            in_use: 0,
        }
    }

    /// Decides how a caller gets a connection at `now`; also returns the idle
    /// connections that went stale (close them).
    pub fn checkout(&mut self, now: Instant) -> (Checkout<C>, Vec<C>) {
        let mut stale = Vec::new();
        while let Some((c, since)) = self.idle.pop_front() {
            if now.saturating_duration_since(since) > self.config.idle_timeout {
                stale.push(c);
            } else {
                self.in_use += 1;
                return (Checkout::Reuse(c), stale);
            }
        }
        if self.in_use < self.config.max_size.max(1) {
            self.in_use += 1;
            (Checkout::Open, stale)
        } else {
            (Checkout::Wait, stale)
        }
    }

    /// Input: a connection in use is idle again (at `now`).
    pub fn checkin(&mut self, conn: C, now: Instant) {
        self.in_use = self.in_use.saturating_sub(1);
        self.idle.push_back((conn, now));
    }

    /// Input: a connection in use died, or opening one failed: its slot is free.
    pub fn handle_lost(&mut self) {
        self.in_use = self.in_use.saturating_sub(1);
    }

    /// Connections in use.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Idle connections held.
    #[must_use]
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_idle_connection_is_reused_up_to_exactly_the_idle_timeout() {
        let t0 = crate::test_clock::base();
        let timeout = Duration::from_secs(60);
        let mut p: Pool<u32> = Pool::new(PoolConfig {
            max_size: 1,
            idle_timeout: timeout,
        });
        assert!(matches!(p.checkout(t0), (Checkout::Open, ref s) if s.is_empty()));
        p.checkin(1, t0);
        // Idle for exactly the timeout: still fresh.
        assert!(matches!(p.checkout(t0 + timeout), (Checkout::Reuse(1), ref s) if s.is_empty()));
        p.checkin(1, t0 + timeout);
        // A microsecond longer: stale, closed, and its slot opened anew.
        let later = t0 + timeout + timeout + Duration::from_micros(1);
        let (got, stale) = p.checkout(later);
        assert!(matches!(got, Checkout::Open));
        assert_eq!(stale, vec![1]);
    }

    #[test]
    fn fifo_reuse_and_lost_slots_come_back() {
        let t0 = crate::test_clock::base();
        let mut p: Pool<u32> = Pool::new(PoolConfig {
            max_size: 2,
            ..Default::default()
        });
        assert_eq!(p.checkout(t0).0, Checkout::Open);
        assert_eq!(p.checkout(t0).0, Checkout::Open);
        assert_eq!(p.checkout(t0).0, Checkout::Wait);
        p.checkin(1, t0);
        p.checkin(2, t0 + Duration::from_secs(1));
        assert_eq!(p.checkout(t0).0, Checkout::Reuse(1), "oldest idle first");
        p.handle_lost();
        assert_eq!(p.in_use(), 0);
        assert_eq!(p.idle(), 1);
    }

    proptest! {
        /// Open plus idle never exceeds max_size; a Wait only when all slots are in use.
        #[test]
        fn never_more_than_max_size(ops in proptest::collection::vec(0u8..4, 1..200)) {
            let t0 = crate::test_clock::base();
            let mut p: Pool<u64> = Pool::new(PoolConfig { max_size: 3, idle_timeout: Duration::from_secs(5) });
            let mut held: Vec<u64> = Vec::new();
            let mut next = 0u64;
            let mut now = t0;
            for op in ops {
                match op {
                    0 => match p.checkout(now).0 {
                        Checkout::Reuse(c) => held.push(c),
                        Checkout::Open => { next += 1; held.push(next); }
                        Checkout::Wait => prop_assert_eq!(p.in_use(), 3),
                    },
                    1 => if let Some(c) = held.pop() { p.checkin(c, now) },
                    2 => if held.pop().is_some() { p.handle_lost() },
                    _ => now += Duration::from_secs(2),
                }
                prop_assert_eq!(p.in_use(), held.len());
                prop_assert!(p.in_use() + p.idle() <= 3);
            }
        }
    }
}
