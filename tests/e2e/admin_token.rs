//! `ADMIN_TOKEN`: with it set, a reset (`DELETE /api/v1/counter/visits/{page}`) and a
//! `POST /test/{n}/` run need `Authorization: Bearer <token>`; without it, or with a wrong or
//! malformed one, they answer 401 `unauthorized` with `WWW-Authenticate: Bearer` and do
//! nothing (the count stays, no request is sent). Every other route needs no token. The
//! token appears in no answer and no log line, and a token the server cannot use exits 2
//! without showing it. Without `ADMIN_TOKEN`, the routes are open as before, and a server
//! listening beyond loopback says so in a warning at start. On the embedded store: no
//! Redis needed.

use tally_testkit::{HttpResponse, send_once};

use crate::support::{Server, json, one_at_a_time};

const TOKEN: &str = "e2e-Adm1n-T0ken-5b7d0c3a9f";
/// Route label of the `/api/` requests a test run sends.
const API_ROUTE: &str = "route=\"/api/{tail:.*}\"";

/// `method target` on a fresh connection, with `authorization` (raw bytes) as the
/// `Authorization` header when given.
async fn request(
    server: &Server,
    method: &str,
    target: &str,
    authorization: Option<&[u8]>,
) -> HttpResponse {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n")
        .into_bytes();
    if let Some(value) = authorization {
        raw.extend_from_slice(b"Authorization: ");
        raw.extend_from_slice(value);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    send_once(&server.addr(), &raw)
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// The response as one string, status, headers and body, for searching.
fn shown(response: &HttpResponse) -> String {
    format!(
        "{} {:?} {}",
        response.status,
        response.headers,
        response.text()
    )
}

/// Asserts a 401 in the API's error format with a `Bearer` challenge.
fn assert_unauthorized(response: &HttpResponse, what: &str) {
    assert_eq!(response.status, 401, "{what}: {}", shown(response));
    assert!(
        response
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{what}: {}",
        shown(response)
    );
    let body = json(response);
    assert_eq!(body["status"], "error", "{what}");
    assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("bearer token"),
        "{what}: the message says a bearer token is needed or wrong: {message}"
    );
}

/// The line of `output` warning that the admin routes are open, if any.
fn open_routes_warning(output: &str) -> Option<&str> {
    output
        .lines()
        .find(|line| line.contains("ADMIN_TOKEN is unset"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_token_resets_and_test_runs_are_open_and_loopback_gives_no_warning() {
    let _serial = one_at_a_time().await;
    let server = Server::start_without_redis(&[]);
    for _ in 0..3 {
        let visit = server.request("POST", "/api/v1/counter/visit/open").await;
        assert_eq!(visit.status, 200, "{}", visit.text());
    }

    let reset = server
        .request("DELETE", "/api/v1/counter/visits/open")
        .await;
    let run = server.request("POST", "/test/3/").await;

    assert_eq!(reset.status, 200, "{}", reset.text());
    assert_eq!(server.count("open").await.0, 0);
    assert_eq!(run.status, 200, "{}", run.text());
    assert_eq!(json(&run)["succeeded"], 3);
    let output = server.stop();
    assert_eq!(
        open_routes_warning(&output),
        None,
        "on 127.0.0.1:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_admin_token_resets_and_test_runs_need_the_bearer_token_and_it_never_shows() {
    let _serial = one_at_a_time().await;
    let server = Server::start_without_redis(&[
        ("ADMIN_TOKEN", TOKEN),
        ("LOG_LEVEL", "debug"),
        ("LOG_FORMAT", "json"),
    ]);
    let mut seen = Vec::new();
    let reset = "/api/v1/counter/visits/guarded";
    let bearer = format!("Bearer {TOKEN}");

    // Visits and reads need no token.
    for _ in 0..3 {
        let visit = request(&server, "POST", "/api/v1/counter/visit/guarded", None).await;
        assert_eq!(visit.status, 200, "{}", shown(&visit));
        seen.push(shown(&visit));
    }
    let read = request(&server, "GET", reset, None).await;
    assert_eq!(read.status, 200, "{}", shown(&read));
    assert_eq!(json(&read)["visits"], 3);
    seen.push(shown(&read));

    // No token, a wrong one, a malformed header: 401, and the count stays.
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let longer = format!("Bearer {TOKEN}0");
    let basic = format!("Basic {TOKEN}");
    let bare = TOKEN.to_owned();
    let non_ascii = [b"Bearer ".as_slice(), "T\u{f6}ken".as_bytes()].concat();
    let refused: Vec<(&str, Option<&[u8]>)> = vec![
        ("no header", None),
        (
            "a wrong token",
            Some(b"Bearer not-the-admin-token-at-all".as_slice()),
        ),
        ("the token but its last character", Some(prefix.as_bytes())),
        ("the token and one character more", Some(longer.as_bytes())),
        ("another scheme", Some(basic.as_bytes())),
        ("the token without a scheme", Some(bare.as_bytes())),
        ("Bearer without a token", Some(b"Bearer".as_slice())),
        ("Bearer and a blank", Some(b"Bearer ".as_slice())),
        ("an empty header", Some(b"".as_slice())),
        ("bytes that are not ASCII", Some(&non_ascii)),
    ];
    for (what, authorization) in &refused {
        let response = request(&server, "DELETE", reset, *authorization).await;
        assert_unauthorized(&response, &format!("DELETE with {what}"));
        seen.push(shown(&response));
    }
    assert_eq!(
        server.count("guarded").await.0,
        3,
        "no refused reset reset anything"
    );

    // The same for test runs, on both paths: 401, and no request is sent.
    let api_before = server
        .metric("tally_http_requests_total", &[API_ROUTE])
        .await;
    for target in ["/test/5/", "/test/5"] {
        for (what, authorization) in &refused {
            let response = request(&server, "POST", target, *authorization).await;
            assert_unauthorized(&response, &format!("POST {target} with {what}"));
            seen.push(shown(&response));
        }
    }
    let api_after = server
        .metric("tally_http_requests_total", &[API_ROUTE])
        .await;
    assert_eq!(api_after, api_before, "a refused run sent no request");

    // With the token: the reset and the run happen.
    let done = request(&server, "DELETE", reset, Some(bearer.as_bytes())).await;
    assert_eq!(done.status, 200, "{}", shown(&done));
    assert_eq!(server.count("guarded").await.0, 0);
    seen.push(shown(&done));
    let lower = format!("bearer {TOKEN}");
    for (target, authorization) in [("/test/5/", &bearer), ("/test/5", &lower)] {
        let run = request(&server, "POST", target, Some(authorization.as_bytes())).await;
        assert_eq!(run.status, 200, "{}", shown(&run));
        assert_eq!(json(&run)["succeeded"], 5, "{}", shown(&run));
        seen.push(shown(&run));
    }
    let api_runs = server
        .metric("tally_http_requests_total", &[API_ROUTE])
        .await;
    assert_eq!(api_runs - api_after, 10.0, "two runs of 5 requests");

    let output = server.stop();
    assert!(
        output.contains("require the bearer token ADMIN_TOKEN sets"),
        "the start-up log says the routes are protected:\n{output}"
    );
    assert_eq!(open_routes_warning(&output), None, "{output}");
    assert!(
        output.lines().count() > 20,
        "debug logs to search:\n{output}"
    );
    let seen = seen.join("\n");
    // Neither the token nor the near-miss presented above shows anywhere.
    for secret in [TOKEN, &TOKEN[..TOKEN.len() - 1]] {
        assert!(!seen.contains(secret), "the token in a response:\n{seen}");
        assert!(
            !output.contains(secret),
            "the token in the output:\n{output}"
        );
    }
    println!(
        "[admin token] token found in 0 of {} responses and 0 of {} log lines",
        seen.lines().count(),
        output.lines().count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_every_interface_without_admin_token_warns_that_the_routes_are_open() {
    let _serial = one_at_a_time().await;
    let open = Server::start_without_redis(&[("HOST", "0.0.0.0")]);
    // Answering means it serves, and so listens for SIGTERM: the log is complete at exit.
    open.get_json("/health").await;
    let output = open.stop();

    let warning =
        open_routes_warning(&output).unwrap_or_else(|| panic!("no warning on 0.0.0.0:\n{output}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("resets and /test/ runs are open to anyone who can reach it"),
        "{warning}"
    );

    let guarded = Server::start_without_redis(&[("HOST", "0.0.0.0"), ("ADMIN_TOKEN", TOKEN)]);
    guarded.get_json("/health").await;
    let output = guarded.stop();
    assert_eq!(
        open_routes_warning(&output),
        None,
        "with ADMIN_TOKEN:\n{output}"
    );
    assert!(!output.contains(TOKEN), "{output}");
}

#[tokio::test]
async fn an_admin_token_the_server_cannot_use_exits_2_naming_it_but_not_its_value() {
    let _serial = one_at_a_time().await;
    let cases = [
        ("", "is blank"),
        ("   ", "is blank"),
        ("Qx7Kzpwm", "is too short"),
        ("Qx7Kzpw Mvbq9Jtr", "holds a blank"),
        ("Qx7Kzpw\u{f6}Mvbq9Jtr", "holds a blank"),
        (" Qx7Kzpw-Mvbq9Jtr", "starts or ends with a blank"),
    ];
    for (token, problem) in cases {
        let (status, stdout, stderr) = Server::run_to_exit(&[("ADMIN_TOKEN", token)]);

        assert_eq!(status.code(), Some(2), "{token:?}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{token:?}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{token:?}: {stderr}");
        assert!(
            lines[0].starts_with(&format!(
                "tally-server: invalid configuration: ADMIN_TOKEN: {problem}"
            )),
            "{token:?}: {}",
            lines[0]
        );
        if !token.trim().is_empty() {
            assert!(!stderr.contains(token.trim()), "the value shows: {stderr}");
        }
        for part in token.split(|c: char| !c.is_ascii_alphanumeric()) {
            assert!(
                part.len() < 5 || !stderr.contains(part),
                "{part:?} shows: {stderr}"
            );
        }
    }
}
