// Rendering: the incident detail, the posts view and the replay form. Text
// goes in through textContent only, never as HTML.
import { ago, categoryOf, priorityOf, short, stateOf } from "./queue.js";
/** `<tag class=…>` with attributes and children. */
export function el(tag, attrs = {}, ...children) {
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
export function when(t) {
    if (!t) {
        return "-";
    }
    const d = new Date(t);
    return Number.isNaN(d.getTime()) ? "-" : d.toLocaleString(undefined, { hour12: false });
}
function since(t, now) {
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
];
/** Why `spec` cannot be done on `i` by `me` now, or null when it can. */
export function blocked(spec, i, me) {
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
export function actionBar(i, me, run) {
    const bar = el("div", { class: "actions", role: "toolbar", "aria-label": "Actions" });
    for (const spec of ACTIONS) {
        const why = blocked(spec, i, me);
        const button = el("button", {
            type: "button",
            id: `act-${spec.action}`,
            disabled: why !== null,
            title: why ?? `${spec.label} (key ${spec.key})`,
            "aria-keyshortcuts": spec.key,
        }, spec.label, el("kbd", {}, spec.key));
        button.addEventListener("click", () => run(spec));
        bar.append(button);
    }
    return bar;
}
function field(label, value) {
    return el("div", { class: "field" }, el("dt", {}, label), el("dd", {}, value));
}
export function postState(p) {
    const s = p?.status?.state ?? "";
    return s ? short(s, "POST_STATE_").toLowerCase() : "unknown";
}
function testMode(p, now) {
    if (!p.test_mode_until) {
        return "off";
    }
    const until = Date.parse(p.test_mode_until);
    return Number.isFinite(until) && until > now ? `until ${when(p.test_mode_until)}` : "off";
}
export function describeEvent(e) {
    const v = e.event;
    if (!v) {
        return "(empty)";
    }
    if (v.alarm) {
        const what = v.alarm.text || v.description || categoryOf({ category: v.category });
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
/** The action plan's steps, each with its mark or the buttons to make one. */
export function planView(p, me, mark) {
    const section = el("section", { "aria-labelledby": "h-plan", id: "plan" }, el("h3", { id: "h-plan" }, "Action plan"));
    const steps = p?.plan?.steps ?? [];
    if (steps.length === 0) {
        section.append(el("p", {}, `No action plan for ${p?.category || "this category"}.`));
        return section;
    }
    // Marks made on a step the plan has since changed are listed apart, below.
    const progress = new Map((p?.progress ?? []).filter((s) => !s.plan_changed).map((s) => [s.step, s]));
    const list = el("ol", { class: "steps" });
    steps.forEach((step, n) => {
        const number = n + 1;
        const done = progress.get(number);
        const kind = short(step.kind, "STEP_KIND_").toLowerCase().replace(/_/g, " ");
        const role = step.contact_role ? ` (${step.contact_role})` : "";
        const item = el("li", { "data-step": String(number), class: done ? `step ${short(done.outcome, "STEP_OUTCOME_").toLowerCase()}` : "step" });
        item.append(el("span", { class: "step-text" }, `${step.text || kind}${role}`));
        if (done) {
            const outcome = short(done.outcome, "STEP_OUTCOME_").toLowerCase();
            item.append(" ", el("span", { class: "step-mark" }, `${outcome} by ${done.actor} ${when(done.at)}${done.detail ? ` — ${done.detail}` : ""}`));
        }
        const why = me.may.step ? null : `your role (${me.role}) may not mark plan steps`;
        for (const [outcome, label] of [["done", "Check off"], ["skipped", "Skip"]]) {
            const b = el("button", { type: "button", class: `mark-${outcome}`, disabled: why !== null, title: why ?? `${label} step ${number}` }, label);
            b.addEventListener("click", () => mark(number, step.text, outcome));
            item.append(" ", b);
        }
        list.append(item);
    });
    section.append(list);
    const earlier = (p?.progress ?? []).filter((s) => s.plan_changed);
    if (earlier.length > 0) {
        section.append(el("h4", {}, "Marks on an earlier version of the plan"), el("ul", { class: "earlier-marks" }, ...earlier.map((s) => el("li", {}, `Step ${s.step} ${short(s.outcome, "STEP_OUTCOME_").toLowerCase()} by ${s.actor} ${when(s.at)}: ${s.summary || s.detail}`))));
    }
    return section;
}
/** A post's record: name, address, contacts in calling order, zones, cameras, secrets as allowed. */
export function recordView(r, id = "record") {
    const section = el("section", { "aria-labelledby": `h-${id}`, id }, el("h3", { id: `h-${id}` }, "Post record"));
    if (!r) {
        section.append(el("p", {}, "No record for this post."));
        return section;
    }
    section.append(el("dl", { class: "summary" }, field("Name", r.name || "-"), field("Address", r.address || "-"), field("Time zone", r.timezone || "-")));
    section.append(el("h4", {}, "Contacts, in calling order"), r.contacts.length === 0
        ? el("p", {}, "None.")
        : el("ol", { class: "contacts" }, ...r.contacts.map((c) => el("li", {}, `${c.name} (${c.role}) ${c.phone}${c.notes ? ` — ${c.notes}` : ""}`))), el("h4", {}, "Zones"), r.zones.length === 0 ? el("p", {}, "None.") : el("ul", { class: "zones" }, ...r.zones.map((z) => el("li", {}, `${z.number}: ${z.name}`))), el("h4", {}, "Cameras"), r.cameras.length === 0 ? el("p", {}, "None.") : el("ul", { class: "cameras" }, ...r.cameras.map((c) => el("li", {}, `${c.id}: ${c.name}`))), el("h4", {}, "Duress words and passcodes"), r.secrets_withheld
        ? el("p", { class: "secrets withheld" }, `${r.duress_word_count} duress words and ${r.passcode_count} passcodes, withheld for your role.`)
        : el("p", { class: "secrets" }, `Duress words: ${r.duress_words.join(", ") || "none"}. Passcodes: ${r.passcodes.join(", ") || "none"}.`));
    return section;
}
/** Rows of a post's history, newest first. */
export function historyRows(items) {
    return items.map((item) => {
        if (item.incident) {
            const i = item.incident;
            return el("tr", { class: "h-incident", "data-incident": i.id }, el("td", {}, when(item.at)), el("td", {}, "incident"), el("td", {}, categoryOf(i)), el("td", {}, `${i.id} ${stateOf(i)}: ${i.title}`));
        }
        const e = item.event;
        return el("tr", { class: "h-event", "data-seq": String(e?.event?.seq ?? "") }, el("td", {}, when(item.at)), el("td", {}, "event"), el("td", {}, e?.event ? categoryOf({ category: e.event.category }) : "-"), el("td", {}, e ? `#${e.event?.seq ?? "?"} ${describeEvent(e)}` : "(empty)"));
    });
}
/** The history table's head. */
export function historyHead() {
    return el("tr", {}, ...["When", "What", "Category", "Detail"].map((h) => el("th", { scope: "col" }, h)));
}
const seconds = (ms) => (ms === null || ms === undefined ? "-" : `${(Number(ms) / 1000).toFixed(1)} s`);
/** The report's figures, one row per post. */
export function reportView(r) {
    const heads = ["Post", "Alarms", "Incidents", "Resolved", "False alarms", "False-alarm rate", "Ack p50", "Ack p90", "Resolve p50", "Resolve p90", "Unrestored", "Test failures"];
    const rows = r.posts.map((p) => el("tr", { "data-post": p.post_id }, el("th", { scope: "row" }, p.post_id), ...[
        String(p.alarm_events),
        String(p.incidents_opened),
        String(p.incidents_resolved),
        String(p.false_alarms),
        p.false_alarm_rate === null || p.false_alarm_rate === undefined ? "-" : `${(p.false_alarm_rate * 100).toFixed(1)}%`,
        seconds(p.ack_p50_ms),
        seconds(p.ack_p90_ms),
        seconds(p.resolve_p50_ms),
        seconds(p.resolve_p90_ms),
        String(p.unrestored),
        String(p.test_failures),
    ].map((v) => el("td", { class: "num" }, v))));
    return el("table", { class: "report" }, el("caption", {}, `${r.posts.length} posts, ${when(r.from_time)} to ${when(r.to_time)}`), el("thead", {}, el("tr", {}, ...heads.map((h) => el("th", { scope: "col" }, h)))), el("tbody", {}, ...rows));
}
/** The incident detail: summary, actions, procedure, post, cameras, timeline. */
export function detailView(d, me, run, now, mark = () => undefined) {
    const i = d.incident;
    const summary = el("dl", { class: "summary" }, field("State", stateOf(i)), field("Priority", priorityOf(i)), field("Post", i.post_id), field("Category", categoryOf(i)), field("Assignee", i.assignee || "unassigned"), field("Opened", when(i.opened_at)), field("Deadline", when(i.ack_deadline)), field("Escalation", String(i.escalation_level)), field("Verified", i.verified ? "yes (alarm and camera agree)" : "no"), field("Version", String(i.version)));
    const p = d.post;
    const post = el("section", { "aria-labelledby": "h-post" }, el("h3", { id: "h-post" }, `Post ${i.post_id}`), p
        ? el("dl", { class: "summary" }, field("Status", el("span", { class: `post-${postState(p)}` }, postState(p))), field("Last seen", since(p.last_seen, now)), field("Test mode", testMode(p, now)), field("Outbox", String(p.status?.outbox_depth ?? 0)), field("Missing events", String(p.missing_events)))
        : el("p", {}, "No status from this post yet."));
    const cameras = d.events.filter((e) => e.event?.camera);
    const camera = el("section", { "aria-labelledby": "h-cam" }, el("h3", { id: "h-cam" }, "Camera events"), cameras.length === 0
        ? el("p", {}, "None in this incident.")
        : el("ul", {}, ...cameras.map((e) => el("li", {}, `${when(e.event?.received_at)} ${describeEvent(e)}`))));
    const entries = [];
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
    const timeline = el("section", { "aria-labelledby": "h-timeline" }, el("h3", { id: "h-timeline" }, "Timeline"), el("ol", { class: "timeline", id: "timeline" }, ...entries.map((e) => el("li", { class: `tl-${e.kind}` }, el("time", {}, e.time), " ", el("span", { class: "who" }, e.who), " ", e.text))));
    return el("article", { class: "detail", "aria-labelledby": "h-detail" }, el("h2", { id: "h-detail" }, `${i.id} · ${priorityOf(i)} · ${i.title}`), actionBar(i, me, run), summary, el("section", { "aria-labelledby": "h-proc" }, el("h3", { id: "h-proc" }, "Procedure"), el("pre", { class: "procedure" }, i.procedure || "No procedure configured for this category.")), planView(d.plan, me, mark), post, recordView(d.plan?.post), camera, timeline);
}
/** Every post's status, offline first. */
export function postsView(list, now) {
    const rows = [...list].sort((a, b) => Number(postState(a) === "online") - Number(postState(b) === "online") || a.post_id.localeCompare(b.post_id));
    const head = el("tr", {}, ...["Post", "Status", "Last seen", "Test mode", "Outbox", "Missing", "Open incidents", "Stored through"].map((h) => el("th", { scope: "col" }, h)));
    const body = rows.map((p) => el("tr", { "data-post": p.post_id }, el("th", { scope: "row" }, p.post_id), el("td", { class: `post-${postState(p)}` }, postState(p)), el("td", {}, since(p.last_seen, now)), el("td", {}, testMode(p, now)), el("td", { class: "num" }, String(p.status?.outbox_depth ?? 0)), el("td", { class: `num${p.missing_events > 0 ? " bad" : ""}` }, String(p.missing_events)), el("td", { class: "num" }, String(p.open_incidents)), el("td", { class: "num" }, String(p.durable_through_seq))));
    return el("table", { class: "posts" }, el("caption", {}, `${list.length} posts`), el("thead", {}, head), el("tbody", {}, ...body));
}
/** The replay URL for the form's values. */
export function replayUrl(post, kind, from, to, limit) {
    const q = new URLSearchParams();
    if (post)
        q.set("post", post);
    if (kind)
        q.set("kind", kind);
    const ms = (v) => {
        const t = v ? Date.parse(v) : NaN;
        return Number.isFinite(t) ? String(t) : null;
    };
    const f = ms(from);
    const t = ms(to);
    if (f)
        q.set("from_ms", f);
    if (t)
        q.set("to_ms", t);
    if (limit)
        q.set("limit", limit);
    return `/api/replay?${q.toString()}`;
}
