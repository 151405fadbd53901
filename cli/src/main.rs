//! `vigil`: the one binary. It parses flags, installs tracing and the rustls
//! crypto provider, and calls into the libraries; no behaviour lives here.
//!
//! Layout:
//! - `main`: flags, logging, exit codes.
//! - [`pki`]: `vigil pki init | issue | revoke | crl | list | renew`.
//! - [`tty`]: a passphrase read from the terminal with echo off.
//! - [`broker`]: `vigil broker --config FILE`.
//! - [`gateway`]: `vigil gateway --config FILE`.
//! - [`ops`]: `vigil ops --config FILE`.
//! - [`config`]: `vigil config default broker|gateway|ops`.
//! - [`dev`]: `vigil dev`, a whole region on loopback in one process.
//! - [`bench`]: `vigil bench`, the end-to-end load test.
//! - [`region`]: PKI, configs and API channels shared by `dev` and `bench`.
//! - [`metrics`]: the `[metrics]` Prometheus endpoint of each daemon.
//! - [`client`]: the gRPC client commands (`watch`, `incidents`, `ack`, …).
//! - [`signals`]: the SIGINT/SIGTERM future daemons stop on.

mod bench;
mod broker;
mod client;
mod config;
mod dev;
mod gateway;
mod metrics;
mod ops;
mod pki;
mod region;
mod signals;
mod simulate;
mod tty;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit status for a bad config or bad arguments (sysexits.h EX_USAGE).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "vigil", version, about = "Sensor event bus for security posts")]
struct Cli {
    /// Log output format (filter with RUST_LOG, e.g. RUST_LOG=vigil=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the region's certificate authority.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Run the MQTT broker (mTLS front with topic ACL over an embedded router).
    Broker(broker::BrokerArgs),
    /// Run a post's gateway (DC-09 receiver, durable outbox, publisher).
    Gateway(gateway::GatewayArgs),
    /// Run the operations center.
    Ops(ops::OpsArgs),
    /// Config files: print defaults.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Run a whole region on loopback: PKI, broker, ops center, simulated
    /// posts, and the live incident feed in this terminal.
    Dev(dev::DevArgs),
    /// End-to-end load test: posts, events/s, latency, CPU and memory.
    Bench(bench::BenchArgs),
    /// Simulate devices: an alarm panel (`panel`) or a camera (`camera`).
    #[command(subcommand)]
    Simulate(simulate::SimulateCommand),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    // Bad arguments are the user's to fix, like a bad config: exit 64
    // (clap's own default is 2). Help and version exit 0.
    let parsed = command_with_plain_usage()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // `vigil dev` prints the incident feed on the terminal; only warnings
    // and errors share it unless RUST_LOG asks for more.
    let default_filter = match cli.command {
        Command::Dev(_) => "warn,rumqttd=off",
        // The probe gateways' reconnect warnings are expected in a bench.
        Command::Bench(_) => "warn,rumqttd=off,vigil_gateway=error",
        _ => "info,rumqttd=off",
    };
    init_tracing(cli.log_format, default_filter);
    vigil_pki::install_crypto_provider();
    quiet_on_closed_stdout();

    let result = match cli.command {
        Command::Pki(cmd) => pki::run(cmd),
        Command::Broker(args) => broker::run(&args),
        Command::Gateway(args) => gateway::run(&args),
        Command::Ops(args) => ops::run(&args),
        Command::Config(cmd) => config::run(&cmd),
        Command::Dev(args) => dev::run(&args),
        Command::Simulate(cmd) => simulate::run(cmd),
        Command::Bench(args) => bench::run(&args),
        Command::Client(cmd) => client::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("vigil: {err:#}");
            if let Some(Status(code, _)) = err.downcast_ref::<Status>() {
                ExitCode::from(*code)
            } else if err.is::<Usage>() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The command line, each subcommand's usage line fixed to what it needs.
///
/// On an error clap writes the usage line with every argument that was
/// given, and counts one taken from the environment as given: with
/// `VIGIL_CA` set, `vigil ack` would answer "Usage: vigil ack --ca <FILE>
/// <ID>", as though `--ca` were required. The usage of the bare command
/// (required arguments and `[OPTIONS]`) is the true one.
fn command_with_plain_usage() -> clap::Command {
    fn fix(cmd: &mut clap::Command) {
        let usage = cmd.render_usage().to_string();
        let usage = usage.strip_prefix("Usage: ").unwrap_or(&usage).to_owned();
        *cmd = std::mem::take(cmd).override_usage(usage);
        for sub in cmd.get_subcommands_mut() {
            fix(sub);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    for sub in cmd.get_subcommands_mut() {
        fix(sub);
    }
    cmd
}

/// `vigil incidents | head`: when whoever reads our output goes away, stop
/// quietly with status 0, as there is no one left to tell.
///
/// Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and
/// `println!` turns that into a panic ("failed printing to stdout: Broken
/// pipe"), exit 101. Restoring SIGPIPE's default would need `unsafe` (which
/// the workspace forbids), and every output line of every command goes
/// through `println!`; so a panic hook recognises exactly that panic and
/// exits 0 before anything unwinds. Any other panic is reported as before.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout")
            && message.contains(&std::io::Error::from_raw_os_error(EPIPE).to_string())
        {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// EPIPE on Linux and the BSDs.
const EPIPE: i32 = 32;

/// Marks an error as the user's to fix (exit status 64).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A command that ran to the end but has something to report through its
/// exit status (e.g. `vigil pki list`: a certificate is due): the status,
/// and the line printed on stderr.
#[derive(Debug)]
pub(crate) struct Status(pub(crate) u8, pub(crate) String);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Status {}

fn init_tracing(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    // The embedded MQTT router (rumqttd) logs routine disconnects at error
    // level; it is off unless asked for (RUST_LOG=info,rumqttd=info). The
    // broker front logs and counts everything that concerns clients.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colour codes only for a person at a terminal: a log file, a pipe or
    // journald gets plain text. NO_COLOR (no-color.org) turns them off too.
    // A log line that cannot be written (stderr closed) is dropped: by
    // default the subscriber reports its own write errors with `eprintln!`,
    // which panics on a closed stderr, in whatever task was logging.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color();
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether `NO_COLOR` asks for no colour: set and not empty (no-color.org).
pub(crate) fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
