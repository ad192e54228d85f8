//! The `pullgate` commands: argument definitions and entry points that return an exit code
//! from [`exit`], printing [`OutputFormat`]. Only the glue between the command line and the
//! modules that do the work lives here.

pub mod break_glass;
pub mod doctor;
pub mod exit;
pub mod report;
pub mod trust_root;
pub mod verify;
pub mod verify_files;

use clap::ValueEnum;

/// `--output`: what a command prints on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines for a person to read.
    Human,
    /// The full result as JSON.
    Json,
}
