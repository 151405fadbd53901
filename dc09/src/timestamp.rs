//! The DC-09 timestamp and the receiver's acceptance window.
//!
//! On the wire the timestamp is the last field before `<CR>` and always has
//! the fixed 20-character form `_HH:MM:SS,MM-DD-YYYY` (leading underscore,
//! 24-hour time, comma, month-day-year), expressed in UTC (the standard says
//! GMT). It is optional in unencrypted messages and mandatory in encrypted
//! ones, where it is part of the encrypted region and protects against
//! replay.
//!
//! A receiver accepts an encrypted message only when its timestamp lies in
//! a window around the receiver's own clock; the customary window, used by
//! public receiver implementations, is 40 seconds behind and 20 seconds
//! ahead. Messages outside the window are answered with a NAK that carries
//! the receiver's time so the panel can correct its clock.

use std::time::Duration;

use thiserror::Error;
use time::{Date, Month, OffsetDateTime, Time};

/// Length of a timestamp on the wire, including the leading `_`.
pub const TIMESTAMP_LEN: usize = 20;

/// Default tolerance for timestamps older than the receiver clock.
pub const DEFAULT_BEHIND: Duration = Duration::from_secs(40);

/// Default tolerance for timestamps newer than the receiver clock.
pub const DEFAULT_AHEAD: Duration = Duration::from_secs(20);

/// Why a timestamp string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TimestampError {
    /// Not the fixed `_HH:MM:SS,MM-DD-YYYY` shape.
    #[error("timestamp must look like _HH:MM:SS,MM-DD-YYYY")]
    Shape,
    /// Right shape, but not a real date or time of day.
    #[error("timestamp is not a valid UTC date and time")]
    OutOfRange,
}

/// Why a timestamp was rejected by [`check_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum WindowError {
    /// The message timestamp is older than `now - behind`.
    #[error("timestamp is {late:?} behind receiver time (allowed {allowed:?})")]
    TooOld {
        /// How far behind the receiver clock the timestamp is.
        late: Duration,
        /// The configured tolerance.
        allowed: Duration,
    },
    /// The message timestamp is newer than `now + ahead`.
    #[error("timestamp is {early:?} ahead of receiver time (allowed {allowed:?})")]
    TooNew {
        /// How far ahead of the receiver clock the timestamp is.
        early: Duration,
        /// The configured tolerance.
        allowed: Duration,
    },
}

/// Checks that `ts` lies within `[now - behind, now + ahead]` (both edges
/// inclusive).
pub fn check_window(
    ts: OffsetDateTime,
    now: OffsetDateTime,
    behind: Duration,
    ahead: Duration,
) -> Result<(), WindowError> {
    // The difference of two valid OffsetDateTime values always fits in a
    // time::Duration, so this subtraction cannot overflow.
    let diff = ts - now;
    let magnitude = diff.unsigned_abs();
    if diff.is_negative() {
        if magnitude > behind {
            return Err(WindowError::TooOld {
                late: magnitude,
                allowed: behind,
            });
        }
    } else if magnitude > ahead {
        return Err(WindowError::TooNew {
            early: magnitude,
            allowed: ahead,
        });
    }
    Ok(())
}

/// [`check_window`] with the default 40 s behind / 20 s ahead tolerances.
pub fn check_window_default(ts: OffsetDateTime, now: OffsetDateTime) -> Result<(), WindowError> {
    check_window(ts, now, DEFAULT_BEHIND, DEFAULT_AHEAD)
}

/// Parses a wire timestamp, including its leading `_`, as UTC.
pub fn parse_timestamp(s: &[u8]) -> Result<OffsetDateTime, TimestampError> {
    // Positions of the fixed punctuation in `_HH:MM:SS,MM-DD-YYYY`.
    const PUNCT: [(usize, u8); 6] = [
        (0, b'_'),
        (3, b':'),
        (6, b':'),
        (9, b','),
        (12, b'-'),
        (15, b'-'),
    ];
    if s.len() != TIMESTAMP_LEN {
        return Err(TimestampError::Shape);
    }
    for (index, byte) in s.iter().enumerate() {
        let expected = PUNCT.iter().find(|(pos, _)| *pos == index).map(|(_, b)| *b);
        let ok = match expected {
            Some(p) => *byte == p,
            None => byte.is_ascii_digit(),
        };
        if !ok {
            return Err(TimestampError::Shape);
        }
    }
    let num = |from: usize, to: usize| -> u16 {
        s[from..to]
            .iter()
            .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'))
    };
    let hour = num(1, 3);
    let minute = num(4, 6);
    let second = num(7, 9);
    let month = num(10, 12);
    let day = num(13, 15);
    let year = num(16, 20);

    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or(TimestampError::OutOfRange)?;
    let day = u8::try_from(day).map_err(|_| TimestampError::OutOfRange)?;
    let date = Date::from_calendar_date(i32::from(year), month, day)
        .map_err(|_| TimestampError::OutOfRange)?;
    let to_u8 = |v: u16| u8::try_from(v).map_err(|_| TimestampError::OutOfRange);
    let time = Time::from_hms(to_u8(hour)?, to_u8(minute)?, to_u8(second)?)
        .map_err(|_| TimestampError::OutOfRange)?;
    Ok(date.with_time(time).assume_utc())
}

/// Formats `ts` (converted to UTC, sub-second part dropped) as a wire
/// timestamp including the leading `_`. Returns `None` for years outside
/// 0..=9999, which the four-digit field cannot carry.
pub fn format_timestamp(ts: OffsetDateTime) -> Option<String> {
    let utc = ts.to_offset(time::UtcOffset::UTC);
    let year = utc.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "_{:02}:{:02}:{:02},{:02}-{:02}-{:04}",
        utc.hour(),
        utc.minute(),
        utc.second(),
        u8::from(utc.month()),
        utc.day(),
        year
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn parse_and_format_round_trip() {
        let ts = parse_timestamp(b"_14:12:04,09-25-2019").unwrap();
        assert_eq!(ts, datetime!(2019-09-25 14:12:04 UTC));
        assert_eq!(format_timestamp(ts).unwrap(), "_14:12:04,09-25-2019");
    }

    #[test]
    fn format_converts_to_utc_and_drops_subseconds() {
        let ts = datetime!(2024-01-01 01:30:00.75 +02:00);
        assert_eq!(format_timestamp(ts).unwrap(), "_23:30:00,12-31-2023");
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        for bad in [
            &b"14:12:04,09-25-2019"[..],
            b"_14:12:04,09-25-19",
            b"_14-12-04,09-25-2019",
            b"_14:12:04 09-25-2019",
            b"_1a:12:04,09-25-2019",
            b"_14:12:04,09-25-2019X",
            b"",
        ] {
            assert_eq!(parse_timestamp(bad), Err(TimestampError::Shape), "{bad:?}");
        }
    }

    #[test]
    fn parse_rejects_impossible_values() {
        for bad in [
            &b"_24:00:00,01-01-2020"[..],
            b"_23:60:00,01-01-2020",
            b"_23:59:60,01-01-2020",
            b"_00:00:00,13-01-2020",
            b"_00:00:00,00-01-2020",
            b"_00:00:00,02-30-2020",
            b"_00:00:00,02-29-2019",
        ] {
            assert_eq!(
                parse_timestamp(bad),
                Err(TimestampError::OutOfRange),
                "{bad:?}"
            );
        }
        assert!(parse_timestamp(b"_00:00:00,02-29-2020").is_ok());
    }

    const NOW: OffsetDateTime = datetime!(2024-06-01 12:00:00 UTC);

    fn secs(s: i64) -> time::Duration {
        time::Duration::seconds(s)
    }

    #[test]
    fn window_edges_are_inclusive() {
        assert_eq!(check_window_default(NOW, NOW), Ok(()));
        assert_eq!(check_window_default(NOW - secs(40), NOW), Ok(()));
        assert_eq!(check_window_default(NOW + secs(20), NOW), Ok(()));
    }

    #[test]
    fn window_one_second_inside_edges() {
        assert_eq!(check_window_default(NOW - secs(39), NOW), Ok(()));
        assert_eq!(check_window_default(NOW + secs(19), NOW), Ok(()));
    }

    #[test]
    fn window_one_second_outside_edges() {
        assert_eq!(
            check_window_default(NOW - secs(41), NOW),
            Err(WindowError::TooOld {
                late: Duration::from_secs(41),
                allowed: DEFAULT_BEHIND
            })
        );
        assert_eq!(
            check_window_default(NOW + secs(21), NOW),
            Err(WindowError::TooNew {
                early: Duration::from_secs(21),
                allowed: DEFAULT_AHEAD
            })
        );
    }

    #[test]
    fn window_custom_and_zero_tolerances() {
        let zero = Duration::ZERO;
        assert_eq!(check_window(NOW, NOW, zero, zero), Ok(()));
        assert!(check_window(NOW + secs(1), NOW, zero, zero).is_err());
        assert!(check_window(NOW - secs(1), NOW, zero, zero).is_err());
        let wide = Duration::from_secs(3600);
        assert_eq!(check_window(NOW - secs(3600), NOW, wide, wide), Ok(()));
    }

    #[test]
    fn window_extreme_values_do_not_panic() {
        let max = Duration::MAX;
        let far_past = datetime!(0000-01-01 00:00:00 UTC);
        let far_future = datetime!(9999-12-31 23:59:59 UTC);
        assert_eq!(check_window(far_past, far_future, max, max), Ok(()));
        assert!(check_window(far_past, far_future, DEFAULT_BEHIND, DEFAULT_AHEAD).is_err());
        assert!(check_window(far_future, far_past, DEFAULT_BEHIND, DEFAULT_AHEAD).is_err());
    }
}
