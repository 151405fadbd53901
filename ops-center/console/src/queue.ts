// The queue as data: the open and acknowledged incidents the feed told us
// about, their order, filters, counts and age. No DOM here.

import type { Incident } from "./api.js";

/** The short forms the page shows. */
export const short = (value: string, prefix: string): string =>
  value.startsWith(prefix) ? value.slice(prefix.length) : value;
export const priorityOf = (i: Incident): string => short(i.priority, "PRIORITY_");
export const stateOf = (i: Incident): string => short(i.state, "INCIDENT_STATE_").toLowerCase();
export const categoryOf = (i: Incident): string =>
  short(i.category, "EVENT_CATEGORY_").toLowerCase().replace(/_/g, " ");

/** 1 (most urgent) to 4; unknown last. */
export function rank(i: Incident): number {
  const n = Number(priorityOf(i).replace("P", ""));
  return Number.isFinite(n) && n > 0 ? n : 9;
}

export function openedMs(i: Incident): number {
  const t = i.opened_at ? Date.parse(i.opened_at) : NaN;
  return Number.isFinite(t) ? t : 0;
}

export interface Filter {
  state: string; // "", "open", "acknowledged"
  post: string; // "" = every post
  category: string; // "" = every category
  mine: boolean;
}

export const noFilter = (): Filter => ({ state: "", post: "", category: "", mine: false });

/** How old an unacknowledged incident is against its deadline. */
export type Age = "fresh" | "ageing" | "late" | "worked";

/**
 * Open incidents age towards their acknowledgment deadline: `ageing` past
 * half of it, `late` past it. Acknowledged ones are being worked.
 */
export function age(i: Incident, now: number): Age {
  if (stateOf(i) !== "open") {
    return "worked";
  }
  const opened = openedMs(i);
  const deadline = i.ack_deadline ? Date.parse(i.ack_deadline) : NaN;
  if (!Number.isFinite(deadline) || deadline <= opened) {
    return now - opened > 5 * 60_000 ? "late" : "fresh";
  }
  if (now >= deadline) {
    return "late";
  }
  return now - opened >= (deadline - opened) / 2 ? "ageing" : "fresh";
}

/** Incidents by id; resolved ones leave. */
export class Queue {
  private readonly byId = new Map<string, Incident>();

  /** Takes an incident's new state; returns whether it is new to the queue. */
  put(i: Incident): boolean {
    const known = this.byId.get(i.id);
    if (known && known.version > i.version) {
      return false; // an older copy arriving late
    }
    if (stateOf(i) === "resolved") {
      this.byId.delete(i.id);
      return false;
    }
    this.byId.set(i.id, i);
    return known === undefined;
  }

  get(id: string): Incident | undefined {
    return this.byId.get(id);
  }

  clear(): void {
    this.byId.clear();
  }

  get size(): number {
    return this.byId.size;
  }

  all(): Incident[] {
    return [...this.byId.values()];
  }

  /** Matching incidents, most urgent first, then oldest first. */
  view(filter: Filter, identity: string): Incident[] {
    const out = this.all().filter((i) => matches(i, filter, identity));
    out.sort((a, b) => rank(a) - rank(b) || openedMs(a) - openedMs(b) || a.id.localeCompare(b.id));
    return out;
  }

  /** Counts per priority and per state, of every incident in the queue. */
  counts(): { priority: Map<string, number>; state: Map<string, number> } {
    const priority = new Map<string, number>();
    const state = new Map<string, number>();
    for (const i of this.byId.values()) {
      priority.set(priorityOf(i), (priority.get(priorityOf(i)) ?? 0) + 1);
      state.set(stateOf(i), (state.get(stateOf(i)) ?? 0) + 1);
    }
    return { priority, state };
  }

  /** The distinct values of a field, sorted, for the filter menus. */
  values(of: (i: Incident) => string): string[] {
    return [...new Set(this.all().map(of))].sort();
  }
}

export function matches(i: Incident, f: Filter, identity: string): boolean {
  return (
    (f.state === "" || stateOf(i) === f.state) &&
    (f.post === "" || i.post_id === f.post) &&
    (f.category === "" || categoryOf(i) === f.category) &&
    (!f.mine || i.assignee === identity)
  );
}

/** Whether an update should be announced: a new P1 or P2, live. */
export function announce(cause: string, snapshot: boolean, i: Incident): boolean {
  return !snapshot && cause === "AUDIT_ACTION_OPENED" && rank(i) <= 2;
}

/** "4 min", "2 h 5 min", for ages on screen. */
export function ago(fromMs: number, now: number): string {
  const s = Math.max(0, Math.round((now - fromMs) / 1000));
  if (s < 60) {
    return `${s} s`;
  }
  const m = Math.floor(s / 60);
  if (m < 60) {
    return `${m} min`;
  }
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
