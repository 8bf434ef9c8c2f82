//! Placement decisions from the gossiped load, free of I/O.
//!
//! - [`place`]: where a wake for a worker goes: this node when it offers the worker and is not
//!   busier than the peers that do, else the less busy of two peers picked at random
//!   (power of two choices), and this node again when both are busier.
//! - [`steal_from`]: an idle node picks the more loaded of two random peers that have queued,
//!   not started tasks of that worker, and asks for up to half of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Load of one worker type on one node, as gossiped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Concurrency.
    pub capacity: u32,
    /// Tasks running.
    pub running: u32,
    /// Tasks claimed and waiting for a slot.
    pub queued: u32,
}

impl Load {
    /// Work held per slot: 0 idle, 1 all slots busy, more when tasks queue.
    pub fn busyness(&self) -> f64 {
        f64::from(self.running + self.queued) / f64::from(self.capacity.max(1))
    }

    /// Free slots.
    pub fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.running)
    }
}

/// Loads of every worker type of one node.
pub(crate) type NodeLoad = BTreeMap<String, Load>;

/// Where a wake should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// This node.
    Local,
    /// That peer.
    Peer(String),
    /// Nobody offers the worker.
    Nowhere,
}

/// A source of random indexes (so tests can be deterministic).
pub(crate) trait Pick {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize;
}

/// Placement draws from fastrand's generator, seeded per node; it needs spread, not
/// cryptographic quality.
impl Pick for fastrand::Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n.max(1))
    }
}

/// Two distinct random indexes below `n` (one when `n` is 1).
fn two(n: usize, pick: &mut impl Pick) -> (usize, usize) {
    let a = pick.below(n);
    if n == 1 {
        return (a, a);
    }
    let b = (a + 1 + pick.below(n - 1)) % n;
    (a, b)
}

/// Decides where a wake for a worker goes. `local` is this node's load of that worker (`None`
/// when it does not offer it); `peers` those of the peers that offer it.
pub(crate) fn place(local: Option<Load>, peers: &[(String, Load)], pick: &mut impl Pick) -> Target {
    let Some(local) = local else {
        if peers.is_empty() {
            return Target::Nowhere;
        }
        let (a, b) = two(peers.len(), pick);
        let best = if peers[b].1.busyness() < peers[a].1.busyness() {
            b
        } else {
            a
        };
        return Target::Peer(peers[best].0.clone());
    };
    if peers.is_empty() {
        return Target::Local;
    }
    let average = peers.iter().map(|(_, l)| l.busyness()).sum::<f64>() / peers.len() as f64;
    if local.busyness() <= average {
        return Target::Local;
    }
    let (a, b) = two(peers.len(), pick);
    let best = if peers[b].1.busyness() < peers[a].1.busyness() {
        b
    } else {
        a
    };
    if peers[best].1.busyness() < local.busyness() {
        Target::Peer(peers[best].0.clone())
    } else {
        Target::Local
    }
}

/// For an idle `local` lane, the peer to steal from and how many tasks to ask for.
pub(crate) fn steal_from(
    local: Load,
    peers: &[(String, Load)],
    pick: &mut impl Pick,
) -> Option<(String, u32)> {
    let room = local.free();
    if room == 0 || local.queued > 0 {
        return None;
    }
    let loaded: Vec<&(String, Load)> = peers.iter().filter(|(_, l)| l.queued > 0).collect();
    if loaded.is_empty() {
        return None;
    }
    let (a, b) = two(loaded.len(), pick);
    let victim = if loaded[b].1.queued > loaded[a].1.queued {
        loaded[b]
    } else {
        loaded[a]
    };
    let n = victim.1.queued.div_ceil(2).min(room);
    Some((victim.0.clone(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seq(Vec<usize>);
    impl Pick for Seq {
        fn below(&mut self, n: usize) -> usize {
            self.0.remove(0) % n
        }
    }

    fn load(capacity: u32, running: u32, queued: u32) -> Load {
        Load {
            capacity,
            running,
            queued,
        }
    }

    #[test]
    fn local_first_when_not_busier() {
        let peers = vec![
            ("b".to_string(), load(8, 4, 0)),
            ("c".to_string(), load(8, 8, 8)),
        ];
        assert_eq!(
            place(Some(load(8, 8, 0)), &peers, &mut Seq(vec![0, 0])),
            Target::Local
        );
        assert_eq!(
            place(Some(load(8, 0, 0)), &[], &mut Seq(vec![])),
            Target::Local
        );
    }

    #[test]
    fn busier_nodes_send_to_the_lesser_of_two_peers() {
        let peers = vec![
            ("b".to_string(), load(8, 8, 4)),
            ("c".to_string(), load(8, 1, 0)),
            ("d".to_string(), load(8, 2, 0)),
        ];
        // Picks b and c: c is less busy.
        assert_eq!(
            place(Some(load(8, 8, 60)), &peers, &mut Seq(vec![0, 0])),
            Target::Peer("c".into())
        );
        // Both picks busier than us: stay.
        let busy = vec![
            ("b".to_string(), load(8, 8, 70)),
            ("c".to_string(), load(8, 8, 80)),
        ];
        assert_eq!(
            place(Some(load(8, 8, 64)), &busy, &mut Seq(vec![0, 0])),
            Target::Local
        );
    }

    #[test]
    fn a_node_without_the_worker_forwards_or_finds_nobody() {
        let peers = vec![("b".to_string(), load(8, 0, 0))];
        assert_eq!(
            place(None, &peers, &mut Seq(vec![0])),
            Target::Peer("b".into())
        );
        assert_eq!(place(None, &[], &mut Seq(vec![])), Target::Nowhere);
    }

    #[test]
    fn idle_nodes_steal_half_of_the_larger_queue() {
        let peers = vec![
            ("b".to_string(), load(8, 8, 10)),
            ("c".to_string(), load(8, 8, 30)),
            ("d".to_string(), load(8, 3, 0)),
        ];
        assert_eq!(
            steal_from(load(8, 0, 0), &peers, &mut Seq(vec![0, 0])),
            Some(("c".into(), 8)),
            "half of 30 is 15, capped by 8 free slots"
        );
        assert_eq!(
            steal_from(load(8, 8, 0), &peers, &mut Seq(vec![0, 0])),
            None,
            "no room"
        );
        assert_eq!(
            steal_from(load(8, 2, 1), &peers, &mut Seq(vec![0, 0])),
            None,
            "has its own queue"
        );
        let calm = vec![("b".to_string(), load(8, 8, 0))];
        assert_eq!(steal_from(load(8, 0, 0), &calm, &mut Seq(vec![0])), None);
    }

    #[test]
    fn the_generator_spreads() {
        let mut x = fastrand::Rng::with_seed(42);
        let mut seen = [0u32; 3];
        for _ in 0..3_000 {
            seen[x.below(3)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        let (a, b) = two(5, &mut x);
        assert_ne!(a, b);
    }
}
