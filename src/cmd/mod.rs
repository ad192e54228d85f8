//! What every command shares: the exit-code table and the output format.

pub mod exit;

use clap::ValueEnum;

/// `--output`: what a command prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines for a person to read.
    Human,
    /// The full result as JSON.
    Json,
}
