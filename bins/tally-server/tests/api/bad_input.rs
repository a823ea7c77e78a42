//! Input the app refuses: a JSON 4xx whose code and message name the problem, and nothing
//! counted. (Requests the app never sees, which actix answers itself, and bytes no ordinary
//! client sends are the end-to-end suite's, in `tests/e2e/bad_input.rs`.)

use reqwest::Method;

use crate::support::spawn_app;

#[tokio::test]
async fn invalid_page_ids_are_refused_with_400_naming_the_problem() {
    let app = spawn_app().await;
    let cases = [
        ("x".repeat(257), "257 bytes long"),
        ("%C3%A9".repeat(129), "258 bytes long"),
        ("d".repeat(16 * 1024), "16384 bytes long"),
        ("bad%0Aid".to_owned(), "control characters (found U+000A"),
        ("bad%00id".to_owned(), "control characters (found U+0000"),
        ("bad%07id".to_owned(), "control characters (found U+0007"),
        ("bad%7Fid".to_owned(), "control characters (found U+007F"),
        ("bad%C2%85id".to_owned(), "control characters (found U+0085"),
        ("bad\u{1}id".to_owned(), "control characters (found U+0001"),
        ("a%2Fb".to_owned(), "'/'"),
        ("%FF%FE".to_owned(), "UTF-8"),
        ("caf%C3".to_owned(), "UTF-8"),
        ("50%".to_owned(), "percent-escape"),
        ("a%zzb".to_owned(), "percent-escape"),
        (String::new(), "empty"),
    ];
    for (page, expected) in &cases {
        for response in [
            app.visit(page).await,
            app.visits(page).await,
            app.reset(page).await,
        ] {
            let message = response.assert_error(400, "invalid_page_id");
            assert!(message.contains(expected), "{page:?}: {message}");
        }
    }
    // The longest and the most unusual valid ids are fine.
    assert_eq!(app.visit(&"x".repeat(256)).await.status, 200);
    assert_eq!(app.visit("%C3%A9".repeat(128).as_str()).await.status, 200);
    assert_eq!(app.visit("a%20b+c~%25").await.status, 200);
    assert_eq!(app.count("a%20b+c~%25").await.0, 1);
    let metrics = app.counter_metrics().await.json();
    // Three pages, each waiting with its day count.
    assert_eq!(
        metrics["metrics"]["write_buffer_size"], 6,
        "refused visits are not counted"
    );
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = spawn_app().await;
    // `/` is the dashboard (see `dashboard.rs`, which checks its 404 when it is off).
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/apis/v1/counter"),
        (Method::GET, "/stats/x"),
        (Method::GET, "/test/"),
        (Method::POST, "/test/"),
        (Method::POST, "/test/5/x/"),
    ] {
        let response = app.request(method.clone(), path).await;
        let message = response.assert_error(404, "not_found");
        assert_eq!(message, format!("no route for {method} {path}"));
    }
    // Under /api/ no GET is unknown: what the counter API does not take, the simulated API
    // of the request statistics answers.
    for path in [
        "/api/v1/counter",
        "/api/v1/counter/visit",
        "/api/v1/counter/visit/a/b",
        "/api/v2/counter/visits/x",
    ] {
        let response = app.request(Method::GET, path).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text);
        assert_eq!(response.json(), serde_json::json!({ "path": path }));
    }
}

#[tokio::test]
async fn wrong_methods_answer_json_405_with_allow_and_count_nothing() {
    let app = spawn_app().await;
    let method = |name: &str| Method::from_bytes(name.as_bytes()).expect("a method token");
    let cases = [
        (Method::GET, "/api/v1/counter/visit/page1", "POST"),
        (method("BREW"), "/api/v1/counter/visit/methods", "POST"),
        // Method names are case-sensitive: `post` is not POST.
        (method("post"), "/api/v1/counter/visit/methods", "POST"),
        // A page id cannot hold a path: this is the simulated API, which takes GET only.
        (Method::POST, "/api/v1/counter/visit/a/b", "GET"),
        (Method::PUT, "/api/v1/counter/visits/page1", "GET, DELETE"),
        (Method::POST, "/api/v1/counter/visits/page1", "GET, DELETE"),
        (Method::DELETE, "/status", "GET"),
        (method("BREW"), "/status", "GET"),
        (Method::POST, "/health", "GET"),
        (Method::PATCH, "/api/v1/counter/metrics", "GET"),
        (Method::POST, "/metrics", "GET"),
        (Method::GET, "/test/5/", "POST"),
    ];
    for (method, path, allowed) in cases {
        let response = app.request(method.clone(), path).await;
        let message = response.assert_error(405, "method_not_allowed");
        assert_eq!(
            message,
            format!("method {method} is not allowed here; allowed: {allowed}")
        );
        assert_eq!(response.header("allow"), Some(allowed), "{method} {path}");
    }
    let metrics = app.counter_metrics().await.json();
    assert_eq!(
        metrics["metrics"]["write_buffer_size"], 0,
        "no visit was counted"
    );
}
