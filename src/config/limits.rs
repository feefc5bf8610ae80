//! Validation of the `[limits]` keys that bound what one client controls: command
//! frames, subscription sizes, acknowledgement options, fragmented messages and the
//! replies a connection owes (docs/limits.md, "Size and count").
//!
//! Owns: refusing a setting of these keys that would switch the bound off or make it
//! unusable. A zero is never "no limit" here: every one of them must stay bounded.

use super::{ConfigError, LimitsConfig};

/// `max_in_flight` of a subscription that does not give it.
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 100;
/// `ack_timeout_ms` of a subscription that does not give it.
pub const DEFAULT_ACK_TIMEOUT_MS: u64 = 30_000;
/// `max_attempts` of a subscription that does not give it.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Refuses a `[limits]` bound that is zero, a command bound above the frame bound
/// (which would make it meaningless), an ack bound below its option's default, or a
/// timeout bound too large for the clock.
pub(super) fn validate_bounds(l: &LimitsConfig) -> Result<(), ConfigError> {
    let positive: [(&'static str, u64); 11] = [
        ("limits.max_command_bytes", l.max_command_bytes as u64),
        (
            "limits.max_patterns_per_subscription",
            l.max_patterns_per_subscription as u64,
        ),
        ("limits.max_filter_values", l.max_filter_values as u64),
        ("limits.max_coalesce_windows", l.max_coalesce_windows as u64),
        ("limits.max_in_flight", l.max_in_flight.into()),
        ("limits.max_ack_timeout_ms", l.max_ack_timeout_ms),
        ("limits.max_attempts", l.max_attempts.into()),
        ("limits.max_nack_delay_ms", l.max_nack_delay_ms),
        ("limits.fragment_timeout_ms", l.fragment_timeout_ms),
        (
            "limits.max_waiting_bytes_per_subscriber",
            l.max_waiting_bytes_per_subscriber as u64,
        ),
        ("limits.max_pending_replies", l.max_pending_replies as u64),
    ];
    if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(ConfigError::Invalid {
            key,
            message: "must be greater than 0".to_owned(),
        });
    }
    if l.max_command_bytes > l.max_frame_bytes {
        return Err(ConfigError::Invalid {
            key: "limits.max_command_bytes",
            message: "must be at most limits.max_frame_bytes".to_owned(),
        });
    }
    // A subscription that leaves an option out gets its default, so a bound below
    // the default would refuse the plainest `ack: true`.
    for (key, bound, default) in [
        (
            "limits.max_in_flight",
            u64::from(l.max_in_flight),
            DEFAULT_MAX_IN_FLIGHT,
        ),
        (
            "limits.max_ack_timeout_ms",
            l.max_ack_timeout_ms,
            DEFAULT_ACK_TIMEOUT_MS,
        ),
        (
            "limits.max_attempts",
            l.max_attempts.into(),
            DEFAULT_MAX_ATTEMPTS.into(),
        ),
    ] {
        if bound < default {
            return Err(ConfigError::Invalid {
                key,
                message: format!("must be at least {default}, the option's default"),
            });
        }
    }
    // An `Instant` plus a duration near `u64::MAX` ms overflows; a day is far beyond
    // any sensible redelivery and far below that.
    for (key, ms) in [
        ("limits.max_ack_timeout_ms", l.max_ack_timeout_ms),
        ("limits.max_nack_delay_ms", l.max_nack_delay_ms),
        ("limits.fragment_timeout_ms", l.fragment_timeout_ms),
    ] {
        if ms > MAX_TIMEOUT_MS {
            return Err(ConfigError::Invalid {
                key,
                message: format!("must be at most {MAX_TIMEOUT_MS} (30 days)"),
            });
        }
    }
    Ok(())
}

/// The longest any of the timeouts above may be set to: 30 days.
const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3_600_000;

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    /// Sets one key of the defaults to a value that must be refused.
    type Tweak = fn(&mut LimitsConfig);

    #[test]
    fn each_bound_must_stay_bounded() {
        let table: [(&str, Tweak); 7] = [
            ("limits.max_command_bytes", |l| l.max_command_bytes = 0),
            ("limits.max_command_bytes", |l| {
                l.max_command_bytes = l.max_frame_bytes + 1
            }),
            ("limits.max_filter_values", |l| l.max_filter_values = 0),
            ("limits.max_in_flight", |l| l.max_in_flight = 0),
            ("limits.max_attempts", |l| l.max_attempts = 4),
            ("limits.max_ack_timeout_ms", |l| {
                l.max_ack_timeout_ms = u64::MAX
            }),
            ("limits.max_pending_replies", |l| l.max_pending_replies = 0),
        ];
        for (key, tweak) in table {
            let mut limits = Config::defaults().limits;
            tweak(&mut limits);
            let err = validate_bounds(&limits).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        validate_bounds(&Config::defaults().limits).unwrap();
    }
}
