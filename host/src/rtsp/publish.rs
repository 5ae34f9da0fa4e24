//! RTSP publishing (ANNOUNCE, SETUP with `mode=record`, RECORD): the publisher's SDP and RTP in,
//! access units out to the route's stream. No sockets and no clock here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use super::session::TrackTransport;
use crate::media::{AccessUnit, Codec};
use crate::router::{PublishClaim, Stream};
use crate::rtp::{Depacketizer, PayloadFormat};
use crate::sources::{LivePublisher, TrackKind};

/// One announced track.
struct PublishTrack {
    control: String,
    depacketizer: Depacketizer,
    transport: Option<TrackTransport>,
}

/// A connection that publishes into a route.
pub struct Publishing {
    pub session_id: String,
    live: LivePublisher,
    tracks: Vec<PublishTrack>,
    recording: bool,
    pub last_activity: Instant,
    /// Packets that could not be depacketized.
    pub dropped: u64,
}

impl Publishing {
    /// Reads the publisher's SDP. Errors are for the publisher to read.
    pub fn announce(
        sdp: &[u8],
        stream: Arc<Stream>,
        claim: PublishClaim,
        session_id: String,
        now: Instant,
    ) -> Result<Publishing, String> {
        let session = sdp_types::Session::parse(sdp)
            .map_err(|err| format!("the SDP does not parse: {err}"))?;
        let mut live = LivePublisher::with_independent_clocks(stream, claim);
        let mut tracks = Vec::new();
        for (index, media) in session.medias.iter().enumerate() {
            let payload_type = media.fmt.split_whitespace().next().unwrap_or("");
            let rtpmap = media
                .attributes
                .iter()
                .filter(|a| a.attribute == "rtpmap")
                .filter_map(|a| a.value.as_deref())
                .find(|v| v.split_whitespace().next() == Some(payload_type))
                .and_then(|v| v.split_whitespace().nth(1))
                .ok_or_else(|| {
                    format!("track {index} has no a=rtpmap for payload type {payload_type}")
                })?;
            let mut parts = rtpmap.split('/');
            let encoding = parts.next().unwrap_or("").to_ascii_uppercase();
            let clock_rate: u32 = parts
                .next()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("track {index}: no clock rate in `{rtpmap}`"))?;
            let channels: u16 = parts.next().and_then(|c| c.parse().ok()).unwrap_or(1);
            let fmtp = media
                .attributes
                .iter()
                .filter(|a| a.attribute == "fmtp")
                .filter_map(|a| a.value.as_deref())
                .find(|v| v.split_whitespace().next() == Some(payload_type))
                .and_then(|v| v.split_once(' ').map(|(_, params)| params))
                .unwrap_or("");
            let param = |name: &str| {
                fmtp.split(';')
                    .filter_map(|p| p.trim().split_once('='))
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim())
            };
            let decode = |b64: &str| BASE64.decode(b64).ok().map(Bytes::from);
            let (kind, format, codec) = match encoding.as_str() {
                "H264" => {
                    let sets: Vec<Bytes> = param("sprop-parameter-sets")
                        .map(|v| v.split(',').filter_map(decode).collect())
                        .unwrap_or_default();
                    let codec = match sets.as_slice() {
                        [sps, pps, ..] => Some(Codec::H264 {
                            sps: sps.clone(),
                            pps: pps.clone(),
                        }),
                        _ => None,
                    };
                    (TrackKind::H264, PayloadFormat::H264, codec)
                }
                "H265" => {
                    let codec = match (
                        param("sprop-vps").and_then(decode),
                        param("sprop-sps").and_then(decode),
                        param("sprop-pps").and_then(decode),
                    ) {
                        (Some(vps), Some(sps), Some(pps)) => Some(Codec::H265 { vps, sps, pps }),
                        _ => None,
                    };
                    (TrackKind::H265, PayloadFormat::H265, codec)
                }
                "MPEG4-GENERIC" => {
                    if param("sizelength") != Some("13") {
                        return Err(format!(
                            "track {index}: only AAC-hbr (sizelength=13) is supported"
                        ));
                    }
                    let config = param("config")
                        .and_then(hex)
                        .ok_or_else(|| format!("track {index}: AAC without a config= parameter"))?;
                    let codec = Codec::Aac {
                        config,
                        sample_rate: clock_rate,
                        channels,
                    };
                    (TrackKind::Audio, PayloadFormat::Aac, Some(codec))
                }
                "OPUS" => (
                    TrackKind::Audio,
                    PayloadFormat::Opus,
                    Some(Codec::Opus { channels }),
                ),
                other => {
                    return Err(format!(
                        "track {index}: codec {other} is not supported (H264, H265, MPEG4-GENERIC AAC and OPUS are)"
                    ));
                }
            };
            let control = media
                .attributes
                .iter()
                .find(|a| a.attribute == "control")
                .and_then(|a| a.value.clone())
                .unwrap_or_else(|| format!("trackID={index}"));
            live.add_track(kind, codec);
            tracks.push(PublishTrack {
                control,
                depacketizer: Depacketizer::new(format),
                transport: None,
            });
        }
        if tracks.is_empty() {
            return Err("the SDP announces no media".into());
        }
        Ok(Publishing {
            session_id,
            live,
            tracks,
            recording: false,
            last_activity: now,
            dropped: 0,
        })
    }

    /// The announced track a SETUP URL names.
    pub fn track_for_url(&self, url: &str) -> Option<usize> {
        let url = url.trim_end_matches('/');
        self.tracks.iter().position(|t| {
            let control = t.control.trim_end_matches('/');
            if control.contains("://") {
                control == url
            } else {
                url.ends_with(&format!("/{control}"))
            }
        })
    }

    pub fn setup(&mut self, track: usize, transport: TrackTransport) {
        if let Some(track) = self.tracks.get_mut(track) {
            track.transport = Some(transport);
        }
    }

    pub fn has_udp(&self) -> bool {
        self.tracks
            .iter()
            .any(|t| matches!(t.transport, Some(TrackTransport::Udp { .. })))
    }

    /// Starts taking media; returns the addresses UDP tracks will send from, by track.
    pub fn record(&mut self) -> Result<Vec<(SocketAddr, SocketAddr, usize)>, &'static str> {
        if self.tracks.iter().all(|t| t.transport.is_none()) {
            return Err("no track set up");
        }
        self.recording = true;
        Ok(self
            .tracks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t.transport {
                Some(TrackTransport::Udp { rtp, rtcp }) => Some((rtp, rtcp, i)),
                _ => None,
            })
            .collect())
    }

    /// The track whose RTP comes on interleaved channel `channel`.
    pub fn track_on_channel(&self, channel: u8) -> Option<usize> {
        self.tracks.iter().position(|t| {
            matches!(t.transport, Some(TrackTransport::Tcp { rtp_channel, .. }) if rtp_channel == channel)
        })
    }

    /// Takes one RTP packet of `track` that arrived at `now`.
    pub fn receive(&mut self, track: usize, packet: &[u8], now: Instant) {
        self.last_activity = now;
        if !self.recording {
            return;
        }
        let Some(publish_track) = self.tracks.get_mut(track) else {
            return;
        };
        let units = match publish_track.depacketizer.push(packet) {
            Ok(units) => units,
            Err(err) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::debug!(
                        track,
                        dropped = self.dropped,
                        "RTSP publisher packet dropped: {err}"
                    );
                }
                return;
            }
        };
        for unit in units {
            self.live.send(
                AccessUnit {
                    track,
                    pts: unit.timestamp,
                    dts: unit.timestamp,
                    keyframe: true,
                    data: unit.data,
                },
                now,
            );
        }
    }

    /// The route published into.
    pub fn route(&self) -> &str {
        self.live.route()
    }

    /// What is being published, for logs.
    pub fn describe(&self) -> String {
        self.live.describe()
    }
}

fn hex(text: &str) -> Option<Bytes> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Bytes::from)
}
