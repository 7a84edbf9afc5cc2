//! SSRF policy for webhook callback URLs: a pure verdict from a URL and the
//! addresses its host resolved to.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

use crate::jsonrpc::asap_codes;

/// Longest callback URL accepted, in bytes (a URL this long is a mistake or an attack).
pub const MAX_URL_LEN: usize = 2048;

/// Which callback URLs a server may deliver webhooks to.
///
/// The default is the production policy: `https` only, and no address in any
/// of the [`BlockedRange`]s. Local testing needs receivers on `http://127.0.0.1`;
/// that takes an explicit, named switch ([`UrlPolicy::local_development`]),
/// never a default.
///
/// The check has two steps because DNS is I/O and belongs to the adapter:
///
/// 1. [`parse`](Self::parse) the URL text: syntax, scheme, host, an IP-literal
///    host's address. The result says which name to resolve, if any.
/// 2. [`approve`](Self::approve) it with every address the name resolved to.
///    Any blocked address refuses the whole URL (a host that mixes public and
///    private addresses is a rebinding attempt); otherwise the verdict names
///    the addresses the adapter must connect to (pin the connection to them,
///    never resolve again), which closes the DNS-rebinding window the
///    reference leaves open.
///
/// [`check`](Self::check) does both in one call. Subscription time and
/// delivery time both run the check (addresses change).
///
/// ```
/// use core::net::{IpAddr, Ipv4Addr};
/// use asap_proto::webhook::{BlockedRange, UrlPolicy, UrlRejection};
///
/// let policy = UrlPolicy::default();
/// let callback = policy.parse("https://hooks.example.com/asap").unwrap();
/// assert_eq!(callback.host_to_resolve(), Some("hooks.example.com"));
/// // The adapter resolves the name (getaddrinfo, hickory, ...) and asks again:
/// let public = [IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34))];
/// let target = policy.approve(&callback, &public).unwrap();
/// assert_eq!(target.socket_addrs().next().unwrap().to_string(), "93.184.216.34:443");
/// // One private address among the answers refuses the URL.
/// let mixed = [public[0], IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))];
/// let err = policy.approve(&callback, &mixed).unwrap_err();
/// assert_eq!(err.blocked_range(), Some(BlockedRange::Private));
/// // Odd spellings of loopback are still loopback.
/// let err = policy.parse("https://0x7f.1/").unwrap_err();
/// assert_eq!(err.blocked_range(), Some(BlockedRange::Loopback));
/// // Development receivers on loopback need the named switch.
/// assert!(UrlPolicy::local_development().check("http://127.0.0.1:8080/h", &[]).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct UrlPolicy {
    /// Development switch: accept `http://` as well as `https://` (the
    /// reference's `require_https=False`). Default `false`.
    pub development_allow_http: bool,
    /// Development switch: accept loopback addresses (`127.0.0.0/8`, `::1`),
    /// so a receiver on this machine can be tested. Default `false`.
    pub development_allow_loopback: bool,
}

impl UrlPolicy {
    /// The production policy (same as `Default`): `https` only, every blocked range refused.
    pub const PRODUCTION: UrlPolicy = UrlPolicy {
        development_allow_http: false,
        development_allow_loopback: false,
    };

    /// The explicit switch for local testing: `http` allowed, loopback
    /// allowed; every other blocked range is still refused.
    #[must_use]
    pub const fn local_development() -> Self {
        Self {
            development_allow_http: true,
            development_allow_loopback: true,
        }
    }

    /// Whether this policy has any development switch on.
    #[must_use]
    pub const fn is_development(&self) -> bool {
        self.development_allow_http || self.development_allow_loopback
    }

    fn allowed_schemes(&self) -> &'static str {
        if self.development_allow_http {
            "http, https"
        } else {
            "https"
        }
    }

    /// The range `ip` is refused for under this policy, `None` when allowed.
    #[must_use]
    pub fn refuses(&self, ip: IpAddr) -> Option<BlockedRange> {
        match blocked_range(ip) {
            Some(BlockedRange::Loopback) if self.development_allow_loopback => None,
            other => other,
        }
    }

    /// Step 1: checks the URL text (see the type docs). An IP-literal host is
    /// checked here; a name is checked by [`approve`](Self::approve).
    pub fn parse(&self, input: &str) -> Result<CallbackUrl, UrlRejection> {
        if input.len() > MAX_URL_LEN {
            return Err(UrlRejection::TooLong { len: input.len() });
        }
        // The WHATWG parser silently drops tabs/newlines and trims C0 controls
        // and spaces; a URL that needs such repairs is refused instead, so the
        // text a person reads is the URL that gets called.
        if let Some(c) = input.chars().find(|c| c.is_control() || c.is_whitespace()) {
            return Err(UrlRejection::Malformed {
                reason: format!("contains the character {c:?} (whitespace or control)"),
            });
        }
        let url = Url::parse(input).map_err(|e| match e {
            url::ParseError::EmptyHost => UrlRejection::MissingHost,
            e => UrlRejection::Malformed {
                reason: e.to_string(),
            },
        })?;
        let scheme = url.scheme();
        let scheme_ok = scheme == "https" || (self.development_allow_http && scheme == "http");
        if !scheme_ok {
            return Err(UrlRejection::SchemeNotAllowed {
                scheme: scheme.to_owned(),
                allowed: self.allowed_schemes(),
            });
        }
        check_authority_text(input)?;
        // Defence in depth: `check_authority_text` already refuses any '@' before
        // the first '/', '?', '#' or '\\' (where the WHATWG parser ends an http(s)
        // authority), so this never fires today; it stays so that a change in the
        // parser or in that check cannot let userinfo through. (Its `||` -> `&&`
        // mutant is equivalent for that reason: docs/testing.md.)
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRejection::Userinfo);
        }
        let host = match url.host() {
            None => return Err(UrlRejection::MissingHost),
            Some(Host::Domain("")) => return Err(UrlRejection::MissingHost),
            Some(Host::Domain(d)) => {
                // WHATWG lets through names DNS cannot carry (`"x`, `a!b`);
                // an HTTP client would refuse them or resolve something else.
                check_dns_name(d)?;
                CallbackHost::Name(d.to_owned())
            }
            Some(Host::Ipv4(a)) => CallbackHost::Ip(IpAddr::V4(a)),
            Some(Host::Ipv6(a)) => CallbackHost::Ip(IpAddr::V6(a)),
        };
        if let CallbackHost::Ip(ip) = host {
            if let Some(range) = self.refuses(ip) {
                return Err(UrlRejection::BlockedAddress {
                    host: ip.to_string(),
                    range,
                });
            }
        }
        // Percent-encoding can make the stored form longer than the text given.
        if url.as_str().len() > MAX_URL_LEN {
            return Err(UrlRejection::TooLong {
                len: url.as_str().len(),
            });
        }
        // The outbox sends to an `http::Uri`; what it cannot carry is refused here.
        if let Err(e) = url.as_str().parse::<http::Uri>() {
            return Err(UrlRejection::Malformed {
                reason: format!("not usable as an HTTP request URI: {e}"),
            });
        }
        let Some(port) = url.port_or_known_default() else {
            // http and https always have a default port; kept total anyway.
            return Err(UrlRejection::Malformed {
                reason: "no port".into(),
            });
        };
        Ok(CallbackUrl { url, host, port })
    }

    /// Step 2: the verdict for a parsed URL and the addresses its name
    /// resolved to (every address the resolver returned, all families).
    ///
    /// For an IP-literal host `resolved` is ignored: the literal is the address.
    pub fn approve(
        &self,
        callback: &CallbackUrl,
        resolved: &[IpAddr],
    ) -> Result<ApprovedTarget, UrlRejection> {
        let addresses = match &callback.host {
            CallbackHost::Ip(ip) => {
                // Re-checked: the CallbackUrl may come from a more lenient policy.
                if let Some(range) = self.refuses(*ip) {
                    return Err(UrlRejection::BlockedAddress {
                        host: ip.to_string(),
                        range,
                    });
                }
                vec![*ip]
            }
            CallbackHost::Name(name) => {
                if resolved.is_empty() {
                    return Err(UrlRejection::NoAddresses { host: name.clone() });
                }
                let mut approved: Vec<IpAddr> = Vec::with_capacity(resolved.len());
                for ip in resolved {
                    if let Some(range) = self.refuses(*ip) {
                        return Err(UrlRejection::ResolvedToBlocked {
                            host: name.clone(),
                            ip: *ip,
                            range,
                        });
                    }
                    if !approved.contains(ip) {
                        approved.push(*ip);
                    }
                }
                approved
            }
        };
        Ok(ApprovedTarget {
            url: callback.url.clone(),
            host: callback.host.clone(),
            port: callback.port,
            addresses,
        })
    }

    /// Both steps at once: [`parse`](Self::parse) then [`approve`](Self::approve).
    pub fn check(&self, input: &str, resolved: &[IpAddr]) -> Result<ApprovedTarget, UrlRejection> {
        let callback = self.parse(input)?;
        self.approve(&callback, resolved)
    }
}

/// Refuses authority spellings that parsers disagree about. The WHATWG parser
/// reads `https:///x` as host `x` and `https://a\@b/` as host `a`, where
/// Python's `urlsplit` (the reference) sees no host, and host `b`. Refusing
/// them means every parser names the same host for an accepted URL.
fn check_authority_text(input: &str) -> Result<(), UrlRejection> {
    let Some((_, rest)) = input.split_once(':') else {
        return Err(UrlRejection::MissingHost);
    };
    let Some(after) = rest.strip_prefix("//") else {
        return Err(UrlRejection::Malformed {
            reason: "expected '//' after the scheme".into(),
        });
    };
    let end = after.find(['/', '?', '#', '\\']).unwrap_or(after.len());
    let authority = &after[..end];
    if authority.is_empty() {
        return Err(UrlRejection::MissingHost);
    }
    if after[end..].starts_with('\\') {
        return Err(UrlRejection::Malformed {
            reason: "a backslash ends the host (parsers disagree where the host ends)".into(),
        });
    }
    if authority.contains('@') {
        return Err(UrlRejection::Userinfo);
    }
    Ok(())
}

/// A DNS host name: dot-separated labels of ASCII letters, digits, `-` and
/// `_` (IDNs arrive here as punycode), 1–63 bytes each, at most 253 in all,
/// with an optional trailing dot.
fn check_dns_name(name: &str) -> Result<(), UrlRejection> {
    let bad = |reason: &str| UrlRejection::Malformed {
        reason: format!("host {name:?} is not a DNS name: {reason}"),
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad("empty or longer than 253 bytes"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("a label is empty or longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
    }
    Ok(())
}

/// The host of a parsed callback URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallbackHost {
    /// A DNS name (lower-case, IDNA/punycode as the WHATWG parser writes it); the adapter resolves it.
    Name(String),
    /// An IP literal, in any spelling the WHATWG parser accepts (`2130706433`,
    /// `0x7f.1`, `0177.0.0.1` all mean `127.0.0.1`).
    Ip(IpAddr),
}

/// A callback URL that passed [`UrlPolicy::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl {
    url: Url,
    host: CallbackHost,
    port: u16,
}

impl CallbackUrl {
    /// The normalised URL (the text to store at subscription time and to send to).
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The parsed URL.
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The host.
    #[must_use]
    pub fn host(&self) -> &CallbackHost {
        &self.host
    }

    /// The DNS name the adapter must resolve before [`UrlPolicy::approve`]; `None` for IP literals.
    #[must_use]
    pub fn host_to_resolve(&self) -> Option<&str> {
        match &self.host {
            CallbackHost::Name(n) => Some(n),
            CallbackHost::Ip(_) => None,
        }
    }

    /// The port (explicit, or the scheme's default).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.url.as_str())
    }
}

/// The verdict that lets a delivery go out: the URL and the addresses to
/// connect to. The adapter connects only to these addresses (in order,
/// falling back to the next on a connect error) and sends the request with
/// the URL's host as `Host` and TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedTarget {
    url: Url,
    host: CallbackHost,
    port: u16,
    addresses: Vec<IpAddr>,
}

impl ApprovedTarget {
    /// The normalised URL.
    #[must_use]
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The host as written in the URL (for `Host` and TLS SNI).
    #[must_use]
    pub fn host(&self) -> &CallbackHost {
        &self.host
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The approved addresses, in resolver order, without duplicates (never empty).
    #[must_use]
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// The addresses with the port: what to pin the connection to.
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// Why a callback URL was refused. Always the fault of whoever supplied the
/// URL (a subscriber, or the operator's configuration); the reference reports
/// it as [`asap_codes::WEBHOOK_URL_REJECTED`].
///
/// Messages begin with the reference's text where the reference has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlRejection {
    /// Not a URL, or one that needs repairs to parse.
    #[error("Webhook URL is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// Longer than [`MAX_URL_LEN`].
    #[error("Webhook URL is {len} bytes long; at most {MAX_URL_LEN} are accepted")]
    TooLong {
        /// The length given.
        len: usize,
    },
    /// The scheme is not `https` (or `http` under the development switch).
    #[error("Scheme '{scheme}' is not allowed. Allowed schemes: {allowed}")]
    SchemeNotAllowed {
        /// The scheme, lower-cased.
        scheme: String,
        /// The schemes this policy allows.
        allowed: &'static str,
    },
    /// No host.
    #[error("URL must include a hostname")]
    MissingHost,
    /// `user:password@` in the URL: refused because `https://good.example@evil.example/`
    /// tricks readers about the host, and credentials in URLs end up in logs.
    #[error("Webhook URL must not include userinfo ('user@' or 'user:password@' before the host)")]
    Userinfo,
    /// An IP-literal host in a blocked range.
    #[error(
        "Host '{host}' resolves to a blocked address range (private/loopback/link-local): {range}"
    )]
    BlockedAddress {
        /// The host (an IPv6 literal without brackets).
        host: String,
        /// The range it is in.
        range: BlockedRange,
    },
    /// The name resolved to no address at all.
    #[error("DNS resolution failed for '{host}': no addresses")]
    NoAddresses {
        /// The name.
        host: String,
    },
    /// The name resolved to (at least) one blocked address.
    #[error("Host '{host}' resolved to blocked IP '{ip}' (private/loopback/link-local): {range}")]
    ResolvedToBlocked {
        /// The name.
        host: String,
        /// The first blocked address.
        ip: IpAddr,
        /// Its range.
        range: BlockedRange,
    },
}

impl UrlRejection {
    /// The ASAP error code (`asap:transport/webhook_url_rejected`).
    #[must_use]
    pub fn code(&self) -> &'static str {
        asap_codes::WEBHOOK_URL_REJECTED
    }

    /// The blocked range, when an address was the reason.
    #[must_use]
    pub fn blocked_range(&self) -> Option<BlockedRange> {
        match self {
            Self::BlockedAddress { range, .. } | Self::ResolvedToBlocked { range, .. } => {
                Some(*range)
            }
            _ => None,
        }
    }
}

/// An address range webhooks are never delivered to.
///
/// The union of what the reference blocks (Python `ipaddress` private,
/// loopback, link-local and reserved, spec 16.1; on Python 3.11 and on ≥ 3.12.4)
/// and what it misses: CGNAT shared space, multicast, site-local IPv6, the
/// deprecated 6to4 relay anycast, the IPv6 documentation prefix `3fff::/20`,
/// and the IPv4 inside a 6to4 address. Everything outside global unicast
/// `2000::/3` is blocked, which covers IPv4-mapped/-compatible/-translated
/// IPv6 and NAT64 whatever IPv4 they embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockedRange {
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1` (allowed by [`UrlPolicy::local_development`]).
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` (RFC 1918).
    Private,
    /// `100.64.0.0/10`, carrier-grade NAT (RFC 6598). The reference allows it.
    SharedAddressSpace,
    /// `169.254.0.0/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// `192.0.0.0/24`, `2001::/23` (IETF protocol assignments: Teredo, ORCHID, AS112, benchmarking ...).
    ProtocolAssignments,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15` (RFC 2544).
    Benchmarking,
    /// `192.88.99.0/24`, the deprecated 6to4 relay anycast (RFC 7526). The reference allows it.
    SixToFourRelay,
    /// `224.0.0.0/4`, `ff00::/8`. The reference allows both.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4` and IPv6 outside `2000::/3` not named by another variant.
    Reserved,
    /// `fc00::/7` (unique local).
    UniqueLocal,
    /// `fec0::/10` (deprecated site-local). The reference allows it.
    SiteLocal,
    /// `::ffff:0:0/96`, IPv4-mapped (blocked whatever IPv4 it maps, as the reference does).
    Ipv4Mapped,
    /// `::/96` (other than `::` and `::1`), IPv4-compatible (deprecated).
    Ipv4Compatible,
    /// `64:ff9b::/96` and `64:ff9b:1::/48`, NAT64 (the gateway would reach the embedded IPv4).
    Nat64,
    /// `2002::/16` whose embedded IPv4 (bits 16–47) is itself blocked.
    SixToFourEmbedsBlocked,
}

impl BlockedRange {
    /// A short description with the prefixes.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified address (0.0.0.0/8, ::)",
            Self::Loopback => "loopback (127.0.0.0/8, ::1)",
            Self::Private => "private network (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)",
            Self::SharedAddressSpace => "carrier-grade NAT shared space (100.64.0.0/10)",
            Self::LinkLocal => "link-local (169.254.0.0/16, fe80::/10)",
            Self::ProtocolAssignments => "IETF protocol assignments (192.0.0.0/24, 2001::/23)",
            Self::Documentation => {
                "documentation (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20)"
            }
            Self::Benchmarking => "benchmarking (198.18.0.0/15)",
            Self::SixToFourRelay => "deprecated 6to4 relay anycast (192.88.99.0/24)",
            Self::Multicast => "multicast (224.0.0.0/4, ff00::/8)",
            Self::Broadcast => "broadcast (255.255.255.255)",
            Self::Reserved => "reserved (240.0.0.0/4, IPv6 outside 2000::/3)",
            Self::UniqueLocal => "unique local (fc00::/7)",
            Self::SiteLocal => "site-local (fec0::/10)",
            Self::Ipv4Mapped => "IPv4-mapped IPv6 (::ffff:0:0/96)",
            Self::Ipv4Compatible => "IPv4-compatible IPv6 (::/96)",
            Self::Nat64 => "NAT64 (64:ff9b::/96, 64:ff9b:1::/48)",
            Self::SixToFourEmbedsBlocked => "6to4 (2002::/16) embedding a blocked IPv4 address",
        }
    }
}

impl fmt::Display for BlockedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The blocked range `ip` is in, `None` for an address webhooks may go to.
///
/// ```
/// use core::net::IpAddr;
/// use asap_proto::webhook::{blocked_range, BlockedRange};
/// let ip = |s: &str| s.parse::<IpAddr>().unwrap();
/// assert_eq!(blocked_range(ip("169.254.169.254")), Some(BlockedRange::LinkLocal));
/// assert_eq!(blocked_range(ip("2002:c0a8:0101::1")), Some(BlockedRange::SixToFourEmbedsBlocked));
/// assert_eq!(blocked_range(ip("2606:4700:4700::1111")), None);
/// ```
#[must_use]
pub fn blocked_range(ip: IpAddr) -> Option<BlockedRange> {
    match ip {
        IpAddr::V4(a) => blocked_v4(a),
        IpAddr::V6(a) => blocked_v6(a),
    }
}

fn blocked_v4(a: Ipv4Addr) -> Option<BlockedRange> {
    use BlockedRange as R;
    let o = a.octets();
    let range = match o {
        [0, ..] => R::Unspecified,
        [10, ..] => R::Private,
        [100, b, ..] if b & 0xc0 == 64 => R::SharedAddressSpace,
        [127, ..] => R::Loopback,
        [169, 254, ..] => R::LinkLocal,
        [172, b, ..] if b & 0xf0 == 16 => R::Private,
        [192, 0, 0, _] => R::ProtocolAssignments,
        [192, 0, 2, _] => R::Documentation,
        [192, 88, 99, _] => R::SixToFourRelay,
        [192, 168, ..] => R::Private,
        [198, b, ..] if b & 0xfe == 18 => R::Benchmarking,
        [198, 51, 100, _] | [203, 0, 113, _] => R::Documentation,
        [224..=239, ..] => R::Multicast,
        [255, 255, 255, 255] => R::Broadcast,
        [240..=255, ..] => R::Reserved,
        _ => return None,
    };
    Some(range)
}

fn blocked_v6(a: Ipv6Addr) -> Option<BlockedRange> {
    use BlockedRange as R;
    let s = a.segments();
    let range = if a == Ipv6Addr::UNSPECIFIED {
        R::Unspecified
    } else if a == Ipv6Addr::LOCALHOST {
        R::Loopback
    } else if s[..5] == [0; 5] && s[5] == 0xffff {
        R::Ipv4Mapped
    } else if s[..6] == [0; 6] {
        R::Ipv4Compatible
    } else if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
        R::Nat64
    } else if s[0] & 0xff00 == 0xff00 {
        R::Multicast
    } else if s[0] & 0xffc0 == 0xfe80 {
        R::LinkLocal
    } else if s[0] & 0xffc0 == 0xfec0 {
        R::SiteLocal
    } else if s[0] & 0xfe00 == 0xfc00 {
        R::UniqueLocal
    } else if s[0] & 0xe000 != 0x2000 {
        R::Reserved
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        R::ProtocolAssignments
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] < 0x1000) {
        R::Documentation
    } else if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        blocked_v4(Ipv4Addr::new(a, b, c, d))?;
        R::SixToFourEmbedsBlocked
    } else {
        return None;
    };
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// What the reference blocks on Python 3.11 (spec 16.1), written out
    /// independently of `blocked_range` so the two can be compared.
    fn reference_blocks(ip: IpAddr) -> bool {
        fn in_net(ip: IpAddr, net: &str) -> bool {
            let (base, len) = net.split_once('/').unwrap();
            let len: u32 = len.parse().unwrap();
            match (ip, base.parse::<IpAddr>().unwrap()) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                    u32::from(a) & mask == u32::from(b) & mask
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    let mask = if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                    u128::from(a) & mask == u128::from(b) & mask
                }
                _ => false,
            }
        }
        const V4: &[&str] = &[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/29",
            "192.0.0.170/31",
            "192.0.2.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "255.255.255.255/32",
        ];
        const V6: &[&str] = &[
            "::1/128",
            "::/128",
            "::ffff:0:0/96",
            "100::/64",
            "2001::/23",
            "2001:2::/48",
            "2001:db8::/32",
            "2001:10::/28",
            "fc00::/7",
            "fe80::/10",
            "::/8",
            "100::/8",
            "200::/7",
            "400::/6",
            "800::/5",
            "1000::/4",
            "4000::/3",
            "6000::/3",
            "8000::/3",
            "a000::/3",
            "c000::/3",
            "e000::/4",
            "f000::/5",
            "f800::/6",
            "fe00::/9",
        ];
        V4.iter().chain(V6).any(|n| in_net(ip, n))
    }

    /// Every address the reference blocks, we block; these are the ones we
    /// block and the reference does not.
    const BLOCKED_HERE_ONLY: &[(&str, BlockedRange)] = &[
        ("100.64.0.1", BlockedRange::SharedAddressSpace),
        ("100.127.255.254", BlockedRange::SharedAddressSpace),
        ("224.0.0.1", BlockedRange::Multicast),
        ("239.255.255.250", BlockedRange::Multicast),
        ("192.0.0.9", BlockedRange::ProtocolAssignments),
        ("192.0.0.200", BlockedRange::ProtocolAssignments),
        ("192.88.99.1", BlockedRange::SixToFourRelay),
        ("fec0::1", BlockedRange::SiteLocal),
        ("ff02::1", BlockedRange::Multicast),
        ("ff0e::1", BlockedRange::Multicast),
        ("3fff::1", BlockedRange::Documentation),
        ("2002:7f00:0001::1", BlockedRange::SixToFourEmbedsBlocked),
        ("2002:a9fe:a9fe::", BlockedRange::SixToFourEmbedsBlocked),
    ];

    #[test]
    fn we_block_more_than_the_reference_and_never_less() {
        for (text, range) in BLOCKED_HERE_ONLY {
            assert!(
                !reference_blocks(ip(text)),
                "{text} is blocked by the reference too"
            );
            assert_eq!(blocked_range(ip(text)), Some(*range), "{text}");
        }
        for text in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.19.0.1",
            "192.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fdff::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "2001:db8::1",
            "2001::1",
            "2001:10::1",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "100::1",
            "4000::1",
            "e000::1",
        ] {
            assert!(reference_blocks(ip(text)), "{text}");
            assert!(blocked_range(ip(text)).is_some(), "{text}");
        }
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "2a00:1450::1",
            "2002:0808:0808::1",
        ] {
            assert!(!reference_blocks(ip(text)), "{text}");
            assert_eq!(blocked_range(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn host_spellings_are_normalised_before_the_check() {
        let p = UrlPolicy::default();
        for url in [
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://127.0.0.1./",
            "https://[::ffff:7f00:1]/",
            "https://[0:0:0:0:0:ffff:127.0.0.1]/",
            "https://%31%32%37.0.0.1/",
            "https://0xa9.0xfe.0xa9.0xfe/latest",
        ] {
            let err = p.parse(url).unwrap_err();
            assert!(err.blocked_range().is_some(), "{url}: {err}");
        }
    }

    #[test]
    fn userinfo_and_ambiguous_authorities_are_refused() {
        let p = UrlPolicy::default();
        let cases = [
            ("https://93.184.216.34@127.0.0.1/", UrlRejection::Userinfo),
            ("https://user:pw@example.com/", UrlRejection::Userinfo),
            ("https://user@example.com/", UrlRejection::Userinfo),
            ("https://:@example.com/", UrlRejection::Userinfo),
            ("https:///nohost", UrlRejection::MissingHost),
            ("https:////example.com", UrlRejection::MissingHost),
            ("https://", UrlRejection::MissingHost),
        ];
        for (url, want) in cases {
            assert_eq!(p.parse(url).unwrap_err(), want, "{url}");
        }
        for url in [
            "https://example.com\\@127.0.0.1/",
            "https:example.com/",
            "https:/example.com/",
            "https://exa mple.com/",
            "https://example.com/\n",
            " https://example.com/",
            "https://exa\tmple.com/",
            "not a url",
            "https://[::1/",
            "https://1.2.3.4.5/",
            "https://\"https:/1/h",
            "https://a!b.example/",
            "https://a..b/",
        ] {
            assert!(
                matches!(p.parse(url), Err(UrlRejection::Malformed { .. })),
                "{url}: {:?}",
                p.parse(url)
            );
        }
        let long_label = format!("https://x.{}/", "a".repeat(64));
        assert!(matches!(
            p.parse(&long_label),
            Err(UrlRejection::Malformed { .. })
        ));
        let idn = p.parse("https://B\u{fc}cher.example./").unwrap();
        assert_eq!(idn.host_to_resolve(), Some("xn--bcher-kva.example."));
        assert!(matches!(
            p.parse(&format!("https://example.com/{}", "a".repeat(MAX_URL_LEN))),
            Err(UrlRejection::TooLong { .. })
        ));
    }

    #[test]
    fn names_are_approved_with_every_address_and_pinned() {
        let p = UrlPolicy::default();
        let cb = p.parse("https://Hooks.Example.COM:8443/a?b#c").unwrap();
        assert_eq!(cb.host_to_resolve(), Some("hooks.example.com"));
        assert_eq!(cb.port(), 8443);
        let resolved = [
            ip("93.184.216.34"),
            ip("2606:4700:4700::1111"),
            ip("93.184.216.34"),
        ];
        let t = p.approve(&cb, &resolved).unwrap();
        assert_eq!(t.addresses(), &resolved[..2]);
        let pins: Vec<String> = t.socket_addrs().map(|s| s.to_string()).collect();
        assert_eq!(pins, ["93.184.216.34:8443", "[2606:4700:4700::1111]:8443"]);
        assert_eq!(
            p.approve(&cb, &[]).unwrap_err(),
            UrlRejection::NoAddresses {
                host: "hooks.example.com".into()
            }
        );
        let err = p
            .approve(&cb, &[ip("93.184.216.34"), ip("::ffff:10.0.0.1")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Host 'hooks.example.com' resolved to blocked IP '::ffff:10.0.0.1' \
             (private/loopback/link-local): IPv4-mapped IPv6 (::ffff:0:0/96)"
        );
        assert_eq!(err.code(), "asap:transport/webhook_url_rejected");
        // A literal ignores the resolver's answer.
        let lit = p.parse("https://[2606:4700:4700::1111]/").unwrap();
        assert_eq!(lit.host_to_resolve(), None);
        assert_eq!(
            p.approve(&lit, &[ip("10.0.0.1")]).unwrap().addresses(),
            [ip("2606:4700:4700::1111")]
        );
    }

    #[test]
    fn the_development_switch_is_explicit_and_narrow() {
        let dev = UrlPolicy::local_development();
        assert!(dev.is_development() && !UrlPolicy::default().is_development());
        assert_eq!(UrlPolicy::default(), UrlPolicy::PRODUCTION);
        assert!(dev.check("http://127.0.0.1:8080/h", &[]).is_ok());
        assert!(dev.check("http://[::1]/h", &[]).is_ok());
        assert!(dev
            .check("http://localhost:9/h", &[ip("127.0.0.1"), ip("::1")])
            .is_ok());
        // Everything else stays blocked.
        for url in [
            "http://10.0.0.1/",
            "http://169.254.169.254/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(dev.check(url, &[]).is_err(), "{url}");
        }
        assert!(dev.check("ftp://93.184.216.34/", &[]).is_err());
        let http_only = UrlPolicy {
            development_allow_http: true,
            ..UrlPolicy::default()
        };
        assert!(http_only.check("http://93.184.216.34/h", &[]).is_ok());
        assert!(http_only.check("http://127.0.0.1/h", &[]).is_err());
        assert_eq!(
            UrlPolicy::default()
                .parse("http://93.184.216.34/")
                .unwrap_err()
                .to_string(),
            "Scheme 'http' is not allowed. Allowed schemes: https"
        );
        assert_eq!(
            http_only
                .parse("ws://93.184.216.34/")
                .unwrap_err()
                .to_string(),
            "Scheme 'ws' is not allowed. Allowed schemes: http, https"
        );
        // A URL parsed under a lenient policy is re-checked by a strict one.
        let cb = dev.parse("http://127.0.0.1/").unwrap();
        assert!(UrlPolicy {
            development_allow_http: true,
            ..UrlPolicy::default()
        }
        .approve(&cb, &[])
        .is_err());
    }

    /// Every range by its exact variant, with the addresses just outside each
    /// prefix (so a widened or narrowed mask, a swapped `&&`/`||` or a dropped
    /// match arm changes at least one row).
    #[test]
    fn every_address_gets_its_exact_range() {
        use BlockedRange as R;
        let cases: &[(&str, Option<BlockedRange>)] = &[
            ("0.0.0.0", Some(R::Unspecified)),
            ("0.1.2.3", Some(R::Unspecified)),
            ("1.0.0.1", None),
            ("10.1.2.3", Some(R::Private)),
            ("11.0.0.1", None),
            ("100.64.0.1", Some(R::SharedAddressSpace)),
            ("100.127.255.254", Some(R::SharedAddressSpace)),
            ("100.63.255.255", None),
            ("100.128.0.1", None),
            ("127.0.0.1", Some(R::Loopback)),
            ("127.255.255.254", Some(R::Loopback)),
            ("169.254.169.254", Some(R::LinkLocal)),
            ("169.253.0.1", None),
            ("169.255.0.1", None),
            ("172.16.0.1", Some(R::Private)),
            ("172.31.255.255", Some(R::Private)),
            ("172.15.255.255", None),
            ("172.32.0.1", None),
            ("192.0.0.1", Some(R::ProtocolAssignments)),
            ("192.0.1.1", None),
            ("192.0.2.1", Some(R::Documentation)),
            ("192.0.3.1", None),
            ("192.88.99.1", Some(R::SixToFourRelay)),
            ("192.88.98.1", None),
            ("192.168.1.1", Some(R::Private)),
            ("192.169.0.1", None),
            ("198.18.0.1", Some(R::Benchmarking)),
            ("198.19.255.255", Some(R::Benchmarking)),
            ("198.17.255.255", None),
            ("198.20.0.1", None),
            ("198.51.100.7", Some(R::Documentation)),
            ("198.51.101.1", None),
            ("203.0.113.9", Some(R::Documentation)),
            ("203.0.114.1", None),
            ("223.255.255.255", None),
            ("224.0.0.1", Some(R::Multicast)),
            ("239.255.255.250", Some(R::Multicast)),
            ("240.0.0.1", Some(R::Reserved)),
            ("255.255.255.254", Some(R::Reserved)),
            ("255.255.255.255", Some(R::Broadcast)),
            ("::", Some(R::Unspecified)),
            ("::1", Some(R::Loopback)),
            ("::2", Some(R::Ipv4Compatible)),
            ("::8.8.8.8", Some(R::Ipv4Compatible)),
            ("::ffff:8.8.8.8", Some(R::Ipv4Mapped)),
            ("::ffff:127.0.0.1", Some(R::Ipv4Mapped)),
            ("::1:ffff:0:0", Some(R::Reserved)),
            ("1::ffff:0:0", Some(R::Reserved)),
            ("64:ff9b::808:808", Some(R::Nat64)),
            ("64:ff9b:1::1", Some(R::Nat64)),
            ("64:ff9b:2::1", Some(R::Reserved)),
            ("64:ff9b:0:0:1::1", Some(R::Reserved)),
            ("64:ff9a::1", Some(R::Reserved)),
            ("65:ff9b::1", Some(R::Reserved)),
            ("ff00::1", Some(R::Multicast)),
            ("ff02::1", Some(R::Multicast)),
            ("fe80::1", Some(R::LinkLocal)),
            ("febf::1", Some(R::LinkLocal)),
            ("fec0::1", Some(R::SiteLocal)),
            ("feff::1", Some(R::SiteLocal)),
            ("fe00::1", Some(R::Reserved)),
            ("fc00::1", Some(R::UniqueLocal)),
            ("fdff::1", Some(R::UniqueLocal)),
            ("fb00::1", Some(R::Reserved)),
            ("100::1", Some(R::Reserved)),
            ("1fff::1", Some(R::Reserved)),
            ("4000::1", Some(R::Reserved)),
            ("e000::1", Some(R::Reserved)),
            ("2001::1", Some(R::ProtocolAssignments)),
            ("2001:10::1", Some(R::ProtocolAssignments)),
            ("2001:1ff::1", Some(R::ProtocolAssignments)),
            ("2001:200::1", None),
            ("2001:db8::1", Some(R::Documentation)),
            ("2001:db9::1", None),
            ("3fff::1", Some(R::Documentation)),
            ("3fff:fff::1", Some(R::Documentation)),
            ("3fff:1000::1", None),
            ("2400:100::1", None),
            ("2400:db8::1", None),
            ("2002:7f00:1::1", Some(R::SixToFourEmbedsBlocked)),
            ("2002:808:808::1", None),
            ("2606:4700:4700::1111", None),
            ("2a00:1450::1", None),
        ];
        for (text, want) in cases {
            assert_eq!(blocked_range(ip(text)), *want, "{text}");
        }
    }

    #[test]
    fn each_switch_alone_is_development_and_loopback_alone_keeps_https() {
        let http_only = UrlPolicy {
            development_allow_http: true,
            ..UrlPolicy::PRODUCTION
        };
        let loopback_only = UrlPolicy {
            development_allow_loopback: true,
            ..UrlPolicy::PRODUCTION
        };
        assert!(http_only.is_development());
        assert!(loopback_only.is_development());
        assert_eq!(loopback_only.refuses(ip("127.0.0.1")), None);
        assert_eq!(loopback_only.refuses(ip("::1")), None);
        assert_eq!(
            loopback_only.refuses(ip("10.0.0.1")),
            Some(BlockedRange::Private)
        );
        assert_eq!(
            UrlPolicy::PRODUCTION.refuses(ip("127.0.0.1")),
            Some(BlockedRange::Loopback)
        );
        assert_eq!(
            loopback_only.parse("http://127.0.0.1/").unwrap_err(),
            UrlRejection::SchemeNotAllowed {
                scheme: "http".into(),
                allowed: "https"
            }
        );
        assert_eq!(
            loopback_only
                .check("https://127.0.0.1:8443/h", &[])
                .unwrap()
                .addresses(),
            [ip("127.0.0.1")]
        );
        // A literal approved under a lenient policy is refused by a strict one, by range.
        let cb = loopback_only.parse("https://127.0.0.1/").unwrap();
        assert_eq!(
            UrlPolicy::PRODUCTION.approve(&cb, &[]).unwrap_err(),
            UrlRejection::BlockedAddress {
                host: "127.0.0.1".into(),
                range: BlockedRange::Loopback
            }
        );
        assert_eq!(
            UrlPolicy::PRODUCTION.parse("https://[::1]/").unwrap_err(),
            UrlRejection::BlockedAddress {
                host: "::1".into(),
                range: BlockedRange::Loopback
            }
        );
    }

    #[test]
    fn the_length_limit_is_exact_before_and_after_percent_encoding() {
        let p = UrlPolicy::default();
        let prefix = "https://example.com/";
        let at_limit = format!("{prefix}{}", "a".repeat(MAX_URL_LEN - prefix.len()));
        assert_eq!(at_limit.len(), MAX_URL_LEN);
        assert_eq!(p.parse(&at_limit).unwrap().as_str(), at_limit);
        let over = format!("{at_limit}a");
        assert_eq!(
            p.parse(&over).unwrap_err(),
            UrlRejection::TooLong {
                len: MAX_URL_LEN + 1
            }
        );
        // The limit applies to the text given even when the stored form is shorter
        // ("/./" segments are dropped): checking only the stored length would let
        // this through.
        let dots = format!(
            "{prefix}{}a",
            "./".repeat((MAX_URL_LEN + 1 - prefix.len() - 1) / 2)
        );
        assert_eq!(dots.len(), MAX_URL_LEN + 1);
        assert_eq!(
            p.parse(&dots[..dots.len() - 2]).unwrap().as_str(),
            "https://example.com/"
        );
        assert_eq!(
            p.parse(&dots).unwrap_err(),
            UrlRejection::TooLong {
                len: MAX_URL_LEN + 1
            }
        );
        // Each 'é' is 2 bytes given and 6 stored (%C3%A9).
        let encoded = |pad: usize| format!("{prefix}{}{}", "\u{e9}".repeat(300), "a".repeat(pad));
        let fits = encoded(MAX_URL_LEN - prefix.len() - 1800);
        assert!(fits.len() < MAX_URL_LEN);
        assert_eq!(p.parse(&fits).unwrap().as_str().len(), MAX_URL_LEN);
        assert_eq!(
            p.parse(&encoded(MAX_URL_LEN - prefix.len() - 1800 + 1))
                .unwrap_err(),
            UrlRejection::TooLong {
                len: MAX_URL_LEN + 1
            }
        );
    }

    #[test]
    fn dns_name_limits_are_exact_and_reasons_named() {
        let p = UrlPolicy::default();
        let reason = |url: &str| match p.parse(url) {
            Err(UrlRejection::Malformed { reason }) => reason,
            other => panic!("{url}: {other:?}"),
        };
        let l63 = "a".repeat(63);
        // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 bytes.
        let name253 = format!("{l63}.{l63}.{l63}.{}", "b".repeat(61));
        assert_eq!(name253.len(), 253);
        for host in [name253.clone(), format!("{name253}."), l63.clone()] {
            let cb = p.parse(&format!("https://{host}/")).unwrap();
            assert_eq!(cb.host_to_resolve(), Some(host.as_str()));
        }
        let name254 = format!("{name253}b");
        assert_eq!(
            reason(&format!("https://{name254}/")),
            format!("host {name254:?} is not a DNS name: empty or longer than 253 bytes")
        );
        let l64 = "a".repeat(64);
        assert_eq!(
            reason(&format!("https://x.{l64}/")),
            format!("host \"x.{l64}\" is not a DNS name: a label is empty or longer than 63 bytes")
        );
        assert_eq!(
            reason("https://a..b/"),
            "host \"a..b\" is not a DNS name: a label is empty or longer than 63 bytes"
        );
        assert_eq!(
            reason("https://a!b.example/"),
            "host \"a!b.example\" is not a DNS name: only letters, digits, '-' and '_' are allowed"
        );
        let cb = p.parse("https://my-hook_1.example/").unwrap();
        assert_eq!(cb.host_to_resolve(), Some("my-hook_1.example"));
        assert_eq!(
            reason("https:example.com/"),
            "expected '//' after the scheme"
        );
        assert_eq!(
            reason("https://example.com\\@127.0.0.1/"),
            "a backslash ends the host (parsers disagree where the host ends)"
        );
    }

    #[test]
    fn accessors_report_the_parsed_url() {
        let p = UrlPolicy::default();
        let cb = p.parse("https://Hooks.Example.com:8443/a").unwrap();
        assert_eq!(cb.as_str(), "https://hooks.example.com:8443/a");
        assert_eq!(cb.to_string(), "https://hooks.example.com:8443/a");
        assert_eq!(cb.url().as_str(), "https://hooks.example.com:8443/a");
        assert_eq!(cb.host(), &CallbackHost::Name("hooks.example.com".into()));
        assert_eq!(cb.port(), 8443);
        let t = p.approve(&cb, &[ip("93.184.216.34")]).unwrap();
        assert_eq!(t.url().as_str(), "https://hooks.example.com:8443/a");
        assert_eq!(t.host(), &CallbackHost::Name("hooks.example.com".into()));
        assert_eq!(t.port(), 8443);
        let default_port = p.parse("https://93.184.216.34/").unwrap();
        assert_eq!(default_port.port(), 443);
        assert_eq!(default_port.host(), &CallbackHost::Ip(ip("93.184.216.34")));
        assert_eq!(
            UrlPolicy::local_development()
                .parse("http://93.184.216.34/")
                .unwrap()
                .port(),
            80
        );
        assert_eq!(
            BlockedRange::Loopback.to_string(),
            "loopback (127.0.0.0/8, ::1)"
        );
        let err = p.parse("https://10.0.0.1/").unwrap_err();
        assert_eq!(err.blocked_range(), Some(BlockedRange::Private));
        assert_eq!(err.code(), asap_codes::WEBHOOK_URL_REJECTED);
        assert_eq!(UrlRejection::Userinfo.blocked_range(), None);
    }

    proptest! {
        #[test]
        fn v4_mapped_and_nat64_follow_no_embedded_address(v4: u32) {
            let a = Ipv4Addr::from(v4);
            let mapped = IpAddr::V6(a.to_ipv6_mapped());
            prop_assert_eq!(blocked_range(mapped), Some(BlockedRange::Ipv4Mapped));
            let nat64 = IpAddr::V6(Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(v4)));
            prop_assert_eq!(blocked_range(nat64), Some(BlockedRange::Nat64));
            let six_to_four = IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(v4) << 80) | 1));
            prop_assert_eq!(blocked_range(six_to_four).is_some(), blocked_v4(a).is_some());
        }

        #[test]
        fn never_allows_what_the_reference_blocks(bits: u128, v4: u32) {
            for ip in [IpAddr::V6(Ipv6Addr::from(bits)), IpAddr::V4(Ipv4Addr::from(v4))] {
                if reference_blocks(ip) {
                    prop_assert!(blocked_range(ip).is_some(), "{}", ip);
                }
            }
        }

        #[test]
        fn accepted_urls_are_stable_under_reparsing(
            host in "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}|[0-9]{1,3}(\\.[0-9]{1,3}){3}",
            path in "(/[a-zA-Z0-9%._~-]{0,6}){0,3}",
        ) {
            let p = UrlPolicy::default();
            let text = format!("https://{host}{path}");
            let resolved = [ip("93.184.216.34")];
            if let Ok(first) = p.check(&text, &resolved) {
                let again = p.check(first.url().as_str(), &resolved).unwrap();
                prop_assert_eq!(again, first);
            }
        }
    }
}
