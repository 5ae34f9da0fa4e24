//! Viewers that have their answer and have not connected yet.
//!
//! Such a viewer takes no place under `max_clients`: it takes one when it connects, as an RTSP
//! reader does at PLAY. Before, each offer took a place at once and kept it for up to
//! `CONNECT_TIMEOUT` (20 s), so one address posting 100 offers it never meant to connect locked
//! every reader out, RTSP and WebRTC, and could keep them out by posting again. Unconnected
//! viewers are held instead to some dozens per client address and a thousand in all.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::listen::AddressKey;

/// Viewers from one client address (an IPv6 client by its /64) that may wait to connect at once:
/// a page opens one or two, a wall of cameras in one browser (or one NAT) some dozens at once.
pub const PER_ADDRESS: usize = 64;
/// Viewers that may wait to connect at once, in all: each holds a peer connection and a task
/// for at most 20 s, and takes nothing from readers meanwhile.
pub const IN_ALL: usize = 1024;

/// Why an offer was refused before its answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TooManyUnconnected {
    #[error("{PER_ADDRESS} viewers from this address have not connected yet")]
    FromAddress,
    #[error("{IN_ALL} viewers have not connected yet")]
    InAll,
}

/// The count of unconnected viewers, in all and by address.
#[derive(Default)]
pub(super) struct Unconnected {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    in_all: usize,
    by_address: HashMap<AddressKey, usize>,
}

/// One viewer counted as unconnected until this is dropped (when it connects or ends).
pub(super) struct Waiting {
    unconnected: Arc<Unconnected>,
    address: AddressKey,
}

impl Unconnected {
    /// Counts one more viewer from `peer` as waiting to connect, if the caps allow it.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Waiting, TooManyUnconnected> {
        let address = AddressKey::of(peer);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.in_all >= IN_ALL {
            return Err(TooManyUnconnected::InAll);
        }
        let from_address = counts.by_address.entry(address).or_default();
        if *from_address >= PER_ADDRESS {
            return Err(TooManyUnconnected::FromAddress);
        }
        *from_address += 1;
        counts.in_all += 1;
        Ok(Waiting {
            unconnected: Arc::clone(self),
            address,
        })
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut counts = self
            .unconnected
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.in_all -= 1;
        if let Some(from_address) = counts.by_address.get_mut(&self.address) {
            *from_address -= 1;
            if *from_address == 0 {
                counts.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_waits_with_a_few_viewers_and_the_server_with_a_few_hundred() {
        let unconnected = Arc::new(Unconnected::default());
        let one: IpAddr = "192.0.2.1".parse().expect("an address");
        let waiting: Vec<Waiting> = (0..PER_ADDRESS)
            .map(|_| unconnected.admit(one).expect("within the address's share"))
            .collect();
        assert_eq!(
            unconnected.admit(one).err(),
            Some(TooManyUnconnected::FromAddress)
        );
        // The same /64 is one address; another address is not.
        let same_64: IpAddr = "2001:db8::1".parse().expect("an address");
        let also_same_64: IpAddr = "2001:db8::ffff".parse().expect("an address");
        let v6: Vec<Waiting> = (0..PER_ADDRESS)
            .map(|_| unconnected.admit(same_64).expect("within the /64's share"))
            .collect();
        assert_eq!(
            unconnected.admit(also_same_64).err(),
            Some(TooManyUnconnected::FromAddress)
        );
        drop(v6);
        // One that connects (or ends) makes room for the next.
        drop(waiting);
        let again = unconnected.admit(one);
        assert!(again.is_ok());
        drop(again);

        let many: Vec<Waiting> = (0..IN_ALL)
            .map(|i| {
                let address = IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]);
                unconnected
                    .admit(address)
                    .expect("within the server's share")
            })
            .collect();
        assert_eq!(
            unconnected.admit(one).err(),
            Some(TooManyUnconnected::InAll)
        );
        drop(many);
        let counts = unconnected.counts.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(
            (counts.in_all, counts.by_address.len()),
            (0, 0),
            "all counted back"
        );
    }
}
