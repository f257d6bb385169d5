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

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) for a Unix time in ms.
pub fn format_utc(unix_ms: u64) -> String {
    let (year, month, day, h, m, s) = civil(unix_ms / 1000);
    format!(
        "{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{:03}",
        unix_ms % 1000
    )
}

/// The UTC calendar date and time of `unix_s`: year, month, day, hour,
/// minute, second.
pub fn civil(unix_s: u64) -> (i64, i64, i64, u64, u64, u64) {
    let (days, rem) = (unix_s / 86_400, unix_s % 86_400);
    // Civil-from-days (proleptic Gregorian), after Howard Hinnant.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}
