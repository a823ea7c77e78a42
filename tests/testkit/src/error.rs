//! The crate's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Errors from starting and driving Redis nodes, proxies and child processes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `redis-server` binary could not be found.
    #[error(
        "redis-server not found (looked for `{program}`): run the tests with `cargo xtask test`, \
         or install it with `apt-get install redis-server`, or point TALLY_REDIS_SERVER at the binary"
    )]
    RedisNotInstalled {
        /// The program name or path that was tried.
        program: String,
    },
    /// Spawning a process failed for another reason than a missing binary.
    #[error("cannot spawn `{program}`")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// redis-server did not become ready in time, or exited while starting.
    #[error("redis-server on port {port} did not start within {waited:?} ({reason}); log tail from {}:\n{log_tail}", log.display())]
    StartFailed {
        /// Port it was told to listen on.
        port: u16,
        /// How long the kit waited.
        waited: Duration,
        /// What went wrong (exited with a status, or still not answering).
        reason: String,
        /// Path of the server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A file-system or socket operation of the kit failed.
    #[error("{context}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A command sent to a node for an assertion failed.
    #[error("command `{command}` on redis node 127.0.0.1:{port} failed")]
    Command {
        /// The command name.
        command: String,
        /// The node's port.
        port: u16,
        /// What the client reported.
        #[source]
        source: redis::RedisError,
    },
    /// A signal could not be delivered to a child process.
    #[error("cannot send SIG{signal} to {process} (pid {pid}): {detail}")]
    Signal {
        /// Signal name without the `SIG` prefix.
        signal: &'static str,
        /// What the process is (`redis-server`, `server`).
        process: &'static str,
        /// Target process id.
        pid: u32,
        /// Exit status or error text of the `kill` command.
        detail: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
