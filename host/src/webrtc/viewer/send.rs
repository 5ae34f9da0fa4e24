//! What a viewer is sent: the route's units with its own SSRC and payload type, the frames of
//! the route's Opus rendition, and its sender reports.

use super::*;

impl Viewer {
    /// Writes the hub's RTP packets of one unit with this viewer's SSRC and payload type.
    pub(super) fn send_unit(&mut self, packets: &[Bytes], outgoing: Outgoing, tally: &mut Tally) {
        let now = Instant::now();
        let Some(mut sender) = self.pc.rtp_sender(outgoing.sender) else {
            return;
        };
        let (mut count, mut bytes) = (0u64, 0u64);
        for packet in packets {
            let mut buffer = packet.clone();
            let Ok(mut rtp) = rtc::rtp::Packet::unmarshal(&mut buffer) else {
                continue;
            };
            rtp.header.ssrc = outgoing.ssrc;
            rtp.header.payload_type = outgoing.payload_type;
            if sender.write_rtp(now, rtp).is_ok() {
                count += 1;
                bytes += packet.len() as u64;
            }
        }
        let sent = if outgoing.sender == self.video.sender {
            &mut tally.video
        } else {
            &mut tally.audio
        };
        sent.add(count, bytes as usize);
        tally.packets += count;
        tally.bytes += bytes;
        let stats = &self.stream.stats;
        stats.packets_out.fetch_add(count, Ordering::Relaxed);
        stats.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sends one frame of the route's Opus rendition as the next RTP packet.
    pub(super) fn send_opus(
        &mut self,
        frame: OpusFrame,
        outgoing: Outgoing,
        sequence: &mut u16,
        tally: &mut Tally,
    ) {
        let bytes = frame.data.len() + 12;
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: outgoing.payload_type,
                sequence_number: *sequence,
                timestamp: frame.timestamp,
                ssrc: outgoing.ssrc,
                ..Default::default()
            },
            payload: frame.data,
        };
        *sequence = sequence.wrapping_add(1);
        let Some(mut sender) = self.pc.rtp_sender(outgoing.sender) else {
            return;
        };
        if sender.write_rtp(Instant::now(), packet).is_ok() {
            tally.audio.add(1, bytes);
            tally.packets += 1;
            tally.bytes += bytes as u64;
            let stats = &self.stream.stats;
            stats.packets_out.fetch_add(1, Ordering::Relaxed);
            stats.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
        }
    }

    /// Sends a sender report for each track that has sent something, mapping the route's clock
    /// (not the moment of sending) to wall-clock time, so that the browser keeps the tracks in
    /// step however long each took to make.
    pub(super) fn report(&mut self, tally: &Tally) {
        let Some(media) = self.stream.media() else {
            return;
        };
        let now = Instant::now();
        let ntp = crate::rtp::rtcp::ntp_timestamp(std::time::SystemTime::now());
        let audio = match (&self.audio, &self.opus) {
            (Some((track, outgoing)), _) => Some((*outgoing, media.rtp_timestamp_at(*track, now))),
            (None, Some((outgoing, rendition))) => {
                Some((*outgoing, rendition.rtp_timestamp_at(&media, now)))
            }
            (None, None) => None,
        };
        let tracks = [
            Some((
                self.video,
                media.rtp_timestamp_at(self.video_track, now),
                &tally.video,
            )),
            audio.map(|(outgoing, at)| (outgoing, at, &tally.audio)),
        ];
        for (outgoing, rtp_time, sent) in tracks.into_iter().flatten() {
            let Some(rtp_time) = rtp_time.filter(|_| sent.packets > 0) else {
                continue;
            };
            let report = rtc::rtcp::sender_report::SenderReport {
                ssrc: outgoing.ssrc,
                ntp_time: ntp,
                rtp_time,
                // RFC 3550: the counts wrap.
                packet_count: sent.packets as u32,
                octet_count: sent.octets as u32,
                ..Default::default()
            };
            let Some(mut sender) = self.pc.rtp_sender(outgoing.sender) else {
                continue;
            };
            if let Err(err) = sender.write_rtcp(now, vec![Box::new(report)]) {
                tracing::debug!(session = %self.id, "sender report: {err}");
            }
        }
    }
}

/// How often a viewer gets sender reports.
pub(super) const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);

/// What a viewer was sent on one track, for its sender reports.
#[derive(Default)]
pub(super) struct Sent {
    packets: u64,
    /// Payload octets (RTP headers left out, as RFC 3550 counts them).
    octets: u64,
}

impl Sent {
    pub(super) fn add(&mut self, packets: u64, bytes: usize) {
        self.packets += packets;
        self.octets += (bytes as u64).saturating_sub(12 * packets);
    }
}
