//! The shared token cache: credentials that resolve to one identity share one token, and
//! concurrent refreshes of that identity wait for a single Entra ID request.

use super::{AcquiredToken, RefreshFailure};
use crate::api::TokenManagerConfig;
use crate::token_manager::{refresh_at, stagger_window};
use jiff::Timestamp;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Slot = Arc<tokio::sync::Mutex<Option<AcquiredToken>>>;

/// Tokens by identity key. Keys never contain secrets, only their hashes.
#[derive(Default)]
pub struct SharedTokenCache {
    entries: Mutex<HashMap<String, Slot>>,
    saved: AtomicU64,
}

/// Where a token handed out by the cache came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A new Entra ID request.
    Fetched,
    /// A token another credential of the same identity already obtained.
    Shared,
}

impl SharedTokenCache {
    /// Returns the cached token for `key` while it is before its refresh time under `cfg`,
    /// else runs `fetch` (once, however many callers wait) and caches its result.
    ///
    /// # Errors
    /// The failure of `fetch`; nothing is cached then.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &str,
        cfg: &TokenManagerConfig,
        force: bool,
        fetch: F,
    ) -> Result<(AcquiredToken, Origin), RefreshFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AcquiredToken, RefreshFailure>>,
    {
        let slot = self.slot(key);
        let mut guard = slot.lock().await;
        if let Some(token) = guard.as_ref().filter(|t| !force && still_fresh(t, cfg)) {
            self.saved.fetch_add(1, Ordering::Relaxed);
            return Ok((token.clone(), Origin::Shared));
        }
        let token = fetch().await?;
        *guard = Some(token.clone());
        Ok((token, Origin::Fetched))
    }

    /// How many requests sharing has saved so far.
    pub fn saved_requests(&self) -> u64 {
        self.saved.load(Ordering::Relaxed)
    }

    /// Number of identities cached.
    pub fn len(&self) -> usize {
        self.lock_entries().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: &str) -> Slot {
        let mut entries = self.lock_entries();
        if let Some(slot) = entries.get(key) {
            return slot.clone();
        }
        if entries.len() % 256 == 255 {
            evict_expired(&mut entries);
        }
        let slot = Slot::default();
        entries.insert(key.to_string(), slot.clone());
        slot
    }

    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding this lock cannot leave the map inconsistent: every
        // critical section is a single get or insert.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Fresh until the window in which the credentials sharing it are staggered: whoever
/// comes first in that window fetches the next token, and the others share it.
fn still_fresh(token: &AcquiredToken, cfg: &TokenManagerConfig) -> bool {
    let c = &token.claims;
    let due = refresh_at(c.issued_at, c.expires_at, cfg);
    let window = stagger_window(c.issued_at, due);
    let window = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::ZERO);
    match due.checked_sub(window) {
        Ok(first) => Timestamp::now() < first,
        Err(_) => Timestamp::now() < due,
    }
}

/// Drops entries nobody is using whose token has expired or was never obtained.
fn evict_expired(entries: &mut HashMap<String, Slot>) {
    let now = Timestamp::now();
    entries.retain(|_, slot| {
        if Arc::strong_count(slot) > 1 {
            return true;
        }
        match slot.try_lock() {
            Ok(guard) => guard.as_ref().is_some_and(|t| t.claims.expires_at > now),
            Err(_) => true,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::claims::TokenClaims;
    use std::sync::atomic::AtomicU32;

    fn token(lifetime_s: i64) -> AcquiredToken {
        let now = Timestamp::now();
        AcquiredToken {
            token: "t".to_string().into(),
            claims: TokenClaims {
                oid: "oid".into(),
                tid: None,
                aud: vec![],
                issued_at: now,
                expires_at: Timestamp::from_second(now.as_second() + lifetime_s).unwrap(),
                app_id: None,
                name: None,
            },
        }
    }

    fn cfg() -> TokenManagerConfig {
        TokenManagerConfig::default()
    }

    #[tokio::test]
    async fn a_second_credential_of_the_same_identity_shares_the_token() {
        let cache = SharedTokenCache::default();
        let calls = AtomicU32::new(0);
        for _ in 0..3 {
            cache
                .get_or_fetch("k", &cfg(), false, || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(token(3600))
                })
                .await
                .unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.saved_requests(), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_wait_for_one_request() {
        let cache = Arc::new(SharedTokenCache::default());
        let calls = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch("k", &cfg(), false, || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            Ok(token(3600))
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn different_keys_do_not_share() {
        let cache = SharedTokenCache::default();
        let (_, a) = cache
            .get_or_fetch("a", &cfg(), false, || async { Ok(token(3600)) })
            .await
            .unwrap();
        let (_, b) = cache
            .get_or_fetch("b", &cfg(), false, || async { Ok(token(3600)) })
            .await
            .unwrap();
        assert_eq!((a, b), (Origin::Fetched, Origin::Fetched));
    }

    #[tokio::test]
    async fn a_token_past_its_refresh_time_is_fetched_again() {
        let cache = SharedTokenCache::default();
        let soon = TokenManagerConfig {
            expiration_refresh_ratio: 0.0001,
            ..cfg()
        };
        cache
            .get_or_fetch("k", &soon, false, || async { Ok(token(10)) })
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (_, o) = cache
            .get_or_fetch("k", &soon, false, || async { Ok(token(10)) })
            .await
            .unwrap();
        assert_eq!(o, Origin::Fetched);
    }

    #[tokio::test]
    async fn a_forced_refresh_bypasses_the_cache() {
        let cache = SharedTokenCache::default();
        cache
            .get_or_fetch("k", &cfg(), false, || async { Ok(token(3600)) })
            .await
            .unwrap();
        let (_, o) = cache
            .get_or_fetch("k", &cfg(), true, || async { Ok(token(3600)) })
            .await
            .unwrap();
        assert_eq!(o, Origin::Fetched);
    }

    #[tokio::test]
    async fn a_failure_is_not_cached() {
        let cache = SharedTokenCache::default();
        let fail = RefreshFailure {
            kind: crate::identity::FailureKind::RetriesExhausted,
            message: "down".into(),
            retry_after: None,
            attempts: 3,
        };
        assert!(
            cache
                .get_or_fetch("k", &cfg(), false, || async { Err(fail) })
                .await
                .is_err()
        );
        let (_, o) = cache
            .get_or_fetch("k", &cfg(), false, || async { Ok(token(3600)) })
            .await
            .unwrap();
        assert_eq!(o, Origin::Fetched);
    }
}
