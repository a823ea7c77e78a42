//! `UrlPath`: which requests are counted, and under what key.

/// Paths longer than this many bytes are counted together under [`OVERFLOW_KEY`].
pub const MAX_PATH_BYTES: usize = 2048;

/// The one key every over-long path counts under. It cannot collide with a real path:
/// real keys start with `/api/`.
pub const OVERFLOW_KEY: &str = "(paths over 2048 bytes)";

/// The prefix of counted paths.
pub const PREFIX: &str = "/api/";

/// The statistics key of a counted request: its path exactly as received (percent-encoding
/// and trailing slash kept), without the query string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UrlPath(Box<str>);

impl UrlPath {
    /// The key for a request target (`/api/a/?x=1` → `/api/a/`), or `None` when the path
    /// is not under `/api/`.
    pub fn parse(target: &str) -> Option<Self> {
        let path = target
            .split_once(['?', '#'])
            .map_or(target, |(path, _)| path);
        if !path.starts_with(PREFIX) {
            return None;
        }
        if path.len() > MAX_PATH_BYTES {
            return Some(Self(OVERFLOW_KEY.into()));
        }
        Some(Self(path.into()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_string_is_dropped() {
        assert_eq!(
            UrlPath::parse("/api/a/?x=1&y=2").unwrap().as_str(),
            "/api/a/"
        );
    }

    #[test]
    fn trailing_slash_and_encoding_are_kept_as_sent() {
        assert_eq!(UrlPath::parse("/api/a").unwrap().as_str(), "/api/a");
        assert_eq!(UrlPath::parse("/api/a/").unwrap().as_str(), "/api/a/");
        assert_eq!(
            UrlPath::parse("/api/caf%C3%A9/").unwrap().as_str(),
            "/api/caf%C3%A9/"
        );
    }

    #[test]
    fn paths_outside_api_are_not_counted() {
        for path in ["/stats/", "/api", "/apix/", "/", "/test/5/", "api/a/"] {
            assert_eq!(UrlPath::parse(path), None, "{path}");
        }
    }

    #[test]
    fn over_long_paths_share_the_overflow_key() {
        let at_limit = format!("/api/{}", "a".repeat(MAX_PATH_BYTES - 5));
        let over = format!("{at_limit}b");
        assert_eq!(UrlPath::parse(&at_limit).unwrap().as_str(), at_limit);
        let overflow = UrlPath::parse(&over).unwrap();
        assert_eq!(overflow.as_str(), OVERFLOW_KEY);
        assert!(!OVERFLOW_KEY.starts_with(PREFIX));
    }
}
