//! The cluster link: who the peers are and how to reach them.
//!
//! [`membership`] keeps the view of live peers (gossip, sessions, heartbeats) and fails dead
//! nodes over; [`guard`] accepts connections on the cluster port and bounds what a peer that
//! has not logged in can make a node hold; [`handle`] is the view and the way to send to a
//! peer; [`wire`] the versioned messages, [`codec`] their encoding, [`tls`] the optional TLS of
//! the link.

pub(crate) mod codec;
pub(crate) mod guard;
pub(crate) mod handle;
pub(crate) mod membership;
pub(crate) mod tls;
pub(crate) mod wire;
