//! `vigil bench`: the end-to-end load test.
//!
//! By default it starts its own broker and operations center as child
//! processes of this same binary (`vigil broker --config`, `vigil ops
//! --config`), with configs and a PKI written to `--dir` (a temporary folder
//! when absent), so that their CPU time and memory are measured apart from
//! the load generator. It then connects `--posts` simulated posts over mTLS
//! MQTT ([`posts`]), drives the load, and measures events receipted end to
//! end, the frame-to-feed latency of a few real gateways ([`probes`]), the
//! daemons' CPU and memory ([`procs`]), and how long every post takes to
//! reconnect after the broker is killed and started again. With Mosquitto
//! installed, the same load runs a second time with Mosquitto as the broker.
//!
//! Layout:
//! - this module: flags, the run, the report.
//! - [`posts`]: the simulated posts.
//! - [`probes`]: latency probes (gateways, panels, the incident feed).
//! - [`procs`]: child processes, `/proc` figures, the Mosquitto config.

mod posts;
mod probes;
mod procs;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use tokio::{sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use vigil_pki::Role;

use crate::{
    Usage as UsageError,
    region::{self, tls_table, write_config},
};
use posts::{Load, Post, PostSettings, PostStats};
use procs::{Daemon, Usage};

/// Most simulated posts.
const MAX_POSTS: u32 = 20_000;
/// Longest wait for every post to connect (scaled up for many posts below).
const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// Longest wait for the incident feed and the ops center's subscription.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Once the schedule has ended, the run gives up when no receipt and no
/// probe alarm has come for this long.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// Longest the posts get to stop at the end of a run.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// The latency a sweep rate must keep at p99 to count as carried.
const SWEEP_P99: Duration = Duration::from_millis(100);
/// Share of the asked rate a sweep run must receipt to count as carried,
/// over the run's duration plus one period of the posts' schedule (the
/// schedules are spread over one period, so the last events go out up to
/// that much after the duration).
const SWEEP_CARRIED: f64 = 0.97;
/// Probe posts are named `probe-N`; the post ids of the load are `b-NNNN`.
const PROBE_PREFIX: &str = "probe-";

#[derive(Debug, Clone, Args)]
pub(crate) struct BenchArgs {
    /// Folder for the PKI (post certificates are issued once and reused),
    /// configs, logs and data; a temporary folder, removed at the end, when
    /// absent.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Simulated posts, each its own mTLS MQTT connection.
    #[arg(long, default_value_t = 1000)]
    posts: u32,
    /// Total events per second over all posts, sent for --duration.
    #[arg(long, value_name = "EVENTS_PER_SEC", conflicts_with = "count")]
    rate: Option<f64>,
    /// Capacity sweep: runs each rate in turn (events per second over all
    /// posts, one event per publish, each for --duration, every broker at
    /// each rate before the next) and reports, per broker, the highest rate
    /// carried with p99 frame-to-feed at most 100 ms, nothing resent and
    /// nothing lost. A broker stops at its first rate that fails.
    #[arg(
        long,
        value_name = "RATE,RATE,...",
        value_delimiter = ',',
        conflicts_with_all = ["rate", "count"]
    )]
    sweep: Option<Vec<f64>>,
    /// Total events to send, as fast as receipts allow (the default, with
    /// 100000, when --rate is absent).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// How long --rate runs (e.g. 10s, 1m).
    #[arg(long, value_parser = crate::simulate::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Most events in one EventBatch.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Most events a post has sent but not yet seen receipted.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Latency probes: real gateways fed by simulated DC-09 panels (0: no
    /// latency figures).
    #[arg(long, default_value_t = 2)]
    probes: u32,
    /// Time between two alarms of one probe panel.
    #[arg(long, value_parser = crate::simulate::parse_duration, default_value = "100ms")]
    probe_interval: Duration,
    /// Skip the broker restart at the end of each run.
    #[arg(long)]
    no_reconnect_test: bool,
    /// Run the same load with Mosquitto as the broker: when installed
    /// (auto), never (off), or fail without it (required).
    #[arg(long, value_enum, default_value_t = MosquittoMode::Auto)]
    mosquitto: MosquittoMode,
    /// Print one JSON object instead of the result lines.
    #[arg(long)]
    json: bool,
    /// Target a running broker at HOST:PORT instead of starting one (with
    /// --api and --pki; no CPU, memory or reconnect figures then).
    #[arg(long, value_name = "HOST:PORT", requires_all = ["api", "pki"])]
    broker: Option<SocketAddr>,
    /// The running operations center's gRPC API, with --broker.
    #[arg(long, value_name = "HOST:PORT", requires = "broker")]
    api: Option<SocketAddr>,
    /// With --broker: the region's CA folder (ca.pem and ca.key), to issue
    /// the bench's post and analyst certificates.
    #[arg(long, value_name = "DIR", requires = "broker")]
    pki: Option<PathBuf>,
    /// Run the bench's own operations centers on PostgreSQL: a database of
    /// this server (`postgresql://USER@/DB?host=SOCKET_DIR&port=PORT`; the
    /// user may create databases) where each run gets a fresh database,
    /// `vigil_bench_<run>`, dropped first if an earlier bench left it.
    #[arg(long, value_name = "URL", conflicts_with = "broker")]
    store_url: Option<String>,
    /// With --store-url: operations center replicas on the one database.
    /// The first leads; the latency probes watch the feed of the last one
    /// (a standby, which follows the leader's commits).
    #[arg(long, value_name = "N", default_value_t = 1)]
    replicas: u8,
    /// With --replicas 2 or more: kill -9 the leading replica this long
    /// into the load and time the takeover (a standby leading, and
    /// receipts flowing again).
    #[arg(long, value_name = "DURATION", value_parser = crate::simulate::parse_duration)]
    kill_leader_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MosquittoMode {
    Auto,
    Off,
    Required,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerKind {
    Vigil,
    Mosquitto,
}

impl BrokerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Vigil => "vigil",
            Self::Mosquitto => "mosquitto",
        }
    }
}

/// Where the daemons come from.
#[derive(Debug)]
enum Target {
    /// Started by the bench, as child processes.
    Own {
        exe: PathBuf,
        mosquitto: Option<PathBuf>,
    },
    /// Already running.
    Running { broker: SocketAddr, api: SocketAddr },
}

/// The figures of one run.
#[derive(Debug, Default)]
struct RunResult {
    broker: &'static str,
    posts: u32,
    events: u64,
    receipted: u64,
    lost: u64,
    resent: u64,
    elapsed_s: f64,
    receipted_per_s: f64,
    stored_per_s: Option<f64>,
    /// Sorted frame-to-feed latencies, and probe alarms never seen.
    latencies: Vec<Duration>,
    probes_missing: usize,
    connect_s: f64,
    reconnect_s: Option<f64>,
    broker_usage: Option<Usage>,
    ops_usage: Option<Usage>,
    broker_mb_per_1000: Option<f64>,
    bench_cpu_s: f64,
    failover: Option<Failover>,
}

/// The leader killed mid-run: when, and how long until a standby led and
/// receipts flowed again (from the kill).
#[derive(Debug, Default, Clone, Copy)]
struct Failover {
    killed_at_s: f64,
    leading_s: Option<f64>,
    receipting_s: Option<f64>,
}

/// Most operations center replicas in a bench run.
const MAX_REPLICAS: u8 = 5;

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.posts == 0 || args.posts > MAX_POSTS {
        return Err(UsageError(format!("--posts must be 1 to {MAX_POSTS}")).into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(UsageError("--rate must be above 0".into()).into());
    }
    if args.count == Some(0) {
        return Err(UsageError("--count must be at least 1".into()).into());
    }
    if let Some(rates) = &args.sweep {
        if rates.is_empty() || rates.iter().any(|r| !(*r > 0.0 && r.is_finite())) {
            return Err(
                UsageError("--sweep takes rates above 0, e.g. 5000,10000,20000".into()).into(),
            );
        }
        if args.probes == 0 {
            return Err(
                UsageError("--sweep needs latency probes (--probes 1 or more)".into()).into(),
            );
        }
    }
    if args.duration.is_zero() {
        return Err(UsageError("--duration must be above 0".into()).into());
    }
    if args.batch == 0 || args.window == 0 {
        return Err(UsageError("--batch and --window must be at least 1".into()).into());
    }
    if args.replicas == 0 || args.replicas > MAX_REPLICAS {
        return Err(UsageError(format!("--replicas must be 1 to {MAX_REPLICAS}")).into());
    }
    if args.replicas > 1 && args.store_url.is_none() {
        return Err(UsageError(
            "--replicas 2 or more share one PostgreSQL database: pass --store-url".into(),
        )
        .into());
    }
    if args.kill_leader_after.is_some() && args.replicas < 2 {
        return Err(UsageError(
            "--kill-leader-after needs a standby to take over: --replicas 2 or more".into(),
        )
        .into());
    }
    if args.probes > 0 && args.probe_interval < Duration::from_millis(1) {
        return Err(UsageError("--probe-interval must be at least 1ms".into()).into());
    }
    let target = match (args.broker, args.api) {
        (Some(broker), Some(api)) => {
            if args.mosquitto == MosquittoMode::Required {
                return Err(UsageError(
                    "--mosquitto required needs the bench's own broker (no --broker)".into(),
                )
                .into());
            }
            Target::Running { broker, api }
        }
        _ => {
            let mosquitto = match args.mosquitto {
                MosquittoMode::Off => None,
                MosquittoMode::Auto => procs::find_mosquitto(),
                MosquittoMode::Required => Some(procs::find_mosquitto().ok_or_else(|| {
                    UsageError("--mosquitto required: no mosquitto on PATH".into())
                })?),
            };
            Target::Own {
                exe: std::env::current_exe().context("finding the vigil binary")?,
                mosquitto,
            }
        }
    };
    let (_temp, dir) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            (None, dir.canonicalize()?)
        }
        None => {
            let temp = tempfile_dir()?;
            let path = temp.clone();
            (Some(TempDir(temp)), path)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(bench(args, &target, &dir));
    // The gateways' and clients' leftover tasks end with the runtime.
    runtime.shutdown_background();
    result
}

/// A temporary folder removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "vigil-bench-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// The identities of a run.
#[derive(Debug)]
struct Names {
    posts: Vec<String>,
    probes: Vec<String>,
    analyst: String,
}

/// Issues what is missing under `dir/pki`. With the bench's own daemons the
/// CA is the bench's and the post certificates are reused across runs; a
/// running region's CA (`--pki`) is copied in and every run gets post ids
/// of its own, since the ops center there already stores seqs of earlier
/// posts.
fn prepare_pki(args: &BenchArgs, dir: &Path) -> Result<Names> {
    let pki = dir.join("pki");
    let tag = match &args.pki {
        Some(ca) => {
            std::fs::create_dir_all(&pki)?;
            for name in ["ca.pem", "ca.key", "crl.pem"] {
                std::fs::copy(ca.join(name), pki.join(name))
                    .with_context(|| format!("copying {}", ca.join(name).display()))?;
            }
            format!("{:04x}-", rand::random::<u16>())
        }
        None => String::new(),
    };
    let names = Names {
        posts: (1..=args.posts).map(|i| format!("b-{tag}{i:04}")).collect(),
        probes: (1..=args.probes)
            .map(|i| format!("{PROBE_PREFIX}{tag}{i}"))
            .collect(),
        analyst: format!("bench-analyst-{tag}")
            .trim_end_matches('-')
            .to_owned(),
    };
    let missing = names
        .posts
        .iter()
        .filter(|p| !pki.join(format!("{p}.pem")).exists())
        .count();
    if missing > 50 {
        eprintln!(
            "issuing {missing} post certificates into {} (once; later runs reuse them)...",
            pki.display()
        );
    }
    let sans = region::loopback_sans();
    let mut wanted: Vec<(Role, &str, &[String])> = Vec::new();
    if args.pki.is_none() {
        wanted.push((Role::Broker, "broker", &sans));
        wanted.push((Role::Ops, "ops", &sans));
    }
    wanted.push((Role::Analyst, &names.analyst, &[]));
    wanted.extend(
        names
            .posts
            .iter()
            .map(|p| (Role::Post, p.as_str(), &[][..])),
    );
    wanted.extend(
        names
            .probes
            .iter()
            .map(|p| (Role::Post, p.as_str(), &[][..])),
    );
    region::ensure_certs(&pki, "Vigil bench region CA", &wanted)?;
    Ok(names)
}

async fn bench(args: &BenchArgs, target: &Target, dir: &Path) -> Result<()> {
    let names = prepare_pki(args, dir)?;
    let posts = load_posts(dir, &names.posts)?;
    let (load, total) = match args.rate {
        Some(rate) => (
            Load::Rate {
                per_post: rate / f64::from(args.posts),
                duration: args.duration,
            },
            (rate * args.duration.as_secs_f64()).round() as u64,
        ),
        None => (Load::Count, args.count.unwrap_or(100_000)),
    };
    if total == 0 {
        return Err(UsageError("--rate × --duration is less than one event".into()).into());
    }
    let n = u64::from(args.posts);
    let kinds: Vec<BrokerKind> = match target {
        Target::Own { mosquitto, .. } => std::iter::once(BrokerKind::Vigil)
            .chain(mosquitto.as_ref().map(|_| BrokerKind::Mosquitto))
            .collect(),
        Target::Running { .. } => vec![BrokerKind::Vigil],
    };
    if let (
        Target::Own {
            mosquitto: None, ..
        },
        MosquittoMode::Auto,
    ) = (target, args.mosquitto)
    {
        eprintln!("mosquitto is not installed: the Vigil broker only");
    }
    if let Some(rates) = &args.sweep {
        return sweep(args, target, dir, &names, &posts, &kinds, rates).await;
    }
    let mut results = Vec::new();
    for kind in kinds {
        // With --rate every post runs the same schedule and stops at its
        // share, so the totals add up.
        for (i, post) in posts.iter().enumerate() {
            post.stats
                .target
                .store(posts::share(total, n, i as u64), Relaxed);
            if let Load::Rate { per_post, .. } = load {
                let phase = i as f64 / n as f64 / per_post;
                post.stats.phase_ns.store((phase * 1e9) as u64, Relaxed);
            }
        }
        let result = run_once(args, target, kind, dir, &names, &posts, load, total).await?;
        if !args.json {
            println!("{}", result_line(&result));
        }
        results.push(result);
    }
    if args.json {
        println!("{}", json_report(args, &results));
    } else if let [v, m] = &results[..] {
        println!("{}", ratio_line(v, m));
    }
    if let Some(bad) = results.iter().find(|r| r.lost > 0) {
        bail!(
            "{} events sent through {} were never receipted",
            bad.lost,
            bad.broker
        );
    }
    Ok(())
}

/// The outcome of one broker's sweep.
#[derive(Debug, Default)]
struct SweepLine {
    /// Highest rate carried, with its p99 latency.
    best: Option<(f64, Duration)>,
    /// Why the first failing rate failed.
    stopped: Option<String>,
    mb_per_1000: Option<f64>,
}

/// `--sweep`: every rate in ascending order, each broker in turn at each
/// rate, single-event publishes.
async fn sweep(
    args: &BenchArgs,
    target: &Target,
    dir: &Path,
    names: &Names,
    posts: &[Post],
    kinds: &[BrokerKind],
    rates: &[f64],
) -> Result<()> {
    let single = BenchArgs {
        batch: 1,
        no_reconnect_test: true,
        ..args.clone()
    };
    let mut rates = rates.to_vec();
    rates.sort_by(f64::total_cmp);
    let n = u64::from(args.posts);
    let mut lines: Vec<(BrokerKind, SweepLine)> =
        kinds.iter().map(|k| (*k, SweepLine::default())).collect();
    let mut results = Vec::new();
    for &rate in &rates {
        for (kind, line) in &mut lines {
            if line.stopped.is_some() {
                continue;
            }
            let total = (rate * args.duration.as_secs_f64()).round().max(1.0) as u64;
            let per_post = rate / n as f64;
            let load = Load::Rate {
                per_post,
                duration: args.duration,
            };
            for (i, post) in posts.iter().enumerate() {
                post.stats
                    .target
                    .store(posts::share(total, n, i as u64), Relaxed);
                let phase = i as f64 / n as f64 / per_post;
                post.stats.phase_ns.store((phase * 1e9) as u64, Relaxed);
            }
            eprintln!("[{}] sweep: {rate:.0} events/s", kind.name());
            let r = run_once(&single, target, *kind, dir, names, posts, load, total).await?;
            if !args.json {
                println!("sweep {rate:.0}/s {}", result_line(&r));
            }
            if line.mb_per_1000.is_none() {
                line.mb_per_1000 = r.broker_mb_per_1000;
            }
            let p99 = quantile(&r.latencies, 0.99);
            let failure = if r.lost > 0 {
                Some(format!("{} lost", r.lost))
            } else if r.resent > 0 {
                Some(format!("{} resent", r.resent))
            } else if r.receipted_per_s
                < SWEEP_CARRIED * total as f64 / (args.duration.as_secs_f64() + 1.0 / per_post)
            {
                Some(format!("carried {:.0}/s", r.receipted_per_s))
            } else if r.probes_missing > 0 {
                Some(format!("{} probe alarms missing", r.probes_missing))
            } else {
                match p99 {
                    Some(p99) if p99 <= SWEEP_P99 => None,
                    Some(p99) => Some(format!("p99 {:.1} ms", p99.as_secs_f64() * 1000.0)),
                    None => Some("no latency measured".to_owned()),
                }
            };
            match failure {
                None => line.best = p99.map(|p| (rate, p)),
                Some(why) => line.stopped = Some(format!("at {rate:.0}/s: {why}")),
            }
            results.push((rate, r));
        }
    }
    if args.json {
        let runs: Vec<serde_json::Value> = results
            .iter()
            .map(|(rate, r)| {
                serde_json::json!({
                    "rate": rate,
                    "broker": r.broker,
                    "receipted_per_s": r.receipted_per_s,
                    "lost": r.lost,
                    "resent": r.resent,
                    "p99_ms": ms(quantile(&r.latencies, 0.99)),
                    "broker_cpu_s": r.broker_usage.map(|u| u.cpu_s),
                })
            })
            .collect();
        let best: serde_json::Map<String, serde_json::Value> = lines
            .iter()
            .map(|(k, l)| {
                (
                    k.name().to_owned(),
                    serde_json::json!({
                        "best_rate": l.best.map(|b| b.0),
                        "best_p99_ms": l.best.map(|b| b.1.as_secs_f64() * 1000.0),
                        "stopped": l.stopped,
                        "broker_mb_per_1000_posts": l.mb_per_1000,
                    }),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "posts": args.posts, "sweep": rates, "runs": runs, "best": best })
        );
    } else {
        for (kind, l) in &lines {
            println!("{}", sweep_line(*kind, l, args.posts));
        }
        if let [(_, v), (_, m)] = &lines[..]
            && let (Some(a), Some(b)) = (v.best, m.best)
        {
            println!(
                "vigil/mosquitto: highest rate within p99 100 ms {:.2}x",
                a.0 / b.0
            );
        }
    }
    if let Some((_, bad)) = results.iter().find(|(_, r)| r.lost > 0) {
        bail!(
            "{} events sent through {} were never receipted",
            bad.lost,
            bad.broker
        );
    }
    Ok(())
}

fn sweep_line(kind: BrokerKind, l: &SweepLine, posts: u32) -> String {
    let mut line = format!("sweep {} ({posts} posts): ", kind.name());
    match l.best {
        Some((rate, p99)) => {
            line += &format!(
                "highest rate carried {rate:.0} ev/s (p99 {:.1} ms)",
                p99.as_secs_f64() * 1000.0
            );
        }
        None => line += "no rate carried",
    }
    match &l.stopped {
        Some(why) => line += &format!("; stopped {why}"),
        None => line += "; every rate carried",
    }
    if let Some(mb) = l.mb_per_1000 {
        line += &format!("; {mb:.1} MB per 1000 posts");
    }
    line
}

/// Each post's TLS client config, with its certificate.
fn load_posts(dir: &Path, ids: &[String]) -> Result<Vec<Post>> {
    let pki = dir.join("pki");
    ids.iter()
        .map(|id| {
            let tls = vigil_pki::TlsConfig {
                ca: pki.join("ca.pem"),
                cert: pki.join(format!("{id}.pem")),
                key: pki.join(format!("{id}.key")),
                crl: None,
            }
            .load()
            .with_context(|| format!("post certificate {id}"))?
            .client_config()
            .with_context(|| format!("post certificate {id}"))?;
            Ok(Post {
                id: id.clone(),
                tls: Arc::new(tls),
                stats: Arc::new(PostStats::default()),
            })
        })
        .collect()
}

/// A broker child and how to start it again.
#[derive(Debug)]
struct OwnBroker {
    daemon: Daemon,
    program: PathBuf,
    argv: Vec<String>,
}

/// The daemons of one run.
#[derive(Debug)]
struct Daemons {
    broker: Option<OwnBroker>,
    ops: Option<Daemon>,
    /// Further replicas (with --replicas): their process, API and metrics.
    standbys: Vec<(Daemon, SocketAddr, SocketAddr)>,
    broker_addr: SocketAddr,
    api: SocketAddr,
    ops_metrics: Option<SocketAddr>,
    /// The Vigil broker's Prometheus endpoint (Mosquitto has none).
    broker_metrics: Option<SocketAddr>,
}

/// Creates (after dropping any left from an earlier bench) the database
/// `vigil_bench_<tag>` on the server of `url`, and returns its URL.
async fn fresh_database(url: &str, tag: &str) -> Result<String> {
    let name: String = format!("vigil_bench_{tag}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let fresh = with_database(url, &name)
        .with_context(|| format!("--store-url {url}: no database name to replace"))?;
    let admin = url.to_owned();
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE); CREATE DATABASE {name}");
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .with_context(|| format!("--store-url {admin}"))?;
        for statement in sql.split("; ") {
            client
                .batch_execute(statement)
                .with_context(|| format!("--store-url: {statement}"))?;
        }
        Ok(())
    })
    .await??;
    Ok(fresh)
}

/// `url` naming database `db` instead of its own.
fn with_database(url: &str, db: &str) -> Option<String> {
    let scheme_end = url.find("://")? + 3;
    let path_start = scheme_end + url[scheme_end..].find('/')?;
    let path_end = url[path_start..]
        .find('?')
        .map_or(url.len(), |i| path_start + i);
    Some(format!("{}/{db}{}", &url[..path_start], &url[path_end..]))
}

async fn start_daemons(
    args: &BenchArgs,
    target: &Target,
    kind: BrokerKind,
    dir: &Path,
    tag: &str,
) -> Result<Daemons> {
    let (exe, mosquitto) = match target {
        Target::Running { broker, api } => {
            return Ok(Daemons {
                broker: None,
                ops: None,
                standbys: Vec::new(),
                broker_addr: *broker,
                api: *api,
                ops_metrics: None,
                broker_metrics: None,
            });
        }
        Target::Own { exe, mosquitto } => (exe, mosquitto),
    };
    let broker_addr = procs::free_port()?;
    let mut broker_metrics = None;
    let (program, broker_args) = match kind {
        BrokerKind::Vigil => {
            // Room for every post, the probes and the ops center; at least
            // the default 1024 (handshakes in flight are capped at 256).
            // Every post dials from loopback: one source holds them all.
            let max = (args.posts + args.probes + 64).max(1024);
            let metrics = procs::free_port()?;
            broker_metrics = Some(metrics);
            let path = write_config(
                dir,
                &format!("{tag}-broker.toml"),
                &format!(
                    "# Written by `vigil bench`.\nlisten = \"{broker_addr}\"\n{}\n[limits]\nmax_connections = {max}\nmax_connections_per_source = {max}\nshutdown_grace_ms = 1000\n# Capacity is measured: no per-post budget (Mosquitto has none).\npost_publish_rate = 0\npost_byte_rate = 0\n\n[metrics]\nlisten = \"{metrics}\"\n",
                    tls_table("broker")
                ),
            )?;
            (
                exe.clone(),
                vec![
                    "broker".to_owned(),
                    "--config".to_owned(),
                    path.display().to_string(),
                ],
            )
        }
        BrokerKind::Mosquitto => {
            let conf = procs::mosquitto_config(&dir.join(tag), &dir.join("pki"), broker_addr)?;
            (
                mosquitto.clone().context("mosquitto")?,
                vec!["-c".to_owned(), conf.display().to_string()],
            )
        }
    };
    let log = dir.join(tag).join("broker.log");
    let argv: Vec<&str> = broker_args.iter().map(String::as_str).collect();
    let mut broker = Daemon::spawn(kind.name(), &program, &argv, &log)?;
    broker.wait_listening(broker_addr).await?;

    let api = procs::free_port()?;
    let metrics = procs::free_port()?;
    let store = match &args.store_url {
        Some(url) => {
            let url = fresh_database(url, tag).await?;
            format!("\n[store]\nurl = \"{url}\"\n")
        }
        None => String::new(),
    };
    let start_ops = |i: u8, api: SocketAddr, metrics: SocketAddr| -> Result<Daemon> {
        let name = if i == 1 {
            "ops".to_owned()
        } else {
            format!("ops-{i}")
        };
        let path = write_config(
            dir,
            &format!("{tag}-{name}.toml"),
            &format!(
                "# Written by `vigil bench`.\ndata_dir = \"{tag}/{name}-data\"\n{store}{}\n[mqtt]\nserver = \"{broker_addr}\"\n\n[api]\nlisten = \"{api}\"\n\n# Capacity is measured: the per-post budget out of reach.\n[budget]\nevents_per_sec = 1000000000\nburst_events = 1000000000\nbytes_per_sec = 1000000000000\nburst_bytes = 1000000000000\n\n[metrics]\nlisten = \"{metrics}\"\n",
                tls_table("ops")
            ),
        )?;
        Daemon::spawn(
            &format!("ops center {name}"),
            exe,
            &["ops", "--config", &path.display().to_string()],
            &dir.join(tag).join(format!("{name}.log")),
        )
    };
    let mut ops = start_ops(1, api, metrics)?;
    ops.wait_listening(api).await?;
    ops.wait_listening(metrics).await?;
    let mut standbys = Vec::new();
    if args.replicas > 1 {
        // The first leads before the others start.
        let deadline = Instant::now() + READY_WAIT;
        while procs::scrape(metrics, "vigil_ops_leading")
            .await
            .unwrap_or(0.0)
            < 1.0
        {
            ops.check_running()?;
            if Instant::now() > deadline {
                bail!("the first ops center did not lead within {READY_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for i in 2..=args.replicas {
            let (api, metrics) = (procs::free_port()?, procs::free_port()?);
            let mut standby = start_ops(i, api, metrics)?;
            standby.wait_listening(api).await?;
            standby.wait_listening(metrics).await?;
            standbys.push((standby, api, metrics));
        }
    }
    Ok(Daemons {
        broker: Some(OwnBroker {
            daemon: broker,
            program,
            argv: broker_args,
        }),
        ops: Some(ops),
        standbys,
        broker_addr,
        api,
        ops_metrics: Some(metrics),
        broker_metrics,
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_once(
    args: &BenchArgs,
    target: &Target,
    kind: BrokerKind,
    dir: &Path,
    names: &Names,
    posts: &[Post],
    load: Load,
    total: u64,
) -> Result<RunResult> {
    let tag = kind.name();
    let run_dir = dir.join(tag);
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)
            .with_context(|| format!("clearing {}", run_dir.display()))?;
    }
    std::fs::create_dir_all(&run_dir)?;
    match target {
        Target::Own { .. } => eprintln!("[{tag}] starting the broker and the ops center..."),
        Target::Running { broker, api } => {
            eprintln!("[{tag}] using the running broker {broker} and ops center {api}...");
        }
    }
    let mut daemons = start_daemons(args, target, kind, dir, tag).await?;
    for p in posts {
        p.stats.sent.store(0, Relaxed);
        p.stats.receipted.store(0, Relaxed);
        p.stats.connects.store(0, Relaxed);
        p.stats.resent.store(0, Relaxed);
    }

    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let result = drive_run(
        args,
        kind,
        dir,
        names,
        posts,
        load,
        total,
        &mut daemons,
        &stop,
        &tracker,
    )
    .await;
    stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout(STOP_WAIT, tracker.wait()).await;
    if let Some(ops) = daemons.ops.as_mut() {
        ops.kill();
    }
    if let Some(OwnBroker { daemon: broker, .. }) = daemons.broker.as_mut() {
        broker.kill();
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive_run(
    args: &BenchArgs,
    kind: BrokerKind,
    dir: &Path,
    names: &Names,
    posts: &[Post],
    load: Load,
    total: u64,
    daemons: &mut Daemons,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<RunResult> {
    let tag = kind.name();
    let recorder = Arc::new(probes::Recorder::default());
    if !names.probes.is_empty() {
        let (ready_tx, mut ready) = watch::channel(false);
        tracker.spawn(probes::watch_feed(
            dir.join("pki"),
            names.analyst.clone(),
            // With replicas, a standby's feed: it outlives the leader.
            daemons.standbys.last().map_or(daemons.api, |s| s.1),
            names.probes.clone(),
            recorder.clone(),
            ready_tx,
            stop.child_token(),
        ));
        tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .context("the incident feed did not open")?
            .context("the incident feed did not open")?;
    }
    let probes =
        probes::start_gateways(dir, tag, &names.probes, daemons.broker_addr, tracker, stop).await?;

    let broker_before = broker_usage(daemons);
    eprintln!("[{tag}] connecting {} posts...", posts.len());
    let settings = PostSettings {
        host: daemons.broker_addr.ip().to_string(),
        port: daemons.broker_addr.port(),
        batch: args.batch,
        window: args.window,
    };
    let (start_tx, start_rx) = watch::channel(None);
    let connect_start = Instant::now();
    for post in posts {
        posts::spawn(post, &settings, start_rx.clone(), stop, tracker);
    }
    let connect_wait = CONNECT_WAIT + Duration::from_millis(20 * posts.len() as u64);
    wait_until(connect_wait, "every post to connect", daemons, || {
        let n = posts
            .iter()
            .filter(|p| p.stats.connects.load(Relaxed) > 0)
            .count();
        (n == posts.len())
            .then_some(())
            .ok_or_else(|| format!("{n} of {} connected", posts.len()))
    })
    .await?;
    let connect_s = connect_start.elapsed().as_secs_f64();
    // The retained statuses reach the ops center only through its
    // subscription: once it counted one, events will not be dropped for
    // want of a subscriber.
    if let Some(metrics) = daemons.ops_metrics {
        let deadline = Instant::now() + READY_WAIT;
        while procs::scrape(metrics, "vigil_ops_statuses_total")
            .await
            .unwrap_or(0.0)
            < 1.0
        {
            if Instant::now() > deadline {
                bail!("the ops center received no post status within {READY_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let broker_connected = broker_usage(daemons);
    let broker_mb_per_1000 = match (broker_before, broker_connected) {
        (Some(a), Some(b)) => {
            Some((b.rss_kb.saturating_sub(a.rss_kb)) as f64 / 1024.0 * 1000.0 / posts.len() as f64)
        }
        _ => None,
    };

    // The load.
    let stored_before = stored(daemons).await;
    let own_before = procs::own_usage()?;
    let broker_cpu_before = broker_usage(daemons);
    let ops_cpu_before = daemons.ops.as_ref().map(Daemon::usage).transpose()?;
    eprintln!("[{tag}] sending {total} events...");
    let t0 = Instant::now();
    start_tx.send_replace(Some((load, t0)));
    let probe_stop = stop.child_token();
    probes::start_panels(
        &probes,
        args.probe_interval,
        &recorder,
        tracker,
        &probe_stop,
    )?;
    let schedule_end = match load {
        Load::Count => t0,
        Load::Rate { duration, .. } => t0 + duration,
    };
    let mut last_line = Instant::now();
    let mut last_receipted = 0u64;
    let mut progress_mark = (0u64, 0usize);
    let mut last_progress = Instant::now();
    let mut finished_at = None;
    let mut failover: Option<(Instant, Failover, u64)> = None;
    loop {
        let (sent, receipted) = sums(posts);
        if let Some(after) = args.kill_leader_after {
            track_failover(after, t0, receipted, daemons, &mut failover).await;
        }
        if receipted >= total && finished_at.is_none() {
            finished_at = Some(Instant::now());
        }
        // The probes keep going until each had an alarm through, so that a
        // short run still yields a latency figure (measured after the load,
        // then: use --rate for latency under load).
        if finished_at.is_some() && recorder.latencies().len() >= probes.len() {
            probe_stop.cancel();
        }
        let (_, pending) = recorder.counts();
        if finished_at.is_some() && probe_stop.is_cancelled() && pending == 0 {
            break;
        }
        let seen = recorder.latencies().len();
        if (receipted, seen) != progress_mark {
            progress_mark = (receipted, seen);
            last_progress = Instant::now();
        }
        if Instant::now() > schedule_end && last_progress.elapsed() > DRAIN_WAIT {
            break;
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            let rate = (receipted - last_receipted) as f64 / last_line.elapsed().as_secs_f64();
            let relayed = match daemons.broker_metrics {
                Some(m) => {
                    let get = async |name| procs::scrape(m, name).await.unwrap_or(f64::NAN);
                    format!(
                        ", broker publishes in {} out {}",
                        get("vigil_broker_publishes_in_total").await,
                        get("vigil_broker_publishes_out_total").await
                    )
                }
                None => String::new(),
            };
            eprintln!(
                "[{tag}] {:>5.1}s sent {sent}/{total} receipted {receipted} ({rate:.0}/s), probe alarms {} seen {}{relayed}",
                t0.elapsed().as_secs_f64(),
                recorder.counts().0,
                recorder.latencies().len(),
            );
            last_line = Instant::now();
            last_receipted = receipted;
        }
        if let Some(OwnBroker { daemon: broker, .. }) = daemons.broker.as_mut() {
            broker.check_running()?;
        }
        if let Some(ops) = daemons.ops.as_mut() {
            ops.check_running()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = finished_at.unwrap_or_else(Instant::now);
    let elapsed_s = (end - t0).as_secs_f64();
    let (sent, receipted) = sums(posts);
    let stored_after = stored(daemons).await;
    let own_after = procs::own_usage()?;
    let broker_after = broker_usage(daemons);
    // None once the leader was killed: its figures went with it.
    let ops_after = daemons.ops.as_ref().map(Daemon::usage).transpose()?;
    let usage_delta = |a: Option<Usage>, b: Option<Usage>| match (a, b) {
        (Some(a), Some(b)) => Some(Usage {
            cpu_s: b.cpu_s - a.cpu_s,
            ..b
        }),
        _ => None,
    };
    let mut result = RunResult {
        broker: tag,
        posts: args.posts,
        events: sent,
        receipted,
        lost: sent.saturating_sub(receipted) + total.saturating_sub(sent),
        resent: posts.iter().map(|p| p.stats.resent.load(Relaxed)).sum(),
        elapsed_s,
        receipted_per_s: receipted as f64 / elapsed_s,
        stored_per_s: match (stored_before, stored_after) {
            (Some(a), Some(b)) => Some((b - a) / elapsed_s),
            _ => None,
        },
        latencies: recorder.latencies(),
        probes_missing: recorder.counts().1,
        connect_s,
        reconnect_s: None,
        broker_usage: usage_delta(broker_cpu_before, broker_after),
        ops_usage: usage_delta(ops_cpu_before, ops_after),
        broker_mb_per_1000,
        bench_cpu_s: own_after.cpu_s - own_before.cpu_s,
        failover: failover.map(|(_, f, _)| f),
    };

    if !args.no_reconnect_test && daemons.broker.is_some() {
        result.reconnect_s = Some(reconnect_test(kind, dir, posts, daemons).await?);
    }
    // Stop the posts before their start channel closes.
    stop.cancel();
    drop(start_tx);
    Ok(result)
}

/// Kills the broker, starts it again on the same port, and times from the
/// new start until every post has connected again.
async fn reconnect_test(
    kind: BrokerKind,
    dir: &Path,
    posts: &[Post],
    daemons: &mut Daemons,
) -> Result<f64> {
    let tag = kind.name();
    let Some(OwnBroker {
        daemon: broker,
        program,
        argv,
    }) = daemons.broker.as_mut()
    else {
        bail!("no broker of our own");
    };
    eprintln!("[{tag}] restarting the broker...");
    let before: Vec<u64> = posts
        .iter()
        .map(|p| p.stats.connects.load(Relaxed))
        .collect();
    broker.kill();
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let log = dir.join(tag).join("broker-restarted.log");
    let t0 = Instant::now();
    *broker = Daemon::spawn(tag, program, &argv, &log)?;
    broker.wait_listening(daemons.broker_addr).await?;
    let wait = CONNECT_WAIT + Duration::from_millis(20 * posts.len() as u64);
    wait_until(wait, "every post to reconnect", daemons, || {
        let n = posts
            .iter()
            .zip(&before)
            .filter(|(p, b)| p.stats.connects.load(Relaxed) > **b)
            .count();
        (n == posts.len())
            .then_some(())
            .ok_or_else(|| format!("{n} of {} reconnected", posts.len()))
    })
    .await?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Polls `check` every 10 ms until it is `Ok`, or fails after `limit` with
/// its last answer (or when a daemon died).
async fn wait_until(
    limit: Duration,
    what: &str,
    daemons: &mut Daemons,
    mut check: impl FnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() > deadline {
            bail!("gave up waiting for {what} after {limit:?}: {last}");
        }
        if let Some(OwnBroker { daemon: broker, .. }) = daemons.broker.as_mut() {
            broker.check_running()?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kills the leading replica once `after` has passed since `t0`, then
/// times until a standby leads and until receipts flow again.
async fn track_failover(
    after: Duration,
    t0: Instant,
    receipted: u64,
    daemons: &mut Daemons,
    state: &mut Option<(Instant, Failover, u64)>,
) {
    match state {
        None if t0.elapsed() >= after => {
            let Some(mut leader) = daemons.ops.take() else {
                return;
            };
            leader.kill();
            eprintln!(
                "[failover] killed the leading ops center (SIGKILL) at {:.1}s",
                t0.elapsed().as_secs_f64()
            );
            *state = Some((
                Instant::now(),
                Failover {
                    killed_at_s: t0.elapsed().as_secs_f64(),
                    ..Failover::default()
                },
                receipted,
            ));
        }
        Some((killed, f, mark)) => {
            if f.leading_s.is_none() {
                for (_, _, metrics) in &daemons.standbys {
                    if procs::scrape(*metrics, "vigil_ops_leading")
                        .await
                        .unwrap_or(0.0)
                        >= 1.0
                    {
                        f.leading_s = Some(killed.elapsed().as_secs_f64());
                        eprintln!(
                            "[failover] a standby leads {:.2}s after the kill",
                            killed.elapsed().as_secs_f64()
                        );
                        // Receipts counted from here on are the new leader's.
                        *mark = receipted;
                        break;
                    }
                }
            } else if f.receipting_s.is_none() && receipted > *mark {
                f.receipting_s = Some(killed.elapsed().as_secs_f64());
                eprintln!(
                    "[failover] receipts flow again {:.2}s after the kill",
                    killed.elapsed().as_secs_f64()
                );
            }
        }
        None => {}
    }
}

fn broker_usage(daemons: &Daemons) -> Option<Usage> {
    daemons.broker.as_ref().and_then(|b| b.daemon.usage().ok())
}

async fn stored(daemons: &Daemons) -> Option<f64> {
    procs::scrape(daemons.ops_metrics?, "vigil_ops_events_stored_total")
        .await
        .ok()
}

fn sums(posts: &[Post]) -> (u64, u64) {
    posts.iter().fold((0, 0), |(s, r), p| {
        (
            s + p.stats.sent.load(Relaxed),
            r + p.stats.receipted.load(Relaxed),
        )
    })
}

/// The nearest-rank `q` quantile of sorted `values`.
fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1000.0)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn result_line(r: &RunResult) -> String {
    let mut line = format!(
        "{}: {} posts, {} events in {:.2}s: {:.0} ev/s receipted",
        r.broker, r.posts, r.events, r.elapsed_s, r.receipted_per_s
    );
    if let Some(s) = r.stored_per_s {
        line += &format!(", {s:.0} ev/s stored");
    }
    line += &format!(", lost {}, resent {}", r.lost, r.resent);
    let l = &r.latencies;
    if l.is_empty() {
        line += "; latency: no probes";
    } else {
        let f = |q| ms(quantile(l, q)).unwrap_or(f64::NAN);
        line += &format!(
            "; frame-to-feed p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms (n={}, missing {})",
            f(0.5),
            f(0.9),
            f(0.99),
            f(1.0),
            l.len(),
            r.probes_missing
        );
    }
    match (r.broker_usage, r.ops_usage) {
        (Some(b), Some(o)) => {
            line += &format!(
                "; broker cpu {:.2}s peak {:.0} MB, {:.1} MB/1000 posts; ops cpu {:.2}s peak {:.0} MB",
                b.cpu_s,
                mb(b.peak_rss_kb),
                r.broker_mb_per_1000.unwrap_or(f64::NAN),
                o.cpu_s,
                mb(o.peak_rss_kb)
            );
        }
        (Some(b), None) if r.failover.is_some() => {
            line += &format!(
                "; broker cpu {:.2}s peak {:.0} MB, {:.1} MB/1000 posts; ops not measured (killed mid-run)",
                b.cpu_s,
                mb(b.peak_rss_kb),
                r.broker_mb_per_1000.unwrap_or(f64::NAN),
            );
        }
        _ => line += "; broker and ops not measured (running elsewhere)",
    }
    if let Some(f) = r.failover {
        let s = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |v| format!("{v:.2}s"));
        line += &format!(
            "; leader killed at {:.1}s: a standby led after {}, receipts resumed after {}",
            f.killed_at_s,
            s(f.leading_s),
            s(f.receipting_s)
        );
    }
    line += &format!(
        "; bench cpu {:.2}s; connect {:.2}s",
        r.bench_cpu_s, r.connect_s
    );
    if let Some(s) = r.reconnect_s {
        line += &format!("; reconnect {s:.2}s");
    }
    line
}

fn ratio_line(v: &RunResult, m: &RunResult) -> String {
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let mut line = format!(
        "vigil/mosquitto: throughput {:.2}x",
        ratio(v.receipted_per_s, m.receipted_per_s)
    );
    if let (Some(a), Some(b)) = (quantile(&v.latencies, 0.99), quantile(&m.latencies, 0.99)) {
        line += &format!(
            ", p99 latency {:.2}x",
            ratio(a.as_secs_f64(), b.as_secs_f64())
        );
    }
    if let (Some(a), Some(b)) = (v.broker_usage, m.broker_usage) {
        line += &format!(
            ", broker cpu {:.2}x, broker peak memory {:.2}x",
            ratio(a.cpu_s, b.cpu_s),
            ratio(a.peak_rss_kb as f64, b.peak_rss_kb as f64)
        );
    }
    if let (Some(a), Some(b)) = (v.reconnect_s, m.reconnect_s) {
        line += &format!(", reconnect time {:.2}x", ratio(a, b));
    }
    line
}

fn json_report(args: &BenchArgs, results: &[RunResult]) -> String {
    use serde_json::{Value, json};
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            let l = &r.latencies;
            json!({
                "broker": r.broker,
                "posts": r.posts,
                "events": r.events,
                "receipted": r.receipted,
                "lost": r.lost,
                "resent": r.resent,
                "elapsed_s": r.elapsed_s,
                "receipted_per_s": r.receipted_per_s,
                "stored_per_s": r.stored_per_s,
                "latency_ms": {
                    "n": l.len(),
                    "missing": r.probes_missing,
                    "p50": ms(quantile(l, 0.5)),
                    "p90": ms(quantile(l, 0.9)),
                    "p99": ms(quantile(l, 0.99)),
                    "max": ms(quantile(l, 1.0)),
                },
                "broker_cpu_s": r.broker_usage.map(|u| u.cpu_s),
                "broker_peak_rss_mb": r.broker_usage.map(|u| mb(u.peak_rss_kb)),
                "broker_mb_per_1000_posts": r.broker_mb_per_1000,
                "ops_cpu_s": r.ops_usage.map(|u| u.cpu_s),
                "ops_peak_rss_mb": r.ops_usage.map(|u| mb(u.peak_rss_kb)),
                "bench_cpu_s": r.bench_cpu_s,
                "connect_s": r.connect_s,
                "reconnect_s": r.reconnect_s,
                "failover": r.failover.map(|f| json!({
                    "killed_at_s": f.killed_at_s,
                    "leading_s": f.leading_s,
                    "receipting_s": f.receipting_s,
                })),
            })
        })
        .collect();
    let mut report = json!({
        "posts": args.posts,
        "rate": args.rate,
        "count": args.count,
        "runs": runs,
    });
    if let [v, m] = results
        && m.receipted_per_s > 0.0
    {
        report["vigil_over_mosquitto_throughput"] = json!(v.receipted_per_s / m.receipted_per_s);
    }
    report.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&v[..1], 0.5), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}

#[cfg(test)]
mod store_url_tests {
    use super::with_database;

    #[test]
    fn the_database_of_a_store_url_is_replaced() {
        assert_eq!(
            with_database("postgresql://u@/db?host=/run/pg&port=5432", "other").as_deref(),
            Some("postgresql://u@/other?host=/run/pg&port=5432")
        );
        assert_eq!(
            with_database("postgresql://u:pw@h:5432/db", "x").as_deref(),
            Some("postgresql://u:pw@h:5432/x")
        );
        assert_eq!(with_database("postgresql://u@h", "x"), None);
    }
}
