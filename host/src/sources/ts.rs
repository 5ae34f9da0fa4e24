//! MPEG-TS demuxing (ISO/IEC 13818-1), packets to PES: the layer under the HTTP push.
//!
//! Sans-IO: bytes in, whole PES packets out. It resynchronizes on garbage (a sync byte that a second
//! one 188 bytes later confirms), keeps a partial packet for the next push, reads the first program
//! of the PAT/PMT, and bounds every buffer it keeps.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

const PACKET_SIZE: usize = 188;
const SYNC_BYTE: u8 = 0x47;
const PAT_PID: u16 = 0;
/// Bytes without one valid packet before the input is declared not to be MPEG-TS at all.
const MAX_LEADING_GARBAGE: u64 = 64 * 1024;

/// The elementary streams we can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    H264,
    H265,
    /// AAC in ADTS frames.
    Aac,
    Opus,
}

/// One PES packet's payload and timestamps (90 kHz, 33 bits, as in the stream).
#[derive(Debug)]
pub struct Pes {
    pub pid: u16,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub data: Bytes,
}

/// Why the input cannot be demuxed at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("not an MPEG-TS stream: no sync byte pattern in the first {0} bytes")]
    NotTs(u64),
}

#[derive(Debug)]
struct PesAssembly {
    pts: Option<u64>,
    dts: Option<u64>,
    /// Payload bytes still expected when the PES header gave a length.
    remaining: Option<usize>,
    data: BytesMut,
}

/// Demuxes one transport stream.
#[derive(Debug)]
pub struct TsDemuxer {
    /// The largest PES packet assembled, and the most all open ones may hold together: a stream
    /// that announces many PIDs still holds no more than this.
    max_unit: usize,
    /// Bytes in `assemblies` now.
    held: usize,
    /// PES packets dropped for being over `max_unit`.
    pub oversize: u64,
    pending: BytesMut,
    pmt_pid: Option<u16>,
    streams: BTreeMap<u16, StreamKind>,
    /// Stream types of the PMT we cannot carry.
    unsupported: Vec<u8>,
    assemblies: BTreeMap<u16, PesAssembly>,
    synced: bool,
    pmt_read: bool,
    bytes_in: u64,
    /// Bytes skipped while looking for packet boundaries.
    pub garbage_bytes: u64,
}

impl TsDemuxer {
    /// A demuxer that drops PES packets over `max_unit` bytes.
    pub fn new(max_unit: usize) -> TsDemuxer {
        TsDemuxer {
            max_unit,
            held: 0,
            oversize: 0,
            pending: BytesMut::new(),
            pmt_pid: None,
            streams: BTreeMap::new(),
            unsupported: Vec::new(),
            assemblies: BTreeMap::new(),
            synced: false,
            pmt_read: false,
            bytes_in: 0,
            garbage_bytes: 0,
        }
    }

    /// The program's elementary streams we can carry, by PID, once the PMT has been read.
    pub fn streams(&self) -> &BTreeMap<u16, StreamKind> {
        &self.streams
    }

    /// The stream types of the program that we cannot carry; `None` until a PMT was read.
    pub fn unsupported_stream_types(&self) -> Option<&[u8]> {
        self.pmt_read.then_some(&self.unsupported[..])
    }

    /// Bytes fed so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Feeds bytes; complete PES packets are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Pes>) -> Result<(), TsError> {
        self.bytes_in += data.len() as u64;
        self.pending.extend_from_slice(data);
        loop {
            let Some(start) = self.find_packet_start() else {
                // Keep a tail that may hold the start of a packet; the rest is garbage.
                let keep = self.pending.len().min(PACKET_SIZE);
                let drop = self.pending.len() - keep;
                self.garbage_bytes += drop as u64;
                let _ = self.pending.split_to(drop);
                break;
            };
            if start > 0 {
                self.garbage_bytes += start as u64;
                let _ = self.pending.split_to(start);
            }
            if self.pending.len() < PACKET_SIZE {
                break;
            }
            let packet = self.pending.split_to(PACKET_SIZE);
            self.synced = true;
            self.packet(&packet, out);
        }
        if !self.synced && self.garbage_bytes > MAX_LEADING_GARBAGE {
            return Err(TsError::NotTs(self.bytes_in));
        }
        Ok(())
    }

    /// Ends the stream: PES packets still open are complete now.
    pub fn finish(&mut self, out: &mut Vec<Pes>) {
        let pids: Vec<u16> = self.assemblies.keys().copied().collect();
        for pid in pids {
            self.flush(pid, out);
        }
    }

    /// The offset of the next packet: a sync byte confirmed by the next packet's, or a sync byte
    /// too close to the end to confirm yet.
    fn find_packet_start(&self) -> Option<usize> {
        let buf = &self.pending[..];
        (0..buf.len()).find(|&i| {
            buf[i] == SYNC_BYTE
                && match buf.get(i + PACKET_SIZE) {
                    Some(&next) => next == SYNC_BYTE,
                    // Unconfirmed: trust it once aligned, or wait for more bytes.
                    None => self.synced || buf.len() - i < PACKET_SIZE + 1,
                }
        })
    }

    fn packet(&mut self, packet: &[u8], out: &mut Vec<Pes>) {
        let transport_error = packet[1] & 0x80 != 0;
        if transport_error {
            return;
        }
        let unit_start = packet[1] & 0x40 != 0;
        let pid = u16::from_be_bytes([packet[1] & 0x1f, packet[2]]);
        let adaptation = (packet[3] >> 4) & 0x3;
        let payload_start = match adaptation {
            0b01 => 4,
            0b11 => 5 + usize::from(packet[4]),
            _ => return,
        };
        let Some(payload) = packet.get(payload_start..) else {
            return;
        };
        // Muxers pad only the last packet of a PES, with an adaptation field that carries nothing
        // but stuffing: a video PES of unbounded length is complete there, a frame earlier than
        // the next PES header would tell.
        let padded = adaptation == 0b11 && (packet[4] == 0 || packet[5] == 0);
        if pid == PAT_PID {
            if unit_start {
                self.read_pat(payload);
            }
        } else if Some(pid) == self.pmt_pid {
            if unit_start {
                self.read_pmt(payload);
            }
        } else if self.streams.contains_key(&pid) {
            self.pes_payload(pid, unit_start, padded, payload, out);
        }
    }

    fn read_pat(&mut self, payload: &[u8]) {
        let Some(section) = psi_section(payload, 0x00) else {
            return;
        };
        // Entries of 4 bytes after the 5-byte header, the last 4 bytes are the CRC.
        let entries = section
            .get(8..section.len().saturating_sub(4))
            .unwrap_or(&[]);
        for entry in entries.chunks_exact(4) {
            let program = u16::from_be_bytes([entry[0], entry[1]]);
            if program != 0 {
                self.pmt_pid = Some(u16::from_be_bytes([entry[2] & 0x1f, entry[3]]));
                return;
            }
        }
    }

    fn read_pmt(&mut self, payload: &[u8]) {
        let Some(section) = psi_section(payload, 0x02) else {
            return;
        };
        let Some(info) = section.get(10..12) else {
            return;
        };
        let program_info_length = usize::from(u16::from_be_bytes([info[0] & 0x0f, info[1]]));
        let end = section.len().saturating_sub(4);
        let mut at = 12 + program_info_length;
        let mut streams = BTreeMap::new();
        let mut unsupported = Vec::new();
        while at + 5 <= end {
            let stream_type = section[at];
            let pid = u16::from_be_bytes([section[at + 1] & 0x1f, section[at + 2]]);
            let info_length = usize::from(u16::from_be_bytes([
                section[at + 3] & 0x0f,
                section[at + 4],
            ]));
            let descriptors = section.get(at + 5..at + 5 + info_length).unwrap_or(&[]);
            let kind = match stream_type {
                0x1b => Some(StreamKind::H264),
                0x24 => Some(StreamKind::H265),
                0x0f => Some(StreamKind::Aac),
                0x06 if has_registration(descriptors, b"Opus") => Some(StreamKind::Opus),
                _ => None,
            };
            match kind {
                Some(kind) => {
                    streams.insert(pid, kind);
                }
                None => unsupported.push(stream_type),
            }
            at += 5 + info_length;
        }
        self.pmt_read = true;
        self.unsupported = unsupported;
        if streams != self.streams {
            self.assemblies.retain(|pid, _| streams.contains_key(pid));
            self.held = self.assemblies.values().map(|a| a.data.len()).sum();
            self.streams = streams;
        }
    }

    fn pes_payload(
        &mut self,
        pid: u16,
        unit_start: bool,
        padded: bool,
        payload: &[u8],
        out: &mut Vec<Pes>,
    ) {
        if unit_start {
            self.flush(pid, out);
            let Some(header) = PesHeader::parse(payload) else {
                return;
            };
            let body = &payload[header.payload_offset..];
            if self.held + body.len() > self.max_unit {
                self.oversize += 1;
                return;
            }
            let mut data =
                BytesMut::with_capacity(header.remaining.unwrap_or(64 * 1024).min(self.max_unit));
            data.extend_from_slice(body);
            self.held += body.len();
            self.assemblies.insert(
                pid,
                PesAssembly {
                    pts: header.pts,
                    dts: header.dts,
                    remaining: header.remaining.map(|r| r.saturating_sub(body.len())),
                    data,
                },
            );
        } else if let Some(assembly) = self.assemblies.get_mut(&pid) {
            if self.held + payload.len() > self.max_unit {
                self.held -= assembly.data.len();
                self.assemblies.remove(&pid);
                self.oversize += 1;
                return;
            }
            assembly.data.extend_from_slice(payload);
            self.held += payload.len();
            if let Some(remaining) = &mut assembly.remaining {
                *remaining = remaining.saturating_sub(payload.len());
            }
        } else {
            return;
        }
        let complete = match self.assemblies.get(&pid).map(|a| a.remaining) {
            Some(Some(remaining)) => remaining == 0,
            Some(None) => padded,
            None => false,
        };
        if complete {
            self.flush(pid, out);
        }
    }

    fn flush(&mut self, pid: u16, out: &mut Vec<Pes>) {
        let Some(assembly) = self.assemblies.remove(&pid) else {
            return;
        };
        self.held -= assembly.data.len();
        if !assembly.data.is_empty() {
            out.push(Pes {
                pid,
                pts: assembly.pts,
                dts: assembly.dts,
                data: assembly.data.freeze(),
            });
        }
    }
}

/// The section of a PSI table starting in `payload`, if it is whole and of the expected table.
fn psi_section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let section = payload.get(1 + pointer..)?;
    if *section.first()? != table_id {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([
        section.get(1)? & 0x0f,
        *section.get(2)?,
    ]));
    section.get(..3 + length)
}

fn has_registration(descriptors: &[u8], format: &[u8; 4]) -> bool {
    let mut at = 0;
    while at + 2 <= descriptors.len() {
        let (tag, length) = (descriptors[at], usize::from(descriptors[at + 1]));
        if tag == 0x05 && descriptors.get(at + 2..at + 6) == Some(&format[..]) {
            return true;
        }
        at += 2 + length;
    }
    false
}

struct PesHeader {
    pts: Option<u64>,
    dts: Option<u64>,
    payload_offset: usize,
    remaining: Option<usize>,
}

impl PesHeader {
    fn parse(payload: &[u8]) -> Option<PesHeader> {
        if payload.get(..3)? != [0, 0, 1] {
            return None;
        }
        let packet_length = usize::from(u16::from_be_bytes([*payload.get(4)?, *payload.get(5)?]));
        let flags = *payload.get(7)?;
        let header_length = usize::from(*payload.get(8)?);
        let payload_offset = 9 + header_length;
        if payload_offset > payload.len() {
            return None;
        }
        let pts = if flags & 0x80 != 0 {
            timestamp(payload.get(9..14)?)
        } else {
            None
        };
        let dts = if flags & 0xc0 == 0xc0 {
            timestamp(payload.get(14..19)?)
        } else {
            None
        };
        // A length of zero means "until the next PES" (video).
        let remaining =
            (packet_length != 0).then(|| (packet_length + 6).saturating_sub(payload_offset));
        Some(PesHeader {
            pts,
            dts,
            payload_offset,
            remaining,
        })
    }
}

/// A 33-bit PES timestamp from its 5-byte encoding.
fn timestamp(b: &[u8]) -> Option<u64> {
    let b: &[u8; 5] = b.try_into().ok()?;
    Some(
        (u64::from(b[0] & 0x0e) << 29)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] & 0xfe) << 14)
            | (u64::from(b[3]) << 7)
            | (u64::from(b[4]) >> 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts_packet(pid: u16, unit_start: bool, payload: &[u8]) -> Vec<u8> {
        let mut packet = vec![
            SYNC_BYTE,
            (pid >> 8) as u8 | if unit_start { 0x40 } else { 0 },
            pid as u8,
        ];
        let stuffing = PACKET_SIZE - 4 - payload.len();
        if stuffing > 0 {
            packet.push(0x30);
            packet.push((stuffing - 1) as u8);
            if stuffing > 1 {
                packet.push(0);
                packet.extend(std::iter::repeat_n(0xff, stuffing - 2));
            }
        } else {
            packet.push(0x10);
        }
        packet.extend_from_slice(payload);
        assert_eq!(packet.len(), PACKET_SIZE);
        packet
    }

    fn pat() -> Vec<u8> {
        ts_packet(
            0,
            true,
            &[
                0, 0x00, 0xb0, 13, 0, 1, 0xc1, 0, 0, 0, 1, 0xe1, 0x00, 0, 0, 0, 0,
            ],
        )
    }

    fn pmt() -> Vec<u8> {
        ts_packet(
            0x100,
            true,
            &[
                0, 0x02, 0xb0, 23, 0, 1, 0xc1, 0, 0, 0xe1, 0x01, 0xf0,
                0, // header, no program info
                0x1b, 0xe1, 0x01, 0xf0, 0, // H.264 on 0x101
                0x0f, 0xe1, 0x02, 0xf0, 0, // AAC on 0x102
                0, 0, 0, 0, // CRC (not checked)
            ],
        )
    }

    fn pes(pts: u64, body: &[u8]) -> Vec<u8> {
        let mut pes = vec![0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5];
        pes.extend_from_slice(&[
            0x21 | ((pts >> 29) as u8 & 0x0e),
            (pts >> 22) as u8,
            ((pts >> 14) as u8 & 0xfe) | 1,
            (pts >> 7) as u8,
            ((pts << 1) as u8) | 1,
        ]);
        pes.extend_from_slice(body);
        pes
    }

    #[test]
    fn open_pes_packets_hold_no_more_than_the_cap_across_pids() {
        let mut input = pat();
        input.extend(pmt());
        // A video and an audio PES that start and never end, 184 bytes a packet (no stuffing,
        // which would close them).
        let mut video = pes(0, &[0, 0, 0, 1, 0x65]);
        video.resize(184, 7);
        let mut audio = pes(0, &[0xff, 0xf1]);
        audio.resize(184, 8);
        input.extend(ts_packet(0x101, true, &video));
        input.extend(ts_packet(0x102, true, &audio));
        for _ in 0..100 {
            input.extend(ts_packet(0x101, false, &[7; 184]));
            input.extend(ts_packet(0x102, false, &[8; 184]));
        }
        let mut demuxer = TsDemuxer::new(16 * 1024);
        let mut out = Vec::new();
        demuxer.push(&input, &mut out).expect("TS");
        assert!(demuxer.held <= 16 * 1024, "{} bytes held", demuxer.held);
        assert!(demuxer.oversize >= 2, "both were dropped at the cap");
        assert_eq!(
            demuxer.held,
            demuxer
                .assemblies
                .values()
                .map(|a| a.data.len())
                .sum::<usize>()
        );
    }

    #[test]
    fn reads_program_and_video_pes_across_garbage() {
        let mut input = b"garbage before the stream".to_vec();
        input.extend(pat());
        input.extend(pmt());
        let mut first = pes(90_000, &[0, 0, 0, 1, 0x65, 1, 2, 3]);
        first.resize(184, 7);
        input.extend(ts_packet(0x101, true, &first));
        input.extend(ts_packet(0x101, false, &[4, 5, 6]));
        input.extend(ts_packet(0x101, true, &pes(93_600, &[0, 0, 0, 1, 0x41, 9])));
        let mut demuxer = TsDemuxer::new(8 << 20);
        let mut out = Vec::new();
        // Fed in awkward pieces, as a network delivers it.
        for chunk in input.chunks(100) {
            demuxer.push(chunk, &mut out).expect("TS");
        }
        assert_eq!(demuxer.streams().len(), 2);
        assert_eq!(out.len(), 2, "each PES closes at its padded last packet");
        assert_eq!(out[0].pts, Some(90_000));
        assert_eq!(&out[0].data[..8], &[0, 0, 0, 1, 0x65, 1, 2, 3]);
        assert_eq!(
            out[0].data.len(),
            184 - 14 + 3,
            "a full packet, then the padded last one"
        );
        assert_eq!(out[1].pts, Some(93_600));
        assert_eq!(demuxer.garbage_bytes, 25);
    }

    #[test]
    fn an_unpadded_video_pes_closes_when_the_next_starts() {
        let mut input = pat();
        input.extend(pmt());
        let mut first = pes(0, &[0, 0, 0, 1, 0x65]);
        first.resize(184, 9);
        input.extend(ts_packet(0x101, true, &first));
        input.extend(ts_packet(0x101, false, &[9u8; 184]));
        let mut demuxer = TsDemuxer::new(8 << 20);
        let mut out = Vec::new();
        demuxer.push(&input, &mut out).expect("TS");
        assert!(out.is_empty(), "no padding, no end yet");
        let next = ts_packet(0x101, true, &pes(3600, &[0, 0, 0, 1, 0x41]));
        demuxer.push(&next, &mut out).expect("TS");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].data.len(), 184 - 14 + 184);
    }

    #[test]
    fn plain_garbage_is_not_ts() {
        let mut demuxer = TsDemuxer::new(8 << 20);
        let mut out = Vec::new();
        let garbage = vec![0x46u8; 100 * 1024];
        assert!(matches!(
            demuxer.push(&garbage, &mut out),
            Err(TsError::NotTs(_))
        ));
    }
}
