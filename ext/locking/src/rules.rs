//! The functions of `Locking::Client` that need no client: a URL as
//! messages show it, and the phase rules the CLI prints (the core's words,
//! never a copy in Ruby). Registered by `client::init`.

use crate::error::RubyError;
use locking_core::Phase;
use magnus::RString;

/// `Locking::Client.redact(url)`: the URL with its password as "***" (the
/// core's rule, also used in every error message).
pub(crate) fn redact_url(url: RString) -> Result<String, magnus::Error> {
    Ok(locking_core::redact(&url.to_string()?))
}

/// `Locking::Client.server_name(url)`: the server as error messages name it
/// (no credentials, no file paths), or the redacted URL if it does not parse.
pub(crate) fn server_name(url: RString) -> Result<String, magnus::Error> {
    let url = url.to_string()?;
    Ok(locking_core::wire::url::parse(&url)
        .map_or_else(|_| locking_core::redact(&url), |parsed| parsed.name()))
}

/// `Locking::Client.gate_reasons(processes_in_phase_0, source_only, backfill_holder)`:
/// why moving from phase 1 to 2 is not safe (empty: it is). The core's words,
/// the same rules as `transition_reasons` (a running backfill included).
pub(crate) fn gate_reasons(
    in_phase_0: usize,
    source_only: u64,
    backfill: Option<String>,
) -> Vec<String> {
    let mut reasons = locking_core::protocol::gate(in_phase_0, source_only).reasons;
    reasons.extend(locking_core::operate::control::backfill_blocks(
        Phase::Drain,
        backfill.as_deref(),
    ));
    reasons
}

/// `Locking::Client.reverse_gate_reasons(destination_only)`: the same for a
/// rollback from phase 1 to 0.
pub(crate) fn reverse_gate_reasons(destination_only: u64) -> Vec<String> {
    locking_core::protocol::reverse_gate(destination_only).reasons
}

/// `Locking::Client.backfill_refusal(phase_index)`: why backfill may not run
/// in that phase, or nil.
pub(crate) fn backfill_refusal(phase: i64) -> Result<Option<String>, magnus::Error> {
    let phase = Phase::from_index(phase).map_err(RubyError)?;
    Ok(phase.check_backfill().err().map(|error| match error {
        locking_core::Error::InvalidArgument(text) => text,
        other => other.to_string(),
    }))
}
