//! `tally-server reshard`: moves the counts to their owners on a new node list, with
//! [`tally_redis::reshard`].
//!
//! ```text
//! REDIS_NODES=<current nodes> tally-server reshard --to <new nodes> [--virtual-nodes N] [--apply]
//! ```
//!
//! The current list and every other Redis setting (`REDIS_PASSWORD`, `REDIS_DB`,
//! `VIRTUAL_NODES`, `REDIS_TIMEOUT`, ...) come from the environment (and `.env`) exactly as
//! the server reads them; `--to` is a list in the syntax of `REDIS_NODES`, and
//! `--virtual-nodes` the new ring's `VIRTUAL_NODES` (default: the current one). Without
//! `--apply` the plan is printed and nothing changes.
//!
//! Output: the plan and the result on stdout; progress on stderr, as a line redrawn in
//! place on a terminal (keys moved, rate, time left) and otherwise one line per node when
//! it is done. Exit codes: 0 done (or plan printed); 2 invalid arguments or configuration,
//! one line; 1 any other failure (a node down, a refusal), one line saying whether running
//! the command again resumes. No password is ever printed: nodes are named `host:port`
//! and lists go through [`tally_redis::redact`].

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tally_redis::reshard::{self, Plan, Progress, thousands};
use tally_redis::{Error, RedisConfig, redact};

use crate::{Config, ConfigError};

/// How the subcommand is called.
const USAGE: &str = "usage: REDIS_NODES=<current nodes> tally-server reshard --to <new nodes> [--virtual-nodes N] [--apply]

Moves every visit count and request-statistics entry whose node changes when REDIS_NODES
changes to <new nodes> (comma-separated redis:// URLs, as in REDIS_NODES). Every other
setting (REDIS_PASSWORD, REDIS_DB, VIRTUAL_NODES, REDIS_TIMEOUT, ...) is read from the
environment as the server reads it; --virtual-nodes sets VIRTUAL_NODES of the new ring
(default: the current one). Without --apply, prints what would move and changes nothing.
Stop every server using the nodes first; a run that stops half-way is finished by running
the same command again.";

/// Shortest time between two redraws of the progress line.
const REDRAW: Duration = Duration::from_millis(100);

/// Runs the subcommand if the process arguments `args` (program name first) name it;
/// `None` when they do not, and the server runs.
pub fn dispatch(args: impl IntoIterator<Item = OsString>) -> Option<ExitCode> {
    let mut args = args.into_iter().skip(1);
    if args.next().is_some_and(|first| first == "reshard") {
        Some(main(args.collect()))
    } else {
        None
    }
}

/// The subcommand, from its arguments (after `reshard`) to its exit code.
fn main(args: Vec<OsString>) -> ExitCode {
    let args = match Args::parse(&args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(problem) => {
            return fail(
                2,
                &format!("{problem} (`tally-server reshard --help` shows the usage)"),
            );
        }
    };
    let (from, to) = match configs(&args) {
        Ok(configs) => configs,
        Err(e) => return fail(2, &format!("invalid configuration: {e}")),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(1, &format!("cannot start the tokio runtime: {e}")),
    };
    runtime.block_on(run(&from, &to, args.apply))
}

/// Plans, prints, and with `apply` moves.
async fn run(from: &RedisConfig, to: &RedisConfig, apply: bool) -> ExitCode {
    let plan = match reshard::plan(from, to).await {
        Ok(plan) => plan,
        Err(e) => {
            return fail_with(
                &e,
                "nothing was changed; run the command again once this is fixed",
            );
        }
    };
    print!("{plan}");
    if !apply {
        println!("nothing was changed (this is the plan; add --apply to move the keys)");
        return ExitCode::SUCCESS;
    }
    let _ = std::io::stdout().flush();
    let mut bar = Bar::new(std::io::stderr().is_terminal());
    let moved = reshard::apply(&plan, |progress| bar.show(progress)).await;
    bar.finish();
    match moved {
        Ok(moved) => {
            print!("{moved}");
            println!("reshard complete: {}", next_step(&plan));
            ExitCode::SUCCESS
        }
        // Refusals before anything moved: their message says what to do.
        Err(e @ (Error::ServerRunning { .. } | Error::ReshardInProgress { .. })) => {
            fail(1, &chain(&e))
        }
        Err(e) => fail_with(
            &e,
            "no count is lost or doubled: run the same command again to finish the reshard; it resumes where this run stopped",
        ),
    }
}

/// What the operator does once the counts moved.
fn next_step(plan: &Plan) -> String {
    let vnodes = if plan.to().vnodes == plan.from().vnodes {
        String::new()
    } else {
        format!(" and VIRTUAL_NODES={}", plan.to().vnodes)
    };
    format!(
        "start the servers with REDIS_NODES set to the new list ({}){vnodes}",
        plan.to()
    )
}

/// The arguments after `reshard`.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    to: String,
    virtual_nodes: Option<String>,
    apply: bool,
}

impl Args {
    /// The arguments, or `None` for `--help`; the error is one line, without a password.
    fn parse(args: &[OsString]) -> Result<Option<Self>, String> {
        let mut to = None;
        let mut virtual_nodes = None;
        let mut apply = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let arg = arg
                .to_str()
                .ok_or("an argument is not valid UTF-8")?
                .to_owned();
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| -> Result<String, String> {
                match inline {
                    Some(value) => Ok(value.to_owned()),
                    None => args
                        .next()
                        .and_then(|v| v.to_str())
                        .map(str::to_owned)
                        .ok_or_else(|| format!("{name} needs a value")),
                }
            };
            match name.as_str() {
                "--to" => to = Some(value("--to")?),
                "--virtual-nodes" => virtual_nodes = Some(value("--virtual-nodes")?),
                "--apply" if inline.is_none() => apply = true,
                "-h" | "--help" => return Ok(None),
                _ => return Err(format!("unknown argument '{}'", redact(&arg))),
            }
        }
        let to = to.ok_or(
            "--to is required: the new node list, comma-separated redis:// URLs as in REDIS_NODES",
        )?;
        Ok(Some(Self {
            to,
            virtual_nodes,
            apply,
        }))
    }
}

/// The current ring's config from the environment, as the server reads it, and the new
/// ring's: the same settings with the nodes of `--to` and `--virtual-nodes`.
fn configs(args: &Args) -> Result<(RedisConfig, RedisConfig), ConfigError> {
    let config = Config::from_env()?;
    let from = config.redis_config().ok_or_else(|| ConfigError {
        variable: "REDIS_NODES".to_owned(),
        value: None,
        problem: "not set; it must list the nodes the counts are on now (--to lists the new ones)"
            .to_owned(),
    })?;
    // `--to` and `--virtual-nodes` are read by the parsers of REDIS_NODES and
    // VIRTUAL_NODES, so they accept (and refuse) exactly what those do.
    let mut vars = vec![("REDIS_NODES", args.to.as_str())];
    if let Some(vnodes) = &args.virtual_nodes {
        vars.push(("VIRTUAL_NODES", vnodes));
    }
    let rename = |mut e: ConfigError| {
        e.variable = match e.variable.as_str() {
            "REDIS_NODES" => "--to".to_owned(),
            "VIRTUAL_NODES" => "--virtual-nodes".to_owned(),
            other => other.to_owned(),
        };
        e
    };
    let parsed = Config::from_vars(vars).map_err(rename)?;
    if parsed.redis_nodes.is_empty() {
        return Err(ConfigError {
            variable: "--to".to_owned(),
            value: Some(redact(&args.to)),
            problem: "lists no node; expected comma-separated redis:// URLs as in REDIS_NODES"
                .to_owned(),
        });
    }
    let mut to = from.clone();
    to.nodes = parsed.redis_nodes;
    if args.virtual_nodes.is_some() {
        to.vnodes = parsed.vnodes;
    }
    Ok((from, to))
}

/// The progress display: a line redrawn in place on a terminal, otherwise one line per
/// node when it is done.
struct Bar {
    terminal: bool,
    started: Instant,
    drawn: Option<Instant>,
}

impl Bar {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn show(&mut self, progress: &Progress<'_>) {
        if !self.terminal {
            if progress.node_done {
                eprintln!(
                    "tally-server reshard: node {} done: moved {} of the {} keys planned",
                    progress.node,
                    thousands(progress.node_moved),
                    thousands(progress.node_planned)
                );
            }
            return;
        }
        let now = Instant::now();
        if self.drawn.is_some_and(|at| now - at < REDRAW) && progress.moved < progress.planned {
            return;
        }
        self.drawn = Some(now);
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            progress.moved as f64 / elapsed
        } else {
            0.0
        };
        let left = progress.planned.saturating_sub(progress.moved);
        let eta = if rate > 0.0 {
            format!("about {:.0} s left", left as f64 / rate)
        } else {
            "time left unknown".to_owned()
        };
        let percent = (100 * progress.moved.min(progress.planned))
            .checked_div(progress.planned)
            .unwrap_or(100);
        eprint!(
            "\rmoved {} of {} keys ({percent}%), {} keys/s, {eta}   ",
            thousands(progress.moved),
            thousands(progress.planned),
            thousands(rate as u64)
        );
        let _ = std::io::stderr().flush();
    }

    /// Ends the redrawn line.
    fn finish(&self) {
        if self.terminal && self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// `e` and its causes on one line: `a: b: c` (a cause whose text the line already ends
/// with, as a Redis error repeating its I/O error, is left out).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut shown = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !shown.ends_with(&text) {
            shown.push_str(": ");
            shown.push_str(&text);
        }
        source = cause.source();
    }
    shown
}

/// Prints a failure of the reshard itself: exit 2 for a configuration the reshard cannot
/// work with, 1 otherwise with `then`, what running the command again does.
fn fail_with(e: &Error, then: &str) -> ExitCode {
    if e.is_config() && !matches!(e, Error::ReshardInProgress { .. }) {
        fail(2, &format!("invalid configuration: {}", chain(e)))
    } else {
        fail(1, &format!("{}; {then}", chain(e)))
    }
}

/// Prints `message` as the one line of a failure and returns `code`.
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("tally-server reshard: {message}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        Args::parse(&args)
    }

    #[test]
    fn arguments_are_read_with_or_without_equals() {
        assert_eq!(
            parse(&["--to", "redis://a:1", "--apply"]),
            Ok(Some(Args {
                to: "redis://a:1".into(),
                virtual_nodes: None,
                apply: true
            }))
        );
        assert_eq!(
            parse(&["--virtual-nodes=100", "--to=redis://a:1,redis://b:2"]),
            Ok(Some(Args {
                to: "redis://a:1,redis://b:2".into(),
                virtual_nodes: Some("100".into()),
                apply: false
            }))
        );
        assert_eq!(parse(&["--help"]), Ok(None));
    }

    #[test]
    fn bad_arguments_are_named_without_passwords() {
        assert!(parse(&[]).unwrap_err().starts_with("--to is required"));
        assert_eq!(parse(&["--to"]).unwrap_err(), "--to needs a value");
        let err = parse(&["redis://:hunter2@a:1"]).unwrap_err();
        assert_eq!(err, "unknown argument 'redis://:***@a:1'");
        assert!(parse(&["--apply=yes", "--to", "x"]).is_err());
    }

    #[test]
    fn only_the_reshard_subcommand_is_dispatched() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(dispatch(args(&["tally-server"])).is_none());
        assert!(dispatch(args(&["tally-server", "serve"])).is_none());
        assert!(dispatch(args(&["tally-server", "reshard", "--help"])).is_some());
    }
}
