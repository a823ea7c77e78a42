//! `cargo xtask`: the one entry point for the project's checks.
//!
//! - `cargo xtask test`: makes sure `redis-server` is installed (installing it with apt when
//!   running as root), then runs the whole test suite.
//! - `cargo xtask ci`: formatting, clippy, cargo-deny, the compose file's validity, the
//!   same tests, then one `--quick` run of the load harness. `.ci/run` calls it.
//! - `cargo xtask bench [ARGS]`: the criterion benches (`ARGS` go to `cargo bench`).

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test|ci|bench [cargo bench args]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

type Result = std::result::Result<(), String>;

fn ci() -> Result {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    ensure_cargo_deny()?;
    // Advisories need the network, which CI machines do not have.
    cargo(&["deny", "check", "licenses", "bans", "sources"])?;
    // No Docker engine runs on CI machines: validate what can be validated without one.
    ensure_apt_package("docker-compose", "docker-compose")?;
    run(
        "docker-compose",
        &["-f", "docker/docker-compose.yml", "config", "-q"],
    )?;
    test()?;
    // Keeps the load harness working: a few seconds per target, figures printed, not
    // checked (CI machines are shared; the README's tables come from full runs).
    cargo(&[
        "run",
        "-p",
        "tally-benches",
        "--bin",
        "load",
        "--",
        "--quick",
    ])
}

fn test() -> Result {
    ensure_redis_server()?;
    cargo(&["test", "--workspace", "--no-fail-fast"])
}

fn bench(extra: &[String]) -> Result {
    ensure_redis_server()?;
    let mut args = vec!["bench", "-p", "tally-benches"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

fn cargo(args: &[&str]) -> Result {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(&cargo, args)
}

fn run(program: &str, args: &[&str]) -> Result {
    println!("xtask: running {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("could not start {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} failed ({status})", args.join(" ")))
    }
}

fn found(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .output()
        .is_ok_and(|out| out.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn ensure_redis_server() -> Result {
    ensure_apt_package("redis-server", "redis-server")
}

/// Makes sure `program` runs, installing Debian's `package` with apt-get when missing and
/// running as root; otherwise says how to install it.
fn ensure_apt_package(program: &str, package: &str) -> Result {
    if found(program, "--version") {
        return Ok(());
    }
    if !is_root() {
        return Err(format!(
            "{program} is not installed and the checks need it: install it with \
             `sudo apt-get install -y {package}` (or your platform's package), then run \
             `cargo xtask` again"
        ));
    }
    println!("xtask: {program} is missing; installing {package} with apt-get");
    run("apt-get", &["update"])?;
    run("apt-get", &["install", "-y", package])?;
    if found(program, "--version") {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed {package} but {program} still cannot be run"
        ))
    }
}

fn ensure_cargo_deny() -> Result {
    if found("cargo-deny", "--version") {
        return Ok(());
    }
    println!("xtask: cargo-deny is missing; installing it");
    cargo(&["install", "cargo-deny", "--locked"])
}
