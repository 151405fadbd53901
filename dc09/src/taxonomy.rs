//! Event taxonomy: Contact ID and SIA codes mapped to a category, a default
//! severity, a description and a restore flag.
//!
//! The mapping is data: two sorted tables searched by binary search. Codes
//! missing from the tables are never dropped; they classify as
//! [`EventCategory::Other`] with [`Severity::Medium`] and `known: false`.
//!
//! Restore semantics differ between the two formats:
//!
//! * Contact ID: the qualifier decides. `1` is a new event, `3` a restore,
//!   `6` a still-present condition (status). For the open/close family
//!   (400-series arm/disarm codes), `1` means opening (disarm) and `3`
//!   closing (arm); neither is a restore. A restore is reported with
//!   severity [`Severity::Info`].
//! * SIA: the code itself decides (e.g. `BA` alarm vs `BR`/`BH` restore,
//!   `OP` opening vs `CL` closing).
//!
//! [`EventCategory`] and [`Severity`] deliberately mirror the Vigil protobuf
//! enums so they can be swapped for the generated types later.

/// Contact ID event qualifier (parsed by [`crate::contact_id`]; kept here
/// so that the taxonomy depends on no parser).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qualifier {
    /// `1`: new event; for open/close codes, an opening (disarm).
    New,
    /// `3`: restore; for open/close codes, a closing (arm).
    Restore,
    /// `6`: previously reported condition still present.
    Status,
}

impl Qualifier {
    /// The wire digit.
    pub fn digit(self) -> char {
        match self {
            Self::New => '1',
            Self::Restore => '3',
            Self::Status => '6',
        }
    }
}

/// Category of an alarm event (mirrors the Vigil protobuf enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventCategory {
    /// Not set.
    Unspecified,
    /// Fire, smoke, heat, sprinkler flow.
    Fire,
    /// Panic button.
    Panic,
    /// Duress code.
    Duress,
    /// Holdup (robbery).
    Holdup,
    /// Medical / personal emergency.
    Medical,
    /// Intrusion.
    Burglary,
    /// Tamper of a device or enclosure.
    Tamper,
    /// Gas, carbon monoxide.
    Gas,
    /// Water, temperature and other environmental conditions.
    Environmental,
    /// Equipment troubles.
    Trouble,
    /// Mains and battery.
    Power,
    /// Communication paths.
    Communication,
    /// Supervisory conditions and lost supervision.
    Supervisory,
    /// Tests.
    Test,
    /// Arming and disarming.
    OpenClose,
    /// Bypass / disable.
    Bypass,
    /// Access control.
    Access,
    /// Panel housekeeping (programming, logs, time).
    System,
    /// Anything else, including unknown codes.
    Other,
}

/// Default severity of an event (mirrors the Vigil protobuf enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Not set.
    Unspecified,
    /// Informational.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical (life safety).
    Critical,
}

/// What the event says about the state of its zone, user or area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A condition started (alarm, trouble, test, ...).
    Activation,
    /// A condition ended.
    Restore,
    /// Disarmed.
    Open,
    /// Armed.
    Close,
    /// A previously reported condition is still present (Contact ID `6`).
    Status,
}

/// Result of classifying one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    /// Category.
    pub category: EventCategory,
    /// Default severity.
    pub severity: Severity,
    /// Short English description of the code.
    pub description: &'static str,
    /// True when the event ends a condition.
    pub restore: bool,
    /// Finer state change (restore, open, close, ...).
    pub transition: Transition,
    /// False when the code is not in the table.
    pub known: bool,
}

/// Description used for codes missing from the tables.
const UNKNOWN_DESCRIPTION: &str = "Unknown event code";

/// Classification of a code missing from the tables.
const UNKNOWN: Classification = Classification {
    category: EventCategory::Other,
    severity: Severity::Medium,
    description: UNKNOWN_DESCRIPTION,
    restore: false,
    transition: Transition::Activation,
    known: false,
};

/// Classifies a Contact ID event code with the given qualifier.
pub fn classify_contact_id_code(event: u16, qualifier: Qualifier) -> Classification {
    let entry = CONTACT_ID
        .binary_search_by_key(&event, |e| e.code)
        .ok()
        .and_then(|i| CONTACT_ID.get(i));
    let (base, open_close) = match entry {
        Some(e) => (
            Classification {
                category: e.category,
                severity: e.severity,
                description: e.description,
                restore: false,
                transition: Transition::Activation,
                known: true,
            },
            e.open_close,
        ),
        None => (UNKNOWN, false),
    };
    match (qualifier, open_close) {
        (Qualifier::New, false) => base,
        (Qualifier::New, true) => Classification {
            transition: Transition::Open,
            ..base
        },
        (Qualifier::Restore, true) => Classification {
            transition: Transition::Close,
            ..base
        },
        (Qualifier::Restore, false) => Classification {
            restore: true,
            transition: Transition::Restore,
            severity: Severity::Info,
            ..base
        },
        (Qualifier::Status, _) => Classification {
            transition: Transition::Status,
            ..base
        },
    }
}

/// Classifies a two-letter SIA event code (case-sensitive, upper case).
pub fn classify_sia(code: &str) -> Classification {
    let Ok(key) = <[u8; 2]>::try_from(code.as_bytes()) else {
        return UNKNOWN;
    };
    match SIA.binary_search_by_key(&key, |e| e.code) {
        Ok(i) => SIA.get(i).map_or(UNKNOWN, |e| Classification {
            category: e.category,
            severity: e.severity,
            description: e.description,
            restore: e.transition == Transition::Restore,
            transition: e.transition,
            known: true,
        }),
        Err(_) => UNKNOWN,
    }
}

/// One Contact ID table row.
struct CidEntry {
    code: u16,
    category: EventCategory,
    severity: Severity,
    /// Qualifier 1/3 means open/close rather than event/restore.
    open_close: bool,
    description: &'static str,
}

const fn cid(
    code: u16,
    category: EventCategory,
    severity: Severity,
    description: &'static str,
) -> CidEntry {
    CidEntry {
        code,
        category,
        severity,
        open_close: false,
        description,
    }
}

/// An arm/disarm code: qualifier 1 = opening, 3 = closing.
const fn arm(code: u16, description: &'static str) -> CidEntry {
    CidEntry {
        code,
        category: EventCategory::OpenClose,
        severity: Severity::Info,
        open_close: true,
        description,
    }
}

use EventCategory as C;
use Severity as S;

/// Contact ID event codes, sorted by code.
static CONTACT_ID: &[CidEntry] = &[
    // 100-199: alarms
    cid(100, C::Medical, S::Critical, "Medical emergency"),
    cid(101, C::Medical, S::Critical, "Personal emergency"),
    cid(102, C::Medical, S::High, "Fail to report in"),
    cid(110, C::Fire, S::Critical, "Fire alarm"),
    cid(111, C::Fire, S::Critical, "Smoke detector alarm"),
    cid(112, C::Fire, S::Critical, "Combustion alarm"),
    cid(113, C::Fire, S::Critical, "Sprinkler water flow"),
    cid(114, C::Fire, S::Critical, "Heat detector alarm"),
    cid(115, C::Fire, S::Critical, "Manual pull station"),
    cid(116, C::Fire, S::Critical, "Duct detector alarm"),
    cid(117, C::Fire, S::Critical, "Flame detector alarm"),
    cid(118, C::Fire, S::High, "Fire near alarm"),
    cid(120, C::Panic, S::Critical, "Panic alarm"),
    cid(121, C::Duress, S::Critical, "Duress"),
    cid(122, C::Holdup, S::Critical, "Silent panic / holdup"),
    cid(123, C::Panic, S::Critical, "Audible panic"),
    cid(124, C::Duress, S::Critical, "Duress, access granted"),
    cid(125, C::Duress, S::Critical, "Duress, egress granted"),
    cid(126, C::Holdup, S::High, "Holdup suspicion"),
    cid(129, C::Panic, S::High, "Panic verifier"),
    cid(130, C::Burglary, S::High, "Burglary"),
    cid(131, C::Burglary, S::High, "Perimeter burglary"),
    cid(132, C::Burglary, S::High, "Interior burglary"),
    cid(133, C::Burglary, S::High, "24-hour burglary (safe)"),
    cid(134, C::Burglary, S::High, "Entry/exit burglary"),
    cid(135, C::Burglary, S::High, "Day/night burglary"),
    cid(136, C::Burglary, S::High, "Outdoor burglary"),
    cid(137, C::Tamper, S::High, "Tamper"),
    cid(138, C::Burglary, S::Medium, "Burglary near alarm"),
    cid(139, C::Burglary, S::Critical, "Intrusion verified"),
    cid(140, C::Burglary, S::High, "General alarm"),
    cid(141, C::Trouble, S::Medium, "Polling loop open (alarm)"),
    cid(142, C::Trouble, S::Medium, "Polling loop short (alarm)"),
    cid(
        143,
        C::Trouble,
        S::Medium,
        "Expansion module failure (alarm)",
    ),
    cid(144, C::Tamper, S::High, "Sensor tamper"),
    cid(145, C::Tamper, S::High, "Expansion module tamper"),
    cid(146, C::Burglary, S::High, "Silent burglary"),
    cid(147, C::Supervisory, S::Medium, "Sensor supervision failure"),
    cid(150, C::Environmental, S::Medium, "24-hour non-burglary"),
    cid(151, C::Gas, S::Critical, "Gas detected"),
    cid(152, C::Environmental, S::Medium, "Refrigeration"),
    cid(153, C::Environmental, S::Medium, "Loss of heat"),
    cid(154, C::Environmental, S::Medium, "Water leakage"),
    cid(155, C::Burglary, S::Medium, "Foil break"),
    cid(156, C::Trouble, S::Low, "Day trouble"),
    cid(157, C::Gas, S::Medium, "Low bottled gas level"),
    cid(158, C::Environmental, S::Medium, "High temperature"),
    cid(159, C::Environmental, S::Medium, "Low temperature"),
    cid(161, C::Environmental, S::Medium, "Loss of air flow"),
    cid(162, C::Gas, S::Critical, "Carbon monoxide detected"),
    cid(163, C::Environmental, S::Medium, "Tank level"),
    // 200-299: fire supervisory
    cid(200, C::Supervisory, S::Medium, "Fire supervisory"),
    cid(201, C::Supervisory, S::Medium, "Low water pressure"),
    cid(202, C::Supervisory, S::Medium, "Low CO2"),
    cid(203, C::Supervisory, S::Medium, "Gate valve sensor"),
    cid(204, C::Supervisory, S::Medium, "Low water level"),
    cid(205, C::Supervisory, S::Medium, "Pump activated"),
    cid(206, C::Supervisory, S::High, "Pump failure"),
    // 300-399: troubles
    cid(300, C::Trouble, S::Medium, "System trouble"),
    cid(301, C::Power, S::Medium, "AC power loss"),
    cid(302, C::Power, S::Low, "Low system battery"),
    cid(303, C::Trouble, S::Medium, "RAM checksum bad"),
    cid(304, C::Trouble, S::Medium, "ROM checksum bad"),
    cid(305, C::System, S::Low, "System reset"),
    cid(306, C::System, S::Info, "Panel programming changed"),
    cid(307, C::Trouble, S::Medium, "Self-test failure"),
    cid(308, C::System, S::Medium, "System shutdown"),
    cid(309, C::Power, S::Low, "Battery test failure"),
    cid(310, C::Trouble, S::Medium, "Ground fault"),
    cid(311, C::Power, S::Medium, "Battery missing or dead"),
    cid(312, C::Power, S::Medium, "Power supply overcurrent"),
    cid(313, C::System, S::Info, "Engineer reset"),
    cid(320, C::Trouble, S::Medium, "Sounder/relay trouble"),
    cid(321, C::Trouble, S::Medium, "Bell 1 trouble"),
    cid(322, C::Trouble, S::Medium, "Bell 2 trouble"),
    cid(323, C::Trouble, S::Medium, "Alarm relay trouble"),
    cid(324, C::Trouble, S::Low, "Trouble relay trouble"),
    cid(325, C::Trouble, S::Low, "Reversing relay trouble"),
    cid(326, C::Trouble, S::Medium, "Notification circuit 3 trouble"),
    cid(327, C::Trouble, S::Medium, "Notification circuit 4 trouble"),
    cid(330, C::Trouble, S::Medium, "System peripheral trouble"),
    cid(331, C::Trouble, S::Medium, "Polling loop open"),
    cid(332, C::Trouble, S::Medium, "Polling loop short"),
    cid(333, C::Trouble, S::Medium, "Expansion module failure"),
    cid(334, C::Trouble, S::Medium, "Repeater failure"),
    cid(335, C::Trouble, S::Low, "Local printer out of paper"),
    cid(336, C::Trouble, S::Low, "Local printer failure"),
    cid(337, C::Power, S::Medium, "Expansion module DC loss"),
    cid(338, C::Power, S::Low, "Expansion module low battery"),
    cid(339, C::Trouble, S::Low, "Expansion module reset"),
    cid(341, C::Tamper, S::High, "Expansion module tamper"),
    cid(342, C::Power, S::Medium, "Expansion module AC loss"),
    cid(
        343,
        C::Trouble,
        S::Medium,
        "Expansion module self-test failure",
    ),
    cid(
        344,
        C::Communication,
        S::High,
        "RF receiver jamming detected",
    ),
    cid(350, C::Communication, S::High, "Communication trouble"),
    cid(351, C::Communication, S::Medium, "Telco line 1 fault"),
    cid(352, C::Communication, S::Medium, "Telco line 2 fault"),
    cid(353, C::Communication, S::Medium, "Long range radio fault"),
    cid(
        354,
        C::Communication,
        S::Medium,
        "Failure to communicate event",
    ),
    cid(
        355,
        C::Communication,
        S::Medium,
        "Loss of radio supervision",
    ),
    cid(356, C::Communication, S::Medium, "Loss of central polling"),
    cid(
        357,
        C::Communication,
        S::Medium,
        "Long range radio VSWR problem",
    ),
    cid(370, C::Trouble, S::Medium, "Protection loop trouble"),
    cid(371, C::Trouble, S::Medium, "Protection loop open"),
    cid(372, C::Trouble, S::Medium, "Protection loop short"),
    cid(373, C::Trouble, S::High, "Fire trouble"),
    cid(374, C::Burglary, S::Medium, "Exit error alarm (zone)"),
    cid(375, C::Trouble, S::Medium, "Panic zone trouble"),
    cid(376, C::Trouble, S::Medium, "Holdup zone trouble"),
    cid(377, C::Trouble, S::Low, "Swinger trouble"),
    cid(378, C::Trouble, S::Low, "Cross-zone trouble"),
    cid(380, C::Trouble, S::Medium, "Sensor trouble"),
    cid(381, C::Supervisory, S::Medium, "Loss of supervision (RF)"),
    cid(382, C::Supervisory, S::Medium, "Loss of supervision (RPM)"),
    cid(383, C::Tamper, S::High, "Sensor tamper"),
    cid(384, C::Power, S::Low, "RF transmitter low battery"),
    cid(385, C::Trouble, S::Low, "Smoke detector high sensitivity"),
    cid(386, C::Trouble, S::Low, "Smoke detector low sensitivity"),
    cid(
        387,
        C::Trouble,
        S::Low,
        "Intrusion detector high sensitivity",
    ),
    cid(
        388,
        C::Trouble,
        S::Low,
        "Intrusion detector low sensitivity",
    ),
    cid(389, C::Trouble, S::Medium, "Sensor self-test failure"),
    cid(391, C::Trouble, S::Low, "Sensor watch trouble"),
    cid(392, C::Trouble, S::Low, "Drift compensation error"),
    cid(393, C::Trouble, S::Low, "Maintenance alert"),
    // 400-499: open/close, remote access, access control
    arm(400, "Open/close"),
    arm(401, "Open/close by user"),
    arm(402, "Group open/close"),
    arm(403, "Automatic open/close"),
    cid(404, C::OpenClose, S::Low, "Late to open/close"),
    arm(405, "Deferred open/close"),
    cid(406, C::OpenClose, S::Info, "Cancel"),
    arm(407, "Remote arm/disarm"),
    arm(408, "Quick arm"),
    arm(409, "Keyswitch open/close"),
    cid(411, C::System, S::Info, "Callback request made"),
    cid(412, C::System, S::Info, "Successful download/access"),
    cid(413, C::System, S::Low, "Unsuccessful access"),
    cid(
        414,
        C::System,
        S::Medium,
        "System shutdown command received",
    ),
    cid(
        415,
        C::System,
        S::Medium,
        "Dialer shutdown command received",
    ),
    cid(416, C::System, S::Info, "Successful upload"),
    cid(421, C::Access, S::Low, "Access denied"),
    cid(422, C::Access, S::Info, "Access report by user"),
    cid(423, C::Access, S::High, "Forced access"),
    cid(424, C::Access, S::Low, "Egress denied"),
    cid(425, C::Access, S::Info, "Egress granted"),
    cid(426, C::Access, S::Low, "Access door propped open"),
    cid(427, C::Access, S::Low, "Door status monitor trouble"),
    cid(428, C::Access, S::Low, "Request-to-exit trouble"),
    cid(429, C::Access, S::Info, "Access program mode entry"),
    cid(430, C::Access, S::Info, "Access program mode exit"),
    cid(431, C::Access, S::Low, "Access threat level change"),
    cid(432, C::Access, S::Low, "Access relay/trigger failure"),
    cid(433, C::Access, S::Info, "Request-to-exit shunt"),
    cid(434, C::Access, S::Info, "Door status monitor shunt"),
    arm(441, "Armed stay"),
    arm(442, "Keyswitch armed stay"),
    arm(450, "Exception open/close"),
    arm(451, "Early open/close"),
    arm(452, "Late open/close"),
    cid(453, C::OpenClose, S::Medium, "Failed to open"),
    cid(454, C::OpenClose, S::Medium, "Failed to close"),
    cid(455, C::OpenClose, S::Medium, "Auto-arm failed"),
    arm(456, "Partial arm"),
    cid(457, C::OpenClose, S::Low, "Exit error (user)"),
    cid(458, C::OpenClose, S::Info, "User on premises"),
    cid(459, C::OpenClose, S::Medium, "Recent close"),
    cid(461, C::Access, S::Medium, "Wrong code entry"),
    cid(462, C::Access, S::Info, "Legal code entry"),
    cid(463, C::OpenClose, S::Info, "Re-arm after alarm"),
    cid(464, C::OpenClose, S::Info, "Auto-arm time extended"),
    cid(465, C::Panic, S::Info, "Panic alarm reset"),
    cid(466, C::System, S::Info, "Service on/off premises"),
    // 500-599: bypasses and disables
    cid(501, C::Access, S::Low, "Access reader disabled"),
    cid(520, C::Bypass, S::Low, "Sounder/relay disabled"),
    cid(521, C::Bypass, S::Low, "Bell 1 disabled"),
    cid(522, C::Bypass, S::Low, "Bell 2 disabled"),
    cid(523, C::Bypass, S::Low, "Alarm relay disabled"),
    cid(524, C::Bypass, S::Low, "Trouble relay disabled"),
    cid(525, C::Bypass, S::Low, "Reversing relay disabled"),
    cid(526, C::Bypass, S::Low, "Notification circuit 3 disabled"),
    cid(527, C::Bypass, S::Low, "Notification circuit 4 disabled"),
    cid(531, C::System, S::Info, "Module added"),
    cid(532, C::System, S::Low, "Module removed"),
    cid(551, C::Bypass, S::Medium, "Dialer disabled"),
    cid(552, C::Bypass, S::Medium, "Radio transmitter disabled"),
    cid(553, C::Bypass, S::Low, "Remote upload/download disabled"),
    cid(570, C::Bypass, S::Low, "Zone/sensor bypass"),
    cid(571, C::Bypass, S::Medium, "Fire bypass"),
    cid(572, C::Bypass, S::Low, "24-hour zone bypass"),
    cid(573, C::Bypass, S::Low, "Burglary bypass"),
    cid(574, C::Bypass, S::Low, "Group bypass"),
    cid(575, C::Bypass, S::Low, "Swinger bypass"),
    cid(576, C::Bypass, S::Low, "Access zone shunt"),
    cid(577, C::Bypass, S::Low, "Access point bypass"),
    // 600-699: tests and miscellaneous
    cid(601, C::Test, S::Info, "Manual trigger test"),
    cid(602, C::Test, S::Info, "Periodic test"),
    cid(603, C::Test, S::Info, "Periodic RF transmission"),
    cid(604, C::Test, S::Info, "Fire test"),
    cid(605, C::Test, S::Info, "Status report to follow"),
    cid(606, C::System, S::Info, "Listen-in to follow"),
    cid(607, C::Test, S::Info, "Walk test mode"),
    cid(
        608,
        C::Test,
        S::Low,
        "Periodic test, system trouble present",
    ),
    cid(609, C::System, S::Info, "Video transmitter active"),
    cid(611, C::Test, S::Info, "Point tested OK"),
    cid(612, C::Test, S::Low, "Point not tested"),
    cid(613, C::Test, S::Info, "Intrusion zone walk tested"),
    cid(614, C::Test, S::Info, "Fire zone walk tested"),
    cid(615, C::Test, S::Info, "Panic zone walk tested"),
    cid(616, C::System, S::Low, "Service request"),
    cid(621, C::System, S::Info, "Event log reset"),
    cid(622, C::System, S::Info, "Event log 50% full"),
    cid(623, C::System, S::Low, "Event log 90% full"),
    cid(624, C::System, S::Low, "Event log overflow"),
    cid(625, C::System, S::Info, "Time/date reset"),
    cid(626, C::System, S::Low, "Time/date inaccurate"),
    cid(627, C::System, S::Info, "Program mode entry"),
    cid(628, C::System, S::Info, "Program mode exit"),
    cid(629, C::System, S::Info, "32-hour event log marker"),
    cid(630, C::System, S::Info, "Schedule change"),
    cid(631, C::System, S::Info, "Exception schedule change"),
    cid(632, C::System, S::Info, "Access schedule change"),
    cid(641, C::Other, S::Medium, "Senior watch trouble"),
    cid(642, C::Other, S::Medium, "Latch-key supervision"),
    cid(654, C::Other, S::Medium, "System inactivity"),
    // 900s: common manufacturer extensions
    cid(900, C::System, S::Low, "Download abort"),
    cid(901, C::System, S::Info, "Download start/end"),
    cid(902, C::System, S::Low, "Download interrupted"),
    cid(910, C::OpenClose, S::Info, "Auto-close with bypass"),
    cid(911, C::OpenClose, S::Info, "Bypass closing"),
    cid(912, C::Fire, S::Info, "Fire alarm silenced"),
    cid(913, C::Test, S::Info, "Supervisory point test start/end"),
    cid(914, C::Test, S::Info, "Holdup test start/end"),
    cid(915, C::Test, S::Info, "Burglary test print start/end"),
    cid(916, C::Test, S::Info, "Supervisory test print start/end"),
    cid(917, C::Test, S::Info, "Burglary diagnostics start/end"),
    cid(918, C::Test, S::Info, "Fire diagnostics start/end"),
    cid(919, C::Test, S::Info, "Untyped diagnostics"),
    cid(920, C::OpenClose, S::Low, "Trouble closing"),
    cid(921, C::Access, S::Low, "Access denied, code unknown"),
    cid(922, C::Supervisory, S::Medium, "Supervisory point alarm"),
    cid(923, C::Bypass, S::Low, "Supervisory point bypass"),
    cid(924, C::Trouble, S::Medium, "Supervisory point trouble"),
    cid(925, C::Bypass, S::Low, "Holdup point bypass"),
    cid(926, C::Power, S::High, "AC failure for 4 hours"),
    cid(927, C::Trouble, S::Medium, "Output trouble"),
    cid(928, C::System, S::Info, "User code for event"),
    cid(929, C::System, S::Info, "Log-off"),
];

/// One SIA table row.
struct SiaEntry {
    code: [u8; 2],
    category: EventCategory,
    severity: Severity,
    transition: Transition,
    description: &'static str,
}

/// A condition starts.
const fn ev(
    code: &[u8; 2],
    category: EventCategory,
    severity: Severity,
    description: &'static str,
) -> SiaEntry {
    SiaEntry {
        code: *code,
        category,
        severity,
        transition: Transition::Activation,
        description,
    }
}

/// A condition ends (always informational).
const fn rs(code: &[u8; 2], category: EventCategory, description: &'static str) -> SiaEntry {
    SiaEntry {
        code: *code,
        category,
        severity: Severity::Info,
        transition: Transition::Restore,
        description,
    }
}

/// Disarm.
const fn op(code: &[u8; 2], severity: Severity, description: &'static str) -> SiaEntry {
    SiaEntry {
        code: *code,
        category: EventCategory::OpenClose,
        severity,
        transition: Transition::Open,
        description,
    }
}

/// Arm.
const fn cl(code: &[u8; 2], description: &'static str) -> SiaEntry {
    SiaEntry {
        code: *code,
        category: EventCategory::OpenClose,
        severity: Severity::Info,
        transition: Transition::Close,
        description,
    }
}

/// SIA event codes, sorted by code.
static SIA: &[SiaEntry] = &[
    ev(
        b"AA",
        C::Tamper,
        S::High,
        "Alarm panel substitution attempt",
    ),
    ev(b"AB", C::System, S::Info, "Event report aborted by user"),
    rs(b"AN", C::Trouble, "Analog sensor restored"),
    rs(b"AR", C::Power, "AC power restored"),
    ev(b"AS", C::Trouble, S::Low, "Analog sensor needs service"),
    ev(b"AT", C::Power, S::Medium, "AC power failure"),
    ev(b"BA", C::Burglary, S::High, "Burglary alarm"),
    ev(b"BB", C::Bypass, S::Low, "Burglary zone bypassed"),
    ev(
        b"BC",
        C::Burglary,
        S::Info,
        "Burglary alarm cancelled by user",
    ),
    ev(b"BD", C::Trouble, S::Low, "Burglary swinger trouble"),
    rs(b"BE", C::Trouble, "Burglary swinger trouble restored"),
    ev(b"BG", C::Burglary, S::Medium, "Unverified burglary event"),
    rs(b"BH", C::Burglary, "Burglary alarm restored"),
    rs(b"BJ", C::Trouble, "Burglary trouble restored"),
    ev(
        b"BM",
        C::Burglary,
        S::Critical,
        "Burglary alarm verified by cross point",
    ),
    rs(b"BR", C::Burglary, "Burglary alarm/trouble restored"),
    ev(b"BS", C::Supervisory, S::Medium, "Burglary supervisory"),
    ev(b"BT", C::Trouble, S::Medium, "Burglary zone trouble"),
    rs(b"BU", C::Bypass, "Burglary zone unbypassed"),
    ev(b"BV", C::Burglary, S::Critical, "Burglary verified"),
    ev(b"BX", C::Test, S::Info, "Burglary zone test"),
    ev(b"BZ", C::Supervisory, S::Medium, "Missing supervision"),
    cl(b"CA", "Automatic closing"),
    ev(b"CD", C::OpenClose, S::Low, "Closing delinquent"),
    ev(b"CE", C::OpenClose, S::Info, "Closing time extended"),
    cl(b"CF", "Forced closing (zones not ready)"),
    cl(b"CG", "Area closed (partial arm)"),
    ev(b"CI", C::OpenClose, S::Medium, "Fail to close"),
    cl(b"CJ", "Late close"),
    cl(b"CK", "Early close"),
    cl(b"CL", "Closing (armed)"),
    ev(
        b"CM",
        C::Burglary,
        S::High,
        "Missing alarm after recent closing",
    ),
    cl(b"CP", "Automatic closing"),
    cl(b"CQ", "Remote closing"),
    ev(b"CR", C::Burglary, S::Medium, "Alarm shortly after closing"),
    cl(b"CS", "Closing by keyswitch"),
    ev(b"CT", C::OpenClose, S::Low, "Late to open"),
    cl(b"CW", "Was force armed"),
    ev(b"CX", C::System, S::Info, "Custom function executed"),
    cl(b"CZ", "Point closing"),
    ev(b"DA", C::Access, S::Info, "Card assigned"),
    ev(b"DB", C::Access, S::Info, "Card deleted"),
    ev(b"DC", C::Access, S::Info, "Access closed"),
    ev(b"DD", C::Access, S::Low, "Access denied"),
    ev(b"DE", C::Access, S::Info, "Request to enter"),
    ev(b"DF", C::Access, S::High, "Door forced"),
    ev(b"DG", C::Access, S::Info, "Access granted"),
    rs(b"DH", C::Access, "Door left open restored"),
    ev(b"DI", C::Access, S::Low, "Access denied (passback)"),
    ev(b"DJ", C::Access, S::Medium, "Door forced (trouble)"),
    ev(b"DK", C::Access, S::Medium, "Access lockout"),
    ev(b"DL", C::Access, S::Medium, "Door left open (alarm)"),
    ev(b"DM", C::Access, S::Low, "Door left open (trouble)"),
    ev(b"DN", C::Access, S::Low, "Door left open"),
    ev(b"DO", C::Access, S::Info, "Access open"),
    ev(
        b"DP",
        C::Access,
        S::Low,
        "Access denied (unauthorised time)",
    ),
    ev(b"DQ", C::Access, S::Low, "Access denied (arming state)"),
    rs(b"DR", C::Access, "Door restored"),
    ev(b"DS", C::Access, S::Info, "Door station"),
    ev(b"DT", C::Access, S::Low, "Access system trouble"),
    ev(b"DU", C::System, S::Info, "Dealer ID"),
    ev(b"DV", C::Access, S::Low, "Access denied (entry level)"),
    ev(b"DW", C::Access, S::Low, "Access denied (interlock)"),
    ev(b"DX", C::Access, S::Info, "Request to exit"),
    ev(b"DY", C::Access, S::Info, "Door locked"),
    ev(b"DZ", C::Access, S::Low, "Access denied (door secured)"),
    ev(b"EA", C::Burglary, S::High, "Exit alarm"),
    ev(b"EE", C::Burglary, S::Medium, "Exit error"),
    rs(b"EJ", C::Tamper, "Expansion device tamper restored"),
    ev(b"EM", C::Supervisory, S::Medium, "Expansion device missing"),
    rs(b"EN", C::Supervisory, "Expansion device missing restored"),
    rs(b"ER", C::Trouble, "Expansion device trouble restored"),
    ev(b"ES", C::Tamper, S::High, "Expansion device tamper"),
    ev(b"ET", C::Trouble, S::Medium, "Expansion device trouble"),
    ev(b"EX", C::Other, S::Medium, "External device condition"),
    ev(b"EZ", C::Burglary, S::Medium, "Missing alarm at exit error"),
    ev(b"FA", C::Fire, S::Critical, "Fire alarm"),
    ev(b"FB", C::Bypass, S::Medium, "Fire zone bypassed"),
    ev(b"FC", C::Fire, S::Info, "Fire alarm cancelled"),
    ev(b"FG", C::Fire, S::High, "Unverified fire event"),
    rs(b"FH", C::Fire, "Fire alarm restored"),
    ev(b"FI", C::Test, S::Info, "Fire test begin"),
    rs(b"FJ", C::Trouble, "Fire trouble restored"),
    ev(b"FK", C::Test, S::Info, "Fire test end"),
    ev(b"FL", C::Fire, S::Low, "Fire alarm silenced"),
    ev(
        b"FM",
        C::Fire,
        S::Critical,
        "Fire alarm verified by cross point",
    ),
    rs(b"FQ", C::Supervisory, "Fire supervisory trouble restored"),
    rs(b"FR", C::Fire, "Fire alarm/trouble restored"),
    ev(b"FS", C::Supervisory, S::Medium, "Fire supervisory"),
    ev(b"FT", C::Trouble, S::Medium, "Fire trouble"),
    rs(b"FU", C::Bypass, "Fire zone unbypassed"),
    rs(b"FV", C::Supervisory, "Fire supervision restored"),
    ev(b"FW", C::Supervisory, S::Medium, "Fire supervisory trouble"),
    ev(b"FX", C::Test, S::Info, "Fire zone test"),
    ev(b"FY", C::Trouble, S::Medium, "Missing fire point"),
    ev(b"FZ", C::Supervisory, S::Medium, "Missing fire supervision"),
    ev(b"GA", C::Gas, S::Critical, "Gas alarm"),
    ev(b"GB", C::Bypass, S::Low, "Gas zone bypassed"),
    rs(b"GH", C::Gas, "Gas alarm restored"),
    rs(b"GJ", C::Trouble, "Gas trouble restored"),
    rs(b"GR", C::Gas, "Gas alarm/trouble restored"),
    ev(b"GS", C::Supervisory, S::Medium, "Gas supervisory"),
    ev(b"GT", C::Trouble, S::Medium, "Gas trouble"),
    rs(b"GU", C::Bypass, "Gas zone unbypassed"),
    ev(b"GX", C::Test, S::Info, "Gas zone test"),
    ev(b"HA", C::Holdup, S::Critical, "Holdup alarm"),
    ev(b"HB", C::Bypass, S::Low, "Holdup zone bypassed"),
    rs(b"HH", C::Holdup, "Holdup alarm restored"),
    rs(b"HJ", C::Trouble, "Holdup trouble restored"),
    rs(b"HR", C::Holdup, "Holdup alarm/trouble restored"),
    ev(b"HS", C::Supervisory, S::Medium, "Holdup supervisory"),
    ev(b"HT", C::Trouble, S::Medium, "Holdup trouble"),
    rs(b"HU", C::Bypass, "Holdup zone unbypassed"),
    ev(b"IA", C::Trouble, S::Medium, "Equipment failure"),
    rs(b"IR", C::Trouble, "Equipment failure restored"),
    ev(
        b"JA",
        C::Tamper,
        S::High,
        "User code tamper (too many attempts)",
    ),
    ev(b"JD", C::System, S::Info, "Date changed"),
    ev(b"JH", C::System, S::Info, "Holiday schedule changed"),
    ev(b"JK", C::Other, S::Medium, "Latchkey alert"),
    ev(b"JL", C::System, S::Low, "Event log threshold reached"),
    ev(b"JO", C::System, S::Low, "Event log overflow"),
    ev(b"JP", C::Access, S::Info, "User on premises"),
    ev(b"JR", C::System, S::Info, "Scheduled event executed"),
    ev(b"JS", C::System, S::Info, "Schedule changed"),
    ev(b"JT", C::System, S::Info, "Time changed"),
    ev(b"JV", C::System, S::Info, "User code changed"),
    ev(b"JX", C::System, S::Info, "User code deleted"),
    ev(b"JY", C::System, S::Info, "User code added"),
    ev(b"JZ", C::System, S::Info, "User level set"),
    ev(b"KA", C::Fire, S::High, "Heat alarm"),
    ev(b"KB", C::Bypass, S::Low, "Heat zone bypassed"),
    rs(b"KH", C::Fire, "Heat alarm restored"),
    rs(b"KJ", C::Trouble, "Heat trouble restored"),
    rs(b"KR", C::Fire, "Heat alarm/trouble restored"),
    ev(b"KS", C::Supervisory, S::Medium, "Heat supervisory"),
    ev(b"KT", C::Trouble, S::Medium, "Heat trouble"),
    rs(b"KU", C::Bypass, "Heat zone unbypassed"),
    ev(b"LB", C::System, S::Info, "Local programming begin"),
    ev(b"LD", C::System, S::Low, "Local programming denied"),
    ev(b"LE", C::System, S::Info, "Listen-in ended"),
    ev(b"LF", C::System, S::Info, "Listen-in begin"),
    rs(b"LR", C::Communication, "Phone line restored"),
    ev(b"LS", C::System, S::Info, "Local programming successful"),
    ev(b"LT", C::Communication, S::Medium, "Phone line trouble"),
    ev(b"LU", C::System, S::Low, "Local programming failed"),
    ev(b"LX", C::System, S::Info, "Local programming ended"),
    ev(b"MA", C::Medical, S::Critical, "Medical alarm"),
    ev(b"MB", C::Bypass, S::Low, "Medical zone bypassed"),
    rs(b"MH", C::Medical, "Medical alarm restored"),
    rs(b"MJ", C::Trouble, "Medical trouble restored"),
    rs(b"MR", C::Medical, "Medical alarm/trouble restored"),
    ev(b"MS", C::Supervisory, S::Medium, "Medical supervisory"),
    ev(b"MT", C::Trouble, S::Medium, "Medical trouble"),
    rs(b"MU", C::Bypass, "Medical zone unbypassed"),
    ev(b"NA", C::Other, S::Medium, "No activity"),
    ev(b"NC", C::Communication, S::Low, "Network condition"),
    cl(b"NF", "Forced perimeter arm"),
    cl(b"NL", "Perimeter armed"),
    cl(b"NM", "Perimeter armed (user defined area)"),
    rs(b"NR", C::Communication, "Network restored"),
    rs(b"NS", C::Other, "Activity resumed"),
    ev(b"NT", C::Communication, S::Medium, "Network failure"),
    op(b"OA", S::Info, "Automatic opening"),
    ev(b"OC", C::OpenClose, S::Info, "Cancel report"),
    op(b"OG", S::Info, "Area opened (partial disarm)"),
    op(b"OH", S::Medium, "Early to open from alarm"),
    ev(b"OI", C::OpenClose, S::Medium, "Fail to open"),
    op(b"OJ", S::Info, "Late open"),
    op(b"OK", S::Info, "Early open"),
    op(b"OL", S::Medium, "Late to open from alarm"),
    op(b"OP", S::Info, "Opening (disarmed)"),
    op(b"OQ", S::Info, "Remote opening"),
    op(b"OR", S::Medium, "Disarmed from alarm"),
    op(b"OS", S::Info, "Opening by keyswitch"),
    ev(b"OT", C::OpenClose, S::Low, "Late to close"),
    ev(b"OU", C::Trouble, S::Medium, "Output trouble"),
    rs(b"OV", C::Trouble, "Output restored"),
    op(b"OZ", S::Info, "Point opening"),
    ev(b"PA", C::Panic, S::Critical, "Panic alarm"),
    ev(b"PB", C::Bypass, S::Low, "Panic zone bypassed"),
    rs(b"PH", C::Panic, "Panic alarm restored"),
    rs(b"PJ", C::Trouble, "Panic trouble restored"),
    rs(b"PR", C::Panic, "Panic alarm/trouble restored"),
    ev(b"PS", C::Supervisory, S::Medium, "Panic supervisory"),
    ev(b"PT", C::Trouble, S::Medium, "Panic trouble"),
    rs(b"PU", C::Bypass, "Panic zone unbypassed"),
    ev(b"QA", C::Medical, S::Critical, "Emergency alarm"),
    ev(b"QB", C::Bypass, S::Low, "Emergency zone bypassed"),
    rs(b"QH", C::Medical, "Emergency alarm restored"),
    rs(b"QJ", C::Trouble, "Emergency trouble restored"),
    rs(b"QR", C::Medical, "Emergency alarm/trouble restored"),
    ev(b"QS", C::Supervisory, S::Medium, "Emergency supervisory"),
    ev(b"QT", C::Trouble, S::Medium, "Emergency trouble"),
    rs(b"QU", C::Bypass, "Emergency zone unbypassed"),
    ev(
        b"RA",
        C::Communication,
        S::Low,
        "Remote programmer call failed",
    ),
    ev(b"RB", C::System, S::Info, "Remote programming begin"),
    ev(b"RC", C::System, S::Info, "Relay closed"),
    ev(b"RD", C::System, S::Low, "Remote programming denied"),
    ev(b"RN", C::System, S::Low, "Remote reset"),
    ev(b"RO", C::System, S::Info, "Relay opened"),
    ev(b"RP", C::Test, S::Info, "Automatic test"),
    rs(b"RR", C::Power, "Power up after power loss"),
    ev(b"RS", C::System, S::Info, "Remote programming successful"),
    ev(b"RT", C::Communication, S::Low, "Data lost"),
    ev(b"RU", C::System, S::Low, "Remote programming failed"),
    ev(b"RX", C::Test, S::Info, "Manual test"),
    ev(b"RY", C::Test, S::Low, "Test with abnormal condition"),
    ev(b"SA", C::Fire, S::Critical, "Sprinkler alarm (flow)"),
    ev(b"SB", C::Bypass, S::Medium, "Sprinkler zone bypassed"),
    ev(b"SC", C::System, S::Info, "Change of state"),
    rs(b"SH", C::Fire, "Sprinkler alarm restored"),
    rs(b"SJ", C::Trouble, "Sprinkler trouble restored"),
    rs(b"SR", C::Fire, "Sprinkler alarm/trouble restored"),
    ev(b"SS", C::Supervisory, S::Medium, "Sprinkler supervisory"),
    ev(b"ST", C::Trouble, S::Medium, "Sprinkler trouble"),
    rs(b"SU", C::Bypass, "Sprinkler zone unbypassed"),
    ev(b"TA", C::Tamper, S::High, "Tamper alarm"),
    ev(b"TB", C::Bypass, S::Low, "Tamper zone bypassed"),
    ev(b"TC", C::Test, S::Info, "All points tested"),
    ev(b"TE", C::Test, S::Info, "Communicator test end"),
    rs(b"TH", C::Tamper, "Tamper alarm restored"),
    rs(b"TJ", C::Tamper, "Tamper trouble restored"),
    ev(b"TP", C::Test, S::Info, "Walk test point"),
    rs(b"TR", C::Tamper, "Tamper restored"),
    ev(b"TS", C::Test, S::Info, "Communicator test start"),
    ev(b"TT", C::Tamper, S::Medium, "Tamper trouble (disarmed)"),
    rs(b"TU", C::Bypass, "Tamper zone unbypassed"),
    ev(b"TW", C::System, S::Info, "Area watch start"),
    ev(b"TX", C::Test, S::Info, "Test report"),
    ev(b"TZ", C::System, S::Info, "Area watch end"),
    ev(b"UA", C::Other, S::High, "Untyped zone alarm"),
    ev(b"UB", C::Bypass, S::Low, "Untyped zone bypassed"),
    ev(b"UG", C::Other, S::Medium, "Unverified untyped event"),
    rs(b"UH", C::Other, "Untyped alarm restored"),
    rs(b"UJ", C::Trouble, "Untyped trouble restored"),
    rs(b"UR", C::Other, "Untyped zone restored"),
    ev(b"US", C::Supervisory, S::Medium, "Untyped zone supervisory"),
    ev(b"UT", C::Trouble, S::Medium, "Untyped zone trouble"),
    rs(b"UU", C::Bypass, "Untyped zone unbypassed"),
    ev(b"UX", C::Other, S::Medium, "Undefined alarm"),
    ev(b"UY", C::Trouble, S::Medium, "Untyped missing trouble"),
    ev(b"UZ", C::Other, S::High, "Untyped missing alarm"),
    rs(b"VI", C::System, "Printer paper in"),
    ev(b"VO", C::System, S::Low, "Printer paper out"),
    rs(b"VR", C::System, "Printer restored"),
    ev(b"VT", C::System, S::Low, "Printer trouble"),
    ev(b"VX", C::Test, S::Info, "Printer test"),
    ev(b"VY", C::System, S::Info, "Printer online"),
    ev(b"VZ", C::System, S::Low, "Printer offline"),
    ev(b"WA", C::Environmental, S::Medium, "Water alarm"),
    ev(b"WB", C::Bypass, S::Low, "Water zone bypassed"),
    rs(b"WH", C::Environmental, "Water alarm restored"),
    rs(b"WJ", C::Trouble, "Water trouble restored"),
    rs(b"WR", C::Environmental, "Water alarm/trouble restored"),
    ev(b"WS", C::Supervisory, S::Medium, "Water supervisory"),
    ev(b"WT", C::Trouble, S::Medium, "Water trouble"),
    rs(b"WU", C::Bypass, "Water zone unbypassed"),
    ev(b"XA", C::Other, S::Low, "Extra account report"),
    ev(b"XE", C::Supervisory, S::Low, "Extra point"),
    ev(b"XF", C::Supervisory, S::Low, "Extra RF point"),
    rs(b"XH", C::Communication, "RF interference restored"),
    ev(b"XI", C::System, S::Info, "Sensor reset"),
    rs(b"XJ", C::Tamper, "RF receiver tamper restored"),
    ev(b"XL", C::Communication, S::Low, "Low RF signal strength"),
    ev(
        b"XM",
        C::Burglary,
        S::High,
        "Missing alarm verified by cross point",
    ),
    ev(b"XQ", C::Communication, S::Medium, "RF interference"),
    rs(b"XR", C::Power, "Transmitter battery restored"),
    ev(b"XS", C::Tamper, S::High, "RF receiver tamper"),
    ev(b"XT", C::Power, S::Low, "Transmitter battery low"),
    ev(b"XW", C::Bypass, S::Low, "Forced point"),
    ev(b"XX", C::Test, S::Medium, "Fail to test"),
    ev(b"YA", C::Trouble, S::Medium, "Bell/siren fault"),
    ev(b"YB", C::System, S::Info, "Busy seconds"),
    ev(b"YC", C::Communication, S::High, "Communication failure"),
    ev(b"YD", C::Trouble, S::Low, "Receiver line card trouble"),
    rs(b"YE", C::Trouble, "Receiver line card restored"),
    ev(b"YF", C::System, S::Medium, "Parameter checksum failure"),
    ev(b"YG", C::System, S::Info, "Parameters changed"),
    rs(b"YH", C::Trouble, "Bell/siren restored"),
    ev(b"YI", C::Power, S::Medium, "Overcurrent trouble"),
    rs(b"YJ", C::Power, "Overcurrent restored"),
    rs(b"YK", C::Communication, "Communication restored"),
    ev(b"YM", C::Power, S::Medium, "System battery missing"),
    ev(b"YN", C::Communication, S::Low, "Invalid report"),
    ev(b"YO", C::Communication, S::Low, "Unknown message"),
    ev(b"YP", C::Power, S::Medium, "Power supply trouble"),
    rs(b"YQ", C::Power, "Power supply restored"),
    rs(b"YR", C::Power, "System battery restored"),
    ev(b"YS", C::Communication, S::Medium, "Communication trouble"),
    ev(b"YT", C::Power, S::Low, "System battery low"),
    ev(b"YU", C::Trouble, S::Low, "Diagnostic error"),
    ev(b"YW", C::System, S::Low, "Watchdog reset"),
    ev(b"YX", C::Trouble, S::Low, "Service required"),
    ev(b"YY", C::System, S::Info, "Status report"),
    rs(b"YZ", C::Trouble, "Service completed"),
    ev(
        b"ZA",
        C::Environmental,
        S::Medium,
        "Freeze alarm (low temperature)",
    ),
    ev(b"ZB", C::Bypass, S::Low, "Freeze zone bypassed"),
    rs(b"ZH", C::Environmental, "Freeze alarm restored"),
    rs(b"ZJ", C::Trouble, "Freeze trouble restored"),
    rs(b"ZR", C::Environmental, "Freeze alarm/trouble restored"),
    ev(b"ZS", C::Supervisory, S::Medium, "Freeze supervisory"),
    ev(b"ZT", C::Trouble, S::Medium, "Freeze trouble"),
    rs(b"ZU", C::Bypass, "Freeze zone unbypassed"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_unique() {
        assert!(CONTACT_ID.windows(2).all(|w| w[0].code < w[1].code));
        assert!(SIA.windows(2).all(|w| w[0].code < w[1].code));
        assert!(
            SIA.iter()
                .all(|e| e.code.iter().all(u8::is_ascii_uppercase))
        );
        assert!(CONTACT_ID.iter().all(|e| e.code <= 999));
    }

    #[test]
    fn tables_cover_every_contact_id_group() {
        for hundred in [100u16, 200, 300, 400, 500, 600, 900] {
            let n = CONTACT_ID
                .iter()
                .filter(|e| e.code / 100 == hundred / 100)
                .count();
            assert!(n >= 5, "only {n} codes in the {hundred}s");
        }
    }

    #[test]
    fn no_table_entry_uses_unspecified() {
        assert!(
            CONTACT_ID
                .iter()
                .all(|e| e.category != C::Unspecified && e.severity != S::Unspecified)
        );
        assert!(
            SIA.iter()
                .all(|e| e.category != C::Unspecified && e.severity != S::Unspecified)
        );
    }

    fn cid_class(code: u16, q: Qualifier) -> Classification {
        classify_contact_id_code(code, q)
    }

    #[test]
    fn contact_id_alarm_and_restore() {
        let c = cid_class(130, Qualifier::New);
        assert_eq!(
            (c.category, c.severity, c.restore, c.known),
            (C::Burglary, S::High, false, true)
        );
        assert_eq!(c.transition, Transition::Activation);
        let r = cid_class(130, Qualifier::Restore);
        assert_eq!(
            (r.category, r.severity, r.restore),
            (C::Burglary, S::Info, true)
        );
        assert_eq!(r.transition, Transition::Restore);
        let s = cid_class(130, Qualifier::Status);
        assert_eq!(
            (s.severity, s.restore, s.transition),
            (S::High, false, Transition::Status)
        );
    }

    #[test]
    fn contact_id_categories() {
        let cases = [
            (100, C::Medical, S::Critical),
            (110, C::Fire, S::Critical),
            (111, C::Fire, S::Critical),
            (120, C::Panic, S::Critical),
            (121, C::Duress, S::Critical),
            (122, C::Holdup, S::Critical),
            (137, C::Tamper, S::High),
            (151, C::Gas, S::Critical),
            (154, C::Environmental, S::Medium),
            (162, C::Gas, S::Critical),
            (200, C::Supervisory, S::Medium),
            (301, C::Power, S::Medium),
            (302, C::Power, S::Low),
            (350, C::Communication, S::High),
            (373, C::Trouble, S::High),
            (383, C::Tamper, S::High),
            (421, C::Access, S::Low),
            (570, C::Bypass, S::Low),
            (602, C::Test, S::Info),
            (625, C::System, S::Info),
        ];
        for (code, cat, sev) in cases {
            let c = cid_class(code, Qualifier::New);
            assert_eq!((c.category, c.severity), (cat, sev), "code {code}");
            assert!(c.known);
        }
    }

    #[test]
    fn contact_id_open_close_uses_qualifier() {
        let open = cid_class(401, Qualifier::New);
        assert_eq!(
            (open.category, open.transition, open.restore),
            (C::OpenClose, Transition::Open, false)
        );
        let close = cid_class(401, Qualifier::Restore);
        assert_eq!(
            (close.transition, close.restore, close.severity),
            (Transition::Close, false, S::Info)
        );
        assert_eq!(
            cid_class(441, Qualifier::Restore).transition,
            Transition::Close
        );
        // Not an arm/disarm code: qualifier 3 is an ordinary restore.
        let failed = cid_class(454, Qualifier::Restore);
        assert_eq!(
            (failed.transition, failed.restore),
            (Transition::Restore, true)
        );
    }

    #[test]
    fn contact_id_unknown_is_other_medium() {
        for code in [0u16, 99, 199, 750, 999] {
            let c = cid_class(code, Qualifier::New);
            assert_eq!(
                (c.category, c.severity, c.known),
                (C::Other, S::Medium, false),
                "{code}"
            );
        }
        let r = cid_class(750, Qualifier::Restore);
        assert_eq!((r.category, r.restore, r.known), (C::Other, true, false));
    }

    #[test]
    fn sia_pairs() {
        let cases = [
            ("BA", C::Burglary, S::High, false),
            ("BR", C::Burglary, S::Info, true),
            ("BH", C::Burglary, S::Info, true),
            ("FA", C::Fire, S::Critical, false),
            ("FR", C::Fire, S::Info, true),
            ("PA", C::Panic, S::Critical, false),
            ("PR", C::Panic, S::Info, true),
            ("HA", C::Holdup, S::Critical, false),
            ("MA", C::Medical, S::Critical, false),
            ("TA", C::Tamper, S::High, false),
            ("TR", C::Tamper, S::Info, true),
            ("AT", C::Power, S::Medium, false),
            ("AR", C::Power, S::Info, true),
            ("YT", C::Power, S::Low, false),
            ("YR", C::Power, S::Info, true),
            ("YC", C::Communication, S::High, false),
            ("YK", C::Communication, S::Info, true),
            ("YS", C::Communication, S::Medium, false),
            ("YM", C::Power, S::Medium, false),
            ("RP", C::Test, S::Info, false),
            ("RX", C::Test, S::Info, false),
            ("BB", C::Bypass, S::Low, false),
            ("BU", C::Bypass, S::Info, true),
            ("UA", C::Other, S::High, false),
            ("UR", C::Other, S::Info, true),
            ("GA", C::Gas, S::Critical, false),
            ("WA", C::Environmental, S::Medium, false),
            ("KA", C::Fire, S::High, false),
        ];
        for (code, cat, sev, restore) in cases {
            let c = classify_sia(code);
            assert_eq!(
                (c.category, c.severity, c.restore, c.known),
                (cat, sev, restore, true),
                "{code}"
            );
        }
    }

    #[test]
    fn sia_open_close() {
        let op = classify_sia("OP");
        assert_eq!(
            (op.category, op.transition, op.restore),
            (C::OpenClose, Transition::Open, false)
        );
        let cl = classify_sia("CL");
        assert_eq!(
            (cl.category, cl.transition, cl.restore),
            (C::OpenClose, Transition::Close, false)
        );
    }

    #[test]
    fn sia_unknown_is_other_medium() {
        for code in ["ZX", "QQ", "ba", "", "BAR", "é"] {
            let c = classify_sia(code);
            assert_eq!(
                (c.category, c.severity, c.known, c.restore),
                (C::Other, S::Medium, false, false),
                "{code}"
            );
        }
    }
}
