//! RTP payload formats in: H.264 (RFC 6184: single NAL, STAP-A, FU-A), H.265 (RFC 7798: single,
//! AP, FU), AAC-hbr (RFC 3640) and Opus (RFC 7587), back into access units for RTSP publishers.

use bytes::{BufMut, Bytes, BytesMut};

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// What an incoming RTP stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    H264,
    H265,
    /// AAC-hbr with 13-bit sizes and 3-bit indexes.
    Aac,
    Opus,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DepacketizeError {
    #[error("not an RTP packet")]
    NotRtp,
    #[error("malformed {0:?} payload")]
    Malformed(PayloadFormat),
    #[error("access unit larger than {0} bytes (server.max_unit_mb)")]
    TooLarge(usize),
}

/// A depacketized unit: the unwrapped RTP timestamp and the payload (Annex B for video).
#[derive(Debug, PartialEq, Eq)]
pub struct Depacketized {
    pub timestamp: i64,
    pub data: Bytes,
}

/// Rebuilds access units of one track from its RTP packets.
#[derive(Debug)]
pub struct Depacketizer {
    format: PayloadFormat,
    /// The unit being assembled and its RTP timestamp.
    unit: BytesMut,
    unit_timestamp: Option<u32>,
    /// A fragmented NAL unit (FU-A / FU) or AAC frame being assembled.
    fragment: Option<BytesMut>,
    last_timestamp: Option<(u32, i64)>,
    samples_per_aac_frame: i64,
    /// The largest unit (and so the largest fragment) assembled: past it, what was gathered is
    /// dropped, so a publisher that never ends a fragment holds no more than this.
    max_unit: usize,
}

impl Depacketizer {
    /// A depacketizer that refuses units over `max_unit` bytes.
    pub fn new(format: PayloadFormat, max_unit: usize) -> Depacketizer {
        Depacketizer {
            max_unit,
            format,
            unit: BytesMut::new(),
            unit_timestamp: None,
            fragment: None,
            last_timestamp: None,
            samples_per_aac_frame: 1024,
        }
    }

    /// Takes one RTP packet; returns the units it completes.
    pub fn push(&mut self, packet: &[u8]) -> Result<Vec<Depacketized>, DepacketizeError> {
        let (marker, timestamp, payload) = parse_rtp(packet).ok_or(DepacketizeError::NotRtp)?;
        let mut out = Vec::new();
        match self.format {
            PayloadFormat::H264 | PayloadFormat::H265 => {
                // A new timestamp closes a unit whose marker was lost.
                if self.unit_timestamp.is_some_and(|t| t != timestamp) {
                    self.flush_unit(&mut out);
                }
                self.unit_timestamp = Some(timestamp);
                let result = if self.format == PayloadFormat::H264 {
                    self.h264(payload)
                } else {
                    self.h265(payload)
                };
                if let Err(err) = result {
                    // The unit cannot be whole any more.
                    self.drop_assembling();
                    return Err(err);
                }
                if marker {
                    self.flush_unit(&mut out);
                }
            }
            PayloadFormat::Aac => self.aac(payload, timestamp, marker, &mut out)?,
            PayloadFormat::Opus => {
                if !payload.is_empty() {
                    let timestamp = self.unwrap(timestamp);
                    out.push(Depacketized {
                        timestamp,
                        data: Bytes::copy_from_slice(payload),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Bytes of the unit and fragment being assembled.
    pub fn assembling(&self) -> usize {
        self.unit.len() + self.fragment.as_ref().map_or(0, BytesMut::len)
    }

    /// Drops the unit and fragment being assembled: nothing of that unit is kept until the next
    /// one.
    pub fn drop_assembling(&mut self) {
        self.unit.clear();
        self.fragment = None;
    }

    fn unwrap(&mut self, timestamp: u32) -> i64 {
        let value = match self.last_timestamp {
            None => i64::from(timestamp),
            // The difference as a signed 32-bit number: wraps and small steps back both work.
            Some((last, last_value)) => last_value + i64::from(timestamp.wrapping_sub(last) as i32),
        };
        self.last_timestamp = Some((timestamp, value));
        value
    }

    fn flush_unit(&mut self, out: &mut Vec<Depacketized>) {
        let Some(timestamp) = self.unit_timestamp.take() else {
            return;
        };
        self.fragment = None;
        if self.unit.is_empty() {
            return;
        }
        let timestamp = self.unwrap(timestamp);
        out.push(Depacketized {
            timestamp,
            data: self.unit.split().freeze(),
        });
    }

    fn nal(&mut self, nal: &[u8]) -> Result<(), DepacketizeError> {
        if self.unit.len() + START_CODE.len() + nal.len() > self.max_unit {
            return Err(DepacketizeError::TooLarge(self.max_unit));
        }
        self.unit.put_slice(&START_CODE);
        self.unit.put_slice(nal);
        Ok(())
    }

    fn h264(&mut self, payload: &[u8]) -> Result<(), DepacketizeError> {
        let malformed = DepacketizeError::Malformed(PayloadFormat::H264);
        let &header = payload.first().ok_or(malformed)?;
        match header & 0x1f {
            1..=23 => self.nal(payload)?,
            24 => {
                for nal in aggregated(&payload[1..]).ok_or(malformed)? {
                    self.nal(nal)?;
                }
            }
            28 => {
                let &fu = payload.get(1).ok_or(malformed)?;
                let data = &payload[2..];
                self.fragment_part(fu, data, &[(header & 0xe0) | (fu & 0x1f)])?;
            }
            _ => return Err(malformed),
        }
        Ok(())
    }

    fn h265(&mut self, payload: &[u8]) -> Result<(), DepacketizeError> {
        let malformed = DepacketizeError::Malformed(PayloadFormat::H265);
        let header: [u8; 2] = payload
            .get(..2)
            .and_then(|h| h.try_into().ok())
            .ok_or(malformed)?;
        match (header[0] >> 1) & 0x3f {
            0..=47 => self.nal(payload)?,
            48 => {
                for nal in aggregated(&payload[2..]).ok_or(malformed)? {
                    self.nal(nal)?;
                }
            }
            49 => {
                let &fu = payload.get(2).ok_or(malformed)?;
                let nal_header = [(header[0] & 0x81) | ((fu & 0x3f) << 1), header[1]];
                self.fragment_part(fu, &payload[3..], &nal_header)?;
            }
            _ => return Err(malformed),
        }
        Ok(())
    }

    /// One piece of a fragmented NAL unit; `fu` carries the start and end bits.
    fn fragment_part(
        &mut self,
        fu: u8,
        data: &[u8],
        nal_header: &[u8],
    ) -> Result<(), DepacketizeError> {
        let (start, end) = (fu & 0x80 != 0, fu & 0x40 != 0);
        if start {
            let mut fragment = BytesMut::with_capacity(data.len() * 4);
            fragment.put_slice(nal_header);
            fragment.put_slice(data);
            self.fragment = Some(fragment);
        } else if let Some(fragment) = &mut self.fragment {
            fragment.put_slice(data);
        }
        // The NAL unit joins the unit gathered so far: both together are held to the cap.
        let held = self.unit.len() + self.fragment.as_ref().map_or(0, BytesMut::len);
        if held > self.max_unit {
            return Err(DepacketizeError::TooLarge(self.max_unit));
        }
        // Without its start (a lost packet) the fragment is dropped whole.
        if end && let Some(fragment) = self.fragment.take() {
            self.nal(&fragment)?;
        }
        Ok(())
    }

    fn aac(
        &mut self,
        payload: &[u8],
        timestamp: u32,
        marker: bool,
        out: &mut Vec<Depacketized>,
    ) -> Result<(), DepacketizeError> {
        let malformed = DepacketizeError::Malformed(PayloadFormat::Aac);
        let header_bits = usize::from(u16::from_be_bytes(
            payload
                .get(..2)
                .and_then(|h| h.try_into().ok())
                .ok_or(malformed)?,
        ));
        let header_bytes = header_bits.div_ceil(8);
        let headers = payload.get(2..2 + header_bytes).ok_or(malformed)?;
        let mut data = &payload[2 + header_bytes..];
        let base = self.unwrap(timestamp);
        for (index, header) in headers.chunks_exact(2).take(header_bits / 16).enumerate() {
            let size = usize::from(u16::from_be_bytes([header[0], header[1]]) >> 3);
            if size > data.len() {
                // A fragment of one large frame: the rest follows, the last piece has the marker.
                let fragment = self.fragment.get_or_insert_with(BytesMut::new);
                fragment.put_slice(data);
                if fragment.len() > self.max_unit {
                    self.fragment = None;
                    return Err(DepacketizeError::TooLarge(self.max_unit));
                }
                if marker {
                    let frame = self.fragment.take().unwrap_or_default();
                    out.push(Depacketized {
                        timestamp: base,
                        data: frame.freeze(),
                    });
                }
                return Ok(());
            }
            let frame = match self.fragment.take() {
                Some(mut fragment) => {
                    fragment.put_slice(&data[..size.min(data.len())]);
                    fragment.freeze()
                }
                None => Bytes::copy_from_slice(&data[..size]),
            };
            out.push(Depacketized {
                timestamp: base + index as i64 * self.samples_per_aac_frame,
                data: frame,
            });
            data = &data[size..];
        }
        Ok(())
    }
}

/// The NAL units of a STAP-A / AP payload: each behind a 16-bit size.
fn aggregated(mut payload: &[u8]) -> Option<Vec<&[u8]>> {
    let mut nals = Vec::new();
    while payload.len() >= 2 {
        let size = usize::from(u16::from_be_bytes([payload[0], payload[1]]));
        let nal = payload.get(2..2 + size)?;
        if !nal.is_empty() {
            nals.push(nal);
        }
        payload = &payload[2 + size..];
    }
    Some(nals)
}

/// Marker bit, timestamp and payload of an RTP packet.
fn parse_rtp(packet: &[u8]) -> Option<(bool, u32, &[u8])> {
    let header: &[u8; 12] = packet.get(..12)?.try_into().ok()?;
    if header[0] >> 6 != 2 {
        return None;
    }
    let csrc_count = usize::from(header[0] & 0x0f);
    let mut start = 12 + csrc_count * 4;
    if header[0] & 0x10 != 0 {
        let extension = packet.get(start + 2..start + 4)?;
        start += 4 + usize::from(u16::from_be_bytes([extension[0], extension[1]])) * 4;
    }
    let mut end = packet.len();
    if header[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*packet.last()?))?;
    }
    let payload = packet.get(start..end)?;
    let timestamp = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    Some((header[1] & 0x80 != 0, timestamp, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AccessUnit, Codec};
    use crate::rtp::Packetizer;

    /// Our packetizer's output comes back as the same access units.
    fn round_trip(
        codec: &Codec,
        format: PayloadFormat,
        units: &[(i64, Vec<u8>)],
    ) -> Vec<Depacketized> {
        let mut packetizer = Packetizer::new(codec, 96, 1, 65530, u32::MAX - 1000);
        let mut depacketizer = Depacketizer::new(format, 1 << 20);
        let mut out = Vec::new();
        for (pts, data) in units {
            let rtp = packetizer.packetize(&AccessUnit {
                track: 0,
                pts: *pts,
                dts: *pts,
                keyframe: false,
                data: Bytes::from(data.clone()),
            });
            for packet in rtp.packets {
                out.extend(depacketizer.push(&packet).expect("valid"));
            }
        }
        out
    }

    #[test]
    fn h264_single_and_fragmented_units_round_trip() {
        let codec = Codec::H264 {
            sps: Bytes::new(),
            pps: Bytes::new(),
        };
        let mut big = vec![0, 0, 0, 1, 0x65];
        big.extend((0..5000).map(|i| (i % 253) as u8 | 1));
        let small = vec![
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x41, 7,
        ];
        let out = round_trip(
            &codec,
            PayloadFormat::H264,
            &[(0, big.clone()), (3000, small.clone())],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].data[..], &big[..]);
        assert_eq!(&out[1].data[..], &small[..]);
        assert_eq!(
            out[1].timestamp - out[0].timestamp,
            3000,
            "across the 32-bit wrap"
        );
    }

    #[test]
    fn h265_fragmented_unit_round_trips() {
        let codec = Codec::H265 {
            vps: Bytes::new(),
            sps: Bytes::new(),
            pps: Bytes::new(),
        };
        let mut big = vec![0, 0, 0, 1, 0x26, 0x01];
        big.extend((0..4000).map(|i| (i % 251) as u8 | 1));
        let out = round_trip(
            &codec,
            PayloadFormat::H265,
            &[(0, big.clone()), (3600, big.clone())],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(&out[0].data[..], &big[..]);
    }

    #[test]
    fn aac_round_trips() {
        let codec = Codec::Aac {
            config: Bytes::new(),
            sample_rate: 48000,
            channels: 2,
        };
        let out = round_trip(
            &codec,
            PayloadFormat::Aac,
            &[(0, vec![1; 300]), (1024, vec![2; 200])],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(&out[1].data[..], &[2; 200][..]);
        assert_eq!(out[1].timestamp - out[0].timestamp, 1024);
    }

    #[test]
    fn stap_a_is_split() {
        let packet = [
            0x80, 0xe0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, // header with marker
            24, 0, 2, 0x67, 1, 0, 1, 0x68, // STAP-A: SPS, PPS
        ];
        let out = Depacketizer::new(PayloadFormat::H264, 1 << 20)
            .push(&packet)
            .unwrap();
        assert_eq!(&out[0].data[..], &[0, 0, 0, 1, 0x67, 1, 0, 0, 0, 1, 0x68]);
    }

    #[test]
    fn endless_fragments_hold_no_more_than_the_cap() {
        let mut depacketizer = Depacketizer::new(PayloadFormat::H264, 64 * 1024);
        let packet = |fu: u8| {
            let mut packet = vec![0x80, 0x60, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 28, fu];
            packet.extend(std::iter::repeat_n(7u8, 1400));
            packet
        };
        for round in 0..3 {
            assert!(depacketizer.push(&packet(0x85)).is_ok(), "start of an IDR");
            let refused = (0..1000)
                .filter(|_| depacketizer.push(&packet(0x05)).is_err())
                .count();
            // Refused once at the cap; the rest belong to a fragment already dropped.
            assert_eq!(refused, 1, "round {round}");
            assert!(depacketizer.fragment.is_none() && depacketizer.unit.len() <= 64 * 1024);
        }
        let mut aac = Depacketizer::new(PayloadFormat::Aac, 64 * 1024);
        // One AU-header announcing 8000 bytes, then only 1000 of them per packet, never the marker.
        let mut fragment = vec![0x80, 0x61, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0, 16, 0xfa, 0];
        fragment.extend(std::iter::repeat_n(1u8, 1000));
        let refused = (0..200).filter(|_| aac.push(&fragment).is_err()).count();
        assert!(refused >= 1 && aac.fragment.as_ref().is_none_or(|f| f.len() <= 64 * 1024));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut depacketizer = Depacketizer::new(PayloadFormat::H264, 1 << 20);
        assert_eq!(depacketizer.push(&[1, 2, 3]), Err(DepacketizeError::NotRtp));
        let bad_stap = [0x80, 0xe0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 24, 0, 50, 1];
        assert!(depacketizer.push(&bad_stap).is_err());
        let mut aac = Depacketizer::new(PayloadFormat::Aac, 1 << 20);
        assert!(
            aac.push(&[0x80, 0xe0, 0, 1, 0, 0, 0, 9, 0, 0, 0, 1, 0, 64])
                .is_err()
        );
    }
}
