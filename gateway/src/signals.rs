//! From a decoded DC-09 message to `vigil.v1.Event`s.
//!
//! A `SIA-DCS` block may carry several events, an `ADM-CID` block carries
//! one, a `NULL` message none (it only proves the link is alive). Each event
//! gets a dedup key built from what a panel repeats when it retransmits the
//! same message (account, line, receiver, panel sequence, data block), so a
//! retransmission is ACKed again but stored once. The timestamp is left out
//! on purpose: panels refresh it on every attempt.

use time::OffsetDateTime;
use vigil_proto::{
    Timestamp,
    v1::{self, AlarmProtocol, AlarmSignal, ContactIdQualifier, Event, Source, SourceKind, event},
};

use vigil_dc09::{
    Classification, ContactId, EventCategory, Message, Qualifier, Severity, Token,
    contact_id::ContactIdError,
    sia_dcs::{SiaDcsError, parse_sia_dcs},
};

use crate::outbox::NewEvent;

/// Why a message's payload could not be turned into events (answered DUH).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("bad Contact ID payload: {0}")]
    ContactId(#[from] ContactIdError),
    #[error("bad SIA-DCS payload: {0}")]
    Sia(#[from] SiaDcsError),
    #[error("a panel may not send {0}")]
    NotASignal(String),
}

/// The events carried by `msg`, received at `now`.
pub fn events_from_message(
    msg: &Message,
    now: OffsetDateTime,
) -> Result<Vec<NewEvent>, SignalError> {
    let drafts: Vec<(Classification, AlarmSignal, String)> = match &msg.token {
        Token::Null => return Ok(Vec::new()),
        Token::AdmCid => {
            let cid = ContactId::parse(&msg.data)?;
            let class = cid.classify();
            let by_user = uses_user(class.category);
            let signal = AlarmSignal {
                protocol: AlarmProtocol::ContactId.into(),
                contact_id: Some(v1::ContactId {
                    qualifier: match cid.qualifier {
                        Qualifier::New => ContactIdQualifier::New,
                        Qualifier::Restore => ContactIdQualifier::Restore,
                        Qualifier::Status => ContactIdQualifier::Status,
                    }
                    .into(),
                    event_code: u32::from(cid.event),
                    partition: u32::from(cid.partition),
                    zone_or_user: u32::from(cid.zone_or_user),
                }),
                zone: if by_user {
                    0
                } else {
                    u32::from(cid.zone_or_user)
                },
                user: if by_user {
                    u32::from(cid.zone_or_user)
                } else {
                    0
                },
                partition: u32::from(cid.partition),
                ..header(msg)
            };
            let what = if by_user { "user" } else { "zone" };
            let description = describe(&class, what, u32::from(cid.zone_or_user));
            vec![(class, signal, description)]
        }
        Token::SiaDcs => parse_sia_dcs(&msg.data)?
            .into_iter()
            .map(|sia| {
                let class = sia.classify();
                let by_user = uses_user(class.category);
                let number = sia.zone_or_user.unwrap_or(0);
                let signal = AlarmSignal {
                    protocol: AlarmProtocol::SiaDcs.into(),
                    sia_code: sia.code.clone(),
                    zone: if by_user { 0 } else { number },
                    user: sia.user.unwrap_or(if by_user { number } else { 0 }),
                    partition: sia.area.unwrap_or(0),
                    text: sia.text.clone().unwrap_or_default(),
                    ..header(msg)
                };
                let what = if by_user { "user" } else { "zone" };
                let mut description = describe(&class, what, number);
                if let Some(text) = &sia.text {
                    description = format!("{description} ({text})");
                }
                (class, signal, description)
            })
            .collect(),
        other => return Err(SignalError::NotASignal(other.as_str().to_owned())),
    };

    let received_at = Some(timestamp(now));
    let occurred_at = msg.timestamp.map(timestamp);
    Ok(drafts
        .into_iter()
        .enumerate()
        .map(|(index, (class, signal, description))| NewEvent {
            dedup_key: Some(format!(
                "dc09|{}|{}|{}|{}|{}|{index}",
                msg.account,
                msg.line,
                msg.receiver.as_deref().unwrap_or(""),
                msg.seq,
                msg.data
            )),
            event: Event {
                occurred_at,
                received_at,
                source: Some(Source {
                    device_id: msg.account.clone(),
                    kind: SourceKind::AlarmPanel.into(),
                }),
                severity: severity(class.severity).into(),
                category: category(class.category).into(),
                restore: class.restore,
                description,
                body: Some(event::Body::Alarm(signal)),
                ..Default::default()
            },
        })
        .collect())
}

/// The DC-09 header fields every signal of `msg` shares.
fn header(msg: &Message) -> AlarmSignal {
    AlarmSignal {
        account: msg.account.clone(),
        receiver: msg.receiver.clone().unwrap_or_default(),
        line: msg.line.clone(),
        dc09_sequence: u32::from(msg.seq),
        encrypted: msg.encrypted,
        raw_data: msg.data.clone(),
        ..Default::default()
    }
}

/// Whether the number of events of this category names a user, not a zone.
fn uses_user(category: EventCategory) -> bool {
    matches!(category, EventCategory::OpenClose | EventCategory::Access)
}

fn describe(class: &Classification, what: &str, number: u32) -> String {
    if number == 0 {
        class.description.to_owned()
    } else {
        format!("{}, {what} {number}", class.description)
    }
}

pub(crate) fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

/// The taxonomy's category as the wire enum.
pub fn category(c: EventCategory) -> v1::EventCategory {
    use v1::EventCategory as W;
    match c {
        EventCategory::Unspecified => W::Unspecified,
        EventCategory::Fire => W::Fire,
        EventCategory::Panic => W::Panic,
        EventCategory::Duress => W::Duress,
        EventCategory::Holdup => W::Holdup,
        EventCategory::Medical => W::Medical,
        EventCategory::Burglary => W::Burglary,
        EventCategory::Tamper => W::Tamper,
        EventCategory::Gas => W::Gas,
        EventCategory::Environmental => W::Environmental,
        EventCategory::Trouble => W::Trouble,
        EventCategory::Power => W::Power,
        EventCategory::Communication => W::Communication,
        EventCategory::Supervisory => W::Supervisory,
        EventCategory::Test => W::Test,
        EventCategory::OpenClose => W::OpenClose,
        EventCategory::Bypass => W::Bypass,
        EventCategory::Access => W::Access,
        EventCategory::System => W::System,
        EventCategory::Other => W::Other,
    }
}

/// The taxonomy's severity as the wire enum.
pub fn severity(s: Severity) -> v1::Severity {
    use v1::Severity as W;
    match s {
        Severity::Unspecified => W::Unspecified,
        Severity::Info => W::Info,
        Severity::Low => W::Low,
        Severity::Medium => W::Medium,
        Severity::High => W::High,
        Severity::Critical => W::Critical,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn msg(token: Token, data: &str) -> Message {
        Message {
            seq: 42,
            data: data.into(),
            timestamp: Some(datetime!(2026-11-26 08:00:00 UTC)),
            ..Message::new(token, "1234")
        }
    }

    fn alarm(e: &NewEvent) -> &AlarmSignal {
        match &e.event.body {
            Some(event::Body::Alarm(a)) => a,
            other => panic!("not an alarm: {other:?}"),
        }
    }

    #[test]
    fn contact_id_burglary_in_zone_15() {
        let now = datetime!(2026-11-26 08:00:01 UTC);
        let events = events_from_message(&msg(Token::AdmCid, "#1234|1130 01 015"), now).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0].event;
        assert_eq!(e.category(), v1::EventCategory::Burglary);
        assert_eq!(e.severity(), v1::Severity::High);
        assert!(!e.restore);
        assert!(e.description.ends_with("zone 15"), "{}", e.description);
        assert_eq!(e.source.as_ref().unwrap().device_id, "1234");
        assert_eq!(
            e.occurred_at.unwrap().seconds,
            datetime!(2026-11-26 08:00:00 UTC).unix_timestamp()
        );
        assert_eq!(e.received_at.unwrap().seconds, now.unix_timestamp());
        let a = alarm(&events[0]);
        assert_eq!(
            (a.zone, a.user, a.partition, a.dc09_sequence),
            (15, 0, 1, 42)
        );
        let cid = a.contact_id.unwrap();
        assert_eq!(
            (cid.qualifier(), cid.event_code),
            (ContactIdQualifier::New, 130)
        );
        assert_eq!(a.raw_data, "#1234|1130 01 015");
    }

    #[test]
    fn contact_id_restore_and_closing_by_user() {
        let now = datetime!(2026-11-26 08:00:01 UTC);
        let restore = events_from_message(&msg(Token::AdmCid, "#1234|3130 01 015"), now).unwrap();
        assert!(restore[0].event.restore);
        let closing = events_from_message(&msg(Token::AdmCid, "#1234|3401 02 007"), now).unwrap();
        let a = alarm(&closing[0]);
        assert_eq!(closing[0].event.category(), v1::EventCategory::OpenClose);
        assert_eq!((a.user, a.zone, a.partition), (7, 0, 2));
    }

    #[test]
    fn sia_block_with_several_events() {
        let now = datetime!(2026-11-26 08:00:01 UTC);
        let events =
            events_from_message(&msg(Token::SiaDcs, "#1234|Nri1/BA015/FA002"), now).unwrap();
        let got: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.event.category(),
                    alarm(e).sia_code.as_str(),
                    alarm(e).zone,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (v1::EventCategory::Burglary, "BA", 15),
                (v1::EventCategory::Fire, "FA", 2)
            ]
        );
        // Distinct dedup keys within one message, equal across a retransmission.
        assert_ne!(events[0].dedup_key, events[1].dedup_key);
        let again = events_from_message(
            &Message {
                timestamp: Some(datetime!(2026-11-26 08:00:30 UTC)),
                ..msg(Token::SiaDcs, "#1234|Nri1/BA015/FA002")
            },
            now,
        )
        .unwrap();
        assert_eq!(events[0].dedup_key, again[0].dedup_key);
    }

    #[test]
    fn null_carries_no_event_and_unknown_codes_are_kept() {
        let now = datetime!(2026-11-26 08:00:01 UTC);
        assert!(
            events_from_message(&msg(Token::Null, ""), now)
                .unwrap()
                .is_empty()
        );
        let odd = events_from_message(&msg(Token::AdmCid, "#1234|1799 01 001"), now).unwrap();
        assert_eq!(odd[0].event.category(), v1::EventCategory::Other);
        assert!(events_from_message(&msg(Token::AdmCid, "#1234|9130 01 015"), now).is_err());
        assert!(matches!(
            events_from_message(&msg(Token::Ack, ""), now),
            Err(SignalError::NotASignal(_))
        ));
    }
}
