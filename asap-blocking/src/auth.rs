//! Identity on threads: performs the fetches the core's auth machines ask
//! for (key sets, introspection, token requests) with ureq. The sequencing
//! is the core's ([`asap_proto::server::ServerAuth`],
//! [`asap_proto::auth::BearerSource`]).

use std::sync::Mutex;
use std::time::Duration;

use asap_proto::auth::{BearerLookup, BearerSource};
use asap_proto::model::UnixTime;
use asap_proto::server::Now;

/// Largest answer read from an IdP.
const MAX_IDP_BODY: u64 = 1 << 20;
/// Timeout of one IdP request (the reference's 10 s).
pub const IDP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn now() -> Now {
    Now {
        monotonic: std::time::Instant::now(),
        wall: UnixTime::from_system_time(std::time::SystemTime::now()),
    }
}

/// A ureq agent for IdP requests (statuses are answers, no redirects).
#[must_use]
pub fn idp_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(IDP_TIMEOUT))
            .build(),
    )
}

/// Performs one request an auth machine emitted; the error names the URL and cause.
pub fn perform(
    agent: &ureq::Agent,
    req: http::Request<Vec<u8>>,
) -> Result<http::Response<Vec<u8>>, String> {
    let url = req.uri().to_string();
    let fail = |e: ureq::Error| format!("{url}: {e}");
    let (parts, body) = req.into_parts();
    let resp = if parts.method == http::Method::GET {
        agent.run(http::Request::from_parts(parts, ()))
    } else {
        agent.run(http::Request::from_parts(parts, body))
    }
    .map_err(fail)?;
    let (parts, mut body) = resp.into_parts();
    let bytes = body
        .with_config()
        .limit(MAX_IDP_BODY)
        .read_to_vec()
        .map_err(fail)?;
    Ok(http::Response::from_parts(parts, bytes))
}

/// The `Authorization` value from `source` (`None`: none configured),
/// performing token requests as needed.
pub(crate) fn authorization(
    source: &Mutex<Option<BearerSource>>,
    agent: &ureq::Agent,
) -> Result<Option<http::HeaderValue>, String> {
    let lock = || {
        source
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    // Bounded: each fetch is reported before asking again, and the machines rate-limit.
    for _ in 0..50 {
        let step = match lock().as_mut() {
            None => return Ok(None),
            Some(s) => s.authorization(now()),
        };
        match step {
            BearerLookup::Ready(v) => {
                return http::HeaderValue::from_str(&v)
                    .map(Some)
                    .map_err(|_| "the access token is not a valid header value".into())
            }
            BearerLookup::Fetch(f) => {
                let result = perform(agent, f.request);
                let mut guard = lock();
                let Some(s) = guard.as_mut() else {
                    return Ok(None);
                };
                match result {
                    Ok(r) => s.handle_response(f.id, &r, now())?,
                    Err(e) => {
                        s.handle_failure(f.id, &e, now());
                        return Err(e);
                    }
                }
            }
            BearerLookup::Wait => std::thread::sleep(Duration::from_millis(20)),
            BearerLookup::Unavailable(why) => return Err(why),
        }
    }
    Err("no access token after repeated attempts".into())
}
