//! RTP packetization and RTCP, shared by every egress that speaks RTP.
//!
//! In: [`AccessUnit`]s, and publishers' RTP packets to rebuild into access units. Out: finished RTP packets as `Bytes` slices of one buffer per access unit,
//! made once per route and sent as they are to every reader; RTCP sender reports built per reader and
//! receiver reports parsed from readers. Nothing here touches a socket or a clock.

mod depacketize;
mod packetize;
pub mod rtcp;

pub use depacketize::{DepacketizeError, Depacketized, Depacketizer, PayloadFormat};
pub use packetize::{MAX_PACKET_SIZE, Packetizer, RtpUnit, Run};

/// Payload type the SDP announces for track `index`: dynamic types start at 96.
pub fn payload_type(index: usize) -> u8 {
    96u8.saturating_add(u8::try_from(index).unwrap_or(u8::MAX))
}

/// Sequence number and timestamp of an RTP packet, read from its fixed header.
pub fn header_seq_and_timestamp(packet: &[u8]) -> Option<(u16, u32)> {
    let header: &[u8; 12] = packet.get(..12)?.try_into().ok()?;
    Some((
        u16::from_be_bytes([header[2], header[3]]),
        u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
    ))
}

use crate::media::AccessUnit;
