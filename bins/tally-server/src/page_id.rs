//! [`PageId`]: the one place a page id from a URL is checked.

use std::fmt;

/// A page id accepted by the counter API: 1 to [`PageId::MAX_LEN`] bytes of UTF-8 with no
/// `/` and no control characters (Unicode category Cc: U+0000–U+001F and U+007F–U+009F).
///
/// Everything else that is valid UTF-8 is a page id, spaces and any script included; the id
/// is the counter's key as given, without any case folding or normalisation.
///
/// ```
/// use tally_server::PageId;
///
/// assert_eq!(PageId::parse("page1")?.as_str(), "page1");
/// assert!(PageId::parse("a/b").is_err());
/// // From a URL path segment: percent-escapes are decoded first.
/// assert_eq!(PageId::from_path_segment("caf%C3%A9")?.as_str(), "café");
/// assert!(PageId::from_path_segment("a%2Fb").is_err());
/// # Ok::<(), tally_server::PageIdError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PageId(String);

/// Why a string is not a [`PageId`]. The messages are shown to API clients.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PageIdError {
    /// Nothing after the route's last `/`.
    #[error("page id must not be empty")]
    Empty,
    /// Longer than [`PageId::MAX_LEN`] bytes.
    #[error("page id is {len} bytes long; the limit is 256 bytes")]
    TooLong {
        /// Its length in bytes (after percent-decoding).
        len: usize,
    },
    /// Contains `/` (sent percent-encoded as `%2F`).
    #[error("page id must not contain '/'")]
    Slash,
    /// Contains a control character.
    #[error("page id must not contain control characters (found U+{code:04X} at byte {at})")]
    Control {
        /// The character's code point.
        code: u32,
        /// Its byte offset in the decoded id.
        at: usize,
    },
    /// The decoded bytes are not UTF-8.
    #[error("page id must be valid UTF-8 once percent-decoded")]
    NotUtf8,
    /// A `%` not followed by two hex digits.
    #[error(
        "page id has a malformed percent-escape at byte {at}; expected %XX with two hex digits"
    )]
    BadEscape {
        /// Byte offset of the `%` in the raw segment.
        at: usize,
    },
}

impl PageId {
    /// Longest page id, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Checks an already-decoded id.
    ///
    /// # Errors
    ///
    /// [`PageIdError`] saying which rule the id breaks.
    pub fn parse(id: impl Into<String>) -> Result<Self, PageIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(PageIdError::Empty);
        }
        if id.len() > Self::MAX_LEN {
            return Err(PageIdError::TooLong { len: id.len() });
        }
        if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(PageIdError::Control {
                code: u32::from(c),
                at,
            });
        }
        if id.contains('/') {
            return Err(PageIdError::Slash);
        }
        Ok(Self(id))
    }

    /// Decodes a raw (still percent-encoded) URL path segment and checks the result.
    ///
    /// Decoding is strict: a malformed escape or bytes that are not UTF-8 are errors, not
    /// replaced, so two different requests never count under one id. `+` stays a plus.
    ///
    /// # Errors
    ///
    /// [`PageIdError`] saying which rule the id breaks.
    pub fn from_path_segment(raw: &str) -> Result<Self, PageIdError> {
        let bytes = raw.as_bytes();
        let mut decoded = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
                match (hex(i + 1), hex(i + 2)) {
                    (Some(high), Some(low)) => decoded.push((high * 16 + low) as u8),
                    _ => return Err(PageIdError::BadEscape { at: i }),
                }
                i += 3;
            } else {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
        let id = String::from_utf8(decoded).map_err(|_| PageIdError::NotUtf8)?;
        Self::parse(id)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for PageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageId({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_accepted_as_given() {
        for id in [
            "page1",
            "Page 1",
            "café",
            "日本語",
            "a+b",
            "x".repeat(256).as_str(),
            "%",
        ] {
            assert_eq!(PageId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn empty_is_rejected() {
        assert_eq!(PageId::parse(""), Err(PageIdError::Empty));
        assert_eq!(PageId::from_path_segment(""), Err(PageIdError::Empty));
    }

    #[test]
    fn the_limit_counts_bytes_not_characters() {
        assert!(PageId::parse("é".repeat(128)).is_ok());
        assert_eq!(
            PageId::parse("é".repeat(129)),
            Err(PageIdError::TooLong { len: 258 })
        );
        assert_eq!(
            PageId::parse("x".repeat(257)),
            Err(PageIdError::TooLong { len: 257 })
        );
    }

    #[test]
    fn slashes_and_control_characters_are_rejected() {
        assert_eq!(PageId::parse("a/b"), Err(PageIdError::Slash));
        assert_eq!(
            PageId::parse("a\nb"),
            Err(PageIdError::Control { code: 0x0A, at: 1 })
        );
        assert_eq!(
            PageId::parse("\0"),
            Err(PageIdError::Control { code: 0, at: 0 })
        );
        assert_eq!(
            PageId::parse("a\u{7f}"),
            Err(PageIdError::Control { code: 0x7F, at: 1 })
        );
        assert_eq!(
            PageId::parse("a\u{85}"),
            Err(PageIdError::Control { code: 0x85, at: 1 })
        );
    }

    #[test]
    fn path_segments_are_decoded_strictly() {
        assert_eq!(
            PageId::from_path_segment("page%201").unwrap().as_str(),
            "page 1"
        );
        assert_eq!(PageId::from_path_segment("a+b").unwrap().as_str(), "a+b");
        assert_eq!(PageId::from_path_segment("%25").unwrap().as_str(), "%");
        assert_eq!(PageId::from_path_segment("a%2fb"), Err(PageIdError::Slash));
        assert_eq!(
            PageId::from_path_segment("a%0A"),
            Err(PageIdError::Control { code: 10, at: 1 })
        );
        assert_eq!(PageId::from_path_segment("%FF"), Err(PageIdError::NotUtf8));
        assert_eq!(
            PageId::from_path_segment("a%2"),
            Err(PageIdError::BadEscape { at: 1 })
        );
        assert_eq!(
            PageId::from_path_segment("a%zz"),
            Err(PageIdError::BadEscape { at: 1 })
        );
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert_eq!(
            PageIdError::Control { code: 7, at: 2 }.to_string(),
            "page id must not contain control characters (found U+0007 at byte 2)"
        );
        assert_eq!(
            PageIdError::TooLong { len: 300 }.to_string(),
            "page id is 300 bytes long; the limit is 256 bytes"
        );
    }
}
