//! The requests and media of a publisher's session: ANNOUNCE, SETUP in `mode=record`, RECORD, and
//! the RTP it sends.

use super::*;

impl Connection {
    /// Takes an interleaved frame: a publisher's RTP, or anyone's RTCP (proof of life). An error
    /// ends the publisher.
    pub fn receive_interleaved(
        &mut self,
        channel: u8,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), PublishError> {
        self.keep_alive(now);
        if let Some(publishing) = &mut self.publishing
            && let Some(track) = publishing.track_on_channel(channel)
        {
            publishing.receive(track, payload, now)?;
        }
        Ok(())
    }

    /// Takes a publisher's RTP packet for `track` that came over UDP. An error ends the publisher.
    pub fn receive_udp(
        &mut self,
        track: usize,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), PublishError> {
        match &mut self.publishing {
            Some(publishing) => publishing.receive(track, payload, now),
            None => Ok(()),
        }
    }

    pub(super) fn announce(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        cseq: &str,
        now: Instant,
    ) -> Result<Reply, Refusal> {
        if self.session.is_some() || self.publishing.is_some() {
            return Err(Refusal::new(
                StatusCode::MethodNotValidInThisState,
                "Method Not Valid In This State (this connection already has a session)",
            ));
        }
        let url = request_url(request)?;
        let name = named_route(url)?;
        let stream = ctx.router.feed(name).ok_or_else(|| {
            Refusal::new(
                StatusCode::NotFound,
                format!("Not Found (no push route takes `{name}`)"),
            )
        })?;
        access::permitted(ctx, stream.name())?;
        let user = self.authorize(request, ctx, stream.name(), true, now)?;
        let claim = stream.claim_as(user).map_err(|busy| {
            Refusal::new(
                StatusCode::MethodNotValidInThisState,
                format!("Method Not Valid In This State ({busy})"),
            )
        })?;
        let publishing = Publishing::announce(request.body(), stream, claim, session_id(), now)
            .map_err(|why| {
                Refusal::new(
                    StatusCode::UnsupportedMediaType,
                    format!("Unsupported Media Type ({why})"),
                )
            })?;
        self.publishing = Some(publishing);
        Ok(self.ok(cseq).build(Vec::new()).into_reply())
    }

    pub(super) fn setup_record(
        &mut self,
        request: &Request<Vec<u8>>,
        ctx: &Context<'_>,
        cseq: &str,
    ) -> Result<Reply, Refusal> {
        let Some(publishing) = &mut self.publishing else {
            return Err(Refusal::new(
                StatusCode::MethodNotValidInThisState,
                "ANNOUNCE first",
            ));
        };
        let url = request_url(request)?;
        let track = publishing.track_for_url(url.as_str()).ok_or_else(|| {
            Refusal::new(StatusCode::NotFound, "Not Found (no such announced track)")
        })?;
        let transports: Transports = request.typed_header().ok().flatten().ok_or_else(|| {
            Refusal::new(
                StatusCode::BadRequest,
                "Bad Request (no usable Transport header)",
            )
        })?;
        let chosen = transports
            .iter()
            .find_map(|spec| choose_record_transport(spec, track, ctx.peer))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::UnsupportedTransport,
                    "Unsupported Transport (use RTP/AVP unicast over UDP, or RTP/AVP/TCP interleaved, with mode=record)",
                )
            })?;
        publishing.setup(track, chosen);
        let transport_header = chosen.header(ctx.udp_ports, "mode=record");
        Ok(self
            .ok(cseq)
            .header(headers::TRANSPORT, transport_header)
            .build(Vec::new())
            .into_reply())
    }

    pub(super) fn record(&mut self, cseq: &str, now: Instant) -> Result<Reply, Refusal> {
        let Some(publishing) = &mut self.publishing else {
            return Err(Refusal::new(
                StatusCode::MethodNotValidInThisState,
                "Method Not Valid In This State (ANNOUNCE and SETUP first)",
            ));
        };
        let udp = publishing.record(now).map_err(|why| {
            Refusal::new(
                StatusCode::MethodNotValidInThisState,
                format!("Method Not Valid In This State ({why})"),
            )
        })?;
        Ok(Reply {
            response: self.ok(cseq).build(Vec::new()),
            action: Action::Record(udp),
        })
    }
}
