//! Source addresses for client connections. One address gives at most one connection per ephemeral port, so a
//! benchmark of more sessions than the ephemeral range spreads them over several 127.0.0.x addresses (all of
//! 127.0.0.0/8 is loopback on Linux).

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use crate::Error;

/// At most this many addresses in one range: enough for far more sessions than one process can hold.
const MAX_ADDRESSES: usize = 256;

/// A non-empty list of loopback addresses, used round-robin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceIps(Vec<IpAddr>);

impl SourceIps {
    /// One address.
    pub fn single(ip: IpAddr) -> Self {
        SourceIps(vec![ip])
    }

    /// Enough 127.0.0.x addresses for `connections` connections to an IPv4 loopback target, leaving half of each
    /// address's ephemeral ports free for data connections and TIME_WAIT; for an IPv6 target, `::1` alone.
    pub fn enough_for(connections: usize, target: IpAddr) -> Self {
        let IpAddr::V4(_) = target else {
            return SourceIps::single(target);
        };
        let per_address = (ephemeral_ports() / 2).max(1);
        let count = connections.div_ceil(per_address).clamp(1, MAX_ADDRESSES);
        SourceIps(
            (0..count)
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
                .collect(),
        )
    }

    /// The address for the `i`th connection.
    pub fn pick(&self, i: usize) -> IpAddr {
        self.0[i % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn addresses(&self) -> &[IpAddr] {
        &self.0
    }
}

impl FromStr for SourceIps {
    type Err = Error;

    /// `127.0.0.1-127.0.0.20` (an IPv4 range), `127.0.0.1,127.0.0.2`, or one address; loopback only.
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Argument(format!("--source-ips {s:?}: {why}"));
        let mut ips = Vec::new();
        for part in s.split(',').map(str::trim) {
            if let Some((a, b)) = part.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad("bad range start"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad("bad range end"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    return Err(bad("the range ends before it starts"));
                }
                if (b - a) as usize >= MAX_ADDRESSES {
                    return Err(bad("at most 256 addresses"));
                }
                ips.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            } else {
                ips.push(part.parse().map_err(|_| bad("not an address"))?);
            }
        }
        if ips.is_empty() || ips.len() > MAX_ADDRESSES {
            return Err(bad("give between 1 and 256 addresses"));
        }
        if let Some(ip) = ips.iter().find(|ip| !ip.is_loopback()) {
            return Err(bad(&format!("{ip} is not a loopback address")));
        }
        Ok(SourceIps(ips))
    }
}

/// The size of the kernel's ephemeral port range (28,232 by default on Linux).
fn ephemeral_ports() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| parse_port_range(&s))
        .unwrap_or(28_232)
}

fn parse_port_range(s: &str) -> Option<usize> {
    let mut parts = s.split_whitespace().map(str::parse::<usize>);
    let (low, high) = (parts.next()?.ok()?, parts.next()?.ok()?);
    (high >= low).then(|| high - low + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_range_expands_in_order() {
        let ips: SourceIps = "127.0.0.1-127.0.0.20".parse().unwrap();
        assert_eq!(ips.len(), 20);
        assert_eq!(ips.pick(0), v4("127.0.0.1"));
        assert_eq!(ips.pick(19), v4("127.0.0.20"));
        assert_eq!(ips.pick(20), v4("127.0.0.1"));
    }

    #[test]
    fn lists_and_single_addresses() {
        let ips: SourceIps = "127.0.0.1, 127.0.1.1-127.0.1.2,::1".parse().unwrap();
        assert_eq!(
            ips.addresses(),
            &[v4("127.0.0.1"), v4("127.0.1.1"), v4("127.0.1.2"), v4("::1")]
        );
    }

    #[test]
    fn non_loopback_and_malformed_ranges_are_rejected() {
        for bad in [
            "10.0.0.1",
            "127.0.0.250-128.0.0.3",
            "127.0.0.5-127.0.0.1",
            "127.0.0.1-127.0.2.1",
            "",
            "127.0.0.x",
        ] {
            assert!(bad.parse::<SourceIps>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn enough_addresses_for_many_sessions() {
        let ports = ephemeral_ports();
        assert_eq!(SourceIps::enough_for(10, v4("127.0.0.1")).len(), 1);
        let many = SourceIps::enough_for(ports * 2, v4("127.0.0.1"));
        assert!(many.len() >= 4);
        assert!(many.addresses().iter().all(|ip| ip.is_loopback()));
        assert_eq!(SourceIps::enough_for(ports * 2, v4("::1")).len(), 1);
    }

    #[test]
    fn port_range_file_is_parsed() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("garbage"), None);
    }
}
