//! Task images: a reference without a tag means `:latest` (an empty tag would pull every tag);
//! `pull_policy` says when to pull; images known to be present are remembered, so a task whose
//! image is here costs no engine call for it; a pull carries the registry's credentials from the
//! Docker client's `config.json`, is bounded by `pull_timeout` and stops when the attempt is
//! cancelled. A failed pull is the task's error (with the registry's message) unless it is a
//! fault of the node or the registry (5xx, 429, network trouble, the timeout): then the attempt
//! is handed back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;
use bollard::image::CreateImageOptions;
use bollard::Docker;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{docker_message, engine_fault, step};
use crate::config::PullPolicy;
use crate::executor::NotRun;
use crate::lock;

/// Most images remembered as present; past it the memory starts over (a check is one call).
const REMEMBERED: usize = 1024;

/// Docker Hub's key in `config.json`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// The node's images.
pub(crate) struct Images {
    docker: Docker,
    policy: PullPolicy,
    timeout: Duration,
    /// Directory of `config.json`; `None` when there is none to read.
    credentials_dir: Option<PathBuf>,
    /// References known to be present, checked once and trusted until a create says otherwise.
    present: Mutex<HashSet<String>>,
}

impl Images {
    pub(crate) fn new(
        docker: Docker,
        policy: PullPolicy,
        timeout: Duration,
        credentials_dir: Option<PathBuf>,
    ) -> Self {
        let credentials_dir = credentials_dir.or_else(|| {
            std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
        });
        Self {
            docker,
            policy,
            timeout,
            credentials_dir,
            present: Mutex::new(HashSet::new()),
        }
    }

    /// Makes `image` present as the pull policy says; returns the reference to create from.
    /// `pulling` is called when a pull starts.
    pub(crate) async fn ensure(
        &self,
        image: &str,
        cancel: &CancellationToken,
        pulling: impl FnOnce(),
    ) -> Result<String, NotRun> {
        let reference = normalize(image);
        let pull = match self.policy {
            PullPolicy::Always => true,
            PullPolicy::IfNotPresent | PullPolicy::Never => !self.is_present(&reference).await?,
        };
        if pull {
            if self.policy == PullPolicy::Never {
                return Err(NotRun::Task(format!(
                    "image {reference} is not present on the node and its pull_policy is never"
                )));
            }
            pulling();
            self.pull(&reference, cancel).await?;
            self.remember(&reference);
        }
        Ok(reference)
    }

    /// The engine no longer has `reference` (a create said so): check again next time.
    pub(crate) fn forget(&self, reference: &str) {
        lock(&self.present).remove(reference);
    }

    fn remember(&self, reference: &str) {
        let mut present = lock(&self.present);
        if present.len() >= REMEMBERED {
            present.clear();
        }
        present.insert(reference.to_owned());
    }

    async fn is_present(&self, reference: &str) -> Result<bool, NotRun> {
        if lock(&self.present).contains(reference) {
            return Ok(true);
        }
        match step("inspect_image", self.docker.inspect_image(reference)).await {
            Ok(_) => {
                self.remember(reference);
                Ok(true)
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(err) if engine_fault(&err) => Err(NotRun::Node(format!(
                "the Docker engine does not answer: {err}"
            ))),
            Err(err) => Err(NotRun::Task(format!(
                "cannot inspect image {reference}: {}",
                docker_message(&err)
            ))),
        }
    }

    async fn pull(&self, reference: &str, cancel: &CancellationToken) -> Result<(), NotRun> {
        let started = Instant::now();
        let credentials = self.credentials(reference).await;
        let options = CreateImageOptions {
            from_image: reference,
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(options), None, credentials);
        let pull = async {
            while let Some(item) = progress.next().await {
                match item {
                    Ok(info) => {
                        let error = info.error_detail.and_then(|d| d.message).or(info.error);
                        if let Some(message) = error {
                            return Err(classify(reference, &message));
                        }
                    }
                    Err(err) if engine_fault(&err) => {
                        return Err(NotRun::Node(format!(
                            "the Docker engine does not answer while pulling {reference}: {err}"
                        )))
                    }
                    Err(err) => return Err(classify(reference, &docker_message(&err))),
                }
            }
            Ok(())
        };
        let result = tokio::select! {
            result = pull => result,
            _ = tokio::time::sleep(self.timeout) => Err(NotRun::Node(format!(
                "pulling {reference} took longer than pull_timeout ({})",
                humantime::format_duration(self.timeout)
            ))),
            _ = cancel.cancelled() => Err(NotRun::Cancelled),
        };
        let outcome = match &result {
            Ok(()) => "pulled",
            Err(NotRun::Task(_)) => "failed",
            Err(NotRun::Node(_)) => "handed_back",
            Err(NotRun::Cancelled) => "cancelled",
        };
        metrics::counter!("rgrid_node_image_pulls_total", "outcome" => outcome).increment(1);
        metrics::histogram!("rgrid_node_image_pull_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        tracing::info!(image = %reference, outcome, elapsed = ?started.elapsed(), "image pull");
        result
    }

    /// The registry's credentials from `config.json` (and its credential helpers), if any.
    async fn credentials(&self, reference: &str) -> Option<DockerCredentials> {
        let file = self.credentials_dir.as_ref()?.join("config.json");
        let registry = registry_of(reference);
        let found = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::new(std::fs::File::open(file).ok()?);
            docker_credential::get_credential_from_reader(reader, &registry)
                .map(|c| (registry, c))
                .ok()
        })
        .await
        .ok()
        .flatten()?;
        let (registry, credential) = found;
        Some(match credential {
            docker_credential::DockerCredential::UsernamePassword(username, password) => {
                DockerCredentials {
                    username: Some(username),
                    password: Some(password),
                    serveraddress: Some(registry),
                    ..Default::default()
                }
            }
            docker_credential::DockerCredential::IdentityToken(token) => DockerCredentials {
                identitytoken: Some(token),
                serveraddress: Some(registry),
                ..Default::default()
            },
        })
    }
}

/// `busybox` → `busybox:latest`; a reference with a tag or a digest is kept.
pub(crate) fn normalize(image: &str) -> String {
    let image = image.trim();
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// The registry's key in `config.json`: the first path component when it names a host (it has
/// a `.` or a `:`, or is `localhost`), else Docker Hub.
fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => host.to_owned(),
        _ => DOCKER_HUB.to_owned(),
    }
}

/// A pull failure as the engine words it: the registry's or the network's fault (5xx, 429, a
/// connection that failed or timed out) hands the attempt back; anything else (no such image,
/// access denied) is the task's.
fn classify(reference: &str, message: &str) -> NotRun {
    let lower = message.to_lowercase();
    let transient = lower.contains("toomanyrequests")
        || lower.contains("too many requests")
        || lower.contains(" 429")
        || lower.contains("http status: 5")
        || ["500", "502", "503", "504"].iter().any(|code| {
            lower.contains(&format!("http {code}")) || lower.contains(&format!("status {code}"))
        })
        || lower.contains("service unavailable")
        || lower.contains("bad gateway")
        || lower.contains("gateway timeout")
        || lower.contains("connection refused")
        || lower.contains("connection reset")
        || lower.contains("i/o timeout")
        || lower.contains("tls handshake timeout")
        || lower.contains("temporary failure in name resolution")
        || lower.contains("unexpected eof");
    if transient {
        NotRun::Node(format!(
            "the registry failed while pulling {reference}: {message}"
        ))
    } else {
        NotRun::Task(format!(
            "image {reference} is not present on the node and could not be pulled: {message}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_tag_means_latest() {
        assert_eq!(normalize("busybox"), "busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "busybox:1.36");
        assert_eq!(
            normalize("127.0.0.1:5000/team/app"),
            "127.0.0.1:5000/team/app:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/team/app:v2"),
            "127.0.0.1:5000/team/app:v2"
        );
        assert_eq!(normalize("app@sha256:abcd"), "app@sha256:abcd");
    }

    #[test]
    fn registries_by_reference() {
        assert_eq!(registry_of("busybox:latest"), DOCKER_HUB);
        assert_eq!(registry_of("library/busybox:latest"), DOCKER_HUB);
        assert_eq!(registry_of("ghcr.io/acme/tool:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app:1"), "localhost");
    }

    #[test]
    fn registry_faults_hand_back_the_rest_fails_the_task() {
        // Messages as the engine words them.
        for message in [
            "received unexpected HTTP status: 503 Service Unavailable",
            "error parsing HTTP 429 response body: unexpected end of JSON input: \"\"",
            "toomanyrequests: You have reached your pull rate limit.",
            "Get \"http://127.0.0.1:5056/v2/\": dial tcp 127.0.0.1:5056: connect: connection refused",
            "Get \"https://r.example/v2/\": net/http: TLS handshake timeout",
            "received unexpected HTTP status: 502 Bad Gateway",
        ] {
            assert!(matches!(classify("x", message), NotRun::Node(_)), "{message}");
        }
        for message in [
            "manifest for 127.0.0.1:5055/nothere:latest not found: manifest unknown: manifest unknown",
            "pull access denied for nothere, repository does not exist or may require 'docker login'",
            "Head \"https://127.0.0.1:5059/v2/app/manifests/latest\": no basic auth credentials",
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io on 10.0.0.53:53: no such host",
        ] {
            assert!(matches!(classify("x", message), NotRun::Task(_)), "{message}");
        }
    }
}
