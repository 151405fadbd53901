//! MQTT topic names (DESIGN.md, "Wire").
//!
//! Every topic is `vigil/v1/posts/{post}/{kind}`; this module is the only
//! place that spells them, so the gateway, the broker's ACL and the
//! operations center cannot disagree.

use std::fmt;

/// Prefix shared by every post topic.
pub const PREFIX: &str = "vigil/v1/posts/";

/// The four per-post topic kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// `EventBatch`, gateway → operations center.
    Events,
    /// `Receipt`, operations center → gateway.
    Receipts,
    /// `PostStatus`, gateway (retained, last will) → operations center.
    Status,
    /// `PostCommand`, operations center → gateway.
    Commands,
}

impl TopicKind {
    /// All kinds, in topic-table order.
    pub const ALL: [TopicKind; 4] = [Self::Events, Self::Receipts, Self::Status, Self::Commands];

    /// The last topic level for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Receipts => "receipts",
            Self::Status => "status",
            Self::Commands => "commands",
        }
    }

    fn from_level(level: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == level)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topic of `kind` for `post`, e.g. `vigil/v1/posts/p-017/events`.
pub fn topic(post: &str, kind: TopicKind) -> String {
    format!("{PREFIX}{post}/{kind}")
}

/// The wildcard filter that matches `kind` for every post, e.g.
/// `vigil/v1/posts/+/events`.
pub fn all_posts(kind: TopicKind) -> String {
    format!("{PREFIX}+/{kind}")
}

/// Splits a concrete topic into its post and kind. Returns `None` for any
/// topic that is not exactly `vigil/v1/posts/{post}/{kind}` with a non-empty
/// post level free of wildcards.
pub fn parse(topic: &str) -> Option<(&str, TopicKind)> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (post, kind) = rest.split_once('/')?;
    if post.is_empty() || post.contains(['+', '#', '/']) {
        return None;
    }
    Some((post, TopicKind::from_level(kind)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_kind() {
        for kind in TopicKind::ALL {
            let t = topic("p-017", kind);
            assert_eq!(parse(&t), Some(("p-017", kind)));
        }
        assert_eq!(topic("p-1", TopicKind::Events), "vigil/v1/posts/p-1/events");
        assert_eq!(all_posts(TopicKind::Status), "vigil/v1/posts/+/status");
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "vigil/v1/posts//events",
            "vigil/v1/posts/p-1/events/x",
            "vigil/v1/posts/p-1/other",
            "vigil/v1/posts/+/events",
            "vigil/v1/posts/#",
            "vigil/v2/posts/p-1/events",
            "vigil/v1/posts/p-1",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
