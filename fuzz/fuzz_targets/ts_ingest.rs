//! An HTTP push body through the MPEG-TS demuxer and the ingest (ADTS, Opus, H.264/H.265 units).
#![no_main]

use std::time::Instant;

use wasmcast::hub::Stream;
use wasmcast::sources::TsIngest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let stream = Stream::new("fuzz");
    let Ok(claim) = stream.claim() else { return };
    let mut ingest = TsIngest::new(stream.clone(), claim);
    // Uneven pieces, as a network delivers them.
    for piece in data.chunks(1000) {
        if ingest.push(piece, Instant::now()).is_err() {
            return;
        }
    }
    let _ = ingest.finish(Instant::now());
});
