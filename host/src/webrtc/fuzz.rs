//! Entry points for `cargo fuzz` (see fuzz/README.md), also built by the unit tests so that they
//! keep compiling: a WHEP offer as a browser or an attacker might send it.

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

#[cfg(test)]
mod tests {
    /// A browser's offer and every prefix of it: cut off anywhere, an offer is refused, not a panic.
    #[test]
    fn an_offer_and_its_prefixes_go_through() {
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 102 104\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
            a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
            a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
            a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:102 H264/90000\r\n\
            a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
            a=rtpmap:104 H264/90000\r\na=fmtp:104 packetization-mode=1;profile-level-id=4d001f\r\n";
        for end in 0..=offer.len() {
            super::offer(&offer.as_bytes()[..end]);
        }
        super::offer(&[0xff, 0xfe, b'v', b'=']);
    }
}
