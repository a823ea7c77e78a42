//! `cargo xtask openapi`: the real server checked against its own `/openapi.json` by
//! schemathesis. `cargo xtask test` (and so `cargo xtask ci`) runs it after the test suite.
//!
//! 1. A virtual environment, `schemathesis-venv` in the target directory, holding the
//!    packages `xtask/schemathesis-requirements.txt` pins; made once (`python3 -m venv`,
//!    then pip from PyPI) and made again only when that file changes. A failure to make it
//!    fails the step, saying why: the check is never skipped.
//! 2. The server binary (debug build), started on `127.0.0.1` port 0 with an empty
//!    environment and, as its working directory, a fresh `openapi-check` directory in the
//!    target directory (so no `.env` is read): the embedded store in a `DATA_DIR` there,
//!    `TEST_MAX_REQUESTS=5` (larger `n` of `/test/{n}/` are documented 400s, so fuzzing
//!    starts no large runs) and a random `ADMIN_TOKEN`. Its `listening on` log line gives
//!    the port; its log goes to `server.log` beside the data.
//! 3. `st run http://127.0.0.1:PORT/openapi.json` with `xtask/schemathesis.toml` (the
//!    checks, and why; the token reaches the admin routes through `TALLY_ADMIN_TOKEN`).
//!    Every request goes to that loopback address.
//! 4. SIGTERM to the server, which must exit 0 within 30 s; a log line of a panic fails the
//!    step too.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{Result, cargo, cargo_program, ensure_apt_package, found};

/// How long the server may take to log `listening on`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the check; see the module's documentation.
pub(crate) fn run() -> Result {
    let root = crate::root();
    let target = target_dir()?;
    let st = ensure_schemathesis(&root, &target)?;
    cargo(&["build", "-p", "tally-server", "--bin", "tally-server"])?;
    let work = target.join("openapi-check");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .map_err(|e| format!("cannot remove {}: {e}", work.display()))?;
    }
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let token = random_token()?;
    let started = Instant::now();
    let server = Server::start(&target.join("debug").join("tally-server"), &work, &token)?;
    let checked = schemathesis(&st, &root, &work, &server.address, &token);
    let stopped = server.stop();
    let log = work.join("server.log");
    if checked.is_err() || stopped.is_err() {
        print_tail(&log);
    }
    checked?;
    stopped?;
    let text = std::fs::read_to_string(&log)
        .map_err(|e| format!("cannot read the server's log {}: {e}", log.display()))?;
    if let Some(line) = text.lines().find(|line| line.contains("panicked at")) {
        return Err(format!(
            "the server panicked during the OpenAPI check: {line}"
        ));
    }
    println!(
        "xtask: the server matches its OpenAPI document (schemathesis, server up {:.0?})",
        started.elapsed()
    );
    Ok(())
}

/// The target directory cargo builds into (`CARGO_TARGET_DIR`, the config's, or `target`).
fn target_dir() -> std::result::Result<PathBuf, String> {
    let output = Command::new(cargo_program())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata names no target_directory".to_owned())
}

/// The `st` of a virtual environment holding the pinned packages, made when missing or
/// when the pins changed.
fn ensure_schemathesis(root: &Path, target: &Path) -> std::result::Result<PathBuf, String> {
    let requirements = root.join("xtask").join("schemathesis-requirements.txt");
    let pins = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let version = pins
        .lines()
        .find_map(|line| line.trim().strip_prefix("schemathesis=="))
        .ok_or_else(|| format!("{} pins no schemathesis==VERSION", requirements.display()))?
        .to_owned();
    let venv = target.join("schemathesis-venv");
    let st = venv.join("bin").join("st");
    // The pins the environment was made from, written once pip succeeded.
    let made_from = venv.join("tally-requirements.txt");
    let current = std::fs::read_to_string(&made_from).is_ok_and(|made| made == pins)
        && Command::new(&st)
            .arg("--version")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&version));
    if current {
        return Ok(st);
    }
    if !found("python3", "--version") {
        ensure_apt_package("python3", "python3-venv")?;
    }
    let venv_text = venv.to_string_lossy().into_owned();
    let make = || crate::run("python3", &["-m", "venv", "--clear", &venv_text]);
    if make().is_err() {
        // Debian's python3 makes no environment without its ensurepip, packaged apart.
        if !crate::is_root() {
            return Err(format!(
                "python3 cannot make a virtual environment at {venv_text}: install python3-venv \
                 (`sudo apt-get install -y python3-venv`), then run `cargo xtask` again"
            ));
        }
        println!("xtask: installing python3-venv with apt-get, for the schemathesis environment");
        crate::run("apt-get", &["update"])?;
        crate::run("apt-get", &["install", "-y", "python3-venv"])?;
        make().map_err(|e| format!("python3 cannot make a virtual environment: {e}"))?;
    }
    let python = venv.join("bin").join("python");
    crate::run(
        &python.to_string_lossy(),
        &[
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--requirement",
            &requirements.to_string_lossy(),
        ],
    )
    .map_err(|e| {
        format!(
            "pip could not install schemathesis {version} and its pinned dependencies from PyPI \
             ({e}); the OpenAPI check needs them: see the error above (is PyPI reachable?)"
        )
    })?;
    std::fs::write(&made_from, &pins)
        .map_err(|e| format!("cannot write {}: {e}", made_from.display()))?;
    Ok(st)
}

/// 32 hex digits from the system's random source: the server's `ADMIN_TOKEN` for one run.
fn random_token() -> std::result::Result<String, String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The server under check, as a child process. Dropping it kills the process; [`Server::stop`]
/// stops it as an operator would.
struct Server {
    child: Child,
    /// `127.0.0.1:PORT`, from its `listening on` line.
    address: String,
}

impl Server {
    /// Starts `binary` in `work` and waits for its `listening on` line.
    fn start(binary: &Path, work: &Path, token: &str) -> std::result::Result<Self, String> {
        let log_path = work.join("server.log");
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let stderr = log
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        println!(
            "xtask: starting {} on 127.0.0.1, port 0 (embedded store in {}, log in {})",
            binary.display(),
            work.join("data").display(),
            log_path.display()
        );
        let mut child = Command::new(binary)
            .current_dir(work)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs([
                ("HOST", "127.0.0.1"),
                ("PORT", "0"),
                ("STORE", "embedded"),
                ("DATA_DIR", "data"),
                ("TEST_MAX_REQUESTS", "5"),
                ("ADMIN_TOKEN", token),
                ("LOG_LEVEL", "info"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", binary.display()))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("the server's standard output was not captured".to_owned());
        };
        // Copies the log to the file, and hands over the address of its first
        // `listening on` line (`... listening on 127.0.0.1:41235 project=tally ...`).
        let (found, address) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some((_, rest)) = line.split_once("listening on ") {
                    let _ = found.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
        });
        let mut server = Self {
            child,
            address: String::new(),
        };
        match address.recv_timeout(START_TIMEOUT) {
            Ok(address) => {
                server.address = address;
                Ok(server)
            }
            Err(_) => {
                print_tail(&log_path);
                Err(format!(
                    "the server did not log `listening on` within {START_TIMEOUT:?} (see {})",
                    log_path.display()
                ))
            }
        }
    }

    /// SIGTERM, then waits for a graceful exit: code 0 within [`STOP_TIMEOUT`].
    fn stop(mut self) -> Result {
        let pid = self.child.id().to_string();
        crate::run("kill", &["-TERM", &pid])?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(format!("the server exited with {status} after SIGTERM"));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Ok(None) => {
                    return Err(format!(
                        "the server did not exit within {STOP_TIMEOUT:?} of SIGTERM"
                    ));
                }
                Err(e) => return Err(format!("cannot wait for the server: {e}")),
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Still running only when the check stopped early: leave no server behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs schemathesis against the server at `address`, from `work` (where it keeps its
/// example database).
fn schemathesis(st: &Path, root: &Path, work: &Path, address: &str, token: &str) -> Result {
    let config = root.join("xtask").join("schemathesis.toml");
    let url = format!("http://{address}/openapi.json");
    let config_text = config.to_string_lossy();
    let args = ["--config-file", &config_text, "run", &url, "--no-color"];
    println!(
        "xtask: running TALLY_ADMIN_TOKEN=*** {} {}",
        st.display(),
        args.join(" ")
    );
    let started = Instant::now();
    let status = Command::new(st)
        .current_dir(work)
        .args(args)
        .env("TALLY_ADMIN_TOKEN", token)
        .status()
        .map_err(|e| format!("could not start {}: {e}", st.display()))?;
    println!("xtask: schemathesis took {:.0?}", started.elapsed());
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "schemathesis found the server and its OpenAPI document at odds ({status}); the \
             failures are listed above, each with a curl command that reproduces it"
        ))
    }
}

/// Prints the last lines of the server's log, for a failed check.
fn print_tail(log: &Path) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("xtask: the last lines of {}:", log.display());
    for line in &lines[lines.len().saturating_sub(40)..] {
        eprintln!("  {line}");
    }
}
