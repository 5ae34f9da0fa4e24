//! A publisher's RTP packets through each depacketizer: the first byte picks the format, then
//! packets follow behind 16-bit lengths.
#![no_main]

use wasmcast::rtp::{Depacketizer, PayloadFormat};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&format, mut rest)) = data.split_first() else {
        return;
    };
    let format = match format % 4 {
        0 => PayloadFormat::H264,
        1 => PayloadFormat::H265,
        2 => PayloadFormat::Aac,
        _ => PayloadFormat::Opus,
    };
    let mut depacketizer = Depacketizer::new(format, 8 << 20);
    while rest.len() >= 2 {
        let length = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let Some(packet) = rest.get(2..2 + length) else {
            return;
        };
        let _ = depacketizer.push(packet);
        rest = &rest[2 + length..];
    }
});
