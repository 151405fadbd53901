//! `vigil history POST` (one post's incidents and events, newest first)
//! and `vigil report` (per-post figures for a period, CSV or JSON).

use anyhow::Result;
use clap::Args;
use vigil_ops::api::MAX_PAGE_SIZE;
use vigil_proto::v1::{GetPostHistoryRequest, GetReportRequest, HistoryItem, Report};

use super::{Connection, connect::connect, fail, render, unary};
use crate::Usage;

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    #[command(flatten)]
    conn: Connection,
    /// The post.
    post: String,
    /// From this time (inclusive; RFC 3339, e.g. 2026-11-26T08:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Up to this time (exclusive; RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only incidents and events of this category (repeat for more), e.g.
    /// burglary, fire, test, open_close.
    #[arg(long = "category", value_name = "CATEGORY")]
    categories: Vec<String>,
    /// At most this many items, newest first.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print a JSON list of history items (each an incident or an event).
    #[arg(long)]
    json: bool,
}

fn time(flag: &str, v: &Option<String>) -> Result<Option<prost_types::Timestamp>, Usage> {
    v.as_deref()
        .map(|s| render::parse_rfc3339(s).map_err(|e| Usage(format!("{flag}: {e}"))))
        .transpose()
}

/// Both ends of a period, from not after to.
fn period(
    from: (&str, &Option<String>),
    to: (&str, &Option<String>),
) -> Result<
    (
        Option<prost_types::Timestamp>,
        Option<prost_types::Timestamp>,
    ),
    Usage,
> {
    let (f, t) = (time(from.0, from.1)?, time(to.0, to.1)?);
    if let (Some(a), Some(b)) = (&f, &t)
        && (a.seconds, a.nanos) > (b.seconds, b.nanos)
    {
        return Err(Usage(format!("{} is after {}", from.0, to.0)));
    }
    Ok((f, t))
}

impl HistoryArgs {
    fn request(&self) -> Result<GetPostHistoryRequest, Usage> {
        if self.post.is_empty() {
            return Err(Usage("the post id is empty".into()));
        }
        if self.limit == 0 {
            return Err(Usage("--limit must be at least 1".into()));
        }
        let (from_time, to_time) = period(("--since", &self.since), ("--until", &self.until))?;
        let mut categories = Vec::new();
        for name in &self.categories {
            let c = vigil_ops::engine::category_from_name(name).ok_or_else(|| {
                Usage(format!(
                    "--category {name:?}: not an event category (e.g. burglary, fire, panic, \
                     duress, test, open_close, video_detection)"
                ))
            })?;
            categories.push(c as i32);
        }
        Ok(GetPostHistoryRequest {
            post_id: self.post.clone(),
            from_time,
            to_time,
            categories,
            page_size: u32::try_from(self.limit.min(MAX_PAGE_SIZE)).unwrap_or(u32::MAX),
            page_token: String::new(),
        })
    }
}

/// One history item as a line: time, then the incident or event.
fn history_line(item: &HistoryItem) -> String {
    let at = render::when(item.at.as_ref());
    match (&item.incident, &item.event) {
        (Some(inc), _) => format!(
            "{at}  incident {} {} ({}): {}",
            inc.id,
            render::state(inc.state),
            vigil_ops::engine::category_name(inc.category()),
            inc.title
        ),
        (None, Some(e)) => format!("{at}  event    {}", render::event_line(e)),
        (None, None) => format!("{at}  (empty item)"),
    }
}

pub(crate) async fn history(args: HistoryArgs) -> Result<()> {
    let mut request = args.request()?;
    let mut s = connect(&args.conn).await?;
    let mut found = Vec::new();
    let mut more = false;
    while found.len() < args.limit {
        let want = (args.limit - found.len()).min(MAX_PAGE_SIZE);
        request.page_size = u32::try_from(want).unwrap_or(u32::MAX);
        let page = unary(s.client.get_post_history(request.clone()))
            .await
            .map_err(|e| fail(&s, &e))?;
        found.extend(page.items);
        more = !page.next_page_token.is_empty();
        if !more {
            break;
        }
        request.page_token = page.next_page_token;
    }
    if args.json {
        let list: Vec<_> = found
            .iter()
            .map(|i| render::json(i, "HistoryItem"))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if found.is_empty() && !more {
        println!("nothing in the history of {} for this range", args.post);
        return Ok(());
    }
    for item in &found {
        println!("{}", history_line(item));
    }
    if more {
        println!(
            "(more history: raise --limit, now {}, or narrow --since/--until)",
            args.limit
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    conn: Connection,
    /// Start of the period (inclusive; RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    from: String,
    /// End of the period (exclusive; RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: String,
    /// Only this post (repeat for more; default: every post).
    #[arg(long = "post", value_name = "POST")]
    posts: Vec<String>,
    /// Print the report as JSON instead of CSV.
    #[arg(long)]
    json: bool,
}

impl ReportArgs {
    fn request(&self) -> Result<GetReportRequest, Usage> {
        let (from, to) = (Some(self.from.clone()), Some(self.to.clone()));
        let (from_time, to_time) = period(("--from", &from), ("--to", &to))?;
        if from_time == to_time {
            return Err(Usage("--from equals --to: the period is empty".into()));
        }
        if let Some(p) = self.posts.iter().find(|p| p.is_empty()) {
            return Err(Usage(format!("--post {p:?}: an empty post id")));
        }
        let cap = vigil_ops::store::shapes::MAX_POSTS_PER_QUERY;
        if self.posts.len() > cap {
            return Err(Usage(format!(
                "at most {cap} --post per report (name none for every post)"
            )));
        }
        Ok(GetReportRequest {
            from_time,
            to_time,
            post_ids: self.posts.clone(),
        })
    }
}

pub(crate) async fn report(args: ReportArgs) -> Result<()> {
    let request = args.request()?;
    let mut s = connect(&args.conn).await?;
    let report: Report = unary(s.client.get_report(request))
        .await
        .map_err(|e| fail(&s, &e))?;
    if args.json {
        println!("{}", render::json(&report, "Report"));
    } else {
        print!("{}", vigil_ops::report::to_csv(&report));
    }
    Ok(())
}
