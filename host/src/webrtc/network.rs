//! Where WebRTC viewers' ICE candidates are: the address and UDP port each viewer's socket binds,
//! and the address announced to browsers (the `webrtc_*` keys of `[server]`).
//!
//! Ports come one per viewer from a configured range, so that a firewall rule or a container's
//! port mapping can let them through, or are ephemeral when the range starts at port 0. The webrtc
//! crate binds a viewer's socket itself, so a port is checked free by binding it here first; a
//! port another program holds is skipped. Ports are handed out round-robin so a port a viewer just
//! left is not reused while the browser may still be sending to it.
//!
//! Behind a one-to-one NAT (a container's published ports, a cloud machine's public address) the
//! bound address is not the one browsers reach: the answer's host candidates then name the public
//! address with the same port. The webrtc crate keeps a `nat_1to1_ips` setting but does not apply
//! it, so the answer is rewritten here.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::ServerConfig;

/// The `webrtc_*` keys of `[server]`, ready to use.
#[derive(Clone)]
pub struct IceNetwork {
    /// Unspecified: the address the browser reached the HTTP server at.
    ip: IpAddr,
    ports: Arc<UdpPorts>,
    public_ip: Option<IpAddr>,
}

impl IceNetwork {
    pub fn new(server: &ServerConfig) -> IceNetwork {
        IceNetwork {
            ip: server.webrtc_udp.ip(),
            ports: UdpPorts::new(server.webrtc_udp.port(), server.webrtc_udp_ports),
            public_ip: server.webrtc_public_ip,
        }
    }

    /// The address a viewer's socket binds, for a browser that reached HTTP at `local`.
    pub fn bind_ip(&self, local: SocketAddr) -> IpAddr {
        if self.ip.is_unspecified() {
            local.ip()
        } else {
            self.ip
        }
    }

    pub fn lease(&self, ip: IpAddr) -> Result<PortLease, NoFreePort> {
        self.ports.lease(ip)
    }

    /// `answer` with its host candidates (and connection lines) naming the public address.
    pub fn announce(&self, answer: &str) -> String {
        match self.public_ip {
            Some(public) => announce(answer, public),
            None => answer.to_owned(),
        }
    }
}

fn announce(answer: &str, public: IpAddr) -> String {
    let family = if public.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(answer.len() + 64);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if body.starts_with("c=IN ") {
            out.push_str(&format!("c=IN {family} {public}"));
        } else if let Some(candidate) = body.strip_prefix("a=candidate:")
            && candidate.split_whitespace().nth(7) == Some("host")
        {
            // foundation component transport priority ADDRESS port typ host [extensions]
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            out.push_str("a=candidate:");
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                if i == 4 {
                    out.push_str(&public.to_string());
                } else {
                    out.push_str(field);
                }
            }
        } else {
            out.push_str(body);
        }
        out.push_str(ending);
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("no free UDP port for a WebRTC viewer in {first}-{last} (server.webrtc_udp_ports)")]
pub struct NoFreePort {
    first: u16,
    last: u16,
}

/// The viewers' port range and which of its ports are leased.
struct UdpPorts {
    /// First port and how many; `None`: ephemeral ports.
    range: Option<(u16, u16)>,
    state: Mutex<Leases>,
}

struct Leases {
    leased: Vec<bool>,
    /// Where the next search starts (an offset into the range).
    next: usize,
}

/// A viewer's port, returned to the range when dropped.
pub struct PortLease {
    port: u16,
    pool: Option<Arc<UdpPorts>>,
}

impl UdpPorts {
    /// `count` ports from `first` up (clamped to the last port there is); `first == 0`: ephemeral.
    fn new(first: u16, count: u16) -> Arc<UdpPorts> {
        let range = (first != 0).then(|| {
            let count = count.clamp(1, u16::MAX - first + 1);
            (first, count)
        });
        let size = range.map_or(0, |(_, count)| usize::from(count));
        Arc::new(UdpPorts {
            range,
            state: Mutex::new(Leases {
                leased: vec![false; size],
                next: 0,
            }),
        })
    }

    /// A free port on `ip` for one viewer.
    fn lease(self: &Arc<Self>, ip: IpAddr) -> Result<PortLease, NoFreePort> {
        let Some((first, count)) = self.range else {
            return Ok(PortLease {
                port: 0,
                pool: None,
            });
        };
        let mut state = self.lock();
        let size = state.leased.len();
        for step in 0..size {
            let offset = (state.next + step) % size;
            if state.leased[offset] {
                continue;
            }
            let port = first + offset as u16;
            if UdpSocket::bind((ip, port)).is_err() {
                continue;
            }
            state.leased[offset] = true;
            state.next = (offset + 1) % size;
            return Ok(PortLease {
                port,
                pool: Some(Arc::clone(self)),
            });
        }
        Err(NoFreePort {
            first,
            last: first + (count - 1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Leases> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl PortLease {
    /// The port to bind; 0 for an ephemeral one.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool
            && let Some((first, _)) = pool.range
        {
            let offset = usize::from(self.port - first);
            if let Some(leased) = pool.lock().leased.get_mut(offset) {
                *leased = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// A run of `count` UDP ports on loopback that are free now.
    fn free_run(count: u16) -> u16 {
        (20000..60000)
            .step_by(usize::from(count) + 7)
            .find(|&first| (first..first + count).all(|p| UdpSocket::bind((LOOPBACK, p)).is_ok()))
            .expect("a run of free UDP ports on loopback")
    }

    #[test]
    fn leases_each_port_once_until_returned() {
        let first = free_run(3);
        let ports = UdpPorts::new(first, 3);
        let a = ports.lease(LOOPBACK).expect("first port");
        let b = ports.lease(LOOPBACK).expect("second port");
        let c = ports.lease(LOOPBACK).expect("third port");
        let mut taken = [a.port(), b.port(), c.port()];
        taken.sort_unstable();
        assert_eq!(taken, [first, first + 1, first + 2]);
        let err = ports.lease(LOOPBACK).err().expect("the range is used up");
        assert!(err.to_string().contains(&format!("{first}-{}", first + 2)));
        let freed = b.port();
        drop(b);
        assert_eq!(
            ports.lease(LOOPBACK).expect("a returned port").port(),
            freed
        );
    }

    #[test]
    fn skips_ports_other_programs_hold() {
        let first = free_run(2);
        let _held = UdpSocket::bind((LOOPBACK, first)).expect("hold the first port");
        let ports = UdpPorts::new(first, 2);
        let second = ports.lease(LOOPBACK).expect("the second port");
        assert_eq!(second.port(), first + 1);
        assert!(ports.lease(LOOPBACK).is_err());
    }

    #[test]
    fn round_robin_does_not_reuse_a_port_at_once() {
        let first = free_run(2);
        let ports = UdpPorts::new(first, 2);
        let a = ports.lease(LOOPBACK).expect("a port");
        let a_port = a.port();
        drop(a);
        assert_ne!(ports.lease(LOOPBACK).expect("a port").port(), a_port);
    }

    #[test]
    fn the_public_address_replaces_host_candidates_and_connection_lines() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 127.0.0.1\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 8190 typ host\r\n\
            a=candidate:2 1 udp 1694498815 198.51.100.1 8190 typ srflx raddr 127.0.0.1 rport 8190\r\n\
            a=end-of-candidates\r\n";
        let public: IpAddr = "203.0.113.7".parse().expect("an address");
        assert_eq!(
            announce(answer, public),
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 203.0.113.7\r\n\
            a=candidate:1 1 udp 2130706431 203.0.113.7 8190 typ host\r\n\
            a=candidate:2 1 udp 1694498815 198.51.100.1 8190 typ srflx raddr 127.0.0.1 rport 8190\r\n\
            a=end-of-candidates\r\n"
        );
        let v6: IpAddr = "2001:db8::7".parse().expect("an address");
        assert!(announce(answer, v6).contains("c=IN IP6 2001:db8::7\r\n"));
    }

    #[test]
    fn port_zero_means_ephemeral() {
        let ports = UdpPorts::new(0, 100);
        for _ in 0..200 {
            assert_eq!(ports.lease(LOOPBACK).expect("ephemeral").port(), 0);
        }
    }
}
