//! The tally server: parse the config, set up logs, serve until SIGTERM or SIGINT.
//!
//! Everything is in [`tally_server::cli::main`], so the end-to-end tests' binary runs the
//! same code as this one.

fn main() -> std::process::ExitCode {
    tally_server::cli::main()
}
