//! Network part of a client fingerprint: the client's address grouped to a
//! prefix (IPv4 /24 and IPv6 /48 by default), so that accounts spread over
//! the addresses of one subnet or one IPv6 allocation share a value.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The prefix of `ip` with the configured lengths (IPv4-mapped IPv6
/// addresses count as IPv4).
pub fn prefix(ip: IpAddr, v4_len: u8, v6_len: u8) -> IpNet {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, v4_len.min(32))
            .map_or_else(|_| IpNet::from(IpAddr::V4(v4)), |n| IpNet::V4(n.trunc())),
        IpAddr::V6(v6) => Ipv6Net::new(v6, v6_len.min(128))
            .map_or_else(|_| IpNet::from(IpAddr::V6(v6)), |n| IpNet::V6(n.trunc())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_truncate_host_bits() {
        assert_eq!(
            prefix("10.1.2.3".parse().unwrap(), 24, 48).to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            prefix("2001:db8:1:2:3::4".parse().unwrap(), 24, 48).to_string(),
            "2001:db8:1::/48"
        );
        assert_eq!(
            prefix("::ffff:192.0.2.77".parse().unwrap(), 24, 64).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            prefix("10.1.2.3".parse().unwrap(), 99, 48).to_string(),
            "10.1.2.3/32"
        );
    }
}
