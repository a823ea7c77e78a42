//! Child processes seen from outside: signals sent through `kill` (`unsafe_code` is
//! forbidden in the workspace, so no `libc::kill`), resident memory read from `/proc`.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Sends `SIG{signal}` (`"STOP"`, `"CONT"`, `"TERM"`, ...) to `pid`; `process` names it in
/// errors (`"redis-server"`, `"server"`).
///
/// # Errors
///
/// [`Error::Signal`] when `kill` cannot run or fails (the process is gone, say).
pub fn send_signal(pid: u32, signal: &'static str, process: &'static str) -> Result<()> {
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
