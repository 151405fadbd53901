//! Per-post figures for a period (`GetReport`, `vigil report`, the
//! console's report page).
//!
//! Incident figures count the incidents *opened* in the period (`[from,
//! to)`), as they stand when the report is made: one that opened in the
//! period and was resolved after it counts as resolved. Alarm events are
//! the alarm-panel events (`EVENT_KIND_ALARM`) received in the period that
//! are not restores.
//!
//! Cost: two index ranges bounded by the period, read in chunks of
//! [`CHUNK`] rows — the alarm-panel events received in it
//! (`events_kind_at`, or per named post `events_post_kind_at`) and the
//! incidents opened in it (`incidents_opened`, or per named post
//! `incidents_post_opened`) — plus the list of posts when none is named.
//! Each row read is decoded once; memory holds one duration per
//! acknowledged or resolved incident (for the percentiles). Nothing
//! outside the period is read.

use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use vigil_proto::v1::{
    Disposition, DispositionCount, EventKind, Incident, IncidentState, PostReport, Report,
};

use crate::store::{OpenedFilter, ReceivedFilter, Store, StoreError, TimeKey};

/// The `subject` of the incidents the fail-to-test timer opens (a post
/// whose periodic test signal did not arrive in time); counted as
/// `test_failures`.
pub const FAIL_TO_TEST_SUBJECT: &str = "timer:fail_to_test";

/// Rows read per statement.
pub const CHUNK: usize = 1000;

/// Whether a disposition counts as a false alarm: every one but GENUINE
/// (a real event) and TEST (a planned test), so user error, equipment
/// fault, environmental, unknown, duplicate and unspecified.
pub fn is_false_alarm(disposition: i32) -> bool {
    disposition != Disposition::Genuine as i32 && disposition != Disposition::Test as i32
}

/// Nearest-rank percentile `p` (0–100) of sorted `values`: the smallest
/// value with at least `p`% of the values at or below it.
pub fn percentile(sorted: &[u64], p: u32) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(p) * n).div_ceil(100).clamp(1, n);
    Some(sorted[(rank - 1) as usize])
}

#[derive(Debug, Default)]
struct Figures {
    alarm_events: u64,
    opened: u64,
    resolved: u64,
    dispositions: BTreeMap<i32, u64>,
    false_alarms: u64,
    resolved_test: u64,
    ack_ms: Vec<u64>,
    resolve_ms: Vec<u64>,
    unrestored: u64,
    test_failures: u64,
}

fn ms_between(
    from: Option<prost_types::Timestamp>,
    to: Option<prost_types::Timestamp>,
) -> Option<u64> {
    let from = SystemTime::try_from(from?).ok()?;
    let to = SystemTime::try_from(to?).ok()?;
    // A clock step backwards counts as no time at all.
    Some(
        to.duration_since(from)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    )
}

impl Figures {
    fn add(&mut self, inc: &Incident) {
        self.opened += 1;
        if inc.state == IncidentState::Resolved as i32 {
            self.resolved += 1;
            *self.dispositions.entry(inc.disposition).or_default() += 1;
            if is_false_alarm(inc.disposition) {
                self.false_alarms += 1;
            }
            if inc.disposition == Disposition::Test as i32 {
                self.resolved_test += 1;
            }
            if let Some(ms) = ms_between(inc.opened_at, inc.resolved_at) {
                self.resolve_ms.push(ms);
            }
        }
        if let Some(ms) = ms_between(inc.opened_at, inc.acknowledged_at) {
            self.ack_ms.push(ms);
        }
        if !inc.restored {
            self.unrestored += 1;
        }
        if inc.subject == FAIL_TO_TEST_SUBJECT {
            self.test_failures += 1;
        }
    }

    fn finish(mut self, post_id: String) -> PostReport {
        self.ack_ms.sort_unstable();
        self.resolve_ms.sort_unstable();
        let judged = self.resolved - self.resolved_test;
        PostReport {
            post_id,
            alarm_events: self.alarm_events,
            incidents_opened: self.opened,
            incidents_resolved: self.resolved,
            dispositions: self
                .dispositions
                .iter()
                .map(|(&disposition, &count)| DispositionCount { disposition, count })
                .collect(),
            false_alarms: self.false_alarms,
            false_alarm_rate: (judged > 0).then(|| self.false_alarms as f64 / judged as f64),
            acknowledged: self.ack_ms.len() as u64,
            ack_p50_ms: percentile(&self.ack_ms, 50),
            ack_p90_ms: percentile(&self.ack_ms, 90),
            resolve_p50_ms: percentile(&self.resolve_ms, 50),
            resolve_p90_ms: percentile(&self.resolve_ms, 90),
            unrestored: self.unrestored,
            test_failures: self.test_failures,
        }
    }
}

/// The report for `[from, to)`: one row per named post (every post named
/// gets one, figures or not), or, with none named, per known post and per
/// post with an incident or alarm in the period; by post id.
pub fn build(
    store: &dyn Store,
    from: SystemTime,
    to: SystemTime,
    post_ids: &[String],
) -> Result<Report, StoreError> {
    let mut rows: BTreeMap<String, Figures> = BTreeMap::new();
    if post_ids.is_empty() {
        for p in store.posts()? {
            rows.entry(p.post_id).or_default();
        }
    } else {
        for p in post_ids {
            rows.entry(p.clone()).or_default();
        }
    }

    let events = ReceivedFilter {
        post_ids: post_ids.to_vec(),
        kinds: vec![EventKind::Alarm as i32],
        from: Some(from),
        to: Some(to),
    };
    let mut after = None;
    loop {
        let page = store.events_received(&events, after.as_ref(), CHUNK)?;
        for (key, stored) in &page {
            if stored.event.as_ref().is_some_and(|e| !e.restore) {
                rows.entry(key.post_id.clone()).or_default().alarm_events += 1;
            }
        }
        if page.len() < CHUNK {
            break;
        }
        after = page.last().map(|(k, _)| k.clone());
    }

    let opened = OpenedFilter {
        post_ids: post_ids.to_vec(),
        from: Some(from),
        to: Some(to),
    };
    let mut after: Option<TimeKey> = None;
    loop {
        let page = store.incidents_opened(&opened, after, CHUNK)?;
        for (_, inc) in &page {
            rows.entry(inc.post_id.clone()).or_default().add(inc);
        }
        if page.len() < CHUNK {
            break;
        }
        after = page.last().map(|(k, _)| *k);
    }

    Ok(Report {
        from_time: Some(from.into()),
        to_time: Some(to.into()),
        posts: rows.into_iter().map(|(p, f)| f.finish(p)).collect(),
    })
}

/// Dispositions in the order of their CSV columns.
const DISPOSITION_COLUMNS: [(Disposition, &str); 8] = [
    (Disposition::Genuine, "resolved_genuine"),
    (Disposition::UserError, "resolved_user_error"),
    (Disposition::EquipmentFault, "resolved_equipment_fault"),
    (Disposition::Environmental, "resolved_environmental"),
    (Disposition::Test, "resolved_test"),
    (Disposition::Unknown, "resolved_unknown"),
    (Disposition::Duplicate, "resolved_duplicate"),
    (Disposition::Unspecified, "resolved_unspecified"),
];

/// The CSV header: stable column names (documented in docs/ops-center.md).
pub fn csv_header() -> String {
    let mut cols = vec![
        "post_id",
        "alarm_events",
        "incidents_opened",
        "incidents_resolved",
    ];
    cols.extend(DISPOSITION_COLUMNS.iter().map(|(_, name)| *name));
    cols.extend([
        "false_alarms",
        "false_alarm_rate",
        "acknowledged",
        "ack_p50_ms",
        "ack_p90_ms",
        "resolve_p50_ms",
        "resolve_p90_ms",
        "unrestored",
        "test_failures",
    ]);
    cols.join(",")
}

/// A CSV field: quoted when it holds a comma, quote or line break.
fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The report as CSV: [`csv_header`], then one line per post; an absent
/// figure (a rate or percentile of nothing) is an empty field. Lines end
/// with `\n`.
pub fn to_csv(report: &Report) -> String {
    let mut out = csv_header();
    out.push('\n');
    for p in &report.posts {
        let count = |d: Disposition| {
            p.dispositions
                .iter()
                .filter(|c| c.disposition == d as i32)
                .map(|c| c.count)
                .sum::<u64>()
        };
        let mut cols = vec![
            field(&p.post_id),
            p.alarm_events.to_string(),
            p.incidents_opened.to_string(),
            p.incidents_resolved.to_string(),
        ];
        cols.extend(
            DISPOSITION_COLUMNS
                .iter()
                .map(|(d, _)| count(*d).to_string()),
        );
        cols.extend([
            p.false_alarms.to_string(),
            opt(p.false_alarm_rate.map(|r| format!("{r:.4}"))),
            p.acknowledged.to_string(),
            opt(p.ack_p50_ms),
            opt(p.ack_p90_ms),
            opt(p.resolve_p50_ms),
            opt(p.resolve_p90_ms),
            p.unrestored.to_string(),
            p.test_failures.to_string(),
        ]);
        let _ = writeln!(out, "{}", cols.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 90), Some(7));
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), Some(5));
        assert_eq!(percentile(&v, 90), Some(9));
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3], 90), Some(3));
    }

    #[test]
    fn false_alarms_are_every_disposition_but_genuine_and_test() {
        assert!(!is_false_alarm(Disposition::Genuine as i32));
        assert!(!is_false_alarm(Disposition::Test as i32));
        for d in [
            Disposition::Unspecified,
            Disposition::UserError,
            Disposition::EquipmentFault,
            Disposition::Environmental,
            Disposition::Unknown,
            Disposition::Duplicate,
        ] {
            assert!(is_false_alarm(d as i32), "{d:?}");
        }
    }

    #[test]
    fn csv_has_one_column_per_header_name_and_quotes_odd_post_ids() {
        let report = Report {
            posts: vec![PostReport {
                post_id: "p,1".into(),
                incidents_resolved: 3,
                dispositions: vec![DispositionCount {
                    disposition: Disposition::Test as i32,
                    count: 3,
                }],
                ack_p50_ms: Some(1500),
                ..Default::default()
            }],
            ..Default::default()
        };
        let csv = to_csv(&report);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Vec<&str> = lines[0].split(',').collect();
        assert!(lines[1].starts_with("\"p,1\","));
        let row: Vec<&str> = lines[1]["\"p,1\",".len()..].split(',').collect();
        assert_eq!(row.len() + 1, header.len());
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap() - 1];
        assert_eq!(col("resolved_test"), "3");
        assert_eq!(col("resolved_genuine"), "0");
        assert_eq!(col("ack_p50_ms"), "1500");
        assert_eq!(col("ack_p90_ms"), "");
        assert_eq!(col("false_alarm_rate"), "");
    }
}
