//! Running one attempt of a worker here and now, outside any cluster (`bgnode eval`): no Redis,
//! no retries, no record. Useful to try a script or a Rust worker while writing it.

use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::model::names::validate_worker_name;
use crate::model::task::{Outcome, Task, new_task_id, now_ms};
use crate::workers::registry::{Registry, RunEnv, run_attempt};

/// Why a worker could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The name fails the worker-name allowlist.
    #[error("{0}")]
    BadName(String),
    /// No built-in or script worker has this name.
    #[error("no worker `{worker}` (offered here: {offered}; scripts come from {dir})")]
    Unknown {
        /// The name asked for.
        worker: String,
        /// The names offered, comma-separated.
        offered: String,
        /// The scripts folder.
        dir: String,
    },
}

/// One attempt run by [`eval`].
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The id the attempt ran under (`eval-…`).
    pub id: String,
    /// How it ended; a panic of a Rust worker is a failure.
    pub outcome: Outcome,
}

/// Runs one attempt of `worker` (a built-in or a script of the workers folder in `settings`)
/// with `args`, in this process, with the worker's time limit.
pub async fn eval(
    settings: &Settings,
    worker: &str,
    args: &Value,
) -> Result<Evaluation, EvalError> {
    validate_worker_name(worker).map_err(|e| EvalError::BadName(e.to_string()))?;
    let registry = Registry::build(&[], settings);
    let Some(entry) = registry.get(worker) else {
        return Err(EvalError::Unknown {
            worker: worker.to_owned(),
            offered: registry.names().join(", "),
            dir: settings.workers.dir.display().to_string(),
        });
    };
    let task = Task {
        id: format!("eval-{}", new_task_id()),
        worker: worker.to_owned(),
        args: args.to_string(),
        priority: 0,
        attempt: 1,
        attempts: Some(1),
        timeout: None,
        backoff: None,
        backoff_cap: None,
        deadline: None,
        epoch: 0,
        created: now_ms(),
        pinned: false,
    };
    let env = RunEnv {
        node: format!("eval@{}", settings.node.id),
        dir: registry
            .dir
            .clone()
            .unwrap_or_else(|| settings.workers.dir.clone()),
        output_limit: settings.limits.message_bytes as usize,
    };
    let cancel = CancellationToken::new();
    let outcome = std::panic::AssertUnwindSafe(run_attempt(entry, &task, &env, &cancel))
        .catch_unwind()
        .await
        .unwrap_or_else(|_| Outcome::failed("worker crashed (panic)"));
    Ok(Evaluation {
        id: task.id,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_built_in_runs_and_a_bad_name_is_refused() {
        let settings = Settings::defaults();
        let done = eval(&settings, "bg-echo", &serde_json::json!({"a": 1}))
            .await
            .unwrap();
        assert!(done.id.starts_with("eval-"));
        assert_eq!(done.outcome, Outcome::Done(serde_json::json!({"a": 1})));
        assert!(matches!(
            eval(&settings, "no such", &Value::Null).await,
            Err(EvalError::BadName(_))
        ));
        let unknown = eval(&settings, "nobody-has-this", &Value::Null).await;
        assert!(
            matches!(&unknown, Err(EvalError::Unknown { offered, .. }) if offered.contains("bg-echo")),
            "{unknown:?}"
        );
    }
}
