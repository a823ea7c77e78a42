//! `cargo xtask`: the one entry point for the project's checks.
//!
//! - `cargo xtask test`: makes sure `redis-server`, `chromium` and `chromedriver` are
//!   installed (installing them with apt when running as root), then runs the whole test
//!   suite, then `cargo xtask openapi`.
//! - `cargo xtask openapi`: the real server checked against its own `/openapi.json` by
//!   schemathesis, in a virtual environment it makes (see the `openapi` module).
//! - `cargo xtask ci`: formatting, clippy, cargo-deny, the docs (`cargo doc` with warnings
//!   as errors), the library crates' packages (`cargo package`, each built from what it
//!   would publish), the compose file's validity, the same tests, then one `--quick` run
//!   of the load harness, the criterion benches once each in test mode, and `cold-apply`
//!   on five batches. `.ci/run` calls it.
//! - `cargo xtask bench [ARGS]`: the criterion benches (`ARGS` go to `cargo bench`).

mod openapi;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("ci") => ci(),
        Some("openapi") => openapi::run(),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <test|ci|openapi|bench [cargo bench args]>");
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
    // Intra-doc links and doc comments stay valid.
    run_with(
        &cargo_program(),
        &["doc", "--no-deps", "--workspace"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The library crates are meant to be embedded: each packages and builds on its own
    // from what it would publish (ours resolved from a local registry cargo builds).
    let mut package = vec!["package", "--allow-dirty"];
    for library in LIBRARIES {
        package.extend(["-p", library]);
    }
    forget_packaged_sources()?;
    cargo(&package)?;
    // No Docker engine runs on CI machines: validate what can be validated without one.
    ensure_apt_package("docker-compose", "docker-compose")?;
    for compose in [
        "docker/docker-compose.yml",
        "docker/docker-compose.cluster.yml",
    ] {
        run("docker-compose", &["-f", compose, "config", "-q"])?;
    }
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
    ])?;
    // The criterion benches once each in test mode (they still run, nothing is timed), and
    // the cold-set script comparison on a few batches.
    cargo(&["test", "-p", "tally-benches", "--benches"])?;
    cargo(&[
        "run",
        "-p",
        "tally-benches",
        "--bin",
        "cold-apply",
        "--",
        "--batches",
        "5",
    ])
}

fn test() -> Result {
    ensure_redis_server()?;
    ensure_browser()?;
    // As with `--no-fail-fast`: the OpenAPI check runs even after a failed test, and the
    // run reports both.
    let tests = cargo(&["test", "--workspace", "--no-fail-fast"]);
    match (tests, openapi::run()) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(tests), Err(openapi)) => Err(format!("{tests}; and {openapi}")),
    }
}

fn bench(extra: &[String]) -> Result {
    ensure_redis_server()?;
    let mut args = vec!["bench", "-p", "tally-benches"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

/// The crates other services embed, in dependency order.
const LIBRARIES: [&str; 5] = [
    "tally-ring",
    "tally-counter",
    "tally-redis",
    "tally-stats",
    "tally-embedded",
];

/// The workspace's root directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Removes cargo's extracted copies of our library crates from `$CARGO_HOME/registry`.
///
/// `cargo package` verifies each crate against the others through a local registry it
/// builds under `target/package`, and extracts them under `registry/src/<that registry's
/// hash>/`, keyed by name and version only: a second run from the same checkout would
/// build against the sources the first one extracted, whatever changed since (a library
/// function added meanwhile "cannot be found"). Removing them makes every run verify the
/// crates as they are now; a copy a registry also serves is fetched again when needed.
fn forget_packaged_sources() -> Result {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    for kind in ["src", "cache"] {
        let Ok(registries) = std::fs::read_dir(home.join("registry").join(kind)) else {
            continue;
        };
        for registry in registries.flatten() {
            let Ok(entries) = std::fs::read_dir(registry.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = LIBRARIES.iter().any(|library| {
                    name.strip_prefix(library).is_some_and(|rest| {
                        rest.starts_with('-') && rest[1..].starts_with(|c: char| c.is_ascii_digit())
                    })
                });
                if !ours {
                    continue;
                }
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
            }
        }
    }
    Ok(())
}

fn cargo(args: &[&str]) -> Result {
    run(&cargo_program(), args)
}

fn run(program: &str, args: &[&str]) -> Result {
    run_with(program, args, &[])
}

fn run_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    println!(
        "xtask: running {}{program} {}",
        shown.concat(),
        args.join(" ")
    );
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
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

/// Headless chromium and its WebDriver, which the dashboard's end-to-end test drives.
fn ensure_browser() -> Result {
    ensure_apt_package("chromium", "chromium")?;
    ensure_apt_package("chromedriver", "chromium-driver")
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

/// The repository's own documents against its code: what `ARCHITECTURE.md` names exists,
/// and the README's embedding example is the one the counter crate runs as a doctest.
#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::root;

    fn read(path: &str) -> String {
        std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Every `.rs` file under the folders that hold code, as paths from the root.
    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let name = path.strip_prefix(root).unwrap_or(&path);
                    out.push((name.to_string_lossy().into_owned(), text));
                }
            }
        }
        let root = root();
        let mut out = Vec::new();
        for dir in ["crates", "bins", "tests", "benches", "xtask"] {
            walk(&root.join(dir), &root, &mut out);
        }
        out
    }

    /// The `code spans` of a Markdown text, outside fenced blocks.
    fn code_spans(text: &str) -> Vec<String> {
        let mut spans = Vec::new();
        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            if !fenced {
                spans.extend(line.split('`').skip(1).step_by(2).map(str::to_owned));
            }
        }
        spans
    }

    #[test]
    fn architecture_names_only_files_and_items_that_exist() {
        let sources = sources();
        let mut missing = Vec::new();
        for span in code_spans(&read("ARCHITECTURE.md")) {
            let top = [
                "crates/", "bins/", "tests/", "benches/", "xtask/", "docker/",
            ];
            let is_file = !span.contains(['*', '{', ' '])
                && (span.ends_with(".rs") || top.iter().any(|t| span.starts_with(t)));
            if is_file {
                let found = sources.iter().any(|(path, _)| path.ends_with(&*span))
                    || root().join(&span).exists();
                if !found {
                    missing.push(format!("file {span}"));
                }
                continue;
            }
            let is_path = span
                .split("::")
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_'));
            let Some(item) = span.rsplit("::").next().filter(|_| is_path) else {
                continue;
            };
            let first = item.chars().next().unwrap_or('_');
            let patterns: Vec<String> = if item.chars().all(|c| !c.is_lowercase()) {
                // A constant, or a setting read from the environment.
                if !item.contains('_') {
                    continue;
                }
                vec![
                    format!("const {item}:"),
                    format!("static {item}:"),
                    format!("\"{item}\""),
                ]
            } else if first.is_uppercase() {
                ["struct", "enum", "trait", "type"]
                    .iter()
                    .map(|kind| format!("{kind} {item}"))
                    .collect()
            } else {
                // One lower-case word names a crate or a tool as often as a function.
                if !item.contains('_') && !span.contains("::") {
                    continue;
                }
                vec![format!("fn {item}("), format!("fn {item}<")]
            };
            if !sources
                .iter()
                .any(|(_, text)| patterns.iter().any(|p| text.contains(p.as_str())))
            {
                missing.push(format!("item {span}"));
            }
        }
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md names what the code does not have: {missing:?}"
        );
    }

    #[test]
    fn the_readme_embedding_example_is_the_counter_crates_tested_one() {
        let fenced = |text: &str| -> Vec<String> {
            text.split("```rust\n")
                .skip(1)
                .filter_map(|rest| rest.split_once("```").map(|(code, _)| code.to_owned()))
                .collect()
        };
        let crate_example = fenced(&read("crates/tally-counter/README.md"));
        assert_eq!(crate_example.len(), 1, "the crate README has one example");
        assert!(
            fenced(&read("README.md")).contains(&crate_example[0]),
            "README.md's \"Embedding the counter\" example differs from crates/tally-counter/README.md's"
        );
    }
}
