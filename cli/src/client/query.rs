//! `vigil incidents [ID]` and `vigil posts`: read-only queries.

use anyhow::Result;
use clap::{Args, ValueEnum};
use vigil_ops::api::MAX_PAGE_SIZE;
use vigil_proto::v1::{
    GetEmergencyRequest, GetIncidentPlanRequest, GetIncidentRequest, IncidentState,
    ListIncidentsRequest, ListPostsRequest,
};

use super::{Connection, connect::connect, fail, render, unary};

#[derive(Debug, Args)]
pub(crate) struct IncidentsArgs {
    #[command(flatten)]
    conn: Connection,
    /// Show this incident in full (events, notes, audit trail) instead of a list.
    id: Option<String>,
    /// Only incidents in this state (repeat for more; default: open and acknowledged).
    #[arg(long = "state", value_enum, value_name = "STATE")]
    states: Vec<StateArg>,
    /// Incidents in every state, resolved ones included.
    #[arg(long, conflicts_with = "states")]
    all: bool,
    /// Only incidents of this post (repeat for more).
    #[arg(long = "post", value_name = "POST")]
    posts: Vec<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Only incidents logged in emergency mode (left out otherwise).
    #[arg(long)]
    logged: bool,
    /// Print JSON (a list of incidents, or one incident in full).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StateArg {
    Open,
    Acknowledged,
    Resolved,
}

impl From<StateArg> for IncidentState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Open => IncidentState::Open,
            StateArg::Acknowledged => IncidentState::Acknowledged,
            StateArg::Resolved => IncidentState::Resolved,
        }
    }
}

pub(crate) async fn incidents(args: IncidentsArgs) -> Result<()> {
    let mut s = connect(&args.conn).await?;
    if let Some(id) = args.id {
        let detail = unary(
            s.client
                .get_incident(GetIncidentRequest { incident_id: id }),
        )
        .await
        .map_err(|e| fail(&s, &e))?;
        let mut detail = detail;
        // The action plan and the post's contacts come with the detail; a
        // server from before that has them apart, and one from before post
        // records has neither.
        if detail.plan.is_none() {
            let incident_id = detail
                .incident
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_default();
            match unary(
                s.client
                    .get_incident_plan(GetIncidentPlanRequest { incident_id }),
            )
            .await
            {
                Ok(plan) => detail.plan = Some(plan),
                Err(e) if e.code() == tonic::Code::Unimplemented => {}
                Err(e) => return Err(fail(&s, &e)),
            }
        }
        if args.json {
            println!("{}", render::json(&detail, "IncidentDetail"));
            return Ok(());
        }
        print!("{}", render::incident_detail(&detail));
        if let Some(plan) = &detail.plan {
            print!("{}", render::incident_plan(plan));
        }
        return Ok(());
    }
    let states: Vec<i32> = if args.all {
        Vec::new()
    } else if args.states.is_empty() {
        vec![
            IncidentState::Open as i32,
            IncidentState::Acknowledged as i32,
        ]
    } else {
        args.states
            .iter()
            .map(|s| IncidentState::from(*s) as i32)
            .collect()
    };
    let mut found = Vec::new();
    let mut page_token = String::new();
    let mut more = false;
    while found.len() < args.limit {
        let want = (args.limit - found.len()).min(MAX_PAGE_SIZE);
        let page = unary(s.client.list_incidents(ListIncidentsRequest {
            states: states.clone(),
            post_ids: args.posts.clone(),
            page_size: u32::try_from(want).unwrap_or(u32::MAX),
            page_token: page_token.clone(),
            include_logged: args.logged,
        }))
        .await
        .map_err(|e| fail(&s, &e))?;
        found.extend(
            page.incidents
                .into_iter()
                .filter(|i| !args.logged || i.logged),
        );
        page_token = page.next_page_token;
        more = !page_token.is_empty();
        if !more {
            break;
        }
    }
    if args.json {
        let list: Vec<_> = found.iter().map(|i| render::json(i, "Incident")).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if found.is_empty() {
        println!("no incidents");
        return Ok(());
    }
    println!("{}", render::INCIDENT_HEADER);
    for inc in &found {
        println!("{}", render::incident_row(inc));
    }
    if more {
        println!("(more incidents: raise --limit, now {})", args.limit);
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct PostsArgs {
    #[command(flatten)]
    conn: Connection,
    /// Only this post (repeat for more; default: every known post).
    #[arg(long = "post", value_name = "POST")]
    posts: Vec<String>,
    /// Print a JSON list of posts.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn posts(args: PostsArgs) -> Result<()> {
    let mut s = connect(&args.conn).await?;
    let posts = unary(s.client.list_posts(ListPostsRequest {
        post_ids: args.posts,
    }))
    .await
    .map_err(|e| fail(&s, &e))?
    .posts;
    let emergency = unary(s.client.get_emergency(GetEmergencyRequest {}))
        .await
        .map_err(|e| fail(&s, &e))?
        .emergency;
    if args.json {
        let list: Vec<_> = posts.iter().map(|p| render::json(p, "PostInfo")).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if let Some(m) = &emergency {
        println!("{}", super::emergency::banner(m));
    }
    if posts.is_empty() {
        println!("no posts");
        return Ok(());
    }
    println!("{}", render::POST_HEADER);
    for p in &posts {
        println!("{}", render::post_row(p));
    }
    Ok(())
}
