//! Time as a value. The core never reads a clock: callers pass the current time in.

use serde::{Deserialize, Serialize};

/// Milliseconds on a clock chosen by the caller (wall clock in the agent, a counter in simulations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }

    pub fn plus_secs(self, secs: u64) -> Self {
        Millis(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    pub fn plus_millis(self, ms: u64) -> Self {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Formats Unix epoch milliseconds as ISO 8601 in UTC with an explicit offset (`2026-01-02T03:04:05.678+00:00`).
pub fn format_iso8601(t: Millis) -> String {
    let secs = t.0 / 1000;
    let ms = t.0 % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}+00:00", rem / 3600, (rem / 60) % 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_back() {
        assert_eq!(format_iso8601(Millis(0)), "1970-01-01T00:00:00.000+00:00");
        let t = Millis(1_795_000_000_123);
        let text = format_iso8601(t);
        assert_eq!(crate::ha::parse_iso8601(&text), Some(t), "{text}");
    }
}
