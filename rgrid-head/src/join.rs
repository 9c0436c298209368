//! What the head checks of a join request before it touches the store or signs anything: the
//! token's form, the certificate signing request and the node's name. Pure, so that the fuzz
//! target `join` runs exactly the head's checks; the token's secret is checked against the
//! store afterwards (`Store::join`), in the transaction that consumes it.

use rgrid_core::protocol::JoinRequest;
use rgrid_core::tls::{ClusterCa, JoinToken};
use rgrid_core::NodeId;

/// A join request that passed the checks.
#[derive(Debug)]
pub struct CheckedJoin {
    pub token: JoinToken,
    /// The node's name: the one it asked for, or one made from `node` when it asked for none.
    pub name: String,
}

/// Checks `join` for the node that will get id `node`; the error is the message the node gets.
pub fn check_join(join: &JoinRequest, node: NodeId) -> Result<CheckedJoin, String> {
    let token = JoinToken::parse(&join.token).map_err(|e| e.to_string())?;
    ClusterCa::check_node_csr(&join.csr_pem)
        .map_err(|e| format!("bad certificate signing request: {e}"))?;
    let name = if join.name.trim().is_empty() {
        format!("node-{}", &node.to_string()[..8])
    } else {
        check_node_name(&join.name)?;
        join.name.clone()
    };
    Ok(CheckedJoin { token, name })
}

/// Node names reach logs, terminals and the autoscaler's matching: a hostname's characters
/// only, so that nothing a node says can carry control characters or escape sequences.
pub(crate) fn check_node_name(name: &str) -> Result<(), String> {
    let valid = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "node name {:?} refused: use 1 to 63 letters, digits, '.', '_' or '-'",
            name.escape_debug().to_string()
        ))
    }
}
