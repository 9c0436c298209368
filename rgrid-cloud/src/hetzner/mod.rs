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

/// The Hetzner Cloud [`Provider`].
#[derive(Debug)]
pub struct HetznerProvider {
    client: HcloudClient,
    /// Where the server-wide settings come from (image, SSH keys, networks, firewalls, public
    /// addresses).
    config: AutoscalerConfig,
}

impl HetznerProvider {
    /// A provider for the API and settings in `config`, authenticating with `token` (see
    /// [`HcloudToken::from_env`]).
    pub fn new(config: &AutoscalerConfig, token: HcloudToken) -> Result<Self, HcloudError> {
        Ok(Self {
            client: HcloudClient::new(&config.api_url, token, config.api.clone())?,
            config: config.clone(),
        })
    }

    /// A provider over an existing client, with the server settings of `config`.
    pub fn with_client(client: HcloudClient, config: AutoscalerConfig) -> Self {
        Self { client, config }
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
            image: self.config.image.clone(),
            location: request.location.clone(),
            ssh_keys: self.config.ssh_keys.clone(),
            user_data: (!request.user_data.is_empty()).then(|| request.user_data.clone()),
            labels: request.labels.clone(),
            start_after_create: true,
            networks: self.config.networks.clone(),
            firewalls: self
                .config
                .firewalls
                .iter()
                .map(|&firewall| FirewallRef { firewall })
                .collect(),
            public_net: PublicNetRequest {
                enable_ipv4: self.config.enable_ipv4,
                enable_ipv6: self.config.enable_ipv6,
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
