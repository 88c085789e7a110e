//! The client's address: the socket peer, or — only when the peer is a trusted proxy — the
//! nearest address in `X-Forwarded-For` that is not itself a trusted proxy.

use std::net::IpAddr;

use crate::fields::Fields;

use crate::config::IpNet;

pub fn client_ip(peer: IpAddr, headers: &Fields, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    // Walk from the right (the hop closest to us); the first untrusted address is the client.
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .collect();
    hops.iter()
        .rev()
        .copied()
        .find(|&ip| !is_trusted(ip))
        .or_else(|| hops.first().copied())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::parse_net;
    use http::HeaderValue;

    fn h(xff: &str) -> Fields {
        let mut m = http::HeaderMap::new();
        m.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        m.into()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [parse_net("10.0.0.0/8").unwrap(), parse_net("::1").unwrap()];
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = h("198.51.100.7, 10.2.2.2");
        assert_eq!(
            client_ip(proxy, &xff, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(stranger, &xff, &trusted), stranger);
        assert_eq!(client_ip(proxy, &Fields::default(), &trusted), proxy);
        // A client cannot hide behind a spoofed left-most entry.
        let spoof = h("1.2.3.4, 198.51.100.7");
        assert_eq!(
            client_ip(proxy, &spoof, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &h("garbage"), &trusted), proxy);
        assert_eq!(client_ip(proxy, &xff, &[]), proxy);
    }
}
