//! [`HcloudClient`]: the Hetzner Cloud REST client. It owns the HTTP details: bearer auth,
//! retries with exponential backoff and jitter for transient failures only, the `RateLimit-*`
//! and `Retry-After` headers, pagination, action polling, a short-lived listing cache (the
//! project's budget is 3,600 requests an hour), and deleting what a failed create made.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{ApiConfig, HcloudToken, USER_DATA_LIMIT};

use super::error::{FieldErrors, HcloudError};
use super::types::{
    Action, ActionResponse, ActionStatus, ApiError, CreateServerRequest, CreateServerResponse,
    ErrorResponse, FieldError, GetServerResponse, ListServersResponse, Server,
};

/// Metric: API requests sent, by method and HTTP status (`network` when no answer came).
const REQUESTS: &str = "rgrid_hetzner_requests_total";
/// Metric: failed API requests by the API's error code (`http_<status>` without one, `network`).
const ERRORS: &str = "rgrid_hetzner_errors_total";
/// Metric: the last `RateLimit-Remaining` the API reported.
const RATE_REMAINING: &str = "rgrid_hetzner_ratelimit_remaining";

/// Describes the client's metrics (their `HELP` lines).
fn describe_metrics() {
    metrics::describe_counter!(
        REQUESTS,
        "Hetzner Cloud API requests sent, by method and HTTP status (status=network: no answer)"
    );
    metrics::describe_counter!(
        ERRORS,
        "Failed Hetzner Cloud API requests by error code (the API's code, http_<status> without one, or network)"
    );
    metrics::describe_gauge!(
        RATE_REMAINING,
        "Hetzner Cloud API requests left in the project's hourly budget, as last reported (RateLimit-Remaining)"
    );
}

/// Entries per page when listing (the API's maximum).
const PER_PAGE: u32 = 50;
/// Stop following `next_page` after this many pages (a misbehaving server must not loop us).
const MAX_PAGES: u32 = 200;

/// The rate-limit state last reported by the API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimit {
    /// `RateLimit-Limit`: requests per hour.
    pub limit: Option<u32>,
    /// `RateLimit-Remaining`: requests left now.
    pub remaining: Option<u32>,
    /// `RateLimit-Reset`: when the budget is full again.
    pub reset: Option<SystemTime>,
}

impl RateLimit {
    /// How long to wait before the next request, if the budget is spent. The API refills one
    /// request every `hour / limit`, so that is the longest wait needed for one request; the
    /// reset time bounds it when it is sooner.
    pub fn wait_before_next(&self, now: SystemTime) -> Option<Duration> {
        if self.remaining != Some(0) {
            return None;
        }
        let refill = match self.limit {
            Some(limit) if limit > 0 => Duration::from_secs(3600) / limit,
            _ => Duration::from_secs(1),
        };
        let until_reset = self
            .reset
            .map(|r| r.duration_since(now).unwrap_or_default())
            .unwrap_or(refill);
        Some(refill.min(until_reset))
    }

    /// Takes in a response's `RateLimit-*` headers (`header` looks one up by its lower-case
    /// name); returns the wait the response asks for (`Retry-After`, or the refill time when
    /// the budget is spent). Any header value is safe: what does not parse, or does not fit,
    /// is ignored.
    pub fn note<'a>(
        &mut self,
        header: impl Fn(&str) -> Option<&'a str>,
        now: SystemTime,
    ) -> Option<Duration> {
        let num = |name: &str| -> Option<u64> { header(name)?.trim().parse().ok() };
        if let Some(limit) = num("ratelimit-limit") {
            self.limit = u32::try_from(limit).ok();
        }
        if let Some(remaining) = num("ratelimit-remaining") {
            self.remaining = u32::try_from(remaining).ok();
        }
        if let Some(reset) = num("ratelimit-reset") {
            // A reset past what a SystemTime holds is no reset (adding it would panic).
            self.reset = UNIX_EPOCH.checked_add(Duration::from_secs(reset));
        }
        num("retry-after")
            .map(Duration::from_secs)
            .or_else(|| self.wait_before_next(now))
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Safe to repeat (GET, DELETE).
    Idempotent,
    /// Repeat only when the API certainly did not act on it (POST).
    IfNotProcessed,
}

/// A Hetzner Cloud API client. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct HcloudClient {
    http: reqwest::Client,
    base: String,
    token: HcloudToken,
    api: ApiConfig,
    rate: Mutex<RateLimit>,
    /// Label selector → (when fetched, servers). Invalidated by creates and deletes.
    cache: Mutex<HashMap<String, (Instant, Vec<Server>)>>,
}

impl std::fmt::Debug for HcloudClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HcloudClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded data stays consistent even if a holder panicked (plain assignments only).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HcloudClient {
    /// A client for the API at `base_url` (e.g. `https://api.hetzner.cloud/v1`).
    pub fn new(base_url: &str, token: HcloudToken, api: ApiConfig) -> Result<Self, HcloudError> {
        let http = reqwest::Client::builder()
            .timeout(api.request_timeout)
            .user_agent(concat!("rgrid-cloud/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(HcloudError::Client)?;
        describe_metrics();
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token,
            api,
            rate: Mutex::new(RateLimit::default()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The rate-limit state from the last response.
    pub fn rate_limit(&self) -> RateLimit {
        *lock(&self.rate)
    }

    /// Every server matching `label_selector` (empty: all), following `meta.pagination`.
    /// Served from a cache younger than `list_cache_ttl` when possible.
    pub async fn list_servers(&self, label_selector: &str) -> Result<Vec<Server>, HcloudError> {
        if let Some((at, servers)) = lock(&self.cache).get(label_selector) {
            if at.elapsed() < self.api.list_cache_ttl {
                return Ok(servers.clone());
            }
        }
        let mut servers = Vec::new();
        let mut page = 1;
        for _ in 0..MAX_PAGES {
            let resp = self.list_servers_page(label_selector, page).await?;
            servers.extend(resp.servers);
            match resp.meta.and_then(|m| m.pagination.next_page) {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        lock(&self.cache).insert(label_selector.to_owned(), (Instant::now(), servers.clone()));
        Ok(servers)
    }

    /// One page of servers matching `label_selector`.
    pub async fn list_servers_page(
        &self,
        label_selector: &str,
        page: u32,
    ) -> Result<ListServersResponse, HcloudError> {
        let mut query = vec![
            ("page", page.to_string()),
            ("per_page", PER_PAGE.to_string()),
        ];
        if !label_selector.is_empty() {
            query.push(("label_selector", label_selector.to_owned()));
        }
        self.call(Method::GET, "/servers", &query, None, Retry::Idempotent)
            .await
    }

    /// Servers with exactly this name (zero or one).
    async fn servers_named(&self, name: &str) -> Result<Vec<Server>, HcloudError> {
        let query = [("name", name.to_owned())];
        let resp: ListServersResponse = self
            .call(Method::GET, "/servers", &query, None, Retry::Idempotent)
            .await?;
        Ok(resp.servers)
    }

    /// One server, or `None` if it does not exist.
    pub async fn get_server(&self, id: u64) -> Result<Option<Server>, HcloudError> {
        let path = format!("/servers/{id}");
        match self
            .call::<GetServerResponse>(Method::GET, &path, &[], None, Retry::Idempotent)
            .await
        {
            Ok(r) => Ok(Some(r.server)),
            Err(HcloudError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts deleting a server; `None` when it was already gone.
    pub async fn delete_server(&self, id: u64) -> Result<Option<Action>, HcloudError> {
        let path = format!("/servers/{id}");
        let result = self
            .call::<ActionResponse>(Method::DELETE, &path, &[], None, Retry::Idempotent)
            .await;
        lock(&self.cache).clear();
        match result {
            Ok(r) => {
                info!(server = id, "deleting server");
                Ok(Some(r.action))
            }
            Err(HcloudError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One action.
    pub async fn get_action(&self, id: u64) -> Result<Action, HcloudError> {
        let path = format!("/actions/{id}");
        let r: ActionResponse = self
            .call(Method::GET, &path, &[], None, Retry::Idempotent)
            .await?;
        Ok(r.action)
    }

    /// Polls until every action succeeded (or one failed), with intervals growing from
    /// `action_poll` to `action_poll_max`, for at most `action_timeout`.
    pub async fn wait_for_actions(&self, actions: &[Action]) -> Result<(), HcloudError> {
        let start = Instant::now();
        let mut pending: Vec<Action> = Vec::new();
        for a in actions {
            check_action(a)?;
            if a.status == ActionStatus::Running {
                pending.push(a.clone());
            }
        }
        let mut interval = self.api.action_poll;
        while !pending.is_empty() {
            if start.elapsed() >= self.api.action_timeout {
                let a = &pending[0];
                return Err(HcloudError::ActionTimeout {
                    id: a.id,
                    command: a.command.clone(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 3 / 2).min(self.api.action_poll_max);
            let mut still = Vec::new();
            for a in pending {
                let now = self.get_action(a.id).await?;
                check_action(&now)?;
                if now.status == ActionStatus::Running {
                    still.push(now);
                }
            }
            pending = still;
        }
        Ok(())
    }

    /// Sends `POST /servers` once (retrying only failures the API certainly did not act on)
    /// and returns the raw response; does not wait for the actions. Prefer
    /// [`HcloudClient::create_server_and_wait`].
    pub async fn create_server(
        &self,
        request: &CreateServerRequest,
    ) -> Result<CreateServerResponse, HcloudError> {
        if let Some(data) = &request.user_data {
            if data.len() > USER_DATA_LIMIT {
                return Err(HcloudError::InvalidInput {
                    message: "user data too large (checked before sending)".into(),
                    fields: FieldErrors(vec![FieldError {
                        name: "user_data".into(),
                        messages: vec![format!(
                            "is {} bytes; Hetzner accepts at most {USER_DATA_LIMIT}",
                            data.len()
                        )],
                    }]),
                });
            }
        }
        let body = serde_json::to_vec(request).map_err(|e| HcloudError::Decode {
            what: "server create request".into(),
            status: 0,
            detail: e.to_string(),
        })?;
        let result = self
            .call(
                Method::POST,
                "/servers",
                &[],
                Some(body),
                Retry::IfNotProcessed,
            )
            .await;
        lock(&self.cache).clear();
        result
    }

    /// Creates a server and waits for its `action` and `next_actions`. If the create request
    /// fails ambiguously (timeout, server error), looks the name up and deletes what it finds;
    /// if an action fails, deletes the server. Either way nothing is left running and billed
    /// behind an error — or the error says which server to delete by hand.
    pub async fn create_server_and_wait(
        &self,
        request: &CreateServerRequest,
    ) -> Result<Server, HcloudError> {
        let created = match self.create_server(request).await {
            Ok(created) => created,
            Err(err) => {
                if err.may_have_been_processed() {
                    warn!(name = %request.name, error = %err, "create request failed ambiguously; deleting any server it made");
                    if let Err(cleanup) = self.delete_named(&request.name).await {
                        warn!(name = %request.name, error = %cleanup, "could not check for a half-created server");
                    }
                }
                return Err(err);
            }
        };
        let id = created.server.id;
        info!(server = id, name = %created.server.name, server_type = %request.server_type, location = %request.location, "server created; waiting for its actions");
        let mut actions = vec![created.action];
        actions.extend(created.next_actions);
        if let Err(err) = self.wait_for_actions(&actions).await {
            warn!(server = id, error = %err, "server creation failed; deleting the server");
            return match self.delete_server(id).await {
                Ok(_) => Err(err),
                Err(delete) => Err(HcloudError::CleanupFailed {
                    server: id,
                    create: Box::new(err),
                    delete: Box::new(delete),
                }),
            };
        }
        match self.get_server(id).await {
            Ok(Some(server)) => Ok(server),
            Ok(None) | Err(_) => Ok(created.server),
        }
    }

    async fn delete_named(&self, name: &str) -> Result<(), HcloudError> {
        for server in self.servers_named(name).await? {
            self.delete_server(server.id).await?;
        }
        Ok(())
    }

    /// Sends one API request with retries; decodes the success body as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        retry: Retry,
    ) -> Result<T, HcloudError> {
        let url = format!("{}{}", self.base, path);
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            self.wait_for_budget().await;
            let (err, retry_after) = match self
                .send_once(&method, &url, query, body.as_ref(), attempt)
                .await
            {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| HcloudError::Decode {
                        what: format!("{method} {path}"),
                        status: 200,
                        detail: e.to_string(),
                    })
                }
                Err(failure) => failure,
            };
            let retryable = err.is_transient()
                && attempt <= self.api.max_retries
                && (retry == Retry::Idempotent || !err.may_have_been_processed());
            if !retryable {
                return Err(err);
            }
            let delay = retry_after
                .unwrap_or_else(|| self.backoff(attempt))
                .min(self.api.backoff_max);
            warn!(%method, %path, attempt, delay_ms = delay.as_millis() as u64, error = %err, "Hetzner API request failed; retrying");
            tokio::time::sleep(delay).await;
            // The wait above already honoured the reported budget.
            lock(&self.rate).remaining = None;
        }
    }

    /// One HTTP exchange: the body of a success, or the error and how long the API asked us
    /// to wait.
    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Vec<u8>>,
        attempt: u32,
    ) -> Result<Vec<u8>, (HcloudError, Option<Duration>)> {
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(self.token.expose())
            .query(query);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let network = |source| HcloudError::Network {
            url: url.to_owned(),
            attempts: attempt,
            source,
        };
        let sent = |status: &str| {
            metrics::counter!(REQUESTS, "method" => method.to_string(), "status" => status.to_owned())
                .increment(1);
        };
        let network_error = |e| {
            sent("network");
            metrics::counter!(ERRORS, "code" => "network").increment(1);
            (network(e), None)
        };
        let response = request.send().await.map_err(&network_error)?;
        let status = response.status();
        let retry_after = self.note_headers(response.headers());
        let bytes = response.bytes().await.map_err(&network_error)?;
        debug!(%method, url, status = status.as_u16(), "Hetzner API");
        sent(status.as_str());
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let error = match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(body) => body.error,
            Err(_) => ApiError {
                code: format!("http_{}", status.as_u16()),
                message: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                details: None,
            },
        };
        metrics::counter!(ERRORS, "code" => error.code.clone()).increment(1);
        Err((
            HcloudError::from_api(status.as_u16(), error, attempt),
            retry_after,
        ))
    }

    /// Records the `RateLimit-*` headers; returns the wait the response asks for
    /// (`Retry-After`, or the refill time when the budget is spent).
    fn note_headers(&self, headers: &HeaderMap) -> Option<Duration> {
        let mut rate = lock(&self.rate);
        let wait = rate.note(|name| headers.get(name)?.to_str().ok(), SystemTime::now());
        let reported = headers.contains_key("ratelimit-remaining");
        if let Some(remaining) = rate.remaining.filter(|_| reported) {
            metrics::gauge!(RATE_REMAINING).set(f64::from(remaining));
            if let Some(limit) = rate.limit.filter(|limit| remaining < limit / 20) {
                warn!(
                    remaining,
                    limit, "Hetzner API budget nearly spent (shared by every token of the project)"
                );
            }
        }
        wait
    }

    /// Waits while the reported budget is spent.
    async fn wait_for_budget(&self) {
        let wait = lock(&self.rate).wait_before_next(SystemTime::now());
        if let Some(wait) = wait {
            let wait = wait.min(self.api.backoff_max);
            info!(
                wait_ms = wait.as_millis() as u64,
                "Hetzner API budget spent; waiting for it to refill"
            );
            tokio::time::sleep(wait).await;
            lock(&self.rate).remaining = None;
        }
    }

    /// Exponential backoff with equal jitter: half the step fixed, half random.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .api
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.api.backoff_max);
        let half = step / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_micros() as u64);
        half + Duration::from_micros(jitter)
    }
}

fn check_action(action: &Action) -> Result<(), HcloudError> {
    if action.status == ActionStatus::Error {
        let (code, message) = action
            .error
            .as_ref()
            .map(|e| (e.code.clone(), e.message.clone()))
            .unwrap_or_else(|| ("unknown".into(), "no error given".into()));
        return Err(HcloudError::ActionFailed {
            id: action.id,
            command: action.command.clone(),
            code,
            message,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_wait_uses_refill_or_reset_whichever_is_sooner() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let mut r = RateLimit {
            limit: Some(3600),
            remaining: Some(5),
            reset: Some(now + Duration::from_secs(100)),
        };
        assert_eq!(r.wait_before_next(now), None);
        r.remaining = Some(0);
        assert_eq!(r.wait_before_next(now), Some(Duration::from_secs(1)));
        r.limit = Some(1);
        assert_eq!(r.wait_before_next(now), Some(Duration::from_secs(100)));
        r.reset = Some(now - Duration::from_secs(1));
        assert_eq!(r.wait_before_next(now), Some(Duration::ZERO));
    }
}
