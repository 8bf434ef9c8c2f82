//! The workers a node offers: built-ins, Rust workers registered on the builder, and scripts from
//! the workers folder, each with its concurrency and time limit. [`run_attempt`] runs one attempt
//! of any of them; the worker actors and `bgnode eval` share it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::config::Settings;
use crate::decide::policy::RetryPolicy;
use crate::decide::times::format_duration;
use crate::model::task::{Outcome, Task};
use tokio_util::sync::CancellationToken;

use crate::workers::rust::{SharedWorker, TaskContext, WorkerOptions, builtin};
use crate::workers::script::{CANCEL_GRACE, ScriptRun, run_script, scan_dir};

/// How a worker runs.
#[derive(Clone)]
pub(crate) enum WorkerKind {
    /// A Rust worker in this process.
    Rust(SharedWorker),
    /// An executable in the workers folder (canonical path).
    Script(PathBuf),
}

impl std::fmt::Debug for WorkerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerKind::Rust(_) => write!(f, "Rust"),
            WorkerKind::Script(p) => write!(f, "Script({})", p.display()),
        }
    }
}

/// One worker type on this node.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEntry {
    /// Name.
    pub name: String,
    /// How it runs.
    pub kind: WorkerKind,
    /// Tasks running at once on this node.
    pub concurrency: u32,
    /// Default run-time limit.
    pub timeout: Duration,
    /// Default retry policy.
    pub retry: RetryPolicy,
    /// The script's settings file, when one set its options.
    pub settings_file: Option<PathBuf>,
}

impl WorkerEntry {
    /// What `bgnode info` shows of this worker's settings.
    pub(crate) fn described(&self) -> crate::client::WorkerLimits {
        crate::client::WorkerLimits {
            concurrency: self.concurrency,
            timeout_ms: self.timeout.as_millis() as u64,
            attempts: self.retry.attempts,
            backoff_ms: self.retry.base.as_millis() as u64,
            backoff_cap_ms: self.retry.cap.as_millis() as u64,
            file: self.settings_file.as_ref().map(|p| p.display().to_string()),
        }
    }
}

/// The worker types a node offers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Registry {
    entries: BTreeMap<String, WorkerEntry>,
    /// The canonical workers folder, when it exists.
    pub dir: Option<PathBuf>,
    /// Things worth a warning at start (skipped scripts, shadowed names).
    pub notes: Vec<String>,
}

impl Registry {
    /// Builds the registry from the built-ins, `rust` workers and the scripts folder.
    /// Rust workers take precedence over built-ins and scripts of the same name.
    pub(crate) fn build(
        rust: &[(String, SharedWorker, WorkerOptions)],
        settings: &Settings,
    ) -> Registry {
        let mut reg = Registry::default();
        let defaults = WorkerOptions::default();
        for (name, worker) in builtin::all() {
            reg.insert(name, WorkerKind::Rust(worker), &defaults, settings);
        }
        for (name, worker, opts) in rust {
            reg.insert(name, WorkerKind::Rust(worker.clone()), opts, settings);
        }
        match scan_dir(&settings.workers.dir) {
            Ok(scan) => {
                reg.dir = settings.workers.dir.canonicalize().ok();
                for (path, why) in scan.skipped {
                    reg.notes
                        .push(format!("script {} skipped: {why}", path.display()));
                }
                for (name, path) in scan.found {
                    if reg.entries.contains_key(&name) {
                        reg.notes.push(format!(
                            "script {} skipped: a Rust worker is named `{name}`",
                            path.display()
                        ));
                        continue;
                    }
                    let dir = reg
                        .dir
                        .clone()
                        .unwrap_or_else(|| settings.workers.dir.clone());
                    match crate::workers::settings::read(&dir, &name) {
                        Ok(own) => {
                            let file = own
                                .is_some()
                                .then(|| crate::workers::settings::path_of(&dir, &name));
                            let opts = own.map_or(defaults.clone(), |o| o.options(settings));
                            reg.insert(&name, WorkerKind::Script(path), &opts, settings);
                            if let Some(entry) = reg.entries.get_mut(&name) {
                                entry.settings_file = file;
                            }
                        }
                        Err(e) => reg.notes.push(format!(
                            "script {} skipped: its settings cannot be used: {e}",
                            path.display()
                        )),
                    }
                }
            }
            Err(e) => reg.notes.push(format!(
                "workers folder {} not read ({e}): no script workers",
                settings.workers.dir.display()
            )),
        }
        reg
    }

    fn insert(&mut self, name: &str, kind: WorkerKind, opts: &WorkerOptions, settings: &Settings) {
        self.entries.insert(
            name.to_owned(),
            WorkerEntry {
                name: name.to_owned(),
                kind,
                concurrency: opts
                    .concurrency
                    .unwrap_or(settings.workers.concurrency)
                    .max(1),
                timeout: opts.timeout.unwrap_or(settings.workers.timeout),
                retry: RetryPolicy {
                    attempts: opts.attempts.unwrap_or(settings.workers.attempts).max(1),
                    base: opts.backoff.map_or(settings.workers.backoff, |b| b.0),
                    cap: opts.backoff.map_or(settings.workers.backoff_cap, |b| b.1),
                },
                settings_file: None,
            },
        );
    }

    /// Logs what is worth a warning (skipped scripts, shadowed names).
    pub(crate) fn log_notes(&self) {
        for note in &self.notes {
            tracing::warn!("{note}");
        }
    }

    /// The worker named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&WorkerEntry> {
        self.entries.get(name)
    }

    /// Every worker, by name.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &WorkerEntry> {
        self.entries.values()
    }

    /// Worker names, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
}

/// Everything an attempt needs besides the task.
#[derive(Debug, Clone)]
pub(crate) struct RunEnv {
    /// This node's id.
    pub node: String,
    /// The canonical workers folder (scripts run there).
    pub dir: PathBuf,
    /// Largest script output accepted.
    pub output_limit: usize,
}

impl WorkerEntry {
    /// The retry policy of `task`: the task's own settings, else this worker's.
    pub(crate) fn retry_policy(&self, task: &Task) -> RetryPolicy {
        RetryPolicy {
            attempts: task.attempts.unwrap_or(self.retry.attempts),
            base: task.backoff.unwrap_or(self.retry.base),
            cap: task.backoff_cap.unwrap_or(self.retry.cap),
        }
    }
}

/// The worker types a running node offers now, and what it needs to rebuild them: a reload
/// (`bgnode reload`) rescans the scripts folder and replaces the registry; tasks already
/// running keep the version they started with.
pub(crate) struct LiveRegistry {
    current: RwLock<Arc<Registry>>,
    rust: Vec<(String, SharedWorker, WorkerOptions)>,
    settings: Settings,
    env: RunEnv,
}

impl LiveRegistry {
    /// Builds the registry of a node with `rust` workers and `settings`, logging its notes.
    pub(crate) fn new(
        rust: Vec<(String, SharedWorker, WorkerOptions)>,
        settings: &Settings,
    ) -> LiveRegistry {
        let registry = Registry::build(&rust, settings);
        registry.log_notes();
        let env = RunEnv {
            node: settings.node.id.clone(),
            dir: registry
                .dir
                .clone()
                .unwrap_or_else(|| settings.workers.dir.clone()),
            output_limit: settings.limits.message_bytes as usize,
        };
        LiveRegistry {
            current: RwLock::new(Arc::new(registry)),
            rust,
            settings: settings.clone(),
            env,
        }
    }

    /// The worker types offered now.
    pub(crate) fn current(&self) -> Arc<Registry> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The worker named `name`, as offered now.
    pub(crate) fn get(&self, name: &str) -> Option<WorkerEntry> {
        self.current().get(name).cloned()
    }

    /// Rescans the scripts folder and replaces the registry; returns the names offered now.
    pub(crate) fn reload(&self) -> Vec<String> {
        let registry = Registry::build(&self.rust, &self.settings);
        registry.log_notes();
        let names = registry.names();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(registry);
        names
    }

    /// How workers run on this node.
    pub(crate) fn env(&self) -> &RunEnv {
        &self.env
    }
}

/// Runs one attempt of `task` with `entry`. A panic in a Rust worker propagates to the caller
/// (the worker actor), which turns it into a failed attempt and is restarted.
pub(crate) async fn run_attempt(
    entry: &WorkerEntry,
    task: &Task,
    env: &RunEnv,
    cancel: &CancellationToken,
) -> Outcome {
    let limit = task.timeout.unwrap_or(entry.timeout);
    match &entry.kind {
        WorkerKind::Rust(worker) => {
            let args: Value = match serde_json::from_str(&task.args) {
                Ok(v) => v,
                Err(e) => {
                    return Outcome::Failed {
                        error: format!("stored arguments are not JSON: {e}"),
                        retry: crate::model::task::Retry::Never,
                    };
                }
            };
            let ctx = TaskContext {
                id: task.id.clone(),
                worker: task.worker.clone(),
                attempt: task.attempt,
                node: env.node.clone(),
                args,
                cancel: cancel.clone(),
            };
            let run = tokio::time::timeout(limit, worker.run(ctx));
            let stop = async {
                cancel.cancelled().await;
                tokio::time::sleep(CANCEL_GRACE).await;
            };
            let outcome = tokio::select! {
                r = run => match r {
                    Ok(Ok(value)) => Outcome::Done(value),
                    Ok(Err(e)) => e.into_outcome(),
                    Err(_) => Outcome::failed(format!("timed out after {}", format_duration(limit))),
                },
                () = stop => Outcome::Cancelled,
            };
            match outcome {
                Outcome::Failed { .. } if cancel.is_cancelled() => Outcome::Cancelled,
                other => other,
            }
        }
        WorkerKind::Script(path) => {
            run_script(ScriptRun {
                path,
                dir: &env.dir,
                id: &task.id,
                worker: &task.worker,
                attempt: task.attempt,
                node: &env.node,
                args: &task.args,
                timeout: limit,
                output_limit: env.output_limit,
                cancel,
            })
            .await
        }
    }
}
