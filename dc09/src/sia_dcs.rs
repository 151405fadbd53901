//! SIA DC-03 style payloads (`SIA-DCS` messages).
//!
//! A `SIA-DCS` data block carries one or more SIA events in the DC-03
//! "data" syntax:
//!
//! ```text
//! #<acct>|N[modifiers]<CC><number>[^text^][/[modifiers]<CC><number>...][|A<text>]
//! ```
//!
//! * `N` opens a new-event block (it is optional in practice).
//! * Modifiers are two lower-case letters with a value, and apply to the
//!   events that follow them in the same block: `ri<n>` area/partition,
//!   `id<n>` user number, `ti<hh:mm[:ss]>` event time, `pi<n>` peripheral.
//!   Unknown modifiers are skipped.
//! * `<CC>` is the two upper-case letter event code (e.g. `BA` burglary
//!   alarm, `BR` burglary restore, `OP` opening, `RP` automatic test),
//!   optionally followed by a decimal zone, user or area number (which one
//!   depends on the code).
//! * `^text^` right after an event is descriptive text (e.g. a zone name);
//!   text after a modifier (an area or user name) is skipped.
//! * `/` separates elements; `|A<text>` at the end is a free-text block,
//!   attached to the last event when that has no text of its own.
//!
//! Examples: `#1234|Nri1/BA01`, `Nri1CL0^FRONT ^`, `Nti12:30/id3/OP0`,
//! `|Nri1/BA01/BA02`.

use thiserror::Error;

use super::message::split_account;
use super::taxonomy::{self, Classification};

/// Longest number accepted after a code or modifier (fits in a `u32`).
const MAX_DIGITS: usize = 9;

/// One SIA event from a `SIA-DCS` data block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiaEvent {
    /// Two upper-case letters, e.g. `BA`.
    pub code: String,
    /// Number following the code: zone, user or area depending on the code.
    pub zone_or_user: Option<u32>,
    /// Area / partition from an `ri` modifier.
    pub area: Option<u32>,
    /// User from an `id` modifier.
    pub user: Option<u32>,
    /// Event time from a `ti` modifier, as written (`hh:mm` or `hh:mm:ss`).
    pub time: Option<String>,
    /// Text from `^...^` or a trailing `|A...` block.
    pub text: Option<String>,
}

impl SiaEvent {
    /// Category, severity, description and restore flag of this event.
    pub fn classify(&self) -> Classification {
        taxonomy::classify_sia(&self.code)
    }
}

/// Why a `SIA-DCS` payload could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SiaDcsError {
    /// The payload contains no event code.
    #[error("SIA payload contains no event code")]
    NoEvent,
    /// A character that fits nowhere in the grammar.
    #[error("unexpected character {ch:?} at position {pos} of SIA payload")]
    Unexpected {
        /// Offending character.
        ch: char,
        /// Byte offset in the payload.
        pos: usize,
    },
    /// A modifier without a value (e.g. `ri` followed by nothing).
    #[error("SIA modifier {0:?} has no value")]
    EmptyModifier(String),
    /// A number longer than nine digits.
    #[error("number too long in SIA payload at position {0}")]
    NumberTooLong(usize),
    /// `^` text without the closing `^`.
    #[error("unterminated ^text^ in SIA payload")]
    UnterminatedText,
}

/// Parses a `SIA-DCS` data block (with or without the `#acct|` prefix) into
/// its events.
pub fn parse_sia_dcs(data: &str) -> Result<Vec<SiaEvent>, SiaDcsError> {
    let payload = split_account(data).1;
    let b = payload.as_bytes();
    let mut pos = 0;

    // Leading 'N' block marker, unless it is the first letter of a code
    // such as NA or NT (then it is followed by a digit or nothing).
    if b.first() == Some(&b'N') {
        let next = b.get(1).copied();
        let next2 = b.get(2).copied();
        let modifier_follows = next.is_some_and(|c| c.is_ascii_lowercase());
        let code_follows = next.is_some_and(|c| c.is_ascii_uppercase())
            && next2.is_some_and(|c| c.is_ascii_uppercase());
        if modifier_follows || code_follows {
            pos = 1;
        }
    }

    let mut events: Vec<SiaEvent> = Vec::new();
    let mut area = None;
    let mut user = None;
    let mut time: Option<String> = None;
    // Whether the last element was an event (so ^text^ belongs to it).
    let mut after_event = false;

    let unexpected = |pos: usize| SiaDcsError::Unexpected {
        ch: b.get(pos).map_or('?', |c| char::from(*c)),
        pos,
    };

    while let Some(&c) = b.get(pos) {
        match c {
            b'/' => {
                pos += 1;
                after_event = false;
            }
            b'^' => {
                let len = b[pos + 1..]
                    .iter()
                    .position(|c| *c == b'^')
                    .ok_or(SiaDcsError::UnterminatedText)?;
                let text = &payload[pos + 1..pos + 1 + len];
                if let Some(ev) = events.last_mut().filter(|_| after_event) {
                    ev.text = Some(text.to_owned());
                }
                pos += len + 2;
            }
            b'|' => {
                // Trailing free-text block "|A<text>".
                if b.get(pos + 1) != Some(&b'A') {
                    return Err(unexpected(pos));
                }
                let text = &payload[pos + 2..];
                if let Some(ev) = events.last_mut().filter(|ev| ev.text.is_none()) {
                    ev.text = Some(text.to_owned());
                }
                pos = b.len();
            }
            b'a'..=b'z' => {
                let name = b
                    .get(pos..pos + 2)
                    .filter(|n| n[1].is_ascii_lowercase())
                    .ok_or_else(|| unexpected(pos))?;
                let name = [char::from(name[0]), char::from(name[1])];
                pos += 2;
                let start = pos;
                let is_value = |c: u8| c.is_ascii_digit() || matches!(c, b':' | b'.' | b'-');
                while b.get(pos).copied().is_some_and(is_value) {
                    pos += 1;
                }
                let value = &payload[start..pos];
                if value.is_empty() {
                    return Err(SiaDcsError::EmptyModifier(name.iter().collect()));
                }
                match name {
                    ['r', 'i'] => area = Some(parse_number(value, start)?),
                    ['i', 'd'] => user = Some(parse_number(value, start)?),
                    ['t', 'i'] => time = Some(value.to_owned()),
                    // pi (peripheral) and anything else: accepted, not kept.
                    _ => {}
                }
                after_event = false;
            }
            b'A'..=b'Z' => {
                let code = b
                    .get(pos..pos + 2)
                    .filter(|n| n[1].is_ascii_uppercase())
                    .ok_or_else(|| unexpected(pos))?;
                let code: String = code.iter().map(|c| char::from(*c)).collect();
                pos += 2;
                let start = pos;
                while b.get(pos).is_some_and(u8::is_ascii_digit) {
                    pos += 1;
                }
                let number = if pos > start {
                    Some(parse_number(&payload[start..pos], start)?)
                } else {
                    None
                };
                events.push(SiaEvent {
                    code,
                    zone_or_user: number,
                    area,
                    user,
                    time: time.clone(),
                    text: None,
                });
                after_event = true;
            }
            _ => return Err(unexpected(pos)),
        }
    }

    if events.is_empty() {
        return Err(SiaDcsError::NoEvent);
    }
    Ok(events)
}

fn parse_number(digits: &str, pos: usize) -> Result<u32, SiaDcsError> {
    if digits.len() > MAX_DIGITS || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(SiaDcsError::NumberTooLong(pos));
    }
    digits.parse().map_err(|_| SiaDcsError::NumberTooLong(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(code: &str, zone: Option<u32>, area: Option<u32>) -> SiaEvent {
        SiaEvent {
            code: code.into(),
            zone_or_user: zone,
            area,
            user: None,
            time: None,
            text: None,
        }
    }

    #[test]
    fn simple_event_with_area() {
        assert_eq!(
            parse_sia_dcs("#1234|Nri1/BA01").unwrap(),
            vec![ev("BA", Some(1), Some(1))]
        );
        assert_eq!(
            parse_sia_dcs("|Nri1/CL501").unwrap(),
            vec![ev("CL", Some(501), Some(1))]
        );
        assert_eq!(
            parse_sia_dcs("Nri1/WA000").unwrap(),
            vec![ev("WA", Some(0), Some(1))]
        );
    }

    #[test]
    fn modifier_runs_into_code_and_text() {
        // Shape seen from a real panel: no '/' between ri and the code,
        // zone name between carets.
        let events = parse_sia_dcs("#123456|Nri1CL0^VX FRONTE ^").unwrap();
        assert_eq!(
            events,
            vec![SiaEvent {
                text: Some("VX FRONTE ".into()),
                ..ev("CL", Some(0), Some(1))
            }]
        );
    }

    #[test]
    fn time_and_user_modifiers() {
        let events = parse_sia_dcs("Nti12:30/id3/ri2/OP0").unwrap();
        assert_eq!(
            events,
            vec![SiaEvent {
                user: Some(3),
                time: Some("12:30".into()),
                ..ev("OP", Some(0), Some(2))
            }]
        );
    }

    #[test]
    fn several_events_share_modifiers() {
        let events = parse_sia_dcs("Nri1/BA01/BA02/ri2/FA5").unwrap();
        assert_eq!(
            events,
            vec![
                ev("BA", Some(1), Some(1)),
                ev("BA", Some(2), Some(1)),
                ev("FA", Some(5), Some(2))
            ]
        );
    }

    #[test]
    fn code_without_number_and_no_n_prefix() {
        assert_eq!(parse_sia_dcs("RP").unwrap(), vec![ev("RP", None, None)]);
        // NA / NT are codes, not the N block marker.
        assert_eq!(
            parse_sia_dcs("NT01").unwrap(),
            vec![ev("NT", Some(1), None)]
        );
        assert_eq!(parse_sia_dcs("NA").unwrap(), vec![ev("NA", None, None)]);
        assert_eq!(parse_sia_dcs("NNA").unwrap(), vec![ev("NA", None, None)]);
    }

    #[test]
    fn trailing_ascii_block_and_modifier_labels() {
        let events = parse_sia_dcs("#123|Nri1^Ground floor^/BA4|AWindow broken").unwrap();
        assert_eq!(
            events,
            vec![SiaEvent {
                text: Some("Window broken".into()),
                ..ev("BA", Some(4), Some(1))
            }]
        );
    }

    #[test]
    fn unknown_modifier_is_skipped() {
        assert_eq!(
            parse_sia_dcs("Npi12/xx1.5/BA1").unwrap(),
            vec![ev("BA", Some(1), None)]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse_sia_dcs(""), Err(SiaDcsError::NoEvent));
        assert_eq!(parse_sia_dcs("#1234|Nri1"), Err(SiaDcsError::NoEvent));
        assert_eq!(
            parse_sia_dcs("Nri/BA1"),
            Err(SiaDcsError::EmptyModifier("ri".into()))
        );
        assert_eq!(
            parse_sia_dcs("NBA1^open"),
            Err(SiaDcsError::UnterminatedText)
        );
        assert_eq!(
            parse_sia_dcs("NBA1234567890"),
            Err(SiaDcsError::NumberTooLong(3))
        );
        assert_eq!(
            parse_sia_dcs("B1"),
            Err(SiaDcsError::Unexpected { ch: 'B', pos: 0 })
        );
        assert_eq!(
            parse_sia_dcs("NBA1*"),
            Err(SiaDcsError::Unexpected { ch: '*', pos: 4 })
        );
        assert_eq!(
            parse_sia_dcs("NBA1|X"),
            Err(SiaDcsError::Unexpected { ch: '|', pos: 4 })
        );
        assert_eq!(
            parse_sia_dcs("Nr"),
            Err(SiaDcsError::Unexpected { ch: 'r', pos: 1 })
        );
    }
}
