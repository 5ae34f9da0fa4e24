//! What a browser's offer says it can receive, checked before any WebRTC machinery starts.

use super::WhepError;

/// Largest offer accepted (a browser's is a few KiB).
pub const MAX_OFFER_BYTES: usize = 64 * 1024;

/// The video (and audio) formats of an offer that wasmcast can send as they are.
#[derive(Debug, Default)]
pub struct OfferedVideo {
    /// H.264 payload types with packetization-mode 1, the profile_idc and the fmtp parameters
    /// of each.
    h264: Vec<(u8, u8, String)>,
    /// The first H.265 payload type and its fmtp parameters (Safari, and Chrome where it can
    /// decode H.265), if any.
    pub h265: Option<(u8, String)>,
    pub opus_payload_type: Option<u8>,
}

impl OfferedVideo {
    /// The payload type the browser offers for H.264 of `profile_idc`, if any.
    pub fn h264_payload_type(&self, profile_idc: u8) -> Option<u8> {
        self.h264
            .iter()
            .find(|(_, profile, _)| *profile == profile_idc)
            .map(|(pt, _, _)| *pt)
    }

    /// The H.264 a publisher should send, and its fmtp parameters: the profile every reader
    /// can decode (Constrained Baseline) first, then Baseline, Main, High, any.
    pub fn h264_to_receive(&self) -> Option<(u8, &str)> {
        let constrained = self
            .h264
            .iter()
            .find(|(_, profile, fmtp)| *profile == 66 && fmtp.contains("profile-level-id=42e0"));
        constrained
            .or_else(|| {
                [66, 77, 100]
                    .iter()
                    .find_map(|wanted| self.h264.iter().find(|(_, p, _)| p == wanted))
            })
            .or_else(|| self.h264.first())
            .map(|(pt, _, fmtp)| (*pt, fmtp.as_str()))
    }
}

/// Checks that a publisher's `offer` is SDP with a video section it will send, and reads its
/// formats.
pub fn parse_publishing(offer: &str) -> Result<OfferedVideo, WhepError> {
    parse_as(
        offer,
        "sendonly",
        "wasmcast takes H.264 video from publishers",
    )
}

/// Checks that `offer` is SDP with a video section the browser will receive, and reads its formats.
pub fn parse(offer: &str) -> Result<OfferedVideo, WhepError> {
    parse_as(offer, "recvonly", "wasmcast sends H.264 to browsers")
}

fn parse_as(offer: &str, direction: &str, why_h264: &str) -> Result<OfferedVideo, WhepError> {
    if offer.len() > MAX_OFFER_BYTES {
        return Err(WhepError::BadOffer(format!(
            "larger than {MAX_OFFER_BYTES} bytes"
        )));
    }
    let session = sdp_types::Session::parse(offer.as_bytes())
        .map_err(|err| WhepError::BadOffer(err.to_string()))?;
    let video = session
        .medias
        .iter()
        .find(|m| m.media == "video")
        .ok_or_else(|| {
            WhepError::BadOffer(format!(
                "the offer has no video section; add a video transceiver ({direction})"
            ))
        })?;
    let mut offered = OfferedVideo::default();
    for media in &session.medias {
        for attribute in &media.attributes {
            let Some(value) = attribute.value.as_deref() else {
                continue;
            };
            match attribute.attribute.as_str() {
                "rtpmap" => {
                    let Some((pt, format)) = value.split_once(' ') else {
                        continue;
                    };
                    let Ok(pt) = pt.parse::<u8>() else { continue };
                    if media.media == "audio" && format.to_ascii_lowercase().starts_with("opus/") {
                        offered.opus_payload_type.get_or_insert(pt);
                    }
                    if std::ptr::eq(media, video)
                        && format.to_ascii_uppercase().starts_with("H265/")
                    {
                        offered.h265.get_or_insert((pt, String::new()));
                    }
                }
                "fmtp" if std::ptr::eq(media, video) => {
                    let Some((pt, parameters)) = value.split_once(' ') else {
                        continue;
                    };
                    let Ok(pt) = pt.parse::<u8>() else { continue };
                    if is_h264(video, pt)
                        && parameters.contains("packetization-mode=1")
                        && let Some(profile) = profile_idc(parameters)
                    {
                        offered
                            .h264
                            .push((pt, profile, parameters.trim().to_owned()));
                    }
                    if let Some((h265, fmtp)) = &mut offered.h265
                        && *h265 == pt
                    {
                        *fmtp = parameters.trim().to_owned();
                    }
                }
                _ => {}
            }
        }
    }
    if offered.h264.is_empty() && (direction == "sendonly" || offered.h265.is_none()) {
        return Err(WhepError::Unplayable(format!(
            "the offer has no H.264 (packetization-mode 1); {why_h264}"
        )));
    }
    Ok(offered)
}

fn is_h264(media: &sdp_types::Media, pt: u8) -> bool {
    is_format(media, pt, "H264/")
}

/// Whether payload type `pt` of `media` is the format whose rtpmap starts with `prefix`.
fn is_format(media: &sdp_types::Media, pt: u8, prefix: &str) -> bool {
    let pt_prefix = format!("{pt} ");
    media.attributes.iter().any(|a| {
        a.attribute == "rtpmap"
            && a.value.as_deref().is_some_and(|v| {
                v.strip_prefix(&pt_prefix)
                    .is_some_and(|f| f.to_ascii_uppercase().starts_with(prefix))
            })
    })
}

/// The profile_idc of an fmtp line's `profile-level-id`.
fn profile_idc(parameters: &str) -> Option<u8> {
    let id = parameters
        .split(';')
        .find_map(|p| p.trim().strip_prefix("profile-level-id="))?;
    u8::from_str_radix(id.get(0..2)?, 16).ok()
}

/// A profile's name, for messages.
pub fn profile_name(profile_idc: u8) -> &'static str {
    match profile_idc {
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 => "High 10",
        122 => "High 4:2:2",
        244 => "High 4:4:4",
        _ => "of an unknown profile",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROMIUM_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 102 103 104\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n\
        a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
        a=rtpmap:103 H264/90000\r\n\
        a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
        a=rtpmap:104 H264/90000\r\n\
        a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:111 opus/48000/2\r\n";

    #[test]
    fn reads_h264_profiles_with_packetization_mode_1_and_opus() {
        let offered = parse(CHROMIUM_OFFER).expect("valid offer");
        assert_eq!(offered.h264_payload_type(66), Some(102));
        assert_eq!(offered.h264_payload_type(77), Some(104));
        assert_eq!(offered.h264_payload_type(100), None);
        assert_eq!(offered.opus_payload_type, Some(111));
    }

    #[test]
    fn refuses_what_is_not_a_usable_offer() {
        assert!(matches!(parse("hello"), Err(WhepError::BadOffer(_))));
        let audio_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(
            matches!(parse(audio_only), Err(WhepError::BadOffer(why)) if why.contains("no video"))
        );
        let vp8_only = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(matches!(parse(vp8_only), Err(WhepError::Unplayable(_))));
    }
}
