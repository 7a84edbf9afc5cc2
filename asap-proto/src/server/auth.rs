//! Authentication as a step of the exchange (spec §11): the [`ServerAuth`]
//! policy kept in the [`Server`], and the two steps it may add to an
//! exchange, [`Step::Fetch`] and [`Step::AwaitFetch`].
//!
//! With auth configured ([`Server::set_auth`]), every route that needs a
//! scope ([`required_scope`]: `POST /asap`, `GET /asap/ws`, `/asap/metrics`)
//! is authenticated inside [`Server::handle_request`]. From cached keys it
//! answers at once (the exchange goes on, holding the caller's [`Identity`]);
//! when the key set or an introspection answer is needed, the exchange
//! yields `Step::Fetch(request)`: the adapter performs it and feeds the
//! response to [`Server::handle_fetched`] (core lock), which authenticates
//! again and continues the request. `Step::AwaitFetch`: another request's
//! fetch is in flight; wait a moment (or until a `handle_fetched`), then
//! [`Server::handle_fetch_waited`].
//!
//! Once the envelope is decoded, when the identity proves an agent (a claim
//! or the subject map), the envelope `sender` must be that agent: HTTP
//! answers 403 (`AuthRejection::SenderMismatch`, the status the other
//! authorization refusals use); a WebSocket frame, which has no status,
//! answers a JSON-RPC -32602 error with the request id. Each frame is
//! authenticated again from the upgrade request's headers (cached keys: one
//! signature verification), and a frame refused that way is answered -32600
//! `{"error": ..., "status_code": 401}` with its request id, once read.
//!
//! ```
//! use std::time::Instant;
//! use asap_proto::auth::{AuthRejection, Identity, Scope};
//! use asap_proto::model::{AgentUrn, Manifest, UnixTime};
//! use asap_proto::server::{Now, RequestHead, Server, ServerAuth, ServerConfig, Step, Transport};
//!
//! let manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! let t0 = Instant::now();
//! let now = Now { monotonic: t0, wall: UnixTime::from_secs(1_767_225_600) };
//! let mut server = Server::new(manifest, ServerConfig::default(), t0, 1);
//! // Spec 11.1 bearer mode with the application's own validator.
//! server.set_auth(ServerAuth::custom(|token: &str, _scope: Option<Scope>, _now: UnixTime| {
//!     if token == "let-me-in" {
//!         Ok(Identity::new("client", vec!["asap:execute".into()], Some(AgentUrn::new("urn:asap:agent:client").unwrap())))
//!     } else {
//!         Err(AuthRejection::MissingToken)
//!     }
//! }));
//! let head = |h| RequestHead { method: &http::Method::POST, path: "/asap", headers: h, peer: None, transport: Transport::Http };
//! let empty = http::HeaderMap::new();
//! let mut ex = server.handle_request(&head(&empty), now);
//! let Step::Respond(reply) = ex.poll_step() else { panic!() };
//! assert_eq!(reply.response.status(), 401);
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert(http::header::AUTHORIZATION, "Bearer let-me-in".parse().unwrap());
//! let mut ex = server.handle_request(&head(&headers), now);
//! loop {
//!     match ex.poll_step() {
//!         // JWKS-backed auth may ask for keys first:
//!         Step::Fetch(request) => {
//!             let _ = request; // perform it, then:
//!             server.handle_fetched(&mut ex, Err("not here".into()), now);
//!         }
//!         Step::AwaitFetch => server.handle_fetch_waited(&mut ex, now),
//!         Step::ReadBody { .. } => break, // authenticated: the request goes on
//!         _ => unreachable!(),
//!     }
//! }
//! assert_eq!(ex.identity().unwrap().subject, "client");
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderMap, Method, StatusCode};

use super::exchange::{Exchange, Now, RequestHead, Transport};
use super::Server;
use crate::auth::{
    required_scope, AuthRejection, AuthStep, Authenticator, Fetch, FetchId, Identity,
    JwksFetchError, KeySetLookup, Scope,
};
use crate::model::UnixTime;

/// The signature of a user-supplied bearer validator: the token, the scope
/// the route needs, the wall clock.
pub type BearerCheckFn =
    dyn Fn(&str, Option<Scope>, UnixTime) -> Result<Identity, AuthRejection> + Send + Sync;

/// A user-supplied bearer validator (spec 11.1: the manifest declares
/// `auth.schemes: ["bearer"]` and the application decides which tokens pass).
#[derive(Clone)]
pub struct BearerCheck(Arc<BearerCheckFn>);

impl fmt::Debug for BearerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerCheck(..)")
    }
}

#[derive(Debug)]
enum Source {
    Tokens(Box<Authenticator>),
    Custom(BearerCheck),
}

/// The server's authentication policy: who checks tokens, whether the
/// envelope sender is bound to the token's agent, the scope sending needs.
#[derive(Debug)]
pub struct ServerAuth {
    source: Source,
    bind_sender: bool,
    execute_scope: Option<Scope>,
}

/// Rounds of fetch-then-retry one request may take before it is answered
/// 503: the caches rate-limit their fetches, so two suffice; this is a backstop.
const MAX_AUTH_ROUNDS: u8 = 4;

impl ServerAuth {
    /// Tokens checked by an [`Authenticator`] (JWKS, static keys, HS256,
    /// introspection). Sender binding on.
    #[must_use]
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            source: Source::Tokens(Box::new(authenticator)),
            bind_sender: true,
            execute_scope: Some(Scope::Execute),
        }
    }

    /// Tokens checked by the application's own validator. Sender binding on
    /// (it applies when the returned [`Identity`] names an agent).
    #[must_use]
    pub fn custom<F>(check: F) -> Self
    where
        F: Fn(&str, Option<Scope>, UnixTime) -> Result<Identity, AuthRejection>
            + Send
            + Sync
            + 'static,
    {
        Self {
            source: Source::Custom(BearerCheck(Arc::new(check))),
            bind_sender: true,
            execute_scope: Some(Scope::Execute),
        }
    }

    /// Whether an envelope `sender` must equal the token's agent (default on).
    #[must_use]
    pub fn bind_sender(mut self, on: bool) -> Self {
        self.bind_sender = on;
        self
    }

    /// The scope `POST /asap` and `/asap/ws` need (default `asap:execute`;
    /// `None`: any valid token). Other protected routes keep theirs.
    #[must_use]
    pub fn execute_scope(mut self, scope: Option<Scope>) -> Self {
        self.execute_scope = scope;
        self
    }

    /// The authenticator, when tokens are checked by one.
    pub fn authenticator_mut(&mut self) -> Option<&mut Authenticator> {
        match &mut self.source {
            Source::Tokens(a) => Some(a),
            Source::Custom(_) => None,
        }
    }

    /// Startup: the key-set fetch to perform now, so a misconfigured IdP is
    /// a startup error (`None`: no JWKS, or keys already cached). Report it
    /// with [`handle_startup_keys`](Self::handle_startup_keys).
    pub fn startup_fetch(&mut self, now: Instant) -> Option<Fetch> {
        let cache = self.authenticator_mut()?.jwks_mut()?;
        match cache.lookup(now) {
            KeySetLookup::Fetch(f) => Some(f),
            _ => None,
        }
    }

    /// Startup: the response to [`startup_fetch`](Self::startup_fetch);
    /// an error names what is wrong with the key set.
    pub fn handle_startup_keys(
        &mut self,
        id: FetchId,
        response: Result<&http::Response<Vec<u8>>, String>,
        now: Instant,
    ) -> Result<(), JwksFetchError> {
        let Some(auth) = self.authenticator_mut() else {
            return Ok(());
        };
        match response {
            Ok(r) => auth.handle_jwks_response(id, r, now),
            Err(e) => {
                auth.handle_jwks_failure(id, now);
                Err(JwksFetchError::Unreachable(e))
            }
        }
    }

    fn scope_for(&self, method: &Method, path: &str) -> Option<Option<Scope>> {
        let scope = required_scope(method, path)?;
        Some(if scope == Scope::Execute {
            self.execute_scope
        } else {
            Some(scope)
        })
    }
}

/// What kind of fetch an exchange is out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FetchKind {
    Keys,
    Introspection,
}

/// A request paused on authentication: its head, to resume it.
#[derive(Debug)]
pub(super) struct Resume {
    method: Method,
    path: String,
    headers: HeaderMap,
    peer: Option<core::net::IpAddr>,
    transport: Transport,
    started: Instant,
    rounds: u8,
    fetch: Option<(FetchId, FetchKind)>,
}

impl Resume {
    fn of(head: &RequestHead<'_>, started: Instant, rounds: u8) -> Self {
        Self {
            method: head.method.clone(),
            path: head.path.to_owned(),
            headers: head.headers.clone(),
            peer: head.peer,
            transport: head.transport,
            started,
            rounds,
            fetch: None,
        }
    }
}

/// What [`Server::authenticate`] decided for a request.
pub(super) enum Gate {
    /// Public route, or no auth configured.
    Open,
    /// Authenticated: keep this identity on the exchange.
    Pass(Identity, bool),
    /// Answer this now.
    Refuse(AuthRejection),
    /// Perform this fetch.
    Fetch(Box<Resume>, http::Request<Vec<u8>>),
    /// Another request's fetch is out.
    Wait(Box<Resume>),
}

impl Server {
    /// Configures authentication for every protected route (spec §11).
    pub fn set_auth(&mut self, auth: ServerAuth) {
        self.auth = Some(auth);
    }

    /// The authentication policy, when configured.
    pub fn auth_mut(&mut self) -> Option<&mut ServerAuth> {
        self.auth.as_mut()
    }

    /// Whether protected routes need a token.
    #[must_use]
    pub fn auth_enabled(&self) -> bool {
        self.auth.is_some()
    }

    pub(super) fn authenticate(
        &mut self,
        head: &RequestHead<'_>,
        started: Instant,
        rounds: u8,
        now: Now,
    ) -> Gate {
        let Some(auth) = self.auth.as_mut() else {
            return Gate::Open;
        };
        let Some(scope) = auth.scope_for(head.method, head.path) else {
            return Gate::Open;
        };
        let bind = auth.bind_sender;
        let header = head
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let step = match &mut auth.source {
            Source::Custom(check) => {
                let token = header.and_then(crate::auth::bearer_token);
                return match token {
                    None => Gate::Refuse(AuthRejection::MissingToken),
                    Some(t) => match (check.0)(t, scope, now.wall) {
                        Ok(identity) => Gate::Pass(identity, bind),
                        Err(r) => Gate::Refuse(r),
                    },
                };
            }
            Source::Tokens(a) => a.authenticate(header, scope, now),
        };
        let pause = |kind, fetch: Fetch| {
            let mut resume = Resume::of(head, started, rounds);
            resume.fetch = Some((fetch.id, kind));
            Gate::Fetch(Box::new(resume), fetch.request)
        };
        if rounds >= MAX_AUTH_ROUNDS
            && !matches!(step, AuthStep::Authenticated(_) | AuthStep::Rejected(_))
        {
            return Gate::Refuse(AuthRejection::KeysUnavailable);
        }
        match step {
            AuthStep::Authenticated(identity) => Gate::Pass(identity, bind),
            AuthStep::Rejected(r) => Gate::Refuse(r),
            AuthStep::NeedKeys(f) => pause(FetchKind::Keys, f),
            AuthStep::NeedIntrospection(f) => pause(FetchKind::Introspection, f),
            AuthStep::Wait(_) => Gate::Wait(Box::new(Resume::of(head, started, rounds))),
        }
    }

    /// Input for [`Step::Fetch`](super::Step::Fetch): the response (or the
    /// transport error). Reports it to the key or introspection cache and
    /// carries the request on (it may yield another step, or its answer).
    pub fn handle_fetched(
        &mut self,
        ex: &mut Exchange,
        result: Result<http::Response<Vec<u8>>, String>,
        now: Now,
    ) {
        let Some(resume) = ex.take_resume() else {
            return;
        };
        if let (Some((id, kind)), Some(auth)) = (
            resume.fetch,
            self.auth.as_mut().and_then(ServerAuth::authenticator_mut),
        ) {
            // A bad answer is recorded by the cache (back-off, stale keys
            // kept); the retry below turns it into 401/503 as it applies.
            match (kind, result) {
                (FetchKind::Keys, Ok(r)) => drop(auth.handle_jwks_response(id, &r, now.monotonic)),
                (FetchKind::Keys, Err(_)) => auth.handle_jwks_failure(id, now.monotonic),
                (FetchKind::Introspection, Ok(r)) => {
                    drop(auth.handle_introspection_response(id, &r, now));
                }
                (FetchKind::Introspection, Err(_)) => {
                    auth.handle_introspection_failure(id, now.monotonic);
                }
            }
        }
        self.resume(ex, *resume, now);
    }

    /// Input for [`Step::AwaitFetch`](super::Step::AwaitFetch): the wait is
    /// over (another request's fetch was reported, or a moment passed).
    pub fn handle_fetch_waited(&mut self, ex: &mut Exchange, now: Now) {
        if let Some(resume) = ex.take_resume() {
            self.resume(ex, *resume, now);
        }
    }

    fn resume(&mut self, ex: &mut Exchange, resume: Resume, now: Now) {
        let head = RequestHead {
            method: &resume.method,
            path: &resume.path,
            headers: &resume.headers,
            peer: resume.peer,
            transport: resume.transport,
        };
        *ex = self.open(&head, now, resume.started, resume.rounds.saturating_add(1));
    }
}

impl Exchange {
    /// The authenticated caller, once authentication passed (`None`: public
    /// route or no auth configured).
    #[must_use]
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }
}

/// The refusal of a token, as the transport answers it.
pub(super) fn refusal(r: &AuthRejection) -> http::Response<Vec<u8>> {
    r.to_response()
}

/// `GET /asap/ws` allowed: the adapter upgrades on this 101 (the caller's
/// identity, when authenticated, rides in the response extensions).
pub(super) fn upgrade_response(identity: Option<&Identity>) -> http::Response<Vec<u8>> {
    let mut r = http::Response::new(Vec::new());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if let Some(i) = identity {
        r.extensions_mut().insert(i.clone());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthenticatorConfig, JwksCacheConfig, KeySource};

    fn jwks_auth() -> ServerAuth {
        ServerAuth::new(
            Authenticator::new(AuthenticatorConfig {
                keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/jwks")),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    fn server(t0: Instant) -> Server {
        let manifest = crate::model::Manifest::new(
            crate::model::AgentUrn::new("urn:asap:agent:a").unwrap(),
            "a",
            "1.0.0",
            "a",
            "http://127.0.0.1/asap",
        );
        Server::new(manifest, super::super::ServerConfig::default(), t0, 1)
    }

    fn custom_auth() -> ServerAuth {
        ServerAuth::custom(|_, _, _| Err(AuthRejection::MissingToken))
    }

    #[test]
    fn the_startup_fetch_primes_the_key_set_and_reports_what_is_wrong() {
        let t0 = crate::test_clock::base();
        let mut auth = jwks_auth();
        assert!(auth.authenticator_mut().is_some());
        let f = auth.startup_fetch(t0).expect("no keys yet: fetch them");
        assert_eq!(f.request.uri(), "https://idp.example.com/jwks");
        let down = http::Response::builder()
            .status(500)
            .body(Vec::new())
            .unwrap();
        assert_eq!(
            auth.handle_startup_keys(f.id, Ok(&down), t0),
            Err(JwksFetchError::Status(500))
        );
        // After the failure's back-off: unreachable is named as such.
        let t1 = t0 + std::time::Duration::from_secs(60);
        let f = auth
            .startup_fetch(t1)
            .expect("a new fetch after the back-off");
        assert_eq!(
            auth.handle_startup_keys(f.id, Err("connection refused".into()), t1),
            Err(JwksFetchError::Unreachable("connection refused".into()))
        );
        let t2 = t1 + std::time::Duration::from_secs(60);
        let f = auth.startup_fetch(t2).unwrap();
        let good = http::Response::new(br#"{"keys":[]}"#.to_vec());
        assert_eq!(auth.handle_startup_keys(f.id, Ok(&good), t2), Ok(()));
        // Keys cached: nothing to fetch at startup.
        assert!(auth.startup_fetch(t2).is_none());
        // A custom validator has no authenticator and nothing to prime.
        let mut custom = custom_auth();
        assert!(custom.authenticator_mut().is_none());
        assert!(custom.startup_fetch(t0).is_none());
        assert_eq!(
            custom.handle_startup_keys(f.id, Err("x".into()), t0),
            Ok(())
        );
    }

    #[test]
    fn sending_needs_the_execute_scope_unless_configured_and_other_routes_keep_theirs() {
        let auth = jwks_auth();
        assert_eq!(
            auth.scope_for(&Method::POST, "/asap"),
            Some(Some(Scope::Execute))
        );
        assert_eq!(
            auth.scope_for(&Method::GET, "/asap/ws"),
            Some(Some(Scope::Execute))
        );
        assert_eq!(
            auth.scope_for(&Method::GET, "/asap/metrics"),
            Some(Some(Scope::Read))
        );
        assert_eq!(auth.scope_for(&Method::GET, "/health"), None);
        let any = jwks_auth().execute_scope(None);
        assert_eq!(any.scope_for(&Method::POST, "/asap"), Some(None));
        assert_eq!(
            any.scope_for(&Method::GET, "/asap/metrics"),
            Some(Some(Scope::Read))
        );
    }

    #[test]
    fn after_the_last_fetch_round_a_definite_answer_still_stands() {
        let t0 = crate::test_clock::base();
        let mut server = server(t0);
        server.set_auth(jwks_auth());
        let now = Now {
            monotonic: t0,
            wall: UnixTime::from_secs(1_800_000_000),
        };
        let none = http::HeaderMap::new();
        let mut token = http::HeaderMap::new();
        token.insert(
            header::AUTHORIZATION,
            "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.e30.c2ln"
                .parse()
                .unwrap(),
        );
        let head = |headers| RequestHead {
            method: &Method::POST,
            path: "/asap",
            headers,
            peer: None,
            transport: Transport::Http,
        };
        // No token: refused as such, whatever the round.
        for rounds in [0, MAX_AUTH_ROUNDS] {
            let gate = server.authenticate(&head(&none), t0, rounds, now);
            assert!(
                matches!(gate, Gate::Refuse(AuthRejection::MissingToken)),
                "round {rounds}"
            );
        }
        // A token whose keys are not here: fetched, until the rounds run out.
        let gate = server.authenticate(&head(&token), t0, MAX_AUTH_ROUNDS - 1, now);
        assert!(matches!(gate, Gate::Fetch(..)));
        let gate = server.authenticate(&head(&token), t0, MAX_AUTH_ROUNDS, now);
        assert!(matches!(gate, Gate::Refuse(AuthRejection::KeysUnavailable)));
    }

    #[test]
    fn a_server_with_auth_set_reports_it() {
        let mut server = server(crate::test_clock::base());
        assert!(!server.auth_enabled());
        assert!(server.auth_mut().is_none());
        server.set_auth(jwks_auth());
        assert!(server.auth_enabled());
        assert!(server
            .auth_mut()
            .and_then(ServerAuth::authenticator_mut)
            .is_some());
    }
}
