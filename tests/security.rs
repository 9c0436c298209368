//! Bad input and bad credentials against a real head: each gets a clear error, changes nothing,
//! and the head keeps serving.

mod common;

use rgrid::Client;
use rgrid_core::frame::MAX_FRAME_BYTES;
use rgrid_core::protocol::{ErrorKind, JoinRequest, Request, Response};
use rgrid_core::tls::{
    client_config, join_config, node_csr, ClientFile, ClientRole, ClusterCa, JoinToken,
};
use rgrid_core::transport::{call, connect, handshake, TransportError};
use rgrid_head::{HeadConfig, RunningHead};
use tokio_util::sync::CancellationToken;

struct Head {
    head: RunningHead,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn head() -> Head {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let config = HeadConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.path().join("head"),
        ..HeadConfig::default()
    };
    let head = rgrid_head::start(config, shutdown.clone()).await.unwrap();
    Head {
        head,
        shutdown,
        _dir: dir,
    }
}

impl Head {
    fn token(&self) -> JoinToken {
        JoinToken::parse(&std::fs::read_to_string(self.head.join_token_file()).unwrap()).unwrap()
    }

    fn client_file(&self) -> ClientFile {
        toml::from_str(&std::fs::read_to_string(self.head.client_file()).unwrap()).unwrap()
    }

    async fn join(&self, token: &JoinToken) -> Response {
        let (_endpoint, conn) = connect(self.head.local_addr, join_config(token).unwrap(), "test")
            .await
            .unwrap();
        let (_, csr_pem) = node_csr().unwrap();
        call(
            &conn,
            &Request::Join(JoinRequest {
                token: token.encode(),
                csr_pem,
                name: "n".into(),
            }),
        )
        .await
        .unwrap()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.head.wait().await.expect("the head stops cleanly");
    }
}

fn refusal(response: Response) -> (ErrorKind, String) {
    match response {
        Response::Error(e) => (e.kind, e.message),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn first_start_writes_credentials_and_a_join_works() {
    let h = head().await;
    for file in ["ca.pem", "ca.key", "join-token", "client.toml"] {
        assert!(h.head.state_dir.join(file).exists(), "{file}");
    }
    // Owner only: the state dir, outputs, keys, tokens, credentials and the database.
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        std::fs::metadata(h.head.state_dir.join(f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    assert_eq!(mode("outputs"), 0o700);
    for file in [
        "ca.key",
        "join-token",
        "client.toml",
        "rgrid.db",
        "rgrid.db-wal",
    ] {
        assert_eq!(mode(file), 0o600, "{file}");
    }
    match h.join(&h.token()).await {
        Response::Joined(reply) => {
            assert!(reply.cert_pem.contains("BEGIN CERTIFICATE"));
            assert_eq!(
                reply.ca_pem,
                std::fs::read_to_string(h.head.state_dir.join("ca.pem")).unwrap()
            );
        }
        other => panic!("join failed: {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn peers_without_a_client_certificate_can_only_join() {
    let h = head().await;
    for request in [
        Request::ListNodes,
        Request::Submit(vec![]),
        Request::ListTasks(Default::default()),
    ] {
        // One request per connection: a cert-less connection gets one.
        let (_endpoint, conn) =
            connect(h.head.local_addr, join_config(&h.token()).unwrap(), "test")
                .await
                .unwrap();
        let (kind, message) = refusal(call(&conn, &request).await.unwrap());
        assert_eq!(kind, ErrorKind::Unauthorized);
        assert!(message.contains("only join"), "{message}");
    }
    h.stop().await;
}

#[tokio::test]
async fn wrong_and_expired_tokens_are_refused() {
    let h = head().await;
    let mut wrong = h.token();
    wrong.secret = "00".repeat(16);
    let (kind, message) = refusal(h.join(&wrong).await);
    assert_eq!(kind, ErrorKind::Unauthorized);
    assert!(message.contains("join token refused"), "{message}");

    let expired = h
        .head
        .create_join_token(Some(std::time::Duration::from_millis(1)), false)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let (_, message) = refusal(h.join(&JoinToken::parse(&expired).unwrap()).await);
    assert!(message.contains("expired"), "{message}");

    // A name with control characters (an escape sequence for a terminal) is refused.
    let (_endpoint, conn) = connect(h.head.local_addr, join_config(&h.token()).unwrap(), "test")
        .await
        .unwrap();
    let (_, csr_pem) = node_csr().unwrap();
    let bad_name = Request::Join(JoinRequest {
        token: h.token().encode(),
        csr_pem,
        name: "evil\u{1b}[2J\nnode".into(),
    });
    let (kind, message) = refusal(call(&conn, &bad_name).await.unwrap());
    assert_eq!(kind, ErrorKind::Unauthorized);
    assert!(
        message.contains("node name") && !message.contains('\u{1b}'),
        "{message}"
    );

    let single = h.head.create_join_token(None, true).await.unwrap();
    let single = JoinToken::parse(&single).unwrap();
    assert!(matches!(h.join(&single).await, Response::Joined(_)));
    let (_, message) = refusal(h.join(&single).await);
    assert!(message.contains("single-use"), "{message}");

    // Nothing joined with the refused tokens: one node per accepted join.
    let client = Client::connect_file(h.head.client_file()).await.unwrap();
    assert!(
        client.nodes().await.unwrap().is_empty(),
        "joined nodes have no session yet"
    );
    h.stop().await;
}

#[tokio::test]
async fn concurrent_joins_with_one_single_use_token_admit_exactly_one() {
    let h = head().await;
    for _ in 0..5 {
        let single = h.head.create_join_token(None, true).await.unwrap();
        let single = JoinToken::parse(&single).unwrap();
        let joins = (0..8).map(|_| h.join(&single));
        let responses = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures::future::join_all(joins),
        )
        .await
        .expect("the joins are answered");
        let joined = responses
            .iter()
            .filter(|r| matches!(r, Response::Joined(_)))
            .count();
        assert_eq!(joined, 1, "{responses:?}");
        for response in responses {
            if let Response::Error(e) = response {
                assert_eq!(e.kind, ErrorKind::Unauthorized);
                assert!(e.message.contains("single-use"), "{}", e.message);
            }
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn a_peer_pinning_another_ca_fails() {
    let h = head().await;
    let other = ClusterCa::generate("other").unwrap();
    let mut token = h.token();
    token.ca_hash = other.fingerprint().unwrap();
    let Err(err) = connect(h.head.local_addr, join_config(&token).unwrap(), "test").await else {
        panic!("must not connect");
    };
    assert!(matches!(err, TransportError::Connect { .. }), "{err}");

    // A client certificate from another cluster is refused too, and so is the head by its CA.
    let mut file = h.client_file();
    let identity = other
        .issue_client(
            "client:intruder",
            ClientRole::Admin,
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    file.cert_pem = identity.cert_pem;
    file.key_pem = identity.key_pem;
    assert!(Client::connect(&file).await.is_err());
    let mut file = h.client_file();
    file.ca_pem = other.cert_pem().to_owned();
    assert!(Client::connect(&file).await.is_err());
    h.stop().await;
}

#[tokio::test]
async fn a_protocol_version_mismatch_names_both_versions() {
    let h = head().await;
    let file = h.client_file();
    let tls = client_config(&file.ca_pem, &file.identity()).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint
        .connect(h.head.local_addr, rgrid_core::protocol::HEAD_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    match handshake(&conn, 99, "future-client").await {
        Err(TransportError::Refused(message)) => {
            assert!(
                message.contains(&format!(
                    "version {}",
                    rgrid_core::protocol::PROTOCOL_VERSION
                )),
                "{message}"
            );
            assert!(message.contains("version 99"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn bad_frames_close_only_their_stream() {
    let h = head().await;
    let file = h.client_file();
    let (_endpoint, conn) = connect(
        h.head.local_addr,
        client_config(&file.ca_pem, &file.identity()).unwrap(),
        "test",
    )
    .await
    .unwrap();

    // Oversize: only the length prefix is sent.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&(MAX_FRAME_BYTES as u32 + 1).to_be_bytes())
        .await
        .unwrap();
    let mut reader = rgrid_core::frame::FrameReader::<_, Response>::new(recv);
    let (kind, message) = refusal(reader.expect().await.unwrap());
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(message.contains("maximum"), "{message}");

    // Undecodable.
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut reader = rgrid_core::frame::FrameReader::<_, Response>::new(recv);
    let (kind, message) = refusal(reader.expect().await.unwrap());
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(message.contains("decode"), "{message}");

    // The same connection, and the head, still serve.
    assert!(
        matches!(call(&conn, &Request::ListTasks(Default::default())).await.unwrap(), Response::Tasks(t) if t.tasks.is_empty())
    );
    h.stop().await;
}

/// A QUIC connection to `head` from the loopback address `from` (127.0.0.0/8 all reach the
/// head: each is another source address), with the handshake done.
async fn connect_from(
    from: std::net::IpAddr,
    head: std::net::SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client((from, 0).into()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let connecting = endpoint
        .connect(head, rgrid_core::protocol::HEAD_SERVER_NAME)
        .unwrap();
    let conn = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    handshake(&conn, rgrid_core::protocol::PROTOCOL_VERSION, "test")
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

#[tokio::test]
async fn a_peer_without_a_certificate_gets_one_stream_no_uni_streams_and_small_frames() {
    let h = head().await;
    let (_endpoint, conn) = connect(h.head.local_addr, join_config(&h.token()).unwrap(), "test")
        .await
        .unwrap();
    let short = std::time::Duration::from_millis(500);
    assert!(
        tokio::time::timeout(short, conn.open_uni()).await.is_err(),
        "no unidirectional stream"
    );
    let (mut send, recv) = conn.open_bi().await.unwrap();
    assert!(
        tokio::time::timeout(short, conn.open_bi()).await.is_err(),
        "a second stream at once"
    );
    // A frame of 1 MiB is declared: refused by its length prefix.
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let mut reader = rgrid_core::frame::FrameReader::<_, Response>::new(recv);
    let (kind, message) = refusal(reader.expect().await.unwrap());
    assert_eq!(kind, ErrorKind::BadRequest);
    assert!(message.contains("4096"), "{message}");

    // A client with a certificate keeps the large limits: many streams at once.
    let client = Client::connect_file(h.head.client_file()).await.unwrap();
    let listings = (0..50).map(|_| client.nodes());
    for listing in futures::future::join_all(listings).await {
        assert!(listing.unwrap().is_empty());
    }
    h.stop().await;
}

#[tokio::test]
async fn a_silent_peer_without_a_certificate_is_closed_after_the_deadline() {
    let h = head().await;
    let started = std::time::Instant::now();
    // After the handshake, nothing.
    let (_endpoint, conn) = connect(h.head.local_addr, join_config(&h.token()).unwrap(), "test")
        .await
        .unwrap();
    // Without even the hello (a raw QUIC connection).
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(join_config(&h.token()).unwrap())
            .unwrap();
    let mut raw = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    raw.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let raw = raw
        .connect(h.head.local_addr, rgrid_core::protocol::HEAD_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    for conn in [conn, raw] {
        let reason = tokio::time::timeout(std::time::Duration::from_secs(8), conn.closed())
            .await
            .expect("the head closes the connection");
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_millis(4500),
            "{took:?}: {reason}"
        );
        assert!(reason.to_string().contains("only join"), "{reason}");
    }
    h.stop().await;
}

#[tokio::test]
async fn unauthenticated_connections_are_capped_per_address_and_a_client_is_still_served() {
    let h = head().await;
    let attacker: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut held = Vec::new();
    for _ in 0..16 {
        let tls = join_config(&h.token()).unwrap();
        held.push(
            connect_from(attacker, h.head.local_addr, tls)
                .await
                .unwrap(),
        );
    }
    let refused = connect_from(
        attacker,
        h.head.local_addr,
        join_config(&h.token()).unwrap(),
    )
    .await
    .expect_err("the 17th from one address is refused");
    assert!(refused.contains("refused"), "{refused}");

    // Another address still joins, and a client is served.
    let other: std::net::IpAddr = [127, 0, 0, 3].into();
    let (_e, conn) = connect_from(other, h.head.local_addr, join_config(&h.token()).unwrap())
        .await
        .unwrap();
    let (_, csr_pem) = node_csr().unwrap();
    let join = Request::Join(JoinRequest {
        token: h.token().encode(),
        csr_pem,
        name: "n".into(),
    });
    assert!(matches!(
        call(&conn, &join).await.unwrap(),
        Response::Joined(_)
    ));
    let client = Client::connect_file(h.head.client_file()).await.unwrap();
    assert!(client.nodes().await.unwrap().is_empty());

    // When the held connections go, the address may connect again.
    drop(held);
    common::eventually("the address is admitted again", 10, || async {
        connect_from(
            attacker,
            h.head.local_addr,
            join_config(&h.token()).unwrap(),
        )
        .await
        .ok()
    })
    .await;
    h.stop().await;
}

/// The resident memory of process `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}

#[tokio::test]
async fn cert_less_floods_declaring_large_frames_leave_the_head_process_bounded() {
    use common::process;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", process::free_udp_port());
    let head = process::start_head(dir.path(), &listen);
    let client_toml = dir.path().join("head/client.toml");
    process::wait_for("the head's client.toml", || client_toml.exists());
    let client = Client::connect_file(&client_toml).await.unwrap();
    client.status().await.unwrap();
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let token =
        JoinToken::parse(&std::fs::read_to_string(dir.path().join("head/join-token")).unwrap())
            .unwrap();
    let before = rss_bytes(head.0.id());

    // One peer (one address) opens connections until refused; each declares a 64 MiB frame
    // and pushes as much of it as the head lets through.
    let peer: std::net::IpAddr = [127, 0, 0, 9].into();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..64 {
        match connect_from(peer, addr, join_config(&token).unwrap()).await {
            Ok((endpoint, conn)) => {
                let (mut send, recv) = conn.open_bi().await.unwrap();
                send.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
                let junk = vec![7u8; 1 << 20];
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(100),
                    send.write_all(&junk),
                )
                .await;
                held.push((endpoint, conn, send, recv));
            }
            Err(_) => refused += 1,
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let during = rss_bytes(head.0.id());
    let grew = during.saturating_sub(before);
    eprintln!(
        "held {} connections ({refused} refused): head RSS {before} -> {during} bytes (+{grew})",
        held.len()
    );
    assert_eq!(held.len(), 16, "the per-address cap");
    assert!(grew < 1 << 20, "the head grew by {grew} bytes");

    // A client is still served meanwhile.
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), client.status())
        .await
        .expect("answered in time");
    assert!(status.is_ok(), "{status:?}");
    // And the flood is gone after the deadline.
    for (_, conn, _, _) in &held {
        tokio::time::timeout(std::time::Duration::from_secs(8), conn.closed())
            .await
            .expect("closed by the deadline");
    }
    drop(head);
}

#[test]
fn a_removed_node_cannot_reconnect() {
    use common::process;
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", process::free_udp_port());
    let _head = process::start_head(dir.path(), &listen);
    let config = dir.path().join("head/client.toml");
    process::wait_for("the head's client.toml", || config.exists());
    let process_executor = ["--executor", "process"];
    let node = process::start_node_with(dir.path(), &listen, "victim", 1000, &process_executor);
    let _other = process::start_node_with(dir.path(), &listen, "other", 1000, &process_executor);
    process::wait_ready(&config, "victim");
    process::wait_ready(&config, "other");
    let id = process::nodes(&config)
        .iter()
        .find(|n| n["name"] == "victim")
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .unwrap();

    let out = process::rgrid(&config, &["node", "remove", "victim"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "{out:?}"
    );
    let listed = |name: &str| process::nodes(&config).iter().any(|n| n["name"] == name);
    assert!(!listed("victim"), "the node left the listing");
    assert!(listed("other"));

    // The node keeps reconnecting (same certificate): refused each time, never listed again,
    // and after a restart on its state dir too.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!listed("victim"));
    drop(node);
    let _node = process::start_node_with(dir.path(), &listen, "victim", 1000, &process_executor);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(!listed("victim"));
    assert!(listed("other"), "other nodes are not affected");
    let log = std::fs::read_to_string(dir.path().join("head.log")).unwrap();
    assert!(log.contains("refused a removed node"), "{log}");

    // Removing it again: nothing to remove, a clear error.
    let out = process::rgrid(&config, &["node", "remove", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node"),
        "{out:?}"
    );
    process::print_logs_if_panicking(dir.path(), 30);
}

/// Credentials for `client:NAME` with `role`, issued by the head's CA.
fn client_with_role(h: &Head, name: &str, role: ClientRole) -> ClientFile {
    let dir = &h.head.state_dir;
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let ca = ClusterCa::load(&read("ca.pem"), &read("ca.key")).unwrap();
    let identity = ca
        .issue_client(
            &format!("client:{name}"),
            role,
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    ClientFile {
        cert_pem: identity.cert_pem,
        key_pem: identity.key_pem,
        ..h.client_file()
    }
}

fn forbidden(err: rgrid::ClientError) -> String {
    match err {
        rgrid::ClientError::Refused(e) if e.kind == ErrorKind::Forbidden => e.message,
        other => panic!("expected a Forbidden refusal, got {other}"),
    }
}

#[tokio::test]
async fn roles_limit_what_each_client_may_ask() {
    let h = head().await;
    let admin = Client::connect_file(h.head.client_file()).await.unwrap();
    let alice = Client::connect(&client_with_role(&h, "alice", ClientRole::Submit))
        .await
        .unwrap();
    let bob = Client::connect(&client_with_role(&h, "bob", ClientRole::Submit))
        .await
        .unwrap();
    let reader = Client::connect(&client_with_role(&h, "reader", ClientRole::Read))
        .await
        .unwrap();
    let spec = || rgrid::TaskSpec::new("img").command(["true"]);

    // A read client cannot submit, cancel or administer; it may list and read.
    let message = forbidden(reader.submit(spec()).await.unwrap_err());
    assert!(message.contains("role read"), "{message}");
    assert!(
        reader.tasks().await.unwrap().is_empty(),
        "nothing was stored"
    );
    assert!(reader.nodes().await.unwrap().is_empty());
    reader.status().await.unwrap();

    // A submit client cancels its own tasks only; an admin cancels anyone's.
    let task = alice.submit(spec()).await.unwrap();
    let message = forbidden(bob.cancel(&task).await.unwrap_err());
    assert!(message.contains("not submitted by"), "{message}");
    forbidden(reader.cancel(&task).await.unwrap_err());
    assert_eq!(
        alice.cancel(&task).await.unwrap(),
        rgrid::TaskState::Cancelled
    );
    let other = bob.submit(spec()).await.unwrap();
    assert_eq!(
        admin.cancel(&other).await.unwrap(),
        rgrid::TaskState::Cancelled
    );
    assert_eq!(
        reader.get(&other).await.unwrap().state,
        rgrid::TaskState::Cancelled
    );

    // A network other than none needs an admin; node operations need an admin.
    let networked = || spec().network(rgrid_core::task::NetworkMode::Host);
    match alice.submit(networked()).await {
        Err(rgrid::ClientError::Rejected { message, .. }) => {
            assert!(message.contains("admin"), "{message}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let cancelled = admin.submit(networked()).await.unwrap();
    admin.cancel(&cancelled).await.unwrap();
    forbidden(
        alice
            .drain_node("n", std::time::Duration::from_secs(1))
            .await
            .unwrap_err(),
    );
    forbidden(bob.remove_node("n").await.unwrap_err());
    h.stop().await;
}
