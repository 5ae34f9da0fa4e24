//! A UDP port the server sends RTP from to many peers at once (RTSP readers over UDP, WebRTC
//! viewers), registered with the reactor for reading only.
//!
//! Why not tokio's `UdpSocket`: it registers every socket for reading and writing, and the kernel
//! wakes whatever waits on a socket each time it frees a datagram sent from it (on loopback as it
//! sends, on a network card when the card is done). For a socket registered for writing, each of
//! those is an epoll event, and a reactor thread is woken for a readiness no task waits for,
//! about once per send: with 300 readers, a thousand needless wake-ups a second. Here sends are
//! made at once; the rare wait for room in the socket's buffer registers a second descriptor of
//! the socket for that wait only.

use std::io;
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The most bytes one GSO send may carry (the kernel's limit is 64 KiB, headers included).
const MAX_GSO_BYTES: usize = 60_000;

pub(crate) struct UdpPort {
    socket: AsyncFd<std::net::UdpSocket>,
    /// What the kernel can do for sends (GSO, and how many segments at once).
    state: quinn_udp::UdpSocketState,
}

impl UdpPort {
    /// Binds `addr`; to be called on the runtime.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpPort> {
        let socket = std::net::UdpSocket::bind(addr)?;
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        Ok(UdpPort {
            socket: registered(socket, Interest::READABLE)?,
            state,
        })
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
    }

    pub(crate) async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.socket
            .async_io(Interest::READABLE, |socket| socket.recv_from(buf))
            .await
    }

    /// Sends one datagram now, or fails (`WouldBlock` when the socket's buffer is full).
    pub(crate) fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.get_ref().send_to(datagram, to)
    }

    /// Sends `contents`, datagrams of `segment` bytes (the last may be shorter) for `to`, in as
    /// few calls as the kernel allows (GSO), now: what the socket's buffer has no room for is
    /// dropped, as the network would, and the first error returned.
    pub(crate) fn try_send(
        &self,
        contents: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<()> {
        let mut outcome = Ok(());
        for chunk in self.chunks(contents, segment) {
            let mut sent = self.send_segmented(chunk, segment, to);
            if self.gso_refused(&sent, chunk, segment) {
                sent = chunk
                    .chunks(segment)
                    .map(|datagram| self.send_segmented(datagram, segment, to))
                    .fold(Ok(()), Result::and);
            }
            outcome = outcome.and(sent);
        }
        outcome
    }

    /// Sends as [`try_send`](Self::try_send) does, but waits for room in the socket's buffer
    /// when it is full; a datagram that cannot go otherwise is lost, as RTP over UDP allows.
    pub(crate) async fn send(&self, contents: &[u8], segment: usize, to: SocketAddr) {
        for chunk in self.chunks(contents, segment) {
            let sent = self.send_waiting(chunk, segment, to).await;
            if self.gso_refused(&sent, chunk, segment) {
                for datagram in chunk.chunks(segment) {
                    let _ = self.send_waiting(datagram, segment, to).await;
                }
            }
        }
    }

    /// `contents` cut into what one send may carry: the kernel's segment count, and 64 KB in all.
    fn chunks<'a>(&self, contents: &'a [u8], segment: usize) -> std::slice::Chunks<'a, u8> {
        let segment = segment.max(1);
        let per_send = self
            .state
            .max_gso_segments()
            .min(MAX_GSO_BYTES / segment)
            .max(1);
        contents.chunks(per_send * segment)
    }

    /// Whether a segmenting send failed because the device refused GSO (quinn-udp then knows not
    /// to try again, and the datagrams go one by one).
    fn gso_refused(&self, sent: &io::Result<()>, chunk: &[u8], segment: usize) -> bool {
        sent.is_err() && chunk.len() > segment && self.state.max_gso_segments() == 1
    }

    /// One send of `contents`, split into datagrams of `segment` bytes by the kernel.
    fn send_segmented(&self, contents: &[u8], segment: usize, to: SocketAddr) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        self.state.try_send(self.socket.get_ref().into(), &transmit)
    }

    async fn send_waiting(
        &self,
        contents: &[u8],
        segment: usize,
        to: SocketAddr,
    ) -> io::Result<()> {
        loop {
            match self.send_segmented(contents, segment, to) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.room().await?,
                sent => return sent,
            }
        }
    }

    /// Resolves when the socket's buffer has room, through a descriptor registered for writing
    /// for this wait only (it is ready at once if room was made since the send that failed).
    async fn room(&self) -> io::Result<()> {
        let waiter = registered(self.socket.get_ref().try_clone()?, Interest::WRITABLE)?;
        waiter.writable().await.map(drop)
    }
}

/// `socket`, registered with the reactor for `interest` only.
fn registered(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the `AsyncFd` owns `socket`, whose descriptor stays open and the same until it is
    // dropped with it: nothing here closes it or swaps the socket (no `get_mut`).
    Ok(unsafe { AsyncFd::register_with_interest(socket, interest) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `reader` has received, datagram sizes in order, until nothing comes for 200 ms.
    fn received(reader: &std::net::UdpSocket) -> Vec<usize> {
        reader
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .expect("a read timeout");
        let mut buf = [0u8; 2048];
        std::iter::from_fn(|| reader.recv(&mut buf).ok()).collect()
    }

    #[tokio::test]
    async fn runs_arrive_as_their_datagrams_and_the_port_receives() {
        let port = UdpPort::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let reader = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the reader");
        let to = reader.local_addr().expect("its address");
        // 100 datagrams of 1,200 bytes and a short last one: more than one send may carry.
        let run: Vec<u8> = (0..120_700u32).map(|i| (i / 1200) as u8).collect();
        port.send(&run, 1200, to).await;
        let mut sizes = vec![1200; 100];
        sizes.push(700);
        assert_eq!(received(&reader), sizes);
        port.try_send(&run[..2400], 1200, to).expect("room for two");
        port.try_send_to(&run[..10], to).expect("room for one");
        assert_eq!(received(&reader), [1200, 1200, 10]);
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        echo.send_to(b"rtcp", port.local_addr().expect("the port's address"))
            .expect("send to the port");
        let mut buf = [0u8; 16];
        let (len, sender) = port.recv_from(&mut buf).await.expect("receive");
        assert_eq!(
            (&buf[..len], sender),
            (&b"rtcp"[..], echo.local_addr().expect("addr"))
        );
    }
}
