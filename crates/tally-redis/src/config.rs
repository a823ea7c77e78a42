//! Configuration: node URLs, credentials, timeouts, and the redaction that keeps passwords
//! out of every message.

use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo as _;

use crate::error::{Error, Result};
use crate::layout::Layout;

/// Default [`RedisConfig::timeout`]: 5 s for each connection attempt and each command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`RedisConfig::retry_attempts`]: connection attempts per pooled connection.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 3;
/// Default [`RedisConfig::pool_size`]: connections per node.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default [`RedisConfig::health_check_interval`]: a ping to every node every 5 s.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default [`RedisConfig::vnodes`]: ring points per node, the ring's own default.
pub const DEFAULT_VNODES: u32 = tally_ring::DEFAULT_VNODES;
/// Default [`RedisConfig::marks_retention`]: 720 hours (30 days).
///
/// A high-water mark only matters while a batch of its instance may still be retried, and a
/// batch waits (in the instance's memory, retried until acknowledged) at most as long as its
/// node is unreachable from that instance. 30 days is far beyond any outage a running
/// instance is expected to ride out, while the marks of instances that are gone stay few:
/// one field per server start per node and layout, about 60 bytes each, so even a server
/// restarted every minute leaves a few MiB per node at most. See the crate docs' *High-water
/// marks*.
pub const DEFAULT_MARKS_RETENTION: Duration = Duration::from_secs(720 * 3600);

/// A password: printed as `***` by `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Returns `urls` with every password replaced by `***`, for messages and logs.
///
/// Takes one node URL or a whole `REDIS_NODES` list, split as [`RedisConfig::from_urls`]
/// splits it (a comma followed by something other than `scheme://` stays inside its URL,
/// so a password containing commas is hidden whole), and keeps the separators as written.
///
/// Works on anything, including strings that are not valid URLs: in each URL, everything
/// between `scheme://` and the last `@` is treated as credentials, and only the part before
/// its first `:` (the user name) is kept; with no `:` the whole user-info is hidden, since
/// a lone user-info is often a password written in the wrong place. Query parameters whose
/// name contains `pass` are hidden too.
///
/// ```
/// use tally_redis::redact;
///
/// assert_eq!(redact("redis://app:hunter2@redis1:6379/0"), "redis://app:***@redis1:6379/0");
/// assert_eq!(redact("redis://:hunter2@redis1:6379"), "redis://:***@redis1:6379");
/// assert_eq!(redact("redis://redis1:6379"), "redis://redis1:6379");
/// assert_eq!(
///     redact("redis://:Tr0ub4dor,horse@redis1:6379, redis://redis2:6379"),
///     "redis://:***@redis1:6379, redis://redis2:6379"
/// );
/// ```
pub fn redact(urls: &str) -> String {
    let mut out = String::with_capacity(urls.len());
    let mut written = 0;
    for entry in url_spans(urls) {
        // Between entries there are only commas and blanks.
        out.push_str(&urls[written..entry.start]);
        redact_one(&urls[entry.clone()], &mut out);
        written = entry.end;
    }
    out.push_str(&urls[written..]);
    out
}

/// Appends one URL to `out`, credentials hidden (see [`redact`]).
fn redact_one(url: &str, out: &mut String) {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let (credentials, host_and_tail) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    out.push_str(scheme);
    if let Some(credentials) = credentials {
        match credentials.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***@");
            }
            None => out.push_str("***@"),
        }
    }
    match host_and_tail.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, _)) if name.to_ascii_lowercase().contains("pass") => {
                        format!("{name}=***")
                    }
                    _ => param.to_owned(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(host_and_tail),
    }
}

/// Where each URL of a `REDIS_NODES` list is: byte ranges, blanks trimmed, empty entries
/// left out.
///
/// A run of commas (and blanks) separates two URLs only when what follows it starts with a
/// scheme (`redis://`, or any `letters://`, so a mistyped scheme is still its own entry) or
/// ends the list. Any other comma belongs to the URL it is in, so a comma in a password
/// does not split its URL and redaction sees the whole user-info. A password in which a
/// comma is followed by `scheme://` must have that comma percent-encoded (`%2C`).
fn url_spans(list: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut push = |start: usize, end: usize| {
        let entry = &list[start..end];
        let trimmed = entry.trim_start();
        let start = start + (entry.len() - trimmed.len());
        let end = start + trimmed.trim_end().len();
        if end > start {
            spans.push(start..end);
        }
    };
    let mut start = 0;
    let mut from = 0;
    while let Some(offset) = list[from..].find(',') {
        let comma = from + offset;
        let run = &list[comma..];
        let after = run.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        let next = comma + (run.len() - after.len());
        if after.is_empty() || starts_with_scheme(after) {
            push(start, comma);
            start = next;
        }
        from = next;
    }
    push(start, list.len());
    spans
}

/// Whether `text` starts with an RFC 3986 scheme followed by `://`.
fn starts_with_scheme(text: &str) -> bool {
    text.find("://").is_some_and(|end| {
        let scheme = &text[..end];
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// One node from `REDIS_NODES`: `redis://[user[:password]@]host[:port][/db]`.
///
/// `Display` and `Debug` show the URL with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeUrl {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<Secret>,
    db: Option<i64>,
    name: String,
}

impl NodeUrl {
    /// Parses one node URL. Only `redis://` (plain TCP) is supported.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] naming the URL (password removed) and the problem.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(url),
            reason,
        };
        let scheme_ok = url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("redis://"));
        if !scheme_ok {
            return Err(invalid(
                "expected a redis:// URL such as redis://:password@host:6379/0 (TLS and unix sockets are not supported)".into(),
            ));
        }
        let parsed =
            redis::parse_redis_url(url).ok_or_else(|| invalid("not a valid URL".into()))?;
        let has_db_path = !parsed.path().trim_matches('/').is_empty();
        let info = parsed
            .into_connection_info()
            .map_err(|e| invalid(e.to_string()))?;
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            _ => {
                return Err(invalid(
                    "only plain TCP redis:// nodes are supported".into(),
                ));
            }
        };
        let settings = info.redis_settings();
        // IPv6 literals get brackets so `host:port` stays unambiguous.
        let name = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            host,
            port,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(Secret::new),
            db: has_db_path.then(|| settings.db()),
            name,
        })
    }

    /// The credential-free name `host:port`: the node's identity on the ring and in
    /// metrics, logs and health reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port (6379 when the URL names none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connection settings for the client, with `REDIS_PASSWORD` and `REDIS_DB` applied.
    pub(crate) fn connection_info(
        &self,
        password: Option<&Secret>,
        db: Option<i64>,
    ) -> redis::RedisResult<redis::ConnectionInfo> {
        let info = format!("redis://{}", self.name).into_connection_info()?;
        let mut settings =
            redis::RedisConnectionInfo::default().set_db(db.or(self.db).unwrap_or(0));
        if let Some(username) = &self.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = password.or(self.password.as_ref()) {
            settings = settings.set_password(password.expose());
        }
        Ok(info.set_redis_settings(settings))
    }
}

impl fmt::Display for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => write!(f, "{user}:***@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (Some(user), None) => write!(f, "{user}@")?,
            (None, None) => {}
        }
        f.write_str(&self.name)?;
        if let Some(db) = self.db {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeUrl({self})")
    }
}

/// Everything a [`crate::RedisStore`] needs, typed.
///
/// This crate reads no environment: the server fills this from its own settings. Each
/// field's docs name the server variable that sets it, and [`Error::Config`] names a bad
/// value by that variable. Build it with [`RedisConfig::from_urls`] (defaults for the rest,
/// then adjust fields) or [`RedisConfig::new`]. `Debug` never shows a password.
#[derive(Clone)]
pub struct RedisConfig {
    /// The nodes, in order (`REDIS_NODES`). A node's position here is its shard id, and its
    /// `host:port` places it on the ring, so credentials and DB index never move keys.
    pub nodes: Vec<NodeUrl>,
    /// When set, the password for every node instead of the URL's (`REDIS_PASSWORD`).
    pub password: Option<Secret>,
    /// When set, the database index for every node instead of the URL's (`REDIS_DB`).
    pub db: Option<i64>,
    /// Bound on each connection attempt and on each command (`REDIS_TIMEOUT`).
    pub timeout: Duration,
    /// How many times the pool tries to open a connection to a node before a command fails
    /// (`REDIS_RETRY_ATTEMPTS`): refused or reset connections only; an authentication
    /// failure or a timeout ends the attempts at once. Commands and batches are never
    /// retried here: the counter retries a failed batch, unchanged, with its own backoff.
    /// At least 1.
    pub retry_attempts: u32,
    /// Connections per node for batches, reads and resets (`REDIS_POOL_SIZE`).
    pub pool_size: usize,
    /// How often every node is pinged (`HEALTH_CHECK_INTERVAL_SECONDS`). Nodes marked down
    /// are pinged more often (every `min(interval, 1 s)`), so they come back quickly.
    pub health_check_interval: Duration,
    /// Ring points per node (`VIRTUAL_NODES`).
    pub vnodes: u32,
    /// A high-water mark that its instance has not written for this long is removed from
    /// the node, by the health task, a bounded slice at a time (`MARKS_RETENTION_HOURS`).
    /// Must outlast the longest time a batch can wait to be retried, i.e. the longest
    /// outage of a node that a running instance rides out: a batch retried after its mark
    /// was removed would be applied twice. Default [`DEFAULT_MARKS_RETENTION`].
    pub marks_retention: Duration,
    /// Which keys the store writes: visit counters or the request-stats sorted set.
    pub layout: Layout,
    /// Sub-keys of a key (`page1\u{1f}2026-12-01`, see [`tally_counter::routing_key`])
    /// that a batch creates in [`Layout::Counters`] expire after this long (`EXPIRE`, set
    /// once at creation; a page's day counts, `DAILY_RETENTION_DAYS`). `None`: they do
    /// not expire.
    pub subkey_ttl: Option<Duration>,
}

impl RedisConfig {
    /// A config for these nodes with every other setting at its default.
    pub fn new(nodes: Vec<NodeUrl>) -> Self {
        Self {
            nodes,
            password: None,
            db: None,
            timeout: DEFAULT_TIMEOUT,
            retry_attempts: DEFAULT_RETRY_ATTEMPTS,
            pool_size: DEFAULT_POOL_SIZE,
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            vnodes: DEFAULT_VNODES,
            marks_retention: DEFAULT_MARKS_RETENTION,
            layout: Layout::Counters,
            subkey_ttl: None,
        }
    }

    /// Parses a `REDIS_NODES` value (comma-separated URLs; blanks around commas ignored)
    /// into a config with defaults for everything else.
    ///
    /// A comma separates two URLs only when the next URL starts with its scheme
    /// (`redis://`); any other comma stays in its URL, so `redis://:a,b@redis1` is one node
    /// whose password is `a,b`. Passwords may also hold `@`, `:` and blanks as they are;
    /// `/`, `?`, `#` and `%` (and a comma followed by `scheme://`) must be
    /// percent-encoded (`%2F`, `%3F`, `%23`, `%25`, `%2C`), as in any URL.
    ///
    /// ```
    /// let config = tally_redis::RedisConfig::from_urls("redis://:pw@redis1:6379, redis://redis2:6379/0")?;
    /// assert_eq!(config.nodes[0].name(), "redis1:6379");
    /// assert!(!format!("{config:?}").contains("pw"));
    /// # Ok::<(), tally_redis::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] for the first bad URL; [`Error::Config`] for an empty list.
    pub fn from_urls(urls: &str) -> Result<Self> {
        let nodes = url_spans(urls)
            .into_iter()
            .map(|span| NodeUrl::parse(&urls[span]))
            .collect::<Result<Vec<_>>>()?;
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
        if self.nodes.is_empty() {
            return bad("REDIS_NODES", "lists no node");
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
        if self.vnodes == 0 {
            return bad("VIRTUAL_NODES", "must be at least 1");
        }
        if self.db.is_some_and(|db| db < 0) {
            return bad("REDIS_DB", "must not be negative");
        }
        if self.marks_retention.is_zero() {
            return bad("MARKS_RETENTION_HOURS", "must be greater than zero");
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("nodes", &self.nodes)
            .field("password", &self.password)
            .field("db", &self.db)
            .field("timeout", &self.timeout)
            .field("retry_attempts", &self.retry_attempts)
            .field("pool_size", &self.pool_size)
            .field("health_check_interval", &self.health_check_interval)
            .field("vnodes", &self.vnodes)
            .field("marks_retention", &self.marks_retention)
            .field("layout", &self.layout)
            .field("subkey_ttl", &self.subkey_ttl)
            .finish()
    }
}

impl fmt::Display for RedisConfig {
    /// The node list as it would appear in `REDIS_NODES`, passwords removed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_url_list(f, &self.nodes)
    }
}

/// `urls` comma-separated, each as its `Display` shows it (password replaced by `***`):
/// a `REDIS_NODES` or `REDIS_CLUSTER` value fit for a log line.
pub(crate) fn write_url_list(f: &mut fmt::Formatter<'_>, urls: &[NodeUrl]) -> fmt::Result {
    for (i, url) in urls.iter().enumerate() {
        if i > 0 {
            f.write_str(",")?;
        }
        write!(f, "{url}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_and_keeps_the_rest() {
        assert_eq!(redact("redis://u:p@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("redis://:p@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://lonely@h"), "redis://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("h:1"), "h:1");
        // Unencoded separators inside the password must not let part of it through.
        assert_eq!(redact("redis://:a/b@c?d@h:1"), "redis://:***@h:1");
        assert_eq!(
            redact("redis://h?password=x&db=1"),
            "redis://h?password=***&db=1"
        );
    }

    use tally_testkit::{AWKWARD_PASSWORDS, assert_password_hidden};

    #[test]
    fn redact_hides_awkward_passwords_whole_in_a_list() {
        for password in AWKWARD_PASSWORDS {
            for list in [
                format!("redis://:{password}@r1:6379"),
                format!("redis://:{password}@r1:6379,redis://r2:6379"),
                format!("redis://r0:6379, redis://app:{password}@r1:6379/2 ,redis://r2:6379"),
                format!("redis://:{password}@r1:6379,redis://:{password}@r2:notaport"),
            ] {
                let shown = redact(&list);
                assert_password_hidden(password, &shown);
                assert!(shown.contains("***@r1:6379"), "{shown}");
            }
        }
        assert_eq!(
            redact("redis://:a,b@r1:6379 , redis://r2:6379,"),
            "redis://:***@r1:6379 , redis://r2:6379,"
        );
    }

    #[test]
    fn a_comma_splits_the_list_only_before_a_scheme() {
        let config =
            RedisConfig::from_urls("redis://:Tr0ub4dor,horse@redis1:6379,redis://redis2:6379")
                .unwrap();
        let names: Vec<&str> = config.nodes.iter().map(NodeUrl::name).collect();
        assert_eq!(names, ["redis1:6379", "redis2:6379"]);
        assert_eq!(
            config.nodes[0].password.as_ref().map(Secret::expose),
            Some("Tr0ub4dor,horse")
        );
        // `,`, `@`, `:` and blanks as they are; `/` and `%` percent-encoded.
        let node = NodeUrl::parse("redis://app:a,b@c:d e%2Ff%25g@redis1:6379/1").unwrap();
        assert_eq!(
            node.password.as_ref().map(Secret::expose),
            Some("a,b@c:d e/f%g")
        );
        assert_eq!(node.name(), "redis1:6379");
        // A mistyped scheme is still an entry of its own, named in the error.
        let err = RedisConfig::from_urls("redis://r1:6379,http://:pw,x@r2:6379").unwrap_err();
        assert!(err.to_string().contains("'http://:***@r2:6379'"), "{err}");
    }

    #[test]
    fn bad_lists_with_awkward_passwords_are_named_without_them() {
        for password in AWKWARD_PASSWORDS {
            for list in [
                format!("redis://:{password}@redis1:notaport"),
                format!("http://:{password}@redis1:6379"),
                format!("redis://:{password}@redis1:6379/notadb"),
                format!("redis://:{password}@redis1:6379,redis://redis2:notaport"),
                format!("redis://:{password}@0.0.0.0:6379"),
                format!("redis://:{password}@"),
            ] {
                let err = RedisConfig::from_urls(&list).unwrap_err();
                assert_password_hidden(password, &format!("{err} {err:?}"));
            }
        }
    }

    #[test]
    fn node_url_parses_host_port_credentials_and_db() {
        let node = NodeUrl::parse(" redis://app:s3cret@redis1:6380/2 ").unwrap();
        assert_eq!(node.name(), "redis1:6380");
        assert_eq!(node.username.as_deref(), Some("app"));
        assert_eq!(node.password.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(node.db, Some(2));
        assert_eq!(node.to_string(), "redis://app:***@redis1:6380/2");
        assert_eq!(
            format!("{node:?}"),
            "NodeUrl(redis://app:***@redis1:6380/2)"
        );
    }

    #[test]
    fn node_url_defaults_port_and_leaves_db_unset() {
        let node = NodeUrl::parse("redis://redis1").unwrap();
        assert_eq!(node.name(), "redis1:6379");
        assert_eq!(node.db, None);
        assert_eq!(node.password, None);
    }

    #[test]
    fn bad_urls_are_named_without_their_password() {
        for url in [
            "http://:topsecret@redis1:6379",
            "redis://:topsecret@redis1:notaport",
            "redis://:topsecret@redis1:6379/notadb",
            "rediss://:topsecret@redis1:6379",
            "unix://:topsecret@/tmp/redis.sock",
            "::garbage:topsecret@@",
            "redis://:topsecret@",
        ] {
            let err = NodeUrl::parse(url).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, Error::InvalidUrl { .. }), "{shown}");
            assert!(
                !shown.contains("topsecret"),
                "password leaked for {url}: {shown}"
            );
        }
    }

    #[test]
    fn connection_info_applies_overrides() {
        let node = NodeUrl::parse("redis://u:urlpw@h:1/3").unwrap();
        let info = node.connection_info(None, None).unwrap();
        assert_eq!(info.redis_settings().password(), Some("urlpw"));
        assert_eq!(info.redis_settings().db(), 3);
        let env = Secret::new("envpw");
        let info = node.connection_info(Some(&env), Some(5)).unwrap();
        assert_eq!(info.redis_settings().password(), Some("envpw"));
        assert_eq!(info.redis_settings().username(), Some("u"));
        assert_eq!(info.redis_settings().db(), 5);
    }

    #[test]
    fn from_urls_keeps_order_and_rejects_empty_lists() {
        let config = RedisConfig::from_urls("redis://b:1,,redis://a:2").unwrap();
        let names: Vec<&str> = config.nodes.iter().map(NodeUrl::name).collect();
        assert_eq!(names, ["b:1", "a:2"]);
        assert!(matches!(
            RedisConfig::from_urls(" , "),
            Err(Error::Config {
                field: "REDIS_NODES",
                ..
            })
        ));
    }

    #[test]
    fn config_output_hides_url_and_override_passwords() {
        let mut config =
            RedisConfig::from_urls("redis://:urlpw@r1:6379,redis://app:userpw@r2:6379/1").unwrap();
        config.password = Some(Secret::new("overridepw"));

        let shown = format!("{config} {config:?}");

        for password in ["urlpw", "userpw", "overridepw"] {
            assert!(!shown.contains(password), "{password} shown: {shown}");
        }
        assert!(
            shown.contains("redis://:***@r1:6379,redis://app:***@r2:6379/1"),
            "{shown}"
        );
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let valid = RedisConfig::from_urls("redis://r1:6379").unwrap();
        let spoilt = |spoil: fn(&mut RedisConfig)| {
            let mut config = valid.clone();
            spoil(&mut config);
            config
        };
        let cases = [
            ("REDIS_NODES", spoilt(|c| c.nodes.clear())),
            ("REDIS_TIMEOUT", spoilt(|c| c.timeout = Duration::ZERO)),
            ("REDIS_RETRY_ATTEMPTS", spoilt(|c| c.retry_attempts = 0)),
            ("REDIS_POOL_SIZE", spoilt(|c| c.pool_size = 0)),
            (
                "HEALTH_CHECK_INTERVAL_SECONDS",
                spoilt(|c| c.health_check_interval = Duration::ZERO),
            ),
            ("VIRTUAL_NODES", spoilt(|c| c.vnodes = 0)),
            ("REDIS_DB", spoilt(|c| c.db = Some(-1))),
            (
                "MARKS_RETENTION_HOURS",
                spoilt(|c| c.marks_retention = Duration::ZERO),
            ),
        ];
        for (setting, config) in cases {
            let err = config.validate().unwrap_err();

            assert!(
                matches!(err, Error::Config { field, .. } if field == setting),
                "{setting}: {err}"
            );
            assert!(err.to_string().contains(setting), "{err}");
        }
        assert!(valid.validate().is_ok());
    }

    #[test]
    fn the_default_retention_is_thirty_days() {
        let config = RedisConfig::from_urls("redis://r1:6379").unwrap();
        assert_eq!(config.marks_retention, Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn secrets_print_as_stars() {
        let secret = Secret::new("x");
        assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    }
}
