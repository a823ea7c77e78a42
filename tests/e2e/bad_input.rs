//! Scenario 8, through the real binary: requests no ordinary client sends, and oversized
//! ones. The few that actix answers before the app sees the request (a request line or
//! header block it cannot parse, or one too large) get actix's own bare answer, as the
//! README's "Answers actix gives before the app sees the request" lists; the odd but valid
//! ones the app takes. The server is alive afterwards, and Redis holds exactly the accepted
//! visits, each under its decoded page id. What the app answers to each input it refuses (a
//! JSON 4xx naming the problem) is checked in process, in `tally-server`'s
//! `tests/api/bad_input.rs`.

use std::time::{Duration, Instant};

use tally_testkit::{HttpResponse, send_once};

use crate::support::{Rig, all_visit_keys, one_at_a_time};

/// What an answer must be.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Answered by actix itself, before routing: status only, no JSON body.
    Actix(u16),
    /// Accepted; the visit is counted under this (decoded) page id.
    Counted(&'static str),
    /// Accepted (not a visit).
    Ok,
}

/// One row of the table: what is sent, what must come back.
struct Case {
    what: &'static str,
    request: Vec<u8>,
    expect: Expect,
}

fn request(method: &str, target: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} ").into_bytes();
    bytes.extend_from_slice(target);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n");
    bytes
}

fn visit(id: &[u8]) -> Vec<u8> {
    let mut target = b"/api/v1/counter/visit/".to_vec();
    target.extend_from_slice(id);
    request("POST", &target)
}

fn with_header(name: &str, value: &str) -> Vec<u8> {
    format!(
        "POST /api/v1/counter/visit/headers HTTP/1.1\r\nHost: localhost\r\n{name}: {value}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn cases() -> Vec<Case> {
    use Expect::{Actix, Counted, Ok};
    let many_headers: String = (0..200).map(|i| format!("X-Filler-{i}: {i}\r\n")).collect();
    let cases = vec![
        // Bytes no ordinary client puts in a request target.
        ("raw control byte 0x01", visit(b"bad\x01id"), Actix(400)),
        ("raw DEL byte", visit(b"bad\x7fid"), Actix(400)),
        ("invalid UTF-8, raw bytes", visit(b"bad\xff\xfeid"), Actix(400)),
        // Odd but valid ids, counted under their decoded form.
        ("escaped UTF-8 id", visit(b"caf%C3%A9"), Counted("café")),
        ("escaped space and plus", visit(b"a%20b+c"), Counted("a b+c")),
        ("longest valid id", visit("y".repeat(256).as_bytes()), Counted("y256")),
        // Huge paths under /api/ (counted by the request statistics under one key).
        ("2 KiB path under /api/", request("GET", format!("/api/{}", "a".repeat(2048)).as_bytes()), Ok),
        ("60 KiB path under /api/", request("GET", format!("/api/{}", "b".repeat(60 * 1024)).as_bytes()), Ok),
        // The `http` crate's URI limit (65,534 bytes), before actix routes anything.
        ("64 KiB path under /api/", request("GET", format!("/api/{}", "c".repeat(64 * 1024)).as_bytes()), Actix(400)),
        // Headers.
        ("64 KiB header", with_header("X-Big", &"h".repeat(64 * 1024)), Counted("headers")),
        // A request head over actix's 128 KiB buffer.
        ("oversized header (200 KiB)", with_header("X-Big", &"h".repeat(200 * 1024)), Actix(431)),
        ("200 headers", format!("POST /api/v1/counter/visit/headers HTTP/1.1\r\nHost: localhost\r\n{many_headers}Content-Length: 0\r\n\r\n").into_bytes(), Actix(431)),
        ("header without a colon", b"GET /status HTTP/1.1\r\nHost: localhost\r\nnocolon\r\n\r\n".to_vec(), Actix(400)),
        ("bad content-length", b"POST /api/v1/counter/visit/headers HTTP/1.1\r\nHost: localhost\r\nContent-Length: lots\r\n\r\n".to_vec(), Actix(400)),
        ("garbage request line", b"HELLO\r\n\r\n".to_vec(), Actix(400)),
    ];
    cases
        .into_iter()
        .map(|(what, request, expect)| Case {
            what,
            request,
            expect,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_and_counts_nothing_it_refused() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let rig = Rig::start(3);
    let server = rig.server(&[]);
    let mut answers: Vec<(&'static str, HttpResponse)> = Vec::new();
    let mut failures = Vec::new();
    let mut actix_answered = Vec::new();
    for case in cases() {
        let response = tokio::time::timeout(
            Duration::from_secs(10),
            send_once(&server.addr(), &case.request),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: no answer within 10 s", case.what))
        .unwrap_or_else(|e| panic!("{}: {e}", case.what));
        if let Err(why) = check(&case, &response) {
            failures.push(format!("{}: {why}", case.what));
        }
        if let Expect::Actix(status) = case.expect {
            actix_answered.push(format!("{} → {status}", case.what));
        }
        answers.push((case.what, response));
    }
    // Over-long paths under /api/ that reached the app share one statistics key.
    let overflow_expected = cases()
        .iter()
        .filter(|case| !matches!(case.expect, Expect::Actix(_)))
        .filter(|case| {
            let target = case
                .request
                .split(|b| *b == b' ')
                .nth(1)
                .unwrap_or_default();
            target.starts_with(b"/api/") && target.len() > 2048
        })
        .count();
    let ranking = server.get_json("/stats/?limit=10000").await;
    let overflow_counted = ranking
        .as_array()
        .expect("a ranking")
        .iter()
        .find(|entry| entry["url"] == "(paths over 2048 bytes)")
        .and_then(|entry| entry["count"].as_u64())
        .unwrap_or(0);

    // Alive afterwards: healthy, and a plain visit is counted.
    let health = server.request("GET", "/health").await;
    let after = server.request("POST", "/api/v1/counter/visit/after").await;
    server.wait_flushed(Duration::from_secs(10)).await;
    let stored = all_visit_keys(&rig.nodes());
    let output = server.stop();

    println!(
        "[scenario 8: bad input] {} cases, {} answered by actix before the app: {}",
        answers.len(),
        actix_answered.len(),
        actix_answered.join("; ")
    );
    println!(
        "[scenario 8: bad input] {} visit keys stored | wall {:.1?}",
        stored.len(),
        started.elapsed()
    );
    let tail: Vec<&str> = output.lines().rev().take(40).collect();
    assert!(
        failures.is_empty(),
        "{}\n\nserver output (last lines, newest first):\n{}",
        failures.join("\n"),
        tail.join("\n")
    );
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(overflow_counted, overflow_expected as u64, "{ranking}");
    assert_eq!(after.status, 200, "{}", after.text());

    // Exactly the accepted visits are counted: one each, under the decoded id.
    let mut counted: Vec<(String, u64)> = stored
        .into_iter()
        .map(|(page, _, count)| {
            let shown = if page.len() == 256 && page.bytes().all(|b| b == b'y') {
                "y256".to_owned()
            } else {
                page
            };
            (shown, count)
        })
        .collect();
    counted.sort();
    let mut expected: Vec<(String, u64)> = cases()
        .iter()
        .filter_map(|case| match case.expect {
            Expect::Counted(id) => Some((id.to_owned(), 1)),
            _ => None,
        })
        .chain([("after".to_owned(), 1)])
        .collect();
    expected.sort();
    assert_eq!(counted, expected, "only accepted visits are counted");
}

/// Whether `response` is what `case` expects.
fn check(case: &Case, response: &HttpResponse) -> Result<(), String> {
    let status = response.status;
    let want = match case.expect {
        Expect::Actix(status) => status,
        Expect::Counted(_) | Expect::Ok => 200,
    };
    if status != want {
        return Err(format!(
            "status {status}, expected {want}: {}",
            short(&response.text())
        ));
    }
    let is_json = response
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"));
    match case.expect {
        Expect::Actix(_) => {
            if is_json || response.header("x-process-time").is_some() {
                return Err(format!(
                    "the app answered (good, but update the table and the README guarantees): {}",
                    short(&response.text())
                ));
            }
            // The README's table promises an empty body for each of these.
            if !response.body.is_empty() {
                return Err(format!(
                    "a body where the README promises none: {}",
                    short(&response.text())
                ));
            }
        }
        Expect::Counted(_) | Expect::Ok => {
            if !is_json || response.header("x-process-time").is_none() {
                return Err(format!(
                    "not the app's JSON answer: {:?} {}",
                    response.headers,
                    short(&response.text())
                ));
            }
        }
    }
    Ok(())
}

/// At most 300 characters of `text`, for messages.
fn short(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}
