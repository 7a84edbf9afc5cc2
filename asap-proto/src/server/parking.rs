//! Where copies of a running envelope wait: [`Parking`].

use std::collections::HashMap;
use std::sync::Arc;

/// The first copy's answer body handed to a waiting copy (`None`: the first run failed).
pub type FirstAnswer = Option<Arc<[u8]>>;

#[derive(Debug)]
enum Slot<S> {
    Waiting(S),
    Ready(FirstAnswer),
}

/// The copies parked on [`Step::AwaitFirst`](super::Step::AwaitFirst), keyed
/// by token, each with the adapter's wake-up handle `S` (a oneshot sender, a
/// channel). An answer may reach a token before its exchange parks; it is
/// kept until it does, so no wake-up is lost whatever the order.
///
/// ```
/// use asap_proto::server::Parking;
/// let mut parking: Parking<std::sync::mpsc::Sender<_>> = Parking::default();
/// let (tx, rx) = std::sync::mpsc::channel();
/// assert!(parking.park(7, || tx).is_none());                 // nothing yet: wait on rx
/// for (tx, answer) in parking.wake(vec![(7, Some(b"{}".to_vec().into()))]) {
///     tx.send(answer).unwrap();
/// }
/// assert_eq!(rx.recv().unwrap().as_deref(), Some(&b"{}"[..]));
/// // Woken before parking: the answer is handed over at once.
/// assert!(parking.wake(vec![(8, None)]).is_empty());
/// let (tx, _rx) = std::sync::mpsc::channel::<asap_proto::server::FirstAnswer>();
/// assert_eq!(parking.park(8, || tx), Some(None));
/// ```
#[derive(Debug)]
pub struct Parking<S> {
    slots: HashMap<u64, Slot<S>>,
}

impl<S> Default for Parking<S> {
    fn default() -> Self {
        Self {
            slots: HashMap::new(),
        }
    }
}

impl<S> Parking<S> {
    /// Parks `token`: `Some(answer)` if it already came, else registers the
    /// handle `waker()` builds and returns `None` (wait on its other end).
    pub fn park(&mut self, token: u64, waker: impl FnOnce() -> S) -> Option<FirstAnswer> {
        if let Some(Slot::Ready(answer)) = self.slots.remove(&token) {
            return Some(answer);
        }
        self.slots.insert(token, Slot::Waiting(waker()));
        None
    }

    /// Input: what [`Server::handle_answered`](super::Server::handle_answered)
    /// woke. Returns the handles to send each answer to; answers for tokens
    /// not parked yet are kept for [`park`](Self::park).
    pub fn wake(&mut self, woken: Vec<(u64, FirstAnswer)>) -> Vec<(S, FirstAnswer)> {
        let mut out = Vec::new();
        for (token, answer) in woken {
            match self.slots.remove(&token) {
                Some(Slot::Waiting(s)) => out.push((s, answer)),
                _ => {
                    self.slots.insert(token, Slot::Ready(answer));
                }
            }
        }
        out
    }

    /// Tokens parked or with an answer waiting.
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is parked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
