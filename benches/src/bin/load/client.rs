//! The harness's own load client: raw HTTP/1.1 over keep-alive TCP connections on tokio,
//! one task per connection, latencies in an HDR histogram.
//!
//! Why not the test kit's `run_load` (reqwest): on this machine the client shares two cores
//! with the server under test and three redis-servers, so every cycle the client spends is
//! taken from the server and lowers the figure being measured. reqwest (over hyper) pays
//! per request for a pooled-connection checkout, a header map, a body stream, a timeout
//! timer and a `String` per URL; the test kit also keeps a score per key behind a mutex,
//! which it needs for exactness checks and we do not. Here a request is formatted into a
//! reused buffer and written with one `write`; a response is read into a reused buffer and
//! parsed in place (status line, `Content-Length`, `Connection`), with no allocation per
//! request. The client's own CPU use is measured and printed beside every figure, and
//! `load --compare-clients` drives the floor with both: on the 2-core machine of issue 9
//! reqwest spent about 41 µs of client CPU per request against 10 µs here, and the floor
//! then reached a third of the rate it reaches with this client.
//!
//! Two ways to drive the connections:
//! - closed loop ([`Pace::Max`]): each connection sends its next request as soon as the
//!   previous answer is in: the maximum rate, and the latency under that saturation;
//! - paced ([`Pace::Rate`]): each connection has a fixed schedule so all of them together
//!   offer a given rate whatever the server does (open loop, as wrk2). A request whose
//!   connection was still busy at its scheduled time is timed from that time, so a
//!   stalled server shows in the latency instead of silently lowering the rate
//!   (coordinated omission); a request sent late only because tokio's timer has a 1 ms
//!   resolution is timed from when it was actually sent.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest response head plus body accepted; the servers under test answer well under 1 KiB.
const MAX_RESPONSE: usize = 1 << 20;

/// Which requests a phase sends.
#[derive(Clone, Debug)]
pub struct Workload {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// How each request's path is chosen.
    pub paths: Paths,
    /// The body of every request; `None`: a `POST` goes with an empty one.
    pub body: Option<Body>,
    /// A number every 2xx answer's JSON must carry, checked in place.
    pub expect: Option<Expect>,
}

/// A request body, the same for every request of a phase (built once, shared by the
/// connections).
#[derive(Clone, Debug)]
pub struct Body {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The bytes sent.
    pub bytes: Arc<[u8]>,
}

/// What a 2xx answer must say: its JSON body holds `"{field}":{value}`. Read from the
/// body in place, without parsing the JSON: tally-server writes its answers compactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The field's name, e.g. `recorded`.
    pub field: &'static str,
    /// Its value.
    pub value: u64,
}

impl Expect {
    /// Whether `body` holds the field with the value.
    fn met_by(self, body: &[u8]) -> bool {
        let field = self.field.as_bytes();
        // `"field":` then the digits.
        let key_len = field.len() + 3;
        let Some(at) = body.windows(key_len).position(|w| {
            w[0] == b'"' && &w[1..=field.len()] == field && &w[field.len() + 1..] == b"\":"
        }) else {
            return false;
        };
        let digits = &body[at + key_len..];
        let end = digits
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(digits.len());
        std::str::from_utf8(&digits[..end])
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            == Some(self.value)
    }
}

/// How a request's path is chosen.
#[derive(Clone, Debug)]
pub enum Paths {
    /// Always this path.
    Fixed(&'static str),
    /// `{prefix}{n}`, `n` drawn uniformly from `0..count` for every request.
    Numbered {
        /// The path up to the number, e.g. `/api/v1/counter/visit/page`.
        prefix: &'static str,
        /// How many distinct numbers.
        count: u64,
    },
}

impl Workload {
    /// Formats one request into `buf` (cleared first): request line, then `tail` (the
    /// headers, the same for every request of a connection).
    fn write_request(&self, tail: &[u8], rng: &mut Rng, buf: &mut Vec<u8>) {
        buf.clear();
        buf.extend_from_slice(self.method.as_bytes());
        buf.push(b' ');
        match &self.paths {
            Paths::Fixed(path) => buf.extend_from_slice(path.as_bytes()),
            Paths::Numbered { prefix, count } => {
                buf.extend_from_slice(prefix.as_bytes());
                push_decimal(buf, rng.below(*count));
            }
        }
        buf.extend_from_slice(tail);
    }

    /// Everything after the path: protocol, headers and the body, if any; a `POST`
    /// without one says `Content-Length: 0`.
    fn tail(&self, addr: SocketAddr) -> Vec<u8> {
        let mut tail = format!(" HTTP/1.1\r\nHost: {addr}\r\n");
        match &self.body {
            Some(body) => {
                tail += &format!(
                    "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
                    body.content_type,
                    body.bytes.len()
                );
            }
            None if self.method == "GET" => tail += "\r\n",
            None => tail += "Content-Length: 0\r\n\r\n",
        }
        let mut tail = tail.into_bytes();
        if let Some(body) = &self.body {
            tail.extend_from_slice(&body.bytes);
        }
        tail
    }
}

/// Appends `n` in decimal, without going through `fmt`.
fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// xorshift64*: plenty for spreading requests over keys, and a few instructions each.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // Never zero (xorshift's fixed point); distinct seeds stay distinct.
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is negligible for our `n`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// One keep-alive connection with its reused buffers.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    request: Vec<u8>,
    response: Vec<u8>,
    rng: Rng,
    /// The server said `Connection: close`: reconnect before the next request.
    closing: bool,
}

impl Conn {
    /// Connects to `addr` (loopback) with Nagle off; `seed` picks this connection's keys.
    pub async fn connect(addr: SocketAddr, seed: u64) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            addr,
            request: Vec::with_capacity(256),
            response: vec![0; 4096],
            rng: Rng::new(seed),
            closing: false,
        })
    }

    /// Sends one request and reads its answer: a 2xx that says what `workload` expects
    /// (or with nothing expected), another 2xx, or another status.
    async fn exchange(&mut self, workload: &Workload, tail: &[u8]) -> io::Result<Verdict> {
        workload.write_request(tail, &mut self.rng, &mut self.request);
        self.stream.write_all(&self.request).await?;
        let (status, body) = self.read_response().await?;
        Ok(if !(200..300).contains(&status) {
            Verdict::Non2xx
        } else if workload
            .expect
            .is_some_and(|expect| !expect.met_by(&self.response[body]))
        {
            Verdict::Unexpected
        } else {
            Verdict::Ok
        })
    }

    /// Reads one answer: its status, and where its body is in `self.response`.
    async fn read_response(&mut self) -> io::Result<(u16, std::ops::Range<usize>)> {
        let mut filled = 0;
        let head = loop {
            filled += self.read_more(filled).await?;
            if let Some(head) = parse_head(&self.response[..filled])? {
                break head;
            }
        };
        let total = head.len + head.content_length;
        if total > MAX_RESPONSE {
            return Err(protocol("response larger than 1 MiB"));
        }
        while filled < total {
            filled += self.read_more(filled).await?;
        }
        if filled > total {
            // One request in flight per connection: nothing may follow the answer.
            return Err(protocol("bytes after the response"));
        }
        self.closing = head.close;
        Ok((head.status, head.len..total))
    }

    /// Reads at least one byte after the first `filled`, growing the buffer when full.
    async fn read_more(&mut self, filled: usize) -> io::Result<usize> {
        if filled == self.response.len() {
            if filled >= MAX_RESPONSE {
                return Err(protocol("response larger than 1 MiB"));
            }
            self.response.resize(filled * 2, 0);
        }
        match self.stream.read(&mut self.response[filled..]).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            n => Ok(n),
        }
    }
}

fn protocol(message: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// How an answer is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// A 2xx saying what was expected.
    Ok,
    /// Another status.
    Non2xx,
    /// A 2xx not saying what was expected.
    Unexpected,
}

/// What the client needs from a response head.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    content_length: usize,
    close: bool,
}

/// Parses a complete response head at the start of `bytes`; `None` while incomplete.
fn parse_head(bytes: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let mut lines = bytes[..end].split(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r").unwrap_or(line) // every line but the last ends in \r
    });
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| protocol("not an HTTP/1.1 status line"))?;
    let (mut content_length, mut close) = (None, false);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(protocol("a header line without a colon"));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(protocol("chunked responses are not supported"));
        }
    }
    let content_length = match (content_length, status) {
        (Some(n), _) => n,
        (None, 204 | 304) => 0,
        (None, _) => return Err(protocol("a response without Content-Length")),
    };
    Ok(Some(Head {
        status,
        len: end + 4,
        content_length,
        close,
    }))
}

/// How fast a phase sends.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Closed loop: each connection sends again as soon as it has its answer.
    Max,
    /// Open loop: this many requests per second over all connections, on a fixed schedule.
    Rate(f64),
}

/// One timed phase: which requests, how fast, until when.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The requests.
    pub workload: Workload,
    /// The rate.
    pub pace: Pace,
    /// How long requests are started for.
    pub duration: Duration,
    /// How long requests started before the end get to finish; past it they count as
    /// unfinished and their connections are dropped.
    pub grace: Duration,
}

/// What a phase measured.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Latency of every answered request, in nanoseconds.
    pub latency: Histogram<u64>,
    /// 2xx answers.
    pub ok: u64,
    /// Other answers.
    pub non_2xx: u64,
    /// 2xx answers whose body did not say what the workload expects
    /// ([`Workload::expect`]): a fault of the server, which fails the run.
    pub unexpected: u64,
    /// Requests that failed (connection error, malformed answer).
    pub errors: u64,
    /// Requests still without an answer at the end of the grace period.
    pub unfinished: u64,
    /// From the phase's start to its last answer.
    pub elapsed: Duration,
    /// The slowest answer (ns) of each [`TIMELINE_BUCKET`] of the phase, by answer time:
    /// shows whether the tail is a few stalls (and when) or spread out.
    pub timeline: Vec<u64>,
}

/// Width of a [`Outcome::timeline`] bucket.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(100);

impl Outcome {
    fn new() -> Self {
        Self {
            // 1 µs to 100 s, 3 significant digits.
            latency: Histogram::new_with_bounds(1_000, 100_000_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            non_2xx: 0,
            unexpected: 0,
            errors: 0,
            unfinished: 0,
            elapsed: Duration::ZERO,
            timeline: Vec::new(),
        }
    }

    /// Counts an answer by its verdict, its latency from `sent`, and the phase (begun at
    /// `start`) as lasting at least until it came.
    fn record(&mut self, start: Instant, sent: Instant, answered: Instant, verdict: Verdict) {
        match verdict {
            Verdict::Ok => self.ok += 1,
            Verdict::Non2xx => self.non_2xx += 1,
            Verdict::Unexpected => self.unexpected += 1,
        }
        let since_start = answered - start;
        self.elapsed = since_start;
        let nanos = u64::try_from((answered - sent).as_nanos()).unwrap_or(u64::MAX);
        self.latency.saturating_record(nanos);
        let bucket = (since_start.as_nanos() / TIMELINE_BUCKET.as_nanos()) as usize;
        if bucket >= self.timeline.len() {
            self.timeline.resize(bucket + 1, 0);
        }
        self.timeline[bucket] = self.timeline[bucket].max(nanos);
    }

    fn merge(&mut self, other: &Outcome) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds");
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        self.unfinished += other.unfinished;
        self.elapsed = self.elapsed.max(other.elapsed);
        if other.timeline.len() > self.timeline.len() {
            self.timeline.resize(other.timeline.len(), 0);
        }
        for (mine, theirs) in self.timeline.iter_mut().zip(&other.timeline) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// Answers of any status.
    pub fn answered(&self) -> u64 {
        self.ok + self.non_2xx + self.unexpected
    }

    /// Answers per second.
    pub fn throughput(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.answered() as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// Latency at quantile `q` (0..=1), in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e6
    }
}

/// Opens `count` connections to `addr`; connection `i` gets seed `i`.
pub async fn connect_all(addr: SocketAddr, count: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        conns.push(Conn::connect(addr, i as u64 + 1).await?);
    }
    Ok(conns)
}

/// Runs `phase` over `conns` (one task each, on the current runtime) and gives back the
/// connections still usable, with what was measured. Connections that failed are
/// reopened on the way; ones that could not be are left out.
pub async fn drive(conns: Vec<Conn>, phase: &Phase) -> (Vec<Conn>, Outcome) {
    let count = conns.len();
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let phase = phase.clone();
            tokio::spawn(async move { run_connection(conn, &phase, start, i, count).await })
        })
        .collect();
    let mut kept = Vec::with_capacity(count);
    let mut total = Outcome::new();
    for task in tasks {
        // A task never outlives the grace period; a panic is a bug worth seeing.
        let (conn, outcome) = task.await.expect("a load task panicked");
        kept.extend(conn);
        total.merge(&outcome);
    }
    (kept, total)
}

/// One connection's share of a phase.
async fn run_connection(
    mut conn: Conn,
    phase: &Phase,
    start: Instant,
    index: usize,
    count: usize,
) -> (Option<Conn>, Outcome) {
    let mut outcome = Outcome::new();
    let end = start + phase.duration;
    let hard_stop = tokio::time::sleep_until((end + phase.grace).into());
    tokio::pin!(hard_stop);
    let tail = phase.workload.tail(conn.addr);
    let addr = conn.addr;
    let seed = conn.rng.next();
    // Paced: this connection's requests are `interval` apart, connections evenly staggered.
    let interval = match phase.pace {
        Pace::Max => None,
        Pace::Rate(rate) => Some(Duration::from_secs_f64(count as f64 / rate.max(1e-3))),
    };
    let mut scheduled =
        start + interval.map_or(Duration::ZERO, |i| i * index as u32 / count as u32);
    let mut last_answer = start;
    loop {
        let mut sent_at = Instant::now();
        if let Some(interval) = interval {
            if scheduled >= end {
                break;
            }
            if sent_at < scheduled {
                tokio::select! {
                    biased;
                    () = &mut hard_stop => break,
                    () = tokio::time::sleep_until(scheduled.into()) => {}
                }
                sent_at = Instant::now();
            }
            // Busy at its scheduled time: the wait is the server's doing and counts.
            if last_answer > scheduled {
                sent_at = scheduled;
            }
            scheduled += interval;
        } else if sent_at >= end {
            break;
        }
        if conn.closing {
            match reconnect(addr, seed, end, &mut hard_stop).await {
                Some(fresh) => conn = fresh,
                None => return (None, finish(outcome, start)),
            }
        }
        let result = tokio::select! {
            biased;
            result = conn.exchange(&phase.workload, &tail) => result,
            () = &mut hard_stop => {
                // The connection holds a half-finished exchange: not reusable.
                outcome.unfinished += 1;
                return (None, finish(outcome, start));
            }
        };
        let answered = Instant::now();
        match result {
            Ok(verdict) => {
                last_answer = answered;
                outcome.record(start, sent_at, answered, verdict);
            }
            Err(_) => {
                outcome.errors += 1;
                match reconnect(addr, seed, end, &mut hard_stop).await {
                    Some(fresh) => conn = fresh,
                    None => return (None, finish(outcome, start)),
                }
            }
        }
    }
    (Some(conn), outcome)
}

fn finish(mut outcome: Outcome, start: Instant) -> Outcome {
    if outcome.elapsed.is_zero() {
        outcome.elapsed = start.elapsed();
    }
    outcome
}

/// Reopens a connection, retrying every 10 ms until `end` (or the hard stop).
async fn reconnect(
    addr: SocketAddr,
    seed: u64,
    end: Instant,
    hard_stop: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) -> Option<Conn> {
    while Instant::now() < end {
        tokio::select! {
            biased;
            () = &mut *hard_stop => return None,
            result = Conn::connect(addr, seed) => {
                if let Ok(conn) = result {
                    return Some(conn);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// The same closed loop as [`drive`] with [`Pace::Max`], through reqwest (a shared
/// `Client` keeping `connections` idle connections): only for `--compare-clients`, to
/// measure what this module saves on the floor's empty POSTs (a workload's body and
/// expectation are not used). Counts answers; latency is not kept.
pub async fn drive_reqwest(
    addr: SocketAddr,
    connections: usize,
    workload: &Workload,
    duration: Duration,
) -> Outcome {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .expect("a reqwest client with default settings");
    let method = reqwest::Method::from_bytes(workload.method.as_bytes()).expect("a method");
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (client, method, workload) = (client.clone(), method.clone(), workload.clone());
            tokio::spawn(async move {
                let mut outcome = Outcome::new();
                let mut rng = Rng::new(i as u64 + 1);
                let mut path = Vec::new();
                while Instant::now() < end {
                    workload.write_request(b"", &mut rng, &mut path);
                    let path = std::str::from_utf8(&path[workload.method.len() + 1..])
                        .expect("ASCII paths");
                    let sent = Instant::now();
                    let answer = client
                        .request(method.clone(), format!("http://{addr}{path}"))
                        .send()
                        .await;
                    match answer {
                        Ok(response) => {
                            let verdict = if response.status().is_success() {
                                Verdict::Ok
                            } else {
                                Verdict::Non2xx
                            };
                            if response.bytes().await.is_err() {
                                outcome.errors += 1;
                                continue;
                            }
                            outcome.record(start, sent, Instant::now(), verdict);
                        }
                        Err(_) => outcome.errors += 1,
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = Outcome::new();
    for task in tasks {
        total.merge(&task.await.expect("a reqwest load task panicked"));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_head_is_parsed() {
        let bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-Process-Time: 0.1\r\n\r\nhello";
        let head = parse_head(bytes).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                status: 200,
                len: bytes.len() - 5,
                content_length: 5,
                close: false
            }
        );
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-len").unwrap(), None);
    }

    #[test]
    fn connection_close_and_missing_length_are_seen() {
        let head = parse_head(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(head.close);
        assert_eq!(head.status, 503);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
    }

    #[test]
    fn requests_are_formatted_in_place() {
        let workload = Workload {
            method: "POST",
            paths: Paths::Numbered {
                prefix: "/v/page",
                count: 10,
            },
            body: None,
            expect: None,
        };
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (mut rng, mut buf) = (Rng::new(1), Vec::new());
        workload.write_request(&workload.tail(addr), &mut rng, &mut buf);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("POST /v/page"), "{text}");
        assert!(
            text.ends_with(" HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 0\r\n\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_body_goes_after_its_type_and_length() {
        let workload = Workload {
            method: "POST",
            paths: Paths::Fixed("/v"),
            body: Some(Body {
                content_type: "application/json",
                bytes: Arc::from(&b"{\"a\":1}"[..]),
            }),
            expect: None,
        };
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let (mut rng, mut buf) = (Rng::new(1), Vec::new());
        workload.write_request(&workload.tail(addr), &mut rng, &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "POST /v HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn an_answer_must_carry_the_expected_number() {
        let expect = Expect {
            field: "recorded",
            value: 100,
        };
        assert!(expect.met_by(br#"{"status":"success","recorded":100,"pages":100}"#));
        assert!(!expect.met_by(br#"{"status":"success","recorded":1000,"pages":100}"#));
        assert!(!expect.met_by(br#"{"status":"success","recorded":99,"pages":100}"#));
        assert!(!expect.met_by(br#"{"status":"success","pages":100}"#));
        assert!(!expect.met_by(br#"{"status":"success","recorded":"#));
    }

    #[test]
    fn decimals_and_draws() {
        let mut buf = Vec::new();
        push_decimal(&mut buf, 0);
        push_decimal(&mut buf, 1_000_007);
        assert_eq!(buf, b"01000007");
        let mut rng = Rng::new(7);
        let mut seen = [false; 100];
        for _ in 0..10_000 {
            seen[rng.below(100) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
