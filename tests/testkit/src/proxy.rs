//! A TCP proxy between the code under test and a node, with faults switchable at runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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
    /// becomes [`Mode::Pass`], or the mode given to [`FaultProxy::set_mode_then`].
    DropReplies(usize),
    /// Like [`Mode::DropReplies`], but only request events whose bytes contain the needle
    /// count, e.g. `b"EVALSHA"` to lose the reply of a script call and not of the `PING` a
    /// connection pool sends first.
    DropRepliesMatching(usize, Vec<u8>),
    /// The node is unreachable: every client connection is closed at once, new ones as soon
    /// as they are accepted, without contacting the node (a connection still waiting for a
    /// reply it must drop finishes that first). Clients see their commands fail at once,
    /// as when the node's port refuses connections.
    Refuse,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// The mode a `DropReplies*` mode turns into once its count is used up.
    after_drops: Mutex<Mode>,
    dropped: AtomicUsize,
    discarded: AtomicUsize,
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
                *mode = self
                    .after_drops
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
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
            after_drops: Mutex::new(Mode::Pass),
            dropped: AtomicUsize::new(0),
            discarded: AtomicUsize::new(0),
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

    /// Switches the mode; applies at once to existing and new connections. A
    /// `DropReplies*` mode becomes [`Mode::Pass`] once its count is used up.
    pub fn set_mode(&self, mode: Mode) {
        self.set_mode_then(mode, Mode::Pass);
    }

    /// Like [`FaultProxy::set_mode`], but a `DropReplies*` `mode` becomes `after_drops`
    /// (instead of [`Mode::Pass`]) the moment its last reply is condemned, so that no other
    /// request slips through in between: e.g. lose a batch's reply, then make the node
    /// unreachable until the test says otherwise.
    pub fn set_mode_then(&self, mode: Mode, after_drops: Mode) {
        *self
            .shared
            .after_drops
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = after_drops;
        self.shared.mode.send_replace(mode);
    }

    /// The current mode (a `DropReplies*` mode counts down, then reads as [`Mode::Pass`]).
    pub fn mode(&self) -> Mode {
        self.shared.mode.borrow().clone()
    }

    /// How many replies the proxy has condemned so far: requests forwarded whose reply it
    /// will discard. The node may not have answered yet; see
    /// [`FaultProxy::replies_discarded`].
    pub fn replies_dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// How many condemned replies the node has sent and the proxy has thrown away, closing
    /// the client's connection: each such request was executed by the node, and its
    /// client never heard the answer.
    pub fn replies_discarded(&self) -> usize {
        self.shared.discarded.load(Ordering::SeqCst)
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
    if *mode.borrow() == Mode::Refuse {
        return; // Dropping the client socket closes it before anything reached the node.
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
        if !losing_reply && *mode.borrow() == Mode::Refuse {
            return;
        }
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
                    shared.discarded.fetch_add(1, Ordering::SeqCst);
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
            after_drops: Mutex::new(Mode::Pass),
            dropped: AtomicUsize::new(0),
            discarded: AtomicUsize::new(0),
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
    fn drop_replies_turns_into_the_mode_after_drops() {
        let shared = shared(Mode::DropReplies(1));
        *shared.after_drops.lock().unwrap() = Mode::Refuse;
        assert!(shared.take_event(b"PING"));
        assert_eq!(*shared.mode.borrow(), Mode::Refuse);
        assert!(!shared.take_event(b"PING"));
    }

    #[test]
    fn drop_replies_matching_ignores_other_requests() {
        let shared = shared(Mode::DropRepliesMatching(1, b"EVALSHA".to_vec()));
        assert!(!shared.take_event(b"*1\r\n$4\r\nPING\r\n"));
        assert!(shared.take_event(b"*3\r\n$7\r\nEVALSHA\r\n"));
        assert_eq!(*shared.mode.borrow(), Mode::Pass);
    }
}
