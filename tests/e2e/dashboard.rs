//! The dashboard at `/` in a real headless browser: Debian's `chromium`, driven through
//! `chromedriver` (WebDriver, fantoccini) on loopback, against the real server over three
//! `redis-server` nodes. It waits for what the page shows by reading its DOM over and over
//! (no fixed sleeps). The issue asks for each change to show "within 5 s"; the bound here
//! is 30 s, since a loaded CI machine runs the browser, three nodes and the server at once
//! (the page itself polls every 2 s). The run saves a screenshot to `docs/dashboard.png`,
//! which the README shows.
//!
//! Without chromium or chromedriver the test fails, saying how to install them (`cargo
//! xtask test` installs both): it never passes by skipping.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use tally_testkit::free_port;

use crate::support::{Rig, json, one_at_a_time};

/// How long the page may take to show a change (the issue's "within 5 s", widened for
/// loaded machines).
const SHOWN_WITHIN: Duration = Duration::from_secs(30);

/// The programs the test needs, and the Debian package of each.
const PROGRAMS: [(&str, &str); 2] = [
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
];

/// What the page shows, read in one script run: the status, the connection line, the
/// request rate, the top URLs and each node's row.
const READ_PAGE: &str = r##"
const text = (id) => document.getElementById(id).textContent;
return {
  status: text("status"),
  connection: text("connection"),
  rate: parseFloat(text("rate")),
  top: Array.from(document.querySelectorAll("#top td.url"), (td) => td.textContent),
  nodes: Array.from(document.querySelectorAll("#nodes tr"),
    (tr) => ({ name: tr.dataset.node, up: tr.dataset.up === "true" })),
};
"##;

/// Headless chromium behind a chromedriver of its own, on a free loopback port.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session (`--no-sandbox`: the test may
    /// run as root, where chromium's sandbox refuses to start). Panics, saying how to
    /// install them, when either program is missing.
    async fn start() -> Self {
        for (program, package) in PROGRAMS {
            let found = Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            assert!(
                found,
                "the dashboard test needs {program} (Debian package {package}), which is not \
                 installed: run `cargo xtask test`, which installs chromium and \
                 chromium-driver, or `apt-get install -y chromium chromium-driver`"
            );
        }
        let port = free_port().expect("a free port for chromedriver");
        let driver = Command::new("chromedriver")
            .args([
                format!("--port={port}"),
                "--allowed-ips=127.0.0.1".to_owned(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1000",
            ]}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    panic!("no chromium session through chromedriver at {url} in 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        Self { driver, client }
    }

    /// What the page shows now.
    async fn read(&self) -> Value {
        self.client
            .execute(READ_PAGE, Vec::new())
            .await
            .expect("the page can be read")
    }

    /// Reads the page until `shown` holds, for at most [`SHOWN_WITHIN`]; panics naming
    /// `what` and the last reading otherwise. Returns the reading and how long it took.
    async fn wait_until(&self, what: &str, shown: impl Fn(&Value) -> bool) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let page = self.read().await;
            if shown(&page) {
                return (page, started.elapsed());
            }
            assert!(
                started.elapsed() < SHOWN_WITHIN,
                "the page did not show {what} within {SHOWN_WITHIN:?}; it shows {page:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (chromium exits) and chromedriver.
    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After a panic: chromedriver at least goes (its chromium follows once orphaned).
        let _ = self.driver.kill();
    }
}

fn node_up(page: &Value, name: &str) -> Option<bool> {
    page["nodes"]
        .as_array()?
        .iter()
        .find(|node| node["name"] == name)
        .and_then(|node| node["up"].as_bool())
}

fn connected(page: &Value) -> bool {
    page["connection"]
        .as_str()
        .is_some_and(|c| c.starts_with("connected"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_traffic_node_failures_and_server_restarts_in_a_browser() {
    let _serial = one_at_a_time().await;
    // The browser first: without one, the test fails at once, saying so.
    let browser = Browser::start().await;
    let rig = Rig::start(3);
    let server = rig.server(&[]);
    let port = server
        .addr()
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .expect("host:port");
    browser
        .client
        .goto(&format!("{}/", server.base_url()))
        .await
        .expect("the page opens");
    browser
        .wait_until("a connected, healthy service", |page| {
            connected(page) && page["status"] == "healthy"
        })
        .await;

    // Traffic: 100 visits (to one page, so its path leads the request statistics) and a
    // test run of 50 requests under /api/.
    for _ in 0..100 {
        let response = server.request("POST", "/api/v1/counter/visit/front").await;
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let run = server.request("POST", "/test/50/").await;
    assert_eq!(run.status, 200, "{}", run.text());
    let busiest = json(&server.request("GET", "/stats/?limit=1").await)[0]["url"]
        .as_str()
        .expect("a ranked url")
        .to_owned();
    let (_, took) = browser
        .wait_until(
            "a non-zero rate and the busiest URL in the top list",
            |page| {
                page["rate"].as_f64().is_some_and(|rate| rate > 0.0)
                    && page["top"]
                        .as_array()
                        .is_some_and(|top| top.iter().any(|url| url == busiest.as_str()))
            },
        )
        .await;
    println!("rate and top URL {busiest} shown after {took:?}");
    save_screenshot(&browser).await;

    // A node stops answering (SIGSTOP), then resumes.
    let paused = rig.cluster.node(1);
    let name = format!("redis://127.0.0.1:{}", paused.port());
    paused.pause().expect("SIGSTOP");
    let (_, took) = browser
        .wait_until("the paused node down and the status degraded", |page| {
            page["status"] == "degraded" && node_up(page, &name) == Some(false)
        })
        .await;
    println!("node down shown after {took:?}");
    paused.resume().expect("SIGCONT");
    let (_, took) = browser
        .wait_until("the node up again and the status healthy", |page| {
            page["status"] == "healthy" && node_up(page, &name) == Some(true)
        })
        .await;
    println!("node up shown after {took:?}");

    // The server stops, then starts again on the same port.
    server.stop();
    let (_, took) = browser
        .wait_until("disconnected", |page| {
            page["connection"]
                .as_str()
                .is_some_and(|c| c.starts_with("disconnected"))
        })
        .await;
    println!("disconnected shown after {took:?}");
    let restarted = rig.server(&[("PORT", &port)]);
    let (_, took) = browser
        .wait_until("connected again to a healthy service", |page| {
            connected(page) && page["status"] == "healthy"
        })
        .await;
    println!("reconnected after {took:?}");

    browser.close().await;
    restarted.stop();
}

/// Saves what the browser shows to `docs/dashboard.png` at the workspace's root.
async fn save_screenshot(browser: &Browser) {
    let png = browser.client.screenshot().await.expect("a screenshot");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join("dashboard.png");
    std::fs::create_dir_all(path.parent().expect("docs/ has a parent")).expect("docs/");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
