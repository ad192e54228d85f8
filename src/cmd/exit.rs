//! The exit codes of every `pullgate` command, in one table (README "Exit codes").
//!
//! The codes above 63 are the BSD `sysexits.h` ones, as other Unix tools use them. A usage
//! error (a bad flag, an unreadable or invalid configuration, contradictory input) is
//! [`USAGE`] in every command, including the argument errors clap finds before a command runs.

/// Done: served and shut down cleanly, verified, nothing would be refused, no problem found.
pub const OK: i32 = 0;
/// Refused or problems found: not verified, denied, something would be refused, a check
/// failed, a runtime failure (`serve`: e.g. the socket is in use).
pub const FAILED: i32 = 1;
// 1 to 4 from `trust-root status` are its verdict (fresh 0, expiring 1, stale 2, none
// installed 3, damaged 4): `crate::trust::status::Verdict::exit_code`.
/// Bad command line, configuration or policy (EX_USAGE).
pub const USAGE: i32 = 64;
/// An input file cannot be read: `report`'s audit log (EX_NOINPUT).
pub const NO_INPUT: i32 = 66;
/// Try again later: another `trust-root import` is running (EX_TEMPFAIL).
pub const TEMP_FAIL: i32 = 75;
/// stdout was closed before the output ended (`pullgate report | head`): the status of a
/// process killed by SIGPIPE (128 + 13), as a shell shows it.
pub const BROKEN_PIPE: i32 = 128 + 13;

/// `code` as a process exit status; a code outside 0..=255 becomes [`FAILED`].
pub fn status(code: i32) -> std::process::ExitCode {
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(FAILED as u8))
}
