//! Webhook SSRF policy: bytes → (policy switches, resolved addresses, URL text)
//! → `UrlPolicy::parse` / `approve`. Nothing panics, and the verdict is stable
//! under re-parsing: an accepted URL, serialized and checked again, gets the
//! same verdict; a URL refused for its scheme or address is refused the same
//! way after a WHATWG round trip; the host `http::Uri` reads from an accepted
//! URL (what the outbox's requests carry) is the host that was approved.
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use asap_proto::webhook::{
    blocked_range, BlockedRange, CallbackHost, UrlPolicy, UrlRejection, MAX_URL_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Splits the input: byte 0 = switches, byte 1 = address count (mod 4), then
/// per address a tag byte (even: IPv4, 4 bytes; odd: IPv6, 16 bytes), then the URL.
fn split(data: &[u8]) -> Option<(UrlPolicy, Vec<IpAddr>, &str)> {
    let (&flags, rest) = data.split_first()?;
    let (&count, mut rest) = rest.split_first()?;
    let policy = UrlPolicy {
        development_allow_http: flags & 1 != 0,
        development_allow_loopback: flags & 2 != 0,
    };
    let mut resolved = Vec::new();
    for _ in 0..count % 4 {
        let (&tag, r) = rest.split_first()?;
        if tag % 2 == 0 {
            let b: [u8; 4] = r.get(..4)?.try_into().ok()?;
            resolved.push(IpAddr::V4(Ipv4Addr::from(b)));
            rest = &r[4..];
        } else {
            let b: [u8; 16] = r.get(..16)?.try_into().ok()?;
            resolved.push(IpAddr::V6(Ipv6Addr::from(b)));
            rest = &r[16..];
        }
    }
    Some((policy, resolved, std::str::from_utf8(rest).ok()?))
}

fuzz_target!(|data: &[u8]| {
    let Some((policy, resolved, text)) = split(data) else {
        return;
    };
    match policy.parse(text) {
        Ok(callback) => {
            // The normalised text parses to the same callback.
            let again = policy.parse(callback.as_str()).expect("a normalised URL is accepted");
            assert_eq!(again, callback);
            // http::Uri (the outbox's request URI) names the same host.
            let uri: http::Uri = callback.as_str().parse().expect("a normalised URL is a Uri");
            let uri_host = uri.host().expect("the Uri has a host");
            match callback.host() {
                CallbackHost::Name(n) => assert_eq!(uri_host, n),
                CallbackHost::Ip(IpAddr::V4(a)) => assert_eq!(uri_host, a.to_string()),
                CallbackHost::Ip(IpAddr::V6(a)) => assert_eq!(uri_host, format!("[{a}]")),
            }
            let verdict = policy.approve(&callback, &resolved);
            assert_eq!(policy.approve(&again, &resolved), verdict);
            match verdict {
                Ok(target) => {
                    assert!(!target.addresses().is_empty());
                    for ip in target.addresses() {
                        assert_eq!(policy.refuses(*ip), None, "{ip} approved");
                        if callback.host_to_resolve().is_some() {
                            assert!(resolved.contains(ip));
                        }
                    }
                    let checked = policy.check(target.url().as_str(), &resolved);
                    assert_eq!(checked, Ok(target));
                }
                Err(UrlRejection::ResolvedToBlocked { ip, .. }) => {
                    assert!(resolved.contains(&ip));
                    assert!(policy.refuses(ip).is_some());
                }
                Err(UrlRejection::NoAddresses { .. }) => assert!(resolved.is_empty()),
                Err(other) => panic!("approve refused a parsed URL with {other:?}"),
            }
        }
        Err(err @ (UrlRejection::SchemeNotAllowed { .. } | UrlRejection::BlockedAddress { .. })) => {
            if let UrlRejection::BlockedAddress { range, .. } = &err {
                assert!(!(policy.development_allow_loopback && *range == BlockedRange::Loopback));
            }
            // The refusal survives a WHATWG round trip of the text (unless
            // percent-encoding made it too long to look at).
            if let Ok(url) = url::Url::parse(text) {
                if url.as_str().len() <= MAX_URL_LEN {
                    assert_eq!(policy.parse(url.as_str()).unwrap_err(), err, "{text:?} → {url}");
                }
            }
        }
        Err(_) => {}
    }
    // The classification is total and consistent with the switches.
    for ip in &resolved {
        let r = blocked_range(*ip);
        let p = policy.refuses(*ip);
        assert!(p.is_none() || p == r);
    }
});
