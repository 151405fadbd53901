//! Latency probes: a few posts that are real gateways, each fed by the
//! DC-09 panel simulator, and an analyst watching the incident feed.
//!
//! Every probe alarm is a fire alarm (P1, never folded into a flood
//! incident) in a zone no earlier alarm of that post used, so it opens an
//! incident of its own whose title ends in that zone. The panel hands the
//! alarm over just before it sends the frame; the time from then to the
//! incident's first appearance on the gRPC feed is the frame-to-feed
//! latency: panel to gateway (DC-09 over TCP), the gateway's fsynced
//! outbox, MQTT through the broker, the ops center's commit and engine, and
//! the feed stream.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vigil_dc09::{Message, Token};
use vigil_proto::v1::{WatchIncidentsRequest, feed_item::Item};
use vigil_sim::panel::{Panel, PanelConfig};

use crate::region::{tls_table, write_config};

/// Zones a probe cycles through (SIA zone numbers of three digits).
const ZONES: u32 = 999;
/// Pause before a dropped feed is opened again.
const FEED_RETRY: Duration = Duration::from_millis(200);

/// Send and arrival times of the probe alarms.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Alarms sent and not yet seen on the feed, by post and zone.
    pending: HashMap<(String, u32), Instant>,
    latencies: Vec<Duration>,
    sent: u64,
}

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panic elsewhere cannot leave these counts half-updated.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sent(&self, post: &str, zone: u32) {
        let mut r = self.lock();
        r.sent += 1;
        r.pending.insert((post.to_owned(), zone), Instant::now());
    }

    fn seen(&self, post: &str, zone: u32) {
        let mut r = self.lock();
        if let Some(at) = r.pending.remove(&(post.to_owned(), zone)) {
            r.latencies.push(at.elapsed());
        }
    }

    /// Alarms sent, and alarms still waiting for their incident.
    pub(crate) fn counts(&self) -> (u64, usize) {
        let r = self.lock();
        (r.sent, r.pending.len())
    }

    /// The latencies measured so far, sorted.
    pub(crate) fn latencies(&self) -> Vec<Duration> {
        let mut l = self.lock().latencies.clone();
        l.sort_unstable();
        l
    }
}

/// A probe gateway, started.
#[derive(Debug)]
pub(crate) struct Probe {
    pub(crate) post: String,
    account: String,
    dc09: SocketAddr,
}

/// Starts a gateway for each of `posts` against the broker at `broker`;
/// configs are written to `dir` (beside its `pki` folder) as
/// `{tag}-{post}.toml`, outboxes go to `dir/{tag}/{post}`.
pub(crate) async fn start_gateways(
    dir: &Path,
    tag: &str,
    posts: &[String],
    broker: SocketAddr,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Vec<Probe>> {
    let mut probes = Vec::new();
    for (i, post) in posts.iter().enumerate() {
        let account = format!("{}", 2001 + i);
        let text = format!(
            "# Written by `vigil bench`.\ndata_dir = \"{tag}/{post}\"\n{}\n[mqtt]\nserver = \"{broker}\"\nkeep_alive_secs = 5\nresend_after_secs = 5\n\n[dc09]\nlisten = \"127.0.0.1:0\"\n\n[[dc09.accounts]]\naccount = \"{account}\"\n",
            tls_table(post)
        );
        let path = write_config(dir, &format!("{tag}-{post}.toml"), &text)?;
        let config = vigil_gateway::GatewayConfig::load(&path)
            .map_err(|e| anyhow::anyhow!("probe gateway config: {e}"))?;
        let tls = config.tls.load().context("probe certificate")?;
        let listeners = vigil_gateway::Listeners::bind(&config)
            .await
            .context("binding a probe gateway's DC-09 listener")?;
        let dc09 = listeners.dc09_tcp.local_addr()?;
        let metrics = Arc::new(vigil_gateway::Metrics::default());
        tracker.spawn({
            let stop = stop.child_token();
            let post = post.clone();
            async move {
                if let Err(e) = vigil_gateway::run(config, tls, listeners, metrics, stop).await {
                    tracing::error!(%post, "probe gateway stopped: {e}");
                }
            }
        });
        probes.push(Probe {
            post: post.clone(),
            account,
            dc09,
        });
    }
    Ok(probes)
}

/// Starts a panel for each probe, sending one fire alarm every `interval`
/// until `stop`.
pub(crate) fn start_panels(
    probes: &[Probe],
    interval: Duration,
    recorder: &Arc<Recorder>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<()> {
    for probe in probes {
        let mut config = PanelConfig::new(probe.dc09.to_string(), probe.account.clone());
        config.interval = interval;
        config.record_outcomes = false;
        let alarms = Alarms {
            post: probe.post.clone(),
            account: probe.account.clone(),
            zone: 0,
            seq: 0,
            recorder: recorder.clone(),
        };
        let panel = Panel::with_messages(config, alarms)?;
        let stop = stop.child_token();
        let post = probe.post.clone();
        tracker.spawn(async move {
            if let Err(e) = panel.run(stop).await {
                tracing::error!(%post, "probe panel stopped: {e}");
            }
        });
    }
    Ok(())
}

/// A probe panel's endless fire alarms, each in the next zone. The panel
/// takes the next message right before it sends it, so that is when the
/// clock starts.
struct Alarms {
    post: String,
    account: String,
    zone: u32,
    seq: u16,
    recorder: Arc<Recorder>,
}

impl Iterator for Alarms {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.zone = self.zone % ZONES + 1;
        self.seq = self.seq % 9999 + 1;
        self.recorder.sent(&self.post, self.zone);
        Some(Message {
            seq: self.seq,
            data: format!("#{}|Nri1/FA{:03}", self.account, self.zone),
            ..Message::new(Token::SiaDcs, self.account.clone())
        })
    }
}

/// The zone at the end of a probe incident's title ("Fire alarm, zone 17").
fn zone_of(title: &str) -> Option<u32> {
    let (_, rest) = title.rsplit_once("zone ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Watches the incident feed of the probe posts as `analyst`, marking each
/// probe alarm seen when its incident first shows. `ready` turns true once
/// the feed is live. Resumes from its cursor when the stream drops.
pub(crate) async fn watch_feed(
    pki: PathBuf,
    analyst: String,
    api: SocketAddr,
    posts: Vec<String>,
    recorder: Arc<Recorder>,
    ready: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut cursor = String::new();
    loop {
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = watch_once(&pki, &analyst, api, &posts, &recorder, &ready, &mut cursor) => r,
        };
        if let Err(e) = result {
            tracing::debug!("incident feed: {e:#}; reconnecting");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(FEED_RETRY) => {}
        }
    }
}

async fn watch_once(
    pki: &Path,
    analyst: &str,
    api: SocketAddr,
    posts: &[String],
    recorder: &Recorder,
    ready: &watch::Sender<bool>,
    cursor: &mut String,
) -> Result<()> {
    let conn = crate::client::Connection {
        server: api.to_string(),
        ca: Some(pki.join("ca.pem")),
        cert: Some(pki.join(format!("{analyst}.pem"))),
        key: Some(pki.join(format!("{analyst}.key"))),
        crl: None,
    };
    let mut client = crate::client::connect::connect(&conn).await?.client;
    let mut stream = client
        .watch_incidents(WatchIncidentsRequest {
            cursor: cursor.clone(),
            post_ids: posts.to_vec(),
            include_logged: false,
        })
        .await?
        .into_inner();
    while let Some(item) = stream.message().await? {
        match item.item {
            Some(Item::Update(update)) => {
                if let Some(incident) = update.incident
                    && let Some(zone) = zone_of(&incident.title)
                {
                    recorder.seen(&incident.post_id, zone);
                }
            }
            Some(Item::SnapshotComplete(_)) => {
                ready.send_replace(true);
            }
            _ => {}
        }
        if !item.cursor.is_empty() {
            cursor.clone_from(&item.cursor);
        }
    }
    bail!("the server ended the feed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_are_read_from_titles() {
        assert_eq!(zone_of("Fire alarm, zone 17"), Some(17));
        assert_eq!(zone_of("Fire alarm, zone 017 (text)"), Some(17));
        assert_eq!(zone_of("Fire alarm"), None);
    }

    #[test]
    fn alarms_cycle_through_zones_and_are_recorded() {
        let recorder = Arc::new(Recorder::default());
        let mut alarms = Alarms {
            post: "probe-1".into(),
            account: "2001".into(),
            zone: 0,
            seq: 0,
            recorder: recorder.clone(),
        };
        let first = alarms.next().expect("alarm");
        assert_eq!(first.data, "#2001|Nri1/FA001");
        assert_eq!(first.seq, 1);
        recorder.seen("probe-1", 1);
        recorder.seen("probe-1", 2); // never sent: ignored
        assert_eq!(recorder.counts(), (1, 0));
        assert_eq!(recorder.latencies().len(), 1);
    }
}
