//! One proxied connection: two directions, each delaying every chunk it reads by the
//! one-way delay before writing it on.
//!
//! Invariants of a direction:
//! - a chunk read at `t` is written at `t + delay` (or later, when the writer is behind
//!   or the machine is slow: the lateness is measured), never earlier;
//! - chunks are written in the order they were read;
//! - reading does not wait for writing: a chunk is queued with its instant and the next
//!   one read at once, so a pipelined client keeps many chunks in flight, as on a real
//!   link, and a request waits for nothing but the delay;
//! - memory is bounded: at most [`QUEUE_CHUNKS`] chunks of at most [`CHUNK_BYTES`] wait in
//!   a direction; past that the reader stops reading, and TCP's flow control pushes back
//!   on the sender.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use super::clock::Clock;

/// Largest chunk read at once.
pub const CHUNK_BYTES: usize = 8 * 1024;
/// Chunks a direction holds at most: with [`CHUNK_BYTES`], 256 KiB a direction. A Redis
/// connection has far fewer in flight (a multiplexed one at 20,000 commands a second and
/// 1 ms each way: about 20).
pub const QUEUE_CHUNKS: usize = 32;

/// What the directions of every connection share.
#[derive(Debug)]
pub struct Link {
    /// How long each chunk is held in each direction: half the round trip.
    pub delay: Duration,
    /// Wakes a direction's writer at its chunk's instant.
    pub clock: Clock,
    /// Each chunk's time from read to write, in nanoseconds, until read and reset
    /// by the harness. A `std::sync::Mutex`: held to record one value, never across an
    /// `.await`.
    pub held: Mutex<Histogram<u64>>,
}

impl Link {
    /// A link delaying by `delay` each way, on `clock`.
    pub fn new(delay: Duration, clock: Clock) -> Self {
        Self {
            delay,
            clock,
            // Up to a minute; longer is recorded as a minute (`saturating_record` does not
            // grow a histogram).
            held: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            ),
        }
    }

    fn record(&self, held: Duration) {
        let mut histogram = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        histogram.saturating_record(u64::try_from(held.as_nanos()).unwrap_or(u64::MAX));
    }
}

/// Proxies `client` to a new connection to `target` until both directions have ended.
pub async fn connection(client: TcpStream, target: SocketAddr, link: &Link) -> std::io::Result<()> {
    let node = TcpStream::connect(target).await?;
    // A chunk goes on the moment its delay is over, not when Nagle's algorithm allows.
    client.set_nodelay(true)?;
    node.set_nodelay(true)?;
    let (from_client, to_client) = client.into_split();
    let (from_node, to_node) = node.into_split();
    tokio::join!(
        direction(from_client, to_node, link),
        direction(from_node, to_client, link)
    );
    Ok(())
}

/// One direction: reads chunks and queues them with the instant they are due, while
/// writing each when due. Ends when the reader sees the end (then the writer sends on
/// what was queued and shuts its side, so the end arrives after the delay too) or
/// either side fails.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: &Link) {
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = Instant::now() + link.delay;
            if queue.send((at, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
    };
    let write = async move {
        // Chunks due by the time the writer wakes go out in one write.
        let mut out = Vec::with_capacity(CHUNK_BYTES);
        let mut next = due.recv().await;
        while let Some((at, chunk)) = next.take() {
            link.clock.sleep_until(at).await;
            let now = Instant::now();
            link.record(now - at + link.delay);
            out.clear();
            out.extend_from_slice(&chunk);
            while let Ok((at, chunk)) = due.try_recv() {
                if at > now {
                    next = Some((at, chunk));
                    break;
                }
                link.record(now - at + link.delay);
                out.extend_from_slice(&chunk);
            }
            if to.write_all(&out).await.is_err() {
                return;
            }
            if next.is_none() {
                next = due.recv().await;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;

    /// An echo server on a free port, and a proxy to it delaying by `delay` each way;
    /// the proxy's address.
    async fn echo_behind_proxy(delay: Duration) -> (SocketAddr, Arc<Link>) {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = proxy.local_addr().unwrap();
        let link = Arc::new(Link::new(delay, Clock::start().unwrap()));
        let shared = Arc::clone(&link);
        tokio::spawn(async move {
            loop {
                let (client, _) = proxy.accept().await.unwrap();
                let link = Arc::clone(&shared);
                tokio::spawn(async move { connection(client, target, &link).await });
            }
        });
        (address, link)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_trip_takes_the_delay_both_ways_and_bytes_come_back_in_order() {
        let delay = Duration::from_millis(5);
        let (address, link) = echo_behind_proxy(delay).await;
        let mut conn = TcpStream::connect(address).await.unwrap();
        conn.set_nodelay(true).unwrap();

        let sent = Instant::now();
        conn.write_all(b"PING\r\n").await.unwrap();
        let mut answer = [0; 6];
        conn.read_exact(&mut answer).await.unwrap();

        assert_eq!(&answer, b"PING\r\n");
        assert!(sent.elapsed() >= delay * 2, "{:?}", sent.elapsed());
        let held = link.held.lock().unwrap();
        assert_eq!(held.len(), 2);
        // Recorded to 3 significant digits.
        assert!(
            held.min() as f64 >= delay.as_nanos() as f64 * 0.999,
            "{}",
            held.min()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_requests_share_one_delay_instead_of_queueing_behind_each_other() {
        let delay = Duration::from_millis(20);
        let (address, _link) = echo_behind_proxy(delay).await;
        let mut conn = TcpStream::connect(address).await.unwrap();
        conn.set_nodelay(true).unwrap();

        // Ten requests written 1 ms apart, each its own chunk, all before the first answer.
        let sent = Instant::now();
        let mut expected = Vec::new();
        for i in 0..10u8 {
            let request = [b'a' + i; 100];
            conn.write_all(&request).await.unwrap();
            expected.extend_from_slice(&request);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut answers = vec![0; expected.len()];
        conn.read_exact(&mut answers).await.unwrap();
        let took = sent.elapsed();

        assert_eq!(answers, expected);
        // One round trip plus the 10 ms of sending; ten round trips would be 400 ms.
        assert!(took >= delay * 2, "{took:?}");
        assert!(took < delay * 2 + Duration::from_millis(150), "{took:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_end_of_the_stream_arrives_after_the_data() {
        let (address, _link) = echo_behind_proxy(Duration::from_millis(2)).await;
        let mut conn = TcpStream::connect(address).await.unwrap();
        conn.write_all(b"last words").await.unwrap();
        conn.shutdown().await.unwrap();

        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();

        assert_eq!(answer, b"last words");
    }
}
