//! `pullgate doctor`: the command over [`crate::doctor`].

use clap::Args;

use crate::cmd::{exit, OutputFormat};
use crate::doctor::{self, DoctorArgs};

#[derive(Debug, Args)]
pub struct DoctorCommand {
    #[command(flatten)]
    pub args: DoctorArgs,
    #[arg(long, value_enum, default_value = "human")]
    pub output: OutputFormat,
}

/// `pullgate doctor`; returns the exit code.
pub fn run(command: &DoctorCommand) -> i32 {
    let args = &command.args;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pullgate doctor: cannot start the async runtime: {e}");
            return exit::FAILED;
        }
    };
    let report = runtime.block_on(doctor::diagnose(args));
    match command.output {
        OutputFormat::Human => print!("{}", doctor::render_human(&report)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
    }
    if report.ok {
        exit::OK
    } else {
        exit::FAILED
    }
}
