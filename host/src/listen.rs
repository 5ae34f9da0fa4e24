//! TCP listeners that a reload can move to another address while the server runs: connections
//! already accepted stay where they are, new ones arrive at the new address.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The accepting side.
pub struct Listener {
    current: watch::Receiver<Arc<TcpListener>>,
}

/// The way to move a [`Listener`] to another address.
#[derive(Clone)]
pub struct Rebind {
    sender: Arc<watch::Sender<Arc<TcpListener>>>,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<(Listener, Rebind)> {
        let listener = TcpListener::bind(addr).await?;
        let (sender, current) = watch::channel(Arc::new(listener));
        Ok((
            Listener { current },
            Rebind {
                sender: Arc::new(sender),
            },
        ))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.current.borrow().local_addr()
    }

    /// The next connection, on whichever address is current. Cancel-safe.
    pub async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        loop {
            let listener = Arc::clone(&self.current.borrow_and_update());
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
        self.sender.borrow().local_addr()
    }

    /// Binds `addr` and moves the listener there; on error the old address stays.
    pub async fn to(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        self.sender.send_replace(Arc::new(listener));
        Ok(bound)
    }
}
