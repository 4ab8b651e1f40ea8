//! Raw TCP (part of the shared test harness; see `mod.rs`).

use super::*;

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Assert an Outpost error of `kind` with `status`; returns the `error` object.
    pub fn assert_error(&self, status: u16, kind: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:#?} / {}", self.text());
        assert_error_shape(
            status,
            kind,
            self.header("content-type"),
            self.header("x-outpost-error"),
            self.header("x-request-id"),
            &self.body,
        )
    }
}

/// A raw TCP connection for requests an HTTP library would not send.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Wrap a connection opened elsewhere.
    pub fn from_stream(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = guard("raw connect", TcpStream::connect(addr))
            .await
            .expect("raw connect");
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        guard("raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Read more bytes; `false` at end of stream (a reset counts as the end, too).
    async fn fill(&mut self) -> bool {
        self.buf.reserve(16 * 1024);
        match guard("raw read", self.stream.read_buf(&mut self.buf)).await {
            Ok(0) | Err(_) => false,
            Ok(_) => true,
        }
    }

    /// Read one response (status line, headers, body by Content-Length, chunked or close).
    pub async fn read_response(&mut self) -> RawResponse {
        let (status, headers, head_len) = loop {
            let mut slots = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut slots);
            match parsed.parse(&self.buf).expect("parse response head") {
                httparse::Status::Complete(len) => {
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (parsed.code.unwrap(), headers, len);
                }
                httparse::Status::Partial => {
                    if !self.fill().await {
                        panic!(
                            "connection closed before a full response head: {:?}",
                            String::from_utf8_lossy(&self.buf)
                        );
                    }
                }
            }
        };
        let _ = self.buf.split_to(head_len);
        let mut response = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 304 || status == 204 || (100..200).contains(&status) {
            return response;
        }
        if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().expect("content-length");
            while self.buf.len() < len {
                assert!(self.fill().await, "connection closed inside the body");
            }
            response.body = self.buf.split_to(len).to_vec();
        } else if response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break pos;
                    }
                    assert!(self.fill().await, "connection closed inside a chunk size");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                let _ = self.buf.split_to(line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill().await, "connection closed inside a chunk");
                }
                let chunk = self.buf.split_to(size + 2);
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else {
            while self.fill().await {}
            response.body = self.buf.split().to_vec();
        }
        response
    }

    /// Read whatever bytes are available (at least one), for upgraded connections.
    pub async fn read_some(&mut self) -> Bytes {
        if self.buf.is_empty() {
            assert!(self.fill().await, "connection closed");
        }
        self.buf.split().freeze()
    }

    /// Read exactly `n` bytes.
    pub async fn read_exact(&mut self, n: usize) -> Bytes {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.split_to(n).freeze()
    }

    /// True when the peer closes the connection (EOF or reset) with no more bytes.
    pub async fn is_closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }
}

/// Send raw request bytes on a fresh connection and read one response.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut conn = RawConn::connect(addr).await;
    conn.write(bytes).await;
    conn.read_response().await
}
