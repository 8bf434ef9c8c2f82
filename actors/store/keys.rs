//! Key names: every Redis key the cluster uses, under one prefix.

/// Key names under one prefix. PROTOCOL.md lists them.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (`bg` by default).
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{p}:task:{id}`: the task hash.
    pub fn task(&self, id: &str) -> String {
        format!("{}:task:{id}", self.prefix)
    }
    /// `{p}:pending:{worker}`: tasks waiting for a node, by priority then age.
    pub fn pending(&self, worker: &str) -> String {
        format!("{}:pending:{worker}", self.prefix)
    }
    /// `{p}:workers`: names of every worker that has had a pending set.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }
    /// `{p}:scheduled`: delayed tasks, retrying tasks and recurring templates, by due time.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.prefix)
    }
    /// `{p}:deadlines`: tasks with a deadline that have not started, by deadline.
    pub fn deadlines(&self) -> String {
        format!("{}:deadlines", self.prefix)
    }
    /// `{p}:dead`: tasks whose attempts were exhausted, by time of death.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    /// `{p}:node:{node}:owned`: ids of the tasks a node owns.
    pub fn owned(&self, node: &str) -> String {
        format!("{}:node:{node}:owned", self.prefix)
    }
    /// `{p}:node:{node}:alive`: the liveness lease of a node; its value is the generation.
    pub fn alive(&self, node: &str) -> String {
        format!("{}:node:{node}:alive", self.prefix)
    }
    /// `{p}:ingress`: the ingress lease; only its holder subscribes to the task channel.
    pub fn ingress(&self) -> String {
        format!("{}:ingress", self.prefix)
    }
    /// `{p}:reply:{id}`: the list a waiting caller pops the final event from.
    pub fn reply(&self, id: &str) -> String {
        format!("{}:reply:{id}", self.prefix)
    }
    /// `{p}:result:{name}`: a result stored under its result key.
    pub fn result(&self, name: &str) -> String {
        format!("{}:result:{name}", self.prefix)
    }
    /// `{p}:key:{key}`: ids holding a slot of a per-key limit.
    pub fn key_slots(&self, key: &str) -> String {
        format!("{}:key:{key}", self.prefix)
    }
    /// `{p}:deferred:{key}`: ids waiting for a slot of a key, oldest first.
    pub fn deferred(&self, key: &str) -> String {
        format!("{}:deferred:{key}", self.prefix)
    }
    /// `{p}:stats`: cluster-wide counters.
    pub fn stats(&self) -> String {
        format!("{}:stats", self.prefix)
    }
    /// `{p}:pending:{worker}@{node}`: tasks pinned to one node.
    pub fn node_pending(&self, worker: &str, node: &str) -> String {
        format!("{}:pending:{worker}@{node}", self.prefix)
    }
    /// `{p}:members`: ids of the nodes in the cluster (joined, not yet left or failed over).
    pub fn members(&self) -> String {
        format!("{}:members", self.prefix)
    }
    /// `{p}:broadcasts`: ids of running broadcasts (target `all`).
    pub fn broadcasts(&self) -> String {
        format!("{}:broadcasts", self.prefix)
    }
    /// `{p}:node:{node}:info`: what a node reports about itself for `bgnode info`.
    pub fn info(&self, node: &str) -> String {
        format!("{}:node:{node}:info", self.prefix)
    }
    /// `{p}:cluster`: the hash of the cluster cookie; nodes with another cookie refuse to start.
    pub fn cluster(&self) -> String {
        format!("{}:cluster", self.prefix)
    }
}
