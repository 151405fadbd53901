//! The topic ACL of DESIGN.md ("Wire"), as pure functions of the peer and
//! a topic or filter.
//!
//! - A `post` publishes only its own `events` and `status`, and subscribes
//!   only to its own `receipts` and `commands` (exact topics, no wildcards,
//!   no shared subscriptions).
//! - An `ops` identity subscribes to `events` and `status` of every post
//!   (`vigil/v1/posts/+/events`, `…/+/status`) or of one concrete post, each
//!   also as a shared subscription `$share/{group}/…`; it publishes
//!   `receipts` and `commands` to concrete posts.
//! - Every other role may do nothing on MQTT; the session refuses them at
//!   CONNECT ([`may_connect`]).
//!
//! A last will is a publish made on the client's behalf later, so it follows
//! the publish rule ([`may_will`]). Anything not listed is refused: the
//! functions answer "allowed" only for the exact shapes above, so an unknown
//! topic kind, an extra level, a `#`, or a `+` in the wrong place is denied.

use vigil_pki::{Identity, Peer, Role};
use vigil_proto::topics::{self, TopicKind};

/// Prefix of a shared subscription (MQTT 5, also accepted on 3.1.1 by the
/// router): `$share/{group}/{filter}`.
const SHARE_PREFIX: &str = "$share/";

/// Whether a certificate of this role may hold an MQTT session at all.
pub fn may_connect(role: Role) -> bool {
    matches!(role, Role::Post | Role::Ops)
}

/// Whether `peer` may publish to the concrete topic `topic`.
pub fn may_publish(peer: &Peer, topic: &str) -> bool {
    let Some((post, kind)) = topics::parse(topic) else {
        return false;
    };
    match peer.role {
        Role::Post => {
            post == peer.identity.as_str() && matches!(kind, TopicKind::Events | TopicKind::Status)
        }
        // Any concrete post, but only a well-formed identity: a level such as
        // `P 1` can never be a post, and accepting it would only create junk
        // topics in the router.
        Role::Ops => {
            Identity::new(post).is_ok() && matches!(kind, TopicKind::Receipts | TopicKind::Commands)
        }
        _ => false,
    }
}

/// Whether a publish to `topic` (already allowed by [`may_publish`]) may be
/// retained. Only a post's `status` is: a retained event would be handed to
/// every ops subscriber that connects later, as if the post had sent it
/// again.
pub fn may_retain(topic: &str) -> bool {
    matches!(topics::parse(topic), Some((_, TopicKind::Status)))
}

/// The post a publish by `peer` on `topic` (allowed by [`may_publish`]) is
/// for, when it is a message for exactly one post: an ops center's receipt
/// or command. Those go straight to that post's session.
pub fn direct_recipient<'a>(peer: &Peer, topic: &'a str) -> Option<&'a str> {
    if peer.role != Role::Ops {
        return None;
    }
    match topics::parse(topic)? {
        (post, TopicKind::Receipts | TopicKind::Commands) => Some(post),
        _ => None,
    }
}

/// Whether `peer` may register a last will on `topic` (the publish rule).
pub fn may_will(peer: &Peer, topic: &str) -> bool {
    may_publish(peer, topic)
}

/// Whether `peer` may subscribe with `filter` (possibly `$share/{group}/…`).
pub fn may_subscribe(peer: &Peer, filter: &str) -> bool {
    match peer.role {
        Role::Post => {
            // Exact own topics only; a shared subscription makes no sense for
            // a single gateway and is refused.
            match topics::parse(filter) {
                Some((post, kind)) => {
                    post == peer.identity.as_str()
                        && matches!(kind, TopicKind::Receipts | TopicKind::Commands)
                }
                None => false,
            }
        }
        Role::Ops => {
            let filter = match strip_share(filter) {
                Some(Ok(inner)) => inner,
                Some(Err(())) => return false,
                None => filter,
            };
            ops_filter(filter)
        }
        _ => false,
    }
}

/// The filters an ops identity may use (without the `$share` part).
fn ops_filter(filter: &str) -> bool {
    let wanted = |kind: TopicKind| matches!(kind, TopicKind::Events | TopicKind::Status);
    if let Some(kind) = TopicKind::ALL
        .into_iter()
        .find(|&kind| topics::all_posts(kind) == filter)
    {
        return wanted(kind);
    }
    match topics::parse(filter) {
        Some((post, kind)) => Identity::new(post).is_ok() && wanted(kind),
        None => false,
    }
}

/// Splits `$share/{group}/{filter}`: `None` when `filter` is not shared,
/// `Some(Err)` when it is but malformed (empty group, or a group holding a
/// wildcard, which MQTT 5 forbids).
fn strip_share(filter: &str) -> Option<Result<&str, ()>> {
    let rest = filter.strip_prefix(SHARE_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(()));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(()));
    }
    Some(Ok(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(role: Role, id: &str) -> Peer {
        Peer {
            identity: Identity::new(id).unwrap(),
            role,
        }
    }

    fn t(post: &str, kind: TopicKind) -> String {
        topics::topic(post, kind)
    }

    /// Topics and filters that nobody may use, whatever the role.
    const NOBODY: &[&str] = &[
        "",
        "#",
        "+",
        "/",
        "$SYS/#",
        "$share/g/#",
        "vigil/#",
        "vigil/v1/#",
        "vigil/v1/posts/#",
        "vigil/v1/posts/+/#",
        "vigil/v1/posts/+/+",
        "vigil/v1/posts/p-1/#",
        "vigil/v1/posts/p-1/+",
        "vigil/v1/posts/p-1",
        "vigil/v1/posts/p-1/events/x",
        "vigil/v1/posts/p-1/other",
        "vigil/v1/posts//events",
        "vigil/v2/posts/p-1/events",
        "Vigil/v1/posts/p-1/events",
        "vigil/v1/posts/p-1/events/",
        "/vigil/v1/posts/p-1/events",
    ];

    #[test]
    fn only_posts_and_ops_connect() {
        for role in Role::ALL {
            assert_eq!(
                may_connect(role),
                matches!(role, Role::Post | Role::Ops),
                "{role}"
            );
        }
    }

    #[test]
    fn post_publishes_own_events_and_status_only() {
        let p = peer(Role::Post, "p-1");
        for kind in TopicKind::ALL {
            let allowed = matches!(kind, TopicKind::Events | TopicKind::Status);
            assert_eq!(may_publish(&p, &t("p-1", kind)), allowed, "{kind}");
            assert_eq!(may_will(&p, &t("p-1", kind)), allowed, "{kind}");
            // Never under another post's id, including look-alikes.
            for other in ["p-2", "p-10", "p-", "p", "P-1", "+", "#"] {
                assert!(!may_publish(&p, &t(other, kind)), "{other}/{kind}");
                assert!(!may_will(&p, &t(other, kind)), "{other}/{kind}");
            }
        }
        for bad in NOBODY {
            assert!(!may_publish(&p, bad), "{bad}");
        }
    }

    #[test]
    fn post_subscribes_own_receipts_and_commands_only() {
        let p = peer(Role::Post, "p-1");
        for kind in TopicKind::ALL {
            let allowed = matches!(kind, TopicKind::Receipts | TopicKind::Commands);
            assert_eq!(may_subscribe(&p, &t("p-1", kind)), allowed, "{kind}");
            assert!(!may_subscribe(&p, &t("p-2", kind)), "{kind}");
            assert!(!may_subscribe(&p, &topics::all_posts(kind)), "{kind}");
            assert!(
                !may_subscribe(&p, &format!("$share/g/{}", t("p-1", kind))),
                "{kind}"
            );
        }
        for bad in NOBODY {
            assert!(!may_subscribe(&p, bad), "{bad}");
        }
    }

    #[test]
    fn ops_subscribes_events_and_status_of_all_or_one_post() {
        let o = peer(Role::Ops, "ops-1");
        for kind in TopicKind::ALL {
            let allowed = matches!(kind, TopicKind::Events | TopicKind::Status);
            let all = topics::all_posts(kind);
            let one = t("p-017", kind);
            for filter in [
                all.clone(),
                one.clone(),
                format!("$share/ops/{all}"),
                format!("$share/g-2/{one}"),
            ] {
                assert_eq!(may_subscribe(&o, &filter), allowed, "{filter}");
            }
            for bad in [
                format!("$share//{all}"),
                format!("$share/{all}"),
                format!("$share/+/{all}"),
                format!("$share/#/{all}"),
                "$share/g".to_owned(),
                format!("$share/g/$share/g/{all}"),
                t("P 1", kind),
            ] {
                assert!(!may_subscribe(&o, &bad), "{bad}");
            }
        }
        for bad in NOBODY {
            assert!(!may_subscribe(&o, bad), "{bad}");
        }
    }

    #[test]
    fn ops_publishes_receipts_and_commands_of_concrete_posts() {
        let o = peer(Role::Ops, "ops-1");
        for kind in TopicKind::ALL {
            let allowed = matches!(kind, TopicKind::Receipts | TopicKind::Commands);
            assert_eq!(may_publish(&o, &t("p-017", kind)), allowed, "{kind}");
            assert_eq!(may_will(&o, &t("p-017", kind)), allowed, "{kind}");
            assert!(!may_publish(&o, &topics::all_posts(kind)), "{kind}");
            assert!(!may_publish(&o, &t("P 1", kind)), "{kind}");
        }
        for bad in NOBODY {
            assert!(!may_publish(&o, bad), "{bad}");
        }
    }

    #[test]
    fn other_roles_may_do_nothing() {
        for role in Role::ALL {
            if matches!(role, Role::Post | Role::Ops) {
                continue;
            }
            let who = peer(role, "p-1");
            for kind in TopicKind::ALL {
                for topic in [t("p-1", kind), topics::all_posts(kind)] {
                    assert!(!may_publish(&who, &topic), "{role} {topic}");
                    assert!(!may_will(&who, &topic), "{role} {topic}");
                    assert!(!may_subscribe(&who, &topic), "{role} {topic}");
                }
            }
            assert!(!may_subscribe(&who, "#"), "{role}");
        }
    }
}
