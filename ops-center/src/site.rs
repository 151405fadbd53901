//! The site document: post records (address, time zone, zones, cameras,
//! contacts, duress words and passcodes) and action plans (what an analyst
//! does, step by step, for incidents of one category), as the TOML site file
//! says them and as the API carries them ([`SiteDocument`]).
//!
//! Pure: no I/O, no clock. [`parse`] reads a site file and [`validate`]
//! checks a document (the server checks what a client sends with the same
//! function); both name every problem at once, by table, key and reason
//! (and, from a file, its line), so one run of `vigil site import` shows
//! everything to fix. [`to_toml`] writes a document back as a site file
//! that [`parse`] reads unchanged.
//!
//! The file:
//!
//! ```toml
//! [[post]]
//! id = "p-001"
//! name = "Embassy Vienna"
//! address = "Ringstrasse 1, 1010 Wien"
//! timezone = "Europe/Vienna"
//! duress_words = ["bluebird"]
//! passcodes = ["4711"]
//! test_interval_hours = 24     # optional: a test report at least this often
//! holidays = ["2026-12-25"]    # optional: local dates without a schedule
//! [[post.contact]]             # called in this order
//! role = "guard"
//! name = "Gate desk"
//! phone = "+43 1 555 0100"
//! notes = "24/7"
//! [[post.zone]]
//! number = 15
//! name = "Chancery back door"
//! [[post.camera]]
//! id = "cam-2"
//! name = "Back yard"
//! [[post.schedule]]            # working hours, in the post's time zone
//! days = ["mon", "tue", "wed", "thu", "fri"]
//! open = "07:30-08:30"         # to open (disarm) within this window
//! close = "17:00-18:30"        # to close (arm) within this window
//! grace_minutes = 15           # optional, 0 by default
//!
//! [[plan]]
//! category = "burglary"        # or "default": any category without a plan
//! post = "p-001"               # optional: this post only (an override)
//! steps = [
//!   "Check the zone list",                            # a plain step (other)
//!   { kind = "verify_cameras", text = "Look at the back yard" },
//!   { kind = "call_contact", role = "guard", text = "Ask for a patrol" },
//!   { kind = "dispatch", text = "Police if not cleared" },
//!   { kind = "notify", text = "Mail the duty officer" },
//! ]
//! ```
//!
//! Which plan applies to an incident ([`plan_for`]): the post's own plan for
//! the category, else the plan of every post for it, else the `default`
//! plans the same way, except that duress and hold-up incidents never fall
//! back to a default plan. Duress and hold-up plans may not call the
//! premises (a contact role in [`PREMISES_ROLES`]): whoever answers there
//! may be the one under threat.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
};

use vigil_proto::v1::{
    ActionPlan, Camera, Contact, EventCategory, PlanStep, PostRecord, PostSchedule, SiteDocument,
    StepKind, Zone,
};

/// Contact roles that reach the post itself.
pub const PREMISES_ROLES: &[&str] = &["premises", "on_site"];
/// Categories whose plans may never call the premises, and which never fall
/// back to a `default` plan.
pub const NO_PREMISES_CATEGORIES: &[&str] = &["duress", "holdup"];
/// The plan category that stands for any category without a plan of its own.
pub const DEFAULT_CATEGORY: &str = "default";

/// Longest text of any one field (names, notes, step texts).
pub const MAX_TEXT: usize = 2000;

/// One thing wrong with a site document: where (`[[post]] #2 contact #1`),
/// which key, why, and, when it was read from a file, on which line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub key: String,
    pub reason: String,
    /// The line (from 1) of the key, or of its table, in the site file.
    pub line: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match self.key.as_str() {
            "" => write!(f, "{}: {}", self.place, self.reason),
            key => write!(f, "{}, {key}: {}", self.place, self.reason),
        }
    }
}

/// Every problem of a site document, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SiteErrors(pub Vec<Problem>);

impl fmt::Display for SiteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn problem(place: &str, key: &str, reason: impl Into<String>) -> Problem {
    Problem {
        place: place.to_owned(),
        key: key.to_owned(),
        reason: reason.into(),
        line: None,
    }
}

fn post_place(i: usize) -> String {
    format!("[[post]] #{}", i + 1)
}

fn plan_place(i: usize) -> String {
    format!("[[plan]] #{}", i + 1)
}

/// The name of a step kind in the site file.
pub fn step_kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::VerifyCameras => "verify_cameras",
        StepKind::CallContact => "call_contact",
        StepKind::Dispatch => "dispatch",
        StepKind::Notify => "notify",
        StepKind::Other | StepKind::Unspecified => "other",
    }
}

fn step_kind_named(name: &str) -> Option<StepKind> {
    Some(match name {
        "verify_cameras" => StepKind::VerifyCameras,
        "call_contact" => StepKind::CallContact,
        "dispatch" => StepKind::Dispatch,
        "notify" => StepKind::Notify,
        "other" => StepKind::Other,
        _ => return None,
    })
}

/// A step in a few words, for audit lines: `call guard: Ask for a patrol`,
/// `verify cameras: Look at the yard`.
pub fn step_summary(step: &PlanStep) -> String {
    match StepKind::try_from(step.kind).unwrap_or(StepKind::Other) {
        StepKind::CallContact => format!("call {}: {}", step.contact_role, step.text),
        kind => format!("{}: {}", step_kind_name(kind).replace('_', " "), step.text),
    }
}

/// True for a category name the engine uses (`burglary`, `duress`, ...;
/// lower case) or `default`.
pub fn is_plan_category(name: &str) -> bool {
    if name == DEFAULT_CATEGORY {
        return true;
    }
    if name.is_empty() || name != name.to_ascii_lowercase() {
        return false;
    }
    EventCategory::from_str_name(&format!("EVENT_CATEGORY_{}", name.to_ascii_uppercase()))
        .is_some_and(|c| c != EventCategory::Unspecified)
}

/// An IANA time zone name by its shape: `UTC`, `Europe/Vienna`,
/// `America/Argentina/Buenos_Aires`, `Etc/GMT+3`. This catches typos of
/// form, offsets like `+02:00` and abbreviations like `cet`; [`time_zone`]
/// then asks the tz database whether the zone exists.
pub fn is_timezone_shape(tz: &str) -> bool {
    !tz.is_empty()
        && tz.len() <= 64
        && tz.split('/').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+'))
        })
}

/// The time zone `name` stands for, from the tz database bundled into the
/// program (so the answer does not depend on the host), or why not. The
/// name must be spelt as the database spells it (`Europe/Vienna`, not
/// `europe/vienna`): it is shown to people and exported as written.
pub fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    let bad =
        || format!("{name:?} is not an IANA time zone name (e.g. \"Europe/Vienna\", \"UTC\")");
    if !is_timezone_shape(name) {
        return Err(bad());
    }
    let tz = jiff::tz::TimeZone::get(name).map_err(|_| {
        format!("{name:?} is not in the tz database (e.g. \"Europe/Vienna\", \"UTC\")")
    })?;
    match tz.iana_name() {
        Some(canonical) if canonical != name => Err(format!(
            "{name:?} is spelt {canonical:?} in the tz database"
        )),
        _ => Ok(tz),
    }
}

fn is_phone(phone: &str) -> bool {
    phone.chars().filter(char::is_ascii_digit).count() >= 3
        && phone
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')' | '.'))
}

fn is_role(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= 40
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Checks a whole document; empty when it is fine.
pub fn validate(doc: &SiteDocument) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let mut roles_of: BTreeMap<&str, HashSet<&str>> = BTreeMap::new();
    for (i, post) in doc.posts.iter().enumerate() {
        let at = post_place(i);
        let text = |out: &mut Vec<Problem>, at: &str, key: &str, v: &str, required: bool| {
            if required && v.trim().is_empty() {
                out.push(problem(at, key, "required"));
            } else if v.len() > MAX_TEXT {
                out.push(problem(at, key, format!("longer than {MAX_TEXT} bytes")));
            }
        };
        if vigil_pki::Identity::new(&post.post_id).is_err() {
            out.push(problem(
                &at,
                "id",
                format!(
                    "{:?} is not a post id (lower-case letters, digits and '-')",
                    post.post_id
                ),
            ));
        } else if !ids.insert(post.post_id.as_str()) {
            out.push(problem(
                &at,
                "id",
                format!("{:?} is already an earlier [[post]]", post.post_id),
            ));
        }
        text(&mut out, &at, "name", &post.name, true);
        text(&mut out, &at, "address", &post.address, false);
        if let Err(why) = time_zone(&post.timezone) {
            out.push(problem(&at, "timezone", why));
        }
        for (place, key, why) in crate::schedule::check(post) {
            let place = match place.as_str() {
                "" => at.clone(),
                p => format!("{at} {p}"),
            };
            out.push(problem(&place, key, why));
        }
        let mut numbers = HashSet::new();
        for (j, zone) in post.zones.iter().enumerate() {
            let at = format!("{at} zone #{}", j + 1);
            if zone.number == 0 {
                out.push(problem(&at, "number", "must be at least 1"));
            } else if !numbers.insert(zone.number) {
                out.push(problem(
                    &at,
                    "number",
                    format!("zone {} is named twice", zone.number),
                ));
            }
            text(&mut out, &at, "name", &zone.name, true);
        }
        let mut cameras = HashSet::new();
        for (j, camera) in post.cameras.iter().enumerate() {
            let at = format!("{at} camera #{}", j + 1);
            if camera.id.trim().is_empty() {
                out.push(problem(&at, "id", "required"));
            } else if !cameras.insert(camera.id.as_str()) {
                out.push(problem(
                    &at,
                    "id",
                    format!("camera {:?} is named twice", camera.id),
                ));
            }
            text(&mut out, &at, "name", &camera.name, true);
        }
        let roles = roles_of.entry(post.post_id.as_str()).or_default();
        for (j, contact) in post.contacts.iter().enumerate() {
            let at = format!("{at} contact #{}", j + 1);
            if is_role(&contact.role) {
                roles.insert(contact.role.as_str());
            } else {
                out.push(problem(
                    &at,
                    "role",
                    format!(
                        "{:?} is not a role (lower-case letters, digits and '_')",
                        contact.role
                    ),
                ));
            }
            text(&mut out, &at, "name", &contact.name, true);
            if !is_phone(&contact.phone) {
                out.push(problem(
                    &at,
                    "phone",
                    format!("{:?} is not a phone number", contact.phone),
                ));
            }
            text(&mut out, &at, "notes", &contact.notes, false);
        }
        if post.secrets_withheld {
            out.push(problem(
                &at,
                "",
                "its duress words and passcodes were withheld from whoever read it: importing it would erase them",
            ));
        }
        for (key, list) in [
            ("duress_words", &post.duress_words),
            ("passcodes", &post.passcodes),
        ] {
            let mut seen = HashSet::new();
            for word in list {
                if word.trim().is_empty() {
                    out.push(problem(&at, key, "an empty entry"));
                } else if !seen.insert(word.as_str()) {
                    // The value is a secret: never repeat it in an error.
                    out.push(problem(&at, key, "an entry is listed twice"));
                }
            }
        }
    }

    let mut plans = HashSet::new();
    for (i, plan) in doc.plans.iter().enumerate() {
        let at = plan_place(i);
        if !is_plan_category(&plan.category) {
            out.push(problem(
                &at,
                "category",
                format!(
                    "{:?} is not an event category (e.g. \"burglary\", \"duress\", or \"default\")",
                    plan.category
                ),
            ));
        }
        if !plan.post_id.is_empty() && !ids.contains(plan.post_id.as_str()) {
            out.push(problem(
                &at,
                "post",
                format!("no [[post]] has id {:?}", plan.post_id),
            ));
        }
        if !plans.insert((plan.category.as_str(), plan.post_id.as_str())) {
            let whose = match plan.post_id.as_str() {
                "" => "every post".to_owned(),
                p => format!("post {p}"),
            };
            out.push(problem(
                &at,
                "category",
                format!(
                    "a second plan for {:?} at {whose} (one plan per category and post)",
                    plan.category
                ),
            ));
        }
        if plan.steps.is_empty() {
            out.push(problem(&at, "steps", "a plan needs at least one step"));
        }
        let no_premises = NO_PREMISES_CATEGORIES.contains(&plan.category.as_str());
        for (j, step) in plan.steps.iter().enumerate() {
            let at = format!("{at} step #{}", j + 1);
            if step.text.trim().is_empty() {
                out.push(problem(&at, "text", "required"));
            } else if step.text.len() > MAX_TEXT {
                out.push(problem(
                    &at,
                    "text",
                    format!("longer than {MAX_TEXT} bytes"),
                ));
            }
            let kind = StepKind::try_from(step.kind).unwrap_or(StepKind::Unspecified);
            match kind {
                StepKind::Unspecified => out.push(problem(&at, "kind", "required")),
                StepKind::CallContact => {
                    if !is_role(&step.contact_role) {
                        out.push(problem(
                            &at,
                            "role",
                            "a call_contact step names the role to call",
                        ));
                    } else if no_premises && PREMISES_ROLES.contains(&step.contact_role.as_str()) {
                        out.push(problem(
                            &at,
                            "role",
                            format!(
                                "a {} plan must never call the premises ({:?}): whoever answers may be under threat",
                                plan.category, step.contact_role
                            ),
                        ));
                    } else if let Some(roles) = roles_of.get(plan.post_id.as_str())
                        && !plan.post_id.is_empty()
                        && !roles.contains(step.contact_role.as_str())
                    {
                        out.push(problem(
                            &at,
                            "role",
                            format!(
                                "post {} has no contact with role {:?}",
                                plan.post_id, step.contact_role
                            ),
                        ));
                    }
                }
                _ => {
                    if !step.contact_role.is_empty() {
                        out.push(problem(
                            &at,
                            "role",
                            "only a call_contact step names a role",
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The plan that applies to an incident of `category` (the engine's name)
/// at `post_id` (see the module docs).
pub fn plan_for<'a>(
    plans: &'a [ActionPlan],
    category: &str,
    post_id: &str,
) -> Option<&'a ActionPlan> {
    let find = |category: &str| {
        plans
            .iter()
            .find(|p| p.category == category && p.post_id == post_id)
            .or_else(|| {
                plans
                    .iter()
                    .find(|p| p.category == category && p.post_id.is_empty())
            })
    };
    find(category).or_else(|| {
        if NO_PREMISES_CATEGORIES.contains(&category) {
            None
        } else {
            find(DEFAULT_CATEGORY)
        }
    })
}

/// A post record as a caller who may not see secrets gets it: no duress
/// words or passcodes, only how many there are.
pub fn withhold_secrets(mut post: PostRecord) -> PostRecord {
    post.duress_word_count = post.duress_words.len() as u32;
    post.passcode_count = post.passcodes.len() as u32;
    post.duress_words.clear();
    post.passcodes.clear();
    post.secrets_withheld = true;
    post
}

/// One change a new document makes to the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteChange {
    /// The post concerned; empty for a plan of every post.
    pub post_id: String,
    /// What changed, for people (never a secret's value).
    pub detail: String,
}

fn plan_name(plan: &ActionPlan) -> String {
    match plan.post_id.as_str() {
        "" => format!("plan {} (every post)", plan.category),
        p => format!("plan {} for {p}", plan.category),
    }
}

/// What changes from `old` to `new`: post records and plans added, changed
/// (with the parts that changed) and removed, in document order.
pub fn diff(old: &SiteDocument, new: &SiteDocument) -> Vec<SiteChange> {
    let mut out = Vec::new();
    let change = |post_id: &str, detail: String| SiteChange {
        post_id: post_id.to_owned(),
        detail,
    };
    for post in &new.posts {
        match old.posts.iter().find(|p| p.post_id == post.post_id) {
            None => out.push(change(
                &post.post_id,
                format!("post {} added", post.post_id),
            )),
            Some(was) if was != post => {
                // Which fields changed, by name (secrets named, not shown).
                let fields = [
                    ("name", was.name != post.name),
                    ("address", was.address != post.address),
                    ("timezone", was.timezone != post.timezone),
                    ("zones", was.zones != post.zones),
                    ("cameras", was.cameras != post.cameras),
                    ("contacts", was.contacts != post.contacts),
                    ("duress words", was.duress_words != post.duress_words),
                    ("passcodes", was.passcodes != post.passcodes),
                    ("schedules", was.schedules != post.schedules),
                    ("holidays", was.holidays != post.holidays),
                    (
                        "test interval",
                        was.test_interval_hours != post.test_interval_hours,
                    ),
                ];
                let parts: Vec<&str> = fields
                    .into_iter()
                    .filter_map(|(name, changed)| changed.then_some(name))
                    .collect();
                out.push(change(
                    &post.post_id,
                    format!("post {} changed: {}", post.post_id, parts.join(", ")),
                ));
            }
            Some(_) => {}
        }
    }
    for was in &old.posts {
        if !new.posts.iter().any(|p| p.post_id == was.post_id) {
            out.push(change(
                &was.post_id,
                format!("post {} removed", was.post_id),
            ));
        }
    }
    let same = |a: &ActionPlan, b: &ActionPlan| a.category == b.category && a.post_id == b.post_id;
    for plan in &new.plans {
        match old.plans.iter().find(|p| same(p, plan)) {
            None => out.push(change(&plan.post_id, format!("{} added", plan_name(plan)))),
            Some(was) if was != plan => {
                out.push(change(
                    &plan.post_id,
                    format!("{} changed", plan_name(plan)),
                ));
            }
            Some(_) => {}
        }
    }
    for was in &old.plans {
        if !new.plans.iter().any(|p| same(p, was)) {
            out.push(change(&was.post_id, format!("{} removed", plan_name(was))));
        }
    }
    out
}

// ------------------------------------------------------------ the TOML file

/// Reads a table's keys one by one, remembering what was wrong and which
/// keys were seen, so that unknown keys are named at the end.
struct Fields<'a> {
    table: &'a toml::Table,
    place: String,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(table: &'a toml::Table, place: String) -> Self {
        Self {
            table,
            place,
            known: Vec::new(),
        }
    }

    fn bad(&self, out: &mut Vec<Problem>, key: &str, reason: &str) {
        out.push(problem(&self.place, key, reason));
    }

    fn string(&mut self, out: &mut Vec<Problem>, key: &'static str) -> String {
        self.known.push(key);
        match self.table.get(key) {
            None => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                self.bad(out, key, "must be a string");
                String::new()
            }
        }
    }

    fn strings(&mut self, out: &mut Vec<Problem>, key: &'static str) -> Vec<String> {
        self.known.push(key);
        match self.table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(a)) if a.iter().all(toml::Value::is_str) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(_) => {
                self.bad(out, key, "must be a list of strings");
                Vec::new()
            }
        }
    }

    fn number(&mut self, out: &mut Vec<Problem>, key: &'static str) -> u32 {
        self.known.push(key);
        match self.table.get(key) {
            None => 0,
            Some(toml::Value::Integer(n)) if (1..=i64::from(u32::MAX)).contains(n) => *n as u32,
            Some(_) => {
                self.bad(out, key, "must be a whole number from 1");
                0
            }
        }
    }

    /// A whole number from 0 up (absent: 0).
    fn count(&mut self, out: &mut Vec<Problem>, key: &'static str) -> u32 {
        self.known.push(key);
        match self.table.get(key) {
            None => 0,
            Some(toml::Value::Integer(n)) if (0..=i64::from(u32::MAX)).contains(n) => *n as u32,
            Some(_) => {
                self.bad(out, key, "must be a whole number from 0");
                0
            }
        }
    }

    /// An array of tables (`[[post.contact]]`).
    fn tables(&mut self, out: &mut Vec<Problem>, key: &'static str) -> Vec<&'a toml::Table> {
        self.known.push(key);
        match self.table.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(a)) if a.iter().all(toml::Value::is_table) => {
                a.iter().filter_map(toml::Value::as_table).collect()
            }
            Some(_) => {
                self.bad(out, key, &format!("must be [[{key}]] tables"));
                Vec::new()
            }
        }
    }

    fn value(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.known.push(key);
        self.table.get(key)
    }

    /// Names every key not read.
    fn finish(self, out: &mut Vec<Problem>) {
        for key in self.table.keys() {
            if !self.known.contains(&key.as_str()) {
                out.push(problem(
                    &self.place,
                    key,
                    format!("unknown key (known: {})", self.known.join(", ")),
                ));
            }
        }
    }
}

fn parse_step(value: &toml::Value, place: String, out: &mut Vec<Problem>) -> PlanStep {
    match value {
        toml::Value::String(text) => PlanStep {
            kind: StepKind::Other as i32,
            text: text.clone(),
            contact_role: String::new(),
        },
        toml::Value::Table(t) => {
            let mut f = Fields::new(t, place);
            let kind = f.string(out, "kind");
            let text = f.string(out, "text");
            let role = f.string(out, "role");
            let kind = match step_kind_named(&kind) {
                Some(k) => k as i32,
                None => {
                    out.push(problem(
                        &f.place,
                        "kind",
                        format!(
                            "{kind:?} is not a step kind (verify_cameras, call_contact, dispatch, notify, other)"
                        ),
                    ));
                    // Known bad: validation would only say "required".
                    StepKind::Other as i32
                }
            };
            f.finish(out);
            PlanStep {
                kind,
                text,
                contact_role: role,
            }
        }
        _ => {
            out.push(problem(
                &place,
                "",
                "a step is a string or a table { kind, text, role }",
            ));
            PlanStep {
                kind: StepKind::Other as i32,
                text: "?".into(),
                contact_role: String::new(),
            }
        }
    }
}

/// Reads and validates a site file. The error names every problem (shape
/// and meaning) at once; a TOML syntax error comes alone, with its line.
pub fn parse(text: &str) -> Result<SiteDocument, SiteErrors> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        SiteErrors(vec![problem(
            "the file",
            "",
            e.to_string().trim_end().replace('\n', " "),
        )])
    })?;
    let mut out = Vec::new();
    let mut doc = SiteDocument::default();
    let mut top = Fields::new(&table, "the file".into());
    for (i, t) in top.tables(&mut out, "post").into_iter().enumerate() {
        let mut f = Fields::new(t, post_place(i));
        let mut post = PostRecord {
            post_id: f.string(&mut out, "id"),
            name: f.string(&mut out, "name"),
            address: f.string(&mut out, "address"),
            timezone: f.string(&mut out, "timezone"),
            duress_words: f.strings(&mut out, "duress_words"),
            passcodes: f.strings(&mut out, "passcodes"),
            test_interval_hours: f.count(&mut out, "test_interval_hours"),
            holidays: f.strings(&mut out, "holidays"),
            ..Default::default()
        };
        for (j, t) in f.tables(&mut out, "contact").into_iter().enumerate() {
            let mut c = Fields::new(t, format!("{} contact #{}", post_place(i), j + 1));
            post.contacts.push(Contact {
                role: c.string(&mut out, "role"),
                name: c.string(&mut out, "name"),
                phone: c.string(&mut out, "phone"),
                notes: c.string(&mut out, "notes"),
            });
            c.finish(&mut out);
        }
        for (j, t) in f.tables(&mut out, "zone").into_iter().enumerate() {
            let mut z = Fields::new(t, format!("{} zone #{}", post_place(i), j + 1));
            post.zones.push(Zone {
                number: z.number(&mut out, "number"),
                name: z.string(&mut out, "name"),
            });
            z.finish(&mut out);
        }
        for (j, t) in f.tables(&mut out, "camera").into_iter().enumerate() {
            let mut c = Fields::new(t, format!("{} camera #{}", post_place(i), j + 1));
            post.cameras.push(Camera {
                id: c.string(&mut out, "id"),
                name: c.string(&mut out, "name"),
            });
            c.finish(&mut out);
        }
        for (j, t) in f.tables(&mut out, "schedule").into_iter().enumerate() {
            let mut c = Fields::new(t, format!("{} schedule #{}", post_place(i), j + 1));
            post.schedules.push(PostSchedule {
                days: c.strings(&mut out, "days"),
                open: c.string(&mut out, "open"),
                close: c.string(&mut out, "close"),
                grace_minutes: c.count(&mut out, "grace_minutes"),
            });
            c.finish(&mut out);
        }
        f.finish(&mut out);
        doc.posts.push(post);
    }
    for (i, t) in top.tables(&mut out, "plan").into_iter().enumerate() {
        let mut f = Fields::new(t, plan_place(i));
        let mut plan = ActionPlan {
            category: f.string(&mut out, "category"),
            post_id: f.string(&mut out, "post"),
            steps: Vec::new(),
        };
        match f.value("steps") {
            None => {}
            Some(toml::Value::Array(steps)) => {
                for (j, s) in steps.iter().enumerate() {
                    let place = format!("{} step #{}", plan_place(i), j + 1);
                    plan.steps.push(parse_step(s, place, &mut out));
                }
            }
            Some(_) => out.push(problem(&f.place, "steps", "must be a list of steps")),
        }
        f.finish(&mut out);
        doc.plans.push(plan);
    }
    top.finish(&mut out);

    // Meaning, for what had the right shape: a key already named for its
    // shape is not named again as missing.
    let named: HashSet<(String, String)> = out
        .iter()
        .map(|p| (p.place.clone(), p.key.clone()))
        .collect();
    out.extend(
        validate(&doc)
            .into_iter()
            .filter(|p| !named.contains(&(p.place.clone(), p.key.clone()))),
    );
    if out.is_empty() {
        return Ok(doc);
    }
    let lines = line_map(text);
    for p in &mut out {
        p.line = lines
            .get(&(p.place.clone(), p.key.clone()))
            .or_else(|| lines.get(&(p.place.clone(), String::new())))
            .copied();
    }
    Err(SiteErrors(out))
}

type Lines = HashMap<(String, String), usize>;

/// The line of every key of a site file, and of every table (the line of
/// its first key), by the place and key a [`Problem`] names.
fn line_map(text: &str) -> Lines {
    use toml::de::{DeTable, DeValue};
    let mut map = Lines::new();
    let Ok(doc) = DeTable::parse(text) else {
        return map;
    };
    let line = |pos: usize| text.get(..pos).map_or(0, |t| t.matches('\n').count()) + 1;
    let keys = |table: &DeTable<'_>, place: &str, map: &mut Lines| {
        for (k, _) in table.iter() {
            let l = line(k.span().start);
            map.entry((place.to_owned(), k.get_ref().to_string()))
                .or_insert(l);
            let first = map.entry((place.to_owned(), String::new())).or_insert(l);
            *first = (*first).min(l);
        }
    };
    // The tables of an array of tables (`[[post]]`, `[[post.contact]]`).
    fn tables<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Vec<&'a DeTable<'i>> {
        let found = table.iter().find(|(k, _)| k.get_ref() == key);
        match found.map(|(_, v)| v.get_ref()) {
            Some(DeValue::Array(items)) => items
                .iter()
                .filter_map(|v| match v.get_ref() {
                    DeValue::Table(t) => Some(t),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
    let doc = doc.get_ref();
    keys(doc, "the file", &mut map);
    for (i, post) in tables(doc, "post").into_iter().enumerate() {
        let at = post_place(i);
        keys(post, &at, &mut map);
        for what in ["contact", "zone", "camera", "schedule"] {
            for (j, t) in tables(post, what).into_iter().enumerate() {
                keys(t, &format!("{at} {what} #{}", j + 1), &mut map);
            }
        }
    }
    for (i, plan) in tables(doc, "plan").into_iter().enumerate() {
        let at = plan_place(i);
        keys(plan, &at, &mut map);
        let steps = plan.iter().find(|(k, _)| k.get_ref() == "steps");
        if let Some((_, v)) = steps
            && let DeValue::Array(items) = v.get_ref()
        {
            for (j, step) in items.iter().enumerate() {
                let place = format!("{at} step #{}", j + 1);
                map.insert((place.clone(), String::new()), line(step.span().start));
                if let DeValue::Table(t) = step.get_ref() {
                    keys(t, &place, &mut map);
                }
            }
        }
    }
    map
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn quoted_list(list: &[String]) -> String {
    let items: Vec<String> = list.iter().map(|s| quote(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A document as a site file ([`parse`] reads it back unchanged). A record
/// whose secrets were withheld says so in a comment.
pub fn to_toml(doc: &SiteDocument) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for post in &doc.posts {
        let _ = writeln!(s, "[[post]]");
        let _ = writeln!(s, "id = {}", quote(&post.post_id));
        let _ = writeln!(s, "name = {}", quote(&post.name));
        if !post.address.is_empty() {
            let _ = writeln!(s, "address = {}", quote(&post.address));
        }
        let _ = writeln!(s, "timezone = {}", quote(&post.timezone));
        if post.secrets_withheld {
            let _ = writeln!(
                s,
                "# duress words ({}) and passcodes ({}) withheld",
                post.duress_word_count, post.passcode_count
            );
        }
        if !post.duress_words.is_empty() {
            let _ = writeln!(s, "duress_words = {}", quoted_list(&post.duress_words));
        }
        if !post.passcodes.is_empty() {
            let _ = writeln!(s, "passcodes = {}", quoted_list(&post.passcodes));
        }
        if post.test_interval_hours > 0 {
            let _ = writeln!(s, "test_interval_hours = {}", post.test_interval_hours);
        }
        if !post.holidays.is_empty() {
            let _ = writeln!(s, "holidays = {}", quoted_list(&post.holidays));
        }
        for c in &post.contacts {
            let _ = writeln!(s, "[[post.contact]]");
            let _ = writeln!(s, "role = {}", quote(&c.role));
            let _ = writeln!(s, "name = {}", quote(&c.name));
            let _ = writeln!(s, "phone = {}", quote(&c.phone));
            if !c.notes.is_empty() {
                let _ = writeln!(s, "notes = {}", quote(&c.notes));
            }
        }
        for z in &post.zones {
            let _ = writeln!(s, "[[post.zone]]");
            let _ = writeln!(s, "number = {}", z.number);
            let _ = writeln!(s, "name = {}", quote(&z.name));
        }
        for c in &post.cameras {
            let _ = writeln!(s, "[[post.camera]]");
            let _ = writeln!(s, "id = {}", quote(&c.id));
            let _ = writeln!(s, "name = {}", quote(&c.name));
        }
        for sc in &post.schedules {
            let _ = writeln!(s, "[[post.schedule]]");
            let _ = writeln!(s, "days = {}", quoted_list(&sc.days));
            let _ = writeln!(s, "open = {}", quote(&sc.open));
            let _ = writeln!(s, "close = {}", quote(&sc.close));
            if sc.grace_minutes > 0 {
                let _ = writeln!(s, "grace_minutes = {}", sc.grace_minutes);
            }
        }
        s.push('\n');
    }
    for plan in &doc.plans {
        let _ = writeln!(s, "[[plan]]");
        let _ = writeln!(s, "category = {}", quote(&plan.category));
        if !plan.post_id.is_empty() {
            let _ = writeln!(s, "post = {}", quote(&plan.post_id));
        }
        let _ = writeln!(s, "steps = [");
        for step in &plan.steps {
            let kind = StepKind::try_from(step.kind).unwrap_or(StepKind::Other);
            if kind == StepKind::Other && step.contact_role.is_empty() {
                let _ = writeln!(s, "  {},", quote(&step.text));
            } else if kind == StepKind::CallContact {
                let _ = writeln!(
                    s,
                    "  {{ kind = \"call_contact\", role = {}, text = {} }},",
                    quote(&step.contact_role),
                    quote(&step.text)
                );
            } else {
                let _ = writeln!(
                    s,
                    "  {{ kind = {}, text = {} }},",
                    quote(step_kind_name(kind)),
                    quote(&step.text)
                );
            }
        }
        let _ = writeln!(s, "]\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[post]]
id = "p-001"
name = "Embassy Vienna"
address = "Ringstrasse 1, 1010 Wien"
timezone = "Europe/Vienna"
duress_words = ["bluebird"]
passcodes = ["4711", "0815"]
[[post.contact]]
role = "guard"
name = "Gate desk"
phone = "+43 1 555 0100"
notes = "24/7, \"ask for the duty guard\""
[[post.contact]]
role = "premises"
name = "Reception"
phone = "+43 1 555 0101"
[[post.zone]]
number = 15
name = "Chancery back door"
[[post.camera]]
id = "cam-2"
name = "Back yard"
[[post.schedule]]
days = ["mon", "tue", "wed", "thu", "fri"]
open = "07:30-08:30"
close = "17:00-18:30"
grace_minutes = 15
[[post.schedule]]
days = ["sat"]
open = "09:00-09:30"
close = "12:00-12:30"

[[post]]
id = "p-002"
name = "Consulate Graz"
timezone = "Europe/Vienna"
test_interval_hours = 24
holidays = ["2026-12-25", "2026-12-26"]

[[plan]]
category = "burglary"
steps = [
  "Check the zone list",
  { kind = "verify_cameras", text = "Look at the cameras of the zone" },
  { kind = "call_contact", role = "guard", text = "Ask for a patrol" },
]

[[plan]]
category = "burglary"
post = "p-001"
steps = [{ kind = "call_contact", role = "premises", text = "Call reception" }]

[[plan]]
category = "duress"
steps = [
  { kind = "dispatch", text = "Police at once; do not call the post" },
  { kind = "notify", text = "Duty officer" },
]

[[plan]]
category = "default"
steps = ["Follow the standing orders"]
"#;

    #[test]
    fn a_good_file_reads_and_writes_back_unchanged() {
        let doc = parse(GOOD).unwrap();
        assert_eq!(doc.posts.len(), 2);
        assert_eq!(doc.posts[0].contacts.len(), 2);
        assert_eq!(doc.posts[0].contacts[0].role, "guard");
        assert_eq!(doc.posts[0].zones[0].number, 15);
        assert_eq!(doc.plans.len(), 4);
        assert_eq!(doc.plans[0].steps[0].kind, StepKind::Other as i32);
        assert_eq!(doc.plans[0].steps[2].contact_role, "guard");
        assert_eq!(doc.posts[0].schedules.len(), 2);
        assert_eq!(doc.posts[0].schedules[0].close, "17:00-18:30");
        assert_eq!(doc.posts[0].schedules[0].grace_minutes, 15);
        assert_eq!(doc.posts[0].schedules[1].days, ["sat"]);
        assert_eq!(doc.posts[1].test_interval_hours, 24);
        assert_eq!(doc.posts[1].holidays, ["2026-12-25", "2026-12-26"]);
        let again = parse(&to_toml(&doc)).unwrap();
        assert_eq!(again, doc);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let bad = r#"
colour = "blue"
[[post]]
id = "P 1"
timezone = "+02:00"
duress_words = ["a", "a"]
nickname = "x"
[[post.contact]]
role = "Guard"
name = "Desk"
phone = "call me"
[[post.zone]]
number = 0
name = "Door"
[[post.schedule]]
days = ["mon", "someday"]
open = "8:00"
close = "07:00-09:00"
grace_minutes = -5
colour = "red"

[[plan]]
category = "burglery"
post = "p-009"
steps = []

[[plan]]
category = "holdup"
steps = [{ kind = "call_contact", role = "premises", text = "Call the post" }, 7]
"#;
        let e = parse(bad).unwrap_err();
        let lines = e.to_string();
        for want in [
            "the file, colour: unknown key",
            "[[post]] #1, nickname: unknown key",
            "[[post]] #1, id: \"P 1\" is not a post id",
            "[[post]] #1, name: required",
            "[[post]] #1, timezone: \"+02:00\" is not an IANA",
            "[[post]] #1, duress_words: an entry is listed twice",
            "[[post]] #1 contact #1, role: \"Guard\" is not a role",
            "[[post]] #1 contact #1, phone: \"call me\" is not a phone number",
            "[[post]] #1 zone #1, number: must be a whole number from 1",
            "[[post]] #1 schedule #1, days: \"someday\" is not a day",
            "[[post]] #1 schedule #1, open: \"8:00\" is not a window",
            "[[post]] #1 schedule #1, grace_minutes: must be a whole number from 0",
            "[[post]] #1 schedule #1, colour: unknown key",
            "[[plan]] #1, category: \"burglery\" is not an event category",
            "[[plan]] #1, post: no [[post]] has id \"p-009\"",
            "[[plan]] #1, steps: a plan needs at least one step",
            "[[plan]] #2 step #1, role: a holdup plan must never call the premises",
            "[[plan]] #2 step #2: a step is a string or a table",
        ] {
            assert!(lines.contains(want), "missing {want:?} in:\n{lines}");
        }
        // Each problem on the line of its key, or of its table.
        assert!(
            lines.contains("line 4: [[post]] #1, id: \"P 1\""),
            "{lines}"
        );
        assert!(
            lines.contains("line 2: the file, colour: unknown key"),
            "{lines}"
        );
        assert!(
            lines.contains("line 29: [[plan]] #2 step #1, role"),
            "{lines}"
        );
        assert!(
            lines.contains("line 29: [[plan]] #2 step #2: a step is"),
            "{lines}"
        );
        assert!(
            lines.contains("line 16: [[post]] #1 schedule #1, days: \"someday\""),
            "{lines}"
        );
        assert!(
            lines.contains("line 17: [[post]] #1 schedule #1, open: \"8:00\""),
            "{lines}"
        );
        assert!(
            // A missing key: the line of its table's first key.
            lines.contains("line 4: [[post]] #1, name: required"),
            "{lines}"
        );
        // A wrong type is named once, not again as missing.
        assert_eq!(lines.matches("zone #1, number").count(), 1, "{lines}");
        // Secrets never appear in errors.
        assert!(!lines.contains("\"a\""), "{lines}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let e = parse("[[post]]\nid = \n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn duress_and_holdup_plans_never_call_the_premises() {
        for category in NO_PREMISES_CATEGORIES {
            for role in PREMISES_ROLES {
                let doc = SiteDocument {
                    plans: vec![ActionPlan {
                        category: (*category).into(),
                        post_id: String::new(),
                        steps: vec![PlanStep {
                            kind: StepKind::CallContact as i32,
                            text: "call".into(),
                            contact_role: (*role).into(),
                        }],
                    }],
                    ..Default::default()
                };
                let problems = validate(&doc);
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert!(problems[0].reason.contains("never call the premises"));
            }
        }
    }

    #[test]
    fn an_override_calls_only_roles_its_post_has() {
        let mut doc = parse(GOOD).unwrap();
        doc.plans[1].steps[0].contact_role = "police".into();
        let problems = validate(&doc);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].place, "[[plan]] #2 step #1");
    }

    #[test]
    fn the_plan_that_applies() {
        let doc = parse(GOOD).unwrap();
        let p = |c, post| {
            plan_for(&doc.plans, c, post).map(|p| (p.category.as_str(), p.post_id.as_str()))
        };
        assert_eq!(p("burglary", "p-001"), Some(("burglary", "p-001")));
        assert_eq!(p("burglary", "p-002"), Some(("burglary", "")));
        assert_eq!(p("fire", "p-002"), Some(("default", "")));
        assert_eq!(p("duress", "p-001"), Some(("duress", "")));
        // Hold-up has no plan, and never takes the default one.
        assert_eq!(p("holdup", "p-001"), None);
    }

    #[test]
    fn time_zone_shapes() {
        for good in [
            "UTC",
            "Europe/Vienna",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+3",
            "America/Port-au-Prince",
        ] {
            assert!(is_timezone_shape(good), "{good}");
        }
        for bad in [
            "",
            "cet",
            "+02:00",
            "Europe/",
            "/Vienna",
            "Europe//Vienna",
            "Europe/Vi enna",
        ] {
            assert!(!is_timezone_shape(bad), "{bad}");
            assert!(time_zone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_zones_are_checked_against_the_tz_database() {
        for good in [
            "UTC",
            "Europe/Vienna",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+3",
            "America/Port-au-Prince",
            "Asia/Kolkata",
        ] {
            assert!(time_zone(good).is_ok(), "{good}");
        }
        // The right shape, but no such zone.
        let e = time_zone("Europe/Viena").unwrap_err();
        assert!(e.contains("not in the tz database"), "{e}");
        assert!(time_zone("Mars/Olympus_Mons").is_err());
        // The database's own spelling only.
        let e = time_zone("Europe/VIENNA").unwrap_err();
        assert!(e.contains("\"Europe/Vienna\""), "{e}");
        // A bad zone in a file is a named problem on its line.
        let file = "[[post]]\nid = \"p-001\"\nname = \"A\"\ntimezone = \"Europe/Viena\"\n";
        let e = parse(file).unwrap_err().to_string();
        assert!(
            e.contains("line 4: [[post]] #1, timezone: \"Europe/Viena\" is not in the tz database"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_withheld_as_counts() {
        let doc = parse(GOOD).unwrap();
        let post = withhold_secrets(doc.posts[0].clone());
        assert!(post.secrets_withheld);
        assert!(post.duress_words.is_empty() && post.passcodes.is_empty());
        assert_eq!((post.duress_word_count, post.passcode_count), (1, 2));
        // Such a record is never imported back: it would erase them.
        let mut back = doc;
        back.posts[0] = post;
        assert!(validate(&back)[0].reason.contains("withheld"));
    }

    #[test]
    fn diff_names_what_changed_and_never_a_secret() {
        let old = parse(GOOD).unwrap();
        let mut new = old.clone();
        new.posts[0].duress_words = vec!["nightjar".into()];
        new.posts[0].address = "elsewhere".into();
        new.posts.remove(1);
        new.plans.remove(3);
        new.plans[0].steps.pop();
        let details: Vec<String> = diff(&old, &new).into_iter().map(|c| c.detail).collect();
        assert_eq!(
            details,
            [
                "post p-001 changed: address, duress words",
                "post p-002 removed",
                "plan burglary (every post) changed",
                "plan default (every post) removed",
            ]
        );
        assert!(diff(&old, &old).is_empty());
    }
}
