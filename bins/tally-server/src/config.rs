//! The server's configuration: one typed [`Config`] read from the environment (and `.env`),
//! with a one-line [`ConfigError`] naming the variable, its value and what was expected.
//!
//! Variables keep the names of the original Python service. envy maps them onto a struct of
//! raw strings; each is then parsed by a small parser that knows the variable's name, so
//! every message has the same shape and no value is printed before it is made safe to show
//! (node URLs lose their passwords, `REDIS_PASSWORD` is never printed).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tally_counter::{CounterConfig, PendingBytes};
use tally_redis::{Layout, NodeUrl, RedisConfig, Secret, redact};

/// Longest duration any `*_SECONDS` variable accepts: one year. Far above any sensible
/// value, and low enough that no timer or cache implementation overflows on it.
const MAX_SECONDS: f64 = 31_536_000.0;

/// Format of the log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`LOG_FORMAT=text`, the default).
    #[default]
    Text,
    /// One JSON object per line (`LOG_FORMAT=json`).
    Json,
}

/// Everything the server can be told, with the defaults of the original service except
/// where the README says otherwise.
///
/// Build it with [`Config::from_env`] (the binary), [`Config::from_vars`] (tests of
/// parsing), or [`Config::default`] plus field updates (tests that start the app).
/// Durations are [`Duration`] fields, parsed from the `*_SECONDS`-style variables, which
/// accept fractions (`0.5`). `Debug` never shows a password: node URLs print redacted and
/// [`Secret`] prints `***`.
#[derive(Clone, Debug)]
pub struct Config {
    /// `REDIS_NODES`: the Redis nodes, in order; empty means the embedded in-process store.
    pub redis_nodes: Vec<NodeUrl>,
    /// `REDIS_PASSWORD`: password for every node, overriding the URLs' own.
    pub redis_password: Option<Secret>,
    /// `REDIS_DB`: database index for every node, overriding the URLs' own.
    pub redis_db: Option<i64>,
    /// `REDIS_TIMEOUT` (seconds, default 5): bound on each connection attempt and command.
    pub redis_timeout: Duration,
    /// `REDIS_RETRY_ATTEMPTS` (default 3): connection attempts before a command fails.
    pub redis_retry_attempts: u32,
    /// `REDIS_POOL_SIZE` (default 16): connections per node.
    pub redis_pool_size: usize,
    /// `VIRTUAL_NODES` (default 160): ring points per node.
    pub virtual_nodes: u32,
    /// `CACHE_TTL_SECONDS` (default 5): how long a read value is served from memory.
    pub cache_ttl: Duration,
    /// `CACHE_CAPACITY` (default 100,000): most entries in the read cache.
    pub cache_capacity: u64,
    /// `BATCH_INTERVAL_SECONDS` (default 5.0): pending visits are written at least this often.
    pub batch_interval: Duration,
    /// `BATCH_SIZE_LIMIT` (default 1000): a node's batch goes out early at this many pages,
    /// and holds no more.
    pub batch_size_limit: usize,
    /// `BATCH_MAX_BYTES` (default 1 MiB): most bytes of page ids (or paths) in one batch.
    pub batch_max_bytes: usize,
    /// `MAX_PENDING_KEYS` (default 1,000,000): most distinct pages waiting to be written,
    /// each node's pages at most their share (divided by the number of nodes); past it
    /// visits to new pages answer 503.
    pub max_pending_keys: usize,
    /// `MAX_PENDING_BYTES` (default 256 MiB): most bytes of page ids and paths waiting to
    /// be written, over the visit counter and the request statistics together (each key
    /// costs its length plus [`tally_counter::PendingBytes::KEY_OVERHEAD`]); past it,
    /// requests with a new page or path answer 503. Both counters get clones of this one
    /// budget.
    pub max_pending_bytes: PendingBytes,
    /// `DEBUG` (default false): reported as `debug_mode` by `/status`.
    pub debug: bool,
    /// `API_PREFIX` (default `/api/v1`): path prefix of the counter API, no trailing slash.
    pub api_prefix: String,
    /// `PROJECT_NAME` (default `tally`): named in the start-up log line.
    pub project_name: String,
    /// `ENABLE_METRICS` (default true): serve Prometheus metrics at `/metrics`.
    pub enable_metrics: bool,
    /// `METRICS_INTERVAL_SECONDS` (default 60): how often a counter summary is logged.
    pub metrics_interval: Duration,
    /// `HOST` (default `127.0.0.1`): address to listen on. The container image sets
    /// `0.0.0.0`.
    pub host: IpAddr,
    /// `PORT` (default 8000): port to listen on; 0 picks a free one (logged at start).
    pub port: u16,
    /// `LOG_FORMAT` (default `text`): `text` or `json`.
    pub log_format: LogFormat,
    /// Log filter: `RUST_LOG` when set (full `tracing` directives), else `LOG_LEVEL`
    /// (default `info`).
    pub log_filter: String,
    /// `HEALTH_CHECK_INTERVAL_SECONDS` (default 5): how often every Redis node is pinged.
    pub health_check_interval: Duration,
    /// `MARKS_RETENTION_HOURS` (default 720, fractions accepted): a node's high-water mark
    /// of a server instance that has not written to it for this long is removed; must
    /// outlast any node outage a running server rides out (see [`RedisConfig`]).
    pub marks_retention: Duration,
    /// `SHUTDOWN_TIMEOUT_SECONDS` (default 25, at least [`Config::MIN_SHUTDOWN_TIMEOUT`]):
    /// bound on a graceful shutdown, from the signal to the last flushed batch; split as
    /// [`Config::drain_timeout`] says.
    pub shutdown_timeout: Duration,
    /// `TEST_MAX_REQUESTS` (default 100,000): largest `n` of `/test/{n}/` (request-stats
    /// issue; parsed now, unused so far).
    pub test_max_requests: u64,
    /// `TEST_ENDPOINT_ENABLED` (default true): serve `/test/{n}/` (request-stats issue;
    /// parsed now, unused so far).
    pub test_endpoint_enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_nodes: Vec::new(),
            redis_password: None,
            redis_db: None,
            redis_timeout: tally_redis::DEFAULT_TIMEOUT,
            redis_retry_attempts: tally_redis::DEFAULT_RETRY_ATTEMPTS,
            redis_pool_size: tally_redis::DEFAULT_POOL_SIZE,
            virtual_nodes: 160,
            cache_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
            batch_interval: Duration::from_secs(5),
            batch_size_limit: 1000,
            batch_max_bytes: CounterConfig::default().batch_max_bytes,
            max_pending_keys: 1_000_000,
            max_pending_bytes: CounterConfig::default().max_pending_bytes,
            debug: false,
            api_prefix: "/api/v1".to_owned(),
            project_name: "tally".to_owned(),
            enable_metrics: true,
            metrics_interval: Duration::from_secs(60),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8000,
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            health_check_interval: tally_redis::DEFAULT_HEALTH_CHECK_INTERVAL,
            marks_retention: tally_redis::DEFAULT_MARKS_RETENTION,
            shutdown_timeout: Duration::from_secs(25),
            test_max_requests: 100_000,
            test_endpoint_enabled: true,
        }
    }
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

/// The variables as envy reads them: raw strings, parsed one by one below so each message
/// names its variable. Empty values count as unset (the seed's `.env` has `REDIS_PASSWORD=`).
#[derive(Debug, Default, Deserialize)]
struct RawVars {
    redis_nodes: Option<String>,
    redis_password: Option<String>,
    redis_db: Option<String>,
    redis_timeout: Option<String>,
    redis_retry_attempts: Option<String>,
    redis_pool_size: Option<String>,
    virtual_nodes: Option<String>,
    cache_ttl_seconds: Option<String>,
    cache_capacity: Option<String>,
    batch_interval_seconds: Option<String>,
    batch_size_limit: Option<String>,
    batch_max_bytes: Option<String>,
    max_pending_keys: Option<String>,
    max_pending_bytes: Option<String>,
    debug: Option<String>,
    api_prefix: Option<String>,
    project_name: Option<String>,
    enable_metrics: Option<String>,
    metrics_interval_seconds: Option<String>,
    host: Option<String>,
    port: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    rust_log: Option<String>,
    health_check_interval_seconds: Option<String>,
    marks_retention_hours: Option<String>,
    shutdown_timeout_seconds: Option<String>,
    test_max_requests: Option<String>,
    test_endpoint_enabled: Option<String>,
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
                Err(_) if is_known_variable(name) => {
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
        // Only our variables, spelled exactly (envy would also take `port` for `PORT`), the
        // last value of a name winning (as `.env` then the environment).
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, v): &(String, String)| {
                KNOWN_VARIABLES.contains(&k.as_str()) && !v.trim().is_empty()
            })
            .collect();
        // All fields are optional strings, so envy cannot fail on values; a failure here
        // would be a bug in the struct, reported without any value.
        let raw: RawVars = envy::from_iter(vars)
            .map_err(|e| ConfigError::new("environment", None, e.to_string()))?;
        let d = Config::default();
        let config = Config {
            redis_nodes: match raw.redis_nodes.as_deref() {
                Some(value) => parse_nodes(value)?,
                None => Vec::new(),
            },
            redis_password: raw.redis_password.map(Secret::new),
            redis_db: raw
                .redis_db
                .as_deref()
                .map(|v| whole("REDIS_DB", v, 0, i64::from(i32::MAX)))
                .transpose()?,
            redis_timeout: seconds("REDIS_TIMEOUT", raw.redis_timeout, d.redis_timeout)?,
            redis_retry_attempts: whole_or(
                "REDIS_RETRY_ATTEMPTS",
                raw.redis_retry_attempts,
                1,
                1000,
                d.redis_retry_attempts,
            )?,
            redis_pool_size: whole_or(
                "REDIS_POOL_SIZE",
                raw.redis_pool_size,
                1,
                10_000,
                d.redis_pool_size,
            )?,
            virtual_nodes: whole_or(
                "VIRTUAL_NODES",
                raw.virtual_nodes,
                1,
                100_000,
                d.virtual_nodes,
            )?,
            cache_ttl: seconds("CACHE_TTL_SECONDS", raw.cache_ttl_seconds, d.cache_ttl)?,
            cache_capacity: whole_or(
                "CACHE_CAPACITY",
                raw.cache_capacity,
                0,
                1_000_000_000,
                d.cache_capacity,
            )?,
            batch_interval: seconds(
                "BATCH_INTERVAL_SECONDS",
                raw.batch_interval_seconds,
                d.batch_interval,
            )?,
            batch_size_limit: whole_or(
                "BATCH_SIZE_LIMIT",
                raw.batch_size_limit,
                1,
                1_000_000,
                d.batch_size_limit,
            )?,
            batch_max_bytes: whole_or(
                "BATCH_MAX_BYTES",
                raw.batch_max_bytes,
                1,
                1 << 30,
                d.batch_max_bytes,
            )?,
            max_pending_keys: whole_or(
                "MAX_PENDING_KEYS",
                raw.max_pending_keys,
                1,
                1_000_000_000,
                d.max_pending_keys,
            )?,
            max_pending_bytes: PendingBytes::new(whole_or(
                "MAX_PENDING_BYTES",
                raw.max_pending_bytes,
                1 << 16,
                1 << 40,
                d.max_pending_bytes.limit(),
            )?),
            debug: boolean("DEBUG", raw.debug, d.debug)?,
            api_prefix: match raw.api_prefix.as_deref() {
                Some(value) => parse_prefix(value)?,
                None => d.api_prefix,
            },
            project_name: raw
                .project_name
                .map_or(d.project_name, |v| v.trim().to_owned()),
            enable_metrics: boolean("ENABLE_METRICS", raw.enable_metrics, d.enable_metrics)?,
            metrics_interval: seconds(
                "METRICS_INTERVAL_SECONDS",
                raw.metrics_interval_seconds,
                d.metrics_interval,
            )?,
            host: match raw.host.as_deref() {
                Some(value) => parse_host(value)?,
                None => d.host,
            },
            port: whole_or("PORT", raw.port, 0, u16::MAX, d.port)?,
            log_format: match raw.log_format.as_deref() {
                Some(value) => parse_log_format(value)?,
                None => d.log_format,
            },
            log_filter: parse_log_filter(raw.rust_log.as_deref(), raw.log_level.as_deref())?,
            health_check_interval: seconds(
                "HEALTH_CHECK_INTERVAL_SECONDS",
                raw.health_check_interval_seconds,
                d.health_check_interval,
            )?,
            marks_retention: hours(
                "MARKS_RETENTION_HOURS",
                raw.marks_retention_hours,
                d.marks_retention,
            )?,
            shutdown_timeout: match raw.shutdown_timeout_seconds.as_deref() {
                Some(value) => parse_shutdown_timeout(value)?,
                None => d.shutdown_timeout,
            },
            test_max_requests: whole_or(
                "TEST_MAX_REQUESTS",
                raw.test_max_requests,
                1,
                10_000_000,
                d.test_max_requests,
            )?,
            test_endpoint_enabled: boolean(
                "TEST_ENDPOINT_ENABLED",
                raw.test_endpoint_enabled,
                d.test_endpoint_enabled,
            )?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what the field types cannot: durations above zero, counts of at least one,
    /// a well-formed prefix, distinct nodes. [`crate::run`] calls it too, for configs built
    /// in code.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for the first bad field, named by its variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let durations = [
            ("REDIS_TIMEOUT", self.redis_timeout),
            ("CACHE_TTL_SECONDS", self.cache_ttl),
            ("BATCH_INTERVAL_SECONDS", self.batch_interval),
            ("METRICS_INTERVAL_SECONDS", self.metrics_interval),
            ("HEALTH_CHECK_INTERVAL_SECONDS", self.health_check_interval),
            ("SHUTDOWN_TIMEOUT_SECONDS", self.shutdown_timeout),
        ];
        for (variable, duration) in durations {
            if duration.is_zero() || duration.as_secs_f64() > MAX_SECONDS {
                return Err(ConfigError::new(
                    variable,
                    Some(&duration.as_secs_f64().to_string()),
                    SECONDS_EXPECTED,
                ));
            }
        }
        let at_least_one = [
            ("REDIS_RETRY_ATTEMPTS", self.redis_retry_attempts as u64),
            ("REDIS_POOL_SIZE", self.redis_pool_size as u64),
            ("VIRTUAL_NODES", u64::from(self.virtual_nodes)),
            ("BATCH_SIZE_LIMIT", self.batch_size_limit as u64),
            ("BATCH_MAX_BYTES", self.batch_max_bytes as u64),
            ("MAX_PENDING_KEYS", self.max_pending_keys as u64),
            ("TEST_MAX_REQUESTS", self.test_max_requests),
        ];
        for (variable, value) in at_least_one {
            if value == 0 {
                return Err(ConfigError::new(variable, Some("0"), "expected at least 1"));
            }
        }
        if self.redis_db.is_some_and(|db| db < 0) {
            return Err(ConfigError::new(
                "REDIS_DB",
                self.redis_db.map(|db| db.to_string()).as_deref(),
                "expected a database index of 0 or more",
            ));
        }
        if self.shutdown_timeout < Self::MIN_SHUTDOWN_TIMEOUT {
            return Err(shutdown_timeout_error(
                &self.shutdown_timeout.as_secs_f64().to_string(),
            ));
        }
        parse_prefix(&self.api_prefix)?;
        check_distinct(&self.redis_nodes)?;
        Ok(())
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
        config.vnodes = self.virtual_nodes;
        config.layout = Layout::Counters;
        Some(config)
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

    fn counter_config_named(&self, name: &str) -> CounterConfig {
        CounterConfig {
            name: name.to_owned(),
            batch_interval: self.batch_interval,
            batch_size_limit: self.batch_size_limit,
            batch_max_bytes: self.batch_max_bytes,
            cache_ttl: self.cache_ttl,
            cache_capacity: self.cache_capacity,
            max_pending_keys: self.max_pending_keys,
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

const SECONDS_EXPECTED: &str =
    "expected a number of seconds above 0 and at most 31536000, such as 5 or 0.5";

/// Every environment variable the server reads.
pub const KNOWN_VARIABLES: &[&str] = &[
    "REDIS_NODES",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_TIMEOUT",
    "REDIS_RETRY_ATTEMPTS",
    "REDIS_POOL_SIZE",
    "VIRTUAL_NODES",
    "CACHE_TTL_SECONDS",
    "CACHE_CAPACITY",
    "BATCH_INTERVAL_SECONDS",
    "BATCH_SIZE_LIMIT",
    "BATCH_MAX_BYTES",
    "MAX_PENDING_KEYS",
    "MAX_PENDING_BYTES",
    "DEBUG",
    "API_PREFIX",
    "PROJECT_NAME",
    "ENABLE_METRICS",
    "METRICS_INTERVAL_SECONDS",
    "HOST",
    "PORT",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "RUST_LOG",
    "HEALTH_CHECK_INTERVAL_SECONDS",
    "MARKS_RETENTION_HOURS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "TEST_MAX_REQUESTS",
    "TEST_ENDPOINT_ENABLED",
];

fn is_known_variable(name: &str) -> bool {
    KNOWN_VARIABLES.contains(&name)
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

fn parse_nodes(value: &str) -> Result<Vec<NodeUrl>, ConfigError> {
    let config = RedisConfig::from_urls(value).map_err(|e| {
        // `redact` splits the list as `from_urls` does, so a password holding commas is
        // hidden whole.
        let mut problem = format!(
            "{e}; expected comma-separated redis:// URLs such as redis://:password@redis1:6379/0"
        );
        if matches!(&e, tally_redis::Error::InvalidUrl { url, .. } if url.contains(',')) {
            problem.push_str("; a comma starts a new node only when redis:// follows it");
        }
        if value.contains('@') {
            problem.push_str(
                "; in a password write '/' '?' '#' '%' as %2F %3F %23 %25 (',' '@' ':' and blanks may stay)",
            );
        }
        ConfigError::new("REDIS_NODES", Some(&redact(value)), problem)
    })?;
    check_distinct(&config.nodes)?;
    Ok(config.nodes)
}

fn check_distinct(nodes: &[NodeUrl]) -> Result<(), ConfigError> {
    for (i, node) in nodes.iter().enumerate() {
        if nodes[..i].iter().any(|other| other.name() == node.name()) {
            let shown = nodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",");
            return Err(ConfigError::new(
                "REDIS_NODES",
                Some(&shown),
                format!(
                    "node {} is listed twice; expected each host:port once",
                    node.name()
                ),
            ));
        }
    }
    Ok(())
}

/// `SHUTDOWN_TIMEOUT_SECONDS`: seconds, from [`Config::MIN_SHUTDOWN_TIMEOUT`] up, so that
/// at least 1 s is left for writing after the drain.
fn parse_shutdown_timeout(value: &str) -> Result<Duration, ConfigError> {
    seconds(
        "SHUTDOWN_TIMEOUT_SECONDS",
        Some(value.to_owned()),
        Duration::ZERO,
    )
    .ok()
    .filter(|timeout| *timeout >= Config::MIN_SHUTDOWN_TIMEOUT)
    .ok_or_else(|| shutdown_timeout_error(value))
}

fn shutdown_timeout_error(shown: &str) -> ConfigError {
    ConfigError::new(
        "SHUTDOWN_TIMEOUT_SECONDS",
        Some(shown),
        format!(
            "expected a number of seconds from {} to 31536000, such as 25: requests in flight get at least 1 s, and less than {0} would leave under 1 s to write pending visits",
            Config::MIN_SHUTDOWN_TIMEOUT.as_secs()
        ),
    )
}

fn seconds(
    variable: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    duration(
        variable,
        value,
        default,
        (1.0, MAX_SECONDS),
        SECONDS_EXPECTED,
    )
}

/// Longest `MARKS_RETENTION_HOURS`: ten years.
const MAX_HOURS: f64 = 87_600.0;

fn hours(
    variable: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    duration(
        variable,
        value,
        default,
        (3600.0, MAX_HOURS),
        "expected a number of hours above 0 and at most 87600, such as 720 or 0.5",
    )
}

/// A duration written as a number of units (`unit` seconds each, fractions allowed),
/// above 0 and at most `max` units; `default` when unset.
fn duration(
    variable: &str,
    value: Option<String>,
    default: Duration,
    (unit, max): (f64, f64),
    expected: &str,
) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|units| *units > 0.0 && *units <= max)
        .and_then(|units| Duration::try_from_secs_f64(units * unit).ok())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| ConfigError::new(variable, Some(&value), expected))
}

fn whole<T>(variable: &str, value: &str, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    value
        .trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n >= min && *n <= max)
        .ok_or_else(|| {
            ConfigError::new(
                variable,
                Some(value),
                format!("expected a whole number from {min} to {max}"),
            )
        })
}

fn whole_or<T>(
    variable: &str,
    value: Option<String>,
    min: T,
    max: T,
    default: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    match value {
        Some(value) => whole(variable, &value, min, max),
        None => Ok(default),
    }
}

fn boolean(variable: &str, value: Option<String>, default: bool) -> Result<bool, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(
            variable,
            Some(&value),
            "expected true or false (also accepted: 1/0, yes/no, on/off)",
        )),
    }
}

fn parse_prefix(value: &str) -> Result<String, ConfigError> {
    let prefix = value.trim().trim_end_matches('/');
    let valid = (prefix.is_empty() || prefix.starts_with('/'))
        && !prefix.contains("//")
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-._~".contains(c));
    if valid {
        Ok(prefix.to_owned())
    } else {
        Err(ConfigError::new(
            "API_PREFIX",
            Some(value),
            "expected a path such as /api/v1 (letters, digits, '/', '-', '.', '_', '~'; empty or / for none)",
        ))
    }
}

fn parse_host(value: &str) -> Result<IpAddr, ConfigError> {
    let host = value.trim();
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            ConfigError::new(
                "HOST",
                Some(value),
                "expected an IP address to listen on, such as 0.0.0.0, 127.0.0.1 or ::",
            )
        })
}

fn parse_log_format(value: &str) -> Result<LogFormat, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::new(
            "LOG_FORMAT",
            Some(value),
            "expected text or json",
        )),
    }
}

fn parse_log_filter(
    rust_log: Option<&str>,
    log_level: Option<&str>,
) -> Result<String, ConfigError> {
    if let Some(directives) = rust_log {
        return tracing_subscriber::EnvFilter::builder()
            .parse(directives)
            .map(|_| directives.trim().to_owned())
            .map_err(|e| {
                ConfigError::new(
                    "RUST_LOG",
                    Some(directives),
                    format!(
                        "{e}; expected tracing filter directives such as info,tally_server=debug"
                    ),
                )
            });
    }
    match log_level.map(|l| l.trim().to_ascii_lowercase()) {
        None => Ok("info".to_owned()),
        Some(level)
            if ["trace", "debug", "info", "warn", "error", "off"].contains(&level.as_str()) =>
        {
            Ok(level)
        }
        Some(level) if level == "warning" => Ok("warn".to_owned()),
        Some(_) => Err(ConfigError::new(
            "LOG_LEVEL",
            log_level,
            "expected one of trace, debug, info, warn, error, off",
        )),
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

    #[test]
    fn no_variables_give_the_documented_defaults() {
        let config = parse(&[]).unwrap();
        assert!(config.redis_nodes.is_empty());
        assert_eq!(config.virtual_nodes, 160);
        assert_eq!(config.cache_ttl, Duration::from_secs(5));
        assert_eq!(config.cache_capacity, 100_000);
        assert_eq!(config.batch_interval, Duration::from_secs(5));
        assert_eq!(config.batch_size_limit, 1000);
        assert_eq!(config.batch_max_bytes, 1024 * 1024);
        assert_eq!(config.api_prefix, "/api/v1");
        assert!(config.enable_metrics);
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
