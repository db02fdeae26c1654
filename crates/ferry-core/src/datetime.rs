//! File times as calendar dates, for listings and replies.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// 0001-01-01T00:00:00Z.
const FIRST: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z.
const LAST: i64 = 253_402_300_799;

/// `t` in UTC, whole seconds, clamped to the years 1 to 9999. File systems hold times far outside them (btrfs and
/// tmpfs keep a time set to the year 300,000 as given), and `time`'s `From<SystemTime>` panics past ±9999.
pub fn utc(t: SystemTime) -> OffsetDateTime {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(LAST),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(FIRST, |s| -s),
    };
    OffsetDateTime::from_unix_timestamp(secs.clamp(FIRST, LAST))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_in_range_are_kept_to_the_second() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999);
        assert_eq!(utc(t).unix_timestamp(), 1_700_000_000);
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(utc(before).unix_timestamp(), -86_400);
    }

    #[test]
    fn times_beyond_the_years_1_to_9999_are_clamped() {
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(utc(far).year(), 9999);
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(i64::MAX as u64)).year(),
            9999
        );
        let early = UNIX_EPOCH - Duration::from_secs(100_000_000_000);
        assert_eq!(utc(early).year(), 1);
    }
}
