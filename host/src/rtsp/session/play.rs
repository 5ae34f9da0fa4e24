//! The requests of a reader's session: DESCRIBE, SETUP, PLAY and PAUSE.

use super::*;

impl Connection {
    pub(super) fn describe(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        cseq: &str,
        now: Instant,
    ) -> Result<Reply, Refusal> {
        let url = request_url(request)?;
        let name = named_route(url)?;
        let stream = self.readable(request, ctx, name, now)?;
        let media = live_media(&stream)?;
        let sdp = sdp::describe(
            name,
            &media.description,
            &media.tracks,
            ctx.local.ip(),
            rand::random::<u32>().into(),
        );
        let mut base = url.as_str().to_owned();
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(self
            .ok(cseq)
            .header(headers::CONTENT_TYPE, "application/sdp")
            .header(headers::CONTENT_BASE, base)
            .build(sdp.into_bytes())
            .into_reply())
    }

    pub(super) fn setup(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        cseq: &str,
        now: Instant,
    ) -> Result<Reply, Refusal> {
        let url = request_url(request)?;
        if self.session.as_ref().is_some_and(|s| s.playing) {
            return Err(Refusal::new(
                StatusCode::MethodNotValidInThisState,
                "Method Not Valid In This State (SETUP while playing)",
            ));
        }
        let stream = match (route_name(url), &self.session) {
            (Some(name), Some(session)) if name != session.stream.name() => {
                return Err(Refusal::new(
                    StatusCode::AggregateOperationNotAllowed,
                    "Aggregate Operation Not Allowed (one route per session)",
                ));
            }
            (_, Some(session)) => Arc::clone(&session.stream),
            (Some(name), None) => self.readable(request, ctx, name, now)?,
            (None, None) => {
                return Err(Refusal::new(
                    StatusCode::NotFound,
                    "Not Found (no route in the URL)",
                ));
            }
        };
        let media = match &self.session {
            Some(session) => Arc::clone(&session.media),
            None => live_media(&stream)?,
        };
        let track_count = media.description.tracks.len();
        let track = match track_id(url) {
            Some(track) if track < track_count => track,
            Some(_) => {
                return Err(Refusal::new(
                    StatusCode::NotFound,
                    "Not Found (no such track)",
                ));
            }
            None if track_count == 1 => 0,
            None => {
                return Err(Refusal::new(
                    StatusCode::NotFound,
                    "Not Found (SETUP needs a track URL, e.g. .../trackID=0)",
                ));
            }
        };
        let transports: Transports = request.typed_header().ok().flatten().ok_or_else(|| {
            Refusal::new(
                StatusCode::BadRequest,
                "Bad Request (no usable Transport header)",
            )
        })?;
        let session_is_tcp = self
            .session
            .as_ref()
            .map(|s| !s.is_udp() && s.tracks.iter().any(Option::is_some));
        let chosen = transports
            .iter()
            .find_map(|spec| choose_transport(spec, track, ctx.peer, session_is_tcp))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UnsupportedTransport,
                    "Unsupported Transport (use RTP/AVP unicast over UDP, or RTP/AVP/TCP interleaved)",
                )
            })?;
        if self.session.is_none() {
            self.session = Some(Session {
                id: session_id(),
                stream,
                tracks: (0..track_count).map(|_| None).collect(),
                media,
                playing: false,
                last_activity: now,
                setup_at: Some(now),
                slot: None,
            });
        }
        let Some(session) = &mut self.session else {
            return Err(Refusal::new(
                StatusCode::InternalServerError,
                "Internal Server Error",
            ));
        };
        let ssrc = session.media.tracks[track].ssrc;
        let transport_header = chosen.header(ctx.udp_ports, &format!("ssrc={ssrc:08X}"));
        session.tracks[track] = Some(SetupTrack {
            transport: chosen,
            url: url.as_str().to_owned(),
        });
        Ok(self
            .ok(cseq)
            .header(headers::TRANSPORT, transport_header)
            .build(Vec::new())
            .into_reply())
    }

    pub(super) fn play(
        &mut self,
        ctx: &Context<'_>,
        cseq: &str,
        now: Instant,
    ) -> Result<Reply, Refusal> {
        let Some(session) = &mut self.session else {
            return Err(Refusal::new(
                StatusCode::SessionNotFound,
                "Session Not Found (SETUP first)",
            ));
        };
        if session.tracks.iter().all(Option::is_none) {
            return Err(Refusal::new(
                StatusCode::MethodNotValidInThisState,
                "Method Not Valid In This State (no track set up)",
            ));
        }
        // The slot under max_clients is taken here, not at SETUP: a client that never plays holds
        // none (and is ended after SESSION_START_TIMEOUT).
        if session.slot.is_none() {
            session.slot = Some(ctx.clients.acquire().map_err(access::too_full)?);
        }
        let reader = session
            .stream
            .subscribe()
            .ok_or_else(|| unavailable(&session.stream))?;
        session.setup_at = None;
        // A re-encoding route starts a fresh GOP for the newcomer (others ignore this).
        session.stream.request_keyframe();
        // RTP-Info gives, per track, the first packet this reader will get (seq) and the RTP time
        // of one shared start instant, that of the first packet it will get, which may carry AAC
        // units from before its first unit (RFC 2326: every rtptime corresponds to the start of
        // the Range; see `Packetizer::packetize_together`). Clients map each track's clock from these, so
        // they must name the same instant: ffmpeg switches to sender-report timing once reports
        // arrive and would shift a track by any difference. With nothing kept, the start is now.
        let backlog = reader.backlog();
        let media = reader.media();
        let first = backlog.first();
        let start = first
            .and_then(|unit| media.instant_of(unit.au.track, unit.rtp.first_timestamp(), now))
            .unwrap_or(now);
        let mut rtp_info = Vec::new();
        for (index, track) in session.tracks.iter().enumerate() {
            let Some(track) = track else { continue };
            let mut entry = format!("url={}", track.url);
            if let Some(unit) = backlog.iter().find(|unit| unit.au.track == index) {
                entry.push_str(&format!(";seq={}", unit.rtp.first_seq));
            }
            let rtptime = match first {
                // Exact for the first unit's own track, not rounded through nanoseconds.
                Some(unit) if unit.au.track == index => Some(unit.rtp.first_timestamp()),
                _ => media.rtp_timestamp_at(index, start),
            };
            if let Some(rtptime) = rtptime {
                entry.push_str(&format!(";rtptime={rtptime}"));
            }
            rtp_info.push(entry);
        }
        session.playing = true;
        let tracks = session
            .tracks
            .iter()
            .map(|t| t.as_ref().map(|t| t.transport))
            .collect();
        let response = self
            .ok(cseq)
            .header(headers::RANGE, "npt=0.000-")
            .header(headers::RTP_INFO, rtp_info.join(","))
            .build(Vec::new());
        Ok(Reply {
            response,
            action: Action::Play(Play { reader, tracks }),
        })
    }

    pub(super) fn pause(&mut self, cseq: &str) -> Result<Reply, Refusal> {
        let Some(session) = &mut self.session else {
            return Err(Refusal::new(
                StatusCode::SessionNotFound,
                "Session Not Found",
            ));
        };
        session.playing = false;
        Ok(Reply {
            response: self.ok(cseq).build(Vec::new()),
            action: Action::Stop,
        })
    }
}
