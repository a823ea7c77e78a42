//! A bare HTTP/1.1 client on one keep-alive connection, for load and for requests no
//! ordinary client will send (raw control bytes, invalid UTF-8, unknown methods, huge
//! headers).
//!
//! It writes requests and reads `Content-Length` or chunked bodies and does nothing else,
//! so in a debug build the server, not the client, is what a test spends its time on (about
//! three times the request rate of reqwest on the same machine).

use std::fmt;
use std::io;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Longest status line or header line accepted from a server.
const MAX_LINE: usize = 64 * 1024;

/// Largest body accepted from a server.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Why an exchange failed, and what that says about the request's fate.
#[derive(Debug)]
#[non_exhaustive]
pub enum HttpError {
    /// The connection could not be opened: nothing was sent, so the request certainly had
    /// no effect.
    Connect(io::Error),
    /// Writing or reading failed after the connection was open (reset, closed, broken
    /// pipe): the server may or may not have acted on the request.
    Io(io::Error),
    /// The server answered something that is not HTTP/1.1 as this client reads it.
    Malformed(String),
}

impl HttpError {
    /// Whether the request certainly never reached the server.
    pub fn unsent(&self) -> bool {
        matches!(self, Self::Connect(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Io(e) => write!(f, "connection failed mid-exchange: {e}"),
            Self::Malformed(what) => write!(f, "malformed response: {what}"),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Io(e) => Some(e),
            Self::Malformed(_) => None,
        }
    }
}

/// One response, read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercased) and values, in order received.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A keep-alive HTTP/1.1 connection to one server.
#[derive(Debug)]
pub struct HttpConnection {
    stream: BufReader<TcpStream>,
    host: String,
    /// Set once the server said `Connection: close` or the exchange failed.
    broken: bool,
}

impl HttpConnection {
    /// Connects to `address` (`host:port`, no scheme).
    ///
    /// # Errors
    ///
    /// [`HttpError::Connect`] when the connection cannot be opened.
    pub async fn connect(address: &str) -> Result<Self, HttpError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(HttpError::Connect)?;
        stream.set_nodelay(true).map_err(HttpError::Connect)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: address.to_owned(),
            broken: false,
        })
    }

    /// Whether the connection can carry another request (the server did not close it and
    /// no exchange failed on it).
    pub fn reusable(&self) -> bool {
        !self.broken
    }

    /// Sends `method target` with an empty body and reads the response.
    ///
    /// # Errors
    ///
    /// [`HttpError::Io`] when the connection fails (the request may or may not have been
    /// acted on); [`HttpError::Malformed`] for an answer that is not HTTP.
    pub async fn send(&mut self, method: &str, target: &str) -> Result<HttpResponse, HttpError> {
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
            self.host
        );
        self.send_raw(request.as_bytes()).await
    }

    /// Writes `request` as given (it must be one complete request) and reads the response.
    ///
    /// # Errors
    ///
    /// As [`HttpConnection::send`].
    pub async fn send_raw(&mut self, request: &[u8]) -> Result<HttpResponse, HttpError> {
        let result = self.exchange(request).await;
        match &result {
            Ok(response) if !response.closes() => {}
            _ => self.broken = true,
        }
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<HttpResponse, HttpError> {
        self.stream
            .get_mut()
            .write_all(request)
            .await
            .map_err(HttpError::Io)?;
        let status_line = self.line().await?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split(' ').nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| HttpError::Malformed(format!("header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.chunked_body().await?;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| HttpError::Malformed(format!("content-length {length:?}")))?;
            let mut body = vec![0; length];
            self.stream
                .read_exact(&mut body)
                .await
                .map_err(HttpError::Io)?;
            response.body = body;
        } else if response.closes() {
            self.stream
                .read_to_end(&mut response.body)
                .await
                .map_err(HttpError::Io)?;
        }
        Ok(response)
    }

    async fn chunked_body(&mut self) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .ok()
                .filter(|n| body.len() + n <= MAX_BODY)
                .ok_or_else(|| HttpError::Malformed(format!("chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream
                .read_exact(&mut body[start..])
                .await
                .map_err(HttpError::Io)?;
            if !self.line().await?.is_empty() {
                return Err(HttpError::Malformed("no CRLF after a chunk".into()));
            }
        }
    }

    /// One line without its CRLF; end of stream is an I/O error (the server hung up).
    async fn line(&mut self) -> Result<String, HttpError> {
        let mut bytes = Vec::new();
        let read = (&mut self.stream)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut bytes)
            .await
            .map_err(HttpError::Io)?;
        if read == 0 {
            return Err(HttpError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        if bytes.last() != Some(&b'\n') {
            return Err(HttpError::Malformed("line too long or cut short".into()));
        }
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Opens a connection, sends one raw request and reads the answer: for requests that may
/// leave the connection unusable (malformed ones).
///
/// # Errors
///
/// As [`HttpConnection::connect`] and [`HttpConnection::send_raw`].
pub async fn send_once(address: &str, request: &[u8]) -> Result<HttpResponse, HttpError> {
    HttpConnection::connect(address)
        .await?
        .send_raw(request)
        .await
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A one-connection server that answers every request with the given bytes.
    async fn canned(answers: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            for answer in answers {
                let _ = socket.read(&mut buf).await.unwrap();
                socket.write_all(answer).await.unwrap();
            }
        });
        address
    }

    #[tokio::test]
    async fn reads_length_and_chunked_bodies_on_one_connection() {
        let address = canned(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ])
        .await;
        let mut conn = HttpConnection::connect(&address).await.unwrap();
        let first = conn.send("GET", "/").await.unwrap();
        assert_eq!((first.status, first.text().as_str()), (200, "hi"));
        assert_eq!(first.header("x-a"), Some("b"));
        let second = conn.send("GET", "/x").await.unwrap();
        assert_eq!((second.status, second.text().as_str()), (404, "abcde"));
        assert!(conn.reusable());
    }

    #[tokio::test]
    async fn a_closed_connection_is_an_io_error_and_a_refused_one_unsent() {
        let address = canned(vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbye"]).await;
        let mut conn = HttpConnection::connect(&address).await.unwrap();
        let response = conn.send("GET", "/").await.unwrap();
        assert_eq!(response.text(), "bye");
        assert!(!conn.reusable());
        let err = conn.send("GET", "/").await.unwrap_err();
        assert!(matches!(err, HttpError::Io(_)), "{err}");
        assert!(!err.unsent());

        let port = crate::free_port().unwrap();
        let err = HttpConnection::connect(&format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(err.unsent(), "{err}");
    }
}
