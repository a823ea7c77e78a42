//! Signals to child processes, through the `kill` command: `unsafe_code` is forbidden in
//! the workspace, so no `libc::kill`.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Sends `SIG{signal}` (`"STOP"`, `"CONT"`, `"TERM"`, ...) to `pid`; `process` names it in
/// errors.
pub(crate) fn send_signal(pid: u32, signal: &'static str, process: &'static str) -> Result<()> {
    let err = |detail: String| Error::Signal {
        signal,
        process,
        pid,
        detail,
    };
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| err(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(err(status.to_string()))
    }
}
