//! `vigil notify list [--failed] [--json]` and `vigil notify retry ID`:
//! the outbound webhook notifications of the operations center
//! (supervisors and admins): what waits, what was delivered, what failed
//! and why; and a failed one sent again.

use anyhow::Result;
use clap::{Args, Subcommand};
use vigil_proto::v1::{
    ListNotificationsRequest, NotificationState, RetryNotificationRequest, WebhookNotification,
};

use super::{Connection, connect::connect, fail, render, unary};

#[derive(Debug, Subcommand)]
pub(crate) enum NotifyCommand {
    /// List notifications, newest first: pending and failed ones, or only
    /// failed (--failed), or every one (--all, delivered too).
    List(ListArgs),
    /// Put a failed notification back in the queue (it is sent again at
    /// once, its attempts counted from zero).
    Retry(RetryArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only failed notifications.
    #[arg(long, conflicts_with = "all")]
    failed: bool,
    /// Delivered ones too.
    #[arg(long)]
    all: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Print JSON (a list of notifications).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct RetryArgs {
    #[command(flatten)]
    conn: Connection,
    /// The notification's id (from `vigil notify list`).
    id: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(cmd: NotifyCommand) -> Result<()> {
    match cmd {
        NotifyCommand::List(a) => list(a).await,
        NotifyCommand::Retry(a) => retry(a).await,
    }
}

async fn list(args: ListArgs) -> Result<()> {
    let states = if args.failed {
        vec![NotificationState::Failed as i32]
    } else if args.all {
        vec![]
    } else {
        vec![
            NotificationState::Pending as i32,
            NotificationState::Failed as i32,
        ]
    };
    let mut s = connect(&args.conn).await?;
    let found = unary(s.client.list_notifications(ListNotificationsRequest {
        states,
        before_id: 0,
        limit: args.limit,
    }))
    .await
    .map_err(|e| fail(&s, &e))?
    .notifications;
    if args.json {
        let list: Vec<_> = found
            .iter()
            .map(|n| render::json(n, "WebhookNotification"))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if found.is_empty() {
        println!("no notifications");
    }
    for n in &found {
        println!("{}", line(n));
    }
    Ok(())
}

async fn retry(args: RetryArgs) -> Result<()> {
    let mut s = connect(&args.conn).await?;
    let n = unary(
        s.client
            .retry_notification(RetryNotificationRequest { id: args.id }),
    )
    .await
    .map_err(|e| fail(&s, &e))?;
    if args.json {
        println!("{}", render::json(&n, "WebhookNotification"));
    } else {
        println!("{}", line(&n));
    }
    Ok(())
}

/// One notification as a line: id, state, webhook, change, incident,
/// attempts, when, last error.
fn line(n: &WebhookNotification) -> String {
    let state = match n.state() {
        NotificationState::Pending => "pending",
        NotificationState::Delivered => "delivered",
        NotificationState::Failed => "FAILED",
        NotificationState::Unspecified => "?",
    };
    let mut out = format!(
        "{:>6}  {:<9}  {:<12}  {:<14}  {}  {}  attempts {}  {}",
        n.id,
        state,
        n.webhook,
        n.event,
        n.incident_id,
        n.post_id,
        n.attempts,
        render::when(n.next_at.as_ref()),
    );
    if !n.last_error.is_empty() {
        out.push_str(&format!("  last error: {}", n.last_error));
    }
    out
}
