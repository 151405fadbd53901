//! `vigil dev`: a whole region on loopback in one process, for a first look
//! and for demonstrations.
//!
//! It creates (or reuses) a PKI under `DIR/pki`, writes a config file for
//! every part under `DIR` (the same files `vigil broker|ops|gateway --config`
//! take), and starts the broker, the operations center and a few posts.
//! Each post is a real gateway fed over DC-09 by a simulated panel and over
//! HTTP by simulated cameras; a camera that watches a zone in alarm reports
//! motion there, so some incidents become verified. The live incident feed
//! is read back over the gRPC API with the analyst certificate, exactly as
//! `vigil watch` does, and printed on stdout. Logs go to stderr.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vigil_dc09::{Key, Message};
use vigil_pki::Role;
use vigil_sim::{
    camera::{self as sim, OnvifCamera, SimConfig, SimHandle},
    panel::{Panel, PanelConfig, Scenario, ScenarioKind},
};

use crate::{
    Usage,
    client::{Connection, watch::WatchArgs},
    region::{self, tls_table, write_config},
};

mod replicas;
mod site;

/// Most simulated posts.
const MAX_POSTS: u16 = 50;
/// Most operations center replicas.
const MAX_REPLICAS: u8 = 5;
/// The leader lease of `vigil dev`'s replicas: short, so that a failover
/// shows quickly.
const DEV_LEASE_SECS: u64 = 2;
/// How long every part gets to stop after Ctrl-C.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Zone alarms waiting for a camera to look; a full queue drops the
/// detection (it is a demonstration, not a sensor).
const CAMERA_QUEUE: usize = 16;
/// Zones each simulated camera watches: cam-1 zones 1-8, cam-2 zones 9-16
/// (the simulated panels report burglary in zones 1-16).
const ZONES_PER_CAMERA: u32 = 8;
const CAMERAS: u32 = 2;
/// Longest a simulated camera's push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[engine]` settings of the dev region: acknowledgment deadlines a
/// person trying the system can meet (a P1 escalates after 5 minutes, not
/// one), and a standard operating procedure for every kind of incident the
/// simulated posts raise, as an operations center would set them.
const DEV_ENGINE: &str = r#"
[engine]
max_escalation_level = 2

[engine.ack_deadline_secs]
p1 = 300
p2 = 900
p3 = 1800
p4 = 3600

[engine.procedures]
fire = "Call the fire brigade, then the post's duty officer. Check the zone's cameras."
panic = "Call the police, then the post's duty officer on the secure line."
burglary = "Check the zone's cameras. Call the post's duty officer; send the guard force unless cleared."
video_detection = "Look at the camera. If a person is there and the site is armed, treat it as a burglary."
power = "Call the post's facilities contact; the panel runs on battery meanwhile."
trouble = "Note it for the post's technician; call the post if it affects an armed area."
tamper = "Check the device's camera view; call the post's duty officer."
supervisory = "Check the post's link and the device; call the post's technician if it stays down."
default = "Check the post's status and cameras. Call the post's duty officer if in doubt."
"#;

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Folder for the PKI, the config files and all data; reused when it
    /// exists.
    #[arg(long, value_name = "DIR", default_value = "vigil-dev")]
    dir: PathBuf,
    /// Number of simulated posts (p-001, p-002, ...).
    #[arg(long, default_value_t = 3)]
    posts: u16,
    /// Address of the operations center's gRPC API.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50051")]
    api: SocketAddr,
    /// Address of the MQTT broker (port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    broker: SocketAddr,
    /// Address of the browser console (HTTPS; port 0 picks a free one).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8443")]
    console: SocketAddr,
    /// Address of the Prometheus endpoint (`GET /metrics`) for every part.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9464")]
    metrics: SocketAddr,
    /// Average time between two messages of one panel (e.g. 500ms, 4s).
    #[arg(long, value_parser = crate::simulate::parse_duration, default_value = "4s")]
    interval: Duration,
    /// Operations center replicas; more than one share a PostgreSQL
    /// database (`--store-url`), one leading, the others standing by.
    #[arg(long, default_value_t = 1, value_name = "N")]
    replicas: u8,
    /// The operations center's store on PostgreSQL
    /// (`postgresql://USER@/DB?host=SOCKET_DIR&port=PORT`) instead of
    /// SQLite under DIR.
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// With several replicas: stop the leading one abruptly this often and
    /// bring it back as a standby, to show a failover (0s: never).
    #[arg(long, value_parser = crate::simulate::parse_duration, default_value = "60s")]
    failover_every: Duration,
}

/// What every part of the region was given, for the banner.
#[derive(Debug)]
struct PostInfo {
    id: String,
    account: String,
    encrypted: bool,
    dc09: SocketAddr,
    onvif: SocketAddr,
    push: SocketAddr,
}

pub(crate) fn run(args: &DevArgs) -> Result<()> {
    if args.posts == 0 || args.posts > MAX_POSTS {
        return Err(Usage(format!("--posts must be 1 to {MAX_POSTS}")).into());
    }
    if args.interval < Duration::from_millis(50) {
        return Err(Usage("--interval must be at least 50ms".into()).into());
    }
    if args.replicas == 0 || args.replicas > MAX_REPLICAS {
        return Err(Usage(format!("--replicas must be 1 to {MAX_REPLICAS}")).into());
    }
    if args.replicas > 1 && args.store_url.is_none() {
        return Err(Usage(
            "several replicas share one PostgreSQL database: pass --store-url \
             postgresql://USER@/DB?host=SOCKET_DIR&port=PORT (deploy/README.md shows how to make one)"
                .into(),
        )
        .into());
    }
    if args
        .store_url
        .as_ref()
        .is_some_and(|u| u.chars().any(char::is_control))
    {
        return Err(Usage("--store-url has a control character".into()).into());
    }
    if !args.failover_every.is_zero() && args.failover_every < Duration::from_secs(5) {
        return Err(Usage("--failover-every must be 0s (never) or at least 5s".into()).into());
    }
    if [args.api, args.broker, args.metrics, args.console]
        .iter()
        .any(|a| !a.ip().is_loopback())
    {
        return Err(Usage(
            "vigil dev serves on loopback only: --api, --broker, --console and --metrics take 127.x.x.x addresses".into(),
        )
        .into());
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("opening {}", args.dir.display()))?;
    let posts: Vec<String> = (1..=args.posts).map(|i| format!("p-{i:03}")).collect();
    let fresh = prepare_pki(&dir.join("pki"), &posts)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_region(args, &dir, &posts, fresh))?;
    // The embedded router's threads have no shutdown of their own.
    runtime.shutdown_background();
    Ok(())
}

/// Creates the CA on first use and issues whatever certificate is missing.
/// Returns whether the CA is new.
fn prepare_pki(pki: &Path, posts: &[String]) -> Result<bool> {
    let loopback = region::loopback_sans();
    let mut wanted: Vec<(Role, &str, &[String])> = vec![
        (Role::Broker, "broker", &loopback),
        (Role::Ops, "ops", &loopback),
        (Role::Analyst, "analyst", &[]),
        (Role::Supervisor, "supervisor", &[]),
        (Role::Engineer, "engineer", &[]),
    ];
    wanted.extend(posts.iter().map(|p| (Role::Post, p.as_str(), &[][..])));
    region::ensure_certs(pki, "Vigil dev region CA", &wanted)
}

/// The panel account of the `i`th post (from 0), and its AES key when the
/// panel encrypts (every other one does, to show both).
fn panel_of(i: usize) -> (String, Option<String>) {
    let account = format!("{}", 1001 + i);
    let key = (i % 2 == 1).then(|| {
        let mut key = [0u8; 16];
        rand::fill(&mut key);
        hex::encode(key)
    });
    (account, key)
}

/// The password (ONVIF) or bearer token (HTTP push) of a simulated camera:
/// fixed per post and camera, so a reused folder's config stays the same.
fn camera_secret(post: &str, camera: u32) -> String {
    format!("dev-secret-{post}-cam-{camera}-0123456789")
}

/// The ONVIF user of the simulated cameras.
const ONVIF_USER: &str = "vigil";

fn camera_for_zone(zone: u32) -> Option<u32> {
    (1..=ZONES_PER_CAMERA * CAMERAS)
        .contains(&zone)
        .then(|| (zone - 1) / ZONES_PER_CAMERA + 1)
}

async fn run_region(args: &DevArgs, dir: &Path, posts: &[String], fresh: bool) -> Result<()> {
    let signal = crate::signals::shutdown_signal();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    // Every fixed port first: a busy one must stop us before any part has
    // started (and has tasks to abandon mid-read).
    let metrics_listener = TcpListener::bind(args.metrics).await.map_err(|e| {
        Usage(format!(
            "metrics: cannot listen on {}: {e} (choose another with --metrics)",
            args.metrics
        ))
    })?;
    let metrics_addr = metrics_listener.local_addr()?;

    let api_listener = TcpListener::bind(args.api).await.map_err(|e| {
        Usage(format!(
            "api: cannot listen on {}: {e} (another `vigil dev` running? choose one with --api)",
            args.api
        ))
    })?;

    // The console's port is bound by the operations center itself: find
    // out now whether it is free (and which one port 0 means).
    let console_addr = TcpListener::bind(args.console)
        .await
        .and_then(|l| l.local_addr())
        .map_err(|e| {
            Usage(format!(
                "console: cannot listen on {}: {e} (choose another with --console)",
                args.console
            ))
        })?;
    let bundle = console_bundle(&dir.join("pki"))?;

    // Broker.
    let broker_listener = TcpListener::bind(args.broker)
        .await
        .with_context(|| format!("broker: cannot listen on {}", args.broker))?;
    let broker_addr = broker_listener.local_addr()?;
    let path = write_config(
        dir,
        "broker.toml",
        &format!(
            "# Written by `vigil dev` at every start.\nlisten = \"{broker_addr}\"\n{}",
            tls_table("broker")
        ),
    )?;
    let config = vigil_broker::BrokerConfig::load(&path).map_err(|e| Usage(e.to_string()))?;
    let broker = vigil_broker::Broker::start(&config, broker_listener, shutdown.child_token())
        .await
        .context("starting the broker")?;
    let broker_counters = broker.counters();
    tracker.spawn(broker.wait());

    // Operations center, with the post records and plans to import.
    let site_text = site::prepare(dir, posts)?;
    let api_addr = api_listener.local_addr()?;
    let mut zones = String::new();
    for post in posts {
        for cam in 1..=CAMERAS {
            for zone in (cam - 1) * ZONES_PER_CAMERA + 1..=cam * ZONES_PER_CAMERA {
                let _ = write!(
                    zones,
                    "\n[[engine.zone_cameras]]\npost = \"{post}\"\nzone = {zone}\ncameras = [\"cam-{cam}\"]\n"
                );
            }
        }
    }
    let store = args.store_url.as_ref().map_or_else(String::new, |url| {
        format!(
            "\n[store]\nurl = \"{}\"\nlease_secs = {DEV_LEASE_SECS}\n",
            url.replace('\\', "\\\\").replace('"', "\\\"")
        )
    });
    let mut ops = Vec::new();
    let mut api_listener = Some(api_listener);
    for i in 1..=args.replicas {
        let listener = match api_listener.take() {
            Some(first) => first,
            // The next replicas on the following ports (any free one after
            // port 0).
            None => {
                let port = match args.api.port() {
                    0 => 0,
                    p => p.saturating_add(u16::from(i) - 1),
                };
                let addr = SocketAddr::new(args.api.ip(), port);
                TcpListener::bind(addr).await.map_err(|e| {
                    Usage(format!("api of replica {i}: cannot listen on {addr}: {e}"))
                })?
            }
        };
        let name = if i == 1 {
            "ops".to_owned()
        } else {
            format!("ops-{i}")
        };
        // The first replica serves the browser console.
        let console = if i == 1 {
            format!("\n[console]\nlisten = \"{console_addr}\"\n")
        } else {
            String::new()
        };
        let path = write_config(
            dir,
            &format!("{name}.toml"),
            &format!(
                "# Written by `vigil dev` at every start.\ndata_dir = \"data/{name}\"\n{}\n[mqtt]\nserver = \"{broker_addr}\"\n\n[api]\nlisten = \"{}\"\n{console}{store}{DEV_ENGINE}{zones}",
                tls_table("ops"),
                listener.local_addr()?,
            ),
        )?;
        ops.push(replicas::Replica::start(name, path, listener, &shutdown).await?);
    }
    let ops_counters: Vec<_> = ops
        .iter()
        .map(|r| (r.name.clone(), r.metrics.clone()))
        .collect();
    let ops_apis: Vec<_> = ops.iter().map(|r| (r.name.clone(), r.api)).collect();
    tracker.spawn(replicas::supervise(
        ops,
        args.failover_every,
        shutdown.child_token(),
    ));

    // Posts: a gateway each, with its panel and cameras.
    let mut infos = Vec::new();
    let mut gateway_counters = Vec::new();
    for (i, post) in posts.iter().enumerate() {
        let (account, key) = panel_of(i);
        let mut text = format!(
            "# Written by `vigil dev` at every start.\ndata_dir = \"data/{post}\"\n{}\n[mqtt]\nserver = \"{broker_addr}\"\n\n[dc09]\nlisten = \"127.0.0.1:0\"\n\n[[dc09.accounts]]\naccount = \"{account}\"\n",
            tls_table(post)
        );
        if let Some(key) = &key {
            let _ = writeln!(text, "key = \"{key}\"");
        }
        // cam-1 speaks ONVIF (the gateway pulls its events), cam-2 pushes
        // over HTTP.
        let onvif = OnvifCamera::start(
            TcpListener::bind("127.0.0.1:0")
                .await
                .context("binding a simulated camera")?,
            SimConfig::new(ONVIF_USER, &camera_secret(post, 1)),
            shutdown.child_token(),
        );
        let _ = write!(
            text,
            "\n[[onvif]]\ncamera = \"cam-1\"\nurl = \"{}\"\nusername = \"{ONVIF_USER}\"\npassword = \"{}\"\n",
            onvif.device_url(),
            camera_secret(post, 1)
        );
        let _ = write!(
            text,
            "\n[http]\nlisten = \"127.0.0.1:0\"\n\n[[http.cameras]]\ncamera = \"cam-2\"\ntoken = \"{}\"\n",
            camera_secret(post, 2)
        );
        let path = write_config(dir, &format!("{post}.toml"), &text)?;
        let config = vigil_gateway::GatewayConfig::load(&path).map_err(|e| Usage(e.to_string()))?;
        let tls = config.tls.load().context("post certificate")?;
        let listeners = vigil_gateway::Listeners::bind(&config)
            .await
            .context("binding the gateway's listeners")?;
        let dc09 = listeners.dc09_tcp.local_addr()?;
        let push = listeners
            .camera_http
            .as_ref()
            .context("camera push listener")?
            .local_addr()?;
        let metrics = Arc::new(vigil_gateway::Metrics::default());
        gateway_counters.push((post.clone(), metrics.clone()));
        tracker.spawn({
            let stop = shutdown.child_token();
            let post = post.clone();
            async move {
                if let Err(e) = vigil_gateway::run(config, tls, listeners, metrics, stop).await {
                    tracing::error!(%post, "gateway stopped: {e}");
                }
            }
        });

        let (zones_tx, zones_rx) = mpsc::channel(CAMERA_QUEUE);
        let key = key
            .map(|k| Key::from_hex(&k))
            .transpose()
            .map_err(|e| anyhow::anyhow!("panel key: {e}"))?;
        let mut panel = PanelConfig::new(dc09.to_string(), account.clone());
        panel.key = key;
        panel.interval = args.interval;
        panel.record_outcomes = false;
        // An ordinary day at a post, not a test workout: a few incidents a
        // minute across the region, most of them P2 or below.
        panel.scenario = ScenarioKind::Quiet;
        let scenario = Scenario::for_panel(&panel);
        let panel = Panel::with_messages(
            panel,
            WatchedScenario {
                inner: scenario,
                zones: zones_tx,
            },
        )?;
        tracker.spawn({
            let stop = shutdown.child_token();
            let post = post.clone();
            async move {
                if let Err(e) = panel.run(stop).await {
                    tracing::error!(%post, "panel stopped: {e}");
                }
            }
        });
        tracker.spawn(cameras(
            Cameras {
                onvif: onvif.clone(),
                push: format!("http://{push}/v1/camera-events"),
                token: camera_secret(post, 2),
            },
            zones_rx,
            shutdown.child_token(),
        ));
        infos.push(PostInfo {
            id: post.clone(),
            account,
            encrypted: i % 2 == 1,
            dc09,
            onvif: onvif.addr(),
            push,
        });
    }

    let render = Arc::new(move || {
        let mut out = vigil_telemetry::Exposition::new();
        out.build_info("dev", env!("CARGO_PKG_VERSION"));
        broker_counters.snapshot().export(&mut out);
        match &ops_counters[..] {
            [(_, one)] => one.export(&mut out),
            several => {
                for (name, metrics) in several {
                    out.scoped(&[("replica", name)], |out| metrics.export(out));
                }
            }
        }
        for (post, metrics) in &gateway_counters {
            out.scoped(&[("post", post)], |out| metrics.export(out));
        }
        out.render()
    });
    tracker.spawn(vigil_telemetry::serve(
        metrics_listener,
        render,
        shutdown.child_token(),
    ));

    print_banner(
        dir,
        fresh,
        [broker_addr, api_addr, metrics_addr],
        &ops_apis,
        (console_addr, &bundle),
        &infos,
    );
    // Every replica, so that the feed follows the region across a failover.
    let servers: Vec<String> = ops_apis.iter().map(|(_, a)| a.to_string()).collect();
    tracker.spawn(feed(
        dir.join("pki"),
        servers.join(","),
        shutdown.child_token(),
    ));
    tracker.spawn(site::import(
        dir.join("pki"),
        ops_apis.iter().map(|(_, api)| *api).collect(),
        site_text,
        shutdown.child_token(),
    ));
    tracker.close();

    tokio::select! {
        () = signal => {}
        () = tracker.wait() => bail!("the region stopped by itself; see the log above"),
    }
    println!("\nstopping (Ctrl-C again to force)...");
    shutdown.cancel();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(STOP_GRACE) => bail!("parts did not stop within {STOP_GRACE:?}"),
        () = crate::signals::shutdown_signal() => bail!("forced stop"),
    }
    println!("stopped; data kept in {}", dir.display());
    Ok(())
}

fn print_banner(
    dir: &Path,
    fresh: bool,
    [broker, api, metrics]: [SocketAddr; 3],
    ops: &[(String, SocketAddr)],
    (console, bundle): (SocketAddr, &Bundle),
    posts: &[PostInfo],
) {
    let pki = dir.join("pki");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Vigil dev region in {} ({})",
        dir.display(),
        if fresh {
            "new PKI"
        } else {
            "reusing its PKI and data"
        }
    );
    let _ = writeln!(out, "  broker      mqtts://{broker}  (config broker.toml)");
    if let [(name, api)] = ops {
        let _ = writeln!(
            out,
            "  ops center  gRPC {api}  (config {name}.toml, data in data/{name})"
        );
    } else {
        for (name, api) in ops {
            let _ = writeln!(
                out,
                "  ops center  gRPC {api}  (config {name}.toml; replica on the shared PostgreSQL store)"
            );
        }
    }
    let _ = writeln!(
        out,
        "  console     https://{console}/  (browser, client certificate)"
    );
    let _ = writeln!(out, "  metrics     http://{metrics}/metrics  (every part)");
    for p in posts {
        let _ = writeln!(
            out,
            "  post {}  panel account {} ({}) -> DC-09 {}; cam-1 ONVIF at {}; cam-2 -> HTTP push {}",
            p.id,
            p.account,
            if p.encrypted { "AES" } else { "clear" },
            p.dc09,
            p.onvif,
            p.push
        );
    }
    out.push_str(&console_lines(console, bundle));
    let _ = writeln!(
        out,
        "\nIn another terminal, as the analyst:\n  export VIGIL_SERVER={api} VIGIL_CA={ca} VIGIL_CERT={cert} VIGIL_KEY={key}\n  vigil watch              # the live feed\n  vigil incidents          # open incidents\n  vigil ack INCIDENT       # take one\n(supervisor.pem and engineer.pem in {pki} carry the other roles.)\nPost records, contacts and action plans: {sites} (imported at every start;\n`vigil incidents ID` shows the plan, `vigil step` checks its steps off).\nCtrl-C stops everything; the folder is reused next time.\n\nLive incident feed:",
        ca = pki.join("ca.pem").display(),
        cert = pki.join("analyst.pem").display(),
        key = pki.join("analyst.key").display(),
        pki = pki.display(),
        sites = dir.join(site::FILE).display(),
    );
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// The password of the dev region's browser bundles unless
/// `VIGIL_EXPORT_PASSPHRASE` gives one: this region lives on loopback and
/// its folder holds the keys in the clear anyway.
const DEV_BUNDLE_PASSWORD: &str = "vigil-dev";

/// Where the analyst's bundle is and its password.
struct Bundle {
    path: PathBuf,
    password: String,
}

/// Exports `analyst.p12` (and the supervisor's and engineer's) for the
/// browser, unless already there from an earlier run.
fn console_bundle(pki: &Path) -> Result<Bundle> {
    let password = std::env::var(crate::pki::EXPORT_PASSPHRASE_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEV_BUNDLE_PASSWORD.to_owned());
    for id in ["analyst", "supervisor", "engineer"] {
        let path = pki.join(format!("{id}.p12"));
        if path.exists() {
            continue;
        }
        let id = vigil_pki::Identity::new(id).expect("a valid identity");
        let bytes = vigil_pki::pkcs12::export(pki, &id, &password)
            .with_context(|| format!("exporting {id} for the browser"))?;
        crate::pki::write_private(&path, &bytes)?;
    }
    Ok(Bundle {
        path: pki.join("analyst.p12"),
        password,
    })
}

/// How to open the console, for the banner.
fn console_lines(addr: SocketAddr, bundle: &Bundle) -> String {
    let password = if bundle.password == DEV_BUNDLE_PASSWORD {
        format!("password {DEV_BUNDLE_PASSWORD}")
    } else {
        format!("password from {}", crate::pki::EXPORT_PASSPHRASE_ENV)
    };
    format!(
        "\nIn a browser, as the analyst: https://{addr}/\n  import {} ({password}) as your certificate, and trust ca.pem beside it\n  for websites (supervisor.p12 and engineer.p12 carry the other roles).\n",
        bundle.path.display()
    )
}

/// The panel's scenario, telling the post's cameras which zones go into
/// burglary alarm.
struct WatchedScenario {
    inner: Scenario,
    zones: mpsc::Sender<u32>,
}

impl Iterator for WatchedScenario {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        let msg = self.inner.next()?;
        if let Some(zone) = burglary_zone(&msg.data) {
            // A full queue drops the detection; see CAMERA_QUEUE.
            let _ = self.zones.try_send(zone);
        }
        Some(msg)
    }
}

/// The zone of a new SIA burglary alarm (`#acct|Nri1/BA005`).
fn burglary_zone(data: &str) -> Option<u32> {
    let payload = data.split_once('|')?.1;
    let (_, code) = payload.split_once('/')?;
    code.strip_prefix("BA")?.parse().ok()
}

/// How a post's simulated cameras are reached.
struct Cameras {
    /// cam-1: the gateway pulls its events.
    onvif: SimHandle,
    /// cam-2: pushes to this URL with this token.
    push: String,
    token: String,
}

/// The post's cameras: shortly after a zone they watch goes into alarm, the
/// camera reports motion there, then its end.
async fn cameras(cams: Cameras, mut zones: mpsc::Receiver<u32>, stop: CancellationToken) {
    loop {
        let zone = tokio::select! {
            () = stop.cancelled() => return,
            zone = zones.recv() => match zone {
                Some(zone) => zone,
                None => return,
            },
        };
        let Some(cam) = camera_for_zone(zone) else {
            continue;
        };
        for active in [true, false] {
            let pause = Duration::from_millis(if active { 800 } else { 3000 });
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            if cam == 1 {
                cams.onvif.inject(&sim::motion(active));
                continue;
            }
            let state = if active { "start" } else { "stop" };
            let body = sim::push_body("cam-2", "motion", state, Some(&format!("zone {zone}")));
            match sim::push_event(&cams.push, &cams.token, &body, PUSH_TIMEOUT).await {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, answer)) => tracing::warn!(%status, answer, "camera push refused"),
                Err(e) => tracing::warn!("camera push failed: {e}"),
            }
        }
    }
}

/// Reads the live feed as the analyst, exactly as `vigil watch` does (and
/// with its reconnect loop), until `stop`.
async fn feed(pki: PathBuf, servers: String, stop: CancellationToken) {
    let args = WatchArgs {
        conn: Connection {
            server: servers,
            ca: Some(pki.join("ca.pem")),
            cert: Some(pki.join("analyst.pem")),
            key: Some(pki.join("analyst.key")),
            crl: Some(pki.join("crl.pem")),
        },
        posts: Vec::new(),
        cursor: None,
        count: None,
        json: false,
    };
    let mut cursor = String::new();
    if let Err(e) = crate::client::watch::run_until(&args, &mut cursor, &stop).await {
        tracing::error!(error = %format!("{e:#}"), "incident feed failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burglary_zones_are_read_from_sia_payloads() {
        assert_eq!(burglary_zone("#1001|Nri1/BA005"), Some(5));
        assert_eq!(burglary_zone("#1001|Nri1/BH005"), None);
        assert_eq!(burglary_zone("#1001|Nri1/FA017"), None);
        assert_eq!(burglary_zone(""), None);
    }

    #[test]
    fn every_burglary_zone_has_a_camera() {
        assert_eq!(camera_for_zone(1), Some(1));
        assert_eq!(camera_for_zone(8), Some(1));
        assert_eq!(camera_for_zone(9), Some(2));
        assert_eq!(camera_for_zone(16), Some(2));
        assert_eq!(camera_for_zone(17), None);
        assert_eq!(camera_for_zone(0), None);
    }
}
