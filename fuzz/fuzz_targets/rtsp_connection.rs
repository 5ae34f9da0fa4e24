//! A client's bytes through the RTSP codec and protocol core (requests, interleaved data, ANNOUNCE
//! SDP, publisher RTP).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmcast::rtsp::fuzz::connection(data);
});
