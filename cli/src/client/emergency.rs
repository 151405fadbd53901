//! `vigil emergency`: show, start or end emergency mode (issue #17).

use anyhow::Result;
use clap::{Args, Subcommand};
use vigil_proto::v1::{EmergencyMode, GetEmergencyRequest, Priority, SetEmergencyRequest};

use super::{Connection, connect::connect, fail, render, unary, workflow::parse_duration};
use crate::Usage;

#[derive(Debug, Args)]
pub(crate) struct EmergencyArgs {
    #[command(subcommand)]
    action: Option<EmergencyAction>,
    #[command(flatten)]
    conn: Connection,
    /// Print JSON (`{}` when off).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum EmergencyAction {
    /// Start emergency mode (supervisors, admins): for a while, new incidents
    /// below the server's priority threshold are logged, not queued.
    Start {
        #[command(flatten)]
        conn: Connection,
        /// How long: seconds, or with a unit: 90s, 30m, 2h; longer than the
        /// server's max_emergency_secs is refused.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (required; recorded in the audit trail).
        #[arg(long)]
        reason: String,
        /// Only these posts, separated by commas (default: the whole region).
        #[arg(long, value_delimiter = ',', value_name = "POST,...")]
        posts: Vec<String>,
    },
    /// End emergency mode now.
    End {
        #[command(flatten)]
        conn: Connection,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// One line for people: `emergency mode ON until … over the whole region
/// (P3 and P4 logged): storm; started by sam`.
pub(crate) fn banner(m: &EmergencyMode) -> String {
    let scope = if m.post_ids.is_empty() {
        "the whole region".to_owned()
    } else {
        format!("posts {}", m.post_ids.join(", "))
    };
    let keep = Priority::try_from(m.keep_priority)
        .unwrap_or(Priority::P2)
        .as_str_name()
        .trim_start_matches("PRIORITY_")
        .to_owned();
    format!(
        "EMERGENCY MODE until {} over {scope}: incidents less urgent than {keep} are logged, not queued ({}; started by {})",
        render::when(m.until.as_ref()),
        m.reason,
        m.started_by
    )
}

pub(crate) async fn run(a: EmergencyArgs) -> Result<()> {
    let request = match &a.action {
        None => None,
        Some(EmergencyAction::Start {
            duration,
            reason,
            posts,
            ..
        }) => {
            let secs =
                parse_duration(duration).map_err(|e| Usage(format!("--for {duration:?}: {e}")))?;
            if reason.trim().is_empty() {
                return Err(Usage("--reason: say why".into()).into());
            }
            Some(SetEmergencyRequest {
                duration_seconds: secs,
                post_ids: posts.iter().map(|p| p.trim().to_owned()).collect(),
                reason: reason.clone(),
            })
        }
        Some(EmergencyAction::End { reason, .. }) => Some(SetEmergencyRequest {
            duration_seconds: 0,
            post_ids: Vec::new(),
            reason: reason.clone().unwrap_or_default(),
        }),
    };
    // The connection flags go with the subcommand (`vigil emergency start
    // --for 2h --reason R --server S`), or with `vigil emergency` alone.
    let conn = match &a.action {
        Some(EmergencyAction::Start { conn, .. } | EmergencyAction::End { conn, .. }) => conn,
        None => &a.conn,
    };
    let mut s = connect(conn).await?;
    let answer = match request {
        None => unary(s.client.get_emergency(GetEmergencyRequest {})).await,
        Some(r) => unary(s.client.set_emergency(r)).await,
    }
    .map_err(|e| fail(&s, &e))?;
    if a.json {
        println!("{}", render::json(&answer, "GetEmergencyResponse"));
        return Ok(());
    }
    match &answer.emergency {
        Some(m) => println!("{}", banner(m)),
        None => println!("emergency mode is off"),
    }
    Ok(())
}
