//! The JSON shapes of the Hetzner Cloud API that rgrid uses: servers, actions, pagination and
//! error bodies. Responses ignore fields they do not name, so additions to the API do not break
//! parsing; the server object is read by `location`, since the API removed `datacenter` in 2026.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `POST /v1/servers` request body. Its `Debug` leaves out the user data, which holds a join
/// token.
#[derive(Clone, Serialize)]
pub struct CreateServerRequest {
    /// Unique name in the project (RFC 1123 hostname).
    pub name: String,
    /// Server type name, e.g. `cx33`.
    pub server_type: String,
    /// Image name or id, e.g. `ubuntu-24.04`.
    pub image: String,
    /// Location name, e.g. `fsn1`.
    pub location: String,
    /// SSH key names or ids.
    pub ssh_keys: Vec<String>,
    /// cloud-init user data (at most 32 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Power on once created.
    pub start_after_create: bool,
    /// Private network ids to attach.
    pub networks: Vec<u64>,
    /// Firewalls to apply.
    pub firewalls: Vec<FirewallRef>,
    /// Public address settings.
    pub public_net: PublicNetRequest,
}

impl std::fmt::Debug for CreateServerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateServerRequest")
            .field("name", &self.name)
            .field("server_type", &self.server_type)
            .field("image", &self.image)
            .field("location", &self.location)
            .field("labels", &self.labels)
            .field(
                "user_data",
                &self
                    .user_data
                    .as_ref()
                    .map(|d| format!("<{} bytes>", d.len())),
            )
            .finish_non_exhaustive()
    }
}

/// A firewall to apply at creation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FirewallRef {
    /// Firewall id.
    pub firewall: u64,
}

/// Public addresses at creation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PublicNetRequest {
    /// Attach a public IPv4 address.
    pub enable_ipv4: bool,
    /// Attach a public IPv6 network.
    pub enable_ipv6: bool,
}

/// `POST /v1/servers` response body.
#[derive(Clone, Deserialize)]
pub struct CreateServerResponse {
    /// The server, in its preliminary state.
    pub server: Server,
    /// The `create_server` action.
    pub action: Action,
    /// Follow-up actions (`start_server`, `attach_to_network`…) that must also succeed.
    #[serde(default)]
    pub next_actions: Vec<Action>,
    /// Set when no SSH key was given. Never logged: this type has no `Debug`.
    #[serde(default)]
    pub root_password: Option<String>,
}

/// `GET /v1/servers` response body.
#[derive(Clone, Debug, Deserialize)]
pub struct ListServersResponse {
    /// This page of servers.
    pub servers: Vec<Server>,
    /// Pagination.
    #[serde(default)]
    pub meta: Option<Meta>,
}

/// `GET /v1/servers/{id}` response body.
#[derive(Clone, Debug, Deserialize)]
pub struct GetServerResponse {
    /// The server.
    pub server: Server,
}

/// Response body holding one action (`DELETE /v1/servers/{id}`, `GET /v1/actions/{id}`).
#[derive(Clone, Debug, Deserialize)]
pub struct ActionResponse {
    /// The action.
    pub action: Action,
}

/// The `meta` object of list responses.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Meta {
    /// Page information.
    pub pagination: Pagination,
}

/// `meta.pagination`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Pagination {
    /// This page's number (from 1).
    pub page: u32,
    /// Entries per page (at most 50).
    pub per_page: u32,
    /// Previous page, if any.
    pub previous_page: Option<u32>,
    /// Next page, if any.
    pub next_page: Option<u32>,
    /// Last page, if known.
    pub last_page: Option<u32>,
    /// Total entries, if known.
    pub total_entries: Option<u32>,
}

/// A server object (the fields rgrid reads).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Server {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `initializing`, `starting`, `running`, `stopping`, `off`, `deleting`, `migrating`,
    /// `rebuilding` or `unknown`.
    pub status: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its server type.
    pub server_type: NamedRef,
    /// Its location.
    #[serde(default)]
    pub location: Option<NamedRef>,
    /// Public addresses.
    #[serde(default)]
    pub public_net: Option<PublicNet>,
}

/// An object of which only the name matters here (server type, location).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct NamedRef {
    /// Name, e.g. `cx33` or `fsn1`.
    pub name: String,
}

/// A server's public addresses.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PublicNet {
    /// IPv4, if any.
    #[serde(default)]
    pub ipv4: Option<Ipv4>,
}

/// A public IPv4 address.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Ipv4 {
    /// The address.
    pub ip: String,
}

/// An action: the API's handle on an asynchronous operation.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Action {
    /// Id.
    pub id: u64,
    /// What it does, e.g. `create_server`.
    pub command: String,
    /// `running`, `success` or `error`.
    pub status: ActionStatus,
    /// Progress in percent.
    #[serde(default)]
    pub progress: u32,
    /// Why it failed, when `status` is `error`.
    #[serde(default)]
    pub error: Option<ActionError>,
}

/// State of an action.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionStatus {
    /// Still going.
    Running,
    /// Done.
    Success,
    /// Failed; see `error`.
    Error,
}

/// The error of a failed action.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ActionError {
    /// Machine-readable code, e.g. `action_failed`.
    pub code: String,
    /// What happened.
    pub message: String,
}

/// The body of every error response: `{"error": {"code", "message", "details"}}`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ApiError,
}

/// An API error.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ApiError {
    /// Machine-readable code, e.g. `rate_limit_exceeded`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Code-specific details; for `invalid_input`, `{"fields": [{"name", "messages"}]}`.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}

/// One invalid field of an `invalid_input` error.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `name`.
    pub name: String,
    /// What is wrong with it.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// Parses an RFC 3339 time stamp as the API writes them (`2016-01-30T23:55:00+00:00`).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Formats a time stamp as RFC 3339 (used by fakes that speak the API).
pub fn format_time(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn time_stamps_round_trip() {
        let t = parse_time("2016-01-30T23:55:00+00:00").expect("a valid RFC 3339 time");
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_454_198_100));
        assert_eq!(parse_time("2016-01-31T00:55:00+01:00"), Some(t));
        assert_eq!(parse_time(&format_time(t)), Some(t));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn reads_a_documented_create_response() {
        let body = r#"{
          "server": {"id": 42, "name": "my-server", "status": "initializing",
            "created": "2016-01-30T23:50:00+00:00", "labels": {"env": "dev"},
            "server_type": {"id": 1, "name": "cx23", "cores": 2},
            "location": {"id": 1, "name": "fsn1"},
            "public_net": {"ipv4": {"ip": "1.2.3.4", "blocked": false}, "ipv6": null},
            "private_net": [], "volumes": []},
          "action": {"id": 1, "command": "create_server", "status": "running", "progress": 0,
            "started": "2016-01-30T23:50:00+00:00", "finished": null,
            "resources": [{"id": 42, "type": "server"}], "error": null},
          "next_actions": [{"id": 2, "command": "start_server", "status": "running",
            "progress": 0, "started": "2016-01-30T23:50:00+00:00", "finished": null,
            "resources": [{"id": 42, "type": "server"}], "error": null}],
          "root_password": "YItygq1v3GYjjMomLaKc"
        }"#;
        let r: CreateServerResponse =
            serde_json::from_str(body).expect("the documented response parses");
        assert_eq!(r.server.id, 42);
        assert_eq!(
            r.server
                .location
                .expect("the response names a location")
                .name,
            "fsn1"
        );
        assert_eq!(r.action.status, ActionStatus::Running);
        assert_eq!(r.next_actions[0].command, "start_server");
    }
}
