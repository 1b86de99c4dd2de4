//! Who the client is behind a load balancer: the trusted proxies, whose
//! `X-Forwarded-For` is believed, and the address limits count by.

use std::net::IpAddr;

/// Networks whose requests' `X-Forwarded-For` is believed (the load
/// balancers in front of the API), as `10.0.0.0/8`, `192.0.2.7` or `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for ProxyNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={bits}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl ProxyNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
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

/// Every `X-Forwarded-For` header of a request, joined in order.
pub fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// What limits per client address count by: the address itself for IPv4
/// (and IPv4-mapped IPv6), its /64 network for IPv6, since one host is
/// routinely given a whole /64 and can rotate through it at will.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// The address of the client behind `peer`: `peer` itself, unless it is a
/// trusted proxy; then the nearest address in `X-Forwarded-For` (read from
/// the right, each proxy appending the address it got the request from)
/// that is not a trusted proxy.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[ProxyNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A malformed entry: nothing before it can be believed.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ProxyNet> {
        list.iter().map(|n| n.parse().expect("network")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: ProxyNet = "10.1.0.0/16".parse().expect("network");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            "192.0.2.7"
                .parse::<ProxyNet>()
                .expect("host")
                .contains(ip("192.0.2.7"))
        );
        assert!("::1".parse::<ProxyNet>().expect("v6").contains(ip("::1")));
        assert!(
            "0.0.0.0/0"
                .parse::<ProxyNet>()
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6");
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/x", ""] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        // From a client directly: its own address, whatever it claims.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the address the proxy saw.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4, 203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
        // Through two proxies: past both.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("1.2.3.4, 203.0.113.9, 10.0.0.5"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        // A proxy that sent none, or garbage.
        assert_eq!(
            client_address(ip("10.0.0.2"), None, &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_addresses_are_grouped_by_their_64_bit_network() {
        assert_eq!(
            address_group(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            address_group(ip("2001:db8:1:3::1")),
            address_group(ip("2001:db8:1:2::1"))
        );
        assert_eq!(address_group(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(address_group(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
    }
}
