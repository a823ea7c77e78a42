//! The server's configuration: every setting declared once, read from the environment (and
//! `.env`) into one typed [`Config`], with a one-line [`ConfigError`] naming the variable,
//! its value and what was expected.
//!
//! The `settings!` block below is the one declaration of each setting: the field with its
//! type and one line of docs, its default (taken from the crate that owns the setting where
//! one does), the variable it is read from (names of the original Python service) and its
//! parser with the parser's bounds. From it come the `Config` struct and its `Default`, the
//! parse of [`Config::from_vars`], the checks of [`Config::validate`], and
//! [`Config::SETTINGS`], against which tests hold the README's configuration table and
//! `docker/.env.example`. Each parser is given its variable's name, so every message has the
//! same shape and no value is printed before it is made safe to show (node URLs lose their
//! passwords, `REDIS_PASSWORD` and `ADMIN_TOKEN` are never printed).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_counter::{CounterConfig, PendingBytes};
use tally_redis::{ClusterConfig, Layout, NodeUrl, RedisConfig, Secret, redact};

/// Declares the settings (see the module docs). Each entry reads
///
/// ```text
/// /// One line of docs.
/// pub field: Type = default, from "VARIABLE" as parser;
/// ```
///
/// optionally followed by `, overridden by "OTHER" as parser`: a second variable that, when
/// set, gives the field its value instead (and has no default of its own).
macro_rules! settings {
    (
        $(#[$attr:meta])*
        pub struct Config {
            $(
                $(#[doc = $doc:literal])+
                pub $field:ident: $ty:ty = $default:expr,
                    from $name:literal as $parser:expr
                    $(, overridden by $over:literal as $over_parser:expr)?;
            )+
        }
    ) => {
        $(#[$attr])*
        pub struct Config {
            $(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = concat!("From `", $name, "`", $(", or `", $over, "` when set",)? ".")]
                pub $field: $ty,
            )+
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $($field: $default,)+ }
            }
        }

        impl Config {
            /// Every variable the server reads, in declaration order, with its default.
            pub const SETTINGS: &'static [Setting] = &[
                $(
                    Setting {
                        name: $name,
                        default: || {
                            let default: $ty = $default;
                            Parser::show(&$parser, &default)
                        },
                    },
                    $(Setting { name: $over, default: || None },)?
                )+
            ];

            /// Each field from its variable when set, else its default; the first bad value
            /// is the error.
            fn read(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
                Ok(Self {
                    $(
                        $field: $(if let Some(text) = vars.get($over) {
                            $over_parser.parse($over, text)?
                        } else)? {
                            match vars.get($name) {
                                Some(text) => $parser.parse($name, text)?,
                                None => $default,
                            }
                        },
                    )+
                })
            }

            fn check_fields(&self) -> Result<(), ConfigError> {
                $(Parser::check(&$parser, $name, &self.$field)?;)+
                Ok(())
            }
        }

        /// Every environment variable the server reads: the names of [`Config::SETTINGS`].
        pub const KNOWN_VARIABLES: &[&str] = &[$($name, $($over,)?)+];
    };
}

settings! {
    /// Everything the server can be told, one field per setting.
    ///
    /// Build it with [`Config::from_env`] (the binary), [`Config::from_vars`] (tests of
    /// parsing), or [`Config::default`] plus field updates (tests that start the app). The
    /// defaults are listed by [`Config::SETTINGS`] and the README. Durations are parsed from
    /// the `*_SECONDS`-style variables, which accept fractions (`0.5`). `Debug` never shows a
    /// password or the admin token: node URLs print redacted and [`Secret`] prints `***`.
    #[derive(Clone, Debug)]
    pub struct Config {
        /// The Redis nodes, in order; none means the store `STORE` names.
        pub redis_nodes: Vec<NodeUrl> = Vec::new(), from "REDIS_NODES" as NodeList;
        /// Seed nodes of a Redis Cluster to count in (exclusive with `REDIS_NODES`).
        pub redis_cluster: Vec<NodeUrl> = Vec::new(), from "REDIS_CLUSTER" as NodeList;
        /// Replicas that confirm each batch on a Redis Cluster; unset: 1 when the cluster
        /// has replicas, else 0.
        pub redis_wait_replicas: Option<u32> = None,
            from "REDIS_WAIT_REPLICAS" as WaitReplicas;
        /// The store without `REDIS_NODES`: the persistent embedded store, or memory.
        pub store: StoreKind = StoreKind::Embedded, from "STORE" as STORE_KIND;
        /// Directory of the embedded store's file, relative to the working directory.
        pub data_dir: PathBuf = PathBuf::from("./tally-data"), from "DATA_DIR" as Dir;
        /// MiB of the embedded store's page cache (tally-embedded's default).
        pub embedded_cache_mb: usize = tally_embedded::DEFAULT_CACHE_BYTES >> 20,
            from "EMBEDDED_CACHE_MB" as Whole(1, 1 << 20);
        /// Password for every node, overriding the URLs' own.
        pub redis_password: Option<Secret> = None, from "REDIS_PASSWORD" as Password;
        /// Database index for every node, overriding the URLs' own.
        pub redis_db: Option<i64> = None, from "REDIS_DB" as DbIndex;
        /// Bound on each connection attempt and command.
        pub redis_timeout: Duration = tally_redis::DEFAULT_TIMEOUT,
            from "REDIS_TIMEOUT" as Seconds;
        /// Connection attempts before a command fails.
        pub redis_retry_attempts: u32 = tally_redis::DEFAULT_RETRY_ATTEMPTS,
            from "REDIS_RETRY_ATTEMPTS" as Whole(1, 1000);
        /// Connections per node.
        pub redis_pool_size: usize = tally_redis::DEFAULT_POOL_SIZE,
            from "REDIS_POOL_SIZE" as Whole(1, 10_000);
        /// Ring points per node (the ring's default).
        pub vnodes: u32 = tally_redis::DEFAULT_VNODES,
            from "VIRTUAL_NODES" as Whole(1, 100_000);
        /// How long a read value is served from memory.
        pub cache_ttl: Duration = CounterConfig::default().cache_ttl,
            from "CACHE_TTL_SECONDS" as Seconds;
        /// Most entries in the visit counter's read cache.
        pub cache_capacity: u64 = CounterConfig::default().cache_capacity,
            from "CACHE_CAPACITY" as Whole(0, 1_000_000_000);
        /// Pending visits are written at least this often.
        pub batch_interval: Duration = CounterConfig::default().batch_interval,
            from "BATCH_INTERVAL_SECONDS" as Seconds;
        /// A node's batch goes out early at this many pages, and holds no more; unset, the
        /// store's default ([`Config::batch_limits`]).
        pub batch_size_limit: Option<usize> = None,
            from "BATCH_SIZE_LIMIT" as WhenSet(Whole(1, 1_000_000));
        /// Most bytes of page ids (or paths) in one batch; unset, the store's default.
        pub batch_max_bytes: Option<usize> = None,
            from "BATCH_MAX_BYTES" as WhenSet(Whole(1, 1 << 30));
        /// Most distinct pages waiting to be written, each node's at most its share.
        pub max_pending_keys: usize = CounterConfig::default().max_pending_keys,
            from "MAX_PENDING_KEYS" as Whole(1, 1_000_000_000);
        /// Most visitor ids (a page or a day, and an id) waiting to be added to the visitor
        /// sketches.
        pub max_pending_visitors: usize = CounterConfig::default().max_pending_members,
            from "MAX_PENDING_VISITORS" as Whole(1, 1_000_000_000);
        /// Most bytes of keys waiting to be written: one budget, cloned into both counters.
        pub max_pending_bytes: PendingBytes = CounterConfig::default().max_pending_bytes,
            from "MAX_PENDING_BYTES" as Budget(Whole(1 << 16, 1 << 40));
        /// Reported as `debug_mode` by `/status`.
        pub debug: bool = false, from "DEBUG" as FLAG;
        /// Path prefix of the counter API, no trailing slash.
        pub api_prefix: String = "/api/v1".to_owned(), from "API_PREFIX" as PathPrefix;
        /// Named in the start-up log line.
        pub project_name: String = "tally".to_owned(), from "PROJECT_NAME" as Name;
        /// Serve Prometheus metrics at `/metrics`.
        pub enable_metrics: bool = true, from "ENABLE_METRICS" as FLAG;
        /// Serve the live dashboard at `/` and its figures at `/dashboard/data.json`.
        pub enable_dashboard: bool = true, from "ENABLE_DASHBOARD" as FLAG;
        /// How often a counter summary is logged.
        pub metrics_interval: Duration = Duration::from_secs(60),
            from "METRICS_INTERVAL_SECONDS" as Seconds;
        /// Address to listen on (the container image sets `0.0.0.0`).
        pub host: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST), from "HOST" as ListenAddress;
        /// Port to listen on; 0 picks a free one (logged at start).
        pub port: u16 = 8000, from "PORT" as Whole(0, u16::MAX);
        /// Format of the log lines.
        pub log_format: LogFormat = LogFormat::Text, from "LOG_FORMAT" as FORMAT;
        /// Log filter: a level, or full `tracing` directives.
        pub log_filter: String = "info".to_owned(), from "LOG_LEVEL" as Level,
            overridden by "RUST_LOG" as Directives;
        /// How often every Redis node is pinged.
        pub health_check_interval: Duration = tally_redis::DEFAULT_HEALTH_CHECK_INTERVAL,
            from "HEALTH_CHECK_INTERVAL_SECONDS" as Seconds;
        /// A node's high-water mark of an instance silent this long is removed; must
        /// outlast any node outage a running server rides out (see [`RedisConfig`]).
        pub marks_retention: Duration = tally_redis::DEFAULT_MARKS_RETENTION,
            from "MARKS_RETENTION_HOURS" as Hours;
        /// Bound on a graceful shutdown, split as [`Config::drain_timeout`] says.
        pub shutdown_timeout: Duration = Duration::from_secs(25),
            from "SHUTDOWN_TIMEOUT_SECONDS" as ShutdownSeconds;
        /// Largest `n` of `/test/{n}/`.
        pub test_max_requests: u64 = 100_000, from "TEST_MAX_REQUESTS" as Whole(1, 10_000_000);
        /// Serve `/test/{n}/`.
        pub test_endpoint_enabled: bool = true, from "TEST_ENDPOINT_ENABLED" as FLAG;
        /// Days a page's daily counts are kept (`GET .../visits/{page}/daily`); older days
        /// expire (a TTL on Redis, an hourly sweep on the embedded and memory stores). 0
        /// turns daily counts off: a visit is then one key, not two.
        pub daily_retention_days: u32 = 400, from "DAILY_RETENTION_DAYS" as Whole(0, 3_660);
        /// Bearer token that resets and `/test/{n}/` runs require; unset, they are open.
        pub admin_token: Option<Secret> = None, from "ADMIN_TOKEN" as BearerToken;
    }
}

/// One environment variable the server reads, as [`Config::SETTINGS`] lists it.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The variable's name, e.g. `REDIS_TIMEOUT`.
    pub name: &'static str,
    default: fn() -> Option<String>,
}

impl Setting {
    /// The default written as the variable's value (`5` for five seconds), or `None` when
    /// the variable is unset by default.
    pub fn default_value(&self) -> Option<String> {
        (self.default)()
    }
}

/// Where the server counts when `REDIS_NODES` is unset (`STORE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// `STORE=embedded`, the default: the persistent store in `DATA_DIR`
    /// (`tally_embedded::EmbeddedStore`); counts survive restarts and crashes.
    #[default]
    Embedded,
    /// `STORE=memory`: `tally_counter::MemoryStore`, counts lost when the process exits.
    Memory,
}

/// Format of the log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`LOG_FORMAT=text`, the default).
    #[default]
    Text,
    /// One JSON object per line (`LOG_FORMAT=json`).
    Json,
}

/// A configuration value that cannot be used. `Display` is one line:
/// `VARIABLE="value": what is wrong and what is expected`, the value made safe to show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}{}: {problem}", shown_value(.value))]
pub struct ConfigError {
    /// The variable at fault (or `.env` for the file itself).
    pub variable: String,
    /// Its value as it may be shown (passwords replaced by `***`), if it has one.
    pub value: Option<String>,
    /// What is wrong, and what is expected instead.
    pub problem: String,
}

fn shown_value(value: &Option<String>) -> String {
    // Debug formatting quotes and escapes, so a value with a newline stays on one line.
    value
        .as_ref()
        .map(|v| format!("={v:?}"))
        .unwrap_or_default()
}

impl ConfigError {
    fn new(variable: &str, value: Option<&str>, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            value: value.map(str::to_owned),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Reads `.env` from the working directory when present, then the process environment
    /// (which wins over the file), and parses the result.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for an unreadable `.env` or the first bad value.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars: HashMap<String, String> = read_dotenv(Path::new(".env"))?;
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            match value.into_string() {
                Ok(value) => {
                    vars.insert(name.to_owned(), value);
                }
                // Only our own variables matter; others may hold anything.
                Err(_) if KNOWN_VARIABLES.contains(&name) => {
                    return Err(ConfigError::new(name, None, "is not valid UTF-8"));
                }
                Err(_) => {}
            }
        }
        Self::from_vars(vars)
    }

    /// Parses a set of `(name, value)` pairs, as found in the environment.
    ///
    /// ```
    /// let config = tally_server::Config::from_vars([("PORT", "9000"), ("DEBUG", "true")])?;
    /// assert_eq!(config.port, 9000);
    /// assert!(config.debug);
    ///
    /// let err = tally_server::Config::from_vars([("VIRTUAL_NODES", "many")]).unwrap_err();
    /// assert!(err.to_string().starts_with("VIRTUAL_NODES=\"many\": expected a whole number"));
    /// # Ok::<(), tally_server::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for the first bad value.
    pub fn from_vars<K, V>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self, ConfigError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        // Only our variables, spelled exactly, the last value of a name winning (as `.env`
        // then the environment); empty values count as unset (the seed's `.env` has
        // `REDIS_PASSWORD=`), except where unset means open (`BLANK_IS_REFUSED`).
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v): &(String, String)| {
                KNOWN_VARIABLES.contains(&k.as_str())
                    && (!v.trim().is_empty() || BLANK_IS_REFUSED.contains(&k.as_str()))
            })
            .collect();
        let config = Self::read(&vars)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the field types cannot, for configs built in code: durations above zero
    /// and within a year, counts of at least one, a database index of 0 or more, a
    /// well-formed prefix, distinct nodes. [`crate::run`] calls it too.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for the first bad field, named by its variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_fields()?;
        // `REDIS_NODES` chooses Redis whatever `STORE` says; asking for memory as well is
        // a contradiction, refused rather than silently counting in Redis.
        self.check_cluster()?;
        if self.store == StoreKind::Memory && !self.redis_nodes.is_empty() {
            return Err(ConfigError::new(
                "STORE",
                Some("memory"),
                "REDIS_NODES is set, which counts in Redis; unset STORE (or REDIS_NODES)",
            ));
        }
        Ok(())
    }

    /// `REDIS_CLUSTER` against the settings it excludes: `REDIS_NODES` (one store or the
    /// other), `STORE=memory`, a `REDIS_DB` other than 0 (a cluster has database 0 only),
    /// and `REDIS_WAIT_REPLICAS` without a cluster (it would do nothing).
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let cluster = || NodeList.show(&self.redis_cluster);
        if self.redis_cluster.is_empty() {
            if let Some(wait) = self.redis_wait_replicas {
                return Err(ConfigError::new(
                    "REDIS_WAIT_REPLICAS",
                    Some(&wait.to_string()),
                    "applies to a Redis Cluster only, and REDIS_CLUSTER is not set; unset REDIS_WAIT_REPLICAS",
                ));
            }
            return Ok(());
        }
        if !self.redis_nodes.is_empty() {
            return Err(ConfigError::new(
                "REDIS_CLUSTER",
                cluster().as_deref(),
                "REDIS_NODES is set too: a server counts either on standalone nodes (REDIS_NODES) or on a Redis Cluster (REDIS_CLUSTER); unset one of them",
            ));
        }
        if self.store == StoreKind::Memory {
            return Err(ConfigError::new(
                "STORE",
                Some("memory"),
                "REDIS_CLUSTER is set, which counts in Redis; unset STORE (or REDIS_CLUSTER)",
            ));
        }
        if let Some(db) = self.redis_db.filter(|db| *db != 0) {
            return Err(ConfigError::new(
                "REDIS_DB",
                Some(&db.to_string()),
                "a Redis Cluster (REDIS_CLUSTER) has database 0 only; unset REDIS_DB",
            ));
        }
        if let Some(Err(tally_redis::Error::Config { problem, .. })) =
            self.cluster_config().map(|config| config.validate())
        {
            return Err(ConfigError::new(
                "REDIS_CLUSTER",
                cluster().as_deref(),
                problem,
            ));
        }
        Ok(())
    }

    /// The embedded store's settings: `EMBEDDED_CACHE_MB` in bytes.
    pub fn embedded_config(&self) -> tally_embedded::EmbeddedConfig {
        tally_embedded::EmbeddedConfig {
            cache_bytes: self.embedded_cache_mb.saturating_mul(1 << 20),
        }
    }

    /// Smallest `SHUTDOWN_TIMEOUT_SECONDS`: requests in flight get at least 1 s (actix-web
    /// counts its drain in whole seconds), and writing the pending visits gets at least 1 s
    /// more. Any value from this one up leaves at least 1 s for writing (see
    /// [`Config::drain_timeout`]).
    pub const MIN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

    /// The longest a request waits for the store: twice `REDIS_TIMEOUT` (a connection
    /// attempt, then the command). Reads and resets answer 503 after it.
    pub fn store_deadline(&self) -> Duration {
        self.redis_timeout.saturating_mul(2)
    }

    /// How long requests in flight get to finish once shutdown starts: the store deadline
    /// (the longest a request rightly takes), at most half of `SHUTDOWN_TIMEOUT_SECONDS`,
    /// rounded down to whole seconds (actix-web's unit) and at least 1 s. The rest of
    /// `SHUTDOWN_TIMEOUT_SECONDS` goes to writing pending visits: at least 1 s, since the
    /// timeout is at least [`Config::MIN_SHUTDOWN_TIMEOUT`].
    pub fn drain_timeout(&self) -> Duration {
        let drain = self.store_deadline().min(self.shutdown_timeout / 2);
        Duration::from_secs(drain.as_secs().max(1))
    }

    /// The [`RedisConfig`] for `REDIS_NODES`, or `None` for the embedded store.
    pub fn redis_config(&self) -> Option<RedisConfig> {
        if self.redis_nodes.is_empty() {
            return None;
        }
        let mut config = RedisConfig::new(self.redis_nodes.clone());
        config.password = self.redis_password.clone();
        config.db = self.redis_db;
        config.timeout = self.redis_timeout;
        config.retry_attempts = self.redis_retry_attempts;
        config.pool_size = self.redis_pool_size;
        config.health_check_interval = self.health_check_interval;
        config.marks_retention = self.marks_retention;
        config.vnodes = self.vnodes;
        config.layout = Layout::Counters;
        config.subkey_ttl = self.daily_retention();
        Some(config)
    }

    /// The [`ClusterConfig`] for `REDIS_CLUSTER`, or `None` without a cluster. Its
    /// connections follow the standalone settings: `REDIS_PASSWORD`, `REDIS_TIMEOUT`,
    /// `REDIS_RETRY_ATTEMPTS`, `REDIS_POOL_SIZE` (per primary, for batches),
    /// `HEALTH_CHECK_INTERVAL_SECONDS` and `MARKS_RETENTION_HOURS`.
    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        if self.redis_cluster.is_empty() {
            return None;
        }
        let mut config = ClusterConfig::new(self.redis_cluster.clone());
        config.password = self.redis_password.clone();
        config.timeout = self.redis_timeout;
        config.retry_attempts = self.redis_retry_attempts;
        config.pool_size = self.redis_pool_size;
        config.health_check_interval = self.health_check_interval;
        config.wait_replicas = self.redis_wait_replicas;
        config.marks_retention = self.marks_retention;
        config.layout = Layout::Counters;
        config.subkey_ttl = self.daily_retention();
        Some(config)
    }

    /// `DAILY_RETENTION_DAYS` as a duration: how long a day's count key lives on Redis;
    /// `None` while daily counts are off.
    pub fn daily_retention(&self) -> Option<Duration> {
        (self.daily_retention_days > 0)
            .then(|| Duration::from_secs(u64::from(self.daily_retention_days) * 24 * 3600))
    }

    /// The visit counter's tuning, named `visits` in metrics.
    pub fn counter_config(&self) -> CounterConfig {
        self.counter_config_named("visits")
    }

    /// The request-statistics counter's config: the same batching and bound as the visit
    /// counter, and a small read cache (the statistics never read single counts; the cache
    /// would only hold batch totals).
    pub fn stats_counter_config(&self) -> CounterConfig {
        CounterConfig {
            cache_capacity: 1024,
            ..self.counter_config_named("stats")
        }
    }

    /// `(BATCH_SIZE_LIMIT, BATCH_MAX_BYTES)`: as set, else the store's defaults. Redis
    /// runs each batch as one script, during which the node answers nothing else, so its
    /// batches stay small (1,000 pages, 1 MiB). The embedded store pays one durable commit
    /// per batch, and rewrites every B-tree page a batch touches, so it takes large ones:
    /// writing new pages into a file of 600,000 (release build, this machine), batches of
    /// 1,000 wrote 21,600 pages a second, of 10,000 67,600, of 50,000 193,600.
    pub fn batch_limits(&self) -> (usize, usize) {
        let counting_in_file = self.redis_nodes.is_empty()
            && self.cluster_config().is_none()
            && self.store == StoreKind::Embedded;
        let (keys, bytes) = if counting_in_file {
            (EMBEDDED_BATCH_KEYS, EMBEDDED_BATCH_BYTES)
        } else {
            let defaults = CounterConfig::default();
            (defaults.batch_size_limit, defaults.batch_max_bytes)
        };
        (
            self.batch_size_limit.unwrap_or(keys),
            self.batch_max_bytes.unwrap_or(bytes),
        )
    }

    fn counter_config_named(&self, name: &str) -> CounterConfig {
        let (batch_size_limit, batch_max_bytes) = self.batch_limits();
        CounterConfig {
            name: name.to_owned(),
            batch_interval: self.batch_interval,
            batch_size_limit,
            batch_max_bytes,
            cache_ttl: self.cache_ttl,
            cache_capacity: self.cache_capacity,
            max_pending_keys: self.max_pending_keys,
            max_pending_members: self.max_pending_visitors,
            max_pending_bytes: self.max_pending_bytes.clone(),
            // Held increments of a key whose stored value is not a count are offered to
            // the node again as often as its health is checked.
            quarantine_recheck: self.health_check_interval,
            ..CounterConfig::default()
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// The `(name, value)` pairs of a `.env` file; none when it does not exist.
fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let iter = match dotenvy::from_path_iter(path) {
        Ok(iter) => iter,
        Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(HashMap::new());
        }
        Err(e) => return Err(dotenv_error(&e)),
    };
    iter.map(|item| item.map_err(|e| dotenv_error(&e)))
        .collect()
}

fn dotenv_error(error: &dotenvy::Error) -> ConfigError {
    // A parse error carries the whole line, which may hold a password: say where, not what.
    let problem = match error {
        dotenvy::Error::LineParse(line, index) => {
            let name = line.split('=').next().unwrap_or_default().trim();
            let name = if name.len() <= 64
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                name
            } else {
                "?"
            };
            format!(
                "cannot parse the line of {name} at character {index}; expected NAME=value lines"
            )
        }
        dotenvy::Error::Io(e) => format!("cannot be read: {e}"),
        other => format!("cannot be read: {other}"),
    };
    ConfigError::new(".env", None, problem)
}

/// How a variable's text becomes a field's value, and a value is written back.
trait Parser {
    /// The field's type.
    type Value;

    /// The value of a variable that is set (not empty), or why it is refused.
    fn parse(&self, variable: &str, text: &str) -> Result<Self::Value, ConfigError>;

    /// `value` written as the variable would hold it; `None` for unset.
    fn show(&self, value: &Self::Value) -> Option<String>;

    /// Checks a value set in code: what the server needs to work (durations above zero and
    /// within a year, counts of at least one, a valid prefix, distinct nodes). The upper
    /// bounds of `parse` only catch typos, and `MARKS_RETENTION_HOURS` is checked by
    /// tally-redis, so by default nothing is checked.
    fn check(&self, _variable: &str, _value: &Self::Value) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// Longest duration any `*_SECONDS` variable accepts: one year. Far above any sensible
/// value, and low enough that no timer or cache implementation overflows on it.
const MAX_SECONDS: f64 = 31_536_000.0;

const SECONDS_EXPECTED: &str =
    "expected a number of seconds above 0 and at most 31536000, such as 5 or 0.5";

/// Longest `MARKS_RETENTION_HOURS`: ten years.
const MAX_HOURS: f64 = 87_600.0;

/// A duration in seconds, fractions allowed, above 0 and at most [`MAX_SECONDS`].
struct Seconds;

impl Parser for Seconds {
    type Value = Duration;

    fn parse(&self, variable: &str, text: &str) -> Result<Duration, ConfigError> {
        duration(variable, text, (1.0, MAX_SECONDS), SECONDS_EXPECTED)
    }

    fn show(&self, value: &Duration) -> Option<String> {
        Some(value.as_secs_f64().to_string())
    }

    fn check(&self, variable: &str, value: &Duration) -> Result<(), ConfigError> {
        if value.is_zero() || value.as_secs_f64() > MAX_SECONDS {
            return Err(ConfigError::new(
                variable,
                self.show(value).as_deref(),
                SECONDS_EXPECTED,
            ));
        }
        Ok(())
    }
}

/// `SHUTDOWN_TIMEOUT_SECONDS`: [`Seconds`] from [`Config::MIN_SHUTDOWN_TIMEOUT`] up, so that
/// at least 1 s is left for writing after the drain.
struct ShutdownSeconds;

impl Parser for ShutdownSeconds {
    type Value = Duration;

    fn parse(&self, variable: &str, text: &str) -> Result<Duration, ConfigError> {
        Seconds
            .parse(variable, text)
            .ok()
            .filter(|timeout| *timeout >= Config::MIN_SHUTDOWN_TIMEOUT)
            .ok_or_else(|| shutdown_timeout_error(variable, text))
    }

    fn show(&self, value: &Duration) -> Option<String> {
        Seconds.show(value)
    }

    fn check(&self, variable: &str, value: &Duration) -> Result<(), ConfigError> {
        Seconds.check(variable, value)?;
        if *value < Config::MIN_SHUTDOWN_TIMEOUT {
            return Err(shutdown_timeout_error(
                variable,
                &value.as_secs_f64().to_string(),
            ));
        }
        Ok(())
    }
}

fn shutdown_timeout_error(variable: &str, shown: &str) -> ConfigError {
    ConfigError::new(
        variable,
        Some(shown),
        format!(
            "expected a number of seconds from {} to 31536000, such as 25: requests in flight get at least 1 s, and less than {0} would leave under 1 s to write pending visits",
            Config::MIN_SHUTDOWN_TIMEOUT.as_secs()
        ),
    )
}

/// A duration in hours, fractions allowed, above 0 and at most [`MAX_HOURS`].
struct Hours;

impl Parser for Hours {
    type Value = Duration;

    fn parse(&self, variable: &str, text: &str) -> Result<Duration, ConfigError> {
        duration(
            variable,
            text,
            (3600.0, MAX_HOURS),
            "expected a number of hours above 0 and at most 87600, such as 720 or 0.5",
        )
    }

    fn show(&self, value: &Duration) -> Option<String> {
        Some((value.as_secs_f64() / 3600.0).to_string())
    }
}

/// A duration written as a number of units (`unit` seconds each, fractions allowed),
/// above 0 and at most `max` units.
fn duration(
    variable: &str,
    text: &str,
    (unit, max): (f64, f64),
    expected: &str,
) -> Result<Duration, ConfigError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|units| *units > 0.0 && *units <= max)
        .and_then(|units| Duration::try_from_secs_f64(units * unit).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(variable, Some(text), expected))
}

/// A whole number from `.0` to `.1`; in code, at least `.0`.
struct Whole<T>(T, T);

impl<T> Parser for Whole<T>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    type Value = T;

    fn parse(&self, variable: &str, text: &str) -> Result<T, ConfigError> {
        let Self(min, max) = *self;
        text.trim()
            .parse::<T>()
            .ok()
            .filter(|n| *n >= min && *n <= max)
            .ok_or_else(|| {
                ConfigError::new(
                    variable,
                    Some(text),
                    format!("expected a whole number from {min} to {max}"),
                )
            })
    }

    fn show(&self, value: &T) -> Option<String> {
        Some(value.to_string())
    }

    fn check(&self, variable: &str, value: &T) -> Result<(), ConfigError> {
        if *value < self.0 {
            return Err(ConfigError::new(
                variable,
                Some(&value.to_string()),
                format!("expected at least {}", self.0),
            ));
        }
        Ok(())
    }
}

/// `MAX_PENDING_BYTES`: a [`Whole`] number of bytes, as a new [`PendingBytes`] budget.
struct Budget(Whole<usize>);

impl Parser for Budget {
    type Value = PendingBytes;

    fn parse(&self, variable: &str, text: &str) -> Result<PendingBytes, ConfigError> {
        self.0.parse(variable, text).map(PendingBytes::new)
    }

    fn show(&self, value: &PendingBytes) -> Option<String> {
        self.0.show(&value.limit())
    }
}

/// `BATCH_SIZE_LIMIT` on the embedded store, unset: see [`Config::batch_limits`].
pub const EMBEDDED_BATCH_KEYS: usize = 50_000;
/// `BATCH_MAX_BYTES` on the embedded store, unset.
pub const EMBEDDED_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// A value that has no default of its own (the store chooses one): `inner`'s, when set.
struct WhenSet<P>(P);

impl<P: Parser> Parser for WhenSet<P> {
    type Value = Option<P::Value>;

    fn parse(&self, variable: &str, text: &str) -> Result<Self::Value, ConfigError> {
        self.0.parse(variable, text).map(Some)
    }

    fn show(&self, value: &Self::Value) -> Option<String> {
        value.as_ref().and_then(|value| self.0.show(value))
    }

    fn check(&self, variable: &str, value: &Self::Value) -> Result<(), ConfigError> {
        match value {
            Some(value) => self.0.check(variable, value),
            None => Ok(()),
        }
    }
}

/// `REDIS_DB`: a [`Whole`] database index, when set.
struct DbIndex;

impl Parser for DbIndex {
    type Value = Option<i64>;

    fn parse(&self, variable: &str, text: &str) -> Result<Option<i64>, ConfigError> {
        Whole(0, i64::from(i32::MAX))
            .parse(variable, text)
            .map(Some)
    }

    fn show(&self, value: &Option<i64>) -> Option<String> {
        value.map(|db| db.to_string())
    }

    fn check(&self, variable: &str, value: &Option<i64>) -> Result<(), ConfigError> {
        if value.is_some_and(|db| db < 0) {
            return Err(ConfigError::new(
                variable,
                self.show(value).as_deref(),
                "expected a database index of 0 or more",
            ));
        }
        Ok(())
    }
}

/// `REDIS_WAIT_REPLICAS`: a [`Whole`] number of replicas from 0 to 100, when set.
struct WaitReplicas;

impl Parser for WaitReplicas {
    type Value = Option<u32>;

    fn parse(&self, variable: &str, text: &str) -> Result<Option<u32>, ConfigError> {
        Whole(0, 100).parse(variable, text).map(Some)
    }

    fn show(&self, value: &Option<u32>) -> Option<String> {
        value.map(|n| n.to_string())
    }
}

/// One of a list of words, in any case; a value is shown as its first word.
struct Words<T: 'static>(&'static [(&'static str, T)], &'static str);

impl<T: Copy + PartialEq> Parser for Words<T> {
    type Value = T;

    fn parse(&self, variable: &str, text: &str) -> Result<T, ConfigError> {
        let Self(words, expected) = *self;
        let text_word = text.trim().to_ascii_lowercase();
        words
            .iter()
            .find(|(word, _)| *word == text_word)
            .map(|(_, value)| *value)
            .ok_or_else(|| ConfigError::new(variable, Some(text), expected))
    }

    fn show(&self, value: &T) -> Option<String> {
        let (word, _) = self.0.iter().find(|(_, v)| v == value)?;
        Some((*word).to_owned())
    }
}

/// A boolean: `true`/`false`, `1`/`0`, `yes`/`no` or `on`/`off`.
const FLAG: Words<bool> = Words(
    &[
        ("true", true),
        ("false", false),
        ("1", true),
        ("0", false),
        ("yes", true),
        ("no", false),
        ("on", true),
        ("off", false),
    ],
    "expected true or false (also accepted: 1/0, yes/no, on/off)",
);

/// `STORE`: `embedded` or `memory`.
const STORE_KIND: Words<StoreKind> = Words(
    &[
        ("embedded", StoreKind::Embedded),
        ("memory", StoreKind::Memory),
    ],
    "expected embedded or memory",
);

/// A directory path, kept as written (relative paths are relative to the working
/// directory).
struct Dir;

impl Parser for Dir {
    type Value = PathBuf;

    fn parse(&self, _variable: &str, text: &str) -> Result<PathBuf, ConfigError> {
        Ok(PathBuf::from(text.trim()))
    }

    fn show(&self, value: &PathBuf) -> Option<String> {
        Some(value.display().to_string())
    }
}

/// `LOG_FORMAT`: `text` or `json`.
const FORMAT: Words<LogFormat> = Words(
    &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    "expected text or json",
);

/// Any text, trimmed.
struct Name;

impl Parser for Name {
    type Value = String;

    fn parse(&self, _variable: &str, text: &str) -> Result<String, ConfigError> {
        Ok(text.trim().to_owned())
    }

    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }
}

/// `REDIS_PASSWORD`: kept as it is, never shown.
struct Password;

impl Parser for Password {
    type Value = Option<Secret>;

    fn parse(&self, _variable: &str, text: &str) -> Result<Option<Secret>, ConfigError> {
        Ok(Some(Secret::new(text)))
    }

    fn show(&self, value: &Option<Secret>) -> Option<String> {
        value.as_ref().map(ToString::to_string)
    }
}

/// Variables whose empty (or blank) value is refused rather than read as unset: unset
/// `ADMIN_TOKEN` leaves the admin routes open, so a blank one (a variable meant to be
/// filled and left empty) must not quietly do the same.
const BLANK_IS_REFUSED: &[&str] = &["ADMIN_TOKEN"];

/// Shortest `ADMIN_TOKEN`: 16 random characters are beyond guessing over HTTP.
const MIN_ADMIN_TOKEN_LEN: usize = 16;
/// Longest `ADMIN_TOKEN`: far beyond any generated token, well within a request header.
const MAX_ADMIN_TOKEN_LEN: usize = 1024;

/// `ADMIN_TOKEN`: kept as it is, never shown, not even in its own errors. From
/// [`MIN_ADMIN_TOKEN_LEN`] to [`MAX_ADMIN_TOKEN_LEN`] visible ASCII characters: what an
/// `Authorization` header carries unchanged (a header value's surrounding blanks are
/// stripped, and other bytes are not text a client sends as it is), so a token the server
/// accepts is one a client can present.
struct BearerToken;

impl BearerToken {
    /// What is wrong with `token`, if anything; says nothing of what it holds.
    fn problem(token: &str) -> Option<String> {
        let problem = if token.trim().is_empty() {
            "is blank (unset it to leave resets and /test/ runs open to anyone)"
        } else if token.trim() != token {
            "starts or ends with a blank or a line break"
        } else if !token.chars().all(|c| c.is_ascii_graphic()) {
            "holds a blank, a control character or a non-ASCII character"
        } else if token.len() < MIN_ADMIN_TOKEN_LEN {
            "is too short"
        } else if token.len() > MAX_ADMIN_TOKEN_LEN {
            "is too long"
        } else {
            return None;
        };
        Some(format!(
            "{problem}; expected {MIN_ADMIN_TOKEN_LEN} to {MAX_ADMIN_TOKEN_LEN} visible ASCII characters (no blanks), such as the output of `openssl rand -hex 32`"
        ))
    }
}

impl Parser for BearerToken {
    type Value = Option<Secret>;

    fn parse(&self, variable: &str, text: &str) -> Result<Option<Secret>, ConfigError> {
        let token = Some(Secret::new(text));
        self.check(variable, &token)?;
        Ok(token)
    }

    fn show(&self, value: &Option<Secret>) -> Option<String> {
        value.as_ref().map(ToString::to_string)
    }

    fn check(&self, variable: &str, value: &Option<Secret>) -> Result<(), ConfigError> {
        match value
            .as_ref()
            .and_then(|token| Self::problem(token.expose()))
        {
            Some(problem) => Err(ConfigError::new(variable, None, problem)),
            None => Ok(()),
        }
    }
}

/// `REDIS_NODES`: comma-separated `redis://` URLs, each `host:port` once.
struct NodeList;

impl Parser for NodeList {
    type Value = Vec<NodeUrl>;

    fn parse(&self, variable: &str, text: &str) -> Result<Vec<NodeUrl>, ConfigError> {
        let config = RedisConfig::from_urls(text).map_err(|e| {
            // `redact` splits the list as `from_urls` does, so a password holding commas is
            // hidden whole.
            let mut problem = format!(
                "{e}; expected comma-separated redis:// URLs such as redis://:password@redis1:6379/0"
            );
            if matches!(&e, tally_redis::Error::InvalidUrl { url, .. } if url.contains(',')) {
                problem.push_str("; a comma starts a new node only when redis:// follows it");
            }
            if text.contains('@') {
                problem.push_str(
                    "; in a password write '/' '?' '#' '%' as %2F %3F %23 %25 (',' '@' ':' and blanks may stay)",
                );
            }
            ConfigError::new(variable, Some(&redact(text)), problem)
        })?;
        self.check(variable, &config.nodes)?;
        Ok(config.nodes)
    }

    fn show(&self, value: &Vec<NodeUrl>) -> Option<String> {
        // Node URLs print with their passwords redacted.
        (!value.is_empty()).then(|| {
            value
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    fn check(&self, variable: &str, nodes: &Vec<NodeUrl>) -> Result<(), ConfigError> {
        for (i, node) in nodes.iter().enumerate() {
            if nodes[..i].iter().any(|other| other.name() == node.name()) {
                return Err(ConfigError::new(
                    variable,
                    self.show(nodes).as_deref(),
                    format!(
                        "node {} is listed twice; expected each host:port once",
                        node.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `API_PREFIX`: a URL path of safe characters, its trailing slash removed.
struct PathPrefix;

impl Parser for PathPrefix {
    type Value = String;

    fn parse(&self, variable: &str, text: &str) -> Result<String, ConfigError> {
        let prefix = text.trim().trim_end_matches('/');
        let valid = (prefix.is_empty() || prefix.starts_with('/'))
            && !prefix.contains("//")
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
        if valid {
            Ok(prefix.to_owned())
        } else {
            Err(ConfigError::new(
                variable,
                Some(text),
                "expected a path such as /api/v1 (letters, digits, '/', '-', '.', '_', '~'; empty or / for none)",
            ))
        }
    }

    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }

    fn check(&self, variable: &str, value: &String) -> Result<(), ConfigError> {
        self.parse(variable, value).map(drop)
    }
}

/// `HOST`: an IP address (IPv6 with or without brackets), or `localhost`.
struct ListenAddress;

impl Parser for ListenAddress {
    type Value = IpAddr;

    fn parse(&self, variable: &str, text: &str) -> Result<IpAddr, ConfigError> {
        let host = text.trim();
        if host.eq_ignore_ascii_case("localhost") {
            return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| {
                ConfigError::new(
                    variable,
                    Some(text),
                    "expected an IP address to listen on, such as 0.0.0.0, 127.0.0.1 or ::",
                )
            })
    }

    fn show(&self, value: &IpAddr) -> Option<String> {
        Some(value.to_string())
    }
}

/// `LOG_LEVEL`: a level name, in any case (`warning` for `warn`).
struct Level;

impl Parser for Level {
    type Value = String;

    fn parse(&self, variable: &str, text: &str) -> Result<String, ConfigError> {
        match text.trim().to_ascii_lowercase().as_str() {
            level @ ("trace" | "debug" | "info" | "warn" | "error" | "off") => Ok(level.to_owned()),
            "warning" => Ok("warn".to_owned()),
            _ => Err(ConfigError::new(
                variable,
                Some(text),
                "expected one of trace, debug, info, warn, error, off",
            )),
        }
    }

    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }
}

/// `RUST_LOG`: `tracing` filter directives, as `EnvFilter` reads them.
struct Directives;

impl Parser for Directives {
    type Value = String;

    fn parse(&self, variable: &str, text: &str) -> Result<String, ConfigError> {
        tracing_subscriber::EnvFilter::builder()
            .parse(text)
            .map(|_| text.trim().to_owned())
            .map_err(|e| {
                ConfigError::new(
                    variable,
                    Some(text),
                    format!(
                        "{e}; expected tracing filter directives such as info,tally_server=debug"
                    ),
                )
            })
    }

    fn show(&self, value: &String) -> Option<String> {
        Some(value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(vars.iter().copied())
    }

    fn error(vars: &[(&str, &str)]) -> String {
        parse(vars).unwrap_err().to_string()
    }

    /// `(variable, default)` of each row of the README's configuration table, the default
    /// as written (`` `5` `` or `(unset: ...)`).
    fn readme_configuration_table() -> Vec<(String, String)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("the README has a Configuration section");
        let section = section.split("\n#").next().unwrap_or_default();
        section
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .map(|row| {
                let (name, rest) = row.split_once("` |").expect("| `NAME` | default | ...");
                let default = rest.split(" | ").next().unwrap_or_default().trim();
                (name.to_owned(), default.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_readme_table_lists_every_setting_once_with_its_default() {
        let rows = readme_configuration_table();
        for setting in Config::SETTINGS {
            let name = setting.name;
            let shown: Vec<&str> = rows
                .iter()
                .filter(|(row, _)| row == name)
                .map(|(_, default)| default.as_str())
                .collect();
            let [shown] = shown[..] else {
                panic!(
                    "the README's configuration table lists {name} {} times; expected once",
                    shown.len()
                );
            };
            match setting.default_value() {
                Some(default) => assert_eq!(shown, format!("`{default}`"), "{name}"),
                None => assert!(shown.starts_with("(unset"), "{name}: {shown}"),
            }
        }
        for (name, _) in &rows {
            assert!(
                KNOWN_VARIABLES.contains(&name.as_str()),
                "the README's configuration table lists {name}, which the server does not read"
            );
        }
    }

    #[test]
    fn each_shown_default_parses_to_the_default() {
        let default = format!("{:?}", Config::default());
        for setting in Config::SETTINGS {
            if let Some(value) = setting.default_value() {
                let parsed = parse(&[(setting.name, &value)]).unwrap();
                assert_eq!(format!("{parsed:?}"), default, "{}={value}", setting.name);
            }
        }
        assert_eq!(format!("{:?}", parse(&[]).unwrap()), default);
    }

    #[test]
    fn each_variable_is_declared_once() {
        for (i, name) in KNOWN_VARIABLES.iter().enumerate() {
            assert!(!KNOWN_VARIABLES[..i].contains(name), "{name}");
        }
        assert_eq!(KNOWN_VARIABLES.len(), Config::SETTINGS.len());
    }

    #[test]
    fn no_variables_give_the_documented_defaults() {
        let config = parse(&[]).unwrap();
        assert!(config.redis_nodes.is_empty());
        assert_eq!(config.vnodes, 160);
        assert_eq!(config.cache_ttl, Duration::from_secs(5));
        assert_eq!(config.cache_capacity, 100_000);
        assert_eq!(config.batch_interval, Duration::from_secs(5));
        assert_eq!(
            config.batch_limits(),
            (50_000, 16 << 20),
            "the embedded store's"
        );
        assert_eq!(config.api_prefix, "/api/v1");
        assert!(config.enable_metrics);
        assert!(config.enable_dashboard);
        assert_eq!(config.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.port, 8000);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.health_check_interval, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(config.test_max_requests, 100_000);
        assert!(config.test_endpoint_enabled);
        assert!(config.redis_config().is_none());
    }

    #[test]
    fn both_counters_share_one_max_pending_bytes_budget() {
        let config = parse(&[("MAX_PENDING_BYTES", "1048576")]).unwrap();
        let (visits, stats) = (config.counter_config(), config.stats_counter_config());
        assert_eq!(visits.max_pending_bytes.limit(), 1 << 20);
        assert_eq!(
            visits.max_pending_bytes, stats.max_pending_bytes,
            "one budget"
        );
        assert_eq!(parse(&[]).unwrap().max_pending_bytes.limit(), 256 << 20);
        let refused = error(&[("MAX_PENDING_BYTES", "1000")]);
        assert!(refused.contains("MAX_PENDING_BYTES"), "{refused}");
    }

    #[test]
    fn batch_limits_default_per_store_and_a_set_value_wins() {
        let redis = [("REDIS_NODES", "redis://r1:6379")];
        assert_eq!(parse(&redis).unwrap().batch_limits(), (1000, 1 << 20));
        let memory = parse(&[("STORE", "memory")]).unwrap();
        assert_eq!(memory.counter_config().batch_size_limit, 1000);
        let embedded = parse(&[]).unwrap();
        assert_eq!(embedded.counter_config().batch_size_limit, 50_000);
        assert_eq!(embedded.stats_counter_config().batch_max_bytes, 16 << 20);
        let set = parse(&[("BATCH_SIZE_LIMIT", "200"), ("BATCH_MAX_BYTES", "8192")]).unwrap();
        assert_eq!(set.batch_limits(), (200, 8192));
        let set = parse(&[redis[0], ("BATCH_SIZE_LIMIT", "5000")]).unwrap();
        assert_eq!(set.counter_config().batch_size_limit, 5000);
    }

    #[test]
    fn batch_max_bytes_reaches_both_counters_and_zero_is_refused() {
        let config = parse(&[("BATCH_MAX_BYTES", "4096")]).unwrap();
        assert_eq!(config.counter_config().batch_max_bytes, 4096);
        assert_eq!(config.stats_counter_config().batch_max_bytes, 4096);
        let refused = error(&[("BATCH_MAX_BYTES", "0")]);
        assert!(refused.contains("BATCH_MAX_BYTES"), "{refused}");
    }

    #[test]
    fn the_seed_env_file_parses() {
        let config = parse(&[
            (
                "REDIS_NODES",
                "redis://redis1:6379,redis://redis2:6379,redis://redis3:6379",
            ),
            ("REDIS_PASSWORD", ""),
            ("REDIS_DB", "0"),
            ("REDIS_TIMEOUT", "5"),
            ("REDIS_RETRY_ATTEMPTS", "3"),
            ("VIRTUAL_NODES", "100"),
            ("CACHE_TTL_SECONDS", "5"),
            ("CACHE_CAPACITY", "1000"),
            ("BATCH_INTERVAL_SECONDS", "5.0"),
            ("BATCH_SIZE_LIMIT", "1000"),
            ("DEBUG", "true"),
            ("API_PREFIX", "/api/v1"),
            ("PROJECT_NAME", "Visit Counter Service"),
            ("ENABLE_METRICS", "true"),
            ("METRICS_INTERVAL_SECONDS", "60"),
        ])
        .unwrap();
        let redis = config.redis_config().unwrap();
        assert_eq!(redis.nodes.len(), 3);
        assert_eq!(redis.vnodes, 100);
        assert_eq!(redis.password, None);
        assert_eq!(redis.db, Some(0));
        assert!(config.debug);
        assert_eq!(config.project_name, "Visit Counter Service");
    }

    #[test]
    fn the_embedded_store_is_the_default_without_redis_nodes() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.store, StoreKind::Embedded);
        assert_eq!(config.data_dir, PathBuf::from("./tally-data"));
        assert_eq!(
            config.embedded_config().cache_bytes,
            tally_embedded::DEFAULT_CACHE_BYTES
        );
        let config = parse(&[
            ("STORE", "Memory"),
            ("DATA_DIR", "/var/lib/tally"),
            ("EMBEDDED_CACHE_MB", "8"),
        ])
        .unwrap();
        assert_eq!(config.store, StoreKind::Memory);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/tally"));
        assert_eq!(config.embedded_config().cache_bytes, 8 << 20);
        assert_eq!(
            error(&[("STORE", "disk")]),
            "STORE=\"disk\": expected embedded or memory"
        );
        assert!(error(&[("EMBEDDED_CACHE_MB", "0")]).starts_with("EMBEDDED_CACHE_MB=\"0\""));
    }

    #[test]
    fn redis_nodes_win_over_the_default_store_but_contradict_store_memory() {
        let nodes = ("REDIS_NODES", "redis://r1:6379");
        let config = parse(&[nodes, ("STORE", "embedded")]).unwrap();
        assert!(config.redis_config().is_some());
        assert_eq!(
            error(&[nodes, ("STORE", "memory")]),
            "STORE=\"memory\": REDIS_NODES is set, which counts in Redis; unset STORE (or REDIS_NODES)"
        );
    }

    #[test]
    fn redis_cluster_and_redis_nodes_exclude_each_other_in_one_line() {
        let message = error(&[
            ("REDIS_CLUSTER", "redis://:hunter2@c1:7000,redis://c2:7000"),
            ("REDIS_NODES", "redis://r1:6379"),
        ]);
        assert_eq!(
            message,
            "REDIS_CLUSTER=\"redis://:***@c1:7000,redis://c2:7000\": REDIS_NODES is set too: a server counts either on standalone nodes (REDIS_NODES) or on a Redis Cluster (REDIS_CLUSTER); unset one of them"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn redis_cluster_refuses_what_a_cluster_cannot_do() {
        let cluster = ("REDIS_CLUSTER", "redis://c1:7000");
        assert!(
            error(&[cluster, ("STORE", "memory")]).starts_with("STORE=\"memory\": REDIS_CLUSTER")
        );
        assert_eq!(
            error(&[cluster, ("REDIS_DB", "2")]),
            "REDIS_DB=\"2\": a Redis Cluster (REDIS_CLUSTER) has database 0 only; unset REDIS_DB"
        );
        assert!(parse(&[cluster, ("REDIS_DB", "0")]).is_ok());
        let seeded_db = error(&[("REDIS_CLUSTER", "redis://:pw@c1:7000/4")]);
        assert!(seeded_db.contains("database 0 only"), "{seeded_db}");
        assert!(!seeded_db.contains(":pw@"), "{seeded_db}");
        assert_eq!(
            error(&[("REDIS_WAIT_REPLICAS", "1")]),
            "REDIS_WAIT_REPLICAS=\"1\": applies to a Redis Cluster only, and REDIS_CLUSTER is not set; unset REDIS_WAIT_REPLICAS"
        );
        assert!(
            error(&[cluster, ("REDIS_WAIT_REPLICAS", "-1")])
                .starts_with("REDIS_WAIT_REPLICAS=\"-1\"")
        );
    }

    #[test]
    fn the_cluster_compose_deployment_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker");
        let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
        let compose = read("docker-compose.cluster.yml");
        let seeds = compose
            .lines()
            .find_map(|line| line.trim().strip_prefix("REDIS_CLUSTER:"))
            .expect("the compose file sets REDIS_CLUSTER")
            .trim()
            .to_owned();
        let env = read(".env.example");
        let mut vars: Vec<(String, String)> = env
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        vars.push(("REDIS_CLUSTER".to_owned(), seeds));

        let config = Config::from_vars(vars).unwrap();

        assert_eq!(config.cluster_config().map(|c| c.seeds.len()), Some(6));
        assert!(config.redis_config().is_none());
    }

    #[test]
    fn redis_cluster_shares_the_connection_settings() {
        let config = parse(&[
            ("REDIS_CLUSTER", "redis://c1:7000, redis://c2:7000"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_TIMEOUT", "0.5"),
            ("REDIS_POOL_SIZE", "3"),
            ("REDIS_WAIT_REPLICAS", "2"),
        ])
        .unwrap();
        assert!(config.redis_config().is_none());
        let cluster = config.cluster_config().unwrap();
        assert_eq!(cluster.seeds.len(), 2);
        assert_eq!(cluster.password.as_ref().map(Secret::expose), Some("pw"));
        assert_eq!(cluster.timeout, Duration::from_millis(500));
        assert_eq!(cluster.pool_size, 3);
        assert_eq!(cluster.wait_replicas, Some(2));
        assert_eq!(
            parse(&[]).unwrap().cluster_config().map(|c| c.seeds.len()),
            None
        );
    }

    #[test]
    fn marks_retention_is_read_in_hours() {
        assert_eq!(
            parse(&[]).unwrap().marks_retention,
            tally_redis::DEFAULT_MARKS_RETENTION
        );
        let config = parse(&[
            ("REDIS_NODES", "redis://r1:6379"),
            ("MARKS_RETENTION_HOURS", "0.5"),
        ])
        .unwrap();
        assert_eq!(config.marks_retention, Duration::from_secs(1800));
        assert_eq!(
            config.redis_config().unwrap().marks_retention,
            Duration::from_secs(1800)
        );
        for bad in ["0", "-1", "week", "NaN", "100000"] {
            assert!(
                error(&[("MARKS_RETENTION_HOURS", bad)]).starts_with(&format!(
                    "MARKS_RETENTION_HOURS=\"{bad}\": expected a number of hours"
                )),
                "{bad}"
            );
        }
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let config = parse(&[
            ("BATCH_INTERVAL_SECONDS", "0.25"),
            ("CACHE_TTL_SECONDS", "1"),
        ])
        .unwrap();
        assert_eq!(config.batch_interval, Duration::from_millis(250));
        assert_eq!(config.counter_config().cache_ttl, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_variable_the_value_and_what_is_expected() {
        assert_eq!(
            error(&[("VIRTUAL_NODES", "abc")]),
            "VIRTUAL_NODES=\"abc\": expected a whole number from 1 to 100000"
        );
        assert_eq!(
            error(&[("PORT", "70000")]),
            "PORT=\"70000\": expected a whole number from 0 to 65535"
        );
        assert!(
            error(&[("BATCH_INTERVAL_SECONDS", "-1")])
                .starts_with("BATCH_INTERVAL_SECONDS=\"-1\": expected a number of seconds above 0")
        );
        assert!(
            error(&[("HEALTH_CHECK_INTERVAL_SECONDS", "NaN")])
                .starts_with("HEALTH_CHECK_INTERVAL_SECONDS=\"NaN\"")
        );
        assert!(
            error(&[("ENABLE_METRICS", "maybe")])
                .starts_with("ENABLE_METRICS=\"maybe\": expected true or false")
        );
        assert_eq!(
            error(&[("LOG_FORMAT", "xml")]),
            "LOG_FORMAT=\"xml\": expected text or json"
        );
        assert!(error(&[("LOG_LEVEL", "loud")]).starts_with("LOG_LEVEL=\"loud\""));
        assert!(error(&[("HOST", "not a host")]).starts_with("HOST=\"not a host\""));
        assert!(error(&[("API_PREFIX", "api v1")]).starts_with("API_PREFIX=\"api v1\""));
        assert!(error(&[("CACHE_CAPACITY", "-1")]).starts_with("CACHE_CAPACITY=\"-1\""));
        assert!(error(&[("MAX_PENDING_KEYS", "0")]).starts_with("MAX_PENDING_KEYS=\"0\""));
    }

    #[test]
    fn a_bad_node_url_is_shown_without_its_password() {
        let message = error(&[(
            "REDIS_NODES",
            "redis://r1:6379,redis://:hunter2@r2:notaport",
        )]);
        assert!(
            message.starts_with("REDIS_NODES=\"redis://r1:6379,redis://:***@r2:notaport\": "),
            "{message}"
        );
        assert!(
            message.contains("expected comma-separated redis:// URLs"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
        let message = error(&[("REDIS_NODES", "http://:hunter2@r1:6379")]);
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn a_node_listed_twice_is_refused() {
        let message = error(&[("REDIS_NODES", "redis://:pw@r1:6379,redis://r1:6379/2")]);
        assert!(message.contains("r1:6379 is listed twice"), "{message}");
        assert!(!message.contains(":pw@"), "{message}");
    }

    #[test]
    fn errors_stay_on_one_line() {
        let message = error(&[("PORT", "80\n80")]);
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn passwords_never_show_in_debug_output() {
        let config = parse(&[
            ("REDIS_NODES", "redis://:urlsecret@r1:6379"),
            ("REDIS_PASSWORD", "envsecret"),
        ])
        .unwrap();
        let shown = format!("{config:?} {:?}", config.redis_config());
        assert!(
            !shown.contains("urlsecret") && !shown.contains("envsecret"),
            "{shown}"
        );
        assert_eq!(
            config.redis_config().unwrap().password.unwrap().expose(),
            "envsecret"
        );
    }

    #[test]
    fn the_admin_token_is_unset_by_default_and_kept_exactly_as_given() {
        assert!(parse(&[]).unwrap().admin_token.is_none());
        let token = "Zx9-token_with.all~sorts+of/chars=";
        let config = parse(&[("ADMIN_TOKEN", token)]).unwrap();

        assert_eq!(config.admin_token.as_ref().map(Secret::expose), Some(token));
        let shown = format!("{config:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(shown.contains("admin_token: Some(***)"), "{shown}");
    }

    #[test]
    fn a_bad_admin_token_is_refused_naming_the_variable_but_never_its_value() {
        let cases = [
            ("", "is blank (unset it"),
            ("   \t ", "is blank (unset it"),
            (" Kq7vLead-Mx2wQ9zz", "starts or ends with a blank"),
            ("Kq7vTrail-Mx2wQ9zz\n", "starts or ends with a blank"),
            ("Kq7v Inner-Mx2wQ9zz", "holds a blank, a control character"),
            (
                "Kq7v\u{7f}Ctrl-Mx2wQ9zz",
                "holds a blank, a control character",
            ),
            (
                "Kq7v\u{f6}Nonascii-Mx2wQ9zz",
                "holds a blank, a control character",
            ),
            ("Kq7vShort", "is too short"),
            (&"L0ng".repeat(257), "is too long"),
        ];
        for (token, problem) in cases {
            let message = error(&[("ADMIN_TOKEN", token)]);

            assert!(
                message.starts_with(&format!("ADMIN_TOKEN: {problem}")),
                "{token:?}: {message}"
            );
            assert!(
                message.contains("expected 16 to 1024 visible ASCII characters"),
                "{message}"
            );
            assert!(!message.contains('\n'), "{message}");
            for part in token.split(|c: char| !c.is_ascii_alphanumeric()) {
                assert!(
                    part.len() < 4 || !message.contains(part),
                    "{part:?} shows in: {message}"
                );
            }
        }
        let sixteen = "0123456789abcdef";
        assert!(parse(&[("ADMIN_TOKEN", sixteen)]).is_ok());
        assert!(parse(&[("ADMIN_TOKEN", &"x".repeat(1024))]).is_ok());
    }

    #[test]
    fn validate_catches_an_admin_token_set_in_code() {
        let config = Config {
            admin_token: Some(Secret::new("s3cr3t")),
            ..Config::default()
        };

        let err = config.validate().unwrap_err();

        assert_eq!(
            (err.variable.as_str(), err.value.as_deref()),
            ("ADMIN_TOKEN", None)
        );
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn rust_log_wins_over_log_level() {
        let config = parse(&[
            ("RUST_LOG", "warn,tally_server=debug"),
            ("LOG_LEVEL", "error"),
        ])
        .unwrap();
        assert_eq!(config.log_filter, "warn,tally_server=debug");
        let config = parse(&[("LOG_LEVEL", "DEBUG")]).unwrap();
        assert_eq!(config.log_filter, "debug");
    }

    #[test]
    fn the_last_value_wins_and_names_are_case_sensitive() {
        let config = parse(&[("PORT", "1"), ("PORT", "2"), ("port", "3")]).unwrap();
        assert_eq!(config.port, 2);
    }

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(parse(&[("API_PREFIX", "/v2/")]).unwrap().api_prefix, "/v2");
        assert_eq!(parse(&[("API_PREFIX", "/")]).unwrap().api_prefix, "");
        assert!(parse(&[("API_PREFIX", "v2")]).is_err());
    }

    #[test]
    fn validate_catches_values_set_in_code() {
        let config = Config {
            batch_interval: Duration::ZERO,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.variable, "BATCH_INTERVAL_SECONDS");
    }

    #[test]
    fn a_missing_dotenv_file_is_no_error() {
        assert!(
            read_dotenv(Path::new("/nonexistent/.env"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_dotenv_line_is_reported_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "PORT=9000\nREDIS_PASSWORD='sec ret\n").unwrap();
        let err = read_dotenv(&path).unwrap_err().to_string();
        assert!(err.starts_with(".env: "), "{err}");
        assert!(!err.contains("sec ret"), "{err}");
    }

    #[test]
    fn a_password_with_url_characters_never_shows_in_a_redis_nodes_error() {
        let password = "Kq7vTr0ub4dor,Hx2z@Bat:Jw5uSta/Ny8pHund%Lm3c Words";
        for nodes in [
            format!("redis://:{password}@r1:6379,redis://r2:notaport"),
            format!("redis://r1:6379,redis://app:{password}@r2:6379/x"),
            format!("redis://:{password}@r1:6379,http://r2:6379"),
        ] {
            let message = error(&[("REDIS_NODES", &nodes)]);
            assert!(message.starts_with("REDIS_NODES=\""), "{message}");
            for part in password.split(|c: char| !c.is_ascii_alphanumeric()) {
                assert!(!message.contains(part), "{part:?} shows in: {message}");
            }
        }
        let message = error(&[(
            "REDIS_NODES",
            "redis://:Tr0ub4dor,horse@redis1:6379,redis://r2:x",
        )]);
        assert!(
            message.starts_with("REDIS_NODES=\"redis://:***@redis1:6379,redis://r2:x\": "),
            "{message}"
        );
        assert!(message.contains("%2F %3F %23 %25"), "{message}");
    }

    #[test]
    fn a_list_missing_a_scheme_says_where_a_new_node_starts() {
        let message = error(&[("REDIS_NODES", "redis://r1:6379,r2:6379")]);
        assert!(
            message.contains("a comma starts a new node only when redis:// follows it"),
            "{message}"
        );
    }

    #[test]
    fn a_shutdown_timeout_leaving_under_a_second_to_write_is_refused() {
        for value in ["1.99", "1", "0.5", "0", "-3", "soon"] {
            assert_eq!(
                error(&[("SHUTDOWN_TIMEOUT_SECONDS", value)]),
                format!(
                    "SHUTDOWN_TIMEOUT_SECONDS=\"{value}\": expected a number of seconds from 2 to 31536000, such as 25: requests in flight get at least 1 s, and less than 2 would leave under 1 s to write pending visits"
                )
            );
        }
        let config = parse(&[("SHUTDOWN_TIMEOUT_SECONDS", "2")]).unwrap();
        assert_eq!(config.shutdown_timeout, Config::MIN_SHUTDOWN_TIMEOUT);
        let built_in_code = Config {
            shutdown_timeout: Duration::from_millis(1500),
            ..Config::default()
        };
        let err = built_in_code.validate().unwrap_err();
        assert_eq!(
            (err.variable.as_str(), err.value.as_deref()),
            ("SHUTDOWN_TIMEOUT_SECONDS", Some("1.5"))
        );
    }

    #[test]
    fn every_accepted_shutdown_timeout_leaves_a_second_to_write() {
        for shutdown in [2.0, 2.5, 3.0, 3.9, 4.0, 10.0, 25.0, 3600.0] {
            for redis_timeout in [0.01, 0.5, 1.0, 5.0, 60.0] {
                let config = parse(&[
                    ("SHUTDOWN_TIMEOUT_SECONDS", &shutdown.to_string()),
                    ("REDIS_TIMEOUT", &redis_timeout.to_string()),
                ])
                .unwrap();
                let drain = config.drain_timeout();
                assert_eq!(drain.subsec_nanos(), 0, "whole seconds: {drain:?}");
                assert!(drain >= Duration::from_secs(1), "{drain:?}");
                assert!(
                    config.shutdown_timeout - drain >= Duration::from_secs(1),
                    "SHUTDOWN_TIMEOUT_SECONDS={shutdown} REDIS_TIMEOUT={redis_timeout}: drain {drain:?}"
                );
            }
        }
    }
}
