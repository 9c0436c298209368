//! QUIC endpoints (quinn) with the cluster's TLS, the connection handshake, and a helper to open
//! request streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream};

use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::protocol::{Hello, HelloReply, Request, Response, HEAD_SERVER_NAME, PROTOCOL_VERSION};

/// The code the head closes a connection with when it refuses the peer's certificate for good
/// (a removed node, a revoked certificate): the peer should not retry.
pub const CLOSE_REFUSED: u32 = 3;

/// Transport errors. Messages say what went wrong on which side.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot set up QUIC: {0}")]
    Setup(String),
    #[error("cannot connect to the head at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("cannot connect to the head at {addr}: {source}")]
    ConnectConfig {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("cannot connect to the head at {0}: no answer within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(SocketAddr),
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("handshake refused by the head: {0}")]
    Refused(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// How long a connection attempt may take, handshake included. QUIC to a silent address would
/// otherwise wait for the whole idle timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle timeout and keep-alive: the keep-alive must be shorter than the idle timeout or a quiet
/// connection silently dies (quinn's defaults are a 30 s timeout and no keep-alive).
fn base_transport_config() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    // Constant durations well below the QUIC varint limit: the conversion cannot fail.
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(10)) {
        transport.max_idle_timeout(Some(idle));
    }
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    transport
}

/// What nodes and clients connect with.
fn client_transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = base_transport_config();
    transport.max_concurrent_bidi_streams(AUTHENTICATED_STREAMS.into());
    Arc::new(transport)
}

/// Concurrent bidirectional streams a peer may open before its certificate names it: the
/// handshake's, then its join request's.
pub const UNAUTHENTICATED_STREAMS: u32 = 1;

/// Bytes in flight a peer may send on a connection before its certificate names it: enough for
/// a hello and a join request (a token and a CSR, well under 4 KiB).
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 16 << 10;

/// Largest frame the head reads from a peer that has no certificate, and largest hello.
pub const UNAUTHENTICATED_FRAME_BYTES: usize = 4 << 10;

/// Concurrent bidirectional streams of an authenticated peer (requests, a node's control and
/// bulk streams).
const AUTHENTICATED_STREAMS: u32 = 1024;

/// Concurrent unidirectional streams of an authenticated peer (quinn's default).
const AUTHENTICATED_UNI_STREAMS: u32 = 100;

/// What every connection to the head starts with: the limits of a peer without a certificate
/// (one stream at a time, no unidirectional streams, a small connection window).
/// [`raise_limits`] lifts them once a verified certificate names the peer. QUIC fixes the
/// per-stream window when the connection starts; the connection window bounds what all streams
/// together hold, so a cert-less peer holds at most [`UNAUTHENTICATED_RECEIVE_WINDOW`] of
/// stream data whatever it declares.
fn server_transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = base_transport_config();
    transport
        .max_concurrent_bidi_streams(UNAUTHENTICATED_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .receive_window(UNAUTHENTICATED_RECEIVE_WINDOW.into());
    Arc::new(transport)
}

/// Gives a peer whose verified certificate names it the limits of an authenticated peer.
pub fn raise_limits(connection: &Connection) {
    connection.set_max_concurrent_bi_streams(AUTHENTICATED_STREAMS.into());
    connection.set_max_concurrent_uni_streams(AUTHENTICATED_UNI_STREAMS.into());
    connection.set_receive_window(quinn::VarInt::MAX);
}

/// The head's endpoint, listening on `addr`.
///
/// `reset_secret` keys QUIC stateless resets. Kept across restarts (in the state dir), it lets a
/// restarted head tell peers of the previous process at once that their connection is gone, so
/// they reconnect in milliseconds instead of waiting for the idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    reset_secret: &[u8],
) -> Result<Endpoint, TransportError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(server_transport_config());
    // Connection attempts waiting to be accepted, and what each may buffer meanwhile (quinn's
    // defaults, 65,536 and 10 MiB each, let a flood of initial packets cost gigabytes).
    config
        .max_incoming(1024)
        .incoming_buffer_size(u64::from(UNAUTHENTICATED_RECEIVE_WINDOW))
        .incoming_buffer_size_total(16 << 20);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_secret);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    // Connection ids signed with a key derived from the same secret, so the restarted head
    // recognises its predecessor's ids as its own and answers them with a reset.
    let cid_key = reset_secret.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    let setup = |e: std::io::Error| TransportError::Setup(format!("cannot listen on {addr}: {e}"));
    let socket = std::net::UdpSocket::bind(addr).map_err(setup)?;
    Endpoint::new(
        endpoint_config,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(setup)
}

/// Connects to the head at `addr` with `tls` and completes the handshake.
pub async fn connect(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    agent: &str,
) -> Result<(Endpoint, Connection), TransportError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(client_transport_config());
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(bind)
        .map_err(|e| TransportError::Setup(format!("cannot bind a UDP socket: {e}")))?;
    let connecting = endpoint
        .connect_with(config, addr, HEAD_SERVER_NAME)
        .map_err(|source| TransportError::ConnectConfig { addr, source })?;
    let connected = async {
        let connection = connecting
            .await
            .map_err(|source| TransportError::Connect { addr, source })?;
        if let Err(err) = handshake(&connection, PROTOCOL_VERSION, agent).await {
            // Why the head closed the connection (a certificate it refused: expired, revoked)
            // says more than the stream that broke.
            return Err(connection
                .close_reason()
                .map_or(err, TransportError::Connection));
        }
        Ok((endpoint, connection))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connected)
        .await
        .map_err(|_| TransportError::ConnectTimeout(addr))?
}

/// The connecting side of the handshake, with an explicit version (tests use a wrong one).
pub async fn handshake(
    connection: &Connection,
    version: u32,
    agent: &str,
) -> Result<(), TransportError> {
    let (send, recv) = connection.open_bi().await?;
    let mut writer = FrameWriter::<_, Hello>::new(send);
    let mut reader = FrameReader::<_, HelloReply>::new(recv);
    writer
        .send(&Hello {
            version,
            agent: agent.to_owned(),
        })
        .await?;
    match reader.expect().await? {
        HelloReply::Accepted { .. } => Ok(()),
        HelloReply::Refused { message } => Err(TransportError::Refused(message)),
    }
}

/// The accepting side of the handshake: reads the peer's [`Hello`] and accepts it only at our
/// version. Returns the peer's agent string.
pub async fn accept_handshake(connection: &Connection) -> Result<String, TransportError> {
    let (send, recv) = connection.accept_bi().await?;
    let mut writer = FrameWriter::<_, HelloReply>::new(send);
    let mut reader = FrameReader::<_, Hello>::with_limit(recv, UNAUTHENTICATED_FRAME_BYTES);
    let hello = reader.expect().await?;
    if hello.version != PROTOCOL_VERSION {
        let message = format!(
            "protocol version mismatch: this head speaks version {PROTOCOL_VERSION}, the peer ({}) speaks version {}; upgrade the older side",
            hello.agent, hello.version
        );
        writer
            .send(&HelloReply::Refused {
                message: message.clone(),
            })
            .await?;
        let _ = writer.get_mut().finish();
        return Err(TransportError::Refused(message));
    }
    writer
        .send(&HelloReply::Accepted {
            version: PROTOCOL_VERSION,
        })
        .await?;
    let _ = writer.get_mut().finish();
    Ok(hello.agent)
}

/// A request stream: what the head answers, and the sending half (kept open for streams that go
/// on, such as a node's control stream).
pub struct RequestStream {
    pub send: FrameWriter<SendStream, Request>,
    pub recv: FrameReader<RecvStream, Response>,
}

/// Opens a stream and sends `request` as its first frame.
pub async fn open_request(
    connection: &Connection,
    request: &Request,
) -> Result<RequestStream, TransportError> {
    let (send, recv) = connection.open_bi().await?;
    let mut send = FrameWriter::new(send);
    send.send(request).await?;
    Ok(RequestStream {
        send,
        recv: FrameReader::new(recv),
    })
}

/// Sends one request and waits for its one response.
pub async fn call(connection: &Connection, request: &Request) -> Result<Response, TransportError> {
    let mut stream = open_request(connection, request).await?;
    let _ = stream.send.get_mut().finish();
    Ok(stream.recv.expect().await?)
}

/// Why [`put_object`] did not store the object.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the head refused: {}", .0.message)]
    Refused(crate::protocol::ErrorReply),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Unexpected(String),
}

/// Uploads `object`, whose `size` bytes `source` yields, on a stream of its own
/// ([`Request::PutObject`]): the head asks for the bytes unless it has them, verifies and stores
/// them. `source` is read in chunks; the object never sits whole in memory.
pub async fn put_object(
    connection: &Connection,
    object: crate::object::ObjectRef,
    source: impl tokio::io::AsyncRead + Unpin,
) -> Result<(), PutError> {
    use tokio::io::AsyncReadExt;
    let mut stream = open_request(connection, &Request::PutObject(object)).await?;
    match stream.recv.expect().await.map_err(TransportError::from)? {
        Response::ObjectWanted => {}
        Response::ObjectStored(_) => return Ok(()),
        Response::Error(e) => return Err(PutError::Refused(e)),
        other => return Err(PutError::Unexpected(format!("{other:?}"))),
    }
    let mut send = stream.send.into_inner();
    let mut source =
        tokio::io::BufReader::with_capacity(crate::object::CHUNK_BYTES, source).take(object.size);
    let sent = tokio::io::copy_buf(&mut source, &mut send).await;
    let _ = send.finish();
    // The head's verdict, also after a failed send (it stops reading what it refuses, and says
    // why).
    match stream.recv.expect().await {
        Ok(Response::ObjectStored(_)) => Ok(()),
        Ok(Response::Error(e)) => Err(PutError::Refused(e)),
        Ok(other) => Err(PutError::Unexpected(format!("{other:?}"))),
        Err(err) => match sent {
            Err(send_err) => Err(PutError::Unexpected(format!(
                "the upload of {object} failed: {send_err}"
            ))),
            Ok(_) => Err(TransportError::from(err).into()),
        },
    }
}
