//! Where WebRTC sessions' ICE candidates are: the shared UDP and TCP ports (see `mux`) on the
//! address each browser reached, or on the public address (the `webrtc_*` keys of `[server]`).
//!
//! A viewer's candidates name the shared ports from the start ([`IceNetwork::viewer_addrs`]). The
//! webrtc crate, which drives publishers, announces the ephemeral addresses it bound, which the
//! mux closes at once; those host candidates are rewritten here to name the shared ports. Behind a
//! one-to-one NAT (a container's published ports, a cloud machine's public address) the bound
//! address is not the one browsers reach either: the candidates (and connection lines) of every
//! answer then name the public address. The webrtc crate keeps a `nat_1to1_ips` setting but does
//! not apply it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::mux::{self, IceMux, MuxLease, PublisherRuntime, ViewerPorts};
use crate::config::ServerConfig;
use crate::listen::ConnectionGate;

/// The `webrtc_*` keys of `[server]`, ready to use.
#[derive(Clone)]
pub struct IceNetwork {
    /// Unspecified: the address the browser reached the HTTP server at.
    ip: IpAddr,
    mux: IceMux,
    public_ip: Option<IpAddr>,
}

impl IceNetwork {
    /// Opens the shared ports.
    pub async fn bind(
        server: &ServerConfig,
        gate: Arc<ConnectionGate>,
    ) -> Result<IceNetwork, mux::Error> {
        let mux = IceMux::bind(server.webrtc_udp, server.webrtc_tcp, gate).await?;
        tracing::info!(
            udp = %mux.udp_addr(),
            tcp = ?mux.tcp_addr(),
            "WebRTC viewers share these ports"
        );
        Ok(IceNetwork {
            ip: server.webrtc_udp.ip(),
            mux,
            public_ip: server.webrtc_public_ip,
        })
    }

    /// The address a viewer's candidates name, for a browser that reached HTTP at `local`.
    pub fn bind_ip(&self, local: SocketAddr) -> IpAddr {
        if self.ip.is_unspecified() {
            local.ip()
        } else {
            self.ip
        }
    }

    /// Whether viewers are offered ICE-TCP too.
    pub fn tcp(&self) -> bool {
        self.mux.tcp_addr().is_some()
    }

    /// A publisher's place on the shared ports, under its connection's ICE ufrag.
    pub fn lease(&self, ufrag: String) -> (MuxLease, PublisherRuntime) {
        self.mux.lease(ufrag)
    }

    /// A viewer's place on the shared ports, under its connection's ICE ufrag.
    pub fn ports(&self, ufrag: String) -> (MuxLease, ViewerPorts) {
        self.mux.ports(ufrag)
    }

    /// Where a viewer whose browser reached HTTP at `local` is served: the shared UDP port and,
    /// when ICE-TCP is on, the shared TCP port, on the address its candidates name.
    pub fn viewer_addrs(&self, local: SocketAddr) -> (SocketAddr, Option<SocketAddr>) {
        let ip = self.bind_ip(local);
        (
            SocketAddr::new(ip, self.mux.udp_addr().port()),
            self.mux
                .tcp_addr()
                .map(|tcp| SocketAddr::new(ip, tcp.port())),
        )
    }

    /// `answer` with its host candidates naming the shared ports (and the public address).
    pub fn announce(&self, answer: &str) -> String {
        announce(
            answer,
            self.mux.udp_addr().port(),
            self.mux.tcp_addr().map(|a| a.port()),
            self.public_ip,
        )
    }
}

/// Rewrites host candidates: the UDP ones to `udp_port`, the TCP ones to `tcp_port` (dropped
/// when there is none), and their address and the connection lines to `public`.
fn announce(answer: &str, udp_port: u16, tcp_port: Option<u16>, public: Option<IpAddr>) -> String {
    let mut out = String::with_capacity(answer.len() + 64);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if let Some(public) = public
            && body.starts_with("c=IN ")
        {
            let family = if public.is_ipv4() { "IP4" } else { "IP6" };
            out.push_str(&format!("c=IN {family} {public}"));
        } else if let Some(candidate) = body.strip_prefix("a=candidate:")
            && candidate.split_whitespace().nth(7) == Some("host")
        {
            // foundation component transport priority ADDRESS PORT typ host [extensions]
            let mut fields: Vec<String> = candidate.split_whitespace().map(str::to_owned).collect();
            let port = if fields[2].eq_ignore_ascii_case("tcp") {
                tcp_port
            } else {
                Some(udp_port)
            };
            let Some(port) = port else { continue };
            fields[5] = port.to_string();
            if let Some(public) = public {
                fields[4] = public.to_string();
            }
            out.push_str("a=candidate:");
            out.push_str(&fields.join(" "));
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 127.0.0.1\r\n\
        a=candidate:1 1 udp 2130706431 127.0.0.1 41234 typ host\r\n\
        a=candidate:3 1 tcp 1671430143 127.0.0.1 45678 typ host tcptype passive\r\n\
        a=candidate:2 1 udp 1694498815 198.51.100.1 8190 typ srflx raddr 127.0.0.1 rport 8190\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn host_candidates_name_the_shared_ports() {
        assert_eq!(
            announce(ANSWER, 8189, Some(8190), None),
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 127.0.0.1\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 8189 typ host\r\n\
            a=candidate:3 1 tcp 1671430143 127.0.0.1 8190 typ host tcptype passive\r\n\
            a=candidate:2 1 udp 1694498815 198.51.100.1 8190 typ srflx raddr 127.0.0.1 rport 8190\r\n\
            a=end-of-candidates\r\n"
        );
        let udp_only = announce(ANSWER, 8189, None, None);
        assert!(!udp_only.contains(" tcp "), "{udp_only}");
        assert!(
            udp_only.contains("127.0.0.1 8189 typ host\r\n"),
            "{udp_only}"
        );
    }

    #[test]
    fn the_public_address_replaces_host_candidates_and_connection_lines() {
        let public: IpAddr = "203.0.113.7".parse().expect("an address");
        assert_eq!(
            announce(ANSWER, 8189, None, Some(public)),
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 203.0.113.7\r\n\
            a=candidate:1 1 udp 2130706431 203.0.113.7 8189 typ host\r\n\
            a=candidate:2 1 udp 1694498815 198.51.100.1 8190 typ srflx raddr 127.0.0.1 rport 8190\r\n\
            a=end-of-candidates\r\n"
        );
        let v6: IpAddr = "2001:db8::7".parse().expect("an address");
        assert!(announce(ANSWER, 8189, None, Some(v6)).contains("c=IN IP6 2001:db8::7\r\n"));
    }
}
