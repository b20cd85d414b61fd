//! Small helpers for plugin configs: durations written as `30m`, `2h`, `1d`.

/// Parses a duration such as `90s`, `30m`, `2h`, `1d`, `1w` (or a plain
/// number of seconds) into seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, String> {
    parse_duration_ms(text).map(|ms| ms / 1000)
}

/// Parses a duration such as `250ms`, `90s`, `30m`, `2h`, `1d`, `1w` (or a plain
/// number of seconds) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30m, 2h or 1d"))?;
    let mult: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m, h, d or w)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("2h"), Ok(7200));
        assert_eq!(parse_duration_secs("1d"), Ok(86400));
        assert_eq!(parse_duration_secs("45"), Ok(45));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("3y").is_err());
        assert!(parse_duration_secs("99999999999999999999d").is_err());
    }
}
