//! The tokio edge of the RTSP server: the accept loop and one task per control connection that runs
//! the protocol core; each connection's egress task is in [`super::egress`], the shared UDP sockets
//! in [`super::udp`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::Error;
use super::codec::{CodecError, Incoming, RtspDecoder};
use super::egress::{Egress, Sent, run_egress};
use super::inbound;
use super::session::{Action, Connection, Context, bad_request, service_unavailable};
use super::udp::{UdpSockets, receive_rtcp, receive_rtp, register_publisher, register_rtcp};
use crate::auth::Auth;
use crate::config::ServerConfig;
use crate::hub::{Revocation, Revoked};
use crate::listen::{
    Budget, ConnectionGate, Listener, MeteredRead, REQUESTS, Rebind, flood_in, keep_alive,
    past_requests,
};
use crate::router::{RouterError, RouterHandle};
use crate::rtp::rtcp;
use crate::sessions::{ClientLimit, EndedBy, Registration, SessionKind, Sessions};

/// How often a connection checks its session's liveness.
const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// A connection without a session is closed after this long without a request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request must arrive whole within this long of its first bytes (checked every few seconds).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long DESCRIBE and SETUP wait for a route whose source has not produced media yet.
const SOURCE_START_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound RTSP server, ready to run.
pub struct RtspServer {
    listener: Listener,
    rebind: Rebind,
    shared: Arc<Shared>,
}

struct Shared {
    router: RouterHandle,
    auth: Auth,
    sessions: Sessions,
    clients: Arc<ClientLimit>,
    udp: Arc<UdpSockets>,
    gate: Arc<ConnectionGate>,
}

impl RtspServer {
    /// Binds the RTSP listener and a pair of UDP ports from `rtp_ports`.
    pub async fn bind(
        config: &ServerConfig,
        router: RouterHandle,
        auth: Auth,
        sessions: Sessions,
        clients: Arc<ClientLimit>,
        gate: Arc<ConnectionGate>,
    ) -> Result<RtspServer, Error> {
        let (listener, rebind) =
            Listener::bind(config.rtsp)
                .await
                .map_err(|source| Error::Bind {
                    what: "RTSP",
                    addr: config.rtsp,
                    source,
                })?;
        let udp = UdpSockets::bind(config.rtsp.ip(), config.rtp_ports).await?;
        Ok(RtspServer {
            listener,
            rebind,
            shared: Arc::new(Shared {
                router,
                auth,
                sessions,
                clients,
                udp,
                gate,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The server's RTP and RTCP ports.
    pub fn udp_ports(&self) -> (u16, u16) {
        self.shared.udp.ports
    }

    /// The way to move this server to another address while it runs.
    pub fn rebind(&self) -> Rebind {
        self.rebind.clone()
    }

    /// Accepts connections until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::spawn(receive_rtcp(Arc::clone(&self.shared.udp)));
        tokio::spawn(receive_rtp(Arc::clone(&self.shared.udp)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((socket, peer)) if !self.shared.auth.permits(peer.ip(), None) => {
                        tracing::info!(%peer, "RTSP connection refused by the server's access list");
                        drop(socket);
                    }
                    Ok((socket, peer)) => match self.shared.gate.admit(peer.ip()) {
                        Ok(permit) => {
                            let _ = socket.set_nodelay(true);
                            keep_alive(&socket);
                            self.shared.gate.bound_send_buffer(&socket);
                            let shared = Arc::clone(&self.shared);
                            tokio::spawn(async move {
                                serve_connection(socket, peer, shared).await;
                                drop(permit);
                            });
                        }
                        Err(refusal) => {
                            // Counted in /metrics; a line per refusal would let a flood fill the log.
                            tracing::debug!(%peer, "RTSP connection refused: {refusal}");
                            drop(socket);
                        }
                    },
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("RTSP accept failed: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                () = &mut shutdown => return,
            }
        }
    }
}

async fn serve_connection(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let started = Instant::now();
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (read, write) = socket.into_split();
    let (egress, commands) = mpsc::channel(8);
    let mut egress_task = tokio::spawn(run_egress(write, commands, Arc::clone(&shared.udp)));
    let mut requests = FramedRead::new(
        MeteredRead::new(read, inbound::READER),
        RtspDecoder::default(),
    );
    let mut connection = Connection::default();
    let mut request_allowance = Budget::new(REQUESTS, Instant::now());
    let rtcp_seen = Arc::new(AtomicBool::new(false));
    let mut liveness = tokio::time::interval(LIVENESS_CHECK_INTERVAL);
    let mut log = AccessLog::default();
    let mut last_request = Instant::now();
    let mut registration: Option<Registration> = None;
    // Since when the connection has held part of a request.
    let mut partial_since: Option<Instant> = None;
    let (udp_media, mut udp_media_in) = mpsc::channel::<(usize, Bytes)>(1024);
    let mut publisher_registration = None;
    let mut revocation: Option<Revocation> = None;
    let ctx = Context {
        router: &shared.router,
        auth: &shared.auth,
        clients: &shared.clients,
        udp_ports: shared.udp.ports,
        peer,
        local,
    };
    let sent = loop {
        tokio::select! {
            incoming = requests.next() => {
                let request = match incoming {
                    None => break None,
                    Some(Err(err)) => {
                        let reason = match &err {
                            CodecError::Malformed => "malformed request",
                            CodecError::TooLarge => "request too large",
                            CodecError::Io(err) => {
                                if let Some(flood) = flood_in(err) {
                                    tracing::warn!(%peer, route = connection.route(), "RTSP connection closed: {flood}");
                                }
                                break None;
                            }
                        };
                        tracing::info!(%peer, "RTSP connection closed: {err}");
                        let mut bytes = Vec::new();
                        if bad_request(reason).write(&mut bytes).is_ok() {
                            let _ = egress.send(Egress::Response(bytes)).await;
                        }
                        break None;
                    }
                    Some(Ok(Incoming::Request(request))) => request,
                    Some(Ok(Incoming::Data { channel, payload })) => {
                        if let Err(err) = connection.receive_interleaved(channel, &payload, Instant::now()) {
                            tracing::warn!(%peer, route = connection.route(), "RTSP publisher ended: {err}");
                            break None;
                        }
                        if channel % 2 == 1 && let Ok(reports) = rtcp::parse_reception_reports(&payload) {
                            for report in reports {
                                tracing::trace!(%peer, channel, ?report, "RTCP receiver report");
                            }
                        }
                        continue;
                    }
                    Some(Ok(Incoming::Response)) => {
                        if !within_requests(&mut request_allowance, peer) {
                            break None;
                        }
                        continue;
                    }
                };
                if !within_requests(&mut request_allowance, peer) {
                    let mut bytes = Vec::new();
                    if service_unavailable(&request, &past_requests()).write(&mut bytes).is_ok() {
                        let _ = egress.send(Egress::Response(bytes)).await;
                    }
                    break None;
                }
                let refused = match connection.route_to_open(&request, &ctx, Instant::now()) {
                    Some(route) => wait_for_source(&shared, &route, peer).await.err(),
                    None => None,
                };
                last_request = Instant::now();
                partial_since = None;
                if let Some(refused) = refused {
                    let response = service_unavailable(&request, &refused.to_string());
                    log.note(&request, &connection, &response);
                    let mut bytes = Vec::new();
                    if response.write(&mut bytes).is_err() || egress.send(Egress::Response(bytes)).await.is_err() {
                        break None;
                    }
                    continue;
                }
                let reply = connection.handle(&request, &ctx, Instant::now());
                revocation = connection.revocation();
                log.note(&request, &connection, &reply.response);
                let mut bytes = Vec::with_capacity(512);
                if reply.response.write(&mut bytes).is_err() || egress.send(Egress::Response(bytes)).await.is_err() {
                    break None;
                }
                registration = match (registration.take(), connection.session_id(), connection.route()) {
                    (Some(registration), Some(_), _) => Some(registration),
                    (None, Some(id), Some(route)) => {
                        let kind = if connection.publishing().is_some() { SessionKind::RtspPublisher } else { SessionKind::RtspReader };
                        Some(shared.sessions.register(Some(id), kind, route, peer))
                    }
                    _ => None,
                };
                let command = match reply.action {
                    Action::None => continue,
                    Action::Play(play) => {
                        let registration = register_rtcp(&shared.udp, &play, &rtcp_seen);
                        Egress::Play(play, registration)
                    }
                    Action::Stop => Egress::Stop,
                    Action::Record(sources) => {
                        if sources.is_empty() {
                            // Its media comes interleaved on this connection.
                            requests.get_mut().hold_to(inbound::PUBLISHER);
                        }
                        publisher_registration = Some(register_publisher(&shared.udp, &sources, &udp_media, &rtcp_seen));
                        continue;
                    }
                };
                if egress.send(command).await.is_err() {
                    break None;
                }
            }
            Some((track, packet)) = udp_media_in.recv() => {
                if let Err(err) = connection.receive_udp(track, &packet, Instant::now()) {
                    tracing::warn!(%peer, route = connection.route(), "RTSP publisher ended: {err}");
                    break None;
                }
            }
            _ = liveness.tick() => {
                let now = Instant::now();
                if rtcp_seen.swap(false, Ordering::Relaxed) {
                    connection.keep_alive(now);
                }
                if let Some(why) = connection.expiry(now) {
                    tracing::info!(%peer, route = connection.route(), session = connection.session_id(), "RTSP session ended: {why}");
                    break None;
                }
                // Connections that hold no session, or trickle a request in, hold a slot for nothing.
                let idle = connection.session_id().is_none()
                    && now.saturating_duration_since(last_request) > IDLE_TIMEOUT;
                partial_since = match partial_since {
                    _ if requests.read_buffer().is_empty() => None,
                    None => Some(now),
                    since => since,
                };
                let trickling = partial_since.is_some_and(|since| now.saturating_duration_since(since) > REQUEST_TIMEOUT);
                if idle || trickling {
                    tracing::info!(%peer, "RTSP connection closed: idle or too slow");
                    break None;
                }
            }
            finished = &mut egress_task => break finished.ok(),
            reason = revoked(revocation.as_ref()) => {
                tracing::info!(%peer, route = connection.route(), "RTSP publisher ended: {reason}");
                break None;
            }
            by = ended(registration.as_ref()) => {
                tracing::info!(%peer, session = connection.session_id(), "RTSP session {by}");
                break None;
            }
        }
    };
    drop(egress);
    drop(publisher_registration);
    let sent = match sent {
        Some(sent) => sent,
        None => egress_task.await.unwrap_or_default(),
    };
    log.finish(peer, started.elapsed(), &sent);
}

async fn ended(registration: Option<&Registration>) -> EndedBy {
    match registration {
        Some(registration) => registration.ended().await,
        None => std::future::pending().await,
    }
}

async fn revoked(revocation: Option<&Revocation>) -> Revoked {
    match revocation {
        Some(revocation) => revocation.revoked().await,
        None => std::future::pending().await,
    }
}

/// Charges one message (a request, or a response a client sends) to the connection's allowance
/// of requests; false past it, logged.
fn within_requests(allowance: &mut Budget, peer: SocketAddr) -> bool {
    let within = allowance.charge(1, Instant::now());
    if !within {
        tracing::warn!(%peer, "RTSP connection closed: {}", past_requests());
    }
    within
}

/// A reader that arrives while its route's source is still starting gets the stream, not an error;
/// an on-demand route's source starts for it (a route pattern makes the route). Refused when a
/// pattern may make no more routes (for `peer`); a route that is not there is for the request's
/// own answer to say.
async fn wait_for_source(
    shared: &Shared,
    route: &str,
    peer: SocketAddr,
) -> Result<(), RouterError> {
    match shared.router.open(route, peer.ip()).await {
        Ok(stream) => {
            stream.wait_while_waiting(SOURCE_START_TIMEOUT).await;
            Ok(())
        }
        Err(RouterError::NoRoute(_)) => Ok(()),
        Err(refused) => Err(refused),
    }
}

/// The one access-log line a client session leaves.
#[derive(Default)]
struct AccessLog {
    route: Option<String>,
    session: Option<String>,
    user_agent: Option<String>,
    transport: Option<&'static str>,
    requests: u32,
    last_status: u16,
    /// The tracks this connection published, if it was a publisher.
    publishing: Option<String>,
}

impl AccessLog {
    fn note(
        &mut self,
        request: &rtsp_types::Request<Vec<u8>>,
        connection: &Connection,
        response: &rtsp_types::Response<Vec<u8>>,
    ) {
        self.requests += 1;
        self.last_status = response.status().into();
        if let Some(route) = connection.route() {
            self.route = Some(route.to_owned());
        }
        if let Some(id) = connection.session_id() {
            self.session = Some(id.to_owned());
        }
        if let Some(publishing) = connection.publishing() {
            self.publishing = Some(publishing);
        }
        if self.user_agent.is_none() {
            self.user_agent = request
                .header(&rtsp_types::headers::USER_AGENT)
                .map(|v| v.as_str().to_owned());
        }
        if let Some(transport) = response.header(&rtsp_types::headers::TRANSPORT) {
            self.transport = Some(if transport.as_str().starts_with("RTP/AVP/TCP") {
                "tcp"
            } else {
                "udp"
            });
        }
        tracing::debug!(
            method = ?request.method(),
            url = request.request_uri().map(|u| u.as_str()),
            status = self.last_status,
            "RTSP request"
        );
    }

    fn finish(&self, peer: SocketAddr, duration: Duration, sent: &Sent) {
        if self.requests == 0 {
            return;
        }
        tracing::info!(
            target: "wasmcast::access",
            %peer,
            route = self.route.as_deref().unwrap_or("-"),
            session = self.session.as_deref().unwrap_or("-"),
            transport = self.transport.unwrap_or("-"),
            published = self.publishing.as_deref().unwrap_or("-"),
            user_agent = self.user_agent.as_deref().unwrap_or("-"),
            requests = self.requests,
            last_status = self.last_status,
            seconds = duration.as_secs_f32(),
            packets = sent.packets,
            bytes = sent.bytes,
            "rtsp"
        );
    }
}
