//! `vigil config default PART`: print a commented default config.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a commented default config (TOML) for a part.
    Default {
        #[arg(value_enum)]
        part: Part,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Part {
    /// The operations center (`vigil ops`).
    Ops,
}

pub(crate) fn run(cmd: &ConfigCommand) -> Result<()> {
    match cmd {
        ConfigCommand::Default { part: Part::Ops } => print!("{}", vigil_ops::config::DEFAULT_TOML),
    }
    Ok(())
}
