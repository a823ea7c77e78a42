//! The tally server binary. Not built yet: it exits with an explanation.

fn main() -> std::process::ExitCode {
    eprintln!("tally-server: the HTTP server is not implemented yet (see issue 6)");
    std::process::ExitCode::from(2)
}
