//! A lean HTTP/1.1 keep-alive client for load generation: one connection per client task, one
//! request in flight on it, the response read by its `Content-Length` (httparse reads the head).
//!
//! Why not reqwest here: the load generator shares the machine's 2 cores with the server it
//! measures. reqwest hands every request to a connection task over a channel, keeps a pool and
//! parses the URL each time; on this machine that cost about as much CPU as portbot spent on an
//! API call, and every microsecond the generator spends is taken from the server. This is what
//! load tools such as wrk do instead: a prepared request written to a socket that stays open.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest response head this client accepts.
const MAX_HEAD: usize = 16 * 1024;

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    /// Bytes read and not yet consumed (a response may arrive in pieces).
    buf: Vec<u8>,
    request: Vec<u8>,
}

/// A response: its status and body.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: Vec::with_capacity(4096),
            request: Vec::with_capacity(512),
        })
    }

    /// Sends `method path` with `headers` (each `name: value`, no line end) and `body`, and
    /// reads the response. On an I/O error the connection is opened again for the next call.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Result<Response, String> {
        use std::io::Write as _;
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        )
        .expect("writing to a Vec");
        for header in headers {
            self.request.extend_from_slice(header.as_bytes());
            self.request.extend_from_slice(b"\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        let result = self.exchange().await;
        if result.is_err() {
            if let Ok(fresh) = Conn::connect(self.addr).await {
                *self = fresh;
            }
        }
        result
    }

    /// Writes the prepared request and reads its response.
    async fn exchange(&mut self) -> Result<Response, String> {
        self.stream
            .write_all(&self.request)
            .await
            .map_err(|e| format!("write: {e}"))?;

        let (status, head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .ok_or("the response has no content-length")?;
                    break (status, head_len, length);
                }
                Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => self.fill().await?,
                Ok(httparse::Status::Partial) => return Err("the response head is too long".into()),
                Err(e) => return Err(format!("the response does not parse: {e}")),
            }
        };
        while self.buf.len() < head_len + body_len {
            self.fill().await?;
        }
        let body = self.buf[head_len..head_len + body_len].to_vec();
        self.buf.drain(..head_len + body_len);
        Ok(Response { status, body })
    }

    /// Reads what the socket has into the buffer.
    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(4096);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}
