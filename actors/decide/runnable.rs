//! Whether some live node can run a waiting task: a task of a worker type that no live node
//! offers, or pinned to a node that is not live (or does not offer its worker), waits for
//! nothing that is coming. `bgnode do` warns about it, `bgnode bg` marks it, and after
//! `[tasks] unrunnable_after` in that condition `unrunnable.lua` ends it `expired`.
//!
//! The rule, here and in `unrunnable.lua` (which applies it when it expires tasks): a live node
//! is a member whose liveness lease exists; it offers the worker types its report
//! (`{prefix}:node:{id}:info`) lists, and, while it has no report yet (starting), it is taken to
//! offer every type, so a starting node never makes a task look unrunnable.

use std::collections::{BTreeMap, BTreeSet};

/// Why no live node can run a task now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrunnable {
    /// No live node offers the worker (the task may run on any node).
    NoNodeOffers {
        /// The worker type.
        worker: String,
    },
    /// The task is pinned to a node that is not live.
    NodeDown {
        /// The node.
        node: String,
    },
    /// The task is pinned to a live node that does not offer its worker.
    NodeLacks {
        /// The node.
        node: String,
        /// The worker type.
        worker: String,
    },
}

impl std::fmt::Display for Unrunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unrunnable::NoNodeOffers { worker } => {
                write!(f, "no live node offers worker `{worker}`")
            }
            Unrunnable::NodeDown { node } => write!(f, "node `{node}` is not live"),
            Unrunnable::NodeLacks { node, worker } => {
                write!(f, "node `{node}` does not offer worker `{worker}`")
            }
        }
    }
}

impl Unrunnable {
    /// What the task waits for, for people: `a node that offers `w``, `node `n``.
    pub fn waits_for(&self) -> String {
        match self {
            Unrunnable::NoNodeOffers { worker } => {
                format!("a live node that offers worker `{worker}`")
            }
            Unrunnable::NodeDown { node } => format!("node `{node}` to come back"),
            Unrunnable::NodeLacks { node, worker } => {
                format!("node `{node}` to offer worker `{worker}`")
            }
        }
    }
}

/// The live nodes and the worker types each offers (`None`: no report yet, so any).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LiveNodes {
    nodes: BTreeMap<String, Option<BTreeSet<String>>>,
}

impl LiveNodes {
    /// Adds live node `node` offering `workers` (`None`: unknown yet).
    pub(crate) fn add(&mut self, node: &str, workers: Option<BTreeSet<String>>) {
        self.nodes.insert(node.to_owned(), workers);
    }

    fn offers(&self, node: &str, worker: &str) -> Option<bool> {
        self.nodes
            .get(node)
            .map(|w| w.as_ref().is_none_or(|w| w.contains(worker)))
    }
}

/// Why no live node can run a task of `worker` pinned to `pinned` (`None`: any node), if none
/// can.
pub(crate) fn unrunnable(
    worker: &str,
    pinned: Option<&str>,
    live: &LiveNodes,
) -> Option<Unrunnable> {
    match pinned {
        Some(node) => match live.offers(node, worker) {
            None => Some(Unrunnable::NodeDown {
                node: node.to_owned(),
            }),
            Some(false) => Some(Unrunnable::NodeLacks {
                node: node.to_owned(),
                worker: worker.to_owned(),
            }),
            Some(true) => None,
        },
        None => {
            let able = live
                .nodes
                .keys()
                .any(|n| live.offers(n, worker) == Some(true));
            (!able).then(|| Unrunnable::NoNodeOffers {
                worker: worker.to_owned(),
            })
        }
    }
}

/// One case of the rule, for the unit test here and for `unrunnable.lua`'s store test: the
/// members (id, whether its liveness lease exists, its report's workers: `None` no report), a
/// task's worker and pinned node, and the reason no live node can run it (`None`: one can).
#[cfg(test)]
pub(crate) struct Case {
    pub members: &'static [(&'static str, bool, Option<&'static [&'static str]>)],
    pub worker: &'static str,
    pub pinned: Option<&'static str>,
    pub want: Option<&'static str>,
}

/// The rule as a table.
#[cfg(test)]
pub(crate) const CASES: &[Case] = &[
    Case {
        members: &[("n1", true, Some(&["echo"]))],
        worker: "echo",
        pinned: None,
        want: None,
    },
    Case {
        members: &[("n1", true, Some(&["echo"]))],
        worker: "other",
        pinned: None,
        want: Some("no live node offers worker `other`"),
    },
    Case {
        members: &[
            ("n1", true, Some(&["echo"])),
            ("n2", false, Some(&["other"])),
        ],
        worker: "other",
        pinned: None,
        want: Some("no live node offers worker `other`"),
    },
    Case {
        members: &[
            ("n1", true, Some(&["echo"])),
            ("n2", true, Some(&["other"])),
        ],
        worker: "other",
        pinned: None,
        want: None,
    },
    Case {
        members: &[("n1", true, None)],
        worker: "other",
        pinned: None,
        want: None,
    },
    Case {
        members: &[("n1", true, Some(&[]))],
        worker: "other",
        pinned: None,
        want: None,
    },
    Case {
        members: &[],
        worker: "echo",
        pinned: None,
        want: Some("no live node offers worker `echo`"),
    },
    Case {
        members: &[("n1", true, Some(&["echo"]))],
        worker: "echo",
        pinned: Some("n1"),
        want: None,
    },
    Case {
        members: &[("n1", true, Some(&["echo"]))],
        worker: "other",
        pinned: Some("n1"),
        want: Some("node `n1` does not offer worker `other`"),
    },
    Case {
        members: &[("n1", true, None)],
        worker: "other",
        pinned: Some("n1"),
        want: None,
    },
    Case {
        members: &[("n1", true, Some(&["echo"]))],
        worker: "echo",
        pinned: Some("n2"),
        want: Some("node `n2` is not live"),
    },
    Case {
        members: &[
            ("n1", true, Some(&["echo"])),
            ("n2", false, Some(&["echo"])),
        ],
        worker: "echo",
        pinned: Some("n2"),
        want: Some("node `n2` is not live"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds() {
        for (i, case) in CASES.iter().enumerate() {
            let mut live = LiveNodes::default();
            for (node, alive, workers) in case.members {
                // What `Store::live_nodes` does: only leased members; a report listing no
                // worker counts as none.
                if *alive {
                    let w = workers.filter(|w| !w.is_empty());
                    live.add(node, w.map(|w| w.iter().map(|s| s.to_string()).collect()));
                }
            }
            let got = unrunnable(case.worker, case.pinned, &live).map(|u| u.to_string());
            assert_eq!(got.as_deref(), case.want, "case {i}");
        }
    }

    fn live(nodes: &[(&str, Option<&[&str]>)]) -> LiveNodes {
        let mut l = LiveNodes::default();
        for (n, w) in nodes {
            l.add(n, w.map(|w| w.iter().map(|s| s.to_string()).collect()));
        }
        l
    }

    #[test]
    fn a_task_is_unrunnable_only_when_no_live_node_could_take_it() {
        let l = live(&[("n1", Some(&["echo"])), ("n2", None)]);
        assert_eq!(unrunnable("echo", None, &l), None);
        assert_eq!(unrunnable("echo", Some("n1"), &l), None);
        // n2 has no report yet: it may offer anything.
        assert_eq!(unrunnable("other", None, &l), None);
        assert_eq!(unrunnable("other", Some("n2"), &l), None);
        assert_eq!(
            unrunnable("other", Some("n1"), &l),
            Some(Unrunnable::NodeLacks {
                node: "n1".into(),
                worker: "other".into()
            })
        );
        assert_eq!(
            unrunnable("echo", Some("n9"), &l),
            Some(Unrunnable::NodeDown { node: "n9".into() })
        );
        let l = live(&[("n1", Some(&["echo"]))]);
        let none = unrunnable("other", None, &l).unwrap();
        assert_eq!(none.to_string(), "no live node offers worker `other`");
        assert_eq!(
            unrunnable("echo", None, &LiveNodes::default()),
            Some(Unrunnable::NoNodeOffers {
                worker: "echo".into()
            })
        );
    }
}
