//! The embedded broker's pure parts: topic and filter validity, filter matching and the ACL.
//!
//! Matching follows MQTT 5 §4.7: `+` matches exactly one level, `#` (last level only) matches
//! the parent level and everything below it, and a topic starting with `$` is never matched by
//! a filter whose first level is a wildcard (§4.7.2). The ACL is the one the demo gives
//! Mosquitto ([`super::super::broker::acl`]): the platform reads everything and publishes
//! nothing; the gateway reads and writes only `{prefix}/gw/{gateway_id}` and below; any other
//! identity may do nothing. No IO, no clock.

/// Whether `topic` is a valid PUBLISH topic name: non-empty, no wildcard, no NUL (§4.7.3).
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a valid SUBSCRIBE topic filter: non-empty, `+` and `#` each alone in
/// their level, `#` only as the last level (§4.7.1).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == last,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether a valid `filter` matches a valid `topic` (MQTT 5 §4.7).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Who may do what: the demo's two identities (client certificate CNs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// The platform's CN: may subscribe to anything, publish nothing.
    pub platform: String,
    /// The gateway's CN: may publish and subscribe only under [`Acl::gateway_root`].
    pub gateway: String,
    /// The topic prefix (`rpm/v1`).
    pub prefix: String,
}

impl Acl {
    /// `{prefix}/gw/{gateway}`: the root of the gateway's own subtree.
    pub fn gateway_root(&self) -> String {
        format!("{}/gw/{}", self.prefix, self.gateway)
    }

    /// Whether `identity` may publish to `topic` (Mosquitto `topic readwrite {root}/#`).
    pub fn may_publish(&self, identity: &str, topic: &str) -> bool {
        identity == self.gateway && self.under_gateway_root(topic)
    }

    /// Whether `identity` may subscribe to `filter`: the platform to anything, the gateway only
    /// to filters that cannot match anything outside its subtree (a wildcard in one of the
    /// root's levels could, so it is refused).
    pub fn may_subscribe(&self, identity: &str, filter: &str) -> bool {
        identity == self.platform || (identity == self.gateway && self.under_gateway_root(filter))
    }

    /// `s` is the root itself or has the root's levels, literally, as its first levels.
    fn under_gateway_root(&self, s: &str) -> bool {
        let root = self.gateway_root();
        s == root
            || s.strip_prefix(&root)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl() -> Acl {
        Acl {
            platform: "platform".into(),
            gateway: "demo-gw-0001".into(),
            prefix: "rpm/v1".into(),
        }
    }

    // MQTT 5 §4.7.1.3: `+` matches exactly one level, including an empty one.
    #[test]
    fn matches_plus_matches_exactly_one_level() {
        assert!(matches("rpm/v1/gw/+/obs", "rpm/v1/gw/gw1/obs"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a"));
        assert!(!matches("rpm/v1/gw/+/obs", "rpm/v1/gw/gw1/x/obs"));
        assert!(!matches("rpm/v1/gw/+/obs", "rpm/v1/gw/gw1/status"));
    }

    // MQTT 5 §4.7.1.2: `#` matches the parent level and any number of levels below it.
    #[test]
    fn matches_hash_matches_parent_and_every_level_below() {
        assert!(matches("rpm/v1/gw/gw1/#", "rpm/v1/gw/gw1"));
        assert!(matches("rpm/v1/gw/gw1/#", "rpm/v1/gw/gw1/obs"));
        assert!(matches("rpm/v1/gw/gw1/#", "rpm/v1/gw/gw1/a/b/c"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("rpm/v1/gw/gw1/#", "rpm/v1/gw/gw2/obs"));
        assert!(!matches("rpm/v1/gw/gw1/#", "rpm/v1/gw/gw10"));
    }

    #[test]
    fn matches_literal_filter_matches_only_the_same_topic() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(!matches("a/b", "a/B"));
    }

    // MQTT 5 §4.7.2: a leading wildcard does not match a topic starting with `$`.
    #[test]
    fn matches_leading_wildcard_does_not_match_dollar_topics() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    // MQTT 5 §4.7.1: wildcards alone in their level, `#` last.
    #[test]
    fn valid_filter_refuses_misplaced_wildcards() {
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "$SYS/#"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "a/+b/c", "#/a", "a\0b"] {
            assert!(!valid_filter(bad), "{bad:?}");
        }
    }

    // MQTT 5 §4.7.3: topic names carry no wildcard.
    #[test]
    fn valid_topic_refuses_wildcards_and_empty() {
        assert!(valid_topic("rpm/v1/gw/gw1/obs"));
        for bad in ["", "a/+", "a/#", "a\0"] {
            assert!(!valid_topic(bad), "{bad:?}");
        }
    }

    // broker::acl(): `user <gateway> / topic readwrite {prefix}/gw/<gateway>/#`.
    #[test]
    fn acl_gateway_may_publish_only_under_its_own_subtree() {
        let a = acl();
        assert!(a.may_publish("demo-gw-0001", "rpm/v1/gw/demo-gw-0001/obs"));
        assert!(a.may_publish("demo-gw-0001", "rpm/v1/gw/demo-gw-0001/status"));
        assert!(a.may_publish("demo-gw-0001", "rpm/v1/gw/demo-gw-0001"));
        assert!(!a.may_publish("demo-gw-0001", "rpm/v1/gw/demo-gw-0002/obs"));
        assert!(!a.may_publish("demo-gw-0001", "rpm/v1/gw/demo-gw-00012/obs"));
        assert!(!a.may_publish("demo-gw-0001", "rpm/v1/other"));
    }

    // broker::acl(): `user platform / topic read #`: read only.
    #[test]
    fn acl_platform_may_subscribe_to_anything_but_publish_nothing() {
        let a = acl();
        assert!(a.may_subscribe("platform", "#"));
        assert!(a.may_subscribe("platform", "rpm/v1/gw/+/#"));
        assert!(!a.may_publish("platform", "rpm/v1/gw/demo-gw-0001/obs"));
    }

    #[test]
    fn acl_gateway_subscription_with_wildcard_in_its_root_is_refused() {
        let a = acl();
        assert!(a.may_subscribe("demo-gw-0001", "rpm/v1/gw/demo-gw-0001/#"));
        assert!(a.may_subscribe("demo-gw-0001", "rpm/v1/gw/demo-gw-0001/cmd/+"));
        assert!(!a.may_subscribe("demo-gw-0001", "rpm/v1/gw/+/#"));
        assert!(!a.may_subscribe("demo-gw-0001", "#"));
        assert!(!a.may_subscribe("demo-gw-0001", "rpm/v1/gw/demo-gw-0002/#"));
    }

    #[test]
    fn acl_unknown_identity_may_do_nothing() {
        let a = acl();
        assert!(!a.may_publish("stranger", "rpm/v1/gw/stranger/obs"));
        assert!(!a.may_subscribe("stranger", "rpm/v1/gw/stranger/#"));
    }
}
