//! Post schedules in local time (issue #17): when a post is to open and to
//! close, turned into instants with the tz database's rules for the day.
//!
//! Pure: no clock, no I/O. [`check`] names what is wrong with the schedule
//! keys of a post record (the site file's `[[post.schedule]]` tables,
//! `holidays`, `test_interval_hours`); [`PostClock`] is a checked record
//! ready for the engine's timers: the deadlines that fall in a span of
//! time, and whether an instant is inside an open window.
//!
//! Each schedule names days of the week, an open window and a close window
//! (`"HH:MM-HH:MM"`, the close window at or after the open one, both on the
//! same local day) and grace minutes. For every scheduled local date that
//! is not a holiday there are two deadlines: the end of the open window plus
//! grace (late to open) and the end of the close window plus grace (late to
//! close). A local time is turned into an instant once per date, with the
//! "compatible" rule: a time that does not exist (the hour skipped in
//! spring) moves forward by the gap, a time that exists twice (the hour
//! repeated in autumn) is its first occurrence. So each date has exactly one
//! deadline of each kind, and a DST change neither repeats nor skips one.

use std::{collections::HashSet, time::SystemTime};

use jiff::{
    Timestamp,
    civil::{Date, Time, Weekday},
    tz::TimeZone,
};
use vigil_proto::v1::{PostRecord, PostSchedule};

/// Longest grace, in minutes.
pub const MAX_GRACE_MINUTES: u32 = 12 * 60;
/// Longest test interval, in hours (31 days).
pub const MAX_TEST_INTERVAL_HOURS: u32 = 31 * 24;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn weekday(name: &str) -> Option<Weekday> {
    DAYS.iter().find(|(n, _)| *n == name).map(|&(_, d)| d)
}

fn day_name(day: Weekday) -> &'static str {
    DAYS.iter().find(|(_, d)| *d == day).map_or("?", |(n, _)| n)
}

/// `"HH:MM"`, 00:00 to 23:59, as minutes after midnight.
fn minute_of_day(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// `"HH:MM-HH:MM"` as (start, end) minutes of the day, start not after end.
pub fn window(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a window \"HH:MM-HH:MM\" (e.g. \"07:30-08:30\")");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b) = (
        minute_of_day(a.trim()).ok_or_else(bad)?,
        minute_of_day(b.trim()).ok_or_else(bad)?,
    );
    if a > b {
        return Err(format!(
            "{s:?} ends before it starts (a window stays within one day)"
        ));
    }
    Ok((a, b))
}

/// A local date `"YYYY-MM-DD"`.
pub fn holiday(s: &str) -> Result<Date, String> {
    let bad = || format!("{s:?} is not a date \"YYYY-MM-DD\"");
    if s.len() != 10 {
        return Err(bad());
    }
    s.parse::<Date>().map_err(|_| bad())
}

/// What is wrong with the schedule keys of `post`, as (place suffix, key,
/// reason): the place suffix is `""` for the post itself or `"schedule
/// #N"` for one of its schedules.
pub fn check(post: &PostRecord) -> Vec<(String, &'static str, String)> {
    let mut out = Vec::new();
    let mut seen_days: Vec<(Weekday, usize)> = Vec::new();
    for (i, s) in post.schedules.iter().enumerate() {
        let at = format!("schedule #{}", i + 1);
        if s.days.is_empty() {
            out.push((
                at.clone(),
                "days",
                "list at least one day (\"mon\" … \"sun\")".into(),
            ));
        }
        for d in &s.days {
            match weekday(d) {
                None => out.push((
                    at.clone(),
                    "days",
                    format!("{d:?} is not a day (mon, tue, wed, thu, fri, sat, sun)"),
                )),
                Some(day) => match seen_days.iter().find(|(x, _)| *x == day) {
                    Some((_, j)) if *j == i => {
                        out.push((at.clone(), "days", format!("{d:?} is listed twice")));
                    }
                    Some((_, j)) => out.push((
                        at.clone(),
                        "days",
                        format!(
                            "{d:?} is already in schedule #{} (one schedule per day)",
                            j + 1
                        ),
                    )),
                    None => seen_days.push((day, i)),
                },
            }
        }
        let open = match s.open.as_str() {
            "" => {
                out.push((at.clone(), "open", "required".into()));
                None
            }
            w => window(w)
                .map_err(|e| out.push((at.clone(), "open", e)))
                .ok(),
        };
        let close = match s.close.as_str() {
            "" => {
                out.push((at.clone(), "close", "required".into()));
                None
            }
            w => window(w)
                .map_err(|e| out.push((at.clone(), "close", e)))
                .ok(),
        };
        if let (Some(open), Some(close)) = (open, close)
            && close.0 < open.1
        {
            out.push((
                at.clone(),
                "close",
                format!(
                    "the close window {:?} starts before the open window {:?} ends",
                    s.close, s.open
                ),
            ));
        }
        if s.grace_minutes > MAX_GRACE_MINUTES {
            out.push((
                at.clone(),
                "grace_minutes",
                format!("at most {MAX_GRACE_MINUTES}"),
            ));
        }
    }
    let mut dates = HashSet::new();
    for h in &post.holidays {
        match holiday(h) {
            Ok(d) if !dates.insert(d) => {
                out.push((String::new(), "holidays", format!("{h:?} is listed twice")));
            }
            Ok(_) => {}
            Err(e) => out.push((String::new(), "holidays", e)),
        }
    }
    if post.test_interval_hours > MAX_TEST_INTERVAL_HOURS {
        out.push((
            String::new(),
            "test_interval_hours",
            format!("at most {MAX_TEST_INTERVAL_HOURS} (0 = not checked)"),
        ));
    }
    out
}

/// One day's windows, in minutes of the local day, grace included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Day {
    open: (u32, u32),
    close: (u32, u32),
    grace: u32,
}

/// Which timer a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineKind {
    /// The end of the open window plus grace: the post should be open.
    Open,
    /// The end of the close window plus grace: the post should be closed.
    Close,
}

/// One deadline of a scheduled date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    pub kind: DeadlineKind,
    pub at: SystemTime,
    /// For [`DeadlineKind::Open`]: the start of the open window less grace
    /// (an opening since then counts); for `Close`, the window's start.
    pub window_start: SystemTime,
    /// The window as written and the local date, for people:
    /// `07:30-08:30 on mon 2026-03-30`.
    pub describe: String,
}

/// A post's checked schedule, time zone and test interval.
#[derive(Debug, Clone)]
pub struct PostClock {
    tz: TimeZone,
    tz_name: String,
    days: [Option<(Day, usize)>; 7],
    windows: Vec<(String, String)>,
    holidays: HashSet<Date>,
    /// 0 = not checked.
    pub test_interval_hours: u32,
}

impl PostClock {
    /// The clock of a record that passed validation; `None` when it has
    /// neither schedules nor a test interval, or does not check (a stored
    /// record always does).
    pub fn new(post: &PostRecord) -> Option<Self> {
        if post.schedules.is_empty() && post.test_interval_hours == 0 {
            return None;
        }
        if !check(post).is_empty() {
            return None;
        }
        let tz = crate::site::time_zone(&post.timezone).ok()?;
        let mut days = [None; 7];
        let mut windows = Vec::new();
        for (i, s) in post.schedules.iter().enumerate() {
            let day = Day {
                open: window(&s.open).ok()?,
                close: window(&s.close).ok()?,
                grace: s.grace_minutes,
            };
            windows.push((s.open.clone(), s.close.clone()));
            for d in &s.days {
                let wd = weekday(d)?;
                days[wd.to_monday_zero_offset() as usize] = Some((day, i));
            }
        }
        Some(Self {
            tz,
            tz_name: post.timezone.clone(),
            days,
            windows,
            holidays: post
                .holidays
                .iter()
                .filter_map(|h| holiday(h).ok())
                .collect(),
            test_interval_hours: post.test_interval_hours,
        })
    }

    /// Whether the post has opening and closing windows.
    pub fn has_schedule(&self) -> bool {
        self.days.iter().any(Option::is_some)
    }

    fn day(&self, date: Date) -> Option<(Day, usize)> {
        if self.holidays.contains(&date) {
            return None;
        }
        self.days[date.weekday().to_monday_zero_offset() as usize]
    }

    /// The instant of minute `m` of local `date` (compatible rule; see the
    /// module docs). Minutes past the day's end run into the next day.
    fn instant(&self, date: Date, m: u32) -> Option<SystemTime> {
        let midnight = date.to_datetime(Time::midnight());
        let dt = midnight
            .checked_add(jiff::SignedDuration::from_mins(i64::from(m)))
            .ok()?;
        let ts = self.tz.to_timestamp(dt).ok()?;
        SystemTime::try_from(ts).ok()
    }

    fn local_date(&self, t: SystemTime) -> Option<Date> {
        let ts = Timestamp::try_from(t).ok()?;
        Some(self.tz.to_datetime(ts).date())
    }

    /// The local time of `t` for people: `Tue 22:14 Europe/Vienna`.
    pub fn local(&self, t: SystemTime) -> String {
        match Timestamp::try_from(t) {
            Ok(ts) => {
                let dt = self.tz.to_datetime(ts);
                format!(
                    "{} {} {:02}:{:02} {}",
                    day_name(dt.date().weekday()),
                    dt.date(),
                    dt.hour(),
                    dt.minute(),
                    self.tz_name
                )
            }
            Err(_) => "?".into(),
        }
    }

    /// Deadlines in `(after, through]`, in time order.
    pub fn deadlines(&self, after: SystemTime, through: SystemTime) -> Vec<Deadline> {
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (self.local_date(after), self.local_date(through)) else {
            return out;
        };
        // A deadline with grace may run past midnight: start a day early.
        let mut date = first.yesterday().unwrap_or(first);
        while date <= last {
            if let Some((day, i)) = self.day(date) {
                let (open, close) = &self.windows[i];
                let name = day_name(date.weekday());
                for (kind, (start, end), window) in [
                    (DeadlineKind::Open, day.open, open),
                    (DeadlineKind::Close, day.close, close),
                ] {
                    let start = match kind {
                        DeadlineKind::Open => start.saturating_sub(day.grace),
                        DeadlineKind::Close => start,
                    };
                    let (Some(at), Some(window_start)) = (
                        self.instant(date, end + day.grace),
                        self.instant(date, start),
                    ) else {
                        continue;
                    };
                    if at > after && at <= through {
                        out.push(Deadline {
                            kind,
                            at,
                            window_start,
                            describe: format!("{window} on {name} {date}"),
                        });
                    }
                }
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        out.sort_by_key(|d| d.at);
        out
    }

    /// Whether `t` is inside an open window (grace before and after
    /// included) of a scheduled day that is not a holiday.
    pub fn in_open_window(&self, t: SystemTime) -> bool {
        let Some(today) = self.local_date(t) else {
            return false;
        };
        // The window of the day before may run past midnight with grace.
        [today.yesterday().ok(), Some(today)]
            .into_iter()
            .flatten()
            .any(|date| {
                let Some((day, _)) = self.day(date) else {
                    return false;
                };
                let (Some(from), Some(until)) = (
                    self.instant(date, day.open.0.saturating_sub(day.grace)),
                    self.instant(date, day.open.1 + day.grace),
                ) else {
                    return false;
                };
                from <= t && t <= until
            })
    }
}

/// A schedule as the site file writes it, for tests and `vigil dev`.
pub fn schedule(days: &[&str], open: &str, close: &str, grace_minutes: u32) -> PostSchedule {
    PostSchedule {
        days: days.iter().map(|d| (*d).to_owned()).collect(),
        open: open.into(),
        close: close.into(),
        grace_minutes,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn utc(s: &str) -> SystemTime {
        SystemTime::try_from(s.parse::<Timestamp>().unwrap()).unwrap()
    }

    fn post(tz: &str, schedules: Vec<PostSchedule>) -> PostRecord {
        PostRecord {
            post_id: "p-001".into(),
            name: "A".into(),
            timezone: tz.into(),
            schedules,
            ..Default::default()
        }
    }

    #[test]
    fn windows_days_and_dates_are_checked() {
        assert_eq!(window("07:30-08:30"), Ok((450, 510)));
        assert_eq!(window("00:00-23:59"), Ok((0, 1439)));
        for bad in ["7:30-8:30", "07:30", "24:00-24:30", "07:60-08:00", "x-y"] {
            assert!(window(bad).is_err(), "{bad}");
        }
        assert!(window("09:00-08:00").unwrap_err().contains("ends before"));
        assert!(holiday("2026-12-25").is_ok());
        assert!(holiday("2026-02-30").is_err());
        assert!(holiday("25.12.2026").is_err());

        let mut p = post(
            "Europe/Vienna",
            vec![
                schedule(&["mon", "tue", "mon"], "08:00-09:00", "07:00-18:00", 900),
                schedule(&["tue", "funday"], "", "17:00-18:00", 0),
            ],
        );
        p.holidays = vec!["2026-12-25".into(), "2026-12-25".into(), "xmas".into()];
        p.test_interval_hours = 10_000;
        let problems: Vec<String> = check(&p)
            .into_iter()
            .map(|(at, key, why)| format!("{at}|{key}|{why}"))
            .collect();
        let want = [
            "schedule #1|days|\"mon\" is listed twice",
            "schedule #1|close|the close window \"07:00-18:00\" starts before",
            "schedule #1|grace_minutes|at most 720",
            "schedule #2|days|\"tue\" is already in schedule #1",
            "schedule #2|days|\"funday\" is not a day",
            "schedule #2|open|required",
            "|holidays|\"2026-12-25\" is listed twice",
            "|holidays|\"xmas\" is not a date",
            "|test_interval_hours|at most 744",
        ];
        for w in want {
            assert!(
                problems.iter().any(|p| p.starts_with(w)),
                "missing {w:?} in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), want.len(), "{problems:#?}");
    }

    #[test]
    fn deadlines_fall_in_local_time_once_a_day() {
        let clock = PostClock::new(&post(
            "America/New_York",
            vec![schedule(
                &["mon", "tue", "wed", "thu", "fri"],
                "07:30-08:30",
                "17:00-18:00",
                15,
            )],
        ))
        .unwrap();
        // Friday 2026-03-06 to Tuesday 2026-03-10 (UTC-5 before the change
        // on Sunday 8 March, UTC-4 after).
        let d = clock.deadlines(utc("2026-03-06T00:00:00Z"), utc("2026-03-10T23:59:00Z"));
        let got: Vec<(DeadlineKind, SystemTime)> = d.iter().map(|d| (d.kind, d.at)).collect();
        assert_eq!(
            got,
            [
                (DeadlineKind::Open, utc("2026-03-06T13:45:00Z")),
                (DeadlineKind::Close, utc("2026-03-06T23:15:00Z")),
                (DeadlineKind::Open, utc("2026-03-09T12:45:00Z")),
                (DeadlineKind::Close, utc("2026-03-09T22:15:00Z")),
                (DeadlineKind::Open, utc("2026-03-10T12:45:00Z")),
                (DeadlineKind::Close, utc("2026-03-10T22:15:00Z")),
            ]
        );
        assert_eq!(d[0].describe, "07:30-08:30 on fri 2026-03-06");
        assert_eq!(d[0].window_start, utc("2026-03-06T12:15:00Z"));
        // Split spans give the same deadlines, each once.
        let mut split = Vec::new();
        let mut t = utc("2026-03-06T00:00:00Z");
        while t < utc("2026-03-10T23:59:00Z") {
            let next = t + Duration::from_secs(7 * 60);
            split.extend(clock.deadlines(t, next).into_iter().map(|d| (d.kind, d.at)));
            t = next;
        }
        assert_eq!(split, got);
    }

    #[test]
    fn a_skipped_or_repeated_hour_moves_a_deadline_never_doubles_it() {
        // Vienna: 2026-03-29 02:00 → 03:00; 2026-10-25 03:00 → 02:00.
        let clock = PostClock::new(&post(
            "Europe/Vienna",
            vec![schedule(
                &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "01:00-02:30",
                "02:30-02:30",
                0,
            )],
        ))
        .unwrap();
        let spring = clock.deadlines(utc("2026-03-28T12:00:00Z"), utc("2026-03-30T12:00:00Z"));
        let opens: Vec<SystemTime> = spring
            .iter()
            .filter(|d| d.kind == DeadlineKind::Open)
            .map(|d| d.at)
            .collect();
        // 02:30 on the 29th does not exist: 03:30 CEST, one hour later.
        assert_eq!(
            opens,
            [utc("2026-03-29T01:30:00Z"), utc("2026-03-30T00:30:00Z")]
        );
        let autumn = clock.deadlines(utc("2026-10-24T12:00:00Z"), utc("2026-10-26T12:00:00Z"));
        let opens: Vec<SystemTime> = autumn
            .iter()
            .filter(|d| d.kind == DeadlineKind::Open)
            .map(|d| d.at)
            .collect();
        // 02:30 on the 25th happens twice: the first (CEST) counts, once.
        assert_eq!(
            opens,
            [utc("2026-10-25T00:30:00Z"), utc("2026-10-26T01:30:00Z")]
        );
    }

    #[test]
    fn open_windows_and_holidays() {
        let mut p = post(
            "Europe/Vienna",
            vec![schedule(&["mon"], "07:30-08:30", "17:00-18:00", 10)],
        );
        p.holidays = vec!["2026-04-06".into()];
        let clock = PostClock::new(&p).unwrap();
        // Monday 2026-03-30, CEST (UTC+2).
        assert!(clock.in_open_window(utc("2026-03-30T05:20:00Z"))); // 07:20
        assert!(clock.in_open_window(utc("2026-03-30T06:40:00Z"))); // 08:40
        assert!(!clock.in_open_window(utc("2026-03-30T06:41:00Z"))); // 08:41
        assert!(!clock.in_open_window(utc("2026-03-30T05:19:00Z"))); // 07:19
        assert!(!clock.in_open_window(utc("2026-03-31T06:00:00Z"))); // Tuesday
        // Easter Monday is a holiday: no window, no deadlines.
        assert!(!clock.in_open_window(utc("2026-04-06T06:00:00Z")));
        assert!(
            clock
                .deadlines(utc("2026-04-05T22:00:00Z"), utc("2026-04-06T21:59:00Z"))
                .is_empty()
        );
        assert_eq!(
            clock.local(utc("2026-03-30T05:20:00Z")),
            "mon 2026-03-30 07:20 Europe/Vienna"
        );
    }
}
