//! Start a node inside a program built on ractor, as a linked child of the program's own actor:
//! the host's actor is told, like for any child, when the node's actor tree stops or fails.
//!
//! Run: `cargo run --example linked` (needs Redis at redis://127.0.0.1:6379, or set
//! BGNODE_REDIS__URL). The host actor starts the node, asks it to greet twice through the
//! client, then stops; its `post_stop` shuts the node down gracefully.

use std::time::Duration;

use background::{
    Client, Node, NodeHandle, Settings, Sources, TaskContext, TaskError, TaskSpec, Worker,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::{Value, json};

/// A Rust worker the node runs.
struct Greet;

#[async_trait::async_trait]
impl Worker for Greet {
    async fn run(&self, ctx: TaskContext) -> Result<Value, TaskError> {
        let name: String = ctx.arg("name")?;
        Ok(json!(format!("hello, {name} (from {})", ctx.node)))
    }
}

/// The host program's own actor.
struct App;

/// The host's state: the node it supervises and a client of its cluster.
struct AppState {
    node: Option<NodeHandle>,
    client: Client,
}

/// What the host is asked to do.
enum AppMsg {
    /// Greet `name` through the cluster and answer with the result.
    Greet(String, RpcReplyPort<Result<Value, String>>),
}

// A local message: it never crosses the cluster link.
impl ractor::Message for AppMsg {}

impl Actor for App {
    type Msg = AppMsg;
    type State = AppState;
    type Arguments = Settings;

    async fn pre_start(
        &self,
        myself: ActorRef<AppMsg>,
        settings: Settings,
    ) -> Result<AppState, ActorProcessingErr> {
        // The node's supervisor becomes a linked child of this actor.
        let node = Node::builder(settings)
            .worker("greet", Greet)
            .start_linked(myself.get_cell())
            .await?;
        let client = node.client().await?;
        println!("node {} started under the host actor", node.id());
        Ok(AppState {
            node: Some(node),
            client,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<AppMsg>,
        msg: AppMsg,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let AppMsg::Greet(name, reply) = msg;
        let client = state.client.clone();
        // Answer from a task, so a slow call never blocks the host actor.
        tokio::spawn(async move {
            let spec = TaskSpec::new("greet", json!({ "name": name }));
            let result = client
                .call(spec, Duration::from_secs(10))
                .await
                .map_err(|e| e.to_string());
            let _ = reply.send(result);
        });
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<AppMsg>,
        event: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        let node_cell = state.node.as_ref().map(NodeHandle::actor);
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if node_cell
                    .as_ref()
                    .is_some_and(|n| n.get_id() == cell.get_id()) =>
            {
                println!("the node stopped ({reason:?}); the host stops too");
                state.node = None;
                myself.stop(Some("node stopped".into()));
            }
            SupervisionEvent::ActorFailed(cell, err)
                if node_cell
                    .as_ref()
                    .is_some_and(|n| n.get_id() == cell.get_id()) =>
            {
                println!("the node failed ({err}); the host stops too");
                state.node = None;
                myself.stop(Some("node failed".into()));
            }
            _ => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AppMsg>,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(node) = state.node.take() {
            let report = node.shutdown().await?;
            println!("node shut down: {report:?}");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    // The same settings `bgnode start` reads: ./cluster.toml, BGNODE_* variables.
    let settings = Settings::load(&Sources::from_env())?;
    let (app, handle) = Actor::spawn(None, App, settings).await?;
    for name in ["Ada", "Grace"] {
        let answer = ractor::call_t!(app, AppMsg::Greet, 15_000, name.to_owned())?;
        match answer {
            Ok(value) => println!("greet {name}: {value}"),
            Err(e) => anyhow::bail!("greet {name} failed: {e}"),
        }
    }
    app.stop(Some("done".into()));
    handle.await?;
    Ok(())
}
