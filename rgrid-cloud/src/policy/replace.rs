//! Replacement: servers that leave now, before any capacity is counted. Failed ones and ones
//! that never joined within `join_timeout` are deleted (demand then creates replacements),
//! drained ones that emptied are deleted, ready ones older than `max_lifetime` are drained.

use super::{since, Action, Ctx, Reason, ServerState};

/// Adds the deletes and lifetime drains to the plan and marks those servers as leaving.
pub(super) fn retire(cx: &mut Ctx<'_>) {
    let config = cx.config;
    for (i, node) in cx.snapshot.servers.iter().enumerate() {
        let Some(server) = node.server else { continue };
        let age = since(cx.now, node.created);
        let delete = |reason| Action::Delete {
            server,
            name: node.name.clone(),
            reason,
        };
        let action = match node.state {
            ServerState::Failed => delete(Reason::Failed),
            ServerState::Provisioning if age >= config.join_timeout => delete(Reason::NeverJoined),
            ServerState::Provisioning => {
                cx.wake.at(node.created + config.join_timeout);
                continue;
            }
            ServerState::Draining if node.running == 0 => delete(Reason::Drained),
            ServerState::Draining => continue,
            ServerState::Ready if config.max_lifetime.is_zero() => continue,
            ServerState::Ready if age >= config.max_lifetime => Action::Drain {
                server,
                name: node.name.clone(),
                reason: Reason::Lifetime,
            },
            ServerState::Ready => {
                cx.wake.at(node.created + config.max_lifetime);
                continue;
            }
        };
        cx.actions.push(action);
        cx.leaving.insert(i);
    }
}
