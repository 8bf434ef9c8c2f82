//! The shared face of the cluster: the view of reachable peers with their load, this node's
//! own load, and sending to peers over the ractor_cluster link.
//!
//! The membership actor ([`crate::cluster::membership`]) keeps the view current; the dispatcher
//! publishes this node's load here; placement, stealing and the ingress read both. Peers find
//! each other's peer actor through the process group `bgnode.peer.{id}` ([`group`]).
//!
//! A member cut off from this node's links but still renewing its lease in Redis (a partition
//! between nodes) is a *remote* member: wakes for it go through Redis ([`ClusterHandle::wake`]),
//! on its control channel, so it keeps taking its share of the work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;
use std::time::Duration;

use ractor::ActorRef;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::cluster::wire::{Body, Envelope, PeerMsg};
use crate::decide::placement::{Load, NodeLoad};

/// How long a request to a peer may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest frame accepted from a peer.
pub(crate) const MAX_FRAME: u64 = 8 << 20;

/// A peer as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PeerInfo {
    /// Its incarnation.
    pub generation: u64,
    /// Its cluster address.
    pub addr: String,
    /// Load of each worker type it offers.
    pub load: NodeLoad,
    /// It is shutting down: send it nothing new.
    pub leaving: bool,
}

/// The peers this node can reach (answering heartbeats), by node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct View {
    /// Reachable peers.
    pub peers: BTreeMap<String, PeerInfo>,
}

/// The shared face of the cluster: the current view, and sending to peers.
#[derive(Debug)]
pub(crate) struct ClusterHandle {
    node: String,
    view: RwLock<View>,
    own: RwLock<NodeLoad>,
    /// Peers that said they are leaving gracefully ([`Body::Leaving`]).
    leaving: RwLock<BTreeSet<String>>,
    /// Members out of the view that Redis says are alive, with the load of their last report:
    /// a node cut off from this one's links but not from Redis still gets wakes, through Redis.
    remote: RwLock<BTreeMap<String, NodeLoad>>,
    /// Wakes for remote members, `(node, worker)`, which the membership publishes on their
    /// control channels.
    relay: std::sync::Mutex<mpsc::UnboundedSender<(String, String)>>,
}

impl ClusterHandle {
    /// The handle of node `node`, with an empty view.
    pub(crate) fn new(node: &str) -> ClusterHandle {
        let (relay, _) = mpsc::unbounded_channel();
        ClusterHandle {
            node: node.to_owned(),
            view: RwLock::new(View::default()),
            own: RwLock::new(NodeLoad::new()),
            leaving: RwLock::new(BTreeSet::new()),
            remote: RwLock::new(BTreeMap::new()),
            relay: std::sync::Mutex::new(relay),
        }
    }

    /// Replaces the remote members (the membership does, from Redis, every second).
    pub(crate) fn set_remote(&self, remote: BTreeMap<String, NodeLoad>) {
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = remote;
    }

    /// The remote members: alive in Redis, out of this node's view.
    pub(crate) fn remote(&self) -> BTreeMap<String, NodeLoad> {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The wakes to relay through Redis from now on, for the membership to publish; a
    /// restarted membership calls it again and the earlier receiver gets nothing more.
    pub(crate) fn relayed(&self) -> mpsc::UnboundedReceiver<(String, String)> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.relay.lock().unwrap_or_else(|e| e.into_inner()) = tx;
        rx
    }

    /// The nodes a wake for `worker` may go to, with their load of it: the reachable peers that
    /// offer it and are not leaving, then the remote members whose last report offered it.
    pub(crate) fn wake_targets(&self, worker: &str) -> Vec<(String, Load)> {
        let mut targets = self.peers_offering(worker);
        let remote = self.remote.read().unwrap_or_else(|e| e.into_inner());
        let more: Vec<(String, Load)> = remote
            .iter()
            .filter(|(id, _)| targets.iter().all(|(t, _)| t != *id))
            .filter_map(|(id, load)| load.get(worker).map(|l| (id.clone(), *l)))
            .collect();
        targets.extend(more);
        targets
    }

    /// Wakes `worker` on `node`: over the link when it is reachable, else through Redis when it
    /// is a remote member. False when neither.
    pub(crate) fn wake(&self, node: &str, worker: &str) -> bool {
        if self.send(
            node,
            Body::Wake {
                worker: worker.to_owned(),
            },
        ) {
            return true;
        }
        let remote = self
            .remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node);
        remote
            && self
                .relay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send((node.to_owned(), worker.to_owned()))
                .is_ok()
    }

    /// Wakes `worker` on every reachable peer and every remote member.
    pub(crate) fn wake_everywhere(&self, worker: &str) {
        let mut nodes: BTreeSet<String> = self.view().peers.into_keys().collect();
        nodes.extend(self.remote().into_keys());
        for node in nodes {
            self.wake(&node, worker);
        }
    }

    /// Notes that `node` said it is leaving gracefully (until it connects again).
    pub(crate) fn set_leaving(&self, node: &str, leaving: bool) {
        let mut set = self.leaving.write().unwrap_or_else(|e| e.into_inner());
        if leaving {
            set.insert(node.to_owned());
        } else {
            set.remove(node);
        }
    }

    /// Whether `node` said it is leaving gracefully.
    pub(crate) fn is_leaving(&self, node: &str) -> bool {
        self.leaving
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }

    /// This node's load per worker type, as the dispatcher last published it.
    pub(crate) fn own_load(&self) -> NodeLoad {
        self.own.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes this node's load (the dispatcher does, whenever it changes).
    pub(crate) fn set_own_load(&self, load: NodeLoad) {
        *self.own.write().unwrap_or_else(|e| e.into_inner()) = load;
    }

    /// The current view.
    pub(crate) fn view(&self) -> View {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the view (the membership loop does).
    pub(crate) fn set_view(&self, view: View) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Reachable peers that offer `worker`, with their load of it (leaving ones excluded).
    pub(crate) fn peers_offering(&self, worker: &str) -> Vec<(String, Load)> {
        let view = self.view.read().unwrap_or_else(|e| e.into_inner());
        view.peers
            .iter()
            .filter(|(_, p)| !p.leaving)
            .filter_map(|(id, p)| p.load.get(worker).map(|l| (id.clone(), *l)))
            .collect()
    }

    /// True when some other node offers `worker`: a reachable peer, or a remote member.
    pub(crate) fn offered_by_peer(&self, worker: &str) -> bool {
        !self.wake_targets(worker).is_empty()
    }

    fn peer_ref(node: &str) -> Option<ActorRef<PeerMsg>> {
        ractor::pg::get_members(&group(node))
            .into_iter()
            .find(|c| !c.get_id().is_local())
            .map(ActorRef::<PeerMsg>::from)
    }

    /// Sends `body` to `node`; false when it cannot be reached.
    pub(crate) fn send(&self, node: &str, body: Body) -> bool {
        let Some(peer) = Self::peer_ref(node) else {
            return false;
        };
        match Envelope::new(&self.node, body).to_bytes() {
            Ok(bytes) => peer.cast(PeerMsg::Cast(bytes)).is_ok(),
            Err(e) => {
                tracing::error!("cannot encode a message to {node}: {e}");
                false
            }
        }
    }

    /// Sends `body` to every reachable peer.
    pub(crate) fn broadcast(&self, body: &Body) {
        for node in self.view().peers.keys() {
            self.send(node, body.clone());
        }
    }

    /// Asks `node` and waits for its answer.
    pub(crate) async fn call(
        &self,
        node: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Body, String> {
        let peer = Self::peer_ref(node).ok_or_else(|| format!("node {node} is not reachable"))?;
        let bytes = Envelope::new(&self.node, body)
            .to_bytes()
            .map_err(|e| e.to_string())?;
        let reply = ractor::call_t!(peer, PeerMsg::Call, timeout.as_millis() as u64, bytes)
            .map_err(|e| format!("node {node} did not answer: {e}"))?;
        Envelope::from_bytes(&reply)
            .map(|e| e.body)
            .map_err(|e| format!("bad answer from {node}: {e}"))
    }
}

/// The process group of a node's peer actor.
pub(crate) fn group(node: &str) -> String {
    format!("bgnode.peer.{node}")
}

/// A short, stable hash of the cookie: the gossip cluster id and the Redis cookie check. The
/// cookie itself is never stored or gossiped.
pub(crate) fn cookie_hash(cookie: &str) -> String {
    let digest = Sha256::digest(format!("bgnode-cookie-v1:{cookie}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}
