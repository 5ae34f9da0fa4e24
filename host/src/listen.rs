//! TCP listeners that a reload can move to another address while the server runs (connections
//! already accepted stay where they are, new ones arrive at the new address), and the caps on what
//! accepted connections may hold: how many are open, TCP keepalive on each, how much the kernel
//! buffers for each, and how fast each may send (`allowance`: a [`Budget`] its protocol charges,
//! or a [`MeteredRead`] it reads through).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

mod allowance;

pub use allowance::{Allowance, Budget, Inbound, MeteredRead, REQUESTS, flood_in, past_requests};

/// The accepting side.
pub struct Listener {
    current: watch::Receiver<Option<Arc<TcpListener>>>,
}

/// The way to move a [`Listener`] to another address, or to close it.
#[derive(Clone)]
pub struct Rebind {
    sender: Arc<watch::Sender<Option<Arc<TcpListener>>>>,
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "the listener is closed")
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Listener, Rebind)> {
        let listener = TcpListener::bind(addr).await?;
        let (sender, current) = watch::channel(Some(Arc::new(listener)));
        Ok((
            Listener { current },
            Rebind {
                sender: Arc::new(sender),
            },
        ))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.current
            .borrow()
            .as_ref()
            .ok_or_else(closed)?
            .local_addr()
    }

    /// The next connection, on whichever address is current; none once the listener is closed.
    /// Cancel-safe.
    pub async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        loop {
            let listener = self.current.borrow_and_update().clone();
            let Some(listener) = listener else {
                // Closed: wait for good (or for a rebind, which closing rules out).
                if self.current.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                continue;
            };
            tokio::select! {
                accepted = listener.accept() => return accepted,
                changed = self.current.changed() => {
                    if changed.is_err() {
                        return listener.accept().await;
                    }
                }
            }
        }
    }
}

impl Rebind {
    /// The address listened on now.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.sender
            .borrow()
            .as_ref()
            .ok_or_else(closed)?
            .local_addr()
    }

    /// Binds `addr` and moves the listener there; on error the old address stays.
    pub async fn to(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        self.sender.send_replace(Some(Arc::new(listener)));
        Ok(bound)
    }

    /// Closes the listening socket: new connections are refused from now on.
    pub fn close(&self) {
        self.sender.send_replace(None);
    }
}

/// How long an idle accepted socket waits before the kernel probes whether its peer still exists,
/// and how often it probes then: a peer that vanished without a FIN (pulled cable, crashed NAT) is
/// found within about a minute and a half instead of the kernel's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// Turns on TCP keepalive for an accepted socket, with [`KEEPALIVE_IDLE`] and friends.
pub fn keep_alive(socket: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(err) = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive) {
        tracing::debug!("cannot turn on TCP keepalive: {err}");
    }
}

/// Caps open connections, in total and per client address (an IPv6 client by its /64, which one
/// host usually has whole), and how fast one address may open new ones, across the RTSP, HTTP
/// and ICE-TCP listeners. A connection over a cap is closed at accept, before a byte of it is
/// read, and counted.
///
/// The rate is what bounds a client that reconnects as soon as it is cut off: every connection
/// is held to an allowance of its own (requests, bytes), and without a rate a client that pours
/// bytes or requests into one connection after another kept most of a core busy.
#[derive(Debug)]
pub struct ConnectionGate {
    max_total: usize,
    max_per_address: usize,
    /// New connections one address may open: a second's worth, after [`RATE_BURST`]'s worth.
    rate_per_address: Allowance,
    /// Bytes asked for each accepted socket's send buffer.
    send_buffer: usize,
    addresses: Mutex<HashMap<AddressKey, AddressState>>,
    open_total: AtomicUsize,
    /// Connections refused at accept, by cap.
    pub refused_total: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub refused_rate: AtomicU64,
}

/// What the gate keeps of one address: its open connections, and how fast it opened them. Kept
/// while the address has connections open or its allowance is not whole again.
#[derive(Debug)]
struct AddressState {
    open: usize,
    new_connections: Budget,
    last_admitted: Instant,
}

/// The burst of new connections an address may open, in seconds of its rate; an address that
/// opened none for this long has its whole allowance again.
const RATE_BURST: Duration = Duration::from_secs(10);

/// How many addresses the gate keeps the rate of: past it, addresses with no connection open are
/// forgotten (an attacker with that many addresses would start each with a whole allowance, as a
/// new client does).
const MAX_REMEMBERED_ADDRESSES: usize = 10_000;

/// What the per-address cap counts by: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl AddressKey {
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(v4),
                None => AddressKey::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Why a connection was closed at accept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    #[error("max_connections ({0}) reached")]
    Total(usize),
    #[error("max_connections_per_address ({0}) reached for this address")]
    PerAddress(usize),
    #[error("connection_rate_per_address ({0} a second) exceeded by this address")]
    Rate(u64),
}

impl ConnectionGate {
    pub fn new(
        max_total: usize,
        max_per_address: usize,
        rate_per_address: usize,
        send_buffer: usize,
    ) -> Arc<ConnectionGate> {
        let rate = rate_per_address as u64;
        Arc::new(ConnectionGate {
            max_total,
            max_per_address,
            rate_per_address: Allowance {
                per_second: rate,
                burst: rate.saturating_mul(RATE_BURST.as_secs()),
            },
            send_buffer,
            addresses: Mutex::default(),
            open_total: AtomicUsize::new(0),
            refused_total: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
        })
    }

    /// Gives an accepted socket (RTSP, HTTP, ICE-TCP) its fixed send buffer
    /// (`tcp_send_buffer_kb`). Left to itself the kernel grows a send buffer to 4 MiB, which a
    /// client that stops reading then makes the server hold, and which a low-rate route (or an
    /// event stream) takes minutes to fill before the write-stall timeouts even start; the
    /// default, 256 KiB (which the kernel doubles), is 2 s of a 4 Mbit/s route or a 100 ms round
    /// trip at 40 Mbit/s.
    pub fn bound_send_buffer(&self, socket: &TcpStream) {
        if let Err(err) = socket2::SockRef::from(socket).set_send_buffer_size(self.send_buffer) {
            tracing::debug!("cannot set a TCP send buffer: {err}");
        }
    }

    /// A place for one more connection from `ip`, given back when the permit drops.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, GateRefusal> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(
        self: &Arc<Self>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<ConnectionPermit, GateRefusal> {
        let key = AddressKey::of(ip);
        let mut addresses = self.lock();
        if self.open_total.load(Ordering::Relaxed) >= self.max_total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(GateRefusal::Total(self.max_total));
        }
        if addresses.len() >= MAX_REMEMBERED_ADDRESSES && !addresses.contains_key(&key) {
            self.forget_idle(&mut addresses, now);
        }
        let address = addresses.entry(key).or_insert_with(|| AddressState {
            open: 0,
            new_connections: Budget::new(self.rate_per_address, now),
            last_admitted: now,
        });
        if address.open >= self.max_per_address {
            self.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return Err(GateRefusal::PerAddress(self.max_per_address));
        }
        if !address.new_connections.charge(1, now) {
            self.refused_rate.fetch_add(1, Ordering::Relaxed);
            return Err(GateRefusal::Rate(self.rate_per_address.per_second));
        }
        address.open += 1;
        address.last_admitted = now;
        self.open_total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            gate: Arc::clone(self),
            key,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, AddressState>> {
        // Plain counts: still consistent after a panic elsewhere.
        self.addresses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes room in a full table: addresses with nothing open whose allowance is whole again go
    /// first (forgetting them changes nothing), then, if that was not enough, every address with
    /// nothing open.
    fn forget_idle(&self, addresses: &mut HashMap<AddressKey, AddressState>, now: Instant) {
        addresses.retain(|_, a| {
            a.open > 0 || now.saturating_duration_since(a.last_admitted) < RATE_BURST
        });
        if addresses.len() >= MAX_REMEMBERED_ADDRESSES {
            addresses.retain(|_, a| a.open > 0);
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open_total.load(Ordering::Relaxed)
    }
}

/// One admitted connection's place under the caps.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    key: AddressKey,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut addresses = self.gate.lock();
        if let Some(address) = addresses.get_mut(&self.key) {
            address.open -= 1;
        }
        self.gate.open_total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_the_configured_send_buffer() {
        // The kernel takes at most net.core.wmem_max, and doubles what it takes.
        let most = std::fs::read_to_string("/proc/sys/net/core/wmem_max")
            .ok()
            .and_then(|max| max.trim().parse::<usize>().ok())
            .unwrap_or(212_992);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        for asked in [64 << 10, 1 << 20] {
            let _client = TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            ConnectionGate::new(5, 2, 1000, asked).bound_send_buffer(&accepted);
            let size = socket2::SockRef::from(&accepted)
                .send_buffer_size()
                .expect("read the send buffer");
            assert_eq!(size, 2 * asked.min(most), "asked for {asked}");
        }
    }

    #[test]
    fn caps_count_per_address_and_ipv6_by_prefix() {
        let gate = ConnectionGate::new(5, 2, 1000, 256 << 10);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = gate.admit(a).unwrap();
        let _second = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), GateRefusal::PerAddress(2));
        drop(first);
        let _third = gate.admit(a).unwrap();
        let v6a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _v6a = gate.admit(v6a).unwrap();
        let _v6b = gate.admit(v6b).unwrap();
        assert_eq!(
            gate.admit("2001:db8:1:2::3".parse().unwrap()).unwrap_err(),
            GateRefusal::PerAddress(2),
            "one /64 is one address"
        );
        let _fifth = gate.admit("10.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(
            gate.admit("10.0.0.10".parse().unwrap()).unwrap_err(),
            GateRefusal::Total(5)
        );
        assert_eq!(gate.refused_per_address.load(Ordering::Relaxed), 2);
        assert_eq!(gate.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(gate.open(), 5);
    }

    #[test]
    fn an_address_that_keeps_reconnecting_is_held_to_its_rate() {
        let gate = ConnectionGate::new(1000, 100, 5, 256 << 10);
        let start = Instant::now();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        // Each connection is closed at once (its permit dropped): only the rate can stop it.
        let admitted = (0..200)
            .filter(|_| gate.admit_at(attacker, start).is_ok())
            .count();
        assert_eq!(admitted, 50, "ten seconds' worth at once");
        assert_eq!(
            gate.admit_at(attacker, start).unwrap_err(),
            GateRefusal::Rate(5)
        );
        let later = start + Duration::from_secs(2);
        let admitted = (0..200)
            .filter(|_| gate.admit_at(attacker, later).is_ok())
            .count();
        assert_eq!(admitted, 10, "then five a second");
        // Another address is not held to the first one's rate.
        assert!(gate.admit_at("10.0.0.2".parse().unwrap(), later).is_ok());
        assert_eq!(gate.refused_rate.load(Ordering::Relaxed), 150 + 1 + 190);
    }

    #[test]
    fn the_rate_table_stays_bounded_under_a_flood_of_addresses() {
        let gate = ConnectionGate::new(100, 10, 5, 256 << 10);
        let start = Instant::now();
        let held = gate
            .admit_at("192.168.0.1".parse().unwrap(), start)
            .unwrap();
        for i in 0..3 * MAX_REMEMBERED_ADDRESSES as u32 {
            let ip = IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i));
            drop(gate.admit_at(ip, start).expect("a new address"));
        }
        let addresses = gate.lock();
        assert!(
            addresses.len() <= MAX_REMEMBERED_ADDRESSES,
            "{}",
            addresses.len()
        );
        assert!(
            addresses.contains_key(&AddressKey::of("192.168.0.1".parse().unwrap())),
            "an address with a connection open is kept"
        );
        drop(addresses);
        drop(held);
    }
}
