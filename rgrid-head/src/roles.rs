//! What each client role may ask, checked on every request before it has any effect. The role
//! comes only from the client's verified certificate (`rgrid-head client create NAME --role R`);
//! a client certificate that names no role may only read.
//!
//! - `admin`: everything.
//! - `submit`: what `read` may, and submit tasks (network mode `none` only), cancel the tasks
//!   it submitted, and upload and pin (or unpin) objects.
//! - every role: renew its own certificate (same name, same role).
//! - `read`: listings, status, gets and waits (outputs and logs included), costs, object
//!   downloads and listings.

use rgrid_core::protocol::Request;
use rgrid_core::task::NetworkMode;
use rgrid_core::tls::ClientRole;
use rgrid_core::TaskSpec;

/// Why `role` may not make `request`; `None` when it may (a cancel is checked against the
/// task's submitter as well, by the caller).
pub(crate) fn refusal(role: ClientRole, request: &Request) -> Option<String> {
    let allowed = match role {
        ClientRole::Admin => true,
        ClientRole::Submit => matches!(
            request,
            Request::Submit(_)
                | Request::Cancel { .. }
                | Request::Get { .. }
                | Request::Wait { .. }
                | Request::Logs { .. }
                | Request::ListNodes
                | Request::ListTasks(_)
                | Request::Status
                | Request::PutObject(_)
                | Request::GetObject(_)
                | Request::ListObjects(_)
                | Request::PinObject { .. }
                | Request::Cost(_)
                | Request::Renew { .. }
        ),
        ClientRole::Read => matches!(
            request,
            Request::Get { .. }
                | Request::Wait { .. }
                | Request::Logs { .. }
                | Request::ListNodes
                | Request::ListTasks(_)
                | Request::Status
                | Request::GetObject(_)
                | Request::ListObjects(_)
                | Request::Cost(_)
                | Request::Renew { .. }
        ),
    };
    (!allowed).then(|| {
        format!("a client with role {role} may not make this request; ask an admin for credentials with the role it needs (rgrid-head client create NAME --role R)")
    })
}

/// Why `role` may not submit `spec`; `None` when it may.
pub(crate) fn spec_refusal(role: ClientRole, spec: &TaskSpec) -> Option<String> {
    (role != ClientRole::Admin && spec.network != NetworkMode::None).then(|| {
        format!(
            "task {}: network mode {:?} needs an admin client (role {role} may submit tasks without a network only)",
            spec.id, spec.network
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rgrid_core::object::{ObjectQuery, ObjectRef};
    use rgrid_core::TaskId;

    #[test]
    fn each_role_may_make_its_requests_only() {
        let task = TaskId::new();
        let object = ObjectRef::of(b"x");
        let cases = [
            (Request::Submit(vec![]), [true, true, false]),
            (
                Request::Cancel {
                    task,
                    recursive: false,
                },
                [true, true, false],
            ),
            (Request::Get { task }, [true, true, true]),
            (Request::ListNodes, [true, true, true]),
            (Request::Status, [true, true, true]),
            (Request::PutObject(object), [true, true, false]),
            (Request::GetObject(object), [true, true, true]),
            (
                Request::PinObject {
                    object,
                    pinned: true,
                },
                [true, true, false],
            ),
            (
                Request::ListObjects(ObjectQuery::default()),
                [true, true, true],
            ),
            (
                Request::DrainNode {
                    node: "n".into(),
                    deadline_secs: 1,
                },
                [true, false, false],
            ),
            (
                Request::RemoveNode { node: "n".into() },
                [true, false, false],
            ),
            // Every client renews its own certificate (its name and role stay).
            (
                Request::Renew {
                    csr_pem: String::new(),
                },
                [true, true, true],
            ),
        ];
        for (request, allowed) in cases {
            for (role, allowed) in ClientRole::ALL.into_iter().zip(allowed) {
                assert_eq!(
                    refusal(role, &request).is_none(),
                    allowed,
                    "{role} {request:?}"
                );
            }
        }
        let message = refusal(ClientRole::Read, &Request::Submit(vec![])).expect("refused");
        assert!(message.contains("role read"), "{message}");
    }
}
