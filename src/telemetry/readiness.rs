//! Whether this replica is ready, as `/readyz` reports it.

use std::sync::{Arc, Mutex, PoisonError};

/// What this replica does in leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Leader election is off: this replica runs the controller alone.
    Single,
    /// This replica holds the lease and runs the controller.
    Leader,
    /// Another replica holds the lease; this one watches it and is ready to take over.
    Standby,
    /// Leader election has not settled yet, or the Lease API is failing.
    Candidate,
}

/// Shared readiness of the process: cheap to clone, every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    synced: bool,
    role: Role,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    /// Not ready: caches not synced, and leader election not settled.
    pub fn new() -> Readiness {
        let state = State {
            synced: false,
            role: Role::Candidate,
        };
        Readiness {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Records whether the controller's caches have synced.
    pub fn set_synced(&self, synced: bool) {
        self.lock().synced = synced;
    }

    /// Records this replica's role in leader election.
    pub fn set_role(&self, role: Role) {
        self.lock().role = role;
    }

    /// This replica's current role.
    pub fn role(&self) -> Role {
        self.lock().role
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    /// `Ok` when ready, or why not.
    ///
    /// A standby runs no controller, so it has no caches to sync: it is ready while it
    /// watches the lease successfully.
    ///
    /// # Errors
    /// A short sentence saying what is missing.
    pub fn check(&self) -> Result<(), &'static str> {
        let state = *self.lock();
        match (state.role, state.synced) {
            (Role::Candidate, _) => Err("leader election has not settled"),
            (Role::Standby, _) => Ok(()),
            (Role::Single | Role::Leader, false) => Err("caches have not synced"),
            (Role::Single | Role::Leader, true) => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness(role: Role, synced: bool) -> Readiness {
        let readiness = Readiness::new();
        readiness.set_role(role);
        readiness.set_synced(synced);
        readiness
    }

    #[test]
    fn a_new_readiness_is_not_ready() {
        assert_eq!(
            Readiness::new().check(),
            Err("leader election has not settled")
        );
    }

    #[test]
    fn a_single_replica_is_ready_once_caches_sync() {
        assert_eq!(
            readiness(Role::Single, false).check(),
            Err("caches have not synced")
        );
        assert!(readiness(Role::Single, true).is_ready());
    }

    #[test]
    fn a_leader_is_ready_once_caches_sync() {
        assert!(!readiness(Role::Leader, false).is_ready());
        assert!(readiness(Role::Leader, true).is_ready());
    }

    #[test]
    fn a_healthy_standby_is_ready_without_caches() {
        assert!(readiness(Role::Standby, false).is_ready());
    }

    #[test]
    fn a_candidate_is_not_ready_even_with_synced_caches() {
        assert!(!readiness(Role::Candidate, true).is_ready());
    }

    #[test]
    fn clones_share_state() {
        let readiness = Readiness::new();
        readiness.clone().set_role(Role::Standby);
        assert_eq!(readiness.role(), Role::Standby);
    }
}
