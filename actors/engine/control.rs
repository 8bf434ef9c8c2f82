//! `bgnode stop` and `bgnode reload` as they reach one node, whether through its cluster link
//! (the peer actor) or from its own ingress.

use std::sync::Arc;

use crate::cluster::wire::{Body, ControlOp};
use crate::engine::dispatcher::DispatcherMsg;
use crate::wiring::{Link, StopReason, Stopper};
use crate::workers::registry::LiveRegistry;

/// Carries out control operations on this node.
pub(crate) struct Control {
    /// This node's id.
    pub(crate) node: String,
    /// Stops the node (`stop`).
    pub(crate) stop: Stopper,
    /// Rebuilt by `reload`.
    pub(crate) workers: Arc<LiveRegistry>,
    /// Told to add lanes for new worker types after a reload.
    pub(crate) dispatcher: Arc<Link<DispatcherMsg>>,
}

impl Control {
    /// Carries out `op`, asked for by `from`; the answer says what happened.
    pub(crate) fn apply(&self, op: ControlOp, from: &str) -> Body {
        match op {
            ControlOp::Stop => {
                tracing::info!("stop requested (via {from})");
                let _ = self
                    .stop
                    .send(StopReason::Requested(format!("stop requested via {from}")));
                Body::Ack {
                    ok: true,
                    message: format!("{} is stopping", self.node),
                }
            }
            ControlOp::Reload => {
                let names = self.workers.reload().join(", ");
                self.dispatcher.cast(DispatcherMsg::Reload);
                tracing::info!(workers = %names, "reloaded workers (via {from})");
                Body::Ack {
                    ok: true,
                    message: format!("{} reloaded: {names}", self.node),
                }
            }
        }
    }
}
