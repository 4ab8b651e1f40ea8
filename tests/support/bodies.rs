//! Bodies (part of the shared test harness; see `mod.rs`).

use super::*;

pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body fed by the test through a [`BodySender`], frame by frame.
pub struct ChannelBody {
    rx: mpsc::Receiver<Frame<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// The sending half of a [`ChannelBody`]. Dropping it ends the body.
pub struct BodySender {
    tx: mpsc::Sender<Frame<Bytes>>,
}

impl BodySender {
    pub async fn data(&self, bytes: impl Into<Bytes>) {
        self.tx
            .send(Frame::data(bytes.into()))
            .await
            .expect("body receiver dropped");
    }
    pub async fn trailers(self, trailers: HeaderMap) {
        self.tx
            .send(Frame::trailers(trailers))
            .await
            .expect("body receiver dropped");
    }
}

/// A streaming body whose frames the test sends one by one.
pub fn channel_body() -> (BodySender, TestBody) {
    let (tx, rx) = mpsc::channel(1);
    (BodySender { tx }, ChannelBody { rx }.boxed_unsync())
}

/// A body of one data frame followed by trailers (gRPC-style responses).
pub fn body_with_trailers(data: impl Into<Bytes>, trailers: HeaderMap) -> TestBody {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> =
        vec![Ok(Frame::data(data.into())), Ok(Frame::trailers(trailers))];
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// A deterministic body of `total` bytes generated chunk by chunk, never held in memory.
/// Each 64 KiB chunk starts with its index (so a dropped or reordered chunk changes the hash).
pub struct GeneratedBody {
    remaining: u64,
    index: u64,
    exact: bool,
    produced: Option<Arc<std::sync::atomic::AtomicU64>>,
}

pub const GENERATED_CHUNK: usize = 64 * 1024;

impl GeneratedBody {
    /// `exact`: advertise the length (Content-Length) or not (chunked transfer).
    pub fn new(total: u64, exact: bool) -> Self {
        GeneratedBody {
            remaining: total,
            index: 0,
            exact,
            produced: None,
        }
    }

    /// Count the bytes produced so far in `produced` (to show the receiver is not waiting for
    /// the whole body).
    pub fn counting(mut self, produced: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.produced = Some(produced);
        self
    }

    fn chunk(index: u64, len: usize) -> Bytes {
        static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            (0..GENERATED_CHUNK)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
                .collect()
        });
        let mut chunk = BytesMut::from(&pattern[..len]);
        let prefix = index.to_be_bytes();
        let n = prefix.len().min(len);
        chunk[..n].copy_from_slice(&prefix[..n]);
        chunk.freeze()
    }

    /// SHA-256 of the body `GeneratedBody::new(total, _)` produces.
    pub fn sha256(total: u64) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut body = GeneratedBody::new(total, true);
        while let Some(chunk) = body.next_chunk() {
            hasher.update(&chunk);
        }
        hasher.finalize().into()
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let len = (GENERATED_CHUNK as u64).min(self.remaining) as usize;
        let chunk = Self::chunk(self.index, len);
        self.index += 1;
        self.remaining -= len as u64;
        if let Some(produced) = &self.produced {
            produced.fetch_add(len as u64, Ordering::SeqCst);
        }
        Some(chunk)
    }
}

impl Body for GeneratedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.next_chunk().map(|c| Ok(Frame::data(c))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}
