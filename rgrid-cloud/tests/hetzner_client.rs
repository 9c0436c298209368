//! The real Hetzner client and provider against a local fake of the API: pagination, the
//! listing cache, rate limits (429 with Retry-After / RateLimit-Reset, a spent budget), typed
//! errors (quota, sold out, invalid input with fields, unauthorized), retries of transient
//! failures only, cleanup of a create whose action failed, a placement error, the documented
//! label-selector operators, a server's status over its boot, and a budget every request spends.

mod fake_hetzner;

use std::time::{Duration, Instant};

use anyhow::Context;
use fake_hetzner::{FakeHetzner, Scripted, TOKEN};
use rgrid_cloud::config::ApiConfig;
use rgrid_cloud::hetzner::{HcloudClient, HcloudError, HetznerProvider};
use rgrid_cloud::provider::{cluster_labels, CreateServer, FailureKind, Provider, ServerStatus};
use rgrid_cloud::{AutoscalerConfig, HcloudToken};
use serde_json::json;

fn api() -> ApiConfig {
    ApiConfig {
        request_timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_secs(3),
        action_poll: Duration::from_millis(10),
        action_poll_max: Duration::from_millis(20),
        action_timeout: Duration::from_secs(5),
        list_cache_ttl: Duration::from_secs(60),
    }
}

fn client(fake: &FakeHetzner) -> anyhow::Result<HcloudClient> {
    HcloudClient::new(&fake.url(), HcloudToken::new(TOKEN), api()).context("client")
}

fn provider(fake: &FakeHetzner) -> anyhow::Result<HetznerProvider> {
    let config = AutoscalerConfig {
        api_url: fake.url(),
        api: api(),
        ssh_keys: vec!["ops".into()],
        firewalls: vec![7],
        networks: vec![11],
        enable_ipv4: false,
        ..AutoscalerConfig::default()
    };
    HetznerProvider::new(&config, HcloudToken::new(TOKEN)).context("provider")
}

fn request(name: &str, node_type: &str, location: &str) -> CreateServer {
    CreateServer {
        name: name.into(),
        node_type: node_type.into(),
        location: location.into(),
        labels: cluster_labels("c1", node_type),
        user_data: "#cloud-config\n".into(),
    }
}

#[tokio::test]
async fn lists_every_page_and_caches_the_listing() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    for i in 0..120 {
        fake.add_server(&format!("c1-{i}"), &[("rgrid-cluster", "c1")]);
    }
    for i in 0..7 {
        fake.add_server(&format!("other-{i}"), &[("rgrid-cluster", "c2")]);
    }
    let provider = provider(&fake)?;
    let servers = provider.list("rgrid-cluster=c1").await?;
    assert_eq!(servers.len(), 120);
    assert!(servers.iter().all(|s| s.labels["rgrid-cluster"] == "c1"));
    assert_eq!(servers[0].status, ServerStatus::Running);
    assert_eq!(servers[0].location.as_deref(), Some("fsn1"));
    let pages: Vec<String> = fake
        .requests("GET", "/v1/servers")
        .iter()
        .map(|l| format!("{}/{}", l.query["page"], l.query["per_page"]))
        .collect();
    assert_eq!(pages, ["1/50", "2/50", "3/50"]);
    assert_eq!(
        fake.requests("GET", "/v1/servers")[0].query["label_selector"],
        "rgrid-cluster=c1"
    );

    // Served from the cache: no new request.
    assert_eq!(provider.list("rgrid-cluster=c1").await?.len(), 120);
    assert_eq!(fake.requests("GET", "/v1/servers").len(), 3);
    // A delete invalidates it.
    provider.delete(servers[0].id).await?;
    assert_eq!(provider.list("rgrid-cluster=c1").await?.len(), 119);
    Ok(())
}

#[tokio::test]
async fn create_sends_location_and_settings_and_waits_for_every_action() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let provider = provider(&fake)?;
    let server = provider
        .create(&request("c1-cx33-a", "cx33", "nbg1"))
        .await?;
    assert_eq!(server.name, "c1-cx33-a");
    assert_eq!(server.node_type, "cx33");
    assert_eq!(server.location.as_deref(), Some("nbg1"));
    assert_eq!(server.status, ServerStatus::Running);

    let posts = fake.requests("POST", "/v1/servers");
    assert_eq!(posts.len(), 1);
    let body = posts[0].body.clone().context("body")?;
    assert_eq!(body["location"], "nbg1");
    assert!(body.get("datacenter").is_none());
    assert_eq!(body["image"], "ubuntu-24.04");
    assert_eq!(body["ssh_keys"], json!(["ops"]));
    assert_eq!(body["networks"], json!([11]));
    assert_eq!(body["firewalls"], json!([{ "firewall": 7 }]));
    assert_eq!(
        body["public_net"],
        json!({ "enable_ipv4": false, "enable_ipv6": true })
    );
    assert_eq!(body["start_after_create"], true);
    assert_eq!(body["labels"]["rgrid-cluster"], "c1");
    assert_eq!(body["user_data"], "#cloud-config\n");
    // Both the create_server action and the start_server next action were polled to success.
    let polled: Vec<String> = fake
        .requests("GET", "/v1/actions/")
        .iter()
        .map(|l| l.path.clone())
        .collect();
    assert!(
        polled.iter().filter(|p| p.ends_with("/2")).count() >= 2,
        "{polled:?}"
    );
    assert!(
        polled.iter().filter(|p| p.ends_with("/3")).count() >= 2,
        "{polled:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_create_whose_action_fails_deletes_the_server() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.state().fail_next_create_action =
        Some(("action_failed".into(), "could not boot the image".into()));
    let provider = provider(&fake)?;
    let err = provider
        .create(&request("c1-cx23-b", "cx23", "fsn1"))
        .await
        .expect_err("the action failed");
    let text = err.to_string();
    assert!(
        text.contains("create_server") && text.contains("could not boot"),
        "{text}"
    );
    assert_eq!(
        fake.server_count(),
        0,
        "the half-created server was deleted"
    );
    assert_eq!(fake.requests("DELETE", "/v1/servers/").len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_ambiguous_create_failure_cleans_up_by_name() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    // The API made the server but answered 500: the client looks the name up and deletes it.
    fake.add_server("c1-cx23-c", &[("rgrid-cluster", "c1")]);
    fake.state().script.push_back(Scripted {
        method: "POST",
        path_prefix: "/v1/servers",
        status: 500,
        headers: vec![],
        body: json!({"error": {"code": "server_error", "message": "internal error", "details": null}}),
    });
    let provider = provider(&fake)?;
    let err = provider
        .create(&request("c1-cx23-c", "cx23", "fsn1"))
        .await
        .expect_err("500");
    assert!(err.to_string().contains("internal problem"), "{err}");
    assert_eq!(
        fake.requests("POST", "/v1/servers").len(),
        1,
        "a create is not retried blindly"
    );
    let lookups = fake.requests("GET", "/v1/servers");
    assert_eq!(
        lookups[0].query.get("name").map(String::as_str),
        Some("c1-cx23-c")
    );
    assert_eq!(fake.server_count(), 0);
    Ok(())
}

#[tokio::test]
async fn rate_limited_requests_honour_retry_after() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.state()
        .script
        .push_back(fake_hetzner::too_many(Some(1), 3600));
    let client = client(&fake)?;
    let start = Instant::now();
    client.list_servers("").await?;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(fake.requests("GET", "/v1/servers").len(), 2);
    Ok(())
}

#[tokio::test]
async fn rate_limited_requests_honour_the_ratelimit_headers() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    // No Retry-After: the budget refills one request per second (3600 an hour), sooner than
    // the reset an hour away, so about one second.
    fake.state()
        .script
        .push_back(fake_hetzner::too_many(None, 3600));
    let client = client(&fake)?;
    let start = Instant::now();
    client.list_servers("").await?;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    let rate = client.rate_limit();
    assert_eq!(rate.limit, Some(3600));
    assert_eq!(rate.remaining, Some(3599));
    assert!(rate.reset.is_some());

    // Persistent 429s give up after max_retries with an error that explains the budget.
    for _ in 0..4 {
        let mut s = fake_hetzner::too_many(Some(0), 0);
        s.path_prefix = "/v1/servers/";
        fake.state().script.push_back(s);
    }
    let err = client.get_server(1).await.expect_err("429s");
    assert!(
        matches!(err, HcloudError::RateLimited { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("3,600 requests an hour"), "{err}");
    assert_eq!(err.kind(), FailureKind::RateLimited);
    Ok(())
}

#[tokio::test]
async fn absurd_rate_limit_headers_neither_panic_nor_stall() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let mut s = fake_hetzner::too_many(Some(u64::MAX), 0);
    for (name, value) in &mut s.headers {
        if name == "RateLimit-Reset" || name == "RateLimit-Limit" {
            *value = u64::MAX.to_string();
        }
    }
    fake.state().script.push_back(s);
    let client = client(&fake)?;
    let start = Instant::now();
    let listed = tokio::time::timeout(Duration::from_secs(20), client.list_servers("")).await;
    assert!(listed.is_ok(), "the client stalled");
    listed??;
    // The wait was capped by backoff_max, whatever the headers said.
    assert!(start.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test]
async fn a_spent_budget_delays_the_next_request() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.state().remaining = 0;
    let client = client(&fake)?;
    client.list_servers("a=b").await?;
    fake.state().remaining = 100;
    client.list_servers("c=d").await?;
    let gets = fake.requests("GET", "/v1/servers");
    let gap = fake_hetzner::elapsed_between(&gets[0], &gets[1]);
    assert!(gap >= Duration::from_millis(950), "gap {gap:?}");
    Ok(())
}

#[tokio::test]
async fn quota_and_sold_out_are_typed_and_not_retried() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let provider = provider(&fake)?;
    fake.state().sold_out.insert(("cx53".into(), "fsn1".into()));
    let err = provider
        .create(&request("c1-cx53-a", "cx53", "fsn1"))
        .await
        .expect_err("sold out");
    assert_eq!(err.kind(), FailureKind::Unavailable);
    assert!(
        err.to_string().contains("another location or type"),
        "{err}"
    );
    // The same type in another location works.
    provider
        .create(&request("c1-cx53-b", "cx53", "hel1"))
        .await?;

    fake.state().quota = Some(1);
    let err = provider
        .create(&request("c1-cx23-q", "cx23", "fsn1"))
        .await
        .expect_err("quota");
    assert_eq!(err.kind(), FailureKind::Quota);
    assert!(err.to_string().contains("quota"), "{err}");
    assert_eq!(fake.requests("POST", "/v1/servers").len(), 3, "no retries");
    Ok(())
}

#[tokio::test]
async fn invalid_input_names_the_fields_and_uniqueness_is_typed() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let provider = provider(&fake)?;
    let err = provider
        .create(&request("c1-x", "cx999", "fsn1"))
        .await
        .expect_err("bad type");
    let text = err.to_string();
    assert!(
        text.contains("server_type: server type \"cx999\" not found"),
        "{text}"
    );
    match err {
        rgrid_cloud::ProviderError::Hetzner(HcloudError::InvalidInput { fields, .. }) => {
            assert_eq!(fields.0[0].name, "server_type");
        }
        other => anyhow::bail!("expected invalid_input, got {other:?}"),
    }

    provider.create(&request("c1-same", "cx23", "fsn1")).await?;
    let err = provider
        .create(&request("c1-same", "cx23", "fsn1"))
        .await
        .expect_err("taken");
    assert!(
        matches!(
            err,
            rgrid_cloud::ProviderError::Hetzner(HcloudError::Uniqueness { .. })
        ),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_token_is_reported_without_leaking() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let secret = "wrong-secret-token-xyz";
    let client = HcloudClient::new(&fake.url(), HcloudToken::new(secret), api())?;
    let err = client.list_servers("").await.expect_err("401");
    assert!(matches!(err, HcloudError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains("HCLOUD_TOKEN"), "{err}");
    assert!(!format!("{err} {err:?} {client:?}").contains(secret));
    assert_eq!(fake.requests("GET", "/v1/servers").len(), 1, "not retried");
    Ok(())
}

#[tokio::test]
async fn transient_server_errors_are_retried_then_reported() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let unavailable = || Scripted {
        method: "GET",
        path_prefix: "/v1/servers",
        status: 503,
        headers: vec![],
        body: json!({"error": {"code": "unavailable", "message": "service unavailable", "details": null}}),
    };
    fake.state().script.push_back(unavailable());
    let client = client(&fake)?;
    client.list_servers("").await?;
    assert_eq!(fake.requests("GET", "/v1/servers").len(), 2);

    for _ in 0..4 {
        fake.state().script.push_back(unavailable());
    }
    let err = client.list_servers("x=y").await.expect_err("503s");
    assert!(
        matches!(err, HcloudError::Server { attempts: 4, .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_api_is_a_network_error_after_retries() -> anyhow::Result<()> {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    let client = HcloudClient::new(&format!("http://{addr}/v1"), HcloudToken::new(TOKEN), api())?;
    let err = client.list_servers("").await.expect_err("refused");
    assert!(
        matches!(err, HcloudError::Network { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("could not reach"), "{err}");
    Ok(())
}

#[tokio::test]
async fn deleting_a_missing_server_succeeds() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let provider = provider(&fake)?;
    provider.delete(rgrid_cloud::ServerId(4242)).await?;
    assert!(provider.client().get_server(4242).await?.is_none());
    Ok(())
}

#[tokio::test]
async fn server_settings_come_from_the_config() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let settings = AutoscalerConfig {
        image: "debian-12".into(),
        enable_ipv6: false,
        ..AutoscalerConfig::default()
    };
    let provider = HetznerProvider::with_client(client(&fake)?, settings);
    let req = provider.request_for(&request("n", "cx23", "fsn1"));
    assert_eq!(req.image, "debian-12");
    assert!(
        !format!("{req:?}").contains("#cloud-config"),
        "user data is not logged"
    );
    Ok(())
}

#[tokio::test]
async fn label_selectors_use_every_documented_operator() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.add_server("prod-a", &[("env", "production"), ("type", "web")]);
    fake.add_server("prod-db", &[("env", "production"), ("type", "database")]);
    fake.add_server("stage", &[("env", "staging")]);
    fake.add_server("bare", &[]);
    let client = client(&fake)?;
    let names = |servers: Vec<rgrid_cloud::hetzner::types::Server>| {
        let mut names: Vec<String> = servers.into_iter().map(|s| s.name).collect();
        names.sort();
        names
    };
    // Hetzner's own examples.
    assert_eq!(
        names(client.list_servers("env=production,type!=database").await?),
        ["prod-a"]
    );
    assert_eq!(
        names(client.list_servers("env in (testing,staging)").await?),
        ["stage"]
    );
    assert_eq!(
        names(client.list_servers("!type").await?),
        ["bare", "stage"]
    );
    assert_eq!(
        names(client.list_servers("env notin (staging),env").await?),
        ["prod-a", "prod-db"]
    );
    assert_eq!(names(client.list_servers("type==web").await?), ["prod-a"]);
    // A selector the API cannot parse is invalid input, not an empty listing.
    let err = client
        .list_servers("env in (staging")
        .await
        .expect_err("unbalanced");
    assert!(matches!(err, HcloudError::InvalidInput { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_new_server_boots_through_initializing_and_starting() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.state().boot_phases = (Duration::from_millis(300), Duration::from_millis(300));
    let provider = provider(&fake)?;
    let created = provider
        .create(&request("c1-cx23-s", "cx23", "fsn1"))
        .await?;
    assert_eq!(created.status, ServerStatus::Starting);
    // The statuses a poller sees, in order, without repeats.
    let client = client(&fake)?;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.last().map(String::as_str) != Some("running") && Instant::now() < deadline {
        let server = client
            .get_server(created.id.0)
            .await?
            .context("it exists")?;
        if seen.last() != Some(&server.status) {
            seen.push(server.status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, ["initializing", "starting", "running"]);
    let listed = provider.list("rgrid-cluster=c1").await?;
    assert_eq!(listed[0].status, ServerStatus::Running);
    Ok(())
}

#[tokio::test]
async fn every_request_spends_the_rate_limit_budget() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    let client = client(&fake)?;
    let mut seen = Vec::new();
    for _ in 0..3 {
        client.get_server(1).await?;
        seen.push(client.rate_limit().remaining.context("the header")?);
    }
    assert_eq!(seen, [3599, 3598, 3597]);
    // It refills one a second.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    client.get_server(1).await?;
    assert_eq!(client.rate_limit().remaining, Some(3598));
    Ok(())
}

#[tokio::test]
async fn a_placement_error_is_sold_out_there_and_not_retried() -> anyhow::Result<()> {
    let fake = FakeHetzner::start().await;
    fake.state().refuse_next_create = Some("placement_error".into());
    let provider = provider(&fake)?;
    let err = provider
        .create(&request("c1-cx33-p", "cx33", "nbg1"))
        .await
        .expect_err("placement failed");
    // The policy then tries the next location or type.
    assert_eq!(err.kind(), FailureKind::Unavailable);
    assert_eq!(fake.requests("POST", "/v1/servers").len(), 1, "no retry");
    assert_eq!(fake.server_count(), 0);
    // The next create goes through.
    provider
        .create(&request("c1-cx33-q", "cx33", "nbg1"))
        .await?;
    assert_eq!(fake.server_count(), 1);
    Ok(())
}
