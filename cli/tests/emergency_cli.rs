//! `vigil emergency [start|end]`, `vigil posts` and `vigil incidents
//! --logged`, as the real binary against a real operations center on
//! 127.0.0.1.

use vigil_pki::Role;
use vigil_proto::v1::EventCategory;

#[path = "support/client.rs"]
mod center;

use center::{Center, alarm, now_secs, run_vigil};

fn args(words: &[&str], flags: &[String]) -> Vec<String> {
    let mut v: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
    v.extend(flags.iter().cloned());
    v
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_mode_from_the_command_line() {
    let center = Center::start().await;
    let sam = center.flags(Role::Supervisor, "sam");
    let alice = center.flags(Role::Analyst, "alice");

    let out = run_vigil(args(&["emergency"], &alice), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "emergency mode is off\n");

    // An analyst is refused; a bad duration is a usage error (64).
    let start = ["emergency", "start", "--for", "2h", "--reason", "storm"];
    let out = run_vigil(args(&start, &alice), vec![]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    let out = run_vigil(
        args(
            &["emergency", "start", "--for", "2 weeks", "--reason", "x"],
            &sam,
        ),
        vec![],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));

    let out = run_vigil(
        args(
            &[
                "emergency",
                "start",
                "--for",
                "2h",
                "--reason",
                "storm",
                "--posts",
                "p-1,p-2",
            ],
            &sam,
        ),
        vec![],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.starts_with("EMERGENCY MODE until "), "{said}");
    assert!(said.contains("over posts p-1, p-2"), "{said}");
    assert!(said.contains("less urgent than P2 are logged"), "{said}");
    assert!(said.contains("(storm; started by sam)"), "{said}");

    // A logged incident: left out of `incidents`, shown by `--logged`; the
    // posts list carries the banner.
    let mut power = alarm("p-1", 1, 0, now_secs());
    power.category = EventCategory::Power as i32;
    center.submit(vec![power]).await;
    let out = run_vigil(args(&["incidents"], &alice), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "no incidents\n");
    let out = run_vigil(args(&["incidents", "--logged"], &alice), vec![]).await;
    assert!(
        text(&out.stdout).contains("inc-000001"),
        "{}",
        text(&out.stdout)
    );
    let out = run_vigil(args(&["posts"], &alice), vec![]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("EMERGENCY MODE until "),
        "{}",
        text(&out.stdout)
    );

    let out = run_vigil(
        args(&["emergency", "end", "--reason", "storm passed"], &sam),
        vec![],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "emergency mode is off\n");
    let out = run_vigil(args(&["emergency", "--json"], &alice), vec![]).await;
    assert_eq!(text(&out.stdout).trim(), "{}");
    center.stop().await;
}
