//! `vigil site import | export` and the plan in `vigil incidents ID`, as
//! the real binary against a real operations center on 127.0.0.1.

use vigil_ops::{site, store::Store};
use vigil_pki::Role;

#[path = "support/client.rs"]
mod center;

use center::{Center, alarm, now_secs, run_vigil};

/// `vigil site SUB FLAGS... REST...`.
fn site_args(sub: &str, flags: &[String], rest: &[&str]) -> Vec<String> {
    let mut v = vec!["site".to_owned(), sub.to_owned()];
    v.extend(flags.iter().cloned());
    v.extend(rest.iter().map(|s| (*s).to_owned()));
    v
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SITE: &str = r#"
[[post]]
id = "p-1"
name = "Embassy Vienna"
timezone = "Europe/Vienna"
duress_words = ["bluebird"]
passcodes = ["4711", "0815"]
[[post.contact]]
role = "guard"
name = "Gate desk"
phone = "+43 1 555 0100"
notes = "24/7"

[[plan]]
category = "burglary"
post = "p-1"
steps = [
  { kind = "verify_cameras", text = "Look at the zone's camera" },
  { kind = "call_contact", role = "guard", text = "Ask the gate for a patrol" },
]

[[plan]]
category = "duress"
steps = [{ kind = "dispatch", text = "Police at once; never call the post" }]
"#;

const BAD: &str = r#"
[[post]]
id = "p-1"
name = "Embassy Vienna"
timezone = "GMT+1 hours"
colour = "red"

[[plan]]
category = "holdup"
steps = [{ kind = "call_contact", role = "premises", text = "Call reception" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_files_import_export_and_show_with_incidents() {
    let center = Center::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("site.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&good, SITE).unwrap();
    std::fs::write(&bad, BAD).unwrap();
    let (good, bad) = (good.display().to_string(), bad.display().to_string());
    let admin = center.flags(Role::Admin, "ada");
    let alice = center.flags(Role::Analyst, "alice");

    // A bad file: exit 64, every problem named, nothing stored.
    let out = run_vigil(site_args("import", &admin, &[&bad]), vec![]).await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("3 problems, nothing imported"), "{err}");
    assert!(err.contains("line 5: [[post]] #1, timezone"), "{err}");
    assert!(err.contains("[[post]] #1, colour: unknown key"), "{err}");
    assert!(
        err.contains("[[plan]] #1 step #1, role: a holdup plan must never call the premises"),
        "{err}"
    );
    assert_eq!(center.store().site().unwrap().posts.len(), 0);

    // An analyst may not import.
    let out = run_vigil(site_args("import", &alice, &[&good]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );

    let out = run_vigil(site_args("import", &admin, &[&good]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("post p-1 added\n"), "{said}");
    assert!(said.contains("plan burglary for p-1 added\n"), "{said}");
    assert!(
        said.contains("3 changes; 1 post records and 2 plans stored"),
        "{said}"
    );
    let out = run_vigil(site_args("import", &admin, &[&good]), vec![]).await;
    assert!(
        text(&out.stdout).contains("no change"),
        "{}",
        text(&out.stdout)
    );

    // Export gives back the same document, secrets included.
    let sam = center.flags(Role::Supervisor, "sam");
    let out = run_vigil(site_args("export", &sam, &[]), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported = text(&out.stdout);
    assert_eq!(site::parse(&exported).unwrap(), site::parse(SITE).unwrap());
    assert!(exported.contains("bluebird"));
    let out = run_vigil(site_args("export", &alice, &[]), vec![]).await;
    assert_eq!(out.status.code(), Some(1));

    // An incident shows its plan, whom each call reaches, and the post's
    // contacts; an analyst sees that secrets exist, not what they are.
    center.submit(vec![alarm("p-1", 1, 1, now_secs())]).await;
    let mut args = vec!["incidents".to_owned()];
    args.extend(alice.iter().cloned());
    args.push("inc-000001".into());
    let out = run_vigil(args, vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("plan (burglary, p-1):"), "{shown}");
    assert!(
        shown.contains(
            "2. [call guard] Ask the gate for a patrol\n       → Gate desk +43 1 555 0100"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("post p-1 (Embassy Vienna, Europe/Vienna)"),
        "{shown}"
    );
    assert!(shown.contains("duress words: 1, passcodes: 2"), "{shown}");
    assert!(
        !shown.contains("bluebird") && !shown.contains("4711"),
        "{shown}"
    );

    // With --json: the incident detail's fields and the plan under `plan`.
    let mut args = vec!["incidents".to_owned()];
    args.extend(alice.iter().cloned());
    args.extend(["inc-000001".into(), "--json".into()]);
    let out = run_vigil(args, vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["incident"]["id"], "inc-000001", "{v}");
    assert_eq!(v["plan"]["plan"]["post_id"], "p-1", "{v}");
    assert_eq!(
        v["plan"]["plan"]["steps"][1]["text"], "Ask the gate for a patrol",
        "{v}"
    );
    assert_eq!(v["plan"]["post"]["contacts"][0]["name"], "Gate desk", "{v}");
    assert_eq!(v["plan"]["post"]["secrets_withheld"], true, "{v}");
    center.stop().await;
}
