//! Ademco Contact ID payloads (`ADM-CID` messages).
//!
//! Inside a DC-09 `ADM-CID` data block the Contact ID event is written as
//! ASCII with single spaces between the groups:
//!
//! ```text
//! #<acct>|QEEE GG CCC
//! ```
//!
//! * `Q`: event qualifier. `1` new event or opening (disarm), `3` restore
//!   or closing (arm), `6` previously reported condition still present
//!   (status report).
//! * `EEE`: three-digit event code (100-199 alarms, 200s supervisory, 300s
//!   troubles, 400s open/close and access, 500s bypass/disable, 600s tests
//!   and miscellaneous, see [`super::taxonomy`]).
//! * `GG`: two-digit partition (area), `00` when not applicable.
//! * `CCC`: three-digit zone number or, for open/close and similar events,
//!   user number.
//!
//! The `#<acct>|` prefix is optional here; [`ContactId::parse`] accepts the
//! whole data block or just the event part.

use std::fmt;

use thiserror::Error;

use crate::message::split_account;
// The qualifier lives with the taxonomy, which reads it; this module parses
// it. The dependency runs one way: contact_id -> taxonomy.
pub use crate::taxonomy::Qualifier;
use crate::taxonomy::{self, Classification};

/// A parsed Contact ID event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContactId {
    /// Event qualifier.
    pub qualifier: Qualifier,
    /// Event code, 0..=999.
    pub event: u16,
    /// Partition / area, 0..=99.
    pub partition: u8,
    /// Zone or user number, 0..=999.
    pub zone_or_user: u16,
}

/// Why a Contact ID payload could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContactIdError {
    /// The event part is not exactly `QEEE GG CCC` (11 characters).
    #[error("Contact ID event must be 11 characters 'QEEE GG CCC', got {0}")]
    Length(usize),
    /// Qualifier other than 1, 3 or 6.
    #[error("Contact ID qualifier must be 1, 3 or 6, got {0:?}")]
    Qualifier(char),
    /// A group contains something other than decimal digits.
    #[error("Contact ID {0} must be decimal digits")]
    Digits(&'static str),
    /// Missing single space between groups.
    #[error("Contact ID groups must be separated by single spaces")]
    Separator,
}

impl ContactId {
    /// Parses a data block (`#acct|QEEE GG CCC`, `|QEEE GG CCC` or just
    /// `QEEE GG CCC`).
    pub fn parse(data: &str) -> Result<Self, ContactIdError> {
        let event = split_account(data).1.as_bytes();
        if event.len() != 11 {
            return Err(ContactIdError::Length(event.len()));
        }
        if event[4] != b' ' || event[7] != b' ' {
            return Err(ContactIdError::Separator);
        }
        let qualifier = match event[0] {
            b'1' => Qualifier::New,
            b'3' => Qualifier::Restore,
            b'6' => Qualifier::Status,
            other => return Err(ContactIdError::Qualifier(char::from(other))),
        };
        let digits = |bytes: &[u8], what: &'static str| -> Result<u16, ContactIdError> {
            if bytes.iter().all(u8::is_ascii_digit) {
                Ok(bytes
                    .iter()
                    .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
            } else {
                Err(ContactIdError::Digits(what))
            }
        };
        let event_code = digits(&event[1..4], "event code")?;
        let partition = digits(&event[5..7], "partition")?;
        let zone_or_user = digits(&event[8..11], "zone/user")?;
        Ok(Self {
            qualifier,
            event: event_code,
            partition: u8::try_from(partition).map_err(|_| ContactIdError::Digits("partition"))?,
            zone_or_user,
        })
    }

    /// Formats as a data block with the account prefix, ready for
    /// [`super::message::Message::data`]: `#acct|QEEE GG CCC`. Values out of
    /// range are clamped to the largest value the field can hold.
    pub fn to_data(&self, account: &str) -> String {
        format!("#{account}|{self}")
    }

    /// Category, severity, description and restore flag of this event.
    pub fn classify(&self) -> Classification {
        taxonomy::classify_contact_id_code(self.event, self.qualifier)
    }
}

impl fmt::Display for ContactId {
    /// `QEEE GG CCC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{:03} {:02} {:03}",
            self.qualifier.digit(),
            self.event.min(999),
            self.partition.min(99),
            self.zone_or_user.min(999)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taxonomy::EventCategory;

    #[test]
    fn classifies_through_the_taxonomy() {
        let c = ContactId::parse("#1234|1110 00 129").unwrap().classify();
        assert_eq!(
            (c.category, c.description),
            (EventCategory::Fire, "Fire alarm")
        );
    }

    #[test]
    fn parses_with_and_without_account() {
        let expected = ContactId {
            qualifier: Qualifier::New,
            event: 130,
            partition: 1,
            zone_or_user: 15,
        };
        assert_eq!(ContactId::parse("#1234|1130 01 015"), Ok(expected));
        assert_eq!(ContactId::parse("|1130 01 015"), Ok(expected));
        assert_eq!(ContactId::parse("1130 01 015"), Ok(expected));
    }

    #[test]
    fn parses_qualifiers() {
        assert_eq!(
            ContactId::parse("3401 02 007").unwrap().qualifier,
            Qualifier::Restore
        );
        assert_eq!(
            ContactId::parse("6301 00 000").unwrap().qualifier,
            Qualifier::Status
        );
        assert_eq!(
            ContactId::parse("2130 01 015"),
            Err(ContactIdError::Qualifier('2'))
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            ContactId::parse("1130 01 15"),
            Err(ContactIdError::Length(10))
        );
        assert_eq!(
            ContactId::parse("1130  01 15"),
            Err(ContactIdError::Separator)
        );
        assert_eq!(
            ContactId::parse("1130-01-015"),
            Err(ContactIdError::Separator)
        );
        assert_eq!(
            ContactId::parse("11A0 01 015"),
            Err(ContactIdError::Digits("event code"))
        );
        assert_eq!(
            ContactId::parse("1130 0x 015"),
            Err(ContactIdError::Digits("partition"))
        );
        assert_eq!(
            ContactId::parse("1130 01 01F"),
            Err(ContactIdError::Digits("zone/user"))
        );
        assert_eq!(ContactId::parse(""), Err(ContactIdError::Length(0)));
        assert!(ContactId::parse("#1234|1130 01 015 ").is_err());
    }

    #[test]
    fn display_and_data_round_trip() {
        let cid = ContactId::parse("#1234|1110 00 129").unwrap();
        assert_eq!(cid.to_string(), "1110 00 129");
        assert_eq!(cid.to_data("1234"), "#1234|1110 00 129");
        assert_eq!(ContactId::parse(&cid.to_data("1234")), Ok(cid));
    }
}
