//! What a reconcile should do, decided from what it gathered (pure code).

use super::secret::{ExistingSecret, spec_hash};
use crate::api::{AmrCredentialSpec, ResolvedSpec, SpecError};
use crate::token_manager::{spread, stable_hash};
use jiff::Timestamp;
use std::time::Duration;

/// What a reconcile gathered, and the clock.
pub struct Observed<'a> {
    /// The current time.
    pub now: Timestamp,
    /// When the controller started; refreshes overdue at that moment are spread.
    pub started_at: Timestamp,
    /// Width of that spread.
    pub spread_window: Duration,
    /// Namespace of the credential.
    pub namespace: &'a str,
    /// Name of the credential.
    pub name: &'a str,
    /// Its spec.
    pub spec: &'a AmrCredentialSpec,
    /// The spec checked and with defaults applied.
    pub resolved: Result<&'a ResolvedSpec, &'a SpecError>,
    /// The Secret, when it exists.
    pub existing: Option<&'a ExistingSecret>,
    /// The credential's refresh-request annotation.
    pub refresh_requested: Option<&'a str>,
    /// Namespaces whose credentials may use the operator's own identity.
    pub ambient_namespaces: &'a [String],
}

/// The decision of one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Report the spec's problem; wait for a change.
    InvalidSpec(String),
    /// Report that the flow may not be used here; wait for a change.
    NotAllowed(String),
    /// Report that the Secret belongs to something else; never overwrite it.
    Conflict(String),
    /// The Secret is current: no token request, no write; look again at `requeue_at`.
    Fresh {
        /// When to look again.
        requeue_at: Timestamp,
    },
    /// Request a token and write it.
    Refresh(Why),
}

/// Why a refresh is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// There is no Secret yet.
    NoSecret,
    /// The Secret lacks what a current one carries, or its data was edited.
    Unreadable,
    /// The spec changed since the token was written.
    SpecChanged,
    /// Someone asked for a refresh through the annotation.
    Requested,
    /// The refresh time has come.
    Due,
}

impl Why {
    /// A short word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NoSecret => "no secret",
            Why::Unreadable => "secret unreadable",
            Why::SpecChanged => "spec changed",
            Why::Requested => "refresh requested",
            Why::Due => "due",
        }
    }
}

/// Decides what to do with one credential.
pub fn decide(o: &Observed<'_>) -> Decision {
    let resolved = match o.resolved {
        Ok(r) => r,
        Err(e) => return Decision::InvalidSpec(e.0.clone()),
    };
    if resolved.flow.uses_ambient_identity()
        && !o.ambient_namespaces.iter().any(|n| n == o.namespace)
    {
        return Decision::NotAllowed(not_allowed_message(o, resolved));
    }
    let Some(existing) = o.existing else {
        return Decision::Refresh(Why::NoSecret);
    };
    if !existing.ours {
        return Decision::Conflict(format!(
            "Secret {} exists and is not managed by this AmrCredential; it is left untouched",
            resolved.secret_name
        ));
    }
    freshness(o, existing)
}

fn not_allowed_message(o: &Observed<'_>, resolved: &ResolvedSpec) -> String {
    format!(
        "Flow {} uses the operator's own identity, which namespace {} may not use",
        resolved.flow.as_str(),
        o.namespace
    )
}

fn freshness(o: &Observed<'_>, existing: &ExistingSecret) -> Decision {
    let (Some(refresh_at), Some(expires_at), true) =
        (existing.refresh_at, existing.expires_at, existing.intact)
    else {
        return Decision::Refresh(Why::Unreadable);
    };
    if existing.spec_hash.as_deref() != Some(spec_hash(o.spec).as_str()) {
        return Decision::Refresh(Why::SpecChanged);
    }
    let requested = o.refresh_requested;
    if requested.is_some() && requested != existing.honoured_request.as_deref() {
        return Decision::Refresh(Why::Requested);
    }
    let due = spread_overdue(o, refresh_at, expires_at);
    if o.now < due {
        Decision::Fresh { requeue_at: due }
    } else {
        Decision::Refresh(Why::Due)
    }
}

/// Refreshes already overdue when the controller started are spread over the window, as
/// long as the token outlives the window; they would all fire at once otherwise.
fn spread_overdue(o: &Observed<'_>, refresh_at: Timestamp, expires_at: Timestamp) -> Timestamp {
    let window_end = o.started_at + o.spread_window;
    if refresh_at > o.started_at || expires_at <= window_end {
        return refresh_at;
    }
    let key = stable_hash(&format!("{}/{}", o.namespace, o.name));
    spread(refresh_at, o.started_at, key, o.spread_window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FlowType, validate};
    use crate::controller::testing::credential;

    const NS: &str = "shop";

    /// One sentence of the table: a change to the observed world and the expected decision.
    struct Case {
        sentence: &'static str,
        change: fn(&mut World),
        expect: fn(&Decision) -> bool,
    }

    struct World {
        now: i64,
        started_at: i64,
        spec: AmrCredentialSpec,
        existing: Option<ExistingSecret>,
        requested: Option<&'static str>,
        ambient: Vec<String>,
    }

    fn world() -> World {
        let spec = credential("orders").spec;
        let existing = ExistingSecret {
            ours: true,
            claims: None,
            expires_at: Some(at(3600)),
            refresh_at: Some(at(2880)),
            spec_hash: Some(spec_hash(&spec)),
            content_hash: Some("sha256:x".into()),
            honoured_request: None,
            intact: true,
        };
        World {
            now: 100,
            started_at: 0,
            spec,
            existing: Some(existing),
            requested: None,
            ambient: Vec::new(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("in range")
    }

    fn run(w: &World) -> Decision {
        let resolved = validate("orders", &w.spec);
        decide(&Observed {
            now: at(w.now),
            started_at: at(w.started_at),
            spread_window: Duration::from_secs(60),
            namespace: NS,
            name: "orders",
            spec: &w.spec,
            resolved: resolved.as_ref(),
            existing: w.existing.as_ref(),
            refresh_requested: w.requested,
            ambient_namespaces: &w.ambient,
        })
    }

    fn existing(w: &mut World) -> &mut ExistingSecret {
        w.existing.as_mut().expect("the world has a Secret")
    }

    fn ambient(w: &mut World) {
        w.spec.flow.flow_type = FlowType::SystemAssignedManagedIdentity;
        existing(w).spec_hash = Some(spec_hash(&w.spec));
    }

    const CASES: &[Case] = &[
        Case {
            sentence: "a current Secret of ours is left alone until its refresh time",
            change: |_| {},
            expect: |d| {
                *d == Decision::Fresh {
                    requeue_at: at(2880),
                }
            },
        },
        Case {
            sentence: "a missing Secret is refreshed",
            change: |w| w.existing = None,
            expect: |d| *d == Decision::Refresh(Why::NoSecret),
        },
        Case {
            sentence: "a Secret past its refresh time is refreshed",
            change: |w| w.now = 2880,
            expect: |d| *d == Decision::Refresh(Why::Due),
        },
        Case {
            sentence: "a changed spec refreshes at once",
            change: |w| {
                w.spec.target.labels.insert("new".into(), "label".into());
            },
            expect: |d| *d == Decision::Refresh(Why::SpecChanged),
        },
        Case {
            sentence: "a new refresh-request value refreshes at once",
            change: |w| w.requested = Some("2025-01-01T00:00:00Z"),
            expect: |d| *d == Decision::Refresh(Why::Requested),
        },
        Case {
            sentence: "an already honoured refresh request does not refresh again",
            change: |w| {
                w.requested = Some("r1");
                existing(w).honoured_request = Some("r1".into());
            },
            expect: |d| matches!(d, Decision::Fresh { .. }),
        },
        Case {
            sentence: "a Secret whose data was edited is refreshed",
            change: |w| existing(w).intact = false,
            expect: |d| *d == Decision::Refresh(Why::Unreadable),
        },
        Case {
            sentence: "a Secret without a refresh-at annotation is refreshed",
            change: |w| existing(w).refresh_at = None,
            expect: |d| *d == Decision::Refresh(Why::Unreadable),
        },
        Case {
            sentence: "a Secret that is not ours is a conflict, even when it looks current",
            change: |w| existing(w).ours = false,
            expect: |d| matches!(d, Decision::Conflict(m) if m.contains("orders")),
        },
        Case {
            sentence: "an invalid spec is reported before anything else",
            change: |w| {
                w.spec.flow.client_secret_ref = None;
                existing(w).ours = false;
            },
            expect: |d| matches!(d, Decision::InvalidSpec(m) if m.contains("clientSecretRef")),
        },
        Case {
            sentence: "an ambient flow with an empty allow-list is not allowed",
            change: ambient,
            expect: |d| matches!(d, Decision::NotAllowed(m) if m.contains("namespace shop")),
        },
        Case {
            sentence: "an ambient flow in an allowed namespace proceeds",
            change: |w| {
                ambient(w);
                w.ambient = vec!["other".into(), NS.into()];
            },
            expect: |d| matches!(d, Decision::Fresh { .. }),
        },
        Case {
            sentence: "a refresh overdue at start-up is spread over the window",
            change: |w| (w.started_at, w.now) = (3000, 3000),
            expect: |d| {
                matches!(d, Decision::Fresh { requeue_at } if *requeue_at > at(3000)
                && *requeue_at < at(3060))
            },
        },
        Case {
            sentence: "a refresh overdue at start-up is not spread past the token's expiry",
            change: |w| (w.started_at, w.now) = (3550, 3550),
            expect: |d| *d == Decision::Refresh(Why::Due),
        },
        Case {
            sentence: "the spread target stays put while time passes",
            change: |w| (w.started_at, w.now) = (3000, 3061),
            expect: |d| *d == Decision::Refresh(Why::Due),
        },
    ];

    #[test]
    fn decisions_follow_the_table() {
        for case in CASES {
            let mut w = world();
            (case.change)(&mut w);
            let decision = run(&w);
            assert!(
                (case.expect)(&decision),
                "{}: got {decision:?}",
                case.sentence
            );
        }
    }
}
