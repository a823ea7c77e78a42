//! The crate's error type.
//!
//! Every message names the node by its credential-free `host:port` and every URL in a
//! message has gone through [`crate::redact`]: no variant can carry a password.

use std::time::Duration;

/// Errors from building a [`crate::RedisStore`] and from talking to its nodes.
///
/// Connection failures, timeouts, authentication failures and error replies are distinct
/// variants, so callers (and the health bookkeeping) can tell a dead node from a bad
/// request. Nothing here is retried by this crate: the counter owns the one retry policy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node URL in `REDIS_NODES` cannot be used.
    #[error("invalid redis node url '{url}': {reason}")]
    InvalidUrl {
        /// The URL as given, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another configuration value is out of range.
    #[error("invalid redis config: {field} {problem}")]
    Config {
        /// The setting at fault (its environment variable name where it has one).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The node list does not make a ring (e.g. the same `host:port` twice).
    #[error("invalid redis node list")]
    Ring(#[from] tally_ring::Error),
    /// Two entries of `REDIS_NODES` reach the same Redis database: both hold the same
    /// random id under [`crate::NODE_ID_KEY`]. Returned by [`crate::RedisStore::connect`]
    /// when both answer at start; an entry found to be an alias later is kept down with
    /// this error as its reason.
    #[error(
        "redis nodes {first} and {second} in REDIS_NODES reach the same Redis database (both hold node id {node_id}); list each Redis database once in REDIS_NODES (two addresses of one server, a DNS alias, or a proxy in front of a listed node are the same database)"
    )]
    DuplicateNode {
        /// The entry that was identified first, as in `REDIS_NODES` with its password
        /// replaced by `***`.
        first: String,
        /// The entry found to be the same database, password replaced by `***`.
        second: String,
        /// The id both hold.
        node_id: String,
    },
    /// The nodes record another ring than this store's (nodes added or removed, other
    /// `VIRTUAL_NODES`), or disagree among themselves: see [`crate::guard`]. The message
    /// names the change and the command that moves the counts.
    #[error("{detail}")]
    RingMismatch {
        /// What differs, and what to do.
        detail: String,
    },
    /// A reshard was started on the nodes and has not finished; the message names the
    /// command that resumes it.
    #[error("redis node {node}: {detail}")]
    ReshardInProgress {
        /// The node holding the marker, `host:port`.
        node: String,
        /// The reshard, and the command that resumes it.
        detail: String,
    },
    /// A reshard was refused: a store (a running server) holds a lease on a node.
    #[error(
        "a server is writing to redis node {node} ({holder}): stop it with SIGTERM, which writes everything pending, then run the reshard again; a server killed without SIGTERM stops holding its lease within 20 s"
    )]
    ServerRunning {
        /// The node, `host:port`.
        node: String,
        /// The lease: the process and host holding it.
        holder: String,
    },
    /// No connection to the node could be made (refused, reset, DNS, handshake).
    #[error("cannot connect to redis node {node} ({attempts} attempt(s))")]
    Connect {
        /// The node, `host:port`.
        node: String,
        /// Connection attempts made (`REDIS_RETRY_ATTEMPTS`).
        attempts: u32,
        /// The last attempt's failure.
        #[source]
        source: redis::RedisError,
    },
    /// The node rejected the credentials (`NOAUTH`, `WRONGPASS`).
    #[error(
        "redis node {node} refused authentication; check the password in REDIS_NODES or REDIS_PASSWORD"
    )]
    Auth {
        /// The node, `host:port`.
        node: String,
        /// The node's answer.
        #[source]
        source: redis::RedisError,
    },
    /// The node did not answer within `REDIS_TIMEOUT`.
    #[error("redis node {node} did not answer {op} within {after:?}")]
    Timeout {
        /// The node, `host:port`.
        node: String,
        /// What was asked (`connect`, `apply`, `get`, ...).
        op: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection failed while a command was under way: the command may or may not have
    /// been executed (a batch sent again is applied at most once).
    #[error("connection to redis node {node} failed during {op}")]
    Connection {
        /// The node, `host:port`.
        node: String,
        /// What was asked.
        op: &'static str,
        /// The I/O failure.
        #[source]
        source: redis::RedisError,
    },
    /// The node answered with an error reply (wrong type, script error, loading, ...).
    #[error("redis node {node} rejected {op}")]
    Redis {
        /// The node, `host:port`.
        node: String,
        /// What was asked.
        op: &'static str,
        /// The node's error reply.
        #[source]
        source: redis::RedisError,
    },
    /// The node's answer does not have the expected shape.
    #[error("unexpected reply from redis node {node} to {op}: {detail}")]
    Protocol {
        /// The node, `host:port`.
        node: String,
        /// What was asked.
        op: &'static str,
        /// What was wrong with the reply.
        detail: String,
    },
    /// The pool could not hand out a connection for a reason other than the node.
    #[error("connection pool of redis node {node} failed")]
    Pool {
        /// The node, `host:port`.
        node: String,
        /// The pool's error.
        #[source]
        source: deadpool_redis::PoolError,
    },
    /// The node is marked down (a command failed or the health check did not get an answer)
    /// and is not asked until a health check gets one. Its keys are never sent elsewhere.
    #[error(
        "redis node {node} is unavailable ({reason}); its keys wait until it answers a health check"
    )]
    NodeUnavailable {
        /// The node, `host:port`.
        node: String,
        /// Why it was marked down.
        reason: String,
    },
    /// A Redis Cluster primary applied a batch (or a reset), but fewer of its replicas than
    /// `REDIS_WAIT_REPLICAS` confirmed it (`WAIT`) in time: a failover could still lose it,
    /// so it is not reported applied. The counter keeps the batch and sends it again, and
    /// its high-water mark makes the retry count once.
    #[error(
        "redis cluster primary {node} applied the batch of bucket {bucket}, but {acked} of the {wanted} replica(s) REDIS_WAIT_REPLICAS asks for confirmed it within {after:?}; it stays in memory and is sent again (counted once)"
    )]
    NotReplicated {
        /// The primary, `host:port`.
        node: String,
        /// The bucket's hash tag, `{bNNNN}`.
        bucket: String,
        /// Replicas that confirmed.
        acked: u64,
        /// Replicas asked for.
        wanted: u64,
        /// How long `WAIT` waited.
        after: Duration,
    },
    /// A Redis Cluster primary has fewer replicas answering than `REDIS_WAIT_REPLICAS`, so
    /// no batch was sent to it (its `WAIT` could not be satisfied); its buckets' batches wait
    /// in memory until a replica is back.
    #[error(
        "redis cluster primary {node} of bucket {bucket} has {online} replica(s) answering, fewer than the {wanted} REDIS_WAIT_REPLICAS asks for; its batches wait in memory until a replica is back"
    )]
    ReplicasMissing {
        /// The primary, `host:port`.
        node: String,
        /// The bucket's hash tag, `{bNNNN}`.
        bucket: String,
        /// Replicas answering.
        online: usize,
        /// Replicas asked for.
        wanted: usize,
    },
    /// Every connection a Redis Cluster primary has for batches (`REDIS_POOL_SIZE`) stayed
    /// busy, each holding a batch until its replicas confirmed it, for as long as a batch may
    /// wait for one; the batch was not sent and is retried. The node is not marked down: it
    /// answers, slowly.
    #[error(
        "redis cluster primary {node} had no free connection for a batch within {after:?} (each of its REDIS_POOL_SIZE connections holds a batch until its replicas confirm it); the batch is sent again"
    )]
    Busy {
        /// The primary, `host:port`.
        node: String,
        /// How long the batch waited.
        after: Duration,
    },
    /// No reachable primary of the Redis Cluster serves a bucket's hash slot (the cluster
    /// has not answered yet, or a slot lost its primary); its operations wait or fail until
    /// the health check finds one.
    #[error("no primary of the redis cluster serves bucket {bucket} (hash slot {slot}): {reason}")]
    NoPrimary {
        /// The bucket's hash tag, `{bNNNN}`.
        bucket: String,
        /// Its hash slot.
        slot: u16,
        /// Why: what the store knows of the cluster.
        reason: String,
    },
    /// A batch breaks the [`tally_counter::Batch`] contract (a key listed twice); nothing
    /// of it was sent.
    #[error("invalid batch: {detail}")]
    InvalidBatch {
        /// What is wrong with it.
        detail: String,
    },
    /// A key holds something that is not a count (another type, text, a negative or too
    /// large number), so it was not applied (the rest of the batch was) or cannot be read.
    #[error("{stored_as} on redis node {node} holds {found}, not a count")]
    CorruptValue {
        /// Credential-free `host:port`.
        node: String,
        /// The Redis key (and member, for the request statistics).
        stored_as: String,
        /// What is there: its type, or its value cut to 64 bytes.
        found: String,
    },
    /// A visitor sketch key (`tally:u:...`, see [`crate::sketch`]) holds something that is
    /// not a HyperLogLog, so its estimate cannot be read.
    #[error("{stored_as} on redis node {node} is not a HyperLogLog: {found}")]
    CorruptSketch {
        /// Credential-free `host:port`.
        node: String,
        /// The Redis key.
        stored_as: String,
        /// What Redis said of it.
        found: String,
    },
    /// A shard id outside `0..shard_count()`.
    #[error("redis shard {shard} does not exist; the store has {count} node(s)")]
    NoSuchShard {
        /// The id asked for.
        shard: usize,
        /// Number of nodes.
        count: usize,
    },
    /// The operation exists only for another key layout.
    #[error("{op} needs the {needed} key layout, but this store uses the {actual} layout")]
    WrongLayout {
        /// The operation.
        op: &'static str,
        /// The layout it needs.
        needed: crate::Layout,
        /// The store's layout.
        actual: crate::Layout,
    },
    /// A key changed on its node while a reshard ([`crate::reshard`]) moved it: something
    /// still writes to the nodes. What the reshard read has moved to the new owner; what was
    /// added since stays on the node and moves when the reshard runs again.
    #[error(
        "{stored_as} on redis node {node} changed while the reshard moved it (read {read}, then found {found}): a server is still writing to these nodes; stop every server using them, then run the same reshard again to finish it"
    )]
    WrittenDuringReshard {
        /// The source node, `host:port`.
        node: String,
        /// The Redis key (and member, for the request statistics).
        stored_as: String,
        /// The count the reshard read and moved.
        read: u64,
        /// What the node held when the reshard came to remove it (`nothing` when gone).
        found: String,
    },
    /// Keys that another node owns kept appearing on a node during a reshard
    /// ([`crate::reshard`]): something still writes to the nodes. Everything found has
    /// moved; what is written next moves when the reshard runs again.
    #[error(
        "keys that belong on other nodes kept appearing on redis node {node} while the reshard moved them ({found} found by scan {scans}): a server is still writing to these nodes; stop every server using them, then run the same reshard again to finish it"
    )]
    ReshardUnsettled {
        /// The node, `host:port`.
        node: String,
        /// How many scans of the node found keys to move.
        scans: u32,
        /// How many the last scan found.
        found: u64,
    },
    /// Two node names of a reshard (in the current list, the new one, or one in each) reach
    /// the same Redis database: both hold the same id under [`crate::NODE_ID_KEY`]. Moving
    /// keys between them would count them twice, so nothing is moved.
    #[error(
        "redis nodes {first} and {second} of the reshard reach the same Redis database (both hold node id {node_id}); a node that stays must keep its host:port in the new list, and each Redis database must be listed once"
    )]
    ReshardAlias {
        /// The first node, `host:port`.
        first: String,
        /// The second node, `host:port`.
        second: String,
        /// The id both hold.
        node_id: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether this failure says the node itself is unreachable or unusable, so it is marked
    /// down. Error replies to a well-formed connection (wrong type, script error) are not.
    pub(crate) fn marks_node_down(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Auth { .. }
            | Self::Timeout { .. }
            | Self::Connection { .. }
            | Self::Pool { .. } => true,
            // A node loading its data set answers LOADING to everything for a while.
            Self::Redis { source, .. } => {
                source.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
            }
            _ => false,
        }
    }

    /// Whether this is a problem of the configuration rather than of a node: the settings
    /// must change before a store can work ([`Error::InvalidUrl`], [`Error::Config`],
    /// [`Error::Ring`], [`Error::DuplicateNode`]). A server exits with its configuration
    /// error code on these.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::InvalidUrl { .. }
                | Self::Config { .. }
                | Self::Ring(_)
                | Self::DuplicateNode { .. }
                | Self::RingMismatch { .. }
                | Self::ReshardInProgress { .. }
                | Self::ReshardAlias { .. }
        )
    }

    /// Short label for the `kind` of the errors metric.
    pub(crate) fn kind_label(&self) -> &'static str {
        match self {
            Self::InvalidUrl { .. }
            | Self::Config { .. }
            | Self::Ring(_)
            | Self::DuplicateNode { .. }
            | Self::RingMismatch { .. }
            | Self::ReshardInProgress { .. }
            | Self::ReshardAlias { .. } => "config",
            Self::ServerRunning { .. } => "lease",
            Self::Connect { .. } => "connect",
            Self::Auth { .. } => "auth",
            Self::Timeout { .. } => "timeout",
            Self::Connection { .. } => "connection",
            Self::Redis { .. } => "redis",
            Self::Protocol { .. } => "protocol",
            Self::Pool { .. } => "pool",
            Self::NodeUnavailable { .. } | Self::NoPrimary { .. } => "unavailable",
            Self::NotReplicated { .. } | Self::ReplicasMissing { .. } => "replication",
            Self::Busy { .. } => "pool",
            Self::CorruptValue { .. } | Self::CorruptSketch { .. } => "corrupt",
            Self::WrittenDuringReshard { .. } | Self::ReshardUnsettled { .. } => "reshard",
            Self::InvalidBatch { .. } | Self::NoSuchShard { .. } | Self::WrongLayout { .. } => {
                "usage"
            }
        }
    }
}

/// Whether a Redis error is an authentication failure.
pub(crate) fn is_auth_error(err: &redis::RedisError) -> bool {
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
}
