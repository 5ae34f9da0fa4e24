//! RTP payload formats: H.264 (RFC 6184), H.265 (RFC 7798) and AAC-hbr (RFC 3640).

use bytes::{BufMut, Bytes, BytesMut};

use super::AccessUnit;
use crate::media::{Codec, annex_b_nal_units};

/// The largest RTP packet we send, header included: fits a 1500-byte Ethernet MTU with room for
/// IP/UDP (or an interleaved TCP frame) and tunnel overheads.
pub const MAX_PACKET_SIZE: usize = 1400;
const HEADER_SIZE: usize = 12;
const MAX_PAYLOAD: usize = MAX_PACKET_SIZE - HEADER_SIZE;

/// The samples an AAC-LC frame holds: units this far apart in the RTP clock follow each other
/// without a gap, as several AUs in one packet must (RFC 3640 section 3.2.1).
const AAC_FRAME_SAMPLES: i64 = 1024;
/// AAC units in one packet at most: the three bits of AU-Index-delta number far more, but each
/// one held back for the next is that much earlier than it needs to be for some players.
const AAC_UNITS_PER_PACKET: usize = 8;

const H264_NAL_AUD: u8 = 9;
const H264_FU_A: u8 = 28;
const H265_NAL_AUD: u8 = 35;
const H265_FU: u8 = 49;

/// One access unit's RTP packets, ready to send.
#[derive(Clone, Debug)]
pub struct RtpUnit {
    /// Each packet is a slice of `wire`.
    pub packets: Vec<Bytes>,
    /// The packets back to back.
    pub wire: Bytes,
    /// The packets in runs a segmenting send (UDP GSO) can carry at once, in order.
    pub runs: Vec<Run>,
    /// The RTP timestamp of this unit. Its packets may start earlier: they can carry units before
    /// it (see [`Packetizer::packetize_together`]).
    pub timestamp: u32,
    /// The sequence number of its first packet, or of the packet that carries it when it has none.
    pub first_seq: u16,
}

impl RtpUnit {
    /// The RTP timestamp of its first packet: that of the first unit the packet carries.
    pub fn first_timestamp(&self) -> u32 {
        self.packets
            .first()
            .and_then(|packet| super::header_seq_and_timestamp(packet))
            .map_or(self.timestamp, |(_, timestamp)| timestamp)
    }
}

/// Consecutive packets of which all but the last have `segment` bytes, and the last no more: what
/// one UDP GSO send splits into datagrams by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Where the run is in [`RtpUnit::wire`].
    pub bytes: std::ops::Range<usize>,
    pub segment: usize,
}

impl Run {
    /// How many packets the run holds.
    pub fn packets(&self) -> usize {
        self.bytes.len().div_ceil(self.segment)
    }
}

/// Groups packets of the given lengths, back to back, into [`Run`]s.
fn runs(lengths: impl Iterator<Item = usize>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let mut at = 0;
    // Whether the current run has taken a shorter packet, which must be its last.
    let mut closed = true;
    for length in lengths {
        match runs.last_mut() {
            Some(run) if !closed && length <= run.segment => {
                run.bytes.end += length;
                closed = length < run.segment;
            }
            _ => {
                runs.push(Run {
                    bytes: at..at + length,
                    segment: length.max(1),
                });
                closed = false;
            }
        }
        at += length;
    }
    runs
}

#[derive(Clone, Copy, Debug)]
enum Format {
    H264,
    H265,
    Aac,
    /// One frame per packet (RFC 7587).
    Opus,
}

/// Turns one track's access units into RTP packets, keeping its sequence numbers and SSRC.
#[derive(Debug)]
pub struct Packetizer {
    format: Format,
    payload_type: u8,
    ssrc: u32,
    next_seq: u16,
    timestamp_offset: u32,
}

impl Packetizer {
    /// `ssrc`, `initial_seq` and `timestamp_offset` should be random (RFC 3550 section 5.1).
    pub fn new(
        codec: &Codec,
        payload_type: u8,
        ssrc: u32,
        initial_seq: u16,
        timestamp_offset: u32,
    ) -> Self {
        let format = match codec {
            Codec::H264 { .. } => Format::H264,
            Codec::H265 { .. } => Format::H265,
            Codec::Aac { .. } => Format::Aac,
            Codec::Opus { .. } => Format::Opus,
        };
        Packetizer {
            format,
            payload_type,
            ssrc,
            next_seq: initial_seq,
            timestamp_offset,
        }
    }

    /// The sequence number the next packet will carry.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// The RTP timestamp of a presentation time in the track's clock.
    pub fn timestamp(&self, pts: i64) -> u32 {
        // RTP timestamps are modulo 2^32 by definition; truncation is the intent.
        self.timestamp_offset.wrapping_add(pts as u32)
    }

    /// Packetizes units of this track that are ready together, in order. AAC units that follow
    /// each other without a gap share packets, as many as fit (RFC 3640 section 3.2.1): each
    /// packet goes with the last unit it carries, and the units before that one get none. Every
    /// other unit is packetized as by [`Packetizer::packetize`].
    ///
    /// Sending a packet costs a server (and a player) far more than its bytes, and AAC's units
    /// are a few hundred bytes, 47 a second: three to a packet took what a UDP reader of a
    /// 2 Mbit/s route costs from 0.51–0.60× gst-rtsp-server's to 0.41–0.48× (readers bench).
    pub fn packetize_together(&mut self, units: &[AccessUnit]) -> Vec<RtpUnit> {
        let mut packetized = Vec::with_capacity(units.len());
        let mut start = 0;
        while let Some(first) = units.get(start) {
            let shared = self.units_sharing_a_packet(&units[start..]);
            if shared < 2 {
                packetized.push(self.packetize(first));
                start += 1;
                continue;
            }
            let group = &units[start..start + shared];
            for carried in &group[..shared - 1] {
                packetized.push(RtpUnit {
                    packets: Vec::new(),
                    wire: Bytes::new(),
                    runs: Vec::new(),
                    timestamp: self.timestamp(carried.pts),
                    first_seq: self.next_seq,
                });
            }
            let mut out = self.writer(first.pts, group.iter().map(|u| u.data.len()).sum());
            let mut headers = Vec::with_capacity(2 + 2 * shared);
            headers.extend_from_slice(&(16 * shared as u16).to_be_bytes());
            for unit in group {
                // Index 0, then index-delta 0: consecutive AUs. The size fits 13 bits (checked).
                headers.extend_from_slice(&((unit.data.len() as u16) << 3).to_be_bytes());
            }
            let mut parts: Vec<&[u8]> = Vec::with_capacity(1 + shared);
            parts.push(&headers);
            parts.extend(group.iter().map(|u| &u.data[..]));
            let first_seq = out.seq;
            out.packet(&parts);
            self.next_seq = out.seq;
            let (wire, packets) = out.finish();
            packetized.push(RtpUnit {
                runs: runs(packets.iter().map(Bytes::len)),
                packets,
                wire,
                timestamp: self.timestamp(group[shared - 1].pts),
                first_seq,
            });
            start += shared;
        }
        packetized
    }

    /// How many of `units`, from the first, can go in one AAC packet (1 when only the first).
    fn units_sharing_a_packet(&self, units: &[AccessUnit]) -> usize {
        if !matches!(self.format, Format::Aac) {
            return 1;
        }
        let fits = |unit: &AccessUnit| !unit.data.is_empty() && unit.data.len() <= 0x1fff;
        let mut bytes = 2;
        let mut count = 0;
        for (index, unit) in units.iter().take(AAC_UNITS_PER_PACKET).enumerate() {
            let follows = index == 0
                || (unit.track == units[0].track
                    // Timestamps come from publishers: absurd ones must not overflow.
                    && unit.pts.checked_sub(units[index - 1].pts) == Some(AAC_FRAME_SAMPLES));
            bytes += 2 + unit.data.len();
            if !follows || !fits(unit) || bytes > MAX_PAYLOAD {
                break;
            }
            count += 1;
        }
        count.max(1)
    }

    fn writer(&self, pts: i64, bytes: usize) -> Writer {
        let mut out = Writer {
            buf: BytesMut::with_capacity(bytes + (bytes / MAX_PAYLOAD + 4) * 20),
            ends: Vec::new(),
            header: [0; HEADER_SIZE],
            seq: self.next_seq,
        };
        out.header[0] = 0x80;
        out.header[1] = self.payload_type;
        out.header[4..8].copy_from_slice(&self.timestamp(pts).to_be_bytes());
        out.header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out
    }

    /// Packetizes one access unit. An access unit with nothing to send yields no packets.
    pub fn packetize(&mut self, unit: &AccessUnit) -> RtpUnit {
        let timestamp = self.timestamp(unit.pts);
        let first_seq = self.next_seq;
        let mut out = self.writer(unit.pts, unit.data.len());
        match self.format {
            Format::H264 => packetize_h264(&unit.data, &mut out),
            Format::H265 => packetize_h265(&unit.data, &mut out),
            Format::Aac => packetize_aac(&unit.data, &mut out),
            Format::Opus if !unit.data.is_empty() && unit.data.len() <= MAX_PAYLOAD => {
                out.packet(&[&unit.data]);
            }
            Format::Opus => {}
        }
        self.next_seq = out.seq;
        let (wire, packets) = out.finish();
        RtpUnit {
            runs: runs(packets.iter().map(Bytes::len)),
            packets,
            wire,
            timestamp,
            first_seq,
        }
    }
}

/// Appends packets to one buffer; the marker bit goes on the last packet of the access unit.
struct Writer {
    buf: BytesMut,
    ends: Vec<usize>,
    header: [u8; HEADER_SIZE],
    seq: u16,
}

impl Writer {
    fn packet(&mut self, parts: &[&[u8]]) {
        self.header[2..4].copy_from_slice(&self.seq.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.buf.put_slice(&self.header);
        for part in parts {
            self.buf.put_slice(part);
        }
        self.ends.push(self.buf.len());
    }

    fn finish(mut self) -> (Bytes, Vec<Bytes>) {
        if !self.ends.is_empty() {
            let last_start = match self.ends.len() {
                1 => 0,
                n => self.ends[n - 2],
            };
            self.buf[last_start + 1] |= 0x80;
        }
        let buf = self.buf.freeze();
        let mut start = 0;
        let packets = self
            .ends
            .iter()
            .map(|&end| {
                let packet = buf.slice(start..end);
                start = end;
                packet
            })
            .collect();
        (buf, packets)
    }
}

fn packetize_h264(data: &[u8], out: &mut Writer) {
    for nal in annex_b_nal_units(data) {
        let nal_type = nal[0] & 0x1f;
        if nal_type == H264_NAL_AUD {
            continue;
        }
        if nal.len() <= MAX_PAYLOAD {
            out.packet(&[nal]);
            continue;
        }
        let indicator = (nal[0] & 0xe0) | H264_FU_A;
        fragment(&nal[1..], MAX_PAYLOAD - 2, |chunk, start, end| {
            let header = nal_type | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
            out.packet(&[&[indicator, header], chunk]);
        });
    }
}

fn packetize_h265(data: &[u8], out: &mut Writer) {
    for nal in annex_b_nal_units(data) {
        if nal.len() < 2 {
            continue;
        }
        let nal_type = (nal[0] >> 1) & 0x3f;
        if nal_type == H265_NAL_AUD {
            continue;
        }
        if nal.len() <= MAX_PAYLOAD {
            out.packet(&[nal]);
            continue;
        }
        let payload_header = [(nal[0] & 0x81) | (H265_FU << 1), nal[1]];
        fragment(&nal[2..], MAX_PAYLOAD - 3, |chunk, start, end| {
            let fu_header = nal_type | if start { 0x80 } else { 0 } | if end { 0x40 } else { 0 };
            out.packet(&[&payload_header, &[fu_header], chunk]);
        });
    }
}

/// One AU per packet with a single 16-bit AU-header (13-bit size, 3-bit index); an AU too large for
/// one packet is fragmented, each fragment carrying the whole AU's size (RFC 3640 section 3.2.3).
fn packetize_aac(data: &[u8], out: &mut Writer) {
    // sizelength=13 caps an AU at 8191 bytes; AAC frames are at most 768 bytes per channel.
    let Ok(size) = u16::try_from(data.len()) else {
        return;
    };
    if data.is_empty() || size > 0x1fff {
        return;
    }
    let headers = [0x00, 0x10, (size >> 5) as u8, ((size & 0x1f) << 3) as u8];
    fragment(data, MAX_PAYLOAD - headers.len(), |chunk, _, _| {
        out.packet(&[&headers, chunk]);
    });
}

/// Calls `emit(chunk, is_first, is_last)` for each piece of `data` of at most `max` bytes.
fn fragment(data: &[u8], max: usize, mut emit: impl FnMut(&[u8], bool, bool)) {
    let count = data.len().div_ceil(max).max(1);
    for (i, chunk) in data.chunks(max).enumerate() {
        emit(chunk, i == 0, i + 1 == count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn h264() -> Codec {
        Codec::H264 {
            sps: Bytes::new(),
            pps: Bytes::new(),
        }
    }

    fn unit(data: Vec<u8>) -> AccessUnit {
        AccessUnit {
            track: 0,
            pts: 3000,
            dts: 3000,
            keyframe: true,
            data: Bytes::from(data),
        }
    }

    #[test]
    fn small_nals_go_one_per_packet_with_marker_on_the_last() {
        let mut packetizer = Packetizer::new(&h264(), 96, 0x1234_5678, 65535, 10);
        let rtp = packetizer.packetize(&unit(vec![
            0, 0, 0, 1, 9, 0xf0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 1, 0x65, 9,
        ]));
        assert_eq!(rtp.packets.len(), 3, "the access unit delimiter is dropped");
        assert_eq!(rtp.first_seq, 65535);
        assert_eq!(rtp.timestamp, 3010);
        let seqs: Vec<u16> = rtp
            .packets
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert_eq!(seqs, vec![65535, 0, 1]);
        assert_eq!(&rtp.packets[0][12..], &[0x67, 1, 2]);
        assert_eq!(rtp.packets[0][1], 96);
        assert_eq!(rtp.packets[2][1], 0x80 | 96);
        assert_eq!(&rtp.packets[2][8..12], &0x1234_5678u32.to_be_bytes());
    }

    #[test]
    fn large_nal_is_split_into_fu_a() {
        let mut data = vec![0, 0, 0, 1, 0x65];
        data.extend((0..5000).map(|i| (i % 251) as u8 | 1));
        let mut packetizer = Packetizer::new(&h264(), 96, 1, 0, 0);
        let rtp = packetizer.packetize(&unit(data.clone()));
        assert!(rtp.packets.iter().all(|p| p.len() <= MAX_PACKET_SIZE));
        assert_eq!(rtp.packets[0][12], 0x60 | 28);
        assert_eq!(rtp.packets[0][13], 0x80 | 5);
        let last = rtp.packets.last().unwrap();
        assert_eq!(last[13], 0x40 | 5);
        assert_eq!(last[1] & 0x80, 0x80);
        let rebuilt: Vec<u8> = rtp.packets.iter().flat_map(|p| p[14..].to_vec()).collect();
        assert_eq!(rebuilt, data[5..]);
    }

    #[test]
    fn aac_has_one_au_header() {
        let codec = Codec::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48000,
            channels: 2,
        };
        let mut packetizer = Packetizer::new(&codec, 97, 1, 0, 0);
        let rtp = packetizer.packetize(&unit(vec![7; 300]));
        assert_eq!(rtp.packets.len(), 1);
        let p = &rtp.packets[0];
        assert_eq!(
            &p[12..16],
            &[0x00, 0x10, (300 >> 5) as u8, ((300 & 0x1f) << 3) as u8]
        );
        assert_eq!(p.len(), 16 + 300);
        assert_eq!(p[1], 0x80 | 97);
    }

    fn aac() -> Codec {
        Codec::Aac {
            config: Bytes::from_static(&[0x11, 0x90]),
            sample_rate: 48000,
            channels: 2,
        }
    }

    fn aac_units(units: &[(i64, usize)]) -> Vec<AccessUnit> {
        units
            .iter()
            .enumerate()
            .map(|(i, &(pts, size))| AccessUnit {
                track: 0,
                pts,
                dts: pts,
                keyframe: true,
                data: Bytes::from(vec![i as u8 + 1; size]),
            })
            .collect()
    }

    #[test]
    fn aac_units_that_follow_each_other_share_a_packet_which_goes_with_the_last() {
        let mut packetizer = Packetizer::new(&aac(), 97, 1, 500, 10);
        let units = aac_units(&[(0, 300), (1024, 200), (2048, 100)]);
        let rtp = packetizer.packetize_together(&units);
        assert_eq!(rtp.len(), 3);
        assert!(rtp[0].packets.is_empty() && rtp[1].packets.is_empty());
        assert_eq!((rtp[0].timestamp, rtp[1].timestamp), (10, 1034));
        assert_eq!((rtp[0].first_seq, rtp[1].first_seq), (500, 500));
        let [packet] = &rtp[2].packets[..] else {
            panic!("one packet: {:?}", rtp[2].packets);
        };
        assert_eq!((rtp[2].first_seq, rtp[2].timestamp), (500, 2058));
        assert_eq!(
            rtp[2].first_timestamp(),
            10,
            "the packet's is the first unit's"
        );
        assert_eq!(packet[1], 0x80 | 97, "marker: the packet holds whole units");
        assert_eq!(&packet[12..14], &[0, 48], "three 16-bit AU-headers");
        let sizes: Vec<u16> = packet[14..20]
            .chunks(2)
            .map(|h| u16::from_be_bytes([h[0], h[1]]) >> 3)
            .collect();
        assert_eq!(sizes, vec![300, 200, 100]);
        assert_eq!(packet.len(), 20 + 600);
        assert_eq!(packetizer.next_seq(), 501);
        // Our own depacketizer (which RTSP publishing and pulling use) gets the three back.
        let mut depacketizer =
            crate::rtp::Depacketizer::new(crate::rtp::PayloadFormat::Aac, 64 * 1024);
        let back = depacketizer.push(packet).expect("depacketized");
        let back: Vec<(i64, usize)> = back.iter().map(|u| (u.timestamp, u.data.len())).collect();
        assert_eq!(back, vec![(10, 300), (1034, 200), (2058, 100)]);
    }

    #[test]
    fn aac_units_with_a_gap_or_too_big_together_get_packets_of_their_own() {
        let mut packetizer = Packetizer::new(&aac(), 97, 1, 0, 0);
        // A frame missing between the first two; no two of the last three fit one packet.
        let units = aac_units(&[(0, 300), (2048, 700), (3072, 700), (4096, 700)]);
        let rtp = packetizer.packetize_together(&units);
        let packets: Vec<usize> = rtp.iter().map(|r| r.packets.len()).collect();
        assert_eq!(packets, vec![1, 1, 1, 1]);
        for (rtp, unit) in rtp.iter().zip(&units) {
            assert_eq!(&rtp.packets[0][12..14], &[0, 16]);
            assert_eq!(rtp.first_timestamp(), unit.pts as u32);
        }
        let seqs: Vec<u16> = rtp.iter().map(|r| r.first_seq).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
    }

    #[test]
    fn aac_units_with_absurd_timestamps_get_packets_of_their_own() {
        let mut packetizer = Packetizer::new(&aac(), 97, 1, 0, 0);
        let units = aac_units(&[(i64::MIN, 300), (i64::MAX, 300), (i64::MIN, 300)]);
        let packets: Vec<usize> = packetizer
            .packetize_together(&units)
            .iter()
            .map(|r| r.packets.len())
            .collect();
        assert_eq!(packets, vec![1, 1, 1]);
    }

    #[test]
    fn video_units_ready_together_are_packetized_one_by_one() {
        let mut together = Packetizer::new(&h264(), 96, 1, 0, 0);
        let mut alone = Packetizer::new(&h264(), 96, 1, 0, 0);
        let units = [
            unit(vec![0, 0, 0, 1, 0x65, 1, 2, 3]),
            unit(vec![0, 0, 0, 1, 0x41, 4, 5]),
        ];
        let packetized = together.packetize_together(&units);
        for (rtp, unit) in packetized.iter().zip(&units) {
            assert_eq!(rtp.packets, alone.packetize(unit).packets);
        }
    }

    #[test]
    fn runs_group_equal_packets_with_a_shorter_last() {
        let runs = super::runs([30, 10, 1400, 1400, 1400, 700, 1400, 1400].into_iter());
        let spans: Vec<(std::ops::Range<usize>, usize, usize)> = runs
            .iter()
            .map(|r| (r.bytes.clone(), r.segment, r.packets()))
            .collect();
        assert_eq!(
            spans,
            vec![(0..40, 30, 2), (40..4940, 1400, 4), (4940..7740, 1400, 2),]
        );
        assert!(super::runs(std::iter::empty()).is_empty());
    }
}
