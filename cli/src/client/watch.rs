//! `vigil watch`: the live incident feed in the terminal.
//!
//! It starts with the open and acknowledged incidents (or after `--cursor`),
//! then prints one line per change. When the connection drops, the server
//! stops, or nothing (not even a heartbeat) arrives for [`STALL_AFTER`], it
//! reconnects with the cursor of the last item it printed, waiting
//! [`MIN_BACKOFF`] doubling up to [`MAX_BACKOFF`] between tries and saying
//! so on stderr; the server then sends exactly the changes after that
//! cursor. A `Resync` item (we fell behind) resumes at once from its cursor.
//! Another command can run the same loop (`vigil dev` shows the feed of its
//! own ops center) by building a [`WatchArgs`] and calling [`run`].
//!
//! Refusals (a bad certificate, a bad cursor) end the watch with an error,
//! and so does any failure before the first item arrived: retrying cannot
//! fix a server that never answered us.
//!
//! The first screen (the open and acknowledged incidents) is printed most
//! urgent first: by priority, then escalation level, then oldest. The line
//! that ends it names the cursor, and so does the last word of a watch
//! stopped with Ctrl-C or `--count`, so a person can resume by hand with
//! `--cursor`. Colour only when stdout is a terminal and `NO_COLOR` is not
//! set.

use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use tonic::Status;
use vigil_proto::v1::{FeedItem, WatchIncidentsRequest, feed_item::Item};

use tokio_util::sync::CancellationToken;

use super::{
    Connection,
    connect::{connect, connect_after},
    fail, render, status_message, transient,
};

/// First wait before reconnecting...
pub(crate) const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// ...doubling up to this.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// No item for this long means the connection is dead (the server sends a
/// heartbeat every 15 s when nothing happens).
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(45);

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// Only incidents of this post (repeat for more).
    #[arg(long = "post", value_name = "POST")]
    pub(crate) posts: Vec<String>,
    /// Start after this cursor (from an earlier watch) instead of with the
    /// open incidents.
    #[arg(long)]
    pub(crate) cursor: Option<String>,
    /// Exit after printing this many incident updates (snapshot included).
    #[arg(long, value_name = "N")]
    pub(crate) count: Option<u64>,
    /// Print every feed item (heartbeats too) as one JSON object per line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Why one stream ended.
enum End {
    /// Printed `--count` updates.
    Done,
    /// Fell behind: resume from the cursor now.
    Resync,
    /// The connection or the server went away.
    Lost(String),
}

/// `vigil watch`: follows the feed until `--count` or Ctrl-C, then says on
/// stderr which cursor resumes it.
pub(crate) async fn run(args: WatchArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let on_ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_ctrl_c.cancel();
        }
    });
    let mut cursor = args.cursor.clone().unwrap_or_default();
    let result = run_until(&args, &mut cursor, &stop).await;
    if !args.json && !cursor.is_empty() {
        eprintln!("vigil watch: at cursor {cursor}; resume with: vigil watch --cursor {cursor}");
    }
    result
}

/// Follows the feed from `cursor` (empty: a fresh snapshot) until `--count`
/// updates were printed or `stop`; `cursor` is left at the last item
/// printed. `vigil dev` runs its feed through this too.
pub(crate) async fn run_until(
    args: &WatchArgs,
    cursor: &mut String,
    stop: &CancellationToken,
) -> Result<()> {
    tokio::select! {
        () = stop.cancelled() => Ok(()),
        result = follow_feed(args, cursor) => result,
    }
}

async fn follow_feed(args: &WatchArgs, cursor: &mut String) -> Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let mut s = connect(&args.conn).await?;
    let paint = if args.json {
        render::Paint::default()
    } else {
        render::Paint::for_stdout()
    };
    let mut shown = 0u64;
    // Reset to MIN_BACKOFF by every item received; `None` until the first.
    let mut backoff = None;
    loop {
        let request = WatchIncidentsRequest {
            cursor: cursor.clone(),
            post_ids: args.posts.clone(),
            include_logged: false,
        };
        let opened = tokio::time::timeout(STALL_AFTER, s.client.watch_incidents(request)).await;
        let end = match opened {
            Err(_) => End::Lost("no answer to the watch request".into()),
            Ok(Err(status)) if !transient(&status) => return Err(fail(&s, &status)),
            Ok(Err(status)) => End::Lost(status_message(&status, &s)),
            Ok(Ok(response)) => {
                let mut stream = response.into_inner();
                let mut out = Printer {
                    args,
                    paint,
                    shown: &mut shown,
                    snapshot: Vec::new(),
                };
                match follow(&mut out, &mut stream, cursor, &mut backoff).await {
                    Ok(end) => end,
                    Err(status) if transient(&status) => {
                        End::Lost(format!("feed interrupted: {}", status_message(&status, &s)))
                    }
                    Err(status) => return Err(fail(&s, &status)),
                }
            }
        };
        match (end, backoff) {
            (End::Done, _) => return Ok(()),
            (End::Resync, _) => {
                eprintln!("vigil watch: fell behind the feed; resuming from cursor {cursor}");
            }
            (End::Lost(why), None) => return Err(anyhow!(why)),
            (End::Lost(why), Some(wait)) => {
                let from = if cursor.is_empty() {
                    "with a fresh snapshot".to_owned()
                } else {
                    format!("from cursor {cursor}")
                };
                eprintln!(
                    "vigil watch: {why}; reconnecting in {:.1}s {from}",
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                backoff = Some((wait * 2).min(MAX_BACKOFF));
                // With several servers (replicas of one operations center,
                // whose cursors agree), the next one that answers.
                if args.conn.server.contains(',') {
                    match connect_after(&args.conn, Some(&s.server)).await {
                        Ok(next) => {
                            if next.server != s.server {
                                eprintln!("vigil watch: now following {}", next.server);
                            }
                            s = next;
                        }
                        Err(e) => eprintln!("vigil watch: {e:#}"),
                    }
                }
            }
        }
    }
}

/// Where one stream's items go: stdout, the snapshot held back until it is
/// complete so that it can be printed most urgent first.
struct Printer<'a> {
    args: &'a WatchArgs,
    paint: render::Paint,
    shown: &'a mut u64,
    snapshot: Vec<FeedItem>,
}

impl Printer<'_> {
    /// Prints `item` (or holds it back if it is part of the snapshot);
    /// `true` once `--count` updates are out.
    fn print(&mut self, item: FeedItem) -> bool {
        match &item.item {
            Some(Item::Update(u)) if u.snapshot => {
                self.snapshot.push(item);
                false
            }
            Some(Item::SnapshotComplete(_)) => {
                let mut held = std::mem::take(&mut self.snapshot);
                held.sort_by_key(|i| match &i.item {
                    Some(Item::Update(u)) => u.incident.as_ref().map(render::urgency),
                    _ => None,
                });
                for one in held {
                    if self.print_one(&one) {
                        return true;
                    }
                }
                self.print_one(&item)
            }
            _ => self.print_one(&item),
        }
    }

    fn print_one(&mut self, item: &FeedItem) -> bool {
        if self.args.json {
            println!("{}", render::json_line(item, "FeedItem"));
        } else if let Some(line) = render::feed_line(item, self.paint) {
            println!("{line}");
        }
        if matches!(item.item, Some(Item::Update(_))) {
            *self.shown += 1;
            return self.args.count.is_some_and(|n| *self.shown >= n);
        }
        false
    }
}

/// Prints one stream's items until it ends. `cursor` follows what was
/// printed: snapshot items only move it once the snapshot is complete (a
/// reconnect in the middle of a snapshot must start a fresh one).
async fn follow(
    out: &mut Printer<'_>,
    stream: &mut tonic::Streaming<FeedItem>,
    cursor: &mut String,
    backoff: &mut Option<Duration>,
) -> Result<End, Status> {
    loop {
        let item = match tokio::time::timeout(STALL_AFTER, stream.message()).await {
            Err(_) => {
                return Ok(End::Lost(format!(
                    "nothing heard for {}s",
                    STALL_AFTER.as_secs()
                )));
            }
            Ok(Ok(Some(item))) => item,
            Ok(Ok(None)) => return Ok(End::Lost("the server ended the feed".into())),
            Ok(Err(status)) => return Err(status),
        };
        *backoff = Some(MIN_BACKOFF);
        let in_snapshot = matches!(&item.item, Some(Item::Update(u)) if u.snapshot);
        if !in_snapshot && !item.cursor.is_empty() {
            cursor.clone_from(&item.cursor);
        }
        let resync = matches!(item.item, Some(Item::Resync(_)));
        if out.print(item) {
            return Ok(End::Done);
        }
        if resync {
            return Ok(End::Resync);
        }
    }
}
