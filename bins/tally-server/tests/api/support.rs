//! Test harness: the real app on port 0, in process ([`spawn_app`], [`TestApp`]), typed
//! request helpers, and Redis inspection. Tests of the binary as a process are the
//! end-to-end suite's (`tests/e2e`).

use std::sync::Once;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tally_server::{Config, LogFormat, ShutdownReport, run, telemetry};
use tally_testkit::{HttpConnection, RedisCluster, RedisNode};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Installs a log subscriber once per test binary, only when `TEST_LOG` is set.
fn init_test_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".to_owned());
            telemetry::init_tracing(LogFormat::Text, &filter, std::io::stdout, false);
        }
    });
}

/// A config for in-process tests: loopback, a free port, the embedded store (in a
/// temporary `DATA_DIR` of its own, given by [`spawn_app_with`]).
pub fn test_config() -> Config {
    Config::from_vars([("HOST", "127.0.0.1"), ("PORT", "0")]).expect("test config")
}

/// As [`test_config`] on the memory store (`STORE=memory`): for tests of the HTTP layer,
/// where what keeps the counts does not matter, so they open no file.
pub fn memory_config() -> Config {
    Config::from_vars([("HOST", "127.0.0.1"), ("PORT", "0"), ("STORE", "memory")])
        .expect("test config")
}

/// A config for in-process tests against `cluster`, parsed like the binary parses its
/// environment, plus `extra` variables. Timeouts are short so failure tests are quick.
pub fn redis_config(cluster: &RedisCluster, extra: &[(&str, &str)]) -> Config {
    config_with_nodes(&cluster.urls(), extra)
}

/// As [`redis_config`] with an explicit `REDIS_NODES` value.
pub fn config_with_nodes(nodes: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(&str, &str)> = vec![
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("REDIS_NODES", nodes),
        ("REDIS_TIMEOUT", "0.5"),
        ("HEALTH_CHECK_INTERVAL_SECONDS", "0.2"),
        ("BATCH_INTERVAL_SECONDS", "60"),
    ];
    vars.extend_from_slice(extra);
    Config::from_vars(vars).expect("test config")
}

/// The app under test, serving on its own port until [`TestApp::shutdown`] or drop.
pub struct TestApp {
    /// `http://127.0.0.1:{port}`.
    pub address: String,
    /// `API_PREFIX`.
    pub prefix: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<ShutdownReport>>>,
    /// The temporary `DATA_DIR`, when the config left it at its default.
    _data_dir: Option<tempfile::TempDir>,
}

/// The app on the embedded store.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_config()).await
}

/// The app with `config` (use port 0). A `DATA_DIR` left at its default becomes a
/// temporary directory of this app's, so no test writes into the working directory.
pub async fn spawn_app_with(mut config: Config) -> TestApp {
    init_test_logs();
    let data_dir = (config.data_dir == Config::default().data_dir).then(|| {
        let dir = tempfile::Builder::new()
            .prefix("tally-data-")
            .tempdir()
            .expect("a temporary DATA_DIR");
        config.data_dir = dir.path().to_owned();
        dir
    });
    let prefix = config.api_prefix.clone();
    let app = run(config).await.expect("the app starts");
    let port = app.port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        prefix,
        client: reqwest::Client::new(),
        stop: Some(stop),
        task: Some(task),
        _data_dir: data_dir,
    }
}

/// A response with its JSON (or text) body, checked for `X-Process-Time` on arrival.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl ApiResponse {
    /// The body as JSON (panics, showing it, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    /// A header as a string.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error answer: status, `code`, the JSON shape, and returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text);
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        let body = self.json();
        let object = body.as_object().expect("an object");
        assert_eq!(object.len(), 2, "{body}");
        assert_eq!(body["status"], "error", "{body}");
        let error = body["error"].as_object().expect("an error object");
        assert_eq!(error.len(), 2, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"]
            .as_str()
            .expect("a message")
            .to_owned();
        assert!(!message.is_empty());
        message
    }
}

impl TestApp {
    /// Any request; checks `X-Process-Time` is present and a non-negative decimal.
    pub async fn request(&self, method: Method, path: &str) -> ApiResponse {
        send(&self.client, method, &format!("{}{path}", self.address)).await
    }

    /// `POST {prefix}/counter/visit/{page}` (`page` is put in the URL as given).
    pub async fn visit(&self, page: &str) -> ApiResponse {
        self.request(
            Method::POST,
            &format!("{}/counter/visit/{page}", self.prefix),
        )
        .await
    }

    /// `GET {prefix}/counter/visits/{page}`.
    pub async fn visits(&self, page: &str) -> ApiResponse {
        self.request(
            Method::GET,
            &format!("{}/counter/visits/{page}", self.prefix),
        )
        .await
    }

    /// `GET {prefix}/counter/visits/{page}`, asserting 200, returning `(visits, served_via, node)`.
    pub async fn count(&self, page: &str) -> (u64, String, String) {
        let response = self.visits(page).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        let body = response.json();
        assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
        (
            body["visits"].as_u64().expect("visits is a number"),
            body["served_via"].as_str().expect("served_via").to_owned(),
            body["node"].as_str().expect("node").to_owned(),
        )
    }

    /// `DELETE {prefix}/counter/visits/{page}`.
    pub async fn reset(&self, page: &str) -> ApiResponse {
        self.request(
            Method::DELETE,
            &format!("{}/counter/visits/{page}", self.prefix),
        )
        .await
    }

    /// `GET {prefix}/counter/metrics`.
    pub async fn counter_metrics(&self) -> ApiResponse {
        self.request(Method::GET, &format!("{}/counter/metrics", self.prefix))
            .await
    }

    /// `GET /status`.
    pub async fn status(&self) -> ApiResponse {
        self.request(Method::GET, "/status").await
    }

    /// `GET /health`.
    pub async fn health(&self) -> ApiResponse {
        self.request(Method::GET, "/health").await
    }

    /// Stops the app as SIGTERM would (drain, then flush) and returns its report.
    pub async fn shutdown(mut self) -> ShutdownReport {
        // Idle keep-alive connections would hold the drain until they time out.
        drop(std::mem::take(&mut self.client));
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("shutdown within 30 s")
            .expect("the app task does not panic")
            .expect("the app stops cleanly")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Only signals; tests that check the flush call `shutdown`.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends one request and checks `X-Process-Time`.
pub async fn send(client: &reqwest::Client, method: Method, url: &str) -> ApiResponse {
    let response = client
        .request(method, url)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body read");
    let process_time = headers
        .get("x-process-time")
        .unwrap_or_else(|| panic!("no X-Process-Time on {url}: {headers:?}"))
        .to_str()
        .unwrap()
        .to_owned();
    let seconds: f64 = process_time.parse().expect("X-Process-Time is a decimal");
    assert!(
        (0.0..60.0).contains(&seconds),
        "X-Process-Time {process_time}"
    );
    ApiResponse {
        status,
        headers,
        text,
    }
}

/// A bare HTTP/1.1 client on one keep-alive connection, for load (the test kit's
/// [`HttpConnection`]), asserting what every answer of this server must have.
pub struct KeepAliveClient {
    conn: HttpConnection,
}

impl KeepAliveClient {
    /// Connects to `address` (`host:port`).
    pub async fn connect(address: &str) -> Self {
        Self {
            conn: HttpConnection::connect(address).await.expect("connect"),
        }
    }

    /// Sends `method path` with an empty body on the same connection; returns the status
    /// and body, after checking that `X-Process-Time` is there and the server keeps the
    /// connection open.
    pub async fn send(&mut self, method: &str, path: &str) -> (u16, String) {
        let response = self
            .conn
            .send(method, path)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            response
                .header("x-process-time")
                .is_some_and(|v| v.parse::<f64>().is_ok()),
            "no X-Process-Time on {method} {path}"
        );
        assert!(
            self.conn.reusable(),
            "the server closed the keep-alive connection"
        );
        let body = String::from_utf8(response.body).expect("UTF-8 body");
        (response.status, body)
    }
}

/// Asserts an ISO 8601 UTC timestamp within a minute of now.
pub fn assert_recent_utc(timestamp: &str) {
    assert!(timestamp.ends_with('Z'), "not UTC: {timestamp}");
    let parsed = chrono::DateTime::parse_from_rfc3339(timestamp)
        .unwrap_or_else(|e| panic!("not ISO 8601 ({e}): {timestamp}"));
    let age = chrono::Utc::now().signed_duration_since(parsed);
    assert!(age.num_seconds().abs() < 60, "{timestamp} is not recent");
}

/// The stored count of `page` on `node` (`None` when the key does not exist).
pub fn stored(node: &RedisNode, page: &str) -> Option<u64> {
    node.get_u64(&format!("tally:v:{page}"))
        .expect("redis answers")
}

/// Sum of every page total on every node (day counts, `tally:v:{page}\u{1f}{day}`, left
/// out).
pub fn stored_total(cluster: &RedisCluster) -> u64 {
    cluster
        .nodes()
        .iter()
        .flat_map(|node| {
            node.keys("tally:v:*")
                .expect("redis answers")
                .into_iter()
                .filter(|key| !key.contains('\u{1f}'))
                .map(|key| node.get_u64(&key).expect("redis answers").unwrap_or(0))
        })
        .sum()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `visits` visits, round robin over the pages `{page_prefix}0..{pages}` under
/// `{api_prefix}/counter/visit/`, from `clients` concurrent keep-alive connections to
/// `address` (`host:port`), asserting that every answer is 200. The connections are closed
/// when this returns (an idle one would only slow a server's drain).
pub async fn post_visits_concurrently(
    address: &str,
    api_prefix: &str,
    page_prefix: &str,
    (visits, clients, pages): (usize, usize, usize),
) {
    let tasks = (0..clients).map(|client| {
        let paths: Vec<String> = (client..visits)
            .step_by(clients)
            .map(|i| format!("{api_prefix}/counter/visit/{page_prefix}{}", i % pages))
            .collect();
        let address = address.to_owned();
        tokio::spawn(async move {
            let mut http = KeepAliveClient::connect(&address).await;
            for path in paths {
                let (status, body) = http.send("POST", &path).await;
                assert_eq!(status, 200, "{body}");
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.expect("client task");
    }
}
