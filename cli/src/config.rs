//! `vigil config default broker|gateway|ops`: print a commented default
//! config.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};

use crate::Usage;

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
    Broker,
    Gateway,
    Ops,
}

pub(crate) fn run(cmd: &ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Default { part: Part::Broker } => {
            print!("{}", vigil_broker::DEFAULT_CONFIG);
            Ok(())
        }
        ConfigCommand::Default { part } => Err(Usage(format!(
            "no default config for {} yet: that part is not available in this build",
            part.to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        ))
        .into()),
    }
}
