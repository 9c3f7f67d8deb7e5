//! The SSRF guard: which addresses a delivery may connect to.
//!
//! By default hookbus connects only to globally reachable unicast
//! addresses. The check runs on the *resolved* addresses, in the task
//! senders' connector or the blocking senders' ureq resolver ([`Guard`]
//! for both), and the connection is made to exactly the addresses
//! that passed, so a DNS answer that changes between check and connect
//! (rebinding) cannot slip past. Redirects are never followed.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// Whether `ip` is a globally reachable unicast address that a webhook may
/// be delivered to.
///
/// Refused: unspecified, loopback (127/8, ::1), private (10/8, 172.16/12,
/// 192.168/16), CGNAT (100.64/10), link-local (169.254/16 with the cloud
/// metadata address, fe80::/10), "this network" (0/8), IETF protocol
/// assignments (192.0.0/24), documentation (192.0.2/24, 198.51.100/24,
/// 203.0.113/24, 2001:db8::/32, 3fff::/20), benchmarking (198.18/15),
/// 6to4 relay anycast (192.88.99/24), multicast, broadcast and class E
/// (224/3), unique-local (fc00::/7), site-local (fec0::/10), discard-only
/// (100::/64), every IPv6 address outside global unicast 2000::/3, and the
/// IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
/// forms of any refused IPv4 address.
pub(crate) fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_global_v4(v4),
        IpAddr::V6(v6) => is_global_v6(v6),
    }
}

fn is_global_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

fn is_global_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        if s[5] == 0 && s[6] == 0 {
            return false; // ::, ::1 and the rest of ::/96's low end
        }
        return is_global_v4(embedded_v4(s[6], s[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_global_v4(embedded_v4(s[6], s[7]));
    }
    // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return is_global_v4(embedded_v4(s[1], s[2]));
    }
    // Only global unicast 2000::/3 is reachable on the internet.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    // 2001::/23 IETF protocol assignments (Teredo, ORCHID, ...) and
    // 2001:db8::/32 documentation.
    let ietf = s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8);
    // 3fff::/20 documentation (and the 3ff0::/12 around it).
    let doc = (s[0] & 0xfff0) == 0x3ff0;
    !(ietf || doc)
}

/// A network in CIDR notation, such as `10.1.0.0/16` or `fd00::/8`, for
/// [`Builder::allowed_networks`](crate::Builder::allowed_networks): an
/// [`ipnet::IpNet`] that also takes a bare address (a /32 or /128) and
/// stores an IPv4-mapped network (`::ffff:10.0.0.0/104`) as the IPv4
/// network it names (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "`{}` is not a network in CIDR notation such as 10.1.0.0/16 or fd00::/8",
                crate::util::clip(s)
            )
        };
        let net = match s.parse::<ipnet::IpNet>() {
            Ok(net) => net,
            // A bare address is the network of that one address.
            Err(_) if !s.contains('/') => s.parse::<IpAddr>().map_err(|_| bad())?.into(),
            Err(_) => return Err(bad()),
        };
        match net {
            ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                // An IPv4-mapped network is the IPv4 network it names; the
                // IPv6 prefix counts the 96 bits of `::ffff:` too.
                Some(v4) if v6.prefix_len() >= 96 => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(|n| IpNet(n.into()))
                    .map_err(|_| bad()),
                Some(_) => Err(format!(
                    "`{}` is an IPv4-mapped network with a prefix shorter than /96; \
                     write the IPv4 network instead, such as 10.0.0.0/8",
                    crate::util::clip(s)
                )),
                None => Ok(IpNet(net)),
            },
            ipnet::IpNet::V4(_) => Ok(IpNet(net)),
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Which addresses deliveries may go to.
#[derive(Debug, Clone, Default)]
pub(crate) struct TargetPolicy {
    pub(crate) allow_private: bool,
    pub(crate) allowed: Vec<IpNet>,
}

impl TargetPolicy {
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_global(ip) || self.allowed.iter().any(|n| n.contains(ip))
    }

    /// Whether a URL host (as the URL parser gives it) is obviously
    /// internal: an IP literal that is not permitted, or `localhost` and its
    /// subdomains. Used at subscribe time; delivery time checks the resolved
    /// addresses.
    pub(crate) fn literal_host_blocked(&self, host: &url::Host<&str>) -> Option<String> {
        if self.allow_private {
            return None;
        }
        match host {
            url::Host::Ipv4(ip) if !self.permits(IpAddr::V4(*ip)) => {
                Some(format!("{ip} is not a public address"))
            }
            url::Host::Ipv6(ip) if !self.permits(IpAddr::V6(*ip)) => {
                Some(format!("{ip} is not a public address"))
            }
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                (d == "localhost" || d.ends_with(".localhost"))
                    .then(|| format!("`{d}` is a loopback name"))
            }
            _ => None,
        }
    }
}

/// The error inside the `io::Error` the resolver returns when every address
/// of a host is refused.
///
/// Its message is stored with the attempt and shown to the subscription's
/// owner (a tenant, through the REST adapter), so it never names the
/// addresses the host resolved to: that would let tenants map the internal
/// DNS. The resolver logs them for the operator instead.
#[derive(Debug)]
pub(crate) struct Blocked {
    host: String,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` resolves only to non-public addresses, which are not allowed",
            self.host
        )
    }
}

impl std::error::Error for Blocked {}

/// The guard itself, shared by both transports: the policy and the
/// configured host overrides. [`Guard::fixed`] answers for IP literals and
/// overridden hosts without a lookup; [`Guard::keep`] drops every address
/// the policy refuses, after any lookup.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    policy: TargetPolicy,
    overrides: HashMap<String, Vec<IpAddr>>,
}

impl Guard {
    pub(crate) fn new(policy: TargetPolicy, overrides: HashMap<String, Vec<IpAddr>>) -> Self {
        Guard { policy, overrides }
    }

    /// A URL host as the connection sees it: without the brackets of an
    /// IPv6 literal or a trailing dot, in lower case.
    pub(crate) fn normalize(host: &str) -> String {
        host.trim_end_matches('.')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    }

    /// The addresses of `host` (normalized) that need no lookup: an IP
    /// literal's own, or the override's (at most 16). `None`: resolve it.
    pub(crate) fn fixed(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let literal = host.parse::<IpAddr>();
        let ips = match (&literal, self.overrides.get(host)) {
            (Ok(ip), _) => std::slice::from_ref(ip),
            (Err(_), Some(ips)) => ips.as_slice(),
            (Err(_), None) => return None,
        };
        Some(
            ips.iter()
                .take(16)
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        )
    }

    /// The addresses the policy permits, or an `io::Error` carrying
    /// [`Blocked`] when it permits none.
    pub(crate) fn keep(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> std::io::Result<Vec<SocketAddr>> {
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        for addr in addrs {
            if self.policy.permits(addr.ip()) {
                kept.push(addr);
            } else {
                refused.push(addr.ip());
            }
        }
        if kept.is_empty() {
            // The addresses are for the operator only; see `Blocked`.
            tracing::warn!(
                %host,
                ?refused,
                "delivery target refused: it resolves only to addresses that are not allowed \
                 (allow them with Builder::allowed_networks or allow_private_targets)"
            );
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                Blocked {
                    host: host.to_owned(),
                },
            ));
        }
        Ok(kept)
    }
}

/// The guard as ureq's resolver (the blocking transport and test
/// requests): drops every address the policy refuses, after applying the
/// configured host overrides.
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    guard: Arc<Guard>,
    inner: DefaultResolver,
}

impl GuardedResolver {
    pub(crate) fn new(guard: Arc<Guard>) -> Self {
        GuardedResolver {
            guard,
            inner: DefaultResolver::default(),
        }
    }
}

impl Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = Guard::normalize(uri.host().unwrap_or_default());
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // ureq resolves before every request, pooled connection or not; an IP
        // literal needs no lookup (and no lookup thread).
        let candidates = match self.guard.fixed(&host, port) {
            Some(fixed) => fixed,
            None => self
                .inner
                .resolve(uri, config, timeout)?
                .iter()
                .copied()
                .collect(),
        };
        let kept = self
            .guard
            .keep(uri.host().unwrap_or_default(), candidates)
            .map_err(ureq::Error::Io)?;
        let mut out = self.inner.empty();
        for addr in kept.into_iter().take(16) {
            out.push(addr);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_internal_range() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "2001::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "3fff::1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_global(ip(s)), "{s} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_global(ip(s)), "{s} must be allowed");
        }
    }

    #[test]
    fn literal_hosts() {
        let blocked = |u: &str| {
            let u = url::Url::parse(u).unwrap();
            TargetPolicy::default()
                .literal_host_blocked(&u.host().unwrap())
                .is_some()
        };
        assert!(blocked("http://127.0.0.1/"));
        assert!(blocked("http://[::1]:8080/"));
        assert!(blocked("http://localhost/"));
        assert!(blocked("http://LOCALHOST./"));
        assert!(blocked("http://api.localhost/"));
        assert!(blocked("http://0x7f.1/")); // the URL parser normalises this to 127.0.0.1
        assert!(blocked("http://2130706433/"));
        assert!(!blocked("http://example.com/"));
        assert!(!blocked("http://8.8.8.8/"));
    }

    fn resolve(r: &GuardedResolver, url: &str) -> Result<Vec<IpAddr>, String> {
        let uri: Uri = url.parse().unwrap();
        let config = ureq::config::Config::default();
        match Resolver::resolve(r, &uri, &config, NextTimeout::default()) {
            Ok(addrs) => Ok(addrs.iter().map(|a| a.ip()).collect()),
            Err(ureq::Error::Io(e)) if e.get_ref().is_some_and(|i| i.is::<Blocked>()) => {
                Err(e.to_string())
            }
            Err(e) => panic!("unexpected resolver error {e}"),
        }
    }

    // Names that resolve (through the override, no DNS, no connection) to
    // every refused range: the resolver refuses them all.
    #[test]
    fn resolver_refuses_names_that_resolve_to_internal_addresses() {
        let ranges = [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.0.10",
            "169.254.169.254",
            "100.64.1.1",
            "0.0.0.0",
            "192.0.0.1",
            "198.18.5.5",
            "192.0.2.44",
            "224.0.0.251",
            "255.255.255.255",
            "240.1.1.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::5",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::1",
            "2001:db8::1",
        ];
        let mut overrides = HashMap::new();
        for (i, ip) in ranges.iter().enumerate() {
            overrides.insert(format!("h{i}.internal.test"), vec![ip.parse().unwrap()]);
        }
        overrides.insert("mixed.test".into(), vec![ip("10.0.0.1"), ip("8.8.8.8")]);
        let strict = GuardedResolver::new(Arc::new(Guard::new(
            TargetPolicy::default(),
            overrides.clone(),
        )));
        for (i, addr) in ranges.iter().enumerate() {
            let err = resolve(&strict, &format!("http://h{i}.internal.test:8080/x")).unwrap_err();
            assert!(
                err.contains("not allowed") && err.contains(&format!("h{i}.internal.test")),
                "{addr}: {err}"
            );
            // The reason reaches tenants: it must not map the internal DNS.
            let shown = addr.parse::<IpAddr>().unwrap().to_string();
            assert!(!err.contains(&shown), "{addr}: {err}");
        }
        // Only the public address of a mixed answer survives: the
        // connection can go nowhere else.
        assert_eq!(
            resolve(&strict, "http://mixed.test/").unwrap(),
            vec![ip("8.8.8.8")]
        );
        // The system resolver's answer for localhost is checked too.
        assert!(resolve(&strict, "http://localhost:9/").is_err());
        assert!(resolve(&strict, "http://127.0.0.1:9/").is_err());
        assert!(resolve(&strict, "http://[::1]:9/").is_err());

        let open = GuardedResolver::new(Arc::new(Guard::new(
            TargetPolicy {
                allow_private: true,
                allowed: vec![],
            },
            overrides.clone(),
        )));
        assert_eq!(
            resolve(&open, "http://h1.internal.test/").unwrap(),
            vec![ip("10.1.2.3")]
        );

        let some = TargetPolicy {
            allow_private: false,
            allowed: vec!["10.1.0.0/16".parse().unwrap()],
        };
        let some = GuardedResolver::new(Arc::new(Guard::new(some, overrides)));
        assert_eq!(
            resolve(&some, "http://h1.internal.test/").unwrap(),
            vec![ip("10.1.2.3")]
        );
        assert!(
            resolve(&some, "http://h18.internal.test/").is_err(),
            "::ffff:10.0.0.1 is outside 10.1/16"
        );
        assert!(resolve(&some, "http://h0.internal.test/").is_err());
    }

    /// Issue 10: an IPv4-mapped network parsed to an IPv4 network with its
    /// IPv6 prefix (104), so `32 - prefix` wrapped: every IPv4 address was
    /// inside it in release builds, and debug builds panicked.
    #[test]
    fn mapped_networks_use_their_ipv4_prefix() {
        let n: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(ip("10.1.2.3")) && n.contains(ip("::ffff:10.9.9.9")));
        for outside in ["127.0.0.1", "169.254.169.254", "11.0.0.1", "::1", "fd00::1"] {
            assert!(!n.contains(ip(outside)), "{outside}");
        }
        let one: IpNet = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(one.to_string(), "10.1.2.3/32");
        assert!(one.contains(ip("10.1.2.3")) && !one.contains(ip("127.0.0.1")));
        // A mapped prefix shorter than /96 is not an IPv4 network at all.
        let e = "::ffff:0.0.0.0/95".parse::<IpNet>().unwrap_err();
        assert!(e.contains("IPv4-mapped"), "{e}");
        let p = TargetPolicy {
            allow_private: false,
            allowed: vec![n],
        };
        assert!(!p.permits(ip("127.0.0.1")) && !p.permits(ip("169.254.169.254")));
        assert!(p.permits(ip("10.200.0.1")));
    }

    #[test]
    fn networks_parse_and_match() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains(ip("10.1.255.1")));
        assert!(n.contains(ip("::ffff:10.1.0.1")));
        assert!(!n.contains(ip("10.2.0.1")));
        assert!(!n.contains(ip("::1")));
        let v6: IpNet = "fd00:1::/32".parse().unwrap();
        assert!(v6.contains(ip("fd00:1::99")) && !v6.contains(ip("fd00:2::1")));
        let one: IpNet = "192.168.1.7".parse().unwrap();
        assert!(one.contains(ip("192.168.1.7")) && !one.contains(ip("192.168.1.8")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert_eq!(n.to_string(), "10.1.0.0/16");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "nope/8",
            "10.0.0.0/x",
            "10.0.0.0/-1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        let p = TargetPolicy {
            allow_private: false,
            allowed: vec![n],
        };
        let u = url::Url::parse("http://10.1.2.3/").unwrap();
        assert!(p.literal_host_blocked(&u.host().unwrap()).is_none());
        let u = url::Url::parse("http://10.2.0.1/").unwrap();
        assert!(p.literal_host_blocked(&u.host().unwrap()).is_some());
    }
}
