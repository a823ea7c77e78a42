//! Latency mode: a user-space TCP proxy in front of each Redis node, holding every chunk
//! for half a configured round trip in each direction, as a network between a server and
//! its nodes would (this kernel has no `netem`).
//!
//! The proxies run in a child process, this binary started again with [`SUBCOMMAND`]: its
//! CPU time is then read from `/proc` apart from the server's, the client's and Redis's.
//! One process serves every node of a scenario, a listener per node, on one tokio thread
//! and the [`clock`]'s thread. It ends when its stdin closes, so also when the harness is
//! ended by a signal or the watchdog (`exit`, no destructors).
//!
//! Over its stdin and stdout the harness asks it, line by line, for how long its chunks
//! were held since the last time asked ([`Held`]): the delay as achieved, lateness
//! included, which a busy machine adds to.
//!
//! # Layout
//!
//! - this file: [`Rtt`], the harness's handle [`DelayProxy`], and the process's [`main`];
//! - [`clock`]: wakes tasks at instants finer than tokio's timer;
//! - [`pipe`]: one proxied connection, two delayed directions.

mod clock;
mod pipe;

use std::fmt;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use self::clock::Clock;
use self::pipe::Link;

/// The first argument that makes this binary a delay proxy instead of the harness.
pub const SUBCOMMAND: &str = "delay-proxy";

/// Connections a proxy process accepts at once, over all its listeners (with
/// [`pipe::QUEUE_CHUNKS`] of [`pipe::CHUNK_BYTES`] a direction: at most 128 MiB queued).
/// The targets open a few dozen per node.
const MAX_CONNECTIONS: usize = 256;

/// A round trip between a server and its Redis nodes: the proxy holds each chunk for half
/// of it, each way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rtt(Duration);

impl Rtt {
    /// Shortest round trip accepted.
    const MIN: Duration = Duration::from_micros(10);
    /// Longest round trip accepted.
    const MAX: Duration = Duration::from_secs(1);

    /// `0.5ms`, `2ms`, `500us` (or `500µs`): from 10 µs to 1 s.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid =
            || format!("round trip {text:?}: expected e.g. 0.5ms or 500us, from 10us to 1000ms");
        let (number, unit) = if let Some(ms) = text.strip_suffix("ms") {
            (ms, 1e-3)
        } else if let Some(us) = text.strip_suffix("us").or(text.strip_suffix("µs")) {
            (us, 1e-6)
        } else {
            return Err(invalid());
        };
        let seconds = number
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(invalid)?
            * unit;
        let rtt = Duration::try_from_secs_f64(seconds).map_err(|_| invalid())?;
        (Self::MIN..=Self::MAX)
            .contains(&rtt)
            .then_some(Self(rtt))
            .ok_or_else(invalid)
    }

    /// The delay each way.
    pub fn one_way(self) -> Duration {
        self.0 / 2
    }

    /// In milliseconds.
    pub fn ms(self) -> f64 {
        self.0.as_nanos() as f64 / 1e6
    }
}

/// `0.5 ms`, `2 ms`.
impl fmt::Display for Rtt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.ms())
    }
}

/// How long a proxy held its chunks (read to written, each way) over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Held {
    /// Chunks forwarded, both ways, all nodes.
    pub chunks: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

impl Held {
    /// The proxy's answer line: `chunks p50_ns p99_ns max_ns`.
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_ascii_whitespace().map(str::parse::<u64>);
        let mut next = || fields.next()?.ok();
        Some(Self {
            chunks: next()?,
            p50: Duration::from_nanos(next()?),
            p99: Duration::from_nanos(next()?),
            max: Duration::from_nanos(next()?),
        })
    }
}

/// The harness's handle on a proxy process; dropping it ends the process.
#[derive(Debug)]
pub struct DelayProxy {
    child: Child,
    /// Closed (dropped) to end the process.
    ask: Option<ChildStdin>,
    answers: BufReader<ChildStdout>,
    urls: Vec<String>,
}

impl DelayProxy {
    /// Starts a proxy process with a listener per node of `nodes`
    /// (`redis://127.0.0.1:PORT`), each delaying by half of `rtt` each way.
    pub fn spawn(rtt: Rtt, nodes: &[String]) -> anyhow::Result<Self> {
        let targets = nodes
            .iter()
            .map(|url| {
                url.strip_prefix("redis://")
                    .and_then(|address| address.parse::<SocketAddr>().ok())
                    .filter(|address| address.ip() == Ipv4Addr::LOCALHOST)
                    .with_context(|| format!("{url}: a delay proxy needs redis://127.0.0.1:PORT"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let program =
            std::env::current_exe().context("cannot find this binary to start a delay proxy")?;
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .arg(rtt.one_way().as_nanos().to_string())
            .args(targets.iter().map(ToString::to_string))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start a delay proxy")?;
        let ask = child.stdin.take();
        let answers = BufReader::new(child.stdout.take().context("the proxy's stdout")?);
        let mut proxy = Self {
            child,
            ask,
            answers,
            urls: Vec::new(),
        };
        for target in &targets {
            let line = proxy
                .answer()
                .with_context(|| format!("the delay proxy's listener for {target}"))?;
            let address: SocketAddr = line
                .parse()
                .with_context(|| format!("the delay proxy said {line:?}, not its address"))?;
            proxy.urls.push(format!("redis://{address}"));
        }
        Ok(proxy)
    }

    /// Where the nodes are reached through the proxy, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The process's id, for its CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How long chunks were held since the last call (or the start).
    pub fn held(&mut self) -> anyhow::Result<Held> {
        let ask = self.ask.as_mut().context("the delay proxy was stopped")?;
        ask.write_all(b"held\n")
            .and_then(|()| ask.flush())
            .context("cannot ask the delay proxy")?;
        let line = self.answer()?;
        Held::parse(&line).with_context(|| format!("the delay proxy answered {line:?}"))
    }

    /// The proxy's next line on stdout.
    fn answer(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let read = self
            .answers
            .read_line(&mut line)
            .context("cannot read from the delay proxy")?;
        anyhow::ensure!(read > 0, "the delay proxy ended (its error is above)");
        Ok(line.trim_end().to_owned())
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Its stdin closing ends it; the kill is for a proxy that does not read it.
        drop(self.ask.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The proxy process: `load delay-proxy ONE_WAY_NS ADDRESS...`. Prints the address of
/// its listener for each target, one a line, then answers `held` lines on stdin with a
/// [`Held`] line until stdin ends.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load {SUBCOMMAND}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let delay = args
        .next()
        .and_then(|ns| ns.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .context("expected the one-way delay in nanoseconds")?;
    let targets = args
        .map(|address| {
            address
                .parse::<SocketAddr>()
                .ok()
                .filter(|a| a.ip() == Ipv4Addr::LOCALHOST)
                .with_context(|| format!("{address:?}: expected 127.0.0.1:PORT"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // A sleeping thread wakes up to its timer slack late (50 µs by default), a fifth of a
    // 0.25 ms delay. A process may set its main thread's slack through /proc; every
    // thread started afterwards inherits it (the clock's too). Best effort: without it,
    // the chunks are held longer, as measured.
    let _ = std::fs::write("/proc/self/timerslack_ns", "1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the proxy's runtime")?;
    let link = Arc::new(Link::new(
        delay,
        Clock::start().context("cannot start the clock")?,
    ));
    let listeners = runtime.block_on(async {
        let mut listeners = Vec::with_capacity(targets.len());
        for &target in &targets {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("cannot bind 127.0.0.1:0")?;
            listeners.push((listener, target));
        }
        anyhow::Ok(listeners)
    })?;
    let mut stdout = std::io::stdout().lock();
    for (listener, _) in &listeners {
        writeln!(stdout, "{}", listener.local_addr()?)?;
    }
    stdout.flush()?;
    let shared = Arc::clone(&link);
    std::thread::Builder::new()
        .name("delay-proxy".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                let mut accepting = tokio::task::JoinSet::new();
                for (listener, target) in listeners {
                    accepting.spawn(accept(
                        listener,
                        target,
                        Arc::clone(&shared),
                        Arc::clone(&limit),
                    ));
                }
                while accepting.join_next().await.is_some() {}
            });
        })
        .context("cannot start the proxy's thread")?;
    for line in std::io::stdin().lines() {
        if line.context("cannot read stdin")?.trim() != "held" {
            continue;
        }
        let mut held = link.held.lock().unwrap_or_else(PoisonError::into_inner);
        writeln!(
            stdout,
            "{} {} {} {}",
            held.len(),
            held.value_at_quantile(0.5),
            held.value_at_quantile(0.99),
            held.max()
        )?;
        held.reset();
        drop(held);
        stdout.flush()?;
    }
    // Stdin ended: the harness is done with this proxy, or gone. Connections still open
    // are dropped with the process.
    std::process::exit(0);
}

/// Accepts connections to `listener` and proxies each to `target`.
async fn accept(listener: TcpListener, target: SocketAddr, link: Arc<Link>, limit: Arc<Semaphore>) {
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((client, _)) => {
                let link = Arc::clone(&link);
                tokio::spawn(async move {
                    // A node that refuses the connection closes the client's: what it
                    // would see without the proxy.
                    let _ = pipe::connection(client, target, &link).await;
                    drop(permit);
                });
            }
            // Out of file descriptors, say: wait for connections to end.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_read_in_milliseconds_or_microseconds() {
        assert_eq!(Rtt::parse("0.5ms"), Ok(Rtt(Duration::from_micros(500))));
        assert_eq!(Rtt::parse(" 2ms"), Ok(Rtt(Duration::from_millis(2))));
        assert_eq!(Rtt::parse("250us"), Ok(Rtt(Duration::from_micros(250))));
        assert_eq!(Rtt::parse("250µs"), Ok(Rtt(Duration::from_micros(250))));
        assert_eq!(
            Rtt::parse("2ms").unwrap().one_way(),
            Duration::from_millis(1)
        );
        assert_eq!(Rtt::parse("0.5ms").unwrap().to_string(), "0.5 ms");
        assert_eq!(Rtt::parse("2ms").unwrap().to_string(), "2 ms");
        for wrong in ["2", "0ms", "5us", "2s", "-1ms", "NaNms", "ms"] {
            assert!(Rtt::parse(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn the_proxys_answer_is_read_as_held_times() {
        assert_eq!(
            Held::parse("42 250000 260000 1000000"),
            Some(Held {
                chunks: 42,
                p50: Duration::from_micros(250),
                p99: Duration::from_micros(260),
                max: Duration::from_millis(1),
            })
        );
        assert_eq!(Held::parse("42 250000"), None);
    }
}
