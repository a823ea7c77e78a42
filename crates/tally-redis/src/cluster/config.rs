//! [`ClusterConfig`]: the seed nodes of a Redis Cluster and the settings shared with
//! standalone mode, typed.

use std::fmt;
use std::time::Duration;

use crate::config::{
    DEFAULT_HEALTH_CHECK_INTERVAL, DEFAULT_MARKS_RETENTION, DEFAULT_POOL_SIZE,
    DEFAULT_RETRY_ATTEMPTS, DEFAULT_TIMEOUT, NodeUrl, RedisConfig, Secret,
};
use crate::error::{Error, Result};
use crate::layout::Layout;

/// Everything a [`crate::ClusterStore`] needs, typed.
///
/// Like [`RedisConfig`], filled by the server from its own settings (each field names its
/// variable); `Debug` and `Display` never show a password. Build it with
/// [`ClusterConfig::from_urls`] or [`ClusterConfig::new`], then adjust fields.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Nodes to learn the cluster from (`REDIS_CLUSTER`): any of its nodes, primaries or
    /// replicas; the store asks them for the cluster's nodes and follows it from there.
    pub seeds: Vec<NodeUrl>,
    /// When set, the password for every node instead of the URLs' (`REDIS_PASSWORD`).
    pub password: Option<Secret>,
    /// Bound on each connection attempt and on each command (`REDIS_TIMEOUT`). A batch's
    /// `WAIT` for its replicas gets half of it, so the batch and its `WAIT` together stay
    /// within it.
    pub timeout: Duration,
    /// Connection attempts before a command fails (`REDIS_RETRY_ATTEMPTS`). At least 1.
    pub retry_attempts: u32,
    /// Connections per primary that carry batches and resets, each with its `WAIT`
    /// (`REDIS_POOL_SIZE`): one batch (or reset) at a time on each, since a `WAIT` holds
    /// its connection until the replicas answer.
    pub pool_size: usize,
    /// How often every node is pinged and the cluster's nodes are read again
    /// (`HEALTH_CHECK_INTERVAL_SECONDS`); every second while a node is down or a slot has
    /// no primary.
    pub health_check_interval: Duration,
    /// How many replicas must confirm a batch (`WAIT`) before it is reported applied
    /// (`REDIS_WAIT_REPLICAS`). `None`: 1 when the cluster has replicas when the store
    /// first reads its nodes, 0 otherwise.
    pub wait_replicas: Option<u32>,
    /// High-water marks not written for this long are removed (`MARKS_RETENTION_HOURS`),
    /// as in [`RedisConfig::marks_retention`].
    pub marks_retention: Duration,
    /// Which keys the store writes: visit counters or the request-stats sorted sets.
    pub layout: Layout,
    /// Sub-keys of a key (`page1\u{1f}2026-12-01`, see [`tally_counter::routing_key`])
    /// that a batch creates in [`Layout::Counters`] expire after this long (`EXPIRE`, set
    /// once at creation; a page's day counts, `DAILY_RETENTION_DAYS`). `None`: they do
    /// not expire.
    pub subkey_ttl: Option<Duration>,
}

impl ClusterConfig {
    /// A config for these seeds with every other setting at its default.
    pub fn new(seeds: Vec<NodeUrl>) -> Self {
        Self {
            seeds,
            password: None,
            timeout: DEFAULT_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            pool_size: DEFAULT_POOL_SIZE,
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            wait_replicas: None,
            marks_retention: DEFAULT_MARKS_RETENTION,
            layout: Layout::Counters,
            subkey_ttl: None,
        }
    }

    /// Parses a `REDIS_CLUSTER` value (comma-separated `redis://` URLs, split as
    /// [`RedisConfig::from_urls`] splits `REDIS_NODES`) into a config with defaults for
    /// everything else.
    ///
    /// ```
    /// let config = tally_redis::ClusterConfig::from_urls("redis://:pw@10.0.0.1:7000,redis://10.0.0.2:7000")?;
    /// assert_eq!(config.seeds.len(), 2);
    /// assert!(!format!("{config:?} {config}").contains("pw"));
    /// # Ok::<(), tally_redis::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for the first bad URL, [`Error::Config`] for an empty list or
    /// a database index other than 0.
    pub fn from_urls(urls: &str) -> Result<Self> {
        let nodes = RedisConfig::from_urls(urls)
            .map_err(|e| match e {
                Error::Config { problem, .. } => Error::Config {
                    field: "REDIS_CLUSTER",
                    problem,
                },
                other => other,
            })?
            .nodes;
        let config = Self::new(nodes);
        config.validate()?;
        Ok(config)
    }

    /// Checks that every value is usable.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, problem: &str| {
            Err(Error::Config {
                field,
                problem: problem.into(),
            })
        };
        if self.seeds.is_empty() {
            return bad("REDIS_CLUSTER", "lists no node");
        }
        for seed in &self.seeds {
            let db = settings(seed).map_or(0, |s| s.db());
            if db != 0 {
                return Err(Error::Config {
                    field: "REDIS_CLUSTER",
                    problem: format!(
                        "{seed} names database {db}, but a Redis Cluster has database 0 only"
                    ),
                });
            }
        }
        if self.timeout.is_zero() {
            return bad("REDIS_TIMEOUT", "must be greater than zero");
        }
        if self.retry_attempts == 0 {
            return bad("REDIS_RETRY_ATTEMPTS", "must be at least 1");
        }
        if self.pool_size == 0 {
            return bad("REDIS_POOL_SIZE", "must be at least 1");
        }
        if self.health_check_interval.is_zero() {
            return bad("HEALTH_CHECK_INTERVAL_SECONDS", "must be greater than zero");
        }
        if self.marks_retention.is_zero() {
            return bad("MARKS_RETENTION_HOURS", "must be greater than zero");
        }
        Ok(())
    }

    /// How long a batch's `WAIT` waits for its replicas: half of [`ClusterConfig::timeout`],
    /// at least 1 ms.
    pub fn wait_timeout(&self) -> Duration {
        (self.timeout / 2).max(Duration::from_millis(1))
    }

    /// The node at `name` (`host:port`) with the seeds' credentials
    /// ([`ClusterConfig::credentials`]), and the settings of its connections as a standalone
    /// store would have them: every node of a cluster takes the same user and password.
    pub(crate) fn node(&self, name: &str) -> Result<(NodeUrl, RedisConfig)> {
        let (username, password) = self.credentials();
        let user = username
            .map(|user| format!("{}@", percent_encode(&user)))
            .unwrap_or_default();
        let url = NodeUrl::parse(&format!("redis://{user}{name}"))?;
        let mut config = RedisConfig::new(vec![url.clone()]);
        config.password = password;
        config.timeout = self.timeout;
        config.retry_attempts = self.retry_attempts;
        config.pool_size = self.pool_size;
        config.health_check_interval = self.health_check_interval;
        config.marks_retention = self.marks_retention;
        config.layout = self.layout;
        config.subkey_ttl = self.subkey_ttl;
        Ok((url, config))
    }

    /// The user and password of the seeds (the first seed that has one), with
    /// `REDIS_PASSWORD` winning: nodes the store learns from the cluster get these.
    pub(crate) fn credentials(&self) -> (Option<String>, Option<Secret>) {
        let seeds: Vec<redis::RedisConnectionInfo> =
            self.seeds.iter().filter_map(settings).collect();
        let username = seeds.iter().find_map(|s| s.username().map(str::to_owned));
        let password = self
            .password
            .clone()
            .or_else(|| seeds.iter().find_map(|s| s.password().map(Secret::new)));
        (username, password)
    }
}

/// `text` with every byte but ASCII letters and digits percent-encoded, for a URL.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A seed's own user, password and database (not `REDIS_PASSWORD`'s).
fn settings(seed: &NodeUrl) -> Option<redis::RedisConnectionInfo> {
    seed.connection_info(None, None)
        .ok()
        .map(|info| info.redis_settings().clone())
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("seeds", &self.seeds)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("pool_size", &self.pool_size)
            .field("health_check_interval", &self.health_check_interval)
            .field("wait_replicas", &self.wait_replicas)
            .field("marks_retention", &self.marks_retention)
            .field("layout", &self.layout)
            .field("subkey_ttl", &self.subkey_ttl)
            .finish()
    }
}

impl fmt::Display for ClusterConfig {
    /// The seeds as they would appear in `REDIS_CLUSTER`, passwords removed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::config::write_url_list(f, &self.seeds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_other_than_0_is_refused_naming_the_seed_without_its_password() {
        let err = ClusterConfig::from_urls("redis://:hunter2@r1:7000/3").unwrap_err();

        let shown = format!("{err} {err:?}");
        assert!(
            matches!(
                err,
                Error::Config {
                    field: "REDIS_CLUSTER",
                    ..
                }
            ),
            "{shown}"
        );
        assert!(shown.contains("database 0 only"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(ClusterConfig::from_urls("redis://r1:7000/0").is_ok());
    }

    #[test]
    fn an_empty_list_names_redis_cluster() {
        let err = ClusterConfig::from_urls(" , ").unwrap_err();
        assert!(err.to_string().contains("REDIS_CLUSTER"), "{err}");
    }

    #[test]
    fn learnt_nodes_get_the_seeds_user_and_password() {
        let config = ClusterConfig::from_urls("redis://app.user:s%2Fcret@r1:7000").unwrap();

        let (url, node) = config.node("10.0.0.9:7001").unwrap();

        let info = url.connection_info(node.password.as_ref(), None).unwrap();
        assert_eq!(info.redis_settings().username(), Some("app.user"));
        assert_eq!(info.redis_settings().password(), Some("s/cret"));
        assert_eq!(url.name(), "10.0.0.9:7001");
        assert!(!format!("{url} {node:?}").contains("cret"));
    }

    #[test]
    fn the_wait_gets_half_the_timeout() {
        let mut config = ClusterConfig::from_urls("redis://r1:7000").unwrap();
        config.timeout = Duration::from_millis(500);
        assert_eq!(config.wait_timeout(), Duration::from_millis(250));
    }

    #[test]
    fn redis_password_wins_over_the_seeds_password() {
        let mut config =
            ClusterConfig::from_urls("redis://app:urlpw@r1:7000,redis://r2:7000").unwrap();
        assert_eq!(
            config.credentials().1.as_ref().map(Secret::expose),
            Some("urlpw")
        );
        assert_eq!(config.credentials().0.as_deref(), Some("app"));
        config.password = Some(Secret::new("envpw"));
        assert_eq!(
            config.credentials().1.as_ref().map(Secret::expose),
            Some("envpw")
        );
        let shown = format!("{config:?} {config}");
        assert!(
            !shown.contains("urlpw") && !shown.contains("envpw"),
            "{shown}"
        );
    }
}
