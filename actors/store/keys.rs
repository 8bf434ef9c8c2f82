//! Key names: every Redis key the cluster uses, under one prefix.

/// Key names under one prefix. PROTOCOL.md lists them.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`bg` by default).
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    /// The prefix.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{p}:task:{id}`: the task hash.
    pub(crate) fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }
    /// `{p}:pending:{worker}`: tasks waiting for a node, by priority then age.
    pub(crate) fn pending(&self, worker: &str) -> String {
        format!("{}:pending:{worker}", self.prefix)
    }
    /// `{p}:workers`: names of every worker that has had a pending set.
    pub(crate) fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// `{p}:scheduled`: delayed tasks, retrying tasks and recurring templates, by due time.
    pub(crate) fn scheduled(&self) -> String {
        format!("{}:scheduled", self.prefix)
    }
    /// `{p}:deadlines`: tasks with a deadline that have not started, by deadline.
    pub(crate) fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }
    /// `{p}:dead`: tasks whose attempts were exhausted, by time of death.
    pub(crate) fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    /// `{p}:node:{node}:owned`: ids of the tasks a node owns.
    pub(crate) fn owned(&self, node: &str) -> String {
        format!("{}:node:{node}:owned", self.prefix)
    }
    /// `{p}:node:{node}:alive`: the liveness lease of a node; its value is the incarnation
    /// holding it (`node:generation`).
    pub(crate) fn alive(&self, node: &str) -> String {
        format!("{}:node:{node}:alive", self.prefix)
    }
    /// `{p}:ingress`: the ingress lease; only its holder subscribes to the task channel.
    pub(crate) fn ingress(&self) -> String {
        format!("{}:ingress", self.prefix)
    }
    /// `{p}:ingress:subscriber`: the Redis client id of the ingress holder's subscription (and
    /// the holder), so that the next holder can close it before it subscribes.
    pub(crate) fn ingress_subscriber(&self) -> String {
        format!("{}:ingress:subscriber", self.prefix)
    }
    /// `{p}:inbox`: envelopes pushed by clients, taken by the ingress lease holder.
    pub(crate) fn inbox(&self) -> String {
        format!("{}:inbox", self.prefix)
    }
    /// `{p}:inbox:taking`: the message a blocking wait on the inbox moved (at most one).
    pub(crate) fn inbox_taking(&self) -> String {
        format!("{}:inbox:taking", self.prefix)
    }
    /// `{p}:events:final`: present while the cluster publishes only final events
    /// (`redis.event_level = "final"`): no `available` from the scripts.
    pub(crate) fn events_final(&self) -> String {
        format!("{}:events:final", self.prefix)
    }
    /// `{p}:archive`: present while the cluster archives finished tasks (set by the archiving
    /// nodes, with an expiry they renew): the scripts then stage each task's final row.
    pub(crate) fn archive(&self) -> String {
        format!("{}:archive", self.prefix)
    }
    /// `{p}:archive:outbox`: the rows waiting for an archiver, oldest first.
    pub(crate) fn outbox(&self) -> String {
        format!("{}:archive:outbox", self.prefix)
    }
    /// `{p}:archive:outbox:{node}`: the rows one node took and has not yet written.
    pub(crate) fn node_outbox(&self, node: &str) -> String {
        format!("{}:archive:outbox:{node}", self.prefix)
    }
    /// `{p}:archive:full`: present while the outbox is over its bound; no node claims then.
    pub(crate) fn archive_full(&self) -> String {
        format!("{}:archive:full", self.prefix)
    }
    /// `{p}:reply:{id}`: the list a waiting caller pops the final event from.
    pub(crate) fn reply(&self, id: &str) -> String {
        format!("{}:reply:{id}", self.prefix)
    }
    /// `{p}:result:{name}`: a result stored under its result key.
    pub(crate) fn result(&self, name: &str) -> String {
        format!("{}:result:{name}", self.prefix)
    }
    /// `{p}:pending:{worker}@{node}`: tasks pinned to one node.
    pub(crate) fn node_pending(&self, worker: &str, node: &str) -> String {
        format!("{}:pending:{worker}@{node}", self.prefix)
    }
    /// `{p}:pinned`: `{worker}@{node}` of every pinned pending set that has had tasks.
    pub(crate) fn pinned(&self) -> String {
        format!("{}:pinned", self.prefix)
    }
    /// `{p}:unrunnable`: per pending set that no live node can serve, `{since}:{checked}` (ms).
    pub(crate) fn unrunnable(&self) -> String {
        format!("{}:unrunnable", self.prefix)
    }
    /// `{p}:paused`: the worker types paused cluster-wide (no node claims their tasks).
    pub(crate) fn paused(&self) -> String {
        format!("{}:paused", self.prefix)
    }
    /// `{p}:deferring`: the keys whose deferred lists hold tasks.
    pub(crate) fn deferring(&self) -> String {
        format!("{}:deferring", self.prefix)
    }
    /// `{p}:deferred:{key}`: tasks waiting for a slot of `key`, oldest first.
    pub(crate) fn deferred(&self, key: &str) -> String {
        format!("{}:deferred:{key}", self.prefix)
    }
    /// `{p}:finished`: the most recently finished tasks, by time of their end.
    pub(crate) fn finished(&self) -> String {
        format!("{}:finished", self.prefix)
    }
    /// `{p}:stats`: the cluster's counters.
    pub(crate) fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
    /// `{p}:tally`: samples of the counters over time, for throughput.
    pub(crate) fn tally(&self) -> String {
        format!("{}:tally", self.prefix)
    }
    /// `{p}:members`: ids of the nodes in the cluster (joined, not yet left or failed over).
    pub(crate) fn members(&self) -> String {
        format!("{}:members", self.prefix)
    }
    /// `{p}:node:{node}:info`: what a node reports about itself for `bgnode info`.
    pub(crate) fn info(&self, node: &str) -> String {
        format!("{}:node:{node}:info", self.prefix)
    }
    /// `bgnode:channel:{channel}`: the key prefix of the cluster a task channel belongs to. It is
    /// outside every prefix, since clusters with different prefixes share the channel's name.
    pub(crate) fn channel_owner(channel: &str) -> String {
        format!("bgnode:channel:{channel}")
    }
    /// `{p}:cluster`: the hash of the cluster cookie; nodes with another cookie refuse to start.
    pub(crate) fn cluster(&self) -> String {
        format!("{}:cluster", self.prefix)
    }
}
