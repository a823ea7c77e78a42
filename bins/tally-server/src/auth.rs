//! Authorization of the admin routes, the two that change or generate data on someone
//! else's behalf: a reset (`DELETE {API_PREFIX}/counter/visits/{page_id}`) and a
//! `POST /test/{n}/` run. When `ADMIN_TOKEN` is set, each needs `Authorization: Bearer
//! <token>`; [`Admin`] is the extractor their handlers take first, so a request without the
//! token is answered 401 before the handler (or any other extractor's error) is reached.
//! [`AdminToken`] holds the token and compares a presented one with it in constant time.
//!
//! What a request presented is never logged nor echoed: the 401 says only whether a bearer
//! token was missing, malformed or wrong.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use actix_web::{FromRequest, HttpRequest, web};
use tally_redis::Secret;

use crate::error::ApiError;
use crate::state::AppState;

/// `ADMIN_TOKEN`, as the server compares presented tokens with it. `Debug` prints `***`.
#[derive(Clone, Debug)]
pub(crate) struct AdminToken(Secret);

impl AdminToken {
    /// The token `ADMIN_TOKEN` sets (validated by the config: never empty).
    pub(crate) fn new(token: Secret) -> Self {
        Self(token)
    }

    /// Whether `presented` is the token, in a time that does not depend on the token's
    /// contents (see [`constant_time_eq`]).
    fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.expose().as_bytes(), presented)
    }
}

/// Whether `presented` equals `expected`, without branching on the contents of either.
///
/// The loop runs once per byte of `presented` (the client's, whose length it knows anyway)
/// whatever `expected` is: each byte is compared with a byte of `expected` taken in turn,
/// starting over when `expected` runs out, and every difference is OR-ed into one
/// accumulator with the difference of the lengths. So the time depends on the two lengths
/// only, never on where the first differing byte is, and a prefix or an extension of the
/// token does not match. `black_box` keeps the compiler from turning the accumulation into
/// an early exit. An empty `expected` matches nothing (the config refuses it anyway).
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let mut difference = expected.len() ^ presented.len();
    for (i, byte) in presented.iter().enumerate() {
        difference =
            std::hint::black_box(difference | usize::from(byte ^ expected[i % expected.len()]));
    }
    difference == 0
}

/// Proof that a request may use an admin route: `ADMIN_TOKEN` is unset, or the request
/// carries `Authorization: Bearer <ADMIN_TOKEN>`. Taken as a handler's first parameter;
/// otherwise the request is answered 401 [`ApiError::Unauthorized`] with
/// `WWW-Authenticate: Bearer realm="tally"`.
#[derive(Debug)]
pub(crate) struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            // The app always has its state; a route mounted without it is a bug, and an
            // admin route must not open up because of one.
            return ready(Err(ApiError::Internal(anyhow::anyhow!(
                "an admin route was reached without the app state"
            ))));
        };
        ready(authorize(state.admin_token.as_ref(), req.headers()))
    }
}

/// Why a request was refused an admin route ([`ApiError::Unauthorized`]); its message is
/// the 401's, and says nothing of what the request sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not one bearer token: another scheme, no token,
    /// bytes that are not visible ASCII, or the header twice.
    Malformed,
    /// A bearer token that is not `ADMIN_TOKEN`.
    Wrong,
}

impl Refusal {
    /// The 401's message.
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => {
                "this route requires a bearer token: send Authorization: Bearer <ADMIN_TOKEN>"
            }
            Self::Malformed => {
                "the Authorization header is not a bearer token: send Authorization: Bearer <ADMIN_TOKEN>"
            }
            Self::Wrong => "the bearer token is wrong",
        }
    }
}

/// Lets the request through when `expected` is `None` (no `ADMIN_TOKEN`) or when its one
/// `Authorization` header is `Bearer` (any case) and the token `expected`.
fn authorize(expected: Option<&AdminToken>, headers: &HeaderMap) -> Result<Admin, ApiError> {
    let Some(expected) = expected else {
        return Ok(Admin);
    };
    let mut values = headers.get_all(AUTHORIZATION);
    let (Some(value), None) = (values.next(), values.next()) else {
        let refusal = if headers.contains_key(AUTHORIZATION) {
            Refusal::Malformed
        } else {
            Refusal::Missing
        };
        return Err(ApiError::Unauthorized(refusal));
    };
    // `to_str` refuses anything but visible ASCII and blanks, which no valid token holds.
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '))
        .filter(|token| !token.is_empty());
    match token {
        None => Err(ApiError::Unauthorized(Refusal::Malformed)),
        Some(token) if expected.matches(token.as_bytes()) => Ok(Admin),
        Some(_) => Err(ApiError::Unauthorized(Refusal::Wrong)),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError as _;
    use actix_web::body::to_bytes;
    use actix_web::http::header::{HeaderName, HeaderValue, WWW_AUTHENTICATE};

    use super::*;

    const TOKEN: &str = "0123456789abcdef-Tok3n";

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        map
    }

    fn refusal(pairs: &[(&str, &[u8])]) -> Option<Refusal> {
        let token = AdminToken::new(Secret::new(TOKEN));
        match authorize(Some(&token), &headers(pairs)) {
            Ok(Admin) => None,
            Err(ApiError::Unauthorized(refusal)) => Some(refusal),
            Err(other) => panic!("not a 401: {other:?}"),
        }
    }

    #[test]
    fn equal_tokens_match_and_any_difference_does_not() {
        let token = TOKEN.as_bytes();
        assert!(constant_time_eq(token, token));

        let mut first = token.to_vec();
        first[0] ^= 1;
        let mut last = token.to_vec();
        last[token.len() - 1] ^= 0x80;
        let doubled = [token, token].concat();
        for other in [
            &first[..],
            &last[..],
            &token[..token.len() - 1],
            &doubled[..],
            &doubled[..token.len() + 1],
            b"",
        ] {
            assert!(!constant_time_eq(token, other), "{other:?}");
        }
        assert!(
            !constant_time_eq(b"", b""),
            "an empty token matches nothing"
        );
    }

    #[test]
    fn without_a_token_every_request_is_let_through() {
        assert!(authorize(None, &headers(&[])).is_ok());
        assert!(authorize(None, &headers(&[("authorization", b"Basic eDp5")])).is_ok());
    }

    #[test]
    fn only_the_bearer_token_itself_is_let_through() {
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(refusal(&[("authorization", bearer.as_bytes())]), None);
        let lower = format!("bearer  {TOKEN}");
        assert_eq!(refusal(&[("authorization", lower.as_bytes())]), None);

        assert_eq!(refusal(&[]), Some(Refusal::Missing));
        let wrong = format!("Bearer {TOKEN}x");
        let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
        for value in [wrong.as_bytes(), prefix.as_bytes(), b"Bearer x y"] {
            assert_eq!(refusal(&[("authorization", value)]), Some(Refusal::Wrong));
        }
        let basic = format!("Basic {TOKEN}");
        let bare = TOKEN.to_owned();
        let non_ascii = [b"Bearer ".as_slice(), "t\u{f6}ken".as_bytes()].concat();
        for value in [
            basic.as_bytes(),
            bare.as_bytes(),
            b"Bearer",
            b"Bearer ",
            b"",
            &non_ascii,
        ] {
            assert_eq!(
                refusal(&[("authorization", value)]),
                Some(Refusal::Malformed),
                "{value:?}"
            );
        }
        assert_eq!(
            refusal(&[
                ("authorization", bearer.as_bytes()),
                ("authorization", bearer.as_bytes())
            ]),
            Some(Refusal::Malformed),
            "two Authorization headers"
        );
    }

    #[actix_web::test]
    async fn a_refusal_is_a_json_401_with_www_authenticate_that_echoes_nothing() {
        let presented = "Bearer not-the-Tok3n-at-all";
        let error = authorize(
            Some(&AdminToken::new(Secret::new(TOKEN))),
            &headers(&[("authorization", presented.as_bytes())]),
        )
        .unwrap_err();

        let response = error.error_response();

        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers().get(WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"tally\", error=\"invalid_token\""
        );
        let bytes = to_bytes(response.into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "error", "error": {"code": "unauthorized", "message": "the bearer token is wrong"}})
        );
        let missing = ApiError::Unauthorized(Refusal::Missing).error_response();
        assert_eq!(
            missing.headers().get(WWW_AUTHENTICATE).unwrap(),
            "Bearer realm=\"tally\""
        );
        let shown = format!(
            "{error:?} {error} {:?}",
            AdminToken::new(Secret::new(TOKEN))
        );
        assert!(!shown.contains("Tok3n"), "{shown}");
    }
}
