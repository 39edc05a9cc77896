//! Durations as operators write them: a whole number with `ms`, `s`, `m`, `h` or `d`.

use std::time::Duration;

/// `200ms`, `1s`, `5m`, `1h`, `30d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: write a whole number with ms, s, m, h or d, like 200ms, 1s, 5m"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        "d" => n
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}
