//! Request bodies sharing one BodyBudget under arbitrary arrival sequences:
//! four BodyShares receive bytes (announced or not) and some are dropped
//! (answered) and reopened. After every operation the budget holds exactly
//! what the live shares hold, never more than its size; a share holds at
//! least what it accepted and at most limit + 1; a refusal changes nothing.
#![no_main]

use std::sync::Mutex;

use asap_proto::server::{BodyBudget, BodyError, BodyShare};
use libfuzzer_sys::fuzz_target;

const BUDGET: usize = 200_000;
const LIMIT: usize = 100_000;

fuzz_target!(|data: &[u8]| {
    let budget = Mutex::new(BodyBudget::new(BUDGET, 1));
    let mut shares: Vec<Option<(BodyShare<'_>, usize)>> = (0..4).map(|_| None).collect();
    for op in data.chunks_exact(3) {
        let slot = usize::from(op[0] & 3);
        let amount = usize::from(u16::from_le_bytes([op[1], op[2]])) * 4;
        match op[0] >> 2 & 3 {
            // The request is answered: its bytes go back.
            0 => shares[slot] = None,
            // A new request announces its length before a byte is read.
            1 => {
                let mut share = BodyShare::new(&budget, LIMIT);
                let before = budget.lock().unwrap().in_flight();
                match share.handle_announced(amount) {
                    Ok(()) => assert_eq!(share.bytes(), amount.min(LIMIT + 1)),
                    Err(BodyError::OverBudget { .. }) => {
                        assert_eq!(share.bytes(), 0);
                        assert_eq!(budget.lock().unwrap().in_flight(), before);
                    }
                    Err(e) => panic!("announcing refused with {e:?}"),
                }
                shares[slot] = Some((share, 0));
            }
            // More bytes arrive.
            _ => {
                let Some((share, received)) = shares[slot].as_mut() else {
                    shares[slot] = Some((BodyShare::new(&budget, LIMIT), 0));
                    continue;
                };
                let total = *received + amount;
                let held = share.bytes();
                match share.handle_received(total) {
                    Ok(()) => {
                        *received = total;
                        assert!(share.bytes() >= total && share.bytes() <= LIMIT + 1);
                    }
                    Err(BodyError::TooLarge(n)) => {
                        assert!(total > LIMIT);
                        assert_eq!(n, total as u64);
                        assert_eq!(share.bytes(), held);
                    }
                    Err(BodyError::OverBudget { .. }) => assert_eq!(share.bytes(), held),
                    Err(e) => panic!("receiving refused with {e:?}"),
                }
            }
        }
        let held: usize = shares.iter().flatten().map(|(s, _)| s.bytes()).sum();
        let in_flight = budget.lock().unwrap().in_flight();
        assert_eq!(in_flight, held, "the budget holds what the shares hold");
        assert!(in_flight <= BUDGET);
    }
    drop(shares);
    assert_eq!(budget.lock().unwrap().in_flight(), 0, "all given back");
});
