// Rendering: the incident detail, the posts view and the replay form. Text
// goes in through textContent only, never as HTML.

import type { Detail, Incident, Me, PostInfo, StoredEvent } from "./api.js";
import { ago, categoryOf, priorityOf, short, stateOf } from "./queue.js";

type Child = Node | string | null | undefined | false;

/** `<tag class=…>` with attributes and children. */
export function el(
  tag: string,
  attrs: Record<string, string | boolean | undefined> = {},
  ...children: Child[]
): HTMLElement {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) {
      continue;
    }
    node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    node.append(c);
  }
  return node;
}

/** A time for people: local, to the second; "-" when absent. */
export function when(t: string | undefined): string {
  if (!t) {
    return "-";
  }
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? "-" : d.toLocaleString(undefined, { hour12: false });
}

function since(t: string | undefined, now: number): string {
  if (!t) {
    return "never";
  }
  const ms = Date.parse(t);
  return Number.isFinite(ms) ? `${ago(ms, now)} ago` : "-";
}

/** The actions, with their keys and the permission each needs. */
export const ACTIONS = [
  { key: "a", label: "Acknowledge", action: "acknowledge", may: "acknowledge" },
  { key: "s", label: "Assign to me", action: "assign", may: "take" },
  { key: "e", label: "Escalate", action: "escalate", may: "escalate" },
  { key: "r", label: "Resolve", action: "resolve", may: "resolve" },
  { key: "n", label: "Note", action: "note", may: "note" },
] as const;

export type ActionSpec = (typeof ACTIONS)[number];

/** Why `spec` cannot be done on `i` by `me` now, or null when it can. */
export function blocked(spec: ActionSpec, i: Incident | undefined, me: Me): string | null {
  if (!me.may[spec.may]) {
    return `your role (${me.role}) may not ${spec.label.toLowerCase()}`;
  }
  if (!i) {
    return "no incident selected";
  }
  if (spec.action === "acknowledge" && stateOf(i) !== "open") {
    return "already acknowledged";
  }
  if (spec.action === "assign" && i.assignee === me.identity) {
    return "already assigned to you";
  }
  return null;
}

/** The action buttons, disabled with the reason when not allowed. */
export function actionBar(i: Incident | undefined, me: Me, run: (spec: ActionSpec) => void): HTMLElement {
  const bar = el("div", { class: "actions", role: "toolbar", "aria-label": "Actions" });
  for (const spec of ACTIONS) {
    const why = blocked(spec, i, me);
    const button = el(
      "button",
      {
        type: "button",
        id: `act-${spec.action}`,
        disabled: why !== null,
        title: why ?? `${spec.label} (key ${spec.key})`,
        "aria-keyshortcuts": spec.key,
      },
      spec.label,
      el("kbd", {}, spec.key),
    );
    button.addEventListener("click", () => run(spec));
    bar.append(button);
  }
  return bar;
}

function field(label: string, value: Child): HTMLElement {
  return el("div", { class: "field" }, el("dt", {}, label), el("dd", {}, value));
}

export function postState(p: PostInfo | null): string {
  const s = p?.status?.state ?? "";
  return s ? short(s, "POST_STATE_").toLowerCase() : "unknown";
}

function testMode(p: PostInfo, now: number): string {
  if (!p.test_mode_until) {
    return "off";
  }
  const until = Date.parse(p.test_mode_until);
  return Number.isFinite(until) && until > now ? `until ${when(p.test_mode_until)}` : "off";
}

function describeEvent(e: StoredEvent): string {
  const v = e.event;
  if (!v) {
    return "(empty)";
  }
  if (v.alarm) {
    const what = v.alarm.text || v.description || categoryOf({ category: v.category } as Incident);
    return `alarm ${v.alarm.sia_code} zone ${v.alarm.zone}${v.restore ? " restore" : ""}: ${what}`;
  }
  if (v.camera) {
    const kind = short(v.camera.kind, "CAMERA_EVENT_KIND_").toLowerCase().replace(/_/g, " ");
    const state = short(v.camera.state, "CAMERA_EVENT_STATE_").toLowerCase();
    return `camera ${v.camera.camera_id}: ${kind} ${state}${v.camera.region ? ` in ${v.camera.region}` : ""}`;
  }
  if (v.health) {
    return `post health: ${v.description || "status"}`;
  }
  return v.description || "event";
}

/** The incident detail: summary, actions, procedure, post, cameras, timeline. */
export function detailView(d: Detail, me: Me, run: (spec: ActionSpec) => void, now: number): HTMLElement {
  const i = d.incident;
  const summary = el(
    "dl",
    { class: "summary" },
    field("State", stateOf(i)),
    field("Priority", priorityOf(i)),
    field("Post", i.post_id),
    field("Category", categoryOf(i)),
    field("Assignee", i.assignee || "unassigned"),
    field("Opened", when(i.opened_at)),
    field("Deadline", when(i.ack_deadline)),
    field("Escalation", String(i.escalation_level)),
    field("Verified", i.verified ? "yes (alarm and camera agree)" : "no"),
    field("Version", String(i.version)),
  );
  const p = d.post;
  const post = el(
    "section",
    { "aria-labelledby": "h-post" },
    el("h3", { id: "h-post" }, `Post ${i.post_id}`),
    p
      ? el(
          "dl",
          { class: "summary" },
          field("Status", el("span", { class: `post-${postState(p)}` }, postState(p))),
          field("Last seen", since(p.last_seen, now)),
          field("Test mode", testMode(p, now)),
          field("Outbox", String(p.status?.outbox_depth ?? 0)),
          field("Missing events", String(p.missing_events)),
        )
      : el("p", {}, "No status from this post yet."),
  );
  const cameras = d.events.filter((e) => e.event?.camera);
  const camera = el(
    "section",
    { "aria-labelledby": "h-cam" },
    el("h3", { id: "h-cam" }, "Camera events"),
    cameras.length === 0
      ? el("p", {}, "None in this incident.")
      : el("ul", {}, ...cameras.map((e) => el("li", {}, `${when(e.event?.received_at)} ${describeEvent(e)}`))),
  );
  type Entry = { at: number; time: string; who: string; text: string; kind: string };
  const entries: Entry[] = [];
  for (const e of d.events) {
    const t = e.event?.received_at;
    entries.push({ at: t ? Date.parse(t) : 0, time: when(t), who: e.event?.post_id ?? "", text: describeEvent(e), kind: "event" });
  }
  for (const a of d.audit) {
    const text = short(a.action, "AUDIT_ACTION_").toLowerCase().replace(/_/g, " ") + (a.detail ? `: ${a.detail}` : "");
    entries.push({ at: a.at ? Date.parse(a.at) : 0, time: when(a.at), who: `${a.actor} (${a.actor_role})`, text: `${text} (v${a.from_version}→v${a.to_version})`, kind: "audit" });
  }
  for (const n of d.notes) {
    entries.push({ at: n.at ? Date.parse(n.at) : 0, time: when(n.at), who: n.author, text: `note: ${n.text}`, kind: "note" });
  }
  entries.sort((a, b) => a.at - b.at);
  const timeline = el(
    "section",
    { "aria-labelledby": "h-timeline" },
    el("h3", { id: "h-timeline" }, "Timeline"),
    el(
      "ol",
      { class: "timeline", id: "timeline" },
      ...entries.map((e) => el("li", { class: `tl-${e.kind}` }, el("time", {}, e.time), " ", el("span", { class: "who" }, e.who), " ", e.text)),
    ),
  );
  return el(
    "article",
    { class: "detail", "aria-labelledby": "h-detail" },
    el("h2", { id: "h-detail" }, `${i.id} · ${priorityOf(i)} · ${i.title}`),
    actionBar(i, me, run),
    summary,
    el("section", { "aria-labelledby": "h-proc" }, el("h3", { id: "h-proc" }, "Procedure"), el("pre", { class: "procedure" }, i.procedure || "No procedure configured for this category.")),
    post,
    camera,
    timeline,
  );
}

/** Every post's status, offline first. */
export function postsView(list: PostInfo[], now: number): HTMLElement {
  const rows = [...list].sort(
    (a, b) => Number(postState(a) === "online") - Number(postState(b) === "online") || a.post_id.localeCompare(b.post_id),
  );
  const head = el(
    "tr",
    {},
    ...["Post", "Status", "Last seen", "Test mode", "Outbox", "Missing", "Open incidents", "Stored through"].map((h) => el("th", { scope: "col" }, h)),
  );
  const body = rows.map((p) =>
    el(
      "tr",
      { "data-post": p.post_id },
      el("th", { scope: "row" }, p.post_id),
      el("td", { class: `post-${postState(p)}` }, postState(p)),
      el("td", {}, since(p.last_seen, now)),
      el("td", {}, testMode(p, now)),
      el("td", { class: "num" }, String(p.status?.outbox_depth ?? 0)),
      el("td", { class: `num${p.missing_events > 0 ? " bad" : ""}` }, String(p.missing_events)),
      el("td", { class: "num" }, String(p.open_incidents)),
      el("td", { class: "num" }, String(p.durable_through_seq)),
    ),
  );
  return el("table", { class: "posts" }, el("caption", {}, `${list.length} posts`), el("thead", {}, head), el("tbody", {}, ...body));
}

/** The replay URL for the form's values. */
export function replayUrl(post: string, kind: string, from: string, to: string, limit: string): string {
  const q = new URLSearchParams();
  if (post) q.set("post", post);
  if (kind) q.set("kind", kind);
  const ms = (v: string): string | null => {
    const t = v ? Date.parse(v) : NaN;
    return Number.isFinite(t) ? String(t) : null;
  };
  const f = ms(from);
  const t = ms(to);
  if (f) q.set("from_ms", f);
  if (t) q.set("to_ms", t);
  if (limit) q.set("limit", limit);
  return `/api/replay?${q.toString()}`;
}
