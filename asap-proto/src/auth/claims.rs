//! JWT claims (RFC 7519) and the policy they are checked against:
//! `exp` (required unless switched off), `nbf`, `iat`, `iss`, `aud`, `sub`,
//! `scope`/`scp`, with a leeway.

use std::time::Duration;

use serde_json::{Map, Value};

use super::validator::TokenRejection;
use crate::model::UnixTime;

/// Default clock-skew allowance for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// What the claims of a verified token must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsPolicy {
    /// Exact `iss` required, when set. Default none (the reference checks none).
    pub issuer: Option<String>,
    /// A value `aud` must contain, when set. Default none.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp`, `nbf`, `iat`. Default 60 s.
    pub leeway: Duration,
    /// Whether a token without `exp` is rejected. Default `true`; `false`
    /// accepts it as the reference does (`no_exp_accepted` vector).
    pub require_exp: bool,
}

impl Default for ClaimsPolicy {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            require_exp: true,
        }
    }
}

/// The claims of a token that passed every check.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claims {
    /// `sub` (non-empty).
    pub subject: String,
    /// `iss`.
    pub issuer: Option<String>,
    /// `aud` (a string becomes one element).
    pub audience: Vec<String>,
    /// `exp`.
    pub expires_at: Option<UnixTime>,
    /// `nbf`.
    pub not_before: Option<UnixTime>,
    /// `iat`.
    pub issued_at: Option<UnixTime>,
    /// `scope` and `scp` (space-separated string or array), in order, deduplicated.
    pub scopes: Vec<String>,
    /// Every claim as sent (custom claims such as the agent id live here).
    pub raw: Map<String, Value>,
}

impl Claims {
    /// A claim by name.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.raw.get(name)
    }

    /// Checks `raw` against `policy` at wall time `now`.
    pub fn check(
        raw: Map<String, Value>,
        policy: &ClaimsPolicy,
        now: UnixTime,
    ) -> Result<Self, TokenRejection> {
        let expires_at = numeric_date(&raw, "exp")?;
        let not_before = numeric_date(&raw, "nbf")?;
        let issued_at = numeric_date(&raw, "iat")?;
        match expires_at {
            None if policy.require_exp => return Err(TokenRejection::MissingExpiry),
            Some(exp) if now >= exp.saturating_add(policy.leeway) => {
                return Err(TokenRejection::Expired { exp })
            }
            _ => {}
        }
        if let Some(nbf) = not_before {
            if now.saturating_add(policy.leeway) < nbf {
                return Err(TokenRejection::NotYetValid { nbf });
            }
        }
        if let Some(iat) = issued_at {
            if iat > now.saturating_add(policy.leeway) {
                return Err(TokenRejection::IssuedInFuture { iat });
            }
        }
        let issuer = optional_string(&raw, "iss")?;
        if let Some(want) = &policy.issuer {
            if issuer.as_deref() != Some(want.as_str()) {
                return Err(TokenRejection::WrongIssuer { found: issuer });
            }
        }
        let audience = match raw.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(TokenRejection::InvalidClaim("aud"))?,
            Some(_) => return Err(TokenRejection::InvalidClaim("aud")),
        };
        if let Some(want) = &policy.audience {
            if !audience.iter().any(|a| a == want) {
                return Err(TokenRejection::WrongAudience { found: audience });
            }
        }
        let subject = match raw.get("sub") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::String(_)) => return Err(TokenRejection::MissingSubject),
            Some(_) => return Err(TokenRejection::InvalidClaim("sub")),
        };
        let mut scopes = Vec::new();
        for name in ["scope", "scp"] {
            for s in scope_list(raw.get(name)) {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        Ok(Self {
            subject,
            issuer,
            audience,
            expires_at,
            not_before,
            issued_at,
            scopes,
            raw,
        })
    }
}

/// A scope claim: a space-separated string or an array of strings; anything
/// else is no scopes (as the reference reads it).
pub(crate) fn scope_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(str::split_whitespace)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn optional_string(
    raw: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, TokenRejection> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenRejection::InvalidClaim(name)),
    }
}

/// A NumericDate: seconds since the epoch, integer or fraction.
fn numeric_date(
    raw: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<UnixTime>, TokenRejection> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(UnixTime::from_secs(i)))
            } else if let Some(f) = n.as_f64() {
                // `as` saturates for out-of-range floats, which is the intent here.
                Ok(Some(UnixTime::from_micros((f * 1e6) as i64)))
            } else {
                Err(TokenRejection::InvalidClaim(name))
            }
        }
        Some(_) => Err(TokenRejection::InvalidClaim(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: i64 = 1_800_000_000;

    fn check(v: Value, policy: &ClaimsPolicy) -> Result<Claims, TokenRejection> {
        Claims::check(obj(v), policy, UnixTime::from_secs(NOW))
    }

    #[test]
    fn time_claims_with_leeway() {
        let p = ClaimsPolicy::default();
        assert!(check(json!({"sub":"a","exp": NOW - 59}), &p).is_ok());
        assert_eq!(
            check(json!({"sub":"a","exp": NOW - 60}), &p),
            Err(TokenRejection::Expired {
                exp: UnixTime::from_secs(NOW - 60)
            })
        );
        assert_eq!(
            check(json!({"sub":"a"}), &p),
            Err(TokenRejection::MissingExpiry)
        );
        let lax = ClaimsPolicy {
            require_exp: false,
            ..p.clone()
        };
        assert!(check(json!({"sub":"a"}), &lax).is_ok());
        assert!(check(json!({"sub":"a","exp": NOW + 10, "nbf": NOW + 60}), &p).is_ok());
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10, "nbf": NOW + 61}), &p),
            Err(TokenRejection::NotYetValid {
                nbf: UnixTime::from_secs(NOW + 61)
            })
        );
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10, "iat": NOW + 61}), &p),
            Err(TokenRejection::IssuedInFuture {
                iat: UnixTime::from_secs(NOW + 61)
            })
        );
        assert_eq!(
            check(json!({"sub":"a","exp": "soon"}), &p),
            Err(TokenRejection::InvalidClaim("exp"))
        );
        let c = check(json!({"sub":"a","exp": (NOW as f64) + 0.5}), &p).unwrap();
        assert_eq!(
            c.expires_at,
            Some(UnixTime::from_micros(NOW * 1_000_000 + 500_000))
        );
    }

    #[test]
    fn issuer_audience_subject_scopes() {
        let p = ClaimsPolicy {
            issuer: Some("https://idp".into()),
            audience: Some("urn:asap:agent:echo".into()),
            ..Default::default()
        };
        let ok = json!({"sub":"a","exp":NOW+1,"iss":"https://idp","aud":["x","urn:asap:agent:echo"],
            "scope":"asap:read asap:execute","scp":["asap:read","asap:admin"]});
        let c = check(ok, &p).unwrap();
        assert_eq!(c.scopes, ["asap:read", "asap:execute", "asap:admin"]);
        assert_eq!(
            check(
                json!({"sub":"a","exp":NOW+1,"iss":"https://evil","aud":"urn:asap:agent:echo"}),
                &p
            ),
            Err(TokenRejection::WrongIssuer {
                found: Some("https://evil".into())
            })
        );
        assert_eq!(
            check(
                json!({"sub":"a","exp":NOW+1,"iss":"https://idp","aud":"other"}),
                &p
            ),
            Err(TokenRejection::WrongAudience {
                found: vec!["other".into()]
            })
        );
        assert_eq!(
            check(
                json!({"sub":"","exp":NOW+1,"iss":"https://idp","aud":"urn:asap:agent:echo"}),
                &p
            ),
            Err(TokenRejection::MissingSubject)
        );
        assert_eq!(
            check(json!({"sub":1,"exp":NOW+1}), &ClaimsPolicy::default()),
            Err(TokenRejection::InvalidClaim("sub"))
        );
        let c = check(
            json!({"sub":"a","exp":NOW+1,"scope":7}),
            &ClaimsPolicy::default(),
        )
        .unwrap();
        assert!(c.scopes.is_empty());
    }

    #[test]
    fn the_leeway_bound_is_inclusive_for_iat_and_claims_are_kept() {
        let p = ClaimsPolicy::default();
        // `iat` exactly `leeway` ahead is still accepted; one second more is not.
        let c = check(
            json!({"sub":"a","exp": NOW + 10, "iat": NOW + 60, "nbf": NOW - 5,
                   "agent": "urn:asap:agent:x"}),
            &p,
        )
        .unwrap();
        assert_eq!(c.issued_at, Some(UnixTime::from_secs(NOW + 60)));
        assert_eq!(c.not_before, Some(UnixTime::from_secs(NOW - 5)));
        assert_eq!(c.get("agent"), Some(&json!("urn:asap:agent:x")));
        assert_eq!(c.get("sub"), Some(&json!("a")));
        assert_eq!(c.get("missing"), None);
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10, "iat": NOW + 61}), &p),
            Err(TokenRejection::IssuedInFuture {
                iat: UnixTime::from_secs(NOW + 61)
            })
        );
        // A policy issuer with no `iss` in the token: found nothing.
        let with_iss = ClaimsPolicy {
            issuer: Some("https://idp".into()),
            ..ClaimsPolicy::default()
        };
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10}), &with_iss),
            Err(TokenRejection::WrongIssuer { found: None })
        );
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10, "iss": 5}), &p),
            Err(TokenRejection::InvalidClaim("iss"))
        );
        assert_eq!(
            check(json!({"sub":"a","exp": NOW + 10, "aud": ["x", 1]}), &p),
            Err(TokenRejection::InvalidClaim("aud"))
        );
        let c = check(
            json!({"sub":"a","exp": NOW + 10, "iss": "https://idp", "aud": "x"}),
            &p,
        )
        .unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://idp"));
        assert_eq!(c.audience, ["x"]);
    }
}
