//! The command-line entry point: what the `tally-server` binary runs, as a library function
//! so other binaries (the end-to-end tests' `tally-e2e-server`) run exactly the same code.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use crate::{Config, ConfigError, run, shutdown_signal, telemetry};

/// Runs the server as the `tally-server` binary does: reads the configuration from the
/// environment (and `.env`), sets up logs on stdout, serves until SIGTERM or SIGINT, then
/// drains and flushes.
///
/// Exit codes: 0 after a graceful shutdown; 2 for an invalid configuration (one line on
/// stderr naming the variable), also when it shows only at start-up (e.g. two entries of
/// `REDIS_NODES` that reach the same Redis database, or a `DATA_DIR` the embedded store
/// cannot use); 1 when the server cannot start or
/// fails (the error once, with its cause chain, on stderr).
///
/// `tally-server reshard --to <nodes> [--virtual-nodes N] [--apply]` runs the reshard
/// instead of the server: it moves the counts to their owners on a new node list (see
/// `tally_redis::reshard`); `tally-server reshard --help` says how.
///
/// Builds its own multi-threaded tokio runtime, so call it from a plain `fn main`, not from
/// inside a runtime:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     tally_server::cli::main()
/// }
/// ```
pub fn main() -> ExitCode {
    if let Some(code) = crate::reshard::dispatch(std::env::args_os()) {
        return code;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tally-server: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let terminal = std::io::stdout().is_terminal();
    telemetry::init_tracing(
        config.log_format,
        &config.log_filter,
        std::io::stdout,
        terminal,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tally-server: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        run(config)
            .await?
            .run_until_stopped(shutdown_signal())
            .await
    });
    match served {
        Ok(_report) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("tally-server: invalid configuration: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            // Once, with its cause chain (`a: b: c`).
            eprintln!("tally-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
