//! The cluster link: who the peers are and how to reach them.
//!
//! [`membership`] keeps the view of live peers (gossip, sessions, heartbeats) and fails dead
//! nodes over; [`handle`] is the view and the way to send to a peer; [`wire`] the versioned
//! messages, [`codec`] their encoding, [`tls`] the optional TLS of the link.

pub mod codec;
pub mod handle;
pub mod membership;
pub mod tls;
pub mod wire;
