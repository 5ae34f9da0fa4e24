//! IP allow and deny lists (`allow = ["192.168.0.0/16"]`, like ffserver's ACL lines).

use std::net::IpAddr;

/// An address range in CIDR notation; a bare address is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| {
            format!("`{text}` is not an address or range, e.g. \"192.168.0.0/16\" or \"::1\"")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Who may connect: anyone not denied, and, when the allow list is not empty, only those on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessList {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl AccessList {
    pub fn permits(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|net| net.contains(ip)))
            && !self.deny.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_match_their_addresses() {
        let lan = IpNet::parse("192.168.0.0/16").unwrap();
        assert!(lan.contains(ip("192.168.4.5")));
        assert!(!lan.contains(ip("192.169.0.1")));
        assert!(
            lan.contains(ip("::ffff:192.168.1.1")),
            "IPv4-mapped peers count as IPv4"
        );
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(IpNet::parse("::1").unwrap().contains(ip("::1")));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("nonsense").is_err());
    }

    #[test]
    fn deny_wins_over_allow() {
        let list = AccessList {
            allow: vec![IpNet::parse("127.0.0.0/8").unwrap()],
            deny: vec![IpNet::parse("127.0.0.3").unwrap()],
        };
        assert!(list.permits(ip("127.0.0.1")));
        assert!(!list.permits(ip("127.0.0.3")));
        assert!(!list.permits(ip("10.0.0.1")));
        assert!(AccessList::default().permits(ip("10.0.0.1")));
    }
}
