//! `vigil config default broker|gateway|ops`: print a commented default
//! config.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a commented default config (TOML) for a daemon.
    Default {
        #[arg(value_enum)]
        part: Part,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Part {
    /// The broker (`vigil broker`).
    Broker,
    /// A post's gateway (`vigil gateway`).
    Gateway,
    /// The operations center (`vigil ops`).
    Ops,
}

pub(crate) fn run(cmd: &ConfigCommand) -> Result<()> {
    let ConfigCommand::Default { part } = cmd;
    let text = match part {
        Part::Broker => vigil_broker::DEFAULT_CONFIG,
        Part::Gateway => vigil_gateway::config::DEFAULT_CONFIG,
        Part::Ops => vigil_ops::config::DEFAULT_TOML,
    };
    print!("{text}");
    Ok(())
}
