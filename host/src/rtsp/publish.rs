//! RTSP publishing (ANNOUNCE, SETUP with `mode=record`, RECORD): the publisher's SDP and RTP in,
//! access units out to the route's stream. No sockets and no clock here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use super::transport::TrackTransport;
use crate::hub::{PublishClaim, Revocation, Stream};
use crate::media::{AAC_SAMPLE_RATES, Codec, OPUS_CLOCK_RATE, VIDEO_CLOCK_RATE};
use crate::rtp::{DepacketizeError, Depacketizer, PayloadFormat};
use crate::sources::{LivePublisher, OverBudget, PublishRate, TooFast, TooSlow, TrackKind};

/// AAC channel configurations go up to 7.1.
const MAX_AAC_CHANNELS: u16 = 8;
/// Tracks one publisher may announce: a camera sends video, audio and perhaps metadata; a
/// stream with several languages a few more.
const MAX_TRACKS: usize = 16;

/// Why a recording publisher is ended.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    #[error(transparent)]
    TooSlow(#[from] TooSlow),
    #[error(transparent)]
    TooFast(#[from] TooFast),
}

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
    /// When ANNOUNCE came: RECORD must follow within the connection's start timeout.
    pub announced_at: Instant,
    /// Packets that could not be depacketized.
    pub dropped: u64,
    /// Bytes of units and fragments being assembled, all tracks together: held to `max_unit`,
    /// as each track's are, so that a publisher that announces many tracks and ends no unit
    /// holds no more than one.
    assembling: usize,
    max_unit: usize,
    /// What the publisher sends, against the floor, from RECORD on.
    rate: PublishRate,
    revocation: Revocation,
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
        if session.medias.len() > MAX_TRACKS {
            return Err(format!(
                "{} tracks: a publisher may announce at most {MAX_TRACKS}",
                session.medias.len()
            ));
        }
        let max_unit = stream.budget().max_unit_bytes;
        let revocation = claim.revocation();
        let mut live = LivePublisher::with_independent_clocks(stream, claim);
        let mut tracks = Vec::new();
        for (index, media) in session.medias.iter().enumerate() {
            let payload_type = media.fmt.split_whitespace().next().unwrap_or("");
            if !payload_type.parse::<u8>().is_ok_and(|pt| pt <= 127) {
                return Err(format!(
                    "track {index}: `{payload_type}` is not an RTP payload type (0 to 127)"
                ));
            }
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
            let channels: u16 = match parts.next() {
                None => 1,
                Some(text) => text
                    .parse()
                    .ok()
                    .filter(|&c| c >= 1)
                    .ok_or_else(|| format!("track {index}: `{text}` is not a channel count"))?,
            };
            check_clock(index, &encoding, clock_rate, channels)?;
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
                depacketizer: Depacketizer::new(format, max_unit),
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
            announced_at: now,
            dropped: 0,
            assembling: 0,
            max_unit,
            rate: PublishRate::new(now),
            revocation,
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

    /// Whether RECORD came.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// What tells this publisher it lost the route.
    pub fn revocation(&self) -> Revocation {
        self.revocation.clone()
    }

    /// Starts taking media; returns the addresses UDP tracks will send from, by track.
    pub fn record(
        &mut self,
        now: Instant,
    ) -> Result<Vec<(SocketAddr, SocketAddr, usize)>, &'static str> {
        if self.tracks.iter().all(|t| t.transport.is_none()) {
            return Err("no track set up");
        }
        self.recording = true;
        self.rate = PublishRate::new(now);
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

    /// Whether a recording publisher still sends at least the floor rate.
    pub fn check_rate(&mut self, now: Instant) -> Result<(), TooSlow> {
        if self.recording {
            self.rate.check(now)
        } else {
            Ok(())
        }
    }

    /// Takes one RTP packet of `track` that arrived at `now`. An error ends the publisher.
    pub fn receive(
        &mut self,
        track: usize,
        packet: &[u8],
        now: Instant,
    ) -> Result<(), PublishError> {
        self.last_activity = now;
        if !self.recording {
            return Ok(());
        }
        self.rate.add_packet(packet.len(), now)?;
        let Some(publish_track) = self.tracks.get_mut(track) else {
            return Ok(());
        };
        let depacketizer = &mut publish_track.depacketizer;
        let before = depacketizer.assembling();
        let pushed = depacketizer.push(packet);
        self.assembling = self.assembling - before + depacketizer.assembling();
        // Over the cap all tracks share, the unit this packet added to goes (the units it
        // completed are sent), as one over a track's own cap would.
        let over_together = self.assembling > self.max_unit;
        if over_together {
            self.assembling -= depacketizer.assembling();
            depacketizer.drop_assembling();
        }
        let units = match pushed {
            Ok(units) => units,
            Err(err) => {
                if over_together || matches!(err, DepacketizeError::TooLarge(_)) {
                    self.live.refused_over_budget();
                    self.live.check_budget()?;
                }
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::debug!(
                        track,
                        dropped = self.dropped,
                        "RTSP publisher packet dropped: {err}"
                    );
                }
                return Ok(());
            }
        };
        self.live.send_depacketized(track, units, now);
        if over_together {
            self.live.refused_over_budget();
        }
        self.live.check_budget()?;
        Ok(())
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

/// Refuses clock rates and channel counts the codec cannot have: every later timestamp is
/// computed from them.
fn check_clock(index: usize, encoding: &str, clock_rate: u32, channels: u16) -> Result<(), String> {
    let fits = match encoding {
        "H264" | "H265" => clock_rate == VIDEO_CLOCK_RATE,
        "MPEG4-GENERIC" => {
            AAC_SAMPLE_RATES.contains(&clock_rate) && (1..=MAX_AAC_CHANNELS).contains(&channels)
        }
        "OPUS" => clock_rate == OPUS_CLOCK_RATE && (1..=2).contains(&channels),
        // Refused by name later, with the list of codecs that are taken.
        _ => true,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "track {index}: {encoding} cannot have clock rate {clock_rate} with {channels} channel(s)"
        ))
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
