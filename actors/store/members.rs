//! The cluster's members: joining and leaving, liveness leases, what nodes report about
//! themselves, the cookie check, and leases in general (liveness, ingress).

use std::time::{Duration, Instant};

use super::{Keys, Store, StoreResult};
use crate::config::EventLevel;
use crate::decide::runnable::LiveNodes;

/// What the cookie check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CookieCheck {
    /// The cookie is the cluster's (or the first the cluster has).
    Same,
    /// The cluster had another cookie but no live member: this node's replaced it.
    Replaced,
    /// A live member (`member`) of the cluster has another cookie.
    Other {
        /// A live member.
        member: String,
    },
}

/// One incarnation of a node, as the scripts fence it: its id and the value of its liveness
/// lease (`id:generation`). Everything a node does to shared state in its own name carries it,
/// so a process paused while its id was taken over by a new one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Incarnation {
    /// The node id.
    pub(crate) node: String,
    /// The lease holder: `id:generation`.
    pub(crate) holder: String,
}

impl Incarnation {
    /// Incarnation `generation` of node `node`.
    pub(crate) fn new(node: &str, generation: u64) -> Incarnation {
        Incarnation {
            node: node.to_owned(),
            holder: format!("{node}:{generation}"),
        }
    }
}

/// Who a membership change is made by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard<'a> {
    /// The node itself, as this incarnation: refused while another one holds the lease.
    Myself(&'a Incarnation),
    /// A survivor, for a dead node: refused while the node's lease exists.
    Survivor,
}

impl<'a> Guard<'a> {
    /// The script argument (see `release.lua`): the holder, or '' for a survivor.
    pub(super) fn arg(self) -> &'a str {
        match self {
            Guard::Myself(me) => &me.holder,
            Guard::Survivor => "",
        }
    }
}

/// The answer to a lease request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lease {
    /// We held it and renewed it.
    Renewed,
    /// It was free (expired, or never taken) and is ours now.
    Taken,
    /// Someone else holds it.
    HeldBy(String),
}

impl Store {
    /// Makes `me` a member; it gets its occurrence of every running broadcast. Returns how
    /// many, or `None` when another incarnation of the id holds its lease (nothing changed).
    pub(crate) async fn join(&self, me: &Incarnation) -> StoreResult<Option<usize>> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .join
            .key(self.keys.alive(&me.node))
            .arg(self.keys.prefix())
            .arg(&me.node)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(&me.holder)
            .invoke_async(&mut con)
            .await?;
        Ok(usize::try_from(n).ok())
    }

    /// Removes `node` from the members; its unfinished broadcast occurrences are cancelled.
    /// Returns whether it was a member; `false` also when `guard` held the change back.
    pub(crate) async fn leave(&self, node: &str, guard: Guard<'_>) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .leave
            .key(self.keys.alive(node))
            .arg(self.keys.prefix())
            .arg(node)
            .arg(self.names.result_ttl.as_millis() as u64)
            .arg(&self.names.channel)
            .arg(&self.names.events)
            .arg(guard.arg())
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }

    /// The member node ids.
    pub(crate) async fn members(&self) -> StoreResult<Vec<String>> {
        let mut con = self.con.clone();
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.members())
            .query_async(&mut con)
            .await?;
        members.sort();
        Ok(members)
    }

    /// Which of `nodes` hold their liveness lease.
    pub(crate) async fn alive(&self, nodes: &[String]) -> StoreResult<Vec<bool>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("EXISTS").arg(self.keys.alive(n));
        }
        let found: Vec<i64> = pipe.query_async(&mut con).await?;
        Ok(found.into_iter().map(|n| n == 1).collect())
    }

    /// Stores what a node reports about itself, for `ttl`.
    pub(crate) async fn write_info(
        &self,
        node: &str,
        info: &str,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut con = self.con.clone();
        redis::cmd("SET")
            .arg(self.keys.info(node))
            .arg(info)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// The reports of `nodes` (`None` for a node that has none: down, or not started yet).
    pub(crate) async fn infos(&self, nodes: &[String]) -> StoreResult<Vec<Option<String>>> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.con.clone();
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("GET").arg(self.keys.info(n));
        }
        Ok(pipe.query_async(&mut con).await?)
    }

    /// The live nodes (members holding their liveness lease) with the worker types each
    /// reports; see [`crate::decide::runnable`].
    pub(crate) async fn live_nodes(&self) -> StoreResult<LiveNodes> {
        let members = self.members().await?;
        let alive = self.alive(&members).await?;
        let live: Vec<String> = members
            .into_iter()
            .zip(alive)
            .filter_map(|(m, a)| a.then_some(m))
            .collect();
        let reports = self.infos(&live).await?;
        let mut nodes = LiveNodes::default();
        for (node, report) in live.iter().zip(reports) {
            let workers = report
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
                .and_then(|v| {
                    let w = v.get("workers")?.as_object()?;
                    (!w.is_empty()).then(|| w.keys().cloned().collect())
                });
            nodes.add(node, workers);
        }
        Ok(nodes)
    }

    /// Checks this node's cookie (its hash) against the cluster's; see [`CookieCheck`].
    pub(crate) async fn check_cookie(&self, hash: &str) -> StoreResult<CookieCheck> {
        let mut con = self.con.clone();
        let answer: Vec<String> = self
            .scripts
            .cookie
            .key(self.keys.cluster())
            .arg(hash)
            .arg(self.keys.prefix())
            .invoke_async(&mut con)
            .await?;
        Ok(match answer.first().map(String::as_str) {
            Some("replaced") => CookieCheck::Replaced,
            Some("other") => CookieCheck::Other {
                member: answer.get(1).cloned().unwrap_or_default(),
            },
            _ => CookieCheck::Same,
        })
    }

    /// Claims the task channel for this cluster (this key prefix). Returns the prefix of another
    /// running cluster that already uses the channel, if any; a channel whose cluster has no
    /// live member is taken over.
    pub(crate) async fn claim_channel(&self) -> StoreResult<Option<String>> {
        let mut con = self.con.clone();
        let owner: String = self
            .scripts
            .channel
            .key(Keys::channel_owner(&self.names.channel))
            .arg(self.keys.prefix())
            .invoke_async(&mut con)
            .await?;
        Ok((!owner.is_empty()).then_some(owner))
    }

    /// Makes `level` the cluster's event level (`{prefix}:events:final` present for `final`,
    /// which every script that queues a task reads). Returns the level it replaced.
    pub(crate) async fn set_event_level(&self, level: EventLevel) -> StoreResult<EventLevel> {
        let mut con = self.con.clone();
        let key = self.keys.events_final();
        let mut pipe = redis::pipe();
        pipe.exists(&key);
        match level {
            EventLevel::Final => pipe.set(&key, 1).ignore(),
            EventLevel::All => pipe.del(&key).ignore(),
        };
        let (was_final,): (bool,) = pipe.query_async(&mut con).await?;
        Ok(if was_final {
            EventLevel::Final
        } else {
            EventLevel::All
        })
    }

    /// Takes or renews the lease `key` for `holder`. The script's answer carries Redis's time,
    /// which the clock is offered as a new anchor.
    pub(crate) async fn lease(&self, key: &str, holder: &str, ttl: Duration) -> StoreResult<Lease> {
        let mut con = self.con.clone();
        let sent = Instant::now();
        let (code, who, seconds, micros): (i64, String, u64, u64) = self
            .scripts
            .lease
            .key(key)
            .arg(holder)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut con)
            .await?;
        self.clock
            .offer(sent, Instant::now(), super::clock::time_us(seconds, micros));
        Ok(match code {
            1 => Lease::Renewed,
            2 => Lease::Taken,
            _ => Lease::HeldBy(who),
        })
    }

    /// Drops the lease `key` if `holder` has it.
    pub(crate) async fn unlease(&self, key: &str, holder: &str) -> StoreResult<bool> {
        let mut con = self.con.clone();
        let n: i64 = self
            .scripts
            .unlease
            .key(key)
            .arg(holder)
            .invoke_async(&mut con)
            .await?;
        Ok(n == 1)
    }
}
