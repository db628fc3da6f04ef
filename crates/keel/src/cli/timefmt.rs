//! Timestamps for the control commands, without a date library: UTC formatting, and reading the ISO 8601 times
//! `--scheduled` accepts.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

/// Now, as patronictl prints it before an outcome (`2026-01-01 10:00:00.123456`), in UTC.
pub fn now_string() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86400));
    let rem = secs.rem_euclid(86400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}", rem / 3600, rem / 60 % 60, rem % 60, now.subsec_micros())
}

/// Seconds since the epoch, now.
pub fn now_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// Reads `YYYY-MM-DD[T ]HH:MM[:SS[.fff]][Z|±HH[:MM]]` (no zone: UTC). Returns the time as seconds since the
/// epoch and in ISO 8601 form with an explicit offset (`2026-01-01T10:00:00+00:00`), or a description of the
/// problem.
pub fn parse_iso(text: &str) -> Result<(f64, String), String> {
    let bad = || format!("{text:?} is not a time like 2026-01-01T10:00:00+00:00");
    let t = text.trim();
    let num = |s: &str| -> Result<u32, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    if t.len() < 16 {
        return Err(bad());
    }
    let (date, rest) = t.split_at(10);
    let mut dp = date.split('-');
    let (y, mo, d) = match (dp.next(), dp.next(), dp.next()) {
        (Some(y), Some(m), Some(d)) if y.len() == 4 && m.len() == 2 && d.len() == 2 => (num(y)?, num(m)?, num(d)?),
        _ => return Err(bad()),
    };
    let rest = rest.strip_prefix(['T', 't', ' ']).ok_or_else(bad)?;
    // Split the zone off: `Z`, or the last `+`/`-`.
    let (time, zone) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, Some(0i64))
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (t, z) = rest.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = &z[1..];
        let (zh, zm) = match z.split_once(':') {
            Some((h, m)) => (num(h)?, num(m)?),
            None if z.len() == 4 => (num(&z[..2])?, num(&z[2..])?),
            None => (num(z)?, 0),
        };
        if zh > 23 || zm > 59 {
            return Err(bad());
        }
        (t, Some(sign * (i64::from(zh) * 3600 + i64::from(zm) * 60)))
    } else {
        (rest, None)
    };
    let mut tp = time.split(':');
    let h = num(tp.next().ok_or_else(bad)?)?;
    let mi = num(tp.next().ok_or_else(bad)?)?;
    let (s, frac) = match tp.next() {
        Some(s) => match s.split_once('.') {
            Some((s, f)) => (num(s)?, format!("0.{}", f).parse::<f64>().map_err(|_| bad())?),
            None => (num(s)?, 0.0),
        },
        None => (0, 0.0),
    };
    if tp.next().is_some() || !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return Err(bad());
    }
    let offset = zone.unwrap_or(0);
    let local = days_from_civil(i64::from(y), mo, d) * 86400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    let epoch = (local - offset) as f64 + frac;
    let sign = if offset < 0 { '-' } else { '+' };
    let iso = format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{sign}{:02}:{:02}",
        offset.abs() / 3600,
        offset.abs() / 60 % 60
    );
    Ok((epoch, iso))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_454, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn parses_iso_times() {
        assert_eq!(parse_iso("1970-01-02T00:00:00Z").unwrap(), (86400.0, "1970-01-02T00:00:00+00:00".into()));
        assert_eq!(parse_iso("1970-01-01 02:00+02:00").unwrap().0, 0.0);
        assert_eq!(parse_iso("1970-01-01T00:00:00-0100").unwrap(), (3600.0, "1970-01-01T00:00:00-01:00".into()));
        assert_eq!(parse_iso("2030-01-01T10:00").unwrap().1, "2030-01-01T10:00:00+00:00");
        assert!((parse_iso("1970-01-01T00:00:01.5Z").unwrap().0 - 1.5).abs() < 1e-9);
        for bad in ["tomorrow", "2030-13-01T00:00", "2030-01-01", "2030-01-01T25:00", "2030-01-01T10:00+99"] {
            assert!(parse_iso(bad).is_err(), "{bad}");
        }
        assert_eq!(now_string().len(), 26);
    }
}
