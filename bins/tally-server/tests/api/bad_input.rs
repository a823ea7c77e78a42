//! Bad requests get a clear 4xx JSON error, and are not counted.

use reqwest::Method;

use crate::helpers::spawn_app;

#[tokio::test]
async fn invalid_page_ids_are_refused_with_400() {
    let app = spawn_app().await;
    let cases = [
        ("x".repeat(257), "257 bytes long"),
        ("%C3%A9".repeat(129), "258 bytes long"),
        ("bad%0Aid".to_owned(), "control characters"),
        ("bad%07id".to_owned(), "control characters"),
        ("bad\u{1}id".to_owned(), "control characters"),
        ("a%2Fb".to_owned(), "'/'"),
        ("%FF%FE".to_owned(), "UTF-8"),
        ("50%".to_owned(), "percent-escape"),
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
    assert_eq!(
        metrics["metrics"]["write_buffer_size"], 3,
        "refused visits are not counted"
    );
}

#[tokio::test]
async fn unknown_routes_answer_json_404() {
    let app = spawn_app().await;
    for path in ["/", "/nope", "/apis/v1/counter", "/stats/x", "/test/"] {
        let response = app.request(Method::GET, path).await;
        let message = response.assert_error(404, "not_found");
        assert_eq!(message, format!("no route for GET {path}"));
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
async fn wrong_methods_answer_json_405_with_allow() {
    let app = spawn_app().await;
    let cases = [
        (Method::GET, "/api/v1/counter/visit/page1", "POST"),
        (Method::PUT, "/api/v1/counter/visits/page1", "GET, DELETE"),
        (Method::POST, "/api/v1/counter/visits/page1", "GET, DELETE"),
        (Method::DELETE, "/status", "GET"),
        (Method::POST, "/health", "GET"),
        (Method::PATCH, "/api/v1/counter/metrics", "GET"),
        (Method::POST, "/metrics", "GET"),
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
}
