//! RTCP (RFC 3550 section 6): sender reports out, receiver reports in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
const SDES_CNAME: u8 = 1;
const CNAME: &[u8] = b"wasmcast";

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp for a wall-clock time.
pub fn ntp_timestamp(wall: SystemTime) -> u64 {
    let since_unix = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

/// What one sender report says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// Size of a BYE for one source.
pub const GOODBYE_SIZE: usize = 8;

/// A BYE for `ssrc` (RFC 3550 6.6): the source leaves, and players end its stream. It goes at the
/// end of a compound packet.
pub fn goodbye(ssrc: u32) -> [u8; GOODBYE_SIZE] {
    let mut out = [0u8; GOODBYE_SIZE];
    out[0] = 0x81;
    out[1] = PT_BYE;
    out[2..4].copy_from_slice(&1u16.to_be_bytes());
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out
}

/// Size of the compound packet [`SenderReport::write`] produces.
pub const SENDER_REPORT_SIZE: usize = 28 + 8 + (2 + CNAME.len() + 1).next_multiple_of(4);

impl SenderReport {
    /// A compound packet: the SR itself and the SDES CNAME every compound packet must carry.
    pub fn write(&self) -> [u8; SENDER_REPORT_SIZE] {
        let mut out = [0u8; SENDER_REPORT_SIZE];
        out[0] = 0x80;
        out[1] = PT_SR;
        out[2..4].copy_from_slice(&6u16.to_be_bytes());
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..16].copy_from_slice(&self.ntp.to_be_bytes());
        out[16..20].copy_from_slice(&self.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&self.packet_count.to_be_bytes());
        out[24..28].copy_from_slice(&self.octet_count.to_be_bytes());
        let sdes = &mut out[28..];
        let sdes_words = (sdes.len() / 4 - 1) as u16;
        sdes[0] = 0x81;
        sdes[1] = PT_SDES;
        sdes[2..4].copy_from_slice(&sdes_words.to_be_bytes());
        sdes[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        sdes[8] = SDES_CNAME;
        sdes[9] = CNAME.len() as u8;
        sdes[10..10 + CNAME.len()].copy_from_slice(CNAME);
        // The rest stays zero: the item list's terminator and padding to a 32-bit boundary.
        out
    }
}

/// A reception report block (from an RR, or from an SR the reader sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceptionReport {
    /// The SSRC of the stream being reported on (ours).
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256ths.
    pub fraction_lost: u8,
    pub cumulative_lost: i32,
    pub jitter: u32,
}

/// Why an incoming RTCP packet was not understood.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("RTCP packet shorter than its header")]
    Truncated,
    #[error("RTCP version {0} is not 2")]
    Version(u8),
    #[error("RTCP length field runs past the datagram")]
    Length,
}

/// Reads a compound RTCP packet and returns the reception reports it carries.
pub fn parse_reception_reports(mut data: &[u8]) -> Result<Vec<ReceptionReport>, ParseError> {
    let mut reports = Vec::new();
    while !data.is_empty() {
        let header: &[u8; 4] = data
            .get(..4)
            .and_then(|h| h.try_into().ok())
            .ok_or(ParseError::Truncated)?;
        let version = header[0] >> 6;
        if version != 2 {
            return Err(ParseError::Version(version));
        }
        let count = usize::from(header[0] & 0x1f);
        let length = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
        let packet = data.get(..length).ok_or(ParseError::Length)?;
        let blocks_start = match header[1] {
            PT_SR => Some(28),
            PT_RR => Some(8),
            _ => None,
        };
        if let Some(start) = blocks_start {
            for i in 0..count {
                let Some(block) = packet.get(start + i * 24..start + (i + 1) * 24) else {
                    return Err(ParseError::Length);
                };
                let lost = i32::from_be_bytes([0, block[5], block[6], block[7]]);
                // cumulative_lost is a signed 24-bit number.
                let cumulative_lost = (lost << 8) >> 8;
                reports.push(ReceptionReport {
                    ssrc: u32::from_be_bytes([block[0], block[1], block[2], block[3]]),
                    fraction_lost: block[4],
                    cumulative_lost,
                    jitter: u32::from_be_bytes([block[12], block[13], block[14], block[15]]),
                });
            }
        }
        data = &data[length..];
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_of_unix_epoch() {
        assert_eq!(ntp_timestamp(UNIX_EPOCH), NTP_UNIX_OFFSET << 32);
        let half = UNIX_EPOCH + Duration::from_millis(500);
        assert_eq!(ntp_timestamp(half) & 0xffff_ffff, 1 << 31);
    }

    #[test]
    fn sender_report_is_a_valid_compound_packet() {
        let sr = SenderReport {
            ssrc: 0xdead_beef,
            ntp: 0x0102_0304_0506_0708,
            rtp_timestamp: 90_000,
            packet_count: 10,
            octet_count: 12_000,
        }
        .write();
        assert_eq!(sr.len() % 4, 0);
        assert_eq!(&sr[..2], &[0x80, 200]);
        assert_eq!(&sr[28..30], &[0x81, 202]);
        assert_eq!(parse_reception_reports(&sr), Ok(vec![]));
    }

    #[test]
    fn reads_receiver_report_blocks() {
        let rr = [
            0x81, 201, 0, 7, 0, 0, 0, 1, // header, reporter SSRC
            0xde, 0xad, 0xbe, 0xef, 64, 0xff, 0xff, 0xfe, // ssrc, fraction, lost = -2
            0, 0, 0, 0, 0, 0, 0, 9, // highest seq, jitter = 9
            0, 0, 0, 0, 0, 0, 0, 0, // LSR, DLSR
        ];
        let reports = parse_reception_reports(&rr).expect("valid");
        assert_eq!(
            reports,
            vec![ReceptionReport {
                ssrc: 0xdead_beef,
                fraction_lost: 64,
                cumulative_lost: -2,
                jitter: 9
            }]
        );
        assert_eq!(parse_reception_reports(&rr[..20]), Err(ParseError::Length));
        assert_eq!(
            parse_reception_reports(&[0x40, 201, 0, 0]),
            Err(ParseError::Version(1))
        );
    }
}
