//! The Vigil gateway: one per post. It receives alarm-panel signals and
//! camera events, keeps each one in a durable outbox, and publishes them to
//! the operations center over mutually authenticated MQTT until a receipt
//! says they are stored.
//!
//! Layout:
//! - [`config`]: the config file, validated before anything binds.
//! - [`signals`]: decoded DC-09 messages to `vigil.v1.Event`s.
//! - [`publisher`]: outbox → MQTT, receipts → outbox, status and last will.
//! - [`receiver`]: the DC-09 listeners (TCP and UDP on one port) and the
//!   ACK/NAK/DUH decision for each frame.
//! - [`supervision`]: panel silence and storage faults as health events.
//! - [`cert_expiry`]: the gateway's own certificate coming to its end, as
//!   health events at 30, 14 and 3 days.
//! - [`outbox`]: the durable outbox (SQLite, group commit, gap-free seqs).
//! - [`camera`]: camera events (ONVIF topics, HTTP push) to
//!   `vigil.v1.Event`s through one table, the stale-state timer, the
//!   HTTP push endpoint and the ONVIF PullPoint client.
//!
//! The DC-09 codec and taxonomy are the `vigil-dc09` crate; the panel and
//! camera simulators are in `vigil-sim`.

pub mod camera;
pub mod cert_expiry;
pub mod config;
pub mod outbox;
pub mod publisher;
pub mod receiver;
pub mod signals;
pub mod supervision;

use std::{sync::Arc, time::Duration};

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vigil_pki::{Role, tls::TlsMaterial};

pub use config::GatewayConfig;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("tls.cert: role {0} cannot run a gateway (the certificate's OU must be \"post\")")]
    NotAPost(Role),
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
    #[error("tls: {0}")]
    Tls(#[from] vigil_pki::TlsError),
}

/// The gateway's listeners, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    pub dc09_tcp: TcpListener,
    pub dc09_udp: UdpSocket,
    /// The camera push endpoint; `None` leaves it off.
    pub camera_http: Option<TcpListener>,
}

impl Listeners {
    /// Binds the DC-09 TCP and UDP listeners on `config.dc09.listen`, and
    /// the camera push endpoint on `config.http.listen` when configured.
    pub async fn bind(config: &GatewayConfig) -> std::io::Result<Self> {
        let (dc09_tcp, dc09_udp) = receiver::bind(config.dc09.listen).await?;
        let camera_http = match &config.http {
            Some(http) => Some(TcpListener::bind(http.listen).await?),
            None => None,
        };
        Ok(Self {
            dc09_tcp,
            dc09_udp,
            camera_http,
        })
    }
}

/// Counters of every part, for tests and for metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    pub dc09: Arc<receiver::Dc09Metrics>,
    pub publisher: Arc<publisher::PublisherMetrics>,
    pub outbox: Arc<OutboxGauges>,
    pub camera_push: Arc<camera::push::PushMetrics>,
    pub onvif: Arc<camera::onvif::OnvifMetrics>,
}

impl Metrics {
    /// Adds every counter to a Prometheus exposition (`vigil_gateway_*`).
    pub fn export(&self, out: &mut vigil_telemetry::Exposition) {
        use std::sync::atomic::Ordering::Relaxed;
        let d = &self.dc09;
        for (name, help, counter) in [
            (
                "vigil_gateway_dc09_frames_total",
                "DC-09 frames received.",
                &d.frames,
            ),
            (
                "vigil_gateway_dc09_acked_total",
                "DC-09 frames answered with ACK.",
                &d.acked,
            ),
            (
                "vigil_gateway_dc09_duplicates_total",
                "Retransmitted frames ACKed again but stored once.",
                &d.duplicates,
            ),
            (
                "vigil_gateway_dc09_events_stored_total",
                "Panel events stored in the outbox.",
                &d.events_stored,
            ),
            (
                "vigil_gateway_dc09_duh_total",
                "Frames answered with DUH.",
                &d.duh,
            ),
            (
                "vigil_gateway_dc09_garbage_bytes_total",
                "Bytes skipped that were not part of a frame.",
                &d.dropped_garbage_bytes,
            ),
        ] {
            out.counter(name, help, counter.load(Relaxed));
        }
        for (reason, counter) in [
            ("stale", &d.nak_stale),
            ("unknown_account", &d.nak_unknown_account),
            ("undecryptable", &d.nak_undecryptable),
            ("storage", &d.nak_storage),
            ("untimed", &d.nak_untimed),
        ] {
            out.counter_with(
                "vigil_gateway_dc09_nak_total",
                "Frames answered with NAK, by reason.",
                &[("reason", reason)],
                counter.load(Relaxed),
            );
        }
        for (reason, counter) in [
            ("damaged", &d.dropped_damaged),
            ("udp_busy", &d.dropped_udp_busy),
        ] {
            out.counter_with(
                "vigil_gateway_dc09_dropped_total",
                "Frames dropped unanswered, by reason.",
                &[("reason", reason)],
                counter.load(Relaxed),
            );
        }
        out.listener("dc09", &d.listener.snapshot());
        out.listener("camera_push", &self.camera_push.listener.snapshot());
        out.histogram(
            "vigil_gateway_dc09_ack_duration_seconds",
            "Time from a DC-09 frame in hand to its ACK, durable append included.",
            &d.ack_latency,
        );
        let p = &self.publisher;
        for (name, help, counter) in [
            (
                "vigil_gateway_mqtt_connects_total",
                "MQTT connections made.",
                &p.connects,
            ),
            (
                "vigil_gateway_mqtt_disconnects_total",
                "MQTT connections lost.",
                &p.disconnects,
            ),
            (
                "vigil_gateway_batches_sent_total",
                "Event batches published.",
                &p.batches_sent,
            ),
            (
                "vigil_gateway_events_sent_total",
                "Events published (re-sends included).",
                &p.events_sent,
            ),
            (
                "vigil_gateway_resends_total",
                "Re-sends of unreceipted events.",
                &p.resends,
            ),
            (
                "vigil_gateway_receipts_total",
                "Receipts received.",
                &p.receipts,
            ),
            (
                "vigil_gateway_rejected_messages_total",
                "Incoming MQTT messages that were not valid receipts or commands.",
                &p.rejected_messages,
            ),
            (
                "vigil_gateway_mqtt_failovers_total",
                "Moves to another broker of mqtt.servers after a failed connection.",
                &p.failovers,
            ),
        ] {
            out.counter(name, help, counter.load(Relaxed));
        }
        out.gauge(
            "vigil_gateway_mqtt_broker",
            "Index in mqtt.servers (from 0) of the broker in use or being tried.",
            p.broker.load(Relaxed) as f64,
        );
        let (last_seq, receipted, depth) = self.outbox.get();
        out.gauge(
            "vigil_gateway_outbox_last_seq",
            "Highest seq assigned by the outbox.",
            last_seq as f64,
        );
        out.gauge(
            "vigil_gateway_outbox_receipted_seq",
            "Highest seq the operations center has receipted.",
            receipted as f64,
        );
        out.gauge(
            "vigil_gateway_outbox_depth",
            "Events in the outbox not yet receipted.",
            depth as f64,
        );
        for (outcome, counter) in [
            ("accepted", &self.camera_push.accepted),
            ("rejected", &self.camera_push.rejected),
        ] {
            out.counter_with(
                "vigil_gateway_camera_push_total",
                "Camera HTTP pushes, by outcome.",
                &[("outcome", outcome)],
                counter.load(Relaxed),
            );
        }
        let o = &self.onvif;
        for (name, help, counter) in [
            (
                "vigil_gateway_onvif_subscriptions_total",
                "ONVIF PullPoint subscriptions created.",
                &o.subscriptions,
            ),
            (
                "vigil_gateway_onvif_renewals_total",
                "ONVIF subscriptions renewed.",
                &o.renewals,
            ),
            (
                "vigil_gateway_onvif_pulls_total",
                "ONVIF PullMessages answered.",
                &o.pulls,
            ),
            (
                "vigil_gateway_onvif_messages_total",
                "ONVIF notification messages received.",
                &o.messages,
            ),
            (
                "vigil_gateway_onvif_reconnects_total",
                "ONVIF subscriptions lost or not made, and retried.",
                &o.reconnects,
            ),
            (
                "vigil_gateway_onvif_unsubscribes_total",
                "ONVIF subscriptions given back.",
                &o.unsubscribes,
            ),
            (
                "vigil_gateway_onvif_health_events_total",
                "CAMERA_UNREACHABLE faults and restores stored.",
                &o.health_events,
            ),
        ] {
            out.counter(name, help, counter.load(Relaxed));
        }
        for (kind, counter) in [
            ("fault", &o.faults),
            ("auth", &o.auth_failures),
            ("bad_response", &o.bad_responses),
            ("transport", &o.transport_errors),
        ] {
            out.counter_with(
                "vigil_gateway_onvif_errors_total",
                "ONVIF request errors, by kind.",
                &[("kind", kind)],
                counter.load(Relaxed),
            );
        }
    }
}

/// The outbox's counters, mirrored as they change.
#[derive(Debug, Default)]
pub struct OutboxGauges {
    pub last_seq: std::sync::atomic::AtomicU64,
    pub receipted_through: std::sync::atomic::AtomicU64,
    pub depth: std::sync::atomic::AtomicU64,
}

impl OutboxGauges {
    fn set(&self, state: outbox::OutboxState) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_seq.store(state.last_seq, Relaxed);
        self.receipted_through
            .store(state.receipted_through, Relaxed);
        self.depth.store(state.depth, Relaxed);
    }

    /// `(last_seq, receipted_through, depth)` now.
    pub fn get(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.last_seq.load(Relaxed),
            self.receipted_through.load(Relaxed),
            self.depth.load(Relaxed),
        )
    }
}

/// Runs the gateway until `shutdown`: DC-09 receiver, supervision, camera
/// inputs and publisher, over one outbox in `config.data_dir`. Returns once every part
/// has stopped; frames being handled get their answer first.
pub async fn run(
    config: GatewayConfig,
    tls: TlsMaterial,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let peer = tls.own_peer().clone();
    if peer.role != Role::Post {
        return Err(GatewayError::NotAPost(peer.role));
    }
    let post_id = peer.identity.as_str().to_owned();
    let accounts = config.accounts()?;
    let push_config = config.push_config()?;
    let onvif_cameras = config.onvif_cameras()?;
    let brokers = config.mqtt_brokers()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| GatewayError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let outbox = outbox::Outbox::open(
        &config.data_dir.join("outbox.db"),
        &post_id,
        config.outbox_limits(),
    )?;
    let state = outbox.state();
    tracing::info!(
        post = %post_id,
        last_seq = state.last_seq,
        unreceipted = state.depth,
        "gateway starting"
    );

    let tracker = TaskTracker::new();
    metrics.outbox.set(state);
    tracker.spawn({
        let mut changes = outbox.watch();
        let gauges = metrics.outbox.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        gauges.set(*changes.borrow_and_update());
                    }
                }
            }
        }
    });
    let supervisor = supervision::Supervisor::new(&accounts, outbox.clone());
    tracker.spawn(supervisor.clone().run(shutdown.clone()));
    tracker.spawn(cert_expiry::run(
        tls.own_cert().clone(),
        outbox.clone(),
        shutdown.clone(),
    ));
    let receiver = Arc::new(receiver::Receiver::new(
        accounts,
        outbox.clone(),
        supervisor,
        metrics.dc09.clone(),
    ));
    let limits = config.receiver_limits();
    tracker.spawn(receiver::serve(
        receiver,
        listeners.dc09_tcp,
        listeners.dc09_udp,
        limits,
        shutdown.clone(),
    ));
    let cameras = camera::CameraInput::new(
        outbox.clone(),
        Duration::from_secs(config.camera.stale_secs),
    );
    tracker.spawn(cameras.clone().run_stale_timer(shutdown.clone()));
    for settings in onvif_cameras {
        tracker.spawn(camera::onvif::run(
            settings,
            cameras.clone(),
            metrics.onvif.clone(),
            shutdown.clone(),
        ));
    }
    if let (Some(push_config), Some(listener)) = (push_config, listeners.camera_http) {
        tracker.spawn(camera::push::serve(
            listener,
            push_config,
            cameras,
            metrics.camera_push.clone(),
            shutdown.clone(),
        ));
    }
    let publisher_config = publisher::PublisherConfig {
        brokers,
        tls: Arc::new(tls.client_config()?),
        post_id,
        keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
        batch_max_events: config.mqtt.batch_max_events,
        resend_after: Duration::from_secs(config.mqtt.resend_after_secs),
    };
    tracker.spawn(publisher::run(
        publisher_config,
        outbox,
        metrics.publisher.clone(),
        shutdown.clone(),
    ));
    tracker.close();
    tracker.wait().await;
    tracing::info!("gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn onvif_counters_are_exported() {
        let metrics = Metrics::default();
        metrics.onvif.subscriptions.store(3, Relaxed);
        metrics.onvif.auth_failures.store(2, Relaxed);
        let mut out = vigil_telemetry::Exposition::new();
        metrics.export(&mut out);
        let text = out.render();
        assert!(
            text.contains("vigil_gateway_onvif_subscriptions_total 3"),
            "{text}"
        );
        assert!(
            text.contains("vigil_gateway_onvif_errors_total{kind=\"auth\"} 2"),
            "{text}"
        );
        metrics
            .dc09
            .ack_latency
            .record(std::time::Duration::from_millis(3));
        let mut out = vigil_telemetry::Exposition::new();
        metrics.export(&mut out);
        let text = out.render();
        assert!(
            text.contains("vigil_gateway_dc09_ack_duration_seconds_bucket{le=\"0.004096\"} 1"),
            "{text}"
        );
    }
}
