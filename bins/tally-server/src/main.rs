//! The tally server: parse the config, set up logs, serve until SIGTERM or SIGINT.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use tally_server::{Config, run, shutdown_signal, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
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
    let served = async {
        run(config)
            .await?
            .run_until_stopped(shutdown_signal())
            .await
    };
    match served.await {
        Ok(_report) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, with its cause chain (`a: b: c`).
            eprintln!("tally-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
