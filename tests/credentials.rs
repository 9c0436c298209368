//! Credentials that expire, are renewed in place and can be revoked, against a real head and
//! real nodes on loopback QUIC: an expired certificate is refused at the handshake, a node
//! renews its certificate while it runs a task and reconnects with the renewed one (the old one
//! is revoked), a client renews its `client.toml`, a revoked client cannot connect, the head
//! renews its own server certificate in place.

mod common;

use std::time::Duration;

use common::{eventually, NodeCluster};
use rgrid::{Client, ClientError, TaskSpec, TaskState};
use rgrid_core::time::unix_ms;
use rgrid_core::tls::{client_config, CertInfo, ClientFile, ClientRole, ClusterCa, Identity};
use rgrid_core::transport::connect;
use rgrid_head::{Admin, HeadConfig};

/// The head's CA, loaded from its state dir (as `rgrid-head` administration does).
fn ca(cluster: &NodeCluster) -> ClusterCa {
    let dir = cluster.dir.path().join("head");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("the CA reads");
    ClusterCa::load(&read("ca.pem"), &read("ca.key")).expect("the CA loads")
}

fn admin_file(cluster: &NodeCluster) -> ClientFile {
    let text = std::fs::read_to_string(cluster.head_client_file()).expect("client.toml reads");
    toml::from_str(&text).expect("client.toml parses")
}

fn serial(pem: &str) -> String {
    CertInfo::from_pem(pem, "certificate")
        .expect("a certificate")
        .serial
}

/// Connects with `identity` without the client library's own checks; the head's answer to
/// the handshake (its refusal, or the error it closed the connection with).
async fn raw_connect(cluster: &NodeCluster, identity: &Identity) -> Result<(), String> {
    let file = admin_file(cluster);
    let tls = client_config(&file.ca_pem, identity).expect("a TLS config");
    let addr = file.head.parse().expect("an address");
    let (_endpoint, connection) = connect(addr, tls, "test")
        .await
        .map_err(|e| e.to_string())?;
    // The head closes a refused peer right after the handshake: a request shows it.
    rgrid_core::transport::call(&connection, &rgrid_core::protocol::Request::Status)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A new connection with the admin credentials, and the server certificate the head
/// presented to it.
async fn head_connection(cluster: &NodeCluster) -> (quinn::Endpoint, quinn::Connection, CertInfo) {
    let file = admin_file(cluster);
    let tls = client_config(&file.ca_pem, &file.identity()).expect("a TLS config");
    let addr = file.head.parse().expect("an address");
    let (endpoint, connection) = connect(addr, tls, "test").await.expect("connects");
    let chain = connection
        .peer_identity()
        .and_then(|chain| {
            chain
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .expect("the head's certificate chain");
    let cert = CertInfo::from_der(&chain[0]).expect("an X.509 certificate");
    (endpoint, connection, cert)
}

#[tokio::test]
async fn the_head_renews_its_server_certificate_in_place() {
    const LIFETIME: Duration = Duration::from_secs(3);
    let mut cluster = NodeCluster::start_with(|c| c.server_cert_lifetime = LIFETIME).await;
    // A connection and a node's session made under the first certificate.
    let (_endpoint, early, first) = head_connection(&cluster).await;
    assert!(
        first.not_after_ms <= unix_ms() + LIFETIME.as_millis() as u64,
        "{first:?}"
    );
    cluster
        .add_node(rgrid_node::NodeConfig {
            executor: rgrid_node::ExecutorKind::Process,
            ..cluster.node_config("early")
        })
        .await;
    let client = cluster.client().await;
    let task = client
        .submit(TaskSpec::new("sh").command(["sh", "-c", "sleep 4; echo done"]))
        .await
        .expect("submitted");
    tokio::time::sleep(Duration::from_millis(
        first.not_after_ms.saturating_sub(unix_ms()) + 1500,
    ))
    .await;
    assert!(first.expired(unix_ms()));
    // A new connection is served, under a newer certificate that has not expired.
    let (_endpoint, _connection, now) = head_connection(&cluster).await;
    assert_ne!(now.serial, first.serial);
    assert!(!now.expired(unix_ms()), "{now:?}");
    cluster.client().await.status().await.expect("served");
    // The connection made under the first certificate goes on, and so does the node's
    // session: its task ends as one attempt.
    rgrid_core::transport::call(&early, &rgrid_core::protocol::Request::Status)
        .await
        .expect("the early connection is served");
    let outcome = client.get(&task).await.expect("the task ends");
    assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
    assert_eq!(outcome.stdout, b"done\n");
    assert_eq!(outcome.attempts.len(), 1, "{:?}", outcome.attempts);
    // A node joins now (it checks the head's chain against its token's CA pin).
    cluster
        .add_node(rgrid_node::NodeConfig {
            executor: rgrid_node::ExecutorKind::Process,
            ..cluster.node_config("late")
        })
        .await;
    cluster.stop().await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused_at_the_handshake() {
    let cluster = NodeCluster::start().await;
    let identity = ca(&cluster)
        .issue_client("client:short", ClientRole::Admin, Duration::from_secs(1))
        .expect("a certificate");
    let file = ClientFile {
        cert_pem: identity.cert_pem.clone(),
        key_pem: identity.key_pem.clone(),
        ..admin_file(&cluster)
    };
    Client::connect(&file).await.expect("valid for a second");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The library says so before it tries.
    match Client::connect(&file).await {
        Err(ClientError::Expired { expires }) => {
            let err = Client::connect(&file)
                .await
                .err()
                .expect("expired")
                .to_string();
            assert!(
                err.contains("expired at") && err.contains(&expires),
                "{err}"
            );
        }
        Err(other) => panic!("expected an expiry error, got {other}"),
        Ok(_) => panic!("an expired certificate connected"),
    }
    // And the head refuses it in the TLS handshake whatever the peer does.
    let err = raw_connect(&cluster, &identity)
        .await
        .expect_err("the head refuses an expired certificate");
    assert!(err.to_lowercase().contains("expired"), "{err}");
    // A valid client is served meanwhile.
    cluster.client().await.status().await.expect("served");
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_renews_its_certificate_while_running_a_task_and_reconnects_with_it() {
    node_renewal(None).await;
}

#[tokio::test]
async fn a_node_renews_its_certificate_on_postgres() {
    if let Some(url) = common::postgres_database().await {
        node_renewal(Some(url)).await;
    }
}

async fn node_renewal(database_url: Option<String>) {
    const LIFETIME: Duration = Duration::from_secs(30);
    let cluster = NodeCluster::start_with(|c| {
        c.node_cert_lifetime = LIFETIME;
        c.database_url = database_url;
    })
    .await;
    let config = rgrid_node::NodeConfig {
        executor: rgrid_node::ExecutorKind::Process,
        ..cluster.node_config("renewing")
    };
    let state_dir = config.state_dir.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let first = tokio::spawn(rgrid_node::run(config.clone(), shutdown.clone()));
    let client = cluster.client().await;
    eventually("the node to be ready", 30, || async {
        let nodes = client.nodes().await.expect("nodes");
        nodes.iter().any(|n| n.state == "ready").then_some(())
    })
    .await;
    let read_cert = || std::fs::read_to_string(state_dir.join("node.pem")).expect("node.pem");
    let old_pem = read_cert();
    let old = CertInfo::from_pem(&old_pem, "node").expect("a certificate");
    let life = old.not_after_ms - old.not_before_ms;
    assert!(life <= LIFETIME.as_millis() as u64, "{life} ms");

    // A task that runs across the renewal, at two thirds of the certificate's life (20 s).
    let task = client
        .submit(TaskSpec::new("sh").command(["sh", "-c", "sleep 22; echo done"]))
        .await
        .expect("submitted");
    common::wait_for_state(&client, &task, TaskState::Running).await;
    let new_pem = eventually("the certificate to be renewed on disk", 40, || async {
        let pem = read_cert();
        (serial(&pem) != old.serial).then_some(pem)
    })
    .await;
    let new = CertInfo::from_pem(&new_pem, "node").expect("a certificate");
    assert!(new.not_after_ms > old.not_after_ms);
    assert_eq!(
        rgrid_core::tls::pem_certs(&new_pem, "node")
            .ok()
            .and_then(|c| rgrid_core::tls::PeerIdentity::from_cert(&c[0])),
        rgrid_core::tls::pem_certs(&old_pem, "node")
            .ok()
            .and_then(|c| rgrid_core::tls::PeerIdentity::from_cert(&c[0])),
        "same identity"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state_dir.join("node.pem"))
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The session was not dropped: the task ends as one attempt on the same node.
    let outcome = client.get(&task).await.expect("the task ends");
    assert_eq!(outcome.state, TaskState::Succeeded, "{outcome:?}");
    assert_eq!(outcome.stdout, b"done\n");
    assert_eq!(outcome.attempts.len(), 1, "{:?}", outcome.attempts);

    // The node dies and comes back: it connects with the renewed certificate from its disk,
    // and the head then revokes the old one (still within its life).
    first.abort();
    let _ = first.await;
    let second = tokio::spawn(rgrid_node::run(config, shutdown.clone()));
    eventually("the node to run a task again", 30, || async {
        let task = client
            .submit(TaskSpec::new("sh").command(["true"]))
            .await
            .ok()?;
        let outcome = client.get(&task).await.ok()?;
        (outcome.state == TaskState::Succeeded).then_some(())
    })
    .await;
    assert!(
        rgrid_core::time::unix_ms() < old.not_after_ms,
        "the test must see the old certificate before it expires"
    );
    let key_pem = std::fs::read_to_string(state_dir.join("node.key")).expect("node.key");
    let err = eventually("the old certificate to be revoked", 5, || async {
        let identity = Identity {
            cert_pem: old_pem.clone(),
            key_pem: key_pem.clone(),
        };
        raw_connect(&cluster, &identity).await.err()
    })
    .await;
    assert!(err.contains("revoked"), "{err}");
    shutdown.cancel();
    let _ = second.await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_client_renews_its_credentials_file_when_it_connects_late_in_their_life() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let cluster = NodeCluster::start_with(|c| c.client_cert_lifetime = LIFETIME).await;
    let path = cluster.head_client_file();
    let before = admin_file(&cluster);
    // Early in its life: kept as it is.
    cluster.client().await.status().await.expect("served");
    assert_eq!(admin_file(&cluster).cert_pem, before.cert_pem);
    // Past two thirds of it: renewed at connect, the file rewritten with the same key.
    tokio::time::sleep(Duration::from_millis(4200)).await;
    cluster.client().await.status().await.expect("served");
    let after = admin_file(&cluster);
    assert_ne!(serial(&after.cert_pem), serial(&before.cert_pem));
    assert_eq!(after.key_pem, before.key_pem);
    let der = rgrid_core::tls::pem_certs(&after.cert_pem, "client").expect("PEM");
    assert_eq!(ClientRole::from_cert(&der[0]), Some(ClientRole::Admin));
    assert_eq!(
        rgrid_core::tls::PeerIdentity::from_cert(&der[0]),
        Some(rgrid_core::tls::PeerIdentity::Client("admin".into()))
    );
    // Once the old certificate has expired, the renewed file still connects.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        Client::connect(&before).await.is_err(),
        "the old one expired"
    );
    Client::connect_file(&path)
        .await
        .expect("the renewed credentials connect")
        .status()
        .await
        .expect("served");
    cluster.stop().await;
}

#[tokio::test]
async fn a_revoked_client_cannot_connect_and_its_open_connection_is_refused() {
    revoked_client(None).await;
}

#[tokio::test]
async fn a_revoked_client_is_refused_on_postgres() {
    if let Some(url) = common::postgres_database().await {
        revoked_client(Some(url)).await;
    }
}

async fn revoked_client(database_url: Option<String>) {
    let cluster = NodeCluster::start_with(|c| c.database_url = database_url.clone()).await;
    let config = HeadConfig {
        state_dir: cluster.dir.path().join("head"),
        database_url,
        ..HeadConfig::default()
    };
    // The administration runs beside the head, on its state dir and database.
    let admin = Admin::open(&config).await.expect("the admin opens");
    let out = cluster.dir.path().join("ci.toml");
    admin
        .create_client("ci", ClientRole::Submit, None, &out)
        .await
        .expect("client created");
    let ci = Client::connect_file(&out).await.expect("connects");
    ci.status().await.expect("served");
    let listed = admin.clients().await.expect("listed");
    assert!(
        listed.iter().any(|c| c.name == "ci" && c.state == "valid"),
        "{listed:?}"
    );
    admin.revoke_client("ci").await.expect("revoked");
    // Within the head's refresh: the open connection's next request and any new connection.
    let err = eventually("the open connection to be refused", 5, || async {
        ci.status().await.err()
    })
    .await;
    assert!(err.to_string().contains("revoked"), "{err}");
    let err = Client::connect_file(&out)
        .await
        .and(Ok(()))
        .err()
        .map(|e| e.to_string());
    let err = match err {
        Some(err) => err,
        // The handshake completed before the close: the first request shows it.
        None => Client::connect_file(&out)
            .await
            .expect("connects")
            .status()
            .await
            .expect_err("refused")
            .to_string(),
    };
    assert!(err.contains("revoked"), "{err}");
    // Others are served; the admin file's client too.
    cluster.client().await.status().await.expect("served");
    admin.close().await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_keeps_the_name_it_joined_under_and_its_tokens_labels() {
    let cluster = NodeCluster::start().await;
    let config = HeadConfig {
        state_dir: cluster.dir.path().join("head"),
        ..HeadConfig::default()
    };
    let admin = Admin::open(&config).await.expect("the admin opens");
    let labels = [("site".to_owned(), "b".to_owned())].into_iter().collect();
    let (token, _) = admin
        .create_token(Duration::from_secs(3600), false, labels)
        .await
        .expect("a token");
    admin.close().await;
    let token_file = cluster.dir.path().join("site-b-token");
    std::fs::write(&token_file, token).expect("the token is written");
    let node_config = |name: &str| rgrid_node::NodeConfig {
        executor: rgrid_node::ExecutorKind::Process,
        token_file: Some(token_file.clone()),
        // The node claims a site its token does not give it.
        labels: [("site", "secure"), ("zone", "z1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        state_dir: cluster.dir.path().join("identity-node"),
        ..cluster.node_config(name)
    };
    let client = cluster.client().await;
    let listed = |name: &'static str| {
        let client = &client;
        async move {
            eventually(&format!("{name} to be ready"), 30, || async {
                let nodes = client.nodes().await.expect("nodes");
                nodes
                    .into_iter()
                    .find(|n| n.name == name && n.state == "ready")
            })
            .await
        }
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let first = tokio::spawn(rgrid_node::run(node_config("first"), shutdown.clone()));
    let node = listed("first").await;
    assert_eq!(node.labels["site"], "b", "the token's label holds");
    assert_eq!(node.labels["zone"], "z1", "the node's own label stays");
    assert!(
        node.declared_labels.contains(&"zone".to_owned()),
        "{node:?}"
    );
    assert!(
        !node.declared_labels.contains(&"site".to_owned()),
        "{node:?}"
    );
    shutdown.cancel();
    let _ = first.await;

    // The same node comes back asking for another name: it keeps the one it joined under.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let second = tokio::spawn(rgrid_node::run(node_config("renamed"), shutdown.clone()));
    let again = listed("first").await;
    assert_eq!(again.id, node.id);
    let nodes = client.nodes().await.expect("nodes");
    assert!(nodes.iter().all(|n| n.name != "renamed"), "{nodes:?}");
    assert_eq!(again.labels["site"], "b");
    shutdown.cancel();
    let _ = second.await;
    cluster.stop().await;
}
