//! The dev region's post records, contacts and action plans: a site file
//! written to `DIR/sites.toml` on the first start (kept afterwards, so it
//! can be edited and tried), imported through the API as the dev
//! supervisor once the operations center answers.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vigil_proto::v1::ImportSiteRequest;

use crate::client::{Connection, connect::connect, unary};

/// Name of the site file in the dev folder.
pub(super) const FILE: &str = "sites.toml";
/// How many times the import is tried while the API starts...
const ATTEMPTS: u32 = 20;
/// ...and how long between two tries.
const RETRY: Duration = Duration::from_millis(500);

const CITIES: &[(&str, &str, &str)] = &[
    (
        "Embassy Vienna",
        "Ringstrasse 1, 1010 Wien",
        "Europe/Vienna",
    ),
    (
        "Embassy Nairobi",
        "United Nations Avenue, Gigiri",
        "Africa/Nairobi",
    ),
    (
        "Consulate Karachi",
        "Abdullah Haroon Road, Saddar",
        "Asia/Karachi",
    ),
    (
        "Embassy Lima",
        "Avenida La Encalada 17, Surco",
        "America/Lima",
    ),
    ("Consulate Erbil", "100 Meter Road, Ankawa", "Asia/Baghdad"),
    ("Embassy Manila", "Roxas Boulevard 1201", "Asia/Manila"),
];

const ZONES: &[&str] = &[
    "Main gate",
    "Chancery front door",
    "Chancery back door",
    "Visa section",
    "Ground floor windows",
    "Roof access",
    "Generator room",
    "Server room",
    "Residence door",
    "Residence windows",
    "Garage",
    "Perimeter fence north",
    "Perimeter fence south",
    "Archive",
    "Strong room",
    "Guard house",
];

/// A realistic site file for `posts` (p-001, ...): each post with an
/// address, time zone, named zones and cameras, contacts in calling order,
/// a duress word and a passcode; plans for the categories the simulated
/// panels raise, one post with an override, and duress and hold-up plans
/// that never call the premises.
pub(super) fn document(posts: &[String]) -> String {
    let mut s = String::from(
        "# Post records and action plans of the dev region, written by `vigil dev`\n\
         # on its first start and imported at every start (edit and restart, or\n\
         # `vigil site import` it). Format: docs/ops-center.md.\n\n",
    );
    for (i, post) in posts.iter().enumerate() {
        let (name, address, tz) = CITIES[i % CITIES.len()];
        let n = i + 1;
        let _ = write!(
            s,
            "[[post]]\nid = \"{post}\"\nname = \"{name}\"\naddress = \"{address}\"\n\
             timezone = \"{tz}\"\nduress_words = [\"nightingale-{n}\"]\npasscodes = [\"{}\"]\n\
             test_interval_hours = 24\n",
            4700 + n
        );
        for (role, who, phone, notes) in [
            (
                "guard",
                "Guard force desk",
                format!("+1 555 01{n:02}"),
                "24/7",
            ),
            (
                "duty_officer",
                "Regional security officer",
                format!("+1 555 02{n:02}"),
                "secure line after hours",
            ),
            (
                "police",
                "Local police liaison",
                format!("+1 555 03{n:02}"),
                "",
            ),
            (
                "premises",
                "Post reception",
                format!("+1 555 04{n:02}"),
                "office hours",
            ),
        ] {
            let _ = write!(
                s,
                "[[post.contact]]\nrole = \"{role}\"\nname = \"{who}\"\nphone = \"{phone}\"\n"
            );
            if !notes.is_empty() {
                let _ = writeln!(s, "notes = \"{notes}\"");
            }
        }
        for (z, zone) in ZONES.iter().enumerate() {
            let _ = write!(s, "[[post.zone]]\nnumber = {}\nname = \"{zone}\"\n", z + 1);
        }
        let _ = write!(
            s,
            "[[post.camera]]\nid = \"cam-1\"\nname = \"Gate and front (ONVIF)\"\n\
             [[post.camera]]\nid = \"cam-2\"\nname = \"Back yard (push)\"\n"
        );
        if i == 0 {
            // The simulated panels open and close around the clock; a
            // window of most of the day keeps late-to-open rare, and the
            // late evening shows openings outside the schedule.
            let _ = write!(
                s,
                "[[post.schedule]]\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n\
                 open = \"00:00-22:00\"\nclose = \"22:00-23:30\"\ngrace_minutes = 15\n"
            );
        }
        s.push('\n');
    }
    s.push_str(PLANS);
    if let Some(first) = posts.first() {
        let _ = write!(
            s,
            "\n[[plan]]\ncategory = \"burglary\"\npost = \"{first}\"\nsteps = [\n  \
             {{ kind = \"verify_cameras\", text = \"Look at the zone's camera; the chancery doors are on cam-1\" }},\n  \
             {{ kind = \"call_contact\", role = \"premises\", text = \"Office hours: ask reception whether anyone is at the door\" }},\n  \
             {{ kind = \"call_contact\", role = \"guard\", text = \"Send the guard force unless cleared\" }},\n  \
             {{ kind = \"notify\", text = \"Tell the regional security officer in the morning report\" }},\n]\n"
        );
    }
    s
}

const PLANS: &str = r#"[[plan]]
category = "burglary"
steps = [
  { kind = "verify_cameras", text = "Look at the zone's camera" },
  { kind = "call_contact", role = "guard", text = "Send the guard force unless cleared" },
  { kind = "call_contact", role = "duty_officer", text = "Tell the duty officer" },
]

[[plan]]
category = "fire"
steps = [
  { kind = "dispatch", text = "Call the fire brigade" },
  { kind = "call_contact", role = "duty_officer", text = "Tell the duty officer" },
  { kind = "verify_cameras", text = "Check the zone's camera for smoke" },
]

[[plan]]
category = "panic"
steps = [
  { kind = "call_contact", role = "police", text = "Police at once" },
  { kind = "call_contact", role = "duty_officer", text = "Duty officer on the secure line" },
]

[[plan]]
category = "duress"
steps = [
  { kind = "call_contact", role = "police", text = "Police at once; never call the post" },
  { kind = "call_contact", role = "duty_officer", text = "Duty officer on the secure line" },
  { kind = "verify_cameras", text = "Watch the cameras without alerting anyone" },
]

[[plan]]
category = "holdup"
steps = [
  { kind = "call_contact", role = "police", text = "Police at once; never call the post" },
  { kind = "call_contact", role = "duty_officer", text = "Duty officer on the secure line" },
]

[[plan]]
category = "video_detection"
steps = [
  { kind = "verify_cameras", text = "Look at the camera: a person, and the site armed?" },
  "If so, follow the burglary plan",
]

[[plan]]
category = "default"
steps = [
  "Check the post's status and cameras",
  { kind = "call_contact", role = "duty_officer", text = "Call if in doubt" },
]
"#;

/// Writes the site file unless it is there, and returns its text.
pub(super) fn prepare(dir: &Path, posts: &[String]) -> Result<String> {
    let path = dir.join(FILE);
    if !path.exists() {
        std::fs::write(&path, document(posts))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Imports the site file through the first API that takes it (a standby
/// replica refuses), trying again while the operations centers start.
pub(super) async fn import(
    pki: PathBuf,
    apis: Vec<SocketAddr>,
    text: String,
    stop: CancellationToken,
) {
    let doc = match vigil_ops::site::parse(&text) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::error!("{FILE} not imported:\n{e}");
            return;
        }
    };
    for _ in 0..ATTEMPTS {
        for api in &apis {
            let conn = Connection {
                server: api.to_string(),
                ca: Some(pki.join("ca.pem")),
                cert: Some(pki.join("supervisor.pem")),
                key: Some(pki.join("supervisor.key")),
                crl: Some(pki.join("crl.pem")),
            };
            let Ok(mut s) = connect(&conn).await else {
                continue;
            };
            let request = ImportSiteRequest {
                site: Some(doc.clone()),
            };
            match unary(s.client.import_site(request)).await {
                Ok(r) => {
                    tracing::info!(changes = r.changes.len(), "{FILE} imported");
                    return;
                }
                Err(e) => tracing::debug!(error = %e.message(), %api, "{FILE}: not yet imported"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
    tracing::warn!("{FILE} could not be imported; try `vigil site import`");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_site_file_is_valid_for_any_number_of_posts() {
        for n in [1, 3, 8] {
            let posts: Vec<String> = (1..=n).map(|i| format!("p-{i:03}")).collect();
            let doc = vigil_ops::site::parse(&document(&posts)).unwrap();
            assert_eq!(doc.posts.len(), n);
            assert_eq!(doc.posts[0].zones.len(), ZONES.len());
            // The override of the first post, and a plan for duress.
            assert!(doc.plans.iter().any(|p| p.post_id == "p-001"));
            assert!(doc.plans.iter().any(|p| p.category == "duress"));
            // A schedule on the first post, a test interval on every post.
            assert_eq!(doc.posts[0].schedules.len(), 1);
            assert!(doc.posts[1..].iter().all(|p| p.schedules.is_empty()));
            assert!(doc.posts.iter().all(|p| p.test_interval_hours == 24));
        }
    }
}
