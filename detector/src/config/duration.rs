//! Durations as operators write them: a whole number with `ms`, `s`, `m`, `h` or `d`.

use std::time::Duration;

/// The longest duration any field may give (ten years: the history's `max_age`); the other
/// fields' bounds (`max_duration`) are tighter. The daemon adds durations to the current time,
/// which overflows (and panics) for the longest ones `u64` can write; found by fuzzing the
/// configuration (`fuzz/corpus/config/long-durations.toml`).
pub(crate) const MAX: Duration = Duration::from_hours(24 * 3650);

/// `200ms`, `1s`, `5m`, `1h`, `30d`. A number of minutes, hours or days too large for a
/// [`Duration`] is an error; how long each field may be is the caller's bound (at most [`MAX`]).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a whole number with ms, s, m, h or d, like 200ms, 1s, 5m"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad)?,
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(bad)?,
        "d" => n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(duration)
}
