//! The embedded rumqttd router, reachable only through the front.
//!
//! rumqttd listens on two loopback ports (one MQTT 3.1.1, one MQTT 5; its
//! servers speak one version each) with an auth handler that accepts a
//! CONNECT only if its password is this process's random secret, compared in
//! constant time. The front replaces every client's username and password
//! with that secret after its own checks, so a local process that finds the
//! ports still cannot open a session.
//!
//! rumqttd binds its listeners itself from its config and cannot report a
//! port it chose, so we pick free ports (bind `127.0.0.1:0`, note the port,
//! close), hand them over, and then prove the router is ours and up by
//! opening a session with the secret on each port. `rumqttd::Broker::start`
//! blocks its thread and has no shutdown: the router runs on its own threads
//! until the process exits. On shutdown the front stops accepting and
//! closes its own connections, which ends every router session.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use bytes::BytesMut;
use rand::RngCore;
use rumqttd::{ConnectionSettings, RouterConfig, ServerSettings};
use subtle::ConstantTimeEq;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    config::Limits,
    mqtt::{self, Version},
};

/// Username the front presents upstream (the router ignores it; it shows up
/// in rumqttd's logs).
pub(crate) const FRONT_USERNAME: &str = "vigil-front";

/// How long the router gets to start listening and answer the probe.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between probe attempts while the router starts.
const STARTUP_POLL: Duration = Duration::from_millis(10);

/// Size of each in-memory commit-log segment, at least. rumqttd keeps
/// `SEGMENT_COUNT` of them per subscription filter, so this bounds the
/// memory a filter holds for slow subscribers.
const MIN_SEGMENT_BYTES: usize = 8 * 1024 * 1024;
const SEGMENT_COUNT: usize = 4;
/// Packets rumqttd queues for one client before it stops reading for it.
const MAX_OUTGOING_PACKETS: u64 = 200;
/// Unacknowledged QoS 1/2 publishes rumqttd keeps in flight per client.
const MAX_INFLIGHT: usize = 100;
/// rumqttd's own CONNECT timeout on the loopback; the front writes the
/// CONNECT as soon as it connects, so this only guards against bugs.
const ROUTER_CONNECT_TIMEOUT_MS: u16 = 5_000;

/// Why the router could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot reserve a loopback port for the router: {0}")]
    Port(std::io::Error),
    #[error("cannot start the router thread: {0}")]
    Thread(std::io::Error),
    #[error("the router did not accept a session on {addr} within {timeout:?}: {last}")]
    Startup {
        addr: SocketAddr,
        timeout: Duration,
        last: String,
    },
}

/// Where and how the front reaches the router.
#[derive(Debug, Clone)]
pub(crate) struct RouterHandle {
    v4: SocketAddr,
    v5: SocketAddr,
    secret: Arc<str>,
}

impl RouterHandle {
    pub(crate) fn addr(&self, version: Version) -> SocketAddr {
        match version {
            Version::V4 => self.v4,
            Version::V5 => self.v5,
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

/// Starts rumqttd on two free loopback ports and waits until both accept a
/// session with the secret.
pub(crate) async fn start(limits: &Limits) -> Result<RouterHandle, RouterError> {
    let secret: Arc<str> = {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into()
    };
    let v4 = free_loopback_port()?;
    let v5 = free_loopback_port()?;

    let connections = {
        let mut c = ConnectionSettings {
            connection_timeout_ms: ROUTER_CONNECT_TIMEOUT_MS,
            // The front enforces the payload limit; the router must not
            // refuse anything the front let through.
            max_payload_size: limits.frame_cap(),
            max_inflight_count: MAX_INFLIGHT,
            auth: None,
            external_auth: None,
            // Publishes to topics nobody subscribes to yet (events before the
            // ops-center connects) must be kept, not refused.
            dynamic_filters: true,
        };
        let expected = secret.clone();
        c.set_auth_handler(move |_client_id, _user, password: String| {
            let ok = bool::from(password.as_bytes().ct_eq(expected.as_bytes()));
            async move { ok }
        });
        c
    };
    let server = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_owned(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: connections.clone(),
    };
    let config = rumqttd::Config {
        id: 0,
        router: RouterConfig {
            // Room for every front connection plus the startup probes.
            max_connections: limits.max_connections + 16,
            max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
            max_segment_size: MIN_SEGMENT_BYTES.max(2 * limits.frame_cap()),
            max_segment_count: SEGMENT_COUNT,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("v4".to_owned(), server("vigil-v4", v4))])),
        v5: Some(HashMap::from([("v5".to_owned(), server("vigil-v5", v5))])),
        ..rumqttd::Config::default()
    };
    std::thread::Builder::new()
        .name("vigil-router".into())
        .spawn(move || {
            // Spawns the router and one thread per listener, then blocks
            // joining them: for the life of the process.
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded router stopped");
            }
        })
        .map_err(RouterError::Thread)?;

    let handle = RouterHandle { v4, v5, secret };
    for version in [Version::V4, Version::V5] {
        wait_until_up(&handle, version).await?;
    }
    tracing::debug!(%v4, %v5, "embedded router up");
    Ok(handle)
}

fn free_loopback_port() -> Result<SocketAddr, RouterError> {
    let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(RouterError::Port)?;
    listener.local_addr().map_err(RouterError::Port)
}

/// Polls until the router accepts a session with the secret on `version`'s
/// port, then closes that session cleanly.
async fn wait_until_up(handle: &RouterHandle, version: Version) -> Result<(), RouterError> {
    let addr = handle.addr(version);
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        let last = match tokio::time::timeout_at(deadline, probe(handle, version)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => "timed out".to_owned(),
        };
        if tokio::time::Instant::now() + STARTUP_POLL >= deadline {
            return Err(RouterError::Startup {
                addr,
                timeout: STARTUP_TIMEOUT,
                last,
            });
        }
        tokio::time::sleep(STARTUP_POLL).await;
    }
}

async fn probe(handle: &RouterHandle, version: Version) -> Result<(), String> {
    let mut stream = TcpStream::connect(handle.addr(version))
        .await
        .map_err(|e| e.to_string())?;
    let connect = mqtt::probe_connect(version, handle.secret());
    stream
        .write_all(&connect)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if let Some(frame) = mqtt::frame(&buf, 1024).map_err(|e| e.to_string())?
            && buf.len() >= frame.len()
        {
            // CONNACK: flags, then the return / reason code, 0 = accepted.
            let accepted = buf.get(frame.header_len + 1) == Some(&0);
            if frame.kind() != mqtt::kind::CONNACK || !accepted {
                return Err(format!("unexpected reply {:02x?}", &buf[..frame.len()]));
            }
            break;
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed before CONNACK".into());
        }
    }
    // Disconnect and let the router close first: closing our side before
    // it has processed the DISCONNECT makes rumqttd report the connection
    // gone twice (see `relay`).
    let _ = stream.write_all(mqtt::client_disconnect()).await;
    let _ = tokio::time::timeout(STARTUP_POLL * 10, async {
        while matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
            buf.clear();
        }
    })
    .await;
    Ok(())
}
