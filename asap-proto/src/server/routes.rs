//! Which handler an accepted envelope goes to: route names in the core, the
//! adapter's code in a [`HandlerTable`].

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::config::ServerConfig;
use crate::model::{Manifest, PayloadKind};

/// Which handler an accepted envelope goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A `task.request` for a registered skill.
    Skill(String),
    /// A registered payload kind.
    Kind(PayloadKind),
    /// A registered custom payload type (exact spelling).
    Custom(String),
}

/// Registered skills and payload handlers (names only; the adapter holds the
/// code), and whether task state is attached (then the core answers
/// `state.query`/`state.restore` itself and persists every skill run).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub(super) skills: HashSet<String>,
    pub(super) kinds: HashSet<PayloadKind>,
    pub(super) custom: HashSet<String>,
    pub(super) task_state: bool,
}

impl Routes {
    /// Registers a skill for `task.request`.
    pub fn add_skill(&mut self, skill_id: &str) {
        self.skills.insert(skill_id.to_owned());
    }
    /// Registers a handler for a payload kind (every spelling of it).
    pub fn add_kind(&mut self, kind: PayloadKind) {
        self.kinds.insert(kind);
    }
    /// Registers a handler for a payload type outside the protocol vocabulary.
    pub fn add_custom(&mut self, payload_type: &str) {
        self.custom.insert(payload_type.to_owned());
    }
    /// Attaches task state: skill runs yield [`Step::Persist`](super::Step::Persist)
    /// before they are answered, and `state.query`/`state.restore` yield
    /// [`Step::QueryState`](super::Step::QueryState).
    pub fn attach_task_state(&mut self) {
        self.task_state = true;
    }
    /// Whether skill `id` is registered.
    #[must_use]
    pub fn has_skill(&self, id: &str) -> bool {
        self.skills.contains(id)
    }
    /// Whether task state is attached.
    #[must_use]
    pub fn has_task_state(&self) -> bool {
        self.task_state
    }
}

/// The adapter's handler code, looked up by [`Route`]. Generic over the
/// closure types so the tokio (async) and blocking (plain closure) adapters
/// share one registry; [`HandlerTable::routes`] tells the [`Server`](super::Server) what exists.
pub struct HandlerTable<S, P> {
    skills: HashMap<String, S>,
    kinds: HashMap<PayloadKind, P>,
    custom: HashMap<String, P>,
}

impl<S, P> Default for HandlerTable<S, P> {
    fn default() -> Self {
        Self {
            skills: HashMap::new(),
            kinds: HashMap::new(),
            custom: HashMap::new(),
        }
    }
}

impl<S, P> std::fmt::Debug for HandlerTable<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerTable")
            .field("skills", &self.skills.keys().collect::<Vec<_>>())
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A handler found for a route.
#[derive(Debug)]
pub enum HandlerRef<'a, S, P> {
    /// A skill handler (gets the `TaskRequest`).
    Skill(&'a S),
    /// A payload handler (gets the envelope and payload).
    Payload(&'a P),
}

impl<S, P> HandlerTable<S, P> {
    /// Registers a skill handler.
    pub fn add_skill(&mut self, skill_id: &str, handler: S) {
        self.skills.insert(skill_id.to_owned(), handler);
    }
    /// Registers a handler for a payload kind.
    pub fn add_kind(&mut self, kind: PayloadKind, handler: P) {
        self.kinds.insert(kind, handler);
    }
    /// Registers a handler for a custom payload type.
    pub fn add_custom(&mut self, payload_type: &str, handler: P) {
        self.custom.insert(payload_type.to_owned(), handler);
    }
    /// The route names, for [`Server::set_routes`](super::Server::set_routes).
    #[must_use]
    pub fn routes(&self) -> Routes {
        let mut r = Routes::default();
        self.skills.keys().for_each(|k| r.add_skill(k));
        self.kinds.keys().for_each(|k| r.add_kind(*k));
        self.custom.keys().for_each(|k| r.add_custom(k));
        r
    }
    /// The handler for `route`.
    #[must_use]
    pub fn get(&self, route: &Route) -> Option<HandlerRef<'_, S, P>> {
        match route {
            Route::Skill(id) => self.skills.get(id).map(HandlerRef::Skill),
            Route::Kind(k) => self.kinds.get(k).map(HandlerRef::Payload),
            Route::Custom(t) => self.custom.get(t).map(HandlerRef::Payload),
        }
    }
}

/// An agent's pieces before it serves: manifest, policy, and the adapter's
/// code — skill handlers `S`, payload handlers `P`, a health source `H`,
/// task-state stores `T`. Each adapter's `AgentBuilder` fills one in with its
/// own closure types; [`AgentParts::into_server`] makes the core from it.
pub struct AgentParts<S, P, H, T> {
    /// The served manifest.
    pub manifest: Manifest,
    /// Server policy.
    pub config: ServerConfig,
    /// Handler code by route.
    pub handlers: HandlerTable<S, P>,
    /// Where health verdicts come from (`None`: always healthy).
    pub health: Option<H>,
    /// Task state (`None`: skill runs are not recorded, `state.*` has no handler).
    pub stores: Option<T>,
    /// Nonces accepted before a restart (live records loaded from the stores'
    /// replay state), remembered by the server before it serves.
    pub restored_nonces: Vec<crate::store::NonceRecord>,
    /// Answers kept for receiver dedup before a restart, with the wall clock
    /// they were loaded at.
    pub restored_dedup: (Vec<crate::store::DedupRecord>, crate::model::UnixTime),
}

impl<S, P, H, T> AgentParts<S, P, H, T> {
    /// Parts for `manifest` with the default policy and nothing registered.
    #[must_use]
    pub fn new(manifest: Manifest) -> Self {
        Self {
            manifest,
            config: ServerConfig::default(),
            handlers: HandlerTable::default(),
            health: None,
            stores: None,
            restored_nonces: Vec::new(),
            restored_dedup: (Vec::new(), crate::model::UnixTime::EPOCH),
        }
    }

    /// Declares `skill` in the served manifest: it replaces the manifest's entry
    /// with the same id, or is appended. What adapters' `skill_with` calls, so
    /// one call declares a skill and registers its handler.
    pub fn declare_skill(&mut self, skill: crate::model::Skill) {
        let skills = &mut self.manifest.capabilities.skills;
        match skills.iter_mut().find(|s| s.id == skill.id) {
            Some(entry) => *entry = skill,
            None => skills.push(skill),
        }
    }

    /// The core [`Server`](super::Server) (routes registered, task state attached
    /// when stores are, [`restored_nonces`](Self::restored_nonces) remembered)
    /// and the code it routes to.
    ///
    /// A skill with a handler but no manifest entry is added to the served
    /// manifest (description: its id), so registering a handler is enough for
    /// `discover` to list it; describe it in the manifest to say more.
    #[must_use]
    pub fn into_server(
        mut self,
        started: Instant,
        id_seed: u64,
    ) -> (super::Server, AgentCode<S, P, H, T>) {
        let skills = &mut self.manifest.capabilities.skills;
        let mut missing: Vec<&String> = self
            .handlers
            .skills
            .keys()
            .filter(|id| !skills.iter().any(|s| &s.id == *id))
            .collect();
        missing.sort();
        for id in missing {
            skills.push(crate::model::Skill::new(id, id));
        }
        let mut routes = self.handlers.routes();
        if self.stores.is_some() {
            routes.attach_task_state();
        }
        let mut server = super::Server::new(self.manifest, self.config, started, id_seed);
        server.set_routes(routes);
        if server.config().nonce != super::NonceMode::Off {
            server.restore_nonces(&self.restored_nonces);
        }
        let (dedup, loaded_at) = &self.restored_dedup;
        server.restore_dedup(dedup, *loaded_at);
        let code = AgentCode {
            handlers: self.handlers,
            health: self.health,
            stores: self.stores,
        };
        (server, code)
    }
}

impl<S, P, H, T> std::fmt::Debug for AgentParts<S, P, H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentParts")
            .field("manifest", &self.manifest.id)
            .field("handlers", &self.handlers)
            .field("stores", &self.stores.is_some())
            .finish_non_exhaustive()
    }
}

/// What a serving agent runs besides the core: the adapter's handler code,
/// health source and stores (from [`AgentParts::into_server`]).
pub struct AgentCode<S, P, H, T> {
    /// Handler code by route.
    pub handlers: HandlerTable<S, P>,
    /// Health source.
    pub health: Option<H>,
    /// Task-state stores.
    pub stores: Option<T>,
}

impl<S, P, H, T> std::fmt::Debug for AgentCode<S, P, H, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCode")
            .field("handlers", &self.handlers)
            .field("health", &self.health.is_some())
            .field("stores", &self.stores.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentUrn, Skill};

    #[test]
    fn a_skill_with_a_handler_is_in_the_served_manifest() {
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        m.capabilities
            .skills
            .push(Skill::new("echo", "Echo back the input"));
        let mut parts: AgentParts<(), (), (), ()> = AgentParts::new(m);
        parts.handlers.add_skill("echo", ());
        parts.handlers.add_skill("upper", ());
        let (server, _) = parts.into_server(crate::test_clock::base(), 1);
        let skills: Vec<(&str, &str)> = server
            .manifest()
            .capabilities
            .skills
            .iter()
            .map(|s| (s.id.as_str(), s.description.as_str()))
            .collect();
        assert_eq!(
            skills,
            [("echo", "Echo back the input"), ("upper", "upper")]
        );
    }

    #[test]
    fn a_declared_skill_replaces_the_manifest_entry_or_is_added() {
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        m.capabilities.skills.push(Skill::new("echo", "old words"));
        m.capabilities.skills.push(Skill::new("sum", "Add numbers"));
        let mut parts: AgentParts<(), (), (), ()> = AgentParts::new(m);
        parts.declare_skill(Skill::new("echo", "Echo back the input"));
        parts.declare_skill(Skill::new("upper", "Upper-case the text"));
        let skills: Vec<(&str, &str)> = parts
            .manifest
            .capabilities
            .skills
            .iter()
            .map(|s| (s.id.as_str(), s.description.as_str()))
            .collect();
        assert_eq!(
            skills,
            [
                ("echo", "Echo back the input"),
                ("sum", "Add numbers"),
                ("upper", "Upper-case the text")
            ]
        );
    }
}
