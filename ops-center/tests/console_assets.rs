//! The console's TypeScript: type-checked by `tsc`, and the committed
//! JavaScript (what the binary embeds) exactly what `tsc` makes of the
//! sources today. Without `tsc` the test says so and passes, unless
//! `VIGIL_REQUIRE_TSC=1` (CI, which installs `typescript` with npm).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

fn tsc_version() -> Option<String> {
    let out = Command::new("tsc").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn committed_javascript_is_what_tsc_makes_of_the_sources() {
    let Some(version) = tsc_version() else {
        assert!(
            std::env::var("VIGIL_REQUIRE_TSC").as_deref() != Ok("1"),
            "VIGIL_REQUIRE_TSC=1 but no tsc on PATH (npm install -g typescript)"
        );
        eprintln!("skipped: no tsc on PATH (npm install -g typescript)");
        return;
    };
    let dir = console_dir();
    let config = dir.join("tsconfig.json");
    let check = Command::new("tsc")
        .args(["--noEmit", "-p"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "tsc --noEmit ({version}):\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = tempfile::tempdir().unwrap();
    let emit = Command::new("tsc")
        .arg("-p")
        .arg(&config)
        .arg("--outDir")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(emit.status.success(), "tsc ({version}) failed");
    let names = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".js"))
            .collect()
    };
    let committed = names(&dir.join("js"));
    assert_eq!(
        names(out.path()),
        committed,
        "console/js holds other files than tsc makes"
    );
    for name in &committed {
        let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
        let kept = std::fs::read_to_string(dir.join("js").join(name)).unwrap();
        assert!(
            fresh == kept,
            "console/js/{name} is not what {version} makes of console/src: \
             run `tsc -p ops-center/console/tsconfig.json` and commit the result"
        );
    }
}

#[test]
fn every_script_is_served() {
    let served: BTreeSet<String> = vigil_ops::console::assets::FILES
        .iter()
        .filter_map(|(path, _, _)| path.strip_prefix("/js/"))
        .map(str::to_owned)
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(console_dir().join("js"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(served, on_disk, "assets::FILES and console/js differ");
}
