//! [`Server`]: the real server binary as a child process, the one way the suite runs it.
//!
//! It starts with `PORT=0` in an empty temporary directory (so no `.env` is read) and a
//! cleared environment, its port is read from its `listening on` log line, and its output
//! is kept line by line (and echoed as `[server] ...` when `TEST_LOG` is set). Tests ask it
//! over HTTP, signal it and measure it from outside, as an operator would.

use std::io::{BufRead as _, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_testkit::{HttpConnection, HttpResponse, resident_memory, send_signal};

use super::json;

/// The binary: `tally_server::cli::main`, the code of the shipped `tally-server`.
const BINARY: &str = env!("CARGO_BIN_EXE_tally-e2e-server");

/// Environment variable: when set, every line the server prints is echoed to the test's
/// stdout as `[server] ...` (visible with `--nocapture`).
const TEST_LOG: &str = "TEST_LOG";

/// Settings every scenario starts from: loopback, quick failure detection, frequent
/// batches so batches are written while load runs. A scenario's own `extra` wins.
const BASE_ENV: &[(&str, &str)] = &[
    ("REDIS_TIMEOUT", "0.5"),
    ("HEALTH_CHECK_INTERVAL_SECONDS", "0.2"),
    ("BATCH_INTERVAL_SECONDS", "0.2"),
    ("SHUTDOWN_TIMEOUT_SECONDS", "10"),
    ("LOG_LEVEL", "info"),
];

/// Longest wait for the `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The real server (over Redis nodes, or on its embedded store), killed (SIGKILL) when
/// dropped.
pub struct Server {
    child: Child,
    port: u16,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the binary with [`BASE_ENV`], `REDIS_NODES=nodes` and `extra` (which wins),
    /// and waits (up to 30 s) for its `listening on` line. Panics, showing its output, when
    /// it exits or says nothing about listening in time.
    pub fn start(nodes: &str, extra: &[(&str, &str)]) -> Self {
        Self::spawn(Some(nodes), extra)
    }

    /// Starts the binary without `REDIS_NODES`, so on the store `STORE` names (the
    /// embedded store by default, in the server's own temporary `DATA_DIR` unless `extra`
    /// sets one), with [`BASE_ENV`] and `extra`, as [`Server::start`] does.
    pub fn start_without_redis(extra: &[(&str, &str)]) -> Self {
        Self::spawn(None, extra)
    }

    fn spawn(nodes: Option<&str>, extra: &[(&str, &str)]) -> Self {
        let mut env: Vec<(&str, &str)> = BASE_ENV
            .iter()
            .filter(|(name, _)| !extra.iter().any(|(n, _)| n == name))
            .copied()
            .collect();
        if let Some(nodes) = nodes {
            env.push(("REDIS_NODES", nodes));
        }
        env.extend_from_slice(extra);
        let dir = tempfile::Builder::new()
            .prefix("tally-server-")
            .tempdir()
            .expect("a temporary directory for the server");
        let mut child = command(&env, dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BINARY}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for stream in streams.into_iter().flatten() {
            let output = Arc::clone(&output);
            let port_tx = port_tx.clone();
            std::thread::spawn(move || {
                let echo = std::env::var_os(TEST_LOG).is_some();
                for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
                    if echo {
                        println!("[server] {line}");
                    }
                    if let Some(port) = listening_port(&line) {
                        let _ = port_tx.send(port);
                    }
                    lock(&output).push(line);
                }
            });
        }
        drop(port_tx);
        let mut server = Self {
            child,
            port: 0,
            output,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            match port_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => {
                    server.port = port;
                    return server;
                }
                Err(_) if started.elapsed() > START_TIMEOUT => {
                    server
                        .start_failed(&format!("no `listening on` line within {START_TIMEOUT:?}"));
                }
                Err(_) => {
                    if let Ok(Some(status)) = server.child.try_wait() {
                        // Let the reader threads take the last lines.
                        std::thread::sleep(Duration::from_millis(100));
                        server.start_failed(&format!("exited with {status}"));
                    }
                }
            }
        }
    }

    /// Runs the binary with exactly `env` (no [`BASE_ENV`]: a start-up test names every
    /// setting it gives; only `DATA_DIR` defaults to a temporary directory) to completion, which must come within 20 s: `(status, stdout,
    /// stderr)`. Panics when it is still running then (it is killed).
    pub fn run_to_exit(env: &[(&str, &str)]) -> (ExitStatus, String, String) {
        const TIMEOUT: Duration = Duration::from_secs(20);
        let dir = tempfile::tempdir().expect("a temporary directory for the server");
        let mut child = command(env, dir.path())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BINARY}: {e}"));
        let deadline = Instant::now() + TIMEOUT;
        while child
            .try_wait()
            .expect("the server can be polled")
            .is_none()
        {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{env:?}: still running after {TIMEOUT:?}; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child.wait_with_output().expect("the server's output");
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:{port}`, for raw connections.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        resident_memory(self.pid()).expect("the server's VmRSS")
    }

    /// Everything the server printed so far, stdout and stderr, one line each.
    pub fn output(&self) -> String {
        lock(&self.output).join("\n")
    }

    /// The last `lines` lines the server printed, for a failure message.
    pub fn output_tail(&self, lines: usize) -> String {
        let output = lock(&self.output);
        output[output.len().saturating_sub(lines)..].join("\n")
    }

    /// One request on a fresh connection, panicking on a transport error.
    pub async fn request(&self, method: &str, target: &str) -> HttpResponse {
        let mut conn = HttpConnection::connect(&self.addr())
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        tokio::time::timeout(Duration::from_secs(30), conn.send(method, target))
            .await
            .unwrap_or_else(|_| panic!("{method} {target}: no answer within 30 s"))
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
    }

    /// `GET {target}`, asserting 200 and a JSON body.
    pub async fn get_json(&self, target: &str) -> Value {
        let response = self.request("GET", target).await;
        assert_eq!(response.status, 200, "GET {target}: {}", response.text());
        json(&response)
    }

    /// `GET /api/v1/counter/visits/{page}` → `(visits, served_via)`, asserting 200.
    pub async fn count(&self, page: &str) -> (u64, String) {
        let body = self
            .get_json(&format!("/api/v1/counter/visits/{page}"))
            .await;
        (
            body["visits"].as_u64().expect("visits"),
            body["served_via"].as_str().expect("served_via").to_owned(),
        )
    }

    /// Waits until the server has no visit left to write (`write_buffer_size` 0 in
    /// `/api/v1/counter/metrics`), panicking after `timeout`.
    pub async fn wait_flushed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            // The route is under /api/ itself: while the request statistics have no room
            // for its URL (its node was just down) it answers 503; ask again.
            let response = self.request("GET", "/api/v1/counter/metrics").await;
            let metrics = match response.status {
                200 => json(&response),
                503 => Value::Null,
                status => panic!("counter metrics: {status} {}", response.text()),
            };
            if metrics["metrics"]["write_buffer_size"] == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "visits still unwritten after {timeout:?}: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of one Prometheus sample: the sum over every series of `name` whose
    /// labels contain all of `labels` (`key="value"` strings).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let response = self.request("GET", "/metrics").await;
        assert_eq!(response.status, 200);
        prometheus_sum(&response.text(), name, labels)
    }

    /// Waits until [`Server::metric`] of `name` and `labels` reaches `at_least`, panicking
    /// with `what` after `timeout`; returns the value reached.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[&str],
        at_least: f64,
        timeout: Duration,
        what: &str,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name, labels).await;
            if value >= at_least {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {name}{labels:?} is {value} after {timeout:?}, expected at least {at_least}; the server's last lines:\n{}",
                self.output_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to `within`) until the server has printed a line containing `needle`;
    /// panics, showing its output, when it does not.
    pub async fn wait_for_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {within:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/status` reports the node at `url` (`redis://host:port`) up or down, as
    /// `up` says: the server has seen the fault (or the recovery). Panics after 30 s.
    pub async fn wait_for_node(&self, url: &str, up: bool) {
        let what = format!("the server to see {url} {}", if up { "up" } else { "down" });
        self.wait_for_status(&what, |status| {
            status["redis_status"]["node_status"][url] == up
        })
        .await;
    }

    /// Polls `/status` every 20 ms until `done` says yes of it, and returns it; panics
    /// after 30 s, naming `what` and showing the last answer.
    pub async fn wait_for_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.get_json("/status").await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to `deadline` for the exit; returns the status and the
    /// time the shutdown took.
    pub fn terminate(&mut self, deadline: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        send_signal(self.pid(), "TERM", "server").expect("SIGTERM delivered");
        let status = self.wait(deadline);
        (status, started.elapsed())
    }

    /// SIGTERM and a clean exit (0, with every pending visit written) within 15 s.
    pub fn stop(mut self) -> String {
        let (status, _) = self.terminate(Duration::from_secs(15));
        let output = self.output();
        assert_eq!(status.code(), Some(0), "output:\n{output}");
        assert!(
            output.contains("shutdown complete: every pending visit was written"),
            "output:\n{output}"
        );
        output
    }

    /// SIGKILL, as a crash would leave it: nothing more is written, no file is closed.
    /// Returns everything it printed.
    pub fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL delivered");
        let status = self.wait(Duration::from_secs(10));
        assert_eq!(status.code(), None, "killed by a signal: {status}");
        self.output()
    }

    /// Waits up to `timeout` for the process to exit and returns its status; panics,
    /// showing its output, when it is still running then.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("the server can be polled") {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server (pid {}) still running after {timeout:?}; its output:\n{}",
                self.pid(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start_failed(&mut self, reason: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        panic!(
            "{BINARY} did not start ({reason}); its output:\n{}",
            self.output()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Best effort: there is no one to report to.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A reader thread that panicked leaves a plain Vec behind; keep using it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The binary with `env` on top of a cleared environment, `HOST=127.0.0.1`, `PORT=0` and
/// `DATA_DIR={dir}/data`, in `dir`, its output piped: every server has a data directory
/// of its own, gone with `dir`, and none writes into the repository.
fn command(env: &[(&str, &str)], dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env_clear()
        .current_dir(dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", dir.join("data"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The port in a `... listening on 127.0.0.1:PORT ...` log line (text or JSON).
fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("listening on ").nth(1)?;
    let address: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    address.rsplit(':').next()?.parse().ok()
}

/// Sums the samples of `name` whose label set contains every one of `labels`.
fn prometheus_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|l| rest.contains(l)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_read_from_text_and_json_lines() {
        assert_eq!(
            listening_port("2026-01-01T00:00:00Z  INFO tally: listening on 127.0.0.1:4321 x=1"),
            Some(4321)
        );
        assert_eq!(
            listening_port(r#"{"level":"INFO","message":"listening on 127.0.0.1:80","v":1}"#),
            Some(80)
        );
        assert_eq!(listening_port("nothing here"), None);
    }

    #[test]
    fn prometheus_samples_are_summed_by_name_and_labels() {
        let text = "# HELP x y\nx_total{node=\"a\",op=\"apply\"} 2\nx_total{node=\"b\",op=\"apply\"} 3\nx_total{node=\"b\",op=\"get\"} 5\nx_totally 7\n";
        assert_eq!(prometheus_sum(text, "x_total", &[]), 10.0);
        assert_eq!(prometheus_sum(text, "x_total", &["op=\"apply\""]), 5.0);
        assert_eq!(
            prometheus_sum(text, "x_total", &["node=\"b\"", "op=\"get\""]),
            5.0
        );
    }
}
