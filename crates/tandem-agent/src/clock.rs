//! Wall-clock time, for what is shown to people or compared with other
//! machines' wall clocks only by a human (event stamps, fence history,
//! failure times as the leader records them). Decisions use monotonic
//! time.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_ms() -> u64 {
    unix_us() / 1_000
}

/// Microseconds since the Unix epoch (0 for a clock before 1970).
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
