//! Hetzner Cloud: the REST client ([`client`]), its JSON shapes ([`types`]) and errors
//! ([`error`]), and [`HetznerProvider`], the [`Provider`] built on them that fills in the
//! cluster-wide server settings (image, SSH keys, networks, firewalls, public addresses).

pub mod client;
pub mod error;
pub mod types;

pub use client::{HcloudClient, RateLimit};
pub use error::HcloudError;

use crate::config::{AutoscalerConfig, HcloudToken};
use crate::provider::{
    BoxFuture, CloudServer, CreateServer, Provider, ProviderError, ServerId, ServerStatus,
};
use types::{CreateServerRequest, FirewallRef, PublicNetRequest, Server};

/// Settings applied to every server the provider creates.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSettings {
    /// OS image.
    pub image: String,
    /// SSH key names or ids.
    pub ssh_keys: Vec<String>,
    /// Private network ids.
    pub networks: Vec<u64>,
    /// Firewall ids.
    pub firewalls: Vec<u64>,
    /// Public IPv4.
    pub enable_ipv4: bool,
    /// Public IPv6.
    pub enable_ipv6: bool,
}

impl ServerSettings {
    /// The settings in an `[autoscaler]` section.
    pub fn from_config(config: &AutoscalerConfig) -> Self {
        Self {
            image: config.image.clone(),
            ssh_keys: config.ssh_keys.clone(),
            networks: config.networks.clone(),
            firewalls: config.firewalls.clone(),
            enable_ipv4: config.enable_ipv4,
            enable_ipv6: config.enable_ipv6,
        }
    }
}

/// The Hetzner Cloud [`Provider`].
#[derive(Debug)]
pub struct HetznerProvider {
    client: HcloudClient,
    settings: ServerSettings,
}

impl HetznerProvider {
    /// A provider for the API and settings in `config`, authenticating with `token` (see
    /// [`HcloudToken::from_env`]).
    pub fn new(config: &AutoscalerConfig, token: HcloudToken) -> Result<Self, HcloudError> {
        Ok(Self {
            client: HcloudClient::new(&config.api_url, token, config.api.clone())?,
            settings: ServerSettings::from_config(config),
        })
    }

    /// A provider over an existing client.
    pub fn with_client(client: HcloudClient, settings: ServerSettings) -> Self {
        Self { client, settings }
    }

    /// The underlying client (rate-limit state, raw calls).
    pub fn client(&self) -> &HcloudClient {
        &self.client
    }

    /// The API request for `request`.
    pub fn request_for(&self, request: &CreateServer) -> CreateServerRequest {
        CreateServerRequest {
            name: request.name.clone(),
            server_type: request.node_type.clone(),
            image: self.settings.image.clone(),
            location: request.location.clone(),
            ssh_keys: self.settings.ssh_keys.clone(),
            user_data: (!request.user_data.is_empty()).then(|| request.user_data.clone()),
            labels: request.labels.clone(),
            start_after_create: true,
            networks: self.settings.networks.clone(),
            firewalls: self
                .settings
                .firewalls
                .iter()
                .map(|&firewall| FirewallRef { firewall })
                .collect(),
            public_net: PublicNetRequest {
                enable_ipv4: self.settings.enable_ipv4,
                enable_ipv6: self.settings.enable_ipv6,
            },
        }
    }
}

/// Converts an API server object.
pub fn to_cloud_server(server: Server) -> Result<CloudServer, HcloudError> {
    let created = types::parse_time(&server.created).ok_or_else(|| HcloudError::Decode {
        what: format!("server {} creation time", server.id),
        status: 200,
        detail: format!("{:?} is not an RFC 3339 time", server.created),
    })?;
    let status = match server.status.as_str() {
        "initializing" | "starting" => ServerStatus::Starting,
        "running" => ServerStatus::Running,
        "stopping" | "off" | "deleting" | "migrating" | "rebuilding" => ServerStatus::Stopped,
        _ => ServerStatus::Unknown,
    };
    Ok(CloudServer {
        id: ServerId(server.id),
        name: server.name,
        node_type: server.server_type.name,
        location: server.location.map(|l| l.name),
        labels: server.labels,
        created,
        status,
        public_ipv4: server
            .public_net
            .and_then(|n| n.ipv4)
            .and_then(|ip| ip.ip.parse().ok()),
    })
}

impl Provider for HetznerProvider {
    fn create<'a>(
        &'a self,
        request: &'a CreateServer,
    ) -> BoxFuture<'a, Result<CloudServer, ProviderError>> {
        Box::pin(async move {
            let api_request = self.request_for(request);
            let server = self.client.create_server_and_wait(&api_request).await?;
            Ok(to_cloud_server(server)?)
        })
    }

    fn delete(&self, id: ServerId) -> BoxFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move {
            self.client.delete_server(id.0).await?;
            Ok(())
        })
    }

    fn list<'a>(
        &'a self,
        label_selector: &'a str,
    ) -> BoxFuture<'a, Result<Vec<CloudServer>, ProviderError>> {
        Box::pin(async move {
            let servers = self.client.list_servers(label_selector).await?;
            let mut out = Vec::with_capacity(servers.len());
            for s in servers {
                out.push(to_cloud_server(s)?);
            }
            Ok(out)
        })
    }
}
