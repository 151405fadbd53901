//! Schedule and test timers (issue #17): late to open, late to close,
//! opened outside schedule, and fail-to-test.
//!
//! The post records (see [`crate::schedule`]) say when each post is to
//! open and close, in its local time, and how often it must send a test
//! report. The engine follows openings, closings and test reports as they
//! are stored ([`Engine::observe_timers`]) and checks the deadlines on every
//! tick ([`Engine::tick_timers`]):
//!
//! - **Late to open** (`timer:late_to_open`, P3): at the end of a day's open
//!   window plus grace, no opening since the window's start less grace and
//!   the post is not open. A later opening restores it.
//! - **Late to close** (`timer:late_to_close`, P3): at the end of the close
//!   window plus grace, the post is still open. A later closing restores it.
//! - **Opened outside schedule** (`timer:opened_outside_schedule`, P2): an
//!   opening that is not in an open window (grace included) of a scheduled
//!   day. An opening while a late-to-open incident is active is that
//!   incident's restore instead, not a second incident.
//! - **Fail to test** (`timer:fail_to_test`, category test, P3): no test
//!   report for `test_interval_hours`. One signal per missed period (the
//!   incident opens at the first, later periods open or join per the usual
//!   rules); after an outage of several periods, one signal says how long.
//!   A test report restores it and starts a new period.
//!
//! What is an opening or a closing comes from the DC-09 taxonomy, on
//! events of category `open_close`: a Contact ID open/close code with
//! qualifier 1 is an opening (disarm), with qualifier 3 a closing (arm); a
//! SIA code says it itself (`OP`, `OA`, … open; `CL`, `CA`, … close).
//! Other `open_close` events (late-to-open reports of the panel, exit
//! errors) are neither.
//!
//! Times: openings, closings and tests count at their event time (the
//! gateway's receive time, never in the future); deadlines are checked
//! against `now`. The state ([`PostTimers`]) is written with the commit
//! whenever it changes, and read back at start, so a restart or a failover
//! neither forgets an opening nor fires a deadline twice. Deadlines missed
//! while no replica ran are caught up for at most [`CATCH_UP`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vigil_dc09::taxonomy::{Qualifier, Transition, classify_contact_id_code, classify_sia};
use vigil_proto::v1::{
    ContactIdQualifier, Event, EventCategory, PostRecord, Priority, event::Body,
};

use super::Engine;
use crate::{
    schedule::{DeadlineKind, PostClock},
    store::{Changes, PostTimers},
};

pub const LATE_TO_OPEN: &str = "timer:late_to_open";
pub const LATE_TO_CLOSE: &str = "timer:late_to_close";
pub const OPENED_OUTSIDE_SCHEDULE: &str = "timer:opened_outside_schedule";
pub const FAIL_TO_TEST: &str = "timer:fail_to_test";

/// Deadlines older than this, missed while nothing ran, are not fired.
pub const CATCH_UP: Duration = Duration::from_secs(24 * 3600);

/// An opening or a closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenClose {
    Open,
    Close,
}

/// Whether `ev` is an opening or a closing (see the module docs).
pub fn open_close(ev: &Event) -> Option<OpenClose> {
    if ev.category() != EventCategory::OpenClose {
        return None;
    }
    let Some(Body::Alarm(a)) = &ev.body else {
        return None;
    };
    let transition = match &a.contact_id {
        Some(cid) => {
            let q = match cid.qualifier() {
                ContactIdQualifier::New => Qualifier::New,
                ContactIdQualifier::Restore => Qualifier::Restore,
                _ => return None,
            };
            let code = u16::try_from(cid.event_code).ok()?;
            classify_contact_id_code(code, q).transition
        }
        None if !a.sia_code.is_empty() => classify_sia(&a.sia_code).transition,
        None => return None,
    };
    match transition {
        Transition::Open => Some(OpenClose::Open),
        Transition::Close => Some(OpenClose::Close),
        _ => None,
    }
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Open when the latest opening is after the latest closing.
fn is_open(st: &PostTimers) -> bool {
    match (st.opened_at, st.closed_at) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

impl Engine {
    /// Takes the post records' schedules and test intervals (at start and
    /// after every site import).
    pub fn set_site(&mut self, posts: &[PostRecord]) {
        self.clocks = posts
            .iter()
            .filter_map(|p| Some((p.post_id.clone(), PostClock::new(p)?)))
            .collect();
    }

    /// Timer state of a post, as last written (for tests and the API).
    pub fn post_timers(&self, post: &str) -> Option<&PostTimers> {
        self.timers.get(post)
    }

    fn put_timers(&mut self, post: &str, st: PostTimers, out: &mut Changes) {
        out.timers.insert(post.to_owned(), st.clone());
        self.timers.insert(post.to_owned(), st);
    }

    /// Follows openings, closings and test reports of a newly stored event.
    pub(super) fn observe_timers(
        &mut self,
        ev: &Event,
        at: SystemTime,
        now: SystemTime,
        out: &mut Changes,
    ) {
        let post = ev.post_id.as_str();
        if !self.clocks.contains_key(post) {
            return;
        }
        let mut st = self.timers.get(post).cloned().unwrap_or_default();
        let ms = millis(at);
        if ev.category() == EventCategory::Test {
            if st.tested_at.is_some_and(|t| t >= ms) {
                return;
            }
            st.tested_at = Some(ms);
            st.test_periods_missed = 0;
            self.put_timers(post, st, out);
            self.timer_signal(
                post,
                FAIL_TO_TEST,
                true,
                "test report received".into(),
                at,
                now,
                out,
            );
            return;
        }
        let Some(what) = open_close(ev) else {
            return;
        };
        let slot = match what {
            OpenClose::Open => &mut st.opened_at,
            OpenClose::Close => &mut st.closed_at,
        };
        // An older one re-sent after an outage changes nothing.
        if slot.is_some_and(|t| t >= ms) {
            return;
        }
        *slot = Some(ms);
        self.put_timers(post, st, out);
        let Some(clock) = self.clocks.get(post).filter(|c| c.has_schedule()) else {
            return;
        };
        let local = clock.local(at);
        match what {
            OpenClose::Open => {
                if self.active_timer(post, LATE_TO_OPEN) {
                    let title = format!("Opened late, {local}");
                    self.timer_signal(post, LATE_TO_OPEN, true, title, at, now, out);
                } else if !clock.in_open_window(at) {
                    let title = format!("Opened outside schedule, {local}");
                    self.timer_signal(post, OPENED_OUTSIDE_SCHEDULE, false, title, at, now, out);
                }
            }
            OpenClose::Close => {
                if self.active_timer(post, LATE_TO_CLOSE) {
                    let title = format!("Closed late, {local}");
                    self.timer_signal(post, LATE_TO_CLOSE, true, title, at, now, out);
                }
            }
        }
    }

    /// Whether an unresolved incident of the timer still waits for its
    /// restore.
    fn active_timer(&self, post: &str, subject: &str) -> bool {
        self.open_incident_for(post, subject)
            .is_some_and(|i| i.active_conditions.iter().any(|c| c == subject))
    }

    /// Checks every post's schedule deadlines and test period up to `now`.
    pub(super) fn tick_timers(&mut self, now: SystemTime, out: &mut Changes) {
        let mut posts: Vec<String> = self.clocks.keys().cloned().collect();
        posts.sort();
        for post in posts {
            let clock = self.clocks[&post].clone();
            if clock.has_schedule() {
                self.check_schedule(&post, &clock, now, out);
            }
            if clock.test_interval_hours > 0 {
                self.check_test(&post, &clock, now, out);
            }
        }
    }

    fn check_schedule(
        &mut self,
        post: &str,
        clock: &PostClock,
        now: SystemTime,
        out: &mut Changes,
    ) {
        let mut st = self.timers.get(post).cloned().unwrap_or_default();
        let Some(stored) = st.checked_through else {
            // A schedule seen for the first time: deadlines count from now.
            st.checked_through = Some(millis(now));
            self.put_timers(post, st, out);
            self.checked.insert(post.to_owned(), now);
            return;
        };
        let from = self
            .checked
            .get(post)
            .copied()
            .unwrap_or_else(|| from_millis(stored))
            .max(now.checked_sub(CATCH_UP).unwrap_or(UNIX_EPOCH));
        if from >= now {
            return;
        }
        let deadlines = clock.deadlines(from, now);
        self.checked.insert(post.to_owned(), now);
        if deadlines.is_empty() {
            return;
        }
        for d in &deadlines {
            match d.kind {
                DeadlineKind::Open => {
                    let opened_since = st.opened_at.is_some_and(|o| o >= millis(d.window_start));
                    if !opened_since && !is_open(&st) {
                        let title = format!("Late to open: not opened in {}", d.describe);
                        self.timer_signal(post, LATE_TO_OPEN, false, title, d.at, now, out);
                    }
                }
                DeadlineKind::Close => {
                    if is_open(&st) {
                        let title = format!("Late to close: still open after {}", d.describe);
                        self.timer_signal(post, LATE_TO_CLOSE, false, title, d.at, now, out);
                    }
                }
            }
            st.checked_through = Some(millis(d.at));
        }
        self.put_timers(post, st, out);
    }

    fn check_test(&mut self, post: &str, clock: &PostClock, now: SystemTime, out: &mut Changes) {
        let mut st = self.timers.get(post).cloned().unwrap_or_default();
        let Some(tested) = st.tested_at else {
            // Expected from now on.
            st.tested_at = Some(millis(now));
            self.put_timers(post, st, out);
            return;
        };
        let hours = u64::from(clock.test_interval_hours);
        let period = Duration::from_secs(hours * 3600);
        let since = now.duration_since(from_millis(tested)).unwrap_or_default();
        let missed = u32::try_from(since.as_secs() / period.as_secs()).unwrap_or(u32::MAX);
        if missed <= st.test_periods_missed {
            return;
        }
        let silent = since.as_secs() / 3600;
        let title =
            format!("Fail to test: no test report for {silent} h (expected every {hours} h)");
        let due = from_millis(tested) + period * missed;
        st.test_periods_missed = missed;
        self.put_timers(post, st, out);
        self.timer_signal(post, FAIL_TO_TEST, false, title, due.min(now), now, out);
    }

    /// Raises (or, with `restore`, restores) the timer incident `subject`
    /// of `post`, through the usual correlation rules.
    #[allow(clippy::too_many_arguments)]
    fn timer_signal(
        &mut self,
        post: &str,
        subject: &str,
        restore: bool,
        title: String,
        at: SystemTime,
        now: SystemTime,
        out: &mut Changes,
    ) -> Option<String> {
        let (category, priority, condition) = match subject {
            FAIL_TO_TEST => (EventCategory::Test, Priority::P3, true),
            OPENED_OUTSIDE_SCHEDULE => (EventCategory::OpenClose, Priority::P2, false),
            _ => (EventCategory::OpenClose, Priority::P3, true),
        };
        self.raise_timer(
            super::correlate::TimerSignal {
                post,
                subject,
                category,
                priority,
                restore,
                condition,
                title,
                at,
            },
            now,
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use vigil_proto::v1::{
        AlarmSignal, AuditAction, ContactId, Incident, IncidentState, PostSchedule,
    };

    use super::*;
    use crate::{
        engine::EngineConfig,
        schedule::schedule,
        store::{EngineSnapshot, PostTimers},
    };

    const POST: &str = "p-005";

    fn utc(s: &str) -> SystemTime {
        SystemTime::try_from(s.parse::<jiff::Timestamp>().unwrap()).unwrap()
    }

    fn record(tz: &str, schedules: Vec<PostSchedule>, test_hours: u32) -> PostRecord {
        PostRecord {
            post_id: POST.into(),
            name: "Embassy".into(),
            timezone: tz.into(),
            schedules,
            test_interval_hours: test_hours,
            ..Default::default()
        }
    }

    fn weekdays() -> PostSchedule {
        schedule(
            &["mon", "tue", "wed", "thu", "fri"],
            "07:30-08:30",
            "17:00-18:00",
            15,
        )
    }

    fn engine(post: PostRecord) -> Engine {
        Engine::new(
            EngineConfig::default(),
            EngineSnapshot {
                site_posts: vec![post],
                ..Default::default()
            },
        )
    }

    fn panel_event(seq: u64, category: EventCategory, alarm: AlarmSignal, at: SystemTime) -> Event {
        Event {
            post_id: POST.into(),
            seq,
            received_at: Some(at.into()),
            category: category as i32,
            body: Some(Body::Alarm(AlarmSignal {
                account: "1234".into(),
                ..alarm
            })),
            ..Default::default()
        }
    }

    /// Contact ID open/close code 401 (by user): qualifier 1 opens, 3 closes.
    fn cid(seq: u64, q: ContactIdQualifier, at: SystemTime) -> Event {
        let alarm = AlarmSignal {
            contact_id: Some(ContactId {
                qualifier: q as i32,
                event_code: 401,
                partition: 1,
                zone_or_user: 3,
            }),
            user: 3,
            ..Default::default()
        };
        panel_event(seq, EventCategory::OpenClose, alarm, at)
    }

    fn sia(seq: u64, code: &str, at: SystemTime) -> Event {
        let category = if code == "RP" {
            EventCategory::Test
        } else {
            EventCategory::OpenClose
        };
        let alarm = AlarmSignal {
            sia_code: code.into(),
            ..Default::default()
        };
        panel_event(seq, category, alarm, at)
    }

    /// Ticks every `step` from `from` (inclusive) to `to` (exclusive).
    fn run(e: &mut Engine, from: SystemTime, to: SystemTime, step: Duration, out: &mut Changes) {
        let mut t = from;
        while t < to {
            e.tick(t, out);
            t += step;
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    /// The incidents of `subject` opened in `out`, in opening order.
    fn opened(out: &Changes, subject: &str) -> Vec<Incident> {
        let mut ids: Vec<&str> = out
            .audit
            .iter()
            .filter(|a| a.action == AuditAction::Opened as i32)
            .map(|a| a.incident_id.as_str())
            .collect();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| out.incident(id))
            .filter(|i| i.subject == subject)
            .cloned()
            .collect()
    }

    fn opened_at(i: &Incident) -> SystemTime {
        SystemTime::try_from(i.last_event_at.unwrap()).unwrap()
    }

    #[test]
    fn openings_and_closings_come_from_the_dc09_taxonomy() {
        let t = utc("2026-03-02T12:00:00Z");
        assert_eq!(
            open_close(&cid(1, ContactIdQualifier::New, t)),
            Some(OpenClose::Open)
        );
        assert_eq!(
            open_close(&cid(1, ContactIdQualifier::Restore, t)),
            Some(OpenClose::Close)
        );
        assert_eq!(open_close(&cid(1, ContactIdQualifier::Status, t)), None);
        assert_eq!(open_close(&sia(1, "OP", t)), Some(OpenClose::Open));
        assert_eq!(open_close(&sia(1, "OA", t)), Some(OpenClose::Open));
        assert_eq!(open_close(&sia(1, "CL", t)), Some(OpenClose::Close));
        assert_eq!(open_close(&sia(1, "CA", t)), Some(OpenClose::Close));
        // The panel's own "late to open" report is neither.
        assert_eq!(open_close(&sia(1, "CT", t)), None);
        // A burglary code is never an opening, whatever its category says.
        let mut ba = sia(1, "BA", t);
        ba.category = EventCategory::OpenClose as i32;
        assert_eq!(open_close(&ba), None);
        // Contact ID 130 (burglary) with qualifier 1 is an alarm, not an opening.
        let mut burglary = cid(1, ContactIdQualifier::New, t);
        if let Some(Body::Alarm(a)) = &mut burglary.body {
            a.contact_id.as_mut().unwrap().event_code = 130;
        }
        assert_eq!(open_close(&burglary), None);
    }

    #[test]
    fn late_to_open_fires_once_and_a_late_opening_restores_it() {
        // Monday 2 March 2026, Vienna is UTC+1: the open window 07:30-08:30
        // plus 15 minutes ends at 07:45Z.
        let mut e = engine(record("Europe/Vienna", vec![weekdays()], 0));
        let mut out = Changes::default();
        run(
            &mut e,
            utc("2026-03-02T00:00:00Z"),
            utc("2026-03-02T08:10:00Z"),
            MINUTE,
            &mut out,
        );
        let late = opened(&out, LATE_TO_OPEN);
        assert_eq!(late.len(), 1, "{late:#?}");
        assert_eq!(opened_at(&late[0]), utc("2026-03-02T07:45:00Z"));
        assert_eq!(late[0].category(), EventCategory::OpenClose);
        assert_eq!(late[0].priority(), Priority::P3);
        assert!(
            late[0].title.contains("07:30-08:30 on mon 2026-03-02"),
            "{}",
            late[0].title
        );
        let id = late[0].id.clone();

        // Opened at 09:10 local: the incident restores, nothing new opens.
        let mut out = Changes::default();
        let t = utc("2026-03-02T08:10:00Z");
        e.on_event(&cid(1, ContactIdQualifier::New, t), t, &mut out);
        let inc = e.incident(&id).unwrap();
        assert!(inc.restored, "{inc:#?}");
        assert_eq!(inc.state(), IncidentState::Open, "a restore never resolves");
        assert!(opened(&out, OPENED_OUTSIDE_SCHEDULE).is_empty());
        assert!(
            out.audit
                .iter()
                .any(|a| a.detail.contains("Opened late, mon 2026-03-02 09:10"))
        );

        // Closed on time, opened on time the next day: nothing more.
        let mut out = Changes::default();
        let close = utc("2026-03-02T16:30:00Z");
        e.on_event(&cid(2, ContactIdQualifier::Restore, close), close, &mut out);
        let open = utc("2026-03-03T06:40:00Z");
        run(&mut e, utc("2026-03-02T08:10:00Z"), open, MINUTE, &mut out);
        e.on_event(&sia(3, "OP", open), open, &mut out);
        run(&mut e, open, utc("2026-03-03T12:00:00Z"), MINUTE, &mut out);
        // (The unacknowledged incident escalates meanwhile; nothing opens.)
        assert!(
            out.audit
                .iter()
                .all(|a| a.action != AuditAction::Opened as i32),
            "{:#?}",
            out.audit
        );
    }

    #[test]
    fn late_to_close_fires_while_open_and_a_closing_restores_it() {
        let mut e = engine(record("Europe/Vienna", vec![weekdays()], 0));
        let mut out = Changes::default();
        e.tick(utc("2026-03-02T00:00:00Z"), &mut out);
        let open = utc("2026-03-02T06:45:00Z"); // 07:45 local
        e.on_event(&sia(1, "OP", open), open, &mut out);
        // The close window 17:00-18:00 plus 15 minutes ends at 17:15Z.
        run(&mut e, open, utc("2026-03-02T18:00:00Z"), MINUTE, &mut out);
        assert!(opened(&out, LATE_TO_OPEN).is_empty());
        assert!(opened(&out, OPENED_OUTSIDE_SCHEDULE).is_empty());
        let late = opened(&out, LATE_TO_CLOSE);
        assert_eq!(late.len(), 1);
        assert_eq!(opened_at(&late[0]), utc("2026-03-02T17:15:00Z"));
        let close = utc("2026-03-02T18:00:00Z");
        e.on_event(&sia(2, "CL", close), close, &mut out);
        assert!(e.incident(&late[0].id).unwrap().restored);
        // Closed: the next day's close deadline finds it closed (it never
        // opened), and its open deadline fires late to open instead.
        let mut out = Changes::default();
        run(&mut e, close, utc("2026-03-03T18:00:00Z"), MINUTE, &mut out);
        assert!(opened(&out, LATE_TO_CLOSE).is_empty());
        assert_eq!(opened(&out, LATE_TO_OPEN).len(), 1);
    }

    #[test]
    fn an_opening_outside_every_open_window_opens_an_incident() {
        let mut e = engine(record("Europe/Vienna", vec![weekdays()], 0));
        let mut out = Changes::default();
        e.tick(utc("2026-03-02T00:00:00Z"), &mut out);
        // Within the window's grace: fine. 07:16 local.
        let early = utc("2026-03-02T06:16:00Z");
        e.on_event(&cid(1, ContactIdQualifier::New, early), early, &mut out);
        assert!(out.incidents().is_empty());
        // A closing at night is no opening.
        let night = utc("2026-03-02T21:00:00Z");
        e.on_event(&cid(2, ContactIdQualifier::Restore, night), night, &mut out);
        assert!(out.incidents().is_empty());
        // An opening at 22:14 local, and one on Saturday.
        let late = utc("2026-03-02T21:14:00Z");
        e.on_event(&cid(3, ContactIdQualifier::New, late), late, &mut out);
        let got = opened(&out, OPENED_OUTSIDE_SCHEDULE);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].priority(), Priority::P2);
        assert_eq!(
            got[0].title,
            "Opened outside schedule, mon 2026-03-02 22:14 Europe/Vienna"
        );
        let saturday = utc("2026-03-07T07:00:00Z");
        e.on_event(&sia(4, "OP", saturday), saturday, &mut out);
        assert_eq!(opened(&out, OPENED_OUTSIDE_SCHEDULE).len(), 2);
    }

    #[test]
    fn posts_without_a_schedule_have_no_timers() {
        let mut e = engine(record("Europe/Vienna", vec![], 0));
        let mut out = Changes::default();
        run(
            &mut e,
            utc("2026-03-02T00:00:00Z"),
            utc("2026-03-03T00:00:00Z"),
            MINUTE,
            &mut out,
        );
        let t = utc("2026-03-02T23:00:00Z");
        e.on_event(&sia(1, "OP", t), t, &mut out);
        e.on_event(&sia(2, "RP", t), t, &mut out);
        assert!(out.is_empty(), "{out:#?}");
    }

    /// Ticks every five minutes over six local days around a DST change,
    /// with an open window ending at 02:30 (which does not exist on the
    /// spring day and happens twice on the autumn day): one late-to-open
    /// per day, never two, never none.
    fn one_deadline_a_day(from: &str, to: &str, want: &[&str]) {
        let daily = schedule(
            &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "01:00-02:30",
            "23:00-23:30",
            0,
        );
        let mut e = engine(record("Europe/Vienna", vec![daily], 0));
        let mut out = Changes::default();
        run(&mut e, utc(from), utc(to), 5 * MINUTE, &mut out);
        let times: Vec<SystemTime> = opened(&out, LATE_TO_OPEN).iter().map(opened_at).collect();
        let want: Vec<SystemTime> = want.iter().map(|s| utc(s)).collect();
        assert_eq!(times, want);
    }

    #[test]
    fn spring_forward_neither_skips_nor_repeats_a_day() {
        // 29 March 2026: 02:00 CET becomes 03:00 CEST; 02:30 is 03:30 CEST.
        one_deadline_a_day(
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z",
            &[
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-30T00:30:00Z",
                "2026-03-31T00:30:00Z",
            ],
        );
    }

    #[test]
    fn fall_back_neither_skips_nor_repeats_a_day() {
        // 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 happens
        // twice and counts once, the first time (CEST).
        one_deadline_a_day(
            "2026-10-23T12:00:00Z",
            "2026-10-27T12:00:00Z",
            &[
                "2026-10-24T00:30:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00Z",
                "2026-10-27T01:30:00Z",
            ],
        );
    }

    #[test]
    fn holidays_have_no_deadlines() {
        let mut post = record("Europe/Vienna", vec![weekdays()], 0);
        post.holidays = vec!["2026-04-06".into()];
        let mut e = engine(post);
        let mut out = Changes::default();
        run(
            &mut e,
            utc("2026-04-05T22:00:00Z"),
            utc("2026-04-06T21:00:00Z"),
            MINUTE,
            &mut out,
        );
        assert!(out.incidents().is_empty());
    }

    #[test]
    fn fail_to_test_fires_once_per_missed_period_and_a_test_restores_it() {
        let mut e = engine(record("UTC", vec![], 24));
        let start = utc("2026-03-02T00:00:00Z");
        let mut out = Changes::default();
        // Expected from the first tick on.
        run(
            &mut e,
            start,
            start + Duration::from_secs(24 * 3600),
            MINUTE,
            &mut out,
        );
        assert!(out.incidents().is_empty());
        run(
            &mut e,
            start + Duration::from_secs(24 * 3600),
            start + Duration::from_secs(48 * 3600),
            MINUTE,
            &mut out,
        );
        let first = opened(&out, FAIL_TO_TEST);
        assert_eq!(first.len(), 1, "one incident per period, not per tick");
        assert_eq!(first[0].category(), EventCategory::Test);
        assert_eq!(opened_at(&first[0]), start + Duration::from_secs(24 * 3600));
        assert!(
            first[0].title.contains("no test report for 24 h"),
            "{}",
            first[0].title
        );
        // The second period.
        let mut out = Changes::default();
        run(
            &mut e,
            start + Duration::from_secs(48 * 3600),
            start + Duration::from_secs(49 * 3600),
            MINUTE,
            &mut out,
        );
        let second = opened(&out, FAIL_TO_TEST);
        assert_eq!(second.len(), 1);
        // A test report restores it and starts a new period.
        let test = start + Duration::from_secs(50 * 3600);
        let mut out = Changes::default();
        e.on_event(&sia(1, "RP", test), test, &mut out);
        assert!(e.incident(&second[0].id).unwrap().restored);
        run(
            &mut e,
            test,
            test + Duration::from_secs(24 * 3600 - 60),
            MINUTE,
            &mut out,
        );
        assert!(opened(&out, FAIL_TO_TEST).is_empty());
        e.tick(test + Duration::from_secs(24 * 3600), &mut out);
        assert_eq!(opened(&out, FAIL_TO_TEST).len(), 1);
    }

    #[test]
    fn timers_resume_from_the_stored_state() {
        let post = record("Europe/Vienna", vec![weekdays()], 24);
        let mut e = engine(post.clone());
        let mut stored: Vec<(String, PostTimers)> = Vec::new();
        let mut keep = |out: &Changes| {
            for (p, st) in &out.timers {
                stored.retain(|(q, _)| q != p);
                stored.push((p.clone(), st.clone()));
            }
        };
        let mut out = Changes::default();
        run(
            &mut e,
            utc("2026-03-02T00:00:00Z"),
            utc("2026-03-02T08:00:00Z"),
            MINUTE,
            &mut out,
        );
        assert_eq!(opened(&out, LATE_TO_OPEN).len(), 1);
        let open = utc("2026-03-02T08:00:00Z");
        e.on_event(&sia(1, "OP", open), open, &mut out);
        keep(&out);
        let incidents: Vec<Incident> = out.incidents().iter().map(|w| w.incident.clone()).collect();

        // A restart at 12:00: the deadline of the morning is not fired
        // again; the opening is remembered, so the evening's close deadline
        // finds the post open.
        let mut again = Engine::new(
            EngineConfig::default(),
            EngineSnapshot {
                site_posts: vec![post],
                timers: stored.clone(),
                incidents,
                last_incident_number: 10,
                ..Default::default()
            },
        );
        let mut out = Changes::default();
        run(
            &mut again,
            utc("2026-03-02T12:00:00Z"),
            utc("2026-03-02T17:30:00Z"),
            MINUTE,
            &mut out,
        );
        assert!(
            opened(&out, LATE_TO_OPEN).is_empty(),
            "{:#?}",
            out.incidents()
        );
        assert_eq!(opened(&out, LATE_TO_CLOSE).len(), 1);
        // The test period runs from the first tick before the restart.
        assert_eq!(
            again.post_timers(POST).unwrap().tested_at,
            Some(millis(utc("2026-03-02T00:00:00Z")))
        );
    }

    #[test]
    fn deadlines_missed_while_down_are_caught_up_once() {
        let post = record("Europe/Vienna", vec![weekdays()], 0);
        let mut e = engine(post.clone());
        let mut out = Changes::default();
        e.tick(utc("2026-03-02T00:00:00Z"), &mut out);
        let stored: Vec<(String, PostTimers)> = out.timers.clone().into_iter().collect();
        // Down from 00:00 to 10:00: the 07:45Z deadline fires at start, once.
        let mut again = Engine::new(
            EngineConfig::default(),
            EngineSnapshot {
                site_posts: vec![post],
                timers: stored,
                ..Default::default()
            },
        );
        let mut out = Changes::default();
        run(
            &mut again,
            utc("2026-03-02T10:00:00Z"),
            utc("2026-03-02T11:00:00Z"),
            MINUTE,
            &mut out,
        );
        let late = opened(&out, LATE_TO_OPEN);
        assert_eq!(late.len(), 1);
        assert_eq!(opened_at(&late[0]), utc("2026-03-02T07:45:00Z"));
    }
}
