// The console page: the live queue (server-sent events), the selected
// incident's detail, actions by key or button, the posts and replay views.

import * as api from "./api.js";
import type { Incident, Me } from "./api.js";
import { Queue, age, ago, announce, categoryOf, noFilter, openedMs, priorityOf, rank, stateOf } from "./queue.js";
import { ACTIONS, ActionSpec, blocked, detailView, el, historyHead, historyRows, postsView, recordView, replayUrl, reportView } from "./views.js";

/** What tests and people can read back from the page. */
interface Probe {
  /** ms from navigation start to the first full queue on screen… */
  firstPaintMs: number | null;
  /** …of which: the feed's first event, and the end of its snapshot. */
  firstEventMs: number | null;
  snapshotMs: number | null;
  /** New P1/P2 incidents announced. */
  announced: number;
  /** Wall-clock ms when each incident's row first appeared. */
  seenAt: Record<string, number>;
  /** How long the latest queue render took, and the longest, in ms. */
  renderMs: number;
  renderMaxMs: number;
}

declare global {
  interface Window {
    vigil: Probe;
  }
}

const probe: Probe = { firstPaintMs: null, firstEventMs: null, snapshotMs: null, announced: 0, seenAt: {}, renderMs: 0, renderMaxMs: 0 };
window.vigil = probe;

const $ = <T extends HTMLElement>(id: string): T => {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} missing from the page`);
  return node as T;
};

/** Who we are: set once `/api/me` answered; nothing is drawn before. */
let me!: Me;
let known = false;
const queue = new Queue();
const filter = noFilter();
let selected: string | null = null;
let ready = false;
let audio: AudioContext | null = null;

// ------------------------------------------------------------ messages

function say(text: string, kind: "info" | "error" | "conflict" = "info"): void {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = false;
}

// ------------------------------------------------------------ the queue

const rows = new Map<string, { node: HTMLElement; version: number }>();
let frame = 0;

/** Renders on the next animation frame, once however many updates came. */
function schedule(): void {
  if (frame === 0) {
    frame = requestAnimationFrame(() => {
      frame = 0;
      render();
    });
  }
}

function rowFor(i: Incident, now: number): HTMLElement {
  const node = el(
    "div",
    { role: "option", id: `row-${i.id}`, class: "row", "data-id": i.id, "data-state": stateOf(i), "aria-selected": "false" },
    el("span", { class: `prio p${rank(i)}` }, priorityOf(i)),
    el("span", { class: "id" }, i.id),
    el("span", { class: "post" }, i.post_id),
    el("span", { class: "cat" }, categoryOf(i)),
    el("span", { class: "title" }, i.title + (i.verified ? " ✔" : "")),
    el("span", { class: "state" }, stateOf(i) + (i.escalation_level > 0 ? ` ↑${i.escalation_level}` : "")),
    el("span", { class: "assignee" }, i.assignee || "—"),
    el("span", { class: "age" }, ago(openedMs(i), now)),
  );
  node.addEventListener("click", () => select(i.id));
  return node;
}

function render(): void {
  if (!known) return;
  const started = performance.now();
  renderQueue();
  probe.renderMs = performance.now() - started;
  probe.renderMaxMs = Math.max(probe.renderMaxMs, probe.renderMs);
}

function renderQueue(): void {
  const now = Date.now();
  const list = $("queue");
  const view = queue.view(filter, me.identity);
  const keep = new Set(view.map((i) => i.id));
  for (const [id, r] of rows) {
    if (!keep.has(id)) {
      r.node.remove();
      rows.delete(id);
    }
  }
  // Rows are kept by id and rebuilt only when their incident changed, then
  // put in order (append moves a node): 1,000 rows stay cheap.
  let previous: Element | null = null;
  for (const i of view) {
    let r = rows.get(i.id);
    if (!r || r.version !== i.version) {
      const node = rowFor(i, now);
      if (r) r.node.replaceWith(node);
      r = { node, version: i.version };
      rows.set(i.id, r);
      if (probe.seenAt[i.id] === undefined) probe.seenAt[i.id] = Date.now();
    }
    const cls = `row age-${age(i, now)}${r.node.classList.contains("new") ? " new" : ""}`;
    if (r.node.className !== cls) r.node.className = cls;
    const sel = String(i.id === selected);
    if (r.node.getAttribute("aria-selected") !== sel) r.node.setAttribute("aria-selected", sel);
    const expected: Element | null = previous ? previous.nextElementSibling : list.firstElementChild;
    if (expected !== r.node) {
      if (previous) previous.after(r.node);
      else list.prepend(r.node);
    }
    previous = r.node;
  }
  if (selected && !keep.has(selected)) {
    selected = view[0]?.id ?? null;
  } else if (!selected && view.length > 0) {
    selected = view[0].id;
  }
  if (selected) {
    list.setAttribute("aria-activedescendant", `row-${selected}`);
    rows.get(selected)?.node.setAttribute("aria-selected", "true");
  } else {
    list.removeAttribute("aria-activedescendant");
  }
  $("empty").hidden = view.length > 0;
  renderCounts();
  renderFilters();
  if (ready && probe.firstPaintMs === null) {
    probe.firstPaintMs = performance.now();
    document.body.dataset.ready = "1";
  }
  showDetail();
}

function renderCounts(): void {
  const { priority, state } = queue.counts();
  const parts = ["P1", "P2", "P3", "P4"].map((p) => el("span", { class: `count p${p.slice(1)}` }, `${p} ${priority.get(p) ?? 0}`));
  const states = ["open", "acknowledged"].map((s) => el("span", { class: "count" }, `${s} ${state.get(s) ?? 0}`));
  $("counts").replaceChildren(...parts, ...states, el("span", { class: "count" }, `shown ${rows.size} of ${queue.size}`));
}

/** Keeps each filter menu's options in step with the queue. */
function renderFilters(): void {
  const fill = (id: string, values: string[], current: string): void => {
    const select = $<HTMLSelectElement>(id);
    const want = ["", ...values];
    const have = [...select.options].map((o) => o.value);
    if (want.join("\u0000") === have.join("\u0000")) return;
    select.replaceChildren(...want.map((v) => el("option", { value: v, selected: v === current }, v === "" ? "all" : v)));
  };
  fill("f-post", queue.values((i) => i.post_id), filter.post);
  fill("f-category", queue.values(categoryOf), filter.category);
}

// ------------------------------------------------------------ selection and detail

function select(id: string | null): void {
  // The selection shows at once (the rest of the page on the next frame).
  if (selected) rows.get(selected)?.node.setAttribute("aria-selected", "false");
  selected = id;
  const list = $("queue");
  if (id) {
    list.setAttribute("aria-activedescendant", `row-${id}`);
    const node = rows.get(id)?.node;
    node?.setAttribute("aria-selected", "true");
    node?.scrollIntoView({ block: "nearest" });
  }
  schedule();
}

function move(step: number): void {
  const view = queue.view(filter, me.identity);
  if (view.length === 0) return;
  const at = view.findIndex((i) => i.id === selected);
  const next = Math.min(view.length - 1, Math.max(0, at < 0 ? 0 : at + step));
  select(view[next].id);
}

let shown: { id: string; version: number } | null = null;
let detailTimer = 0;

/** Loads the selected incident's detail, shortly after the selection settles. */
function showDetail(): void {
  const i = selected ? queue.get(selected) : undefined;
  if (!i) {
    if (shown) $("detail").replaceChildren(el("p", { class: "hint" }, "No incident selected."));
    shown = null;
    return;
  }
  if (shown && shown.id === i.id && shown.version === i.version) return;
  shown = { id: i.id, version: i.version };
  window.clearTimeout(detailTimer);
  detailTimer = window.setTimeout(async () => {
    try {
      const d = await api.detail(i.id);
      if (selected !== i.id) return;
      $("detail").replaceChildren(
        detailView(d, me, (spec) => void run(spec), Date.now(), (step, text, outcome) => void markStep(step, text, outcome)),
      );
    } catch (e) {
      $("detail").replaceChildren(el("p", { class: "hint" }, `Cannot load ${i.id}: ${String(e)}`));
    }
  }, 120);
}

// ------------------------------------------------------------ actions

const dialog = (): HTMLDialogElement => $<HTMLDialogElement>("prompt");

/** Asks for the text (and disposition) an action needs; null if cancelled. */
function ask(title: string, label: string, withDisposition: boolean, required: boolean): Promise<{ text: string; disposition: string } | null> {
  const d = dialog();
  $("prompt-title").textContent = title;
  $("prompt-label").textContent = label;
  const text = $<HTMLTextAreaElement>("prompt-text");
  const disposition = $<HTMLSelectElement>("prompt-disposition");
  text.value = "";
  text.required = required;
  $("prompt-disposition-row").hidden = !withDisposition;
  return new Promise((resolve) => {
    d.onclose = () => {
      resolve(d.returnValue === "ok" ? { text: text.value.trim(), disposition: disposition.value } : null);
    };
    d.returnValue = "";
    d.showModal();
    (withDisposition ? disposition : text).focus();
  });
}

async function run(spec: ActionSpec): Promise<void> {
  const i = selected ? queue.get(selected) : undefined;
  const why = blocked(spec, i, me);
  if (why || !i) {
    say(`${spec.label}: ${why ?? "no incident selected"}.`, "error");
    return;
  }
  // The version the analyst saw when deciding: if the incident changes
  // while the dialog is open, the server says so rather than overwrite.
  const seen = i.version;
  let fields: Record<string, string> = {};
  if (spec.action === "escalate") {
    const a = await ask(`Escalate ${i.id}`, "Reason", false, false);
    if (!a) return;
    fields = { reason: a.text };
  } else if (spec.action === "resolve") {
    const a = await ask(`Resolve ${i.id}`, "Note (optional)", true, false);
    if (!a) return;
    fields = { disposition: a.disposition, note: a.text };
  } else if (spec.action === "note") {
    const a = await ask(`Note on ${i.id}`, "Note", false, true);
    if (!a || !a.text) return;
    fields = { text: a.text };
  }
  settle(await api.act(i.id, spec.action, seen, fields), spec.label, i.id, seen);
}

/**
 * Checks off or skips step `step` of the selected incident's plan (a note is required to skip). The
 * step's text as shown goes along: if the plan changed meanwhile, the server refuses rather than mark
 * another step.
 */
async function markStep(step: number, text: string, outcome: "done" | "skipped"): Promise<void> {
  const i = selected ? queue.get(selected) : undefined;
  const label = outcome === "done" ? `Check off step ${step}` : `Skip step ${step}`;
  if (!i) {
    say(`${label}: no incident selected.`, "error");
    return;
  }
  const seen = i.version;
  const a = await ask(`${label} of ${i.id}`, outcome === "done" ? "Note (optional)" : "Why it is skipped", false, outcome === "skipped");
  if (!a) return;
  if (outcome === "skipped" && !a.text) {
    say(`${label}: say why it is skipped.`, "error");
    return;
  }
  settle(await api.act(i.id, "step", seen, { step, step_text: text, outcome, note: a.text }), label, i.id, seen);
}

/** Shows what an action came to; a conflict shows the incident as it is now. */
function settle(outcome: api.Outcome, label: string, id: string, seen: number): void {
  switch (outcome.kind) {
    case "done":
      queue.put(outcome.incident);
      say(`${label}: ${outcome.incident.id} is now v${outcome.incident.version} (${stateOf(outcome.incident)}).`);
      break;
    case "conflict": {
      const c = outcome.current;
      if (c) queue.put(c);
      const now = c
        ? `It is now v${c.version}: ${stateOf(c)}, ${c.assignee ? `assigned to ${c.assignee}` : "unassigned"}${c.acknowledged_by ? `, acknowledged by ${c.acknowledged_by}` : ""}.`
        : outcome.message;
      say(`Not done: ${id} changed since you saw it (v${seen}). ${now} Check it and try again.`, "conflict");
      shown = null;
      break;
    }
    case "refused":
      say(`${label} refused (${outcome.status}): ${outcome.message}`, "error");
      break;
  }
  schedule();
}

// ------------------------------------------------------------ announcements

function tone(times: number): void {
  if (!audio) return;
  const ctx = audio;
  for (let n = 0; n < times; n++) {
    const start = ctx.currentTime + n * 0.35;
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "sine";
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.0001, start);
    gain.gain.exponentialRampToValueAtTime(0.3, start + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.25);
    osc.connect(gain).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + 0.3);
  }
}

function announceNew(i: Incident): void {
  probe.announced += 1;
  $("announce").textContent = `New ${priorityOf(i)} incident ${i.id} at ${i.post_id}: ${i.title}`;
  tone(rank(i) === 1 ? 2 : 1);
  document.body.classList.remove("flash");
  void document.body.offsetWidth; // restart the animation
  document.body.classList.add("flash");
  const mark = (): void => {
    const row = rows.get(i.id)?.node;
    if (row) {
      row.classList.add("new");
      window.setTimeout(() => row.classList.remove("new"), 4000);
    }
  };
  requestAnimationFrame(mark);
}

function startShift(): void {
  if (!audio) {
    audio = new AudioContext();
  }
  void audio.resume();
  tone(1);
  const b = $<HTMLButtonElement>("shift");
  b.textContent = "On shift: sound on";
  b.setAttribute("aria-pressed", "true");
  document.body.dataset.shift = "on";
}

// ------------------------------------------------------------ the feed

let source: EventSource | null = null;

function connect(): void {
  source?.close();
  ready = false;
  const es = new EventSource("/api/feed");
  source = es;
  es.addEventListener("update", (e) => {
    probe.firstEventMs ??= performance.now();
    const u = JSON.parse((e as MessageEvent<string>).data) as api.FeedUpdate;
    if (!u.incident) return;
    queue.put(u.incident);
    if (announce(u.cause, u.snapshot, u.incident)) announceNew(u.incident);
    // The snapshot is drawn once, when complete, not frame by frame as
    // it arrives.
    if (ready) schedule();
  });
  es.addEventListener("ready", () => {
    probe.snapshotMs ??= performance.now();
    ready = true;
    $("link").textContent = "live";
    $("link").className = "link up";
    schedule();
  });
  es.addEventListener("resync", () => {
    // Too far behind: start again from a fresh snapshot.
    queue.clear();
    connect();
  });
  es.addEventListener("heartbeat", () => {
    $("link").textContent = "live";
    $("link").className = "link up";
  });
  es.onopen = () => {
    $("link").textContent = ready ? "live" : "loading";
  };
  es.onerror = () => {
    // The browser reconnects by itself, sending Last-Event-ID: the feed
    // resumes after the last change it delivered.
    $("link").textContent = "reconnecting";
    $("link").className = "link down";
  };
}

// ------------------------------------------------------------ views

const VIEWS = ["queue", "posts", "history", "report", "replay"];

function showView(name: string): void {
  for (const v of VIEWS) {
    $(`view-${v}`).hidden = v !== name;
    $(`nav-${v}`).setAttribute("aria-current", String(v === name));
  }
  if (name === "posts") void loadPosts();
}

async function loadPosts(): Promise<void> {
  try {
    const { posts } = await api.posts();
    $("posts").replaceChildren(postsView(posts, Date.now()));
    // A post's row opens its history.
    if (me.may.history) {
      for (const tr of $("posts").querySelectorAll<HTMLElement>("tr[data-post]")) {
        tr.classList.add("link");
        tr.title = `History of ${tr.dataset.post}`;
        tr.addEventListener("click", () => openHistory(tr.dataset.post ?? ""));
      }
    }
  } catch (e) {
    $("posts").replaceChildren(el("p", {}, `Cannot load posts: ${String(e)}`));
  }
}

function setupReplay(): void {
  const form = $<HTMLFormElement>("replay-form");
  if (!me.may.replay) {
    form.hidden = true;
    $("replay-note").textContent = `Replay is for engineers; your role is ${me.role}.`;
    return;
  }
  const update = (): void => {
    const v = (id: string): string => $<HTMLInputElement>(id).value.trim();
    const url = replayUrl(v("r-post"), v("r-kind"), v("r-from"), v("r-to"), v("r-limit"));
    const a = $<HTMLAnchorElement>("r-download");
    a.href = url;
  };
  form.addEventListener("input", update);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    update();
    $<HTMLAnchorElement>("r-download").click();
  });
  update();
}

/** The history page: a post's record, then its incidents and events, newest first, a page at a time. */
let historyToken = "";

function setupHistory(): void {
  const form = $<HTMLFormElement>("history-form");
  if (!me.may.history) {
    form.hidden = true;
    $("history-note").textContent = `Post history is for analysts, supervisors, engineers and admins; your role is ${me.role}.`;
    return;
  }
  const v = (id: string): string => $<HTMLInputElement>(id).value.trim();
  const load = async (more: boolean): Promise<void> => {
    const post = v("hist-post");
    if (!post) {
      say("History: name a post.", "error");
      return;
    }
    if (!more) {
      historyToken = "";
      $("history-body").replaceChildren();
      $("history-head").replaceChildren(historyHead());
      api.record(post).then(
        (r) => $("history-record").replaceChildren(recordView(r, "history-post-record")),
        () => $("history-record").replaceChildren(recordView(null, "history-post-record")),
      );
    }
    try {
      const page = await api.getJson<api.HistoryPage>(api.historyUrl(post, v("hist-from"), v("hist-to"), v("hist-categories"), historyToken));
      $("history-body").append(...historyRows(page.items));
      historyToken = page.next_page_token;
      $<HTMLButtonElement>("hist-more").hidden = historyToken === "";
      $("history-status").textContent = `${$("history-body").childElementCount} items${historyToken ? ", more to load" : ", all loaded"}.`;
    } catch (e) {
      say(`History of ${post}: ${String(e)}`, "error");
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    void load(false);
  });
  $("hist-more").addEventListener("click", () => void load(true));
}

/** Shows the history view for `post`, from its newest item. */
function openHistory(post: string): void {
  showView("history");
  $<HTMLInputElement>("hist-post").value = post;
  $<HTMLFormElement>("history-form").requestSubmit();
}

/** The report page (supervisors and admins): figures per post for a period, and the CSV download. */
function setupReport(): void {
  const form = $<HTMLFormElement>("report-form");
  if (!me.may.report) {
    form.hidden = true;
    $("report-note").textContent = `Reports are for supervisors and admins; your role is ${me.role}.`;
    return;
  }
  const v = (id: string): string => $<HTMLInputElement>(id).value.trim();
  const update = (): void => {
    const csv = api.reportUrl(v("rp-from"), v("rp-to"), v("rp-posts"), true);
    const a = $<HTMLAnchorElement>("rp-download");
    a.hidden = csv === null;
    if (csv) a.href = csv;
  };
  form.addEventListener("input", update);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    update();
    const url = api.reportUrl(v("rp-from"), v("rp-to"), v("rp-posts"), false);
    if (!url) {
      say("Report: give the period, from and to.", "error");
      return;
    }
    try {
      $("report").replaceChildren(reportView(await api.getJson<api.Report>(url)));
    } catch (err) {
      say(`Report: ${String(err)}`, "error");
    }
  });
  update();
}

// ------------------------------------------------------------ keyboard

/** Whether a key goes to a field (so it is not a shortcut). */
function typing(target: EventTarget | null): boolean {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable) return true;
  if (target instanceof HTMLInputElement) {
    return !["checkbox", "radio", "button", "submit", "reset"].includes(target.type);
  }
  return target.tagName === "TEXTAREA" || target.tagName === "SELECT";
}

function onKey(e: KeyboardEvent): void {
  if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || dialog().open) return;
  if ($("view-queue").hidden) return;
  if (e.key === "j" || e.key === "ArrowDown") {
    move(1);
  } else if (e.key === "k" || e.key === "ArrowUp") {
    move(-1);
  } else {
    const spec = ACTIONS.find((a) => a.key === e.key);
    if (!spec) return;
    void run(spec);
  }
  e.preventDefault();
}

// ------------------------------------------------------------ emergency

/** The banner while emergency mode is on (less urgent incidents are logged, not queued). */
async function loadEmergency(): Promise<void> {
  const banner = $("emergency");
  try {
    const { emergency: m } = await api.emergency();
    if (!m) {
      banner.hidden = true;
      return;
    }
    const scope = m.post_ids && m.post_ids.length > 0 ? `posts ${m.post_ids.join(", ")}` : "the whole region";
    const keep = m.keep_priority.replace("PRIORITY_", "");
    banner.textContent = `Emergency mode until ${m.until ?? "?"} over ${scope}: incidents less urgent than ${keep} are logged, not queued (${m.reason}; ${m.started_by})`;
    banner.hidden = false;
  } catch {
    // The next poll tries again; the queue itself is unaffected.
  }
}

// ------------------------------------------------------------ start

async function main(): Promise<void> {
  // The feed's snapshot and who we are, at the same time.
  connect();
  let who: Me;
  try {
    who = await api.me();
  } catch (e) {
    source?.close();
    say(`Cannot start: ${String(e)}`, "error");
    return;
  }
  me = who;
  known = true;
  $("who").textContent = `${me.identity} (${me.role})`;
  $("shift").addEventListener("click", startShift);
  for (const v of VIEWS) {
    $(`nav-${v}`).addEventListener("click", () => showView(v));
  }
  const bind = (id: string, set: (value: string) => void): void => {
    $(id).addEventListener("change", (e) => {
      set((e.target as HTMLSelectElement).value);
      schedule();
    });
  };
  bind("f-state", (v) => (filter.state = v));
  bind("f-post", (v) => (filter.post = v));
  bind("f-category", (v) => (filter.category = v));
  $("f-mine").addEventListener("change", (e) => {
    filter.mine = (e.target as HTMLInputElement).checked;
    schedule();
  });
  $("message").addEventListener("click", () => ($("message").hidden = true));
  document.addEventListener("keydown", onKey);
  setupReplay();
  setupHistory();
  setupReport();
  // Ages and colours move with the clock.
  window.setInterval(() => {
    for (const r of rows.values()) r.version = -1;
    schedule();
  }, 10_000);
  showView("queue");
  schedule();
  void loadEmergency();
  window.setInterval(() => void loadEmergency(), 30_000);
}

void main();
