//! Chunked request bodies: followed byte by byte exactly as hyper's decoder accepts them
//! (`proto/h1/decode.rs`), so that the tracker and hyper agree on where a chunked body ends
//! and on which bytes make it invalid.

/// Position in a chunked body; the states of hyper's `ChunkedState` (`proto/h1/decode.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

pub(super) enum ChunkStep {
    More,
    End,
    Invalid,
}

/// Follow a chunked body over `data` exactly as hyper's decoder accepts it: the bytes used,
/// and whether the body ended or went wrong (hyper then fails the request and stops reading).
/// Chunk data is skipped, not looked at.
pub(super) fn chunked(at: &mut Chunk, size: &mut u64, data: &[u8]) -> (usize, ChunkStep) {
    use Chunk::*;
    let mut i = 0;
    while i < data.len() {
        if *at == Data {
            let take = usize::try_from(*size).map_or(data.len() - i, |s| s.min(data.len() - i));
            i += take;
            *size -= take as u64;
            if *size == 0 {
                *at = DataCr;
            }
            continue;
        }
        let b = data[i];
        i += 1;
        if let (Start | Size, Some(digit)) = (*at, hex(b)) {
            // `size` is 0 at each chunk's start.
            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                Some(s) => *size = s,
                None => return (i, ChunkStep::Invalid),
            }
            *at = Size;
            continue;
        }
        *at = match (*at, b) {
            (Size | SizeLws, b' ' | b'\t') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws | Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return (i, ChunkStep::Invalid),
            (Extension, _) => Extension,
            (SizeLf, b'\n') if *size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            (EndCr | Trailer, _) if b != b'\r' => Trailer,
            (Trailer, b'\r') => TrailerLf,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => return (i, ChunkStep::End),
            _ => return (i, ChunkStep::Invalid),
        };
    }
    (i, ChunkStep::More)
}

pub(super) fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}
