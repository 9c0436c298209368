//! A node's identity is the head's decision, not the node's: its name is fixed when it joins
//! (the name the token binds it to, for the autoscaler's servers; else the one it asked for
//! then), and the labels of the token it joined with (an operator's decision) override any
//! label the node declares. Listings tell the labels a node declared itself apart.
//!
//! A later session under another name is not refused: the name is ignored (with a warning),
//! so that a node whose hostname or config changed keeps working under the name the head
//! recorded, and nothing matched by name (the autoscaler's servers, `drain`, `remove`) is
//! fooled by a rename.

use std::collections::{BTreeMap, HashMap};

use rgrid_core::protocol::{NodeHello, NodeInfo};
use rgrid_core::NodeId;

/// Applies the head's decision to a session's `hello`: the recorded `name`, and the token's
/// labels over the node's.
pub(crate) fn decide(
    node: NodeId,
    hello: &mut NodeHello,
    name: String,
    token_labels: BTreeMap<String, String>,
) {
    if hello.name != name {
        tracing::warn!(node = %node, asked = %hello.name.escape_debug(), %name, "the node asks for another name than it joined under; it keeps the one it joined under");
        hello.name = name;
    }
    for (key, value) in token_labels {
        if let Some(declared) = hello.labels.get(&key).filter(|v| **v != value) {
            tracing::warn!(node = %node, label = %key.escape_debug(), declared = %declared.escape_debug(), token = %value.escape_debug(), "the node declares a label its join token gives; the token's value holds");
        }
        hello.labels.insert(key, value);
    }
}

/// Marks the labels of each node that its token did not give (`given`: token labels by node).
pub(crate) fn mark_declared(
    nodes: &mut [NodeInfo],
    given: &HashMap<NodeId, BTreeMap<String, String>>,
) {
    for node in nodes {
        let token = given.get(&node.id);
        node.declared_labels = node
            .labels
            .keys()
            .filter(|key| token.is_none_or(|t| !t.contains_key(*key)))
            .cloned()
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: &str, labels: &[(&str, &str)]) -> NodeHello {
        NodeHello {
            name: name.into(),
            resources: Default::default(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            capabilities: Vec::new(),
            running: Vec::new(),
            finished: Vec::new(),
            disconnect_grace_ms: None,
        }
    }

    #[test]
    fn the_recorded_name_and_the_token_labels_win() {
        let node = NodeId::new();
        let mut h = hello("renamed", &[("site", "secure"), ("arch", "x86_64")]);
        let token = BTreeMap::from([("site".to_owned(), "b".to_owned())]);
        decide(node, &mut h, "joined-as".into(), token.clone());
        assert_eq!(h.name, "joined-as");
        assert_eq!(h.labels["site"], "b", "the token's label holds");
        assert_eq!(h.labels["arch"], "x86_64", "the node's own label stays");

        let info = |id, labels: &BTreeMap<String, String>| NodeInfo {
            id,
            name: "n".into(),
            state: "ready".into(),
            total: Default::default(),
            free: Default::default(),
            labels: labels.clone(),
            capabilities: Vec::new(),
            running: 0,
            unhealthy: None,
            declared_labels: Vec::new(),
        };
        let other = NodeId::new();
        let mut nodes = [info(node, &h.labels), info(other, &h.labels)];
        mark_declared(&mut nodes, &HashMap::from([(node, token)]));
        assert_eq!(nodes[0].declared_labels, ["arch"]);
        assert_eq!(
            nodes[1].declared_labels,
            ["arch", "site"],
            "no token labels"
        );
    }
}
