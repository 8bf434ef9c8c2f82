//! The scripts as one Redis function library: `common.lua` and every script of `lua/`, loaded
//! once with `FUNCTION LOAD` and called by name with `FCALL`.
//!
//! A script sent with `EVALSHA` runs its whole text on every call, so the shared definitions
//! of `common.lua` (25 functions and 14 tables and values) were built again on each one: 7 µs
//! of Redis CPU per call before the script did any work. In a library they are built once, when
//! it is loaded; each call only resets the few values `common.lua` keeps for the length of one
//! call (`begin_call`).
//!
//! The library is named after a hash of its text (`bgnode_<hash>`), and so are its functions,
//! so nodes of two builds with different scripts can share a Redis during a rolling upgrade,
//! each calling its own. A Redis that does not have it (never loaded, or restarted without
//! persistence, or `FUNCTION FLUSH`) answers `Function not found`; the call loads it and is
//! made again.

use std::sync::LazyLock;

use redis::{Cmd, FromRedisValue, RedisError, ServerError, ToRedisArgs};
use sha2::{Digest, Sha256};

use super::{Con, StoreResult};

/// The scripts of `lua/`, each by the name of its function in the library.
const SCRIPTS: [(&str, &str); 24] = [
    ("enqueue", include_str!("lua/enqueue.lua")),
    ("claim", include_str!("lua/claim.lua")),
    ("write", include_str!("lua/write.lua")),
    ("release", include_str!("lua/release.lua")),
    ("lease", include_str!("lua/lease.lua")),
    ("unlease", include_str!("lua/unlease.lua")),
    ("fire", include_str!("lua/fire.lua")),
    ("occur", include_str!("lua/occur.lua")),
    ("expire", include_str!("lua/expire.lua")),
    ("unrunnable", include_str!("lua/unrunnable.lua")),
    ("cancel", include_str!("lua/cancel.lua")),
    ("retry", include_str!("lua/retry.lua")),
    ("adopt", include_str!("lua/adopt.lua")),
    ("join", include_str!("lua/join.lua")),
    ("leave", include_str!("lua/leave.lua")),
    ("channel", include_str!("lua/channel.lua")),
    ("cookie", include_str!("lua/cookie.lua")),
    ("pause", include_str!("lua/pause.lua")),
    ("delete", include_str!("lua/delete.lua")),
    ("tally", include_str!("lua/tally.lua")),
    ("take", include_str!("lua/take.lua")),
    ("settle", include_str!("lua/settle.lua")),
    ("archive_take", include_str!("lua/archive_take.lua")),
    ("archive_ack", include_str!("lua/archive_ack.lua")),
];

/// The library's name and its source, as `FUNCTION LOAD` takes it.
struct Library {
    name: String,
    source: String,
}

/// The one library of this build.
static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // Each script becomes the body of its function: `KEYS` and `ARGV` are its parameters, as
    // they are globals of a script, and its top-level `return` returns from the function.
    let mut body = String::from(include_str!("lua/common.lua"));
    let hash = {
        let mut hasher = Sha256::new();
        hasher.update(body.as_bytes());
        for (name, script) in SCRIPTS {
            hasher.update(name.as_bytes());
            hasher.update(script.as_bytes());
        }
        let digest = hasher.finalize();
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let name = format!("bgnode_{hash}");
    for (script, text) in SCRIPTS {
        body.push_str(&format!(
            "\nredis.register_function('{name}_{script}', function(KEYS, ARGV)\nbegin_call()\n\
             local ok, out = pcall(function()\n{text}\nend)\nflush_events()\n\
             if not ok then\nerror(out, 0)\nend\nreturn out\nend)\n"
        ));
    }
    Library {
        source: format!("#!lua name={name}\n{body}"),
        name,
    }
});

/// Whether `error` says Redis has no such function: the library is not loaded there.
pub(crate) fn is_missing_function(error: &ServerError) -> bool {
    error.code() == "ERR"
        && error
            .details()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// Whether a call (or a pipeline of calls) failed because Redis has not got the library.
pub(super) fn missing_library(error: &RedisError) -> bool {
    error
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, e)| is_missing_function(e)))
}

/// Loads this build's library into Redis (replacing a copy of the same text, which changes
/// nothing). A refusal (from a Redis older than 7.0, which has no functions, or for a user not
/// allowed `FUNCTION LOAD`) carries Redis's answer and says what is needed; a lost connection
/// stays a Redis error.
pub(super) async fn load(con: &mut Con) -> StoreResult<()> {
    let loaded = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&LIBRARY.source)
        .query_async::<String>(con)
        .await;
    match loaded {
        Ok(_) => Ok(()),
        Err(e) if e.clone().into_server_errors().is_some() => {
            Err(super::StoreError::Library(format!(
                "Redis refused the bgnode function library `{}`: {e} (bgnode needs Redis 7.0 \
                 or newer, and a Redis user allowed to run FUNCTION LOAD)",
                LIBRARY.name
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// One function of the library.
pub(super) struct Function {
    name: String,
}

impl Function {
    /// The function of script `script` (a name of [`SCRIPTS`]).
    pub(super) fn new(script: &str) -> Function {
        debug_assert!(SCRIPTS.iter().any(|(name, _)| *name == script));
        Function {
            name: format!("{}_{script}", LIBRARY.name),
        }
    }

    /// A call of this function, its keys and arguments to be added.
    pub(super) fn call(&self) -> Call<'_> {
        Call {
            function: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A call whose first key is `key`.
    pub(super) fn key<T: ToRedisArgs>(&self, key: T) -> Call<'_> {
        let mut call = self.call();
        call.key(key);
        call
    }

    /// A call whose first argument is `arg`.
    pub(super) fn arg<T: ToRedisArgs>(&self, arg: T) -> Call<'_> {
        let mut call = self.call();
        call.arg(arg);
        call
    }

    /// An `FCALL` of this function with no keys, for the caller to append its arguments (the
    /// batched calls, which build their arguments straight into the command).
    pub(super) fn bare(&self) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&self.name).arg(0);
        cmd
    }
}

/// A call being built: keys and arguments may be added in any order.
pub(super) struct Call<'a> {
    function: &'a Function,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Call<'_> {
    /// Adds a key.
    pub(super) fn key<T: ToRedisArgs>(&mut self, key: T) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument.
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// The `FCALL` command.
    pub(super) fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&self.function.name)
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// Makes the call, loading the library first when Redis has not got it.
    pub(super) async fn invoke_async<T: FromRedisValue>(&self, con: &mut Con) -> StoreResult<T> {
        let cmd = self.cmd();
        match cmd.query_async(con).await {
            Err(e) if missing_library(&e) => {
                load(con).await?;
                Ok(cmd.query_async(con).await?)
            }
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_one_function_named_after_the_library() {
        let source = &LIBRARY.source;
        assert!(source.starts_with(&format!("#!lua name={}\n", LIBRARY.name)));
        for (script, _) in SCRIPTS {
            let registered = format!("redis.register_function('{}_{script}',", LIBRARY.name);
            assert_eq!(source.matches(&registered).count(), 1, "{script}");
            assert_eq!(
                Function::new(script).name,
                format!("{}_{script}", LIBRARY.name)
            );
        }
        assert_eq!(LIBRARY.name.len(), "bgnode_".len() + 12);
    }

    #[test]
    fn a_missing_function_is_told_from_other_errors() {
        let missing = redis::make_extension_error("ERR".into(), None);
        assert!(!missing_library(&missing));
        let reply = |text: &[u8]| match redis::parse_redis_value(text).unwrap() {
            redis::Value::ServerError(e) => e,
            other => panic!("{other:?}"),
        };
        assert!(is_missing_function(&reply(b"-ERR Function not found\r\n")));
        assert!(!is_missing_function(&reply(b"-ERR unknown command\r\n")));
        assert!(!is_missing_function(&reply(
            b"-NOSCRIPT No matching script.\r\n"
        )));
    }
}
