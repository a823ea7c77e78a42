//! A TCP proxy between the code under test and a node, with faults switchable at runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Result};

/// Longest wait, after closing the node side of a connection whose reply was dropped, for
/// the node to close its end. Draining until then makes the close a clean FIN.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// What a [`FaultProxy`] does with the traffic of its connections.
///
/// A *request event* below is one chunk of bytes the proxy reads from a client socket:
/// normally one command, or one pipeline, as the client wrote it. A large command can
/// arrive in several chunks; only the first counts (it holds the command name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways unchanged.
    Pass,
    /// A network partition: the proxy stops moving bytes in either direction, on every
    /// connection. New connections are accepted and held without contacting the node.
    /// Nothing is discarded: bytes wait in socket buffers and flow once the mode changes
    /// again, as after a healed partition. Clients see their commands time out.
    BlackHole,
    /// Lose replies: the next `n` request events (on any connection) are forwarded to the
    /// node; for each, the proxy waits for the node's first reply bytes (so the node has
    /// executed the request), discards them, and closes that client connection. The client
    /// never hears the answer of a request the node applied, nor of anything else in flight
    /// on that connection. The proxy keeps forwarding the rest of the request while it
    /// waits, and lets the node see a clean end of stream. After `n` events the mode
    /// becomes [`Mode::Pass`].
    DropReplies(usize),
    /// Like [`Mode::DropReplies`], but only request events whose bytes contain the needle
    /// count, e.g. `b"EVALSHA"` to lose the reply of a script call and not of the `PING` a
    /// connection pool sends first.
    DropRepliesMatching(usize, Vec<u8>),
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    dropped: AtomicUsize,
    accepted: AtomicUsize,
}

impl Shared {
    /// Counts a request event against a `DropReplies*` mode; true if its reply must be lost.
    fn take_event(&self, chunk: &[u8]) -> bool {
        let mut hit = false;
        self.mode.send_if_modified(|mode| {
            let remaining = match mode {
                Mode::DropReplies(n) if *n > 0 => n,
                Mode::DropRepliesMatching(n, needle) if *n > 0 && contains(chunk, needle) => n,
                _ => return false,
            };
            *remaining -= 1;
            if *remaining == 0 {
                *mode = Mode::Pass;
            }
            hit = true;
            true
        });
        if hit {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// A TCP proxy from a free `127.0.0.1` port to one target address, for fault injection.
///
/// Point the code under test at [`FaultProxy::url`] instead of the node, then switch
/// [`Mode`]s with [`FaultProxy::set_mode`] while it runs. Dropping the proxy stops it and
/// closes every connection it holds. Needs a tokio runtime.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free `127.0.0.1` port and forwards to `target`, in [`Mode::Pass`].
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if no listening socket can be made.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| Error::io("cannot bind the fault proxy to 127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the fault proxy's address", e))?;
        let shared = Arc::new(Shared {
            target,
            mode: watch::Sender::new(Mode::Pass),
            dropped: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:port` of the proxy, without credentials.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Switches the mode; applies at once to existing and new connections.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current mode (a `DropReplies*` mode counts down, then reads as [`Mode::Pass`]).
    pub fn mode(&self) -> Mode {
        self.shared.mode.borrow().clone()
    }

    /// How many replies the proxy has dropped so far.
    pub fn replies_dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// How many client connections the proxy has accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet), so aborting it drops them
        // all and closes their sockets.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve(client, Arc::clone(&shared)));
                }
                // E.g. EMFILE: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Moves the bytes of one client connection, obeying the mode.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    // A black hole holds new connections before they reach the node.
    if mode.wait_for(|m| *m != Mode::BlackHole).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(shared.target).await else {
        return; // Dropping the client socket tells the client the node is unreachable.
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut client_buf = vec![0_u8; 64 * 1024];
    let mut server_buf = vec![0_u8; 64 * 1024];
    let mut client_open = true;
    // Set once a request event of this connection had its reply condemned.
    let mut losing_reply = false;
    loop {
        if *mode.borrow_and_update() == Mode::BlackHole {
            if mode.wait_for(|m| *m != Mode::BlackHole).await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            read = client_rx.read(&mut client_buf), if client_open => match read {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = server_tx.shutdown().await;
                }
                Ok(n) => {
                    let chunk = &client_buf[..n];
                    if !losing_reply && shared.take_event(chunk) {
                        losing_reply = true;
                    }
                    if server_tx.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            },
            read = server_rx.read(&mut server_buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) if losing_reply => {
                    // The node has answered, so it executed the request: discard the answer
                    // and hang up on the client.
                    drop((client_rx, client_tx));
                    let _ = server_tx.shutdown().await;
                    let drain = async {
                        while let Ok(n) = server_rx.read(&mut server_buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(DRAIN_WAIT, drain).await;
                    return;
                }
                Ok(n) => {
                    if client_tx.write_all(&server_buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_finds_a_needle_anywhere() {
        assert!(contains(b"*3\r\n$7\r\nEVALSHA\r\n", b"EVALSHA"));
        assert!(!contains(b"*1\r\n$4\r\nPING\r\n", b"EVALSHA"));
        assert!(contains(b"abc", b""));
    }

    fn shared(mode: Mode) -> Shared {
        Shared {
            target: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            mode: watch::Sender::new(mode),
            dropped: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
        }
    }

    #[test]
    fn drop_replies_counts_down_then_passes() {
        let shared = shared(Mode::DropReplies(2));
        assert!(shared.take_event(b"PING"));
        assert_eq!(*shared.mode.borrow(), Mode::DropReplies(1));
        assert!(shared.take_event(b"GET"));
        assert_eq!(*shared.mode.borrow(), Mode::Pass);
        assert!(!shared.take_event(b"GET"));
        assert_eq!(shared.dropped.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn drop_replies_matching_ignores_other_requests() {
        let shared = shared(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));
        assert!(!shared.take_event(b"*1\r\n$4\r\nPING\r\n"));
        assert!(shared.take_event(b"*3\r\n$7\r\nEVALSHA\r\n"));
        assert_eq!(*shared.mode.borrow(), Mode::Pass);
    }
}
