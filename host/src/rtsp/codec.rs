//! Framing of the RTSP control connection with rtsp-types: requests and `$`-interleaved data in,
//! bytes out. An incomplete message waits for more bytes, up to a size cap; anything unparseable
//! ends the connection after a 400.

use bytes::{Buf, BytesMut};
use rtsp_types::{Message, ParseError, Request};
use tokio_util::codec::Decoder;

/// The largest request (headers and body) we accept. Real clients send well under 4 KiB.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

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

#[derive(Debug, Default)]
pub struct RtspDecoder;

impl Decoder for RtspDecoder {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        // Some clients send stray CR/LF between messages (keep-alives, or after a body).
        let blank = src
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        src.advance(blank);
        if src.is_empty() {
            return Ok(None);
        }
        match Message::<Vec<u8>>::parse(&src[..]) {
            Ok((_, consumed)) if consumed > MAX_MESSAGE_SIZE => Err(CodecError::TooLarge),
            Ok((message, consumed)) => {
                src.advance(consumed);
                Ok(Some(match message {
                    Message::Request(request) => Incoming::Request(request),
                    Message::Data(data) => Incoming::Data {
                        channel: data.channel_id(),
                        payload: data.into_body(),
                    },
                    Message::Response(_) => Incoming::Response,
                }))
            }
            Err(ParseError::Incomplete(_)) if src.len() > MAX_MESSAGE_SIZE => {
                Err(CodecError::TooLarge)
            }
            Err(ParseError::Incomplete(_)) => Ok(None),
            Err(ParseError::Error) => Err(CodecError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> (Vec<Incoming>, Option<CodecError>) {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match RtspDecoder.decode(&mut buf) {
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
