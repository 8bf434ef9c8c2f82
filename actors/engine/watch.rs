//! Watching the workers folder (`[workers] watch`): a script added, changed or removed, or a
//! `NAME.toml` beside one, is picked up as `bgnode reload` would pick it up, about a second
//! later. A changed script needs nothing: each attempt runs the file as it is then, and an
//! attempt already running keeps the version it started with. The dispatcher adds lanes for new
//! worker types and retires those no longer offered, and the load it publishes (gossiped to the
//! peers) follows, so placement does too.
//!
//! Events come from the OS (inotify, through the `notify` crate), many per change (create,
//! write, chmod, rename): the watcher waits until the folder has been quiet for [`QUIET`] (at
//! most [`LONGEST`]), then reloads once. Files that cannot be workers (a log a script writes beside itself, say) and
//! mere reads (every run opens its script) are not changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};

use crate::cluster::wire::ControlOp;
use crate::engine::control::Control;

/// How long the folder must be quiet before a reload.
pub(crate) const QUIET: Duration = Duration::from_millis(300);
/// The longest a reload waits for the folder to be quiet.
pub(crate) const LONGEST: Duration = Duration::from_secs(1);

/// Watches `dir` until the task is aborted, reloading the workers through `control` after each
/// burst of relevant changes. A folder that cannot be watched is said once; `bgnode reload`
/// still works.
pub(crate) async fn watch_workers(dir: PathBuf, control: Arc<Control>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let _ = tx.send(event);
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "cannot watch the workers folder ({e}); use `bgnode reload` after changes"
            );
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch the workers folder {} ({e}); use `bgnode reload` after changes",
            dir.display()
        );
        return;
    }
    tracing::info!(dir = %dir.display(), "watching the workers folder for changes");
    loop {
        let Some(event) = rx.recv().await else {
            return;
        };
        if !relevant(&event, &control) {
            continue;
        }
        // Wait for the burst to end: until no relevant event came for QUIET, and at most
        // LONGEST (a folder written to without pause is still picked up).
        let until = tokio::time::Instant::now() + LONGEST;
        let mut quiet_from = tokio::time::Instant::now() + QUIET;
        loop {
            let wake = quiet_from.min(until);
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Ok(Some(event)) => {
                    if relevant(&event, &control) {
                        quiet_from = tokio::time::Instant::now() + QUIET;
                    }
                }
                Ok(None) => return,
                Err(_) => break,
            }
        }
        control.apply(ControlOp::Reload, "the workers folder watcher");
    }
}

/// Whether `event` may change the workers offered: not a read, and about a file that is or may
/// become a worker or its settings (an executable, a script, a `.toml`), or that names a worker
/// offered now (a removal).
fn relevant(event: &notify::Result<notify::Event>, control: &Control) -> bool {
    let Ok(event) = event else {
        // The watch itself had trouble (an overflow of the event queue): look again.
        return true;
    };
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event
        .paths
        .iter()
        .any(|path| may_be_a_worker(path, control))
}

fn may_be_a_worker(path: &Path, control: &Control) -> bool {
    if path.extension().is_some_and(|e| e == "toml") {
        return true;
    }
    if crate::workers::script::may_be_a_script(path) {
        return true;
    }
    path.file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|stem| control.workers.get(stem).is_some())
}
