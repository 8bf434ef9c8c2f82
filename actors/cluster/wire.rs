//! Wire types: everything one node says to another over the cluster link.
//!
//! A [`PeerMsg`] carries an encoded [`Envelope`] (see [`crate::cluster::codec`]); the envelope carries
//! the protocol version and the sender, so a node can refuse what it does not understand
//! instead of misreading it. These types are a commitment: change them only by adding
//! variants, and bump [`PROTOCOL_VERSION`] when an old node could misread a new message.

use ractor::RpcReplyPort;
use ractor_cluster::RactorClusterMessage;
use serde::{Deserialize, Serialize};

use crate::cluster::codec::{CodecError, decode, encode};

/// Version of the messages below.
pub(crate) const PROTOCOL_VERSION: u16 = 1;

/// What travels between the peer actors of two nodes.
#[derive(RactorClusterMessage)]
pub(crate) enum PeerMsg {
    /// A one-way message: an encoded [`Envelope`].
    Cast(Vec<u8>),
    /// A request: an encoded [`Envelope`]; the reply is an encoded [`Envelope`] too.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// One message with its version and sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The sender's node id.
    pub from: String,
    /// The message.
    pub body: Body,
}

/// A task handed from one node to another (never started, so only its ownership moves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handed {
    /// Task id.
    pub id: String,
    /// The epoch the sender owns it under: the receiver adopts it only if it is unchanged.
    pub epoch: u64,
}

/// An operation asked of a node (`bgnode stop`, `bgnode reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlOp {
    /// Shut down gracefully.
    Stop,
    /// Rescan the workers folder.
    Reload,
}

/// The messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Heartbeat request; answered with [`Body::Pong`].
    Ping,
    /// Heartbeat answer.
    Pong,
    /// The pending set of `worker` may have tasks for you.
    Wake {
        /// Worker name.
        worker: String,
    },
    /// Check every pending set (a node left or was failed over).
    Sweep,
    /// Take over these queued tasks (request); answered with [`Body::Adopted`].
    Handoff {
        /// The tasks.
        tasks: Vec<Handed>,
    },
    /// The ids that were adopted; the others stay with the sender.
    Adopted {
        /// Task ids.
        ids: Vec<String>,
    },
    /// I am idle for `worker`: hand me up to `n` of your queued tasks.
    Steal {
        /// Worker name.
        worker: String,
        /// Most tasks wanted.
        n: u32,
    },
    /// Do this (request); answered with [`Body::Ack`].
    Control {
        /// The operation.
        op: ControlOp,
    },
    /// I am leaving gracefully and my sessions will close (request); answered with
    /// [`Body::Ack`] once the peer has noted it, so that it takes the close for a leave.
    Leaving,
    /// The outcome of a request.
    Ack {
        /// Done.
        ok: bool,
        /// What happened, for people.
        message: String,
    },
}

impl Envelope {
    /// A message from `from`.
    pub(crate) fn new(from: &str, body: Body) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            from: from.to_owned(),
            body,
        }
    }

    /// Encodes the envelope.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        encode(self)
    }

    /// Decodes an envelope, refusing another protocol version.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Envelope, CodecError> {
        let env: Envelope = decode(bytes)?;
        if env.version != PROTOCOL_VERSION {
            return Err(CodecError::Decode(format!(
                "protocol version {} from {} (this node speaks {PROTOCOL_VERSION})",
                env.version, env.from
            )));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        for body in [
            Body::Ping,
            Body::Leaving,
            Body::Wake { worker: "w".into() },
            Body::Handoff {
                tasks: vec![Handed {
                    id: "t".into(),
                    epoch: 3,
                }],
            },
            Body::Control {
                op: ControlOp::Reload,
            },
            Body::Ack {
                ok: true,
                message: "fine".into(),
            },
        ] {
            let env = Envelope::new("n1", body);
            assert_eq!(Envelope::from_bytes(&env.to_bytes().unwrap()).unwrap(), env);
        }
    }

    #[test]
    fn another_version_is_refused() {
        let mut env = Envelope::new("n1", Body::Ping);
        env.version = 99;
        let err = Envelope::from_bytes(&encode(&env).unwrap()).unwrap_err();
        assert!(err.to_string().contains("protocol version 99"), "{err}");
        assert!(Envelope::from_bytes(b"garbage").is_err());
    }
}
