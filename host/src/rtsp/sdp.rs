//! Session descriptions for DESCRIBE.
//!
//! Live-stream conventions clients rely on: `c=IN IP4 0.0.0.0`, an open range (`npt=now-`) so nobody
//! tries to seek, and relative `a=control:trackID=N` that clients join to `Content-Base`.

use std::fmt::Write;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::hub::TrackRtp;
use crate::media::{Codec, StreamDescription};

/// The SDP of a stream as served to RTSP readers.
pub fn describe(
    route: &str,
    description: &StreamDescription,
    rtp: &[TrackRtp],
    server_ip: IpAddr,
    session_id: u64,
) -> String {
    let ip_version = if server_ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut sdp = String::with_capacity(512);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\no=- {session_id} 1 IN {ip_version} {server_ip}\r\ns={route}\r\nc=IN IP4 0.0.0.0\r\n\
         t=0 0\r\na=tool:wasmcast\r\na=range:npt=now-\r\n"
    );
    for (index, (track, rtp)) in description.tracks.iter().zip(rtp).enumerate() {
        let pt = rtp.payload_type;
        match &track.codec {
            Codec::H264 { sps, pps } => {
                let profile_level_id = match sps.get(1..4) {
                    Some(bytes) => hex(bytes),
                    None => "42e01f".into(),
                };
                let _ = write!(
                    sdp,
                    "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} H264/90000\r\n\
                     a=fmtp:{pt} packetization-mode=1;profile-level-id={profile_level_id};\
                     sprop-parameter-sets={},{}\r\n",
                    BASE64.encode(sps),
                    BASE64.encode(pps)
                );
            }
            Codec::H265 { vps, sps, pps } => {
                let _ = write!(
                    sdp,
                    "m=video 0 RTP/AVP {pt}\r\na=rtpmap:{pt} H265/90000\r\n\
                     a=fmtp:{pt} sprop-vps={};sprop-sps={};sprop-pps={}\r\n",
                    BASE64.encode(vps),
                    BASE64.encode(sps),
                    BASE64.encode(pps)
                );
            }
            Codec::Aac {
                config,
                sample_rate,
                channels,
            } => {
                let _ = write!(
                    sdp,
                    "m=audio 0 RTP/AVP {pt}\r\na=rtpmap:{pt} mpeg4-generic/{sample_rate}/{channels}\r\n\
                     a=fmtp:{pt} streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
                     indexlength=3;indexdeltalength=3;config={}\r\n",
                    hex(config)
                );
            }
            Codec::Opus { channels } => {
                let _ = write!(
                    sdp,
                    "m=audio 0 RTP/AVP {pt}\r\na=rtpmap:{pt} opus/48000/2\r\n\
                     a=fmtp:{pt} sprop-stereo={}\r\n",
                    u8::from(*channels >= 2)
                );
            }
        }
        if let Some((width, height)) = track.dimensions {
            let _ = write!(sdp, "a=x-dimensions:{width},{height}\r\n");
        }
        let _ = write!(sdp, "a=control:trackID={index}\r\n");
    }
    sdp
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Track;
    use bytes::Bytes;

    #[test]
    fn h264_and_aac() {
        let description = StreamDescription {
            tracks: vec![
                Track {
                    codec: Codec::H264 {
                        sps: Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1f, 0xd9]),
                        pps: Bytes::from_static(&[0x68, 0xcb]),
                    },
                    dimensions: Some((640, 360)),
                },
                Track {
                    codec: Codec::Aac {
                        config: Bytes::from_static(&[0x11, 0x90]),
                        sample_rate: 48000,
                        channels: 2,
                    },
                    dimensions: None,
                },
            ],
        };
        let stream = crate::hub::Stream::new("x");
        let timeline = crate::hub::Timeline {
            anchor: std::time::Instant::now(),
            anchor_nanos: 0,
        };
        let _publisher = stream
            .claim()
            .expect("free")
            .start(description.clone(), timeline);
        let rtp = stream.media().expect("published").tracks.clone();
        let sdp = describe("cam", &description, &rtp, "127.0.0.1".parse().unwrap(), 7);
        assert!(
            sdp.starts_with("v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\n")
        );
        assert!(sdp.contains(
            "a=fmtp:96 packetization-mode=1;profile-level-id=42c01f;sprop-parameter-sets=Z0LAH9k=,aMs=\r\n"
        ));
        assert!(sdp.contains("a=rtpmap:97 mpeg4-generic/48000/2\r\n"));
        assert!(sdp.contains("config=1190\r\n"));
        assert!(sdp.contains("a=control:trackID=0\r\n"));
        assert!(sdp.ends_with("a=control:trackID=1\r\n"));
    }
}
