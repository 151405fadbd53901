//! `vigil simulate panel`: dial a DC-09 receiver like an alarm panel and
//! report what it acknowledged.
//!
//! `vigil simulate camera onvif`: serve a simulated ONVIF camera that a
//! gateway subscribes to; `vigil simulate camera push`: POST events to a
//! gateway's camera push endpoint.
//!
//! Progress goes to stderr once a second; the final summary is one line on
//! stdout (`--json` for a JSON object). The exit status is non-zero when an
//! event was not acknowledged, so scripts can use it as a check.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use vigil_dc09::Key;
use vigil_sim::panel::{
    DEFAULT_RETRIES, Panel, PanelConfig, Progress, Protocol, ScenarioKind, Summary, Transport,
};

use crate::Usage;

/// How often the progress line on stderr is refreshed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub(crate) enum SimulateCommand {
    /// Send SIA DC-09 messages to a receiver like an alarm panel does.
    Panel(PanelArgs),
    /// Be an IP camera: an ONVIF event source, or an HTTP event pusher.
    #[command(subcommand)]
    Camera(CameraCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CameraCommand {
    /// Serve an ONVIF device with a PullPoint event service until Ctrl-C;
    /// prints its device URL (for `[[onvif]] url`) on stdout first.
    Onvif(OnvifArgs),
    /// POST events to a gateway's camera push endpoint.
    Push(PushArgs),
}

/// Event names the camera simulators know.
const EVENT_NAMES: &str = "motion, field, line, tamper, signal_loss, scene_change, input";

#[derive(Debug, Args)]
pub(crate) struct OnvifArgs {
    /// Address to serve on (port 0: any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8000")]
    listen: std::net::SocketAddr,
    /// The user name the camera accepts.
    #[arg(long, default_value = "admin")]
    username: String,
    /// The password the camera accepts (WS-Security digest).
    #[arg(long, env = "VIGIL_CAMERA_PASSWORD")]
    password: String,
    /// Generate an event this often (e.g. 500ms, 10s); 0 = never.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    every: Duration,
    /// Events to cycle through, comma-separated: motion, field, line,
    /// tamper, signal_loss, scene_change, input. Stateful ones alternate
    /// between start and stop.
    #[arg(long, value_delimiter = ',', default_value = "motion")]
    events: Vec<String>,
    /// Give every subscription the same address and tell them apart by a
    /// WS-Addressing reference parameter, as some cameras do.
    #[arg(long)]
    reference_parameters: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PushArgs {
    /// The gateway's push endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/camera-events")]
    url: String,
    /// Camera id, as in `[[http.cameras]] camera`.
    #[arg(long)]
    camera: String,
    /// The camera's bearer token.
    #[arg(long, env = "VIGIL_CAMERA_TOKEN")]
    token: String,
    /// Push `kind`: motion, intrusion, line_crossing, tamper, video_loss,
    /// scene_change, or any other word.
    #[arg(long, default_value = "motion")]
    kind: String,
    /// Rule, field or line name.
    #[arg(long)]
    region: Option<String>,
    /// Events to send; stateful kinds alternate start and stop.
    #[arg(long, default_value_t = 2)]
    count: u64,
    /// Time between events.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
    /// How long to wait for each answer.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct PanelArgs {
    /// Receiver address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7000")]
    server: String,
    /// tcp (one connection, reused) or udp (one datagram per message).
    #[arg(long, value_enum, default_value_t = TransportArg::Tcp)]
    transport: TransportArg,
    /// Account number: 3-16 hex digits.
    #[arg(long, default_value = "1234")]
    account: String,
    /// AES key in hex (32, 48 or 64 digits) for encrypted reporting.
    #[arg(long, value_name = "HEX")]
    key: Option<String>,
    /// Receiver number to send (`R...`), 1-6 hex digits.
    #[arg(long)]
    receiver: Option<String>,
    /// Account prefix (`L...`), 1-6 hex digits.
    #[arg(long, default_value = "0")]
    line: String,
    /// sia (SIA-DCS) or cid (ADM-CID, Contact ID).
    #[arg(long, value_enum, default_value_t = ProtocolArg::Sia)]
    protocol: ProtocolArg,
    /// mixed (alarms, restores, troubles, open/close, tests, link tests) or
    /// null (link tests only).
    #[arg(long, value_enum, default_value_t = ScenarioArg::Mixed)]
    scenario: ScenarioArg,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m, 1h).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Messages per second (each still waits for its answer).
    #[arg(long, conflicts_with = "interval")]
    rate: Option<f64>,
    /// Time between messages (e.g. 500ms, 2s); default 1s.
    #[arg(long, value_parser = parse_duration)]
    interval: Option<Duration>,
    /// How long to wait for an answer before retransmitting.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Retransmissions of one event before it is reported as failed.
    #[arg(long, default_value_t = DEFAULT_RETRIES)]
    retries: u32,
    /// Sequence number of the first message (1-9999).
    #[arg(long, default_value_t = 1)]
    first_seq: u16,
    /// Seed for the scenario, to repeat a run exactly.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Sia,
    Cid,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    /// Every kind of alarm, trouble and restore, often (a test workout).
    Mixed,
    /// NULL link tests only.
    Null,
    /// An ordinary day: openings, closings and tests; alarms now and then.
    Quiet,
}

pub(crate) fn run(cmd: SimulateCommand) -> Result<()> {
    match cmd {
        SimulateCommand::Panel(args) => panel(args),
        SimulateCommand::Camera(CameraCommand::Onvif(args)) => onvif_camera(args),
        SimulateCommand::Camera(CameraCommand::Push(args)) => push_camera(&args),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn onvif_camera(args: OnvifArgs) -> Result<()> {
    use vigil_sim::camera::{self as sim, OnvifCamera, SimConfig, SimStats};
    if let Some(bad) = args.events.iter().find(|e| sim::by_name(e, true).is_none()) {
        return Err(Usage(format!(
            "--events: unknown event {bad:?}; use {EVENT_NAMES}"
        ))
        .into());
    }
    if args.password.is_empty() {
        return Err(Usage("--password must not be empty".into()).into());
    }
    let mut config = SimConfig::new(&args.username, &args.password);
    config.every = (!args.every.is_zero()).then_some(args.every);
    config.events = args.events;
    config.reference_parameters = args.reference_parameters;
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let shutdown = CancellationToken::new();
        let camera = OnvifCamera::start(listener, config, shutdown.clone());
        println!("{}", camera.device_url());
        let _ = std::io::stdout().flush();
        cancel_on_signal(shutdown.clone()).await;
        camera.stop().await;
        let s = camera.stats();
        println!(
            "subscriptions {} pulls {} events {} renewals {} unsubscribes {} expired {} refused logins {}",
            SimStats::get(&s.subscriptions),
            SimStats::get(&s.pulls),
            SimStats::get(&s.delivered),
            SimStats::get(&s.renewals),
            SimStats::get(&s.unsubscribes),
            SimStats::get(&s.expired),
            SimStats::get(&s.auth_failures),
        );
        Ok(())
    })
}

fn push_camera(args: &PushArgs) -> Result<()> {
    use vigil_gateway::camera::by_push_name;
    use vigil_sim::camera::{push_body, push_event};
    if !args.url.starts_with("http://") {
        return Err(Usage(format!("--url {:?} must start with http://", args.url)).into());
    }
    let stateful = by_push_name(&args.kind).state_item.is_some();
    runtime()?.block_on(async {
        let mut refused = 0;
        for i in 0..args.count {
            if i > 0 {
                tokio::time::sleep(args.interval).await;
            }
            let state = match (stateful, i % 2) {
                (false, _) => "one_shot",
                (true, 0) => "start",
                (true, _) => "stop",
            };
            let body = push_body(&args.camera, &args.kind, state, args.region.as_deref());
            let (status, answer) = push_event(&args.url, &args.token, &body, args.timeout).await?;
            println!(
                "{} {state}: {} {}",
                args.kind,
                status.as_u16(),
                answer.trim()
            );
            if !status.is_success() {
                refused += 1;
            }
        }
        if refused > 0 {
            bail!("{refused} of {} events refused", args.count);
        }
        Ok(())
    })
}

fn panel(args: PanelArgs) -> Result<()> {
    let json = args.json;
    let config = panel_config(args)?;
    let panel = Panel::new(config).map_err(|e| Usage(e.to_string()))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        tokio::spawn(show_progress(panel.progress()));
        panel.run(shutdown).await
    })?;
    clear_progress();

    if json {
        println!("{}", summary_json(&summary));
    } else {
        println!("{summary}");
    }
    let c = summary.counts;
    if c.failed > 0 || c.unsupported > 0 {
        bail!(
            "{} of {} events not acknowledged ({} failed, {} unsupported by the receiver)",
            c.failed + c.unsupported,
            c.attempted,
            c.failed,
            c.unsupported
        );
    }
    Ok(())
}

fn panel_config(args: PanelArgs) -> Result<PanelConfig> {
    let mut config = PanelConfig::new(args.server, args.account);
    config.transport = match args.transport {
        TransportArg::Tcp => Transport::Tcp,
        TransportArg::Udp => Transport::Udp,
    };
    config.key = args
        .key
        .map(|k| Key::from_hex(&k))
        .transpose()
        .map_err(|e| Usage(format!("--key: {e}")))?;
    config.receiver = args.receiver;
    config.line = args.line;
    config.protocol = match args.protocol {
        ProtocolArg::Sia => Protocol::Sia,
        ProtocolArg::Cid => Protocol::Cid,
    };
    config.scenario = match args.scenario {
        ScenarioArg::Mixed => ScenarioKind::Mixed,
        ScenarioArg::Null => ScenarioKind::Null,
        ScenarioArg::Quiet => ScenarioKind::Quiet,
    };
    config.count = args.count;
    config.duration = args.duration;
    config.interval = match (args.rate, args.interval) {
        (Some(rate), _) if rate.is_finite() && rate > 0.0 => Duration::from_secs_f64(1.0 / rate),
        (Some(_), _) => return Err(Usage("--rate must be a positive number".into()).into()),
        (None, Some(interval)) => interval,
        (None, None) => Duration::from_secs(1),
    };
    config.ack_timeout = args.timeout;
    config.retries = args.retries;
    config.first_seq = args.first_seq;
    config.seed = args.seed;
    // The CLI prints counts only; do not keep a record per event.
    config.record_outcomes = false;
    Ok(config)
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

/// Writes the counts to stderr once a second: rewriting one line on a
/// terminal, one line per change otherwise.
async fn show_progress(progress: tokio::sync::watch::Receiver<Progress>) {
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let mut last = Progress::default();
    loop {
        ticker.tick().await;
        let p = *progress.borrow();
        if p == last {
            continue;
        }
        last = p;
        let line = format!(
            "sent {} acked {} nak {} retries {} failed {} unsupported {}",
            p.attempted, p.acked, p.naks, p.retries, p.failed, p.unsupported
        );
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

/// Ends a rewritten progress line so the summary starts on its own line.
fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

/// The summary as one JSON object. Every value is a number, so it is
/// written by hand rather than pulling in a JSON library.
fn summary_json(summary: &Summary) -> String {
    let c = summary.counts;
    let ms = |d: Option<Duration>| {
        d.map_or_else(
            || "null".to_owned(),
            |d| format!("{:.3}", d.as_secs_f64() * 1e3),
        )
    };
    format!(
        "{{\"attempted\":{},\"acked\":{},\"naks\":{},\"retries\":{},\"failed\":{},\
         \"unsupported\":{},\"cancelled\":{},\"connects\":{},\"elapsed_s\":{:.3},\
         \"ack_p50_ms\":{},\"ack_p99_ms\":{},\"ack_max_ms\":{}}}",
        c.attempted,
        c.acked,
        c.naks,
        c.retries,
        c.failed,
        c.unsupported,
        c.cancelled,
        c.connects,
        summary.elapsed.as_secs_f64(),
        ms(summary.p50()),
        ms(summary.p99()),
        ms(summary.max_latency()),
    )
}

/// Parses `1500ms`, `30s`, `5m`, `2h` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 5m or 1h"))?;
    let seconds = match unit {
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn json_summary_has_every_count() {
        let summary = Summary {
            latencies: vec![Duration::from_millis(2)],
            ..Summary::default()
        };
        let json = summary_json(&summary);
        assert!(json.starts_with("{\"attempted\":0,"), "{json}");
        assert!(json.contains("\"ack_p50_ms\":2.000"), "{json}");
        assert!(json.ends_with("\"ack_max_ms\":2.000}"), "{json}");
    }
}
