//! The peer actor: receives what other nodes send over the cluster link and hands it to this
//! node's actors. Peers find it through the process group `bgnode.peer.{id}`.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::cluster::handle::{ClusterHandle, group};
use crate::cluster::wire::{Body, Envelope, Handed, PeerMsg};
use crate::engine::control::Control;
use crate::engine::dispatcher::DispatcherMsg;
use crate::store::{Incarnation, Store};
use crate::wiring::Link;

/// The peer actor.
pub(crate) struct PeerActor;

/// What the peer actor needs.
pub(crate) struct PeerArgs {
    /// This incarnation: its id names its process group and the sender of answers, and it
    /// adopts handed-over tasks.
    pub(crate) me: Incarnation,
    /// Adopts handed-over tasks.
    pub(crate) store: Store,
    /// Receives wakes, sweeps, steal requests and adopted tasks.
    pub(crate) dispatcher: Arc<Link<DispatcherMsg>>,
    /// Carries out `stop` and `reload`.
    pub(crate) control: Arc<Control>,
    /// Notes peers that are leaving gracefully.
    pub(crate) cluster: Arc<ClusterHandle>,
}

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = Arc<PeerArgs>;
    type Arguments = PeerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        args: PeerArgs,
    ) -> Result<Arc<PeerArgs>, ActorProcessingErr> {
        ractor::pg::join(group(&args.me.node), vec![myself.get_cell()]);
        Ok(Arc::new(args))
    }

    async fn handle(
        &self,
        _myself: ActorRef<PeerMsg>,
        msg: PeerMsg,
        state: &mut Arc<PeerArgs>,
    ) -> Result<(), ActorProcessingErr> {
        let (bytes, reply) = match msg {
            PeerMsg::Cast(bytes) => (bytes, None),
            PeerMsg::Call(bytes, reply) => (bytes, Some(reply)),
        };
        let env = match Envelope::from_bytes(&bytes) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!("dropped a message from a peer: {e}");
                return Ok(());
            }
        };
        // Requests are answered from a task so a slow answer never blocks this actor.
        let state = state.clone();
        tokio::spawn(async move {
            let answer = receive(&state, env).await;
            if let (Some(reply), Some(body)) = (reply, answer) {
                match Envelope::new(&state.me.node, body).to_bytes() {
                    Ok(bytes) => {
                        let _ = reply.send(bytes);
                    }
                    Err(e) => tracing::error!("cannot encode an answer: {e}"),
                }
            }
        });
        Ok(())
    }
}

/// Acts on a message from a peer; returns the answer of a request.
async fn receive(peer: &PeerArgs, env: Envelope) -> Option<Body> {
    let from = env.from;
    match env.body {
        Body::Ping => Some(Body::Pong),
        Body::Wake { worker } => {
            peer.dispatcher.cast(DispatcherMsg::Wake(worker));
            None
        }
        Body::Sweep => {
            peer.dispatcher.cast(DispatcherMsg::Sweep);
            None
        }
        Body::Handoff { tasks } => {
            let ids = adopt(peer, &from, tasks).await;
            Some(Body::Adopted { ids })
        }
        Body::Steal { worker, n } => {
            peer.dispatcher.cast(DispatcherMsg::Steal {
                worker,
                n: n as usize,
                thief: from,
            });
            None
        }
        Body::Control { op } => Some(peer.control.apply(op, &from)),
        Body::Leaving => {
            peer.cluster.set_leaving(&from, true);
            Some(Body::Ack {
                ok: true,
                message: format!("{} noted that {from} is leaving", peer.me.node),
            })
        }
        Body::Pong | Body::Adopted { .. } | Body::Ack { .. } => None,
    }
}

/// Adopts tasks `from` hands over; returns the ids now owned here.
async fn adopt(peer: &PeerArgs, from: &str, tasks: Vec<Handed>) -> Vec<String> {
    let handed: Vec<(String, u64)> = tasks.into_iter().map(|t| (t.id, t.epoch)).collect();
    match peer.store.adopt(from, &peer.me, &handed).await {
        Ok(adopted) => {
            let ids = adopted.iter().map(|t| t.id.clone()).collect();
            if !adopted.is_empty() {
                peer.dispatcher.cast(DispatcherMsg::Hold(adopted));
            }
            ids
        }
        Err(e) => {
            tracing::warn!("cannot adopt tasks from {from}: {e}");
            Vec::new()
        }
    }
}
