//! Framing of the RTSP control connection: requests and `$`-interleaved data in, parsed by
//! rtsp-types once whole. An incomplete message waits for more bytes, up to a size cap; anything
//! unparseable ends the connection after a 400.

use bytes::{Buf, BytesMut};
use rtsp_types::{Message, ParseError, Request};
use tokio_util::codec::Decoder;

/// The largest request (headers and body) we accept. Real clients send well under 4 KiB.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// The 4-byte header of a `$`-interleaved frame of `len` bytes on `channel` (RFC 2326, 10.12);
/// `None` for a frame too long to frame.
pub(super) fn interleaved_header(channel: u8, len: usize) -> Option<[u8; 4]> {
    let [hi, lo] = u16::try_from(len).ok()?.to_be_bytes();
    Some([b'$', channel, hi, lo])
}

/// What a client sent.
#[derive(Debug)]
pub enum Incoming {
    Request(Request<Vec<u8>>),
    /// An interleaved frame, e.g. RTCP receiver reports over TCP.
    Data {
        channel: u8,
        payload: Vec<u8>,
    },
    /// A response to a request we never send; ignored.
    Response,
}

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("malformed RTSP message")]
    Malformed,
    #[error("RTSP message larger than {MAX_MESSAGE_SIZE} bytes")]
    TooLarge,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Frames RTSP messages incrementally: the header block is searched only in bytes not searched
/// before, and a message is handed to rtsp-types once, when it is whole (its length known from
/// `Content-Length`). A client that trickles a request byte by byte costs O(1) per byte, not a
/// re-parse of everything it sent so far.
#[derive(Debug, Default)]
pub struct RtspDecoder {
    /// Bytes at the front of the buffer already searched for the end of the header block.
    scanned: usize,
    /// The length of the message at the front, once its header block is whole.
    whole: Option<usize>,
}

impl RtspDecoder {
    fn reset(&mut self) {
        self.scanned = 0;
        self.whole = None;
    }

    /// The length of the request or response at the front of `src`, once it is known.
    fn message_length(&mut self, src: &[u8]) -> Result<Option<usize>, CodecError> {
        if let Some(whole) = self.whole {
            return Ok(Some(whole));
        }
        let Some(end) = header_end(src, self.scanned.saturating_sub(2)) else {
            self.scanned = src.len();
            return if src.len() > MAX_MESSAGE_SIZE {
                Err(CodecError::TooLarge)
            } else {
                Ok(None)
            };
        };
        // A Content-Length near usize::MAX must not wrap around into a small length.
        let whole = end.saturating_add(content_length(&src[..end])?);
        if whole > MAX_MESSAGE_SIZE {
            return Err(CodecError::TooLarge);
        }
        self.whole = Some(whole);
        Ok(Some(whole))
    }
}

/// Where the header block that starts `src` ends (after its blank line), searching from `from`.
fn header_end(src: &[u8], from: usize) -> Option<usize> {
    (from..src.len()).find_map(|i| {
        if src[i] != b'\n' {
            return None;
        }
        match (src.get(i + 1), src.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// The `Content-Length` of a header block (0 without one).
fn content_length(headers: &[u8]) -> Result<usize, CodecError> {
    let text = std::str::from_utf8(headers).map_err(|_| CodecError::Malformed)?;
    for line in text.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            return value.trim().parse().map_err(|_| CodecError::Malformed);
        }
    }
    Ok(0)
}

impl Decoder for RtspDecoder {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if self.scanned == 0 {
            // Some clients send stray CR/LF between messages (keep-alives, or after a body).
            let blank = src
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            src.advance(blank);
        }
        let Some(&first) = src.first() else {
            return Ok(None);
        };
        let length = if first == b'$' {
            // An interleaved frame: `$`, channel, 16-bit length.
            let Some(header) = src.get(..4) else {
                return Ok(None);
            };
            4 + usize::from(u16::from_be_bytes([header[2], header[3]]))
        } else {
            match self.message_length(src)? {
                Some(length) => length,
                None => return Ok(None),
            }
        };
        if src.len() < length {
            return Ok(None);
        }
        self.reset();
        let message = match Message::<Vec<u8>>::parse(&src[..length]) {
            Ok((message, consumed)) if consumed == length => message,
            Ok(_) | Err(ParseError::Incomplete(_)) | Err(ParseError::Error) => {
                return Err(CodecError::Malformed);
            }
        };
        src.advance(length);
        Ok(Some(match message {
            Message::Request(request) => Incoming::Request(request),
            Message::Data(data) => Incoming::Data {
                channel: data.channel_id(),
                payload: data.into_body(),
            },
            Message::Response(_) => Incoming::Response,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> (Vec<Incoming>, Option<CodecError>) {
        let mut buf = BytesMut::from(bytes);
        let mut decoder = RtspDecoder::default();
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => out.push(item),
                Ok(None) => return (out, None),
                Err(err) => return (out, Some(err)),
            }
        }
    }

    #[test]
    fn requests_and_interleaved_data() {
        let (items, err) = decode_all(
            b"OPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\n\r\n$\x01\x00\x02ab\r\nGET_PARAMETER rtsp://h/a RTSP/1.0\r\nCSeq: 2\r\n\r\n",
        );
        assert!(err.is_none());
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[1], Incoming::Data { channel: 1, payload } if payload == b"ab"));
    }

    #[test]
    fn partial_request_waits() {
        let (items, err) = decode_all(b"OPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\n");
        assert!(items.is_empty() && err.is_none());
    }

    #[test]
    fn a_request_trickled_byte_by_byte_is_framed_once_whole() {
        let request = b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 5\r\n\r\nv=0\r\nOPTIONS rtsp://h/a RTSP/1.0\r\nCSeq: 2\r\n\r\n";
        let mut decoder = RtspDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &byte in request.iter() {
            buf.extend_from_slice(&[byte]);
            while let Some(item) = decoder.decode(&mut buf).expect("valid") {
                out.push(item);
            }
            assert!(decoder.scanned <= buf.len());
        }
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Incoming::Request(r) if r.body() == b"v=0\r\n"));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_content_length_near_the_top_of_usize_is_too_large_not_a_wrap() {
        let (_, err) = decode_all(
            b"ANNOUNCE rtsp://h/a RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 18446744073709551615\r\n\r\nv=0",
        );
        assert!(matches!(err, Some(CodecError::TooLarge)), "{err:?}");
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        let (_, err) = decode_all(b"\x16\x03\x01\x02\x00garbage garbage\r\n\r\n");
        assert!(matches!(err, Some(CodecError::Malformed)));
        let mut huge = b"OPTIONS rtsp://h/a RTSP/1.0\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_MESSAGE_SIZE + 10));
        let (_, err) = decode_all(&huge);
        assert!(
            matches!(err, Some(CodecError::TooLarge)),
            "incomplete and too large"
        );
        huge.extend_from_slice(b"\r\nCSeq: 1\r\n\r\n");
        let (_, err) = decode_all(&huge);
        assert!(
            matches!(err, Some(CodecError::TooLarge)),
            "complete but too large"
        );
    }
}
