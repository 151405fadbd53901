//! `vigil replay`: stored events as JSON lines, one `StoredEvent` per line,
//! on stdout or into `--to-file`, with a progress line on stderr. While the
//! server reads without finding anything to send it reports its progress
//! (`ReplayProgress`, every few seconds); that goes to stderr too, never
//! into the JSON lines.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use clap::{Args, ValueEnum};
use vigil_proto::v1::{EventKind, Pacing, ReplayProgress, ReplayRequest};

use super::{Connection, connect::connect, fail, render, status_message};
use crate::Usage;

/// A server of this version is never silent for more than a few seconds
/// (events, or progress while it reads or waits out a paced gap); an
/// older one pauses at most 60 s between two events whatever the pacing.
/// Silence much longer than that means the connection is gone.
const STALL_AFTER: Duration = Duration::from_secs(120);
/// How often the progress line is redrawn on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only events of this post (repeat for more; default: every post).
    #[arg(long = "post", value_name = "POST")]
    posts: Vec<String>,
    /// Only events of this kind (repeat for more; default: every kind).
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    kinds: Vec<KindArg>,
    /// Received at or after this time (RFC 3339, e.g. 2026-11-26T08:00:00Z).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Received before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// From this seq on (inclusive; needs exactly one --post).
    #[arg(long, value_name = "SEQ")]
    from_seq: Option<u64>,
    /// Up to this seq (inclusive; needs exactly one --post).
    #[arg(long, value_name = "SEQ")]
    to_seq: Option<u64>,
    /// fast (as fast as we read), original (the original gaps), or Nx
    /// (gaps divided by N, e.g. 10x).
    #[arg(long, default_value = "fast", value_name = "PACE")]
    pace: String,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Write the JSON lines to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    to_file: Option<PathBuf>,
    /// Read events pruned into this archive folder (`[retention]
    /// archive_dir`) instead of asking the operations center: the same
    /// filters and order, no pacing, no connection.
    #[arg(long, value_name = "DIR")]
    archive: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Alarm,
    Camera,
    Health,
}

impl From<KindArg> for EventKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Alarm => EventKind::Alarm,
            KindArg::Camera => EventKind::Camera,
            KindArg::Health => EventKind::Health,
        }
    }
}

/// `fast`, `original`, `10x`, `2.5x` → pacing and speed.
pub(crate) fn parse_pace(s: &str) -> Result<(Pacing, f64), String> {
    match s {
        "fast" => Ok((Pacing::AsFastAsPossible, 0.0)),
        "original" => Ok((Pacing::Original, 0.0)),
        _ => {
            let speed = s
                .strip_suffix('x')
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|n| n.is_finite() && *n > 0.0)
                .ok_or_else(|| {
                    format!("{s:?}: use fast, original, or a speed-up like 10x or 2.5x")
                })?;
            Ok((Pacing::Speedup, speed))
        }
    }
}

impl ReplayArgs {
    /// The request, with every flag checked (bad ones are usage errors).
    fn request(&self) -> Result<ReplayRequest, Usage> {
        let time = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| render::parse_rfc3339(s).map_err(|e| Usage(format!("{flag}: {e}"))))
                .transpose()
        };
        let (pacing, speed) = parse_pace(&self.pace).map_err(|e| Usage(format!("--pace {e}")))?;
        if (self.from_seq.is_some() || self.to_seq.is_some()) && self.posts.len() != 1 {
            return Err(Usage(
                "--from-seq and --to-seq need exactly one --post (seqs are per post)".into(),
            ));
        }
        if let (Some(f), Some(t)) = (self.from_seq, self.to_seq)
            && f > t
        {
            return Err(Usage(format!("--from-seq {f} is after --to-seq {t}")));
        }
        if self.from_seq == Some(0) || self.to_seq == Some(0) {
            return Err(Usage("seqs start at 1".into()));
        }
        Ok(ReplayRequest {
            post_ids: self.posts.clone(),
            kinds: self
                .kinds
                .iter()
                .map(|k| EventKind::from(*k) as i32)
                .collect(),
            from_time: time("--from", &self.from)?,
            to_time: time("--to", &self.to)?,
            from_seq: self.from_seq.unwrap_or(0),
            to_seq: self.to_seq.unwrap_or(0),
            pacing: pacing as i32,
            speed,
            limit: self.limit.unwrap_or(0),
        })
    }
}

/// `vigil replay --archive DIR`: the archive's events the request selects.
fn from_archive(
    dir: &std::path::Path,
    request: &ReplayRequest,
    out: &mut dyn Write,
) -> Result<u64> {
    let ms = |t: &Option<prost_types::Timestamp>| {
        t.map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos) / 1_000_000)
    };
    let filter = vigil_ops::store::archive::ArchiveFilter {
        post_ids: request.post_ids.clone(),
        kinds: request.kinds.clone(),
        from_ms: ms(&request.from_time),
        to_ms: ms(&request.to_time),
        from_seq: request.from_seq,
        to_seq: (request.to_seq != 0).then_some(request.to_seq),
        limit: request.limit,
    };
    let events = vigil_ops::store::archive::read(dir, &filter)
        .with_context(|| format!("reading the archive in {}", dir.display()))?;
    for event in &events {
        writeln!(out, "{}", render::json_line(event, "StoredEvent"))
            .context("writing the replay")?;
    }
    Ok(events.len() as u64)
}

pub(crate) async fn run(args: ReplayArgs) -> Result<()> {
    let request = args.request()?;
    if let Some(dir) = &args.archive {
        if !dir.join(vigil_ops::store::archive::MANIFEST).is_file() {
            return Err(Usage(format!(
                "--archive {}: no {} there (not an archive folder)",
                dir.display(),
                vigil_ops::store::archive::MANIFEST
            ))
            .into());
        }
        let mut out: Box<dyn Write> = match &args.to_file {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .map_err(|e| Usage(format!("--to-file {}: {e}", path.display())))?,
            )),
            None => Box::new(std::io::LineWriter::new(std::io::stdout())),
        };
        let count = from_archive(dir, &request, &mut *out)?;
        out.flush().context("writing the replay")?;
        eprintln!("replay: {count} archived events from {}", dir.display());
        return Ok(());
    }
    let mut s = connect(&args.conn).await?;
    let mut out: Box<dyn Write> = match &args.to_file {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| Usage(format!("--to-file {}: {e}", path.display())))?,
        )),
        None => Box::new(std::io::LineWriter::new(std::io::stdout())),
    };
    let where_to = args
        .to_file
        .as_ref()
        .map_or_else(String::new, |p| format!(" to {}", p.display()));
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_drawn = Instant::now();
    let mut count = 0u64;

    let mut stream = s
        .client
        .replay(request)
        .await
        .map_err(|e| fail(&s, &e))?
        .into_inner();
    let result = loop {
        match tokio::time::timeout(STALL_AFTER, stream.message()).await {
            Err(_) => break Err(format!("nothing heard for {}s", STALL_AFTER.as_secs())),
            Ok(Ok(None)) => break Ok(()),
            Ok(Err(status)) => break Err(status_message(&status, &s)),
            Ok(Ok(Some(item))) => {
                if let Some(p) = &item.progress {
                    let line = progress_line(p);
                    if tty {
                        eprint!("\r\x1b[Kreplay: {count} events{where_to}; {line}");
                        last_drawn = Instant::now();
                    } else {
                        eprintln!("replay: {line}");
                    }
                }
                let Some(event) = item.event else { continue };
                writeln!(out, "{}", render::json_line(&event, "StoredEvent"))
                    .context("writing the replay")?;
                count += 1;
                if tty && last_drawn.elapsed() >= PROGRESS_EVERY {
                    eprint!("\rreplay: {count} events{where_to}");
                    last_drawn = Instant::now();
                }
            }
        }
    };
    out.flush().context("writing the replay")?;
    drop(out);
    if let Some(path) = &args.to_file {
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let clear = if tty { "\r\x1b[K" } else { "" };
    match result {
        Ok(()) => {
            eprintln!("{clear}replay: {count} events{where_to} in {secs:.1}s");
            Ok(())
        }
        Err(why) => Err(anyhow!(
            "replay interrupted after {count} events{where_to}: {why}"
        )),
    }
}

/// What a progress report says, for people.
fn progress_line(p: &ReplayProgress) -> String {
    let at = match (&p.position, p.position_seq) {
        (Some(t), 0) => format!(", at {}", render::when(Some(t))),
        (Some(t), seq) => format!(", at seq {seq} ({})", render::when(Some(t))),
        (None, 0) => String::new(),
        (None, seq) => format!(", at seq {seq}"),
    };
    format!(
        "still reading: {} stored events read, {} sent{at}",
        p.examined, p.sent
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_are_fast_original_or_a_speedup() {
        assert_eq!(parse_pace("fast"), Ok((Pacing::AsFastAsPossible, 0.0)));
        assert_eq!(parse_pace("original"), Ok((Pacing::Original, 0.0)));
        assert_eq!(parse_pace("10x"), Ok((Pacing::Speedup, 10.0)));
        assert_eq!(parse_pace("2.5x"), Ok((Pacing::Speedup, 2.5)));
        for bad in ["", "x", "0x", "-2x", "10", "slow", "infx", "NaNx"] {
            assert!(parse_pace(bad).is_err(), "{bad}");
        }
    }
}
