//! Entry points for `cargo fuzz` (see fuzz/README.md): a WHEP offer as a browser or an attacker
//! might send it.

/// Checks `data` as a WHEP offer the way `POST /ROUTE/whep` does before any WebRTC state exists:
/// our reading of its formats, then the webrtc crate's SDP parser, which reads it next.
pub fn offer(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(offered) = super::offer::parse(text) {
        for profile in [66, 77, 100] {
            let _ = offered.h264_payload_type(profile);
        }
        if let Ok(description) =
            webrtc::peer_connection::RTCSessionDescription::offer(text.to_owned())
        {
            let _ = description.unmarshal();
        }
    }
}
