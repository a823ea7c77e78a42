//! A server binary run as a child process: started with `PORT=0` in an empty directory with
//! a cleared environment, its port read from its `listening on` log line, its output kept
//! line by line, signalled and measured from outside.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::signal::send_signal;

/// Environment variable: when set, every line a [`ServerProcess`] prints is echoed to the
/// test's stdout as `[server] ...` (visible with `--nocapture`).
pub const TEST_LOG_ENV: &str = "TEST_LOG";

/// A server binary running as a child process, killed (SIGKILL) when dropped.
///
/// The binary must log a line containing `listening on HOST:PORT` once it accepts
/// connections (tally-server does, at `info`). It runs in a fresh temporary directory (so no
/// `.env` is read) with a cleared environment plus `HOST=127.0.0.1`, `PORT=0` and the
/// caller's variables.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    port: u16,
    program: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `program` with `env` and waits (up to 30 s) for its `listening on` line.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when it cannot be started, [`Error::ServerStart`] (with its output)
    /// when it exits or says nothing about listening in time.
    pub fn start(program: impl AsRef<Path>, env: &[(&str, &str)]) -> Result<Self> {
        let program = program.as_ref().to_path_buf();
        let dir = tempfile::Builder::new()
            .prefix("tally-server-")
            .tempdir()
            .map_err(|e| Error::io("cannot create a temporary directory for a server", e))?;
        let mut child = command(&program, env, dir.path())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.display().to_string(),
                source,
            })?;
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
                let echo = std::env::var_os(TEST_LOG_ENV).is_some();
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
        let mut process = Self {
            child,
            port: 0,
            program,
            output,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            match port_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(port) => {
                    process.port = port;
                    return Ok(process);
                }
                Err(_) if started.elapsed() > Duration::from_secs(30) => {
                    return Err(process.start_failed("no `listening on` line within 30 s"));
                }
                Err(_) => {
                    if let Ok(Some(status)) = process.child.try_wait() {
                        // Let the reader threads take the last lines.
                        std::thread::sleep(Duration::from_millis(100));
                        return Err(process.start_failed(&format!("exited with {status}")));
                    }
                }
            }
        }
    }

    /// Runs `program` with `env` to completion (it must exit within `timeout`):
    /// `(status, stdout, stderr)`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`], or [`Error::ServerStart`] when it is still running at the timeout
    /// (it is killed).
    pub fn run_to_exit(
        program: impl AsRef<Path>,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<(ExitStatus, String, String)> {
        let program = program.as_ref();
        let dir = tempfile::tempdir()
            .map_err(|e| Error::io("cannot create a temporary directory for a server", e))?;
        let mut child = command(program, env, dir.path())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: program.display().to_string(),
                source,
            })?;
        let deadline = Instant::now() + timeout;
        loop {
            let exited = child
                .try_wait()
                .map_err(|e| Error::io("cannot poll a server process", e))?;
            if exited.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::ServerStart {
                    program: program.display().to_string(),
                    reason: format!("still running after {timeout:?}; killed"),
                    output: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let output = child
            .wait_with_output()
            .map_err(|e| Error::io("cannot read a server's output", e))?;
        Ok((
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// The port from its `listening on` line.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`, for raw connections.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:{port}`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    ///
    /// # Errors
    ///
    /// [`Error::Signal`] when it cannot be delivered.
    pub fn terminate(&self) -> Result<()> {
        send_signal(self.pid(), "TERM", "server")
    }

    /// Kills the process with SIGKILL and reaps it.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when it cannot be killed or reaped.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(|e| Error::io("cannot reap a server process", e))
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    ///
    /// # Errors
    ///
    /// [`Error::StillRunning`] (with its output) after `timeout`; the process is left
    /// running.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self
                .child
                .try_wait()
                .map_err(|e| Error::io("cannot poll a server process", e))?;
            if let Some(status) = exited {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::StillRunning {
                    pid: self.pid(),
                    waited: timeout,
                    output: self.output(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything it printed so far, stdout and stderr, one line each.
    pub fn output(&self) -> String {
        lock(&self.output).join("\n")
    }

    /// Its resident memory (`VmRSS` of `/proc/{pid}/status`), in bytes. Linux only.
    ///
    /// # Errors
    ///
    /// As [`resident_memory`].
    pub fn rss_bytes(&self) -> Result<u64> {
        resident_memory(self.pid())
    }

    fn start_failed(&mut self, reason: &str) -> Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        Error::ServerStart {
            program: self.program.display().to_string(),
            reason: reason.to_owned(),
            output: self.output(),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // Best effort: there is no one to report to.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid` (`VmRSS` of `/proc/{pid}/status`), in bytes. Linux
/// only.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read (the process is gone, or not Linux) or has no
/// `VmRSS` line.
pub fn resident_memory(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("cannot read {path}"), e))?;
    parse_vm_rss(&status).ok_or_else(|| {
        Error::io(
            format!("no VmRSS line in {path}"),
            std::io::Error::from(std::io::ErrorKind::InvalidData),
        )
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A reader thread that panicked leaves a plain Vec behind; keep using it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn command(program: &Path, env: &[(&str, &str)], dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .current_dir(dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
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

/// `VmRSS:   12345 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  9 kB\nVmRSS:\t   12345 kB\nThreads: 3\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn our_own_rss_is_readable() {
        assert!(resident_memory(std::process::id()).unwrap() > 0);
    }
}
