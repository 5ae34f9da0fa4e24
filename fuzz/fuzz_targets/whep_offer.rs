//! A WHEP offer body: our SDP reading and the webrtc crate's SDP parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wasmcast::webrtc::fuzz::offer(data);
});
