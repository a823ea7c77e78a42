//! The tally server, built inside `tally-tests` so the end-to-end tests can run it
//! (`CARGO_BIN_EXE_tally-e2e-server`): the same code as the `tally-server` binary.

fn main() -> std::process::ExitCode {
    tally_server::cli::main()
}
