//! [`HcloudError`]: Hetzner Cloud API failures as typed errors whose messages say what to do,
//! built from the API's `{"error": {"code", "message", "details"}}` body, plus network, decode
//! and action failures. Also decides which failures are worth retrying.

use std::fmt;
use std::time::Duration;

use crate::provider::FailureKind;

use super::types::{ApiError, FieldError};

/// The fields an `invalid_input` error complained about, printed as `name: msg; other: msg`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", field.name, field.messages.join(", "))?;
        }
        Ok(())
    }
}

/// A Hetzner Cloud API operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HcloudError {
    #[error("Hetzner Cloud rejected the API token ({message}): set HCLOUD_TOKEN to a valid token of the project")]
    Unauthorized { message: String },
    #[error("Hetzner Cloud refused the operation ({message}): the token may be read-only; create a Read & Write token")]
    Forbidden { message: String },
    #[error("Hetzner Cloud rate limit exceeded ({message}) after {attempts} attempts: the project's 3,600 requests an hour are shared by every token; wait or reduce other API users")]
    RateLimited { message: String, attempts: u32 },
    #[error("Hetzner Cloud project quota reached ({message}): delete unused servers or ask Hetzner to raise the limit")]
    QuotaExceeded { message: String },
    #[error("Hetzner Cloud cannot provide this right now ({message}): the server type is probably sold out in this location; another location or type may work")]
    ResourceUnavailable { message: String },
    #[error("a resource with this name already exists in the Hetzner project ({message})")]
    Uniqueness { message: String },
    #[error("Hetzner Cloud rejected the request as invalid ({message}): {fields}")]
    InvalidInput {
        message: String,
        fields: FieldErrors,
    },
    #[error("not found on Hetzner Cloud ({message})")]
    NotFound { message: String },
    #[error("Hetzner Cloud had an internal problem ({code}: {message}) after {attempts} attempts; try again later or check status.hetzner.com")]
    Server {
        code: String,
        message: String,
        attempts: u32,
    },
    #[error("Hetzner Cloud answered HTTP {status} with error {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not reach the Hetzner Cloud API at {url} ({source}) after {attempts} attempts; check the network and autoscaler.api_url")]
    Network {
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("unexpected response from the Hetzner Cloud API (HTTP {status}) to {what}: {detail}")]
    Decode {
        what: String,
        status: u16,
        detail: String,
    },
    #[error("Hetzner Cloud action {id} ({command}) failed: {code}: {message}")]
    ActionFailed {
        id: u64,
        command: String,
        code: String,
        message: String,
    },
    #[error(
        "Hetzner Cloud action {id} ({command}) still running after {waited:?}; giving up on it"
    )]
    ActionTimeout {
        id: u64,
        command: String,
        waited: Duration,
    },
    #[error("{create}; deleting the half-created server {server} also failed ({delete}): delete it in the Hetzner console to stop paying for it")]
    CleanupFailed {
        server: u64,
        create: Box<HcloudError>,
        delete: Box<HcloudError>,
    },
    #[error("could not build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl HcloudError {
    /// Builds the typed error from an error body.
    pub(crate) fn from_api(status: u16, error: ApiError, attempts: u32) -> Self {
        let ApiError {
            code,
            message,
            details,
        } = error;
        match code.as_str() {
            "unauthorized" => HcloudError::Unauthorized { message },
            "forbidden" | "token_readonly" => HcloudError::Forbidden { message },
            "rate_limit_exceeded" => HcloudError::RateLimited { message, attempts },
            "resource_limit_exceeded" => HcloudError::QuotaExceeded { message },
            "resource_unavailable" | "placement_error" => {
                HcloudError::ResourceUnavailable { message }
            }
            "uniqueness_error" => HcloudError::Uniqueness { message },
            "invalid_input" => {
                let fields = details
                    .and_then(|d| d.get("fields").cloned())
                    .and_then(|f| serde_json::from_value::<Vec<FieldError>>(f).ok())
                    .unwrap_or_default();
                HcloudError::InvalidInput {
                    message,
                    fields: FieldErrors(fields),
                }
            }
            "not_found" => HcloudError::NotFound { message },
            "server_error" | "service_error" | "unavailable" | "timeout" | "maintenance"
            | "conflict" | "locked" => HcloudError::Server {
                code,
                message,
                attempts,
            },
            _ if status == 401 => HcloudError::Unauthorized { message },
            _ if status == 429 => HcloudError::RateLimited { message, attempts },
            _ if status >= 500 => HcloudError::Server {
                code,
                message,
                attempts,
            },
            _ => HcloudError::Api {
                status,
                code,
                message,
            },
        }
    }

    /// Worth retrying with backoff: rate limits, backend hiccups, conflicts with a concurrent
    /// action, and connection failures.
    pub fn is_transient(&self) -> bool {
        match self {
            HcloudError::RateLimited { .. } | HcloudError::Server { .. } => true,
            HcloudError::Network { source, .. } => source.is_connect() || source.is_timeout(),
            _ => false,
        }
    }

    /// Whether the API may have carried out a request that failed this way (so retrying a
    /// create could duplicate it, and cleanup must look for what it made).
    pub(crate) fn may_have_been_processed(&self) -> bool {
        match self {
            HcloudError::Network { source, .. } => !source.is_connect(),
            HcloudError::Server { code, .. } => code != "maintenance" && code != "unavailable",
            HcloudError::Decode { .. } => true,
            _ => false,
        }
    }

    /// How the autoscaling policy should react.
    pub fn kind(&self) -> FailureKind {
        match self {
            HcloudError::ResourceUnavailable { .. } => FailureKind::Unavailable,
            HcloudError::QuotaExceeded { .. } => FailureKind::Quota,
            HcloudError::RateLimited { .. } => FailureKind::RateLimited,
            HcloudError::ActionFailed { code, .. }
                if code.contains("unavailable") || code.contains("placement") =>
            {
                FailureKind::Unavailable
            }
            HcloudError::CleanupFailed { create, .. } => create.kind(),
            _ => FailureKind::Other,
        }
    }
}
