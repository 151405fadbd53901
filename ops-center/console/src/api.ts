// The console's side of the HTTP API (ops-center/src/console/mod.rs): the
// shapes of what it sends, in the proto3 JSON mapping of the .proto files
// (field names as there, enums by name, times in RFC 3339), and the calls.

export type Permission =
  | "acknowledge"
  | "take"
  | "assign_other"
  | "escalate"
  | "resolve"
  | "reopen"
  | "note"
  | "test_mode"
  | "replay"
  | "step"
  | "history"
  | "report"
  | "see_secrets";

/** `GET /api/me`: who the certificate says we are, and what the role may do. */
export interface Me {
  identity: string;
  role: string;
  may: Record<Permission, boolean>;
}

/** `vigil.v1.Incident`. */
export interface Incident {
  id: string;
  post_id: string;
  state: string;
  priority: string;
  category: string;
  title: string;
  procedure: string;
  verified: boolean;
  subject: string;
  version: number;
  opened_at?: string;
  updated_at?: string;
  acknowledged_at?: string;
  acknowledged_by: string;
  assignee: string;
  escalation_level: number;
  ack_deadline?: string;
  restored: boolean;
  event_count: number;
  severity: string;
  resolved_by: string;
  disposition: string;
}

/** One `update` event of the feed. */
export interface FeedUpdate {
  incident: Incident;
  cause: string;
  snapshot: boolean;
}

export interface Source {
  device_id: string;
  kind: string;
}

/** `vigil.v1.Event`, with the members the page shows. */
export interface VigilEvent {
  post_id: string;
  seq: number;
  occurred_at?: string;
  received_at?: string;
  source?: Source;
  severity: string;
  category: string;
  restore: boolean;
  description: string;
  alarm?: { account: string; sia_code: string; zone: number; text: string };
  camera?: { camera_id: string; kind: string; state: string; region: string; confidence?: number };
  health?: Record<string, unknown>;
}

export interface StoredEvent {
  event?: VigilEvent;
  stored_at?: string;
  incident_id: string;
}

export interface Note {
  author: string;
  at?: string;
  text: string;
}

export interface AuditEntry {
  action: string;
  actor: string;
  actor_role: string;
  at?: string;
  from_version: number;
  to_version: number;
  detail: string;
}

export interface PostInfo {
  post_id: string;
  status?: {
    state: string;
    at?: string;
    gateway_version: string;
    outbox_depth: number;
    last_seq: number;
    receipted_through_seq: number;
  };
  last_seen?: string;
  last_seq: number;
  durable_through_seq: number;
  missing_events: number;
  test_mode_until?: string;
  open_incidents: number;
}

export interface Contact {
  role: string;
  name: string;
  phone: string;
  notes: string;
}

/** `vigil.v1.PostRecord`; duress words and passcodes are empty when withheld. */
export interface PostRecord {
  post_id: string;
  name: string;
  address: string;
  timezone: string;
  zones: { number: number; name: string }[];
  cameras: { id: string; name: string }[];
  contacts: Contact[];
  duress_words: string[];
  passcodes: string[];
  secrets_withheld: boolean;
  duress_word_count: number;
  passcode_count: number;
}

export interface PlanStep {
  kind: string;
  text: string;
  contact_role: string;
}

export interface StepProgress {
  step: number;
  outcome: string;
  actor: string;
  at?: string;
  detail: string;
  /** The step as the plan said it when marked. */
  summary: string;
  /** The plan's step of this number now says something else: the mark belongs to an earlier plan. */
  plan_changed: boolean;
}

/** `vigil.v1.IncidentPlan`. */
export interface IncidentPlan {
  incident_id: string;
  category: string;
  plan?: { category: string; post_id: string; steps: PlanStep[] } | null;
  post?: PostRecord | null;
  progress: StepProgress[];
}

/** `GET /api/incidents/{id}`. */
export interface Detail {
  incident: Incident;
  events: StoredEvent[];
  notes: Note[];
  audit: AuditEntry[];
  post: PostInfo | null;
  plan: IncidentPlan | null;
}

/** One item of a post's history: an incident or an event. */
export interface HistoryItem {
  at?: string;
  incident?: Incident | null;
  event?: StoredEvent | null;
}

export interface HistoryPage {
  items: HistoryItem[];
  next_page_token: string;
}

export interface PostReport {
  post_id: string;
  alarm_events: number;
  incidents_opened: number;
  incidents_resolved: number;
  dispositions: { disposition: string; count: number }[];
  false_alarms: number;
  false_alarm_rate?: number | null;
  acknowledged: number;
  ack_p50_ms?: number | null;
  ack_p90_ms?: number | null;
  resolve_p50_ms?: number | null;
  resolve_p90_ms?: number | null;
  unrestored: number;
  test_failures: number;
}

export interface Report {
  from_time?: string;
  to_time?: string;
  posts: PostReport[];
}

export type Action = "acknowledge" | "assign" | "escalate" | "resolve" | "reopen" | "note" | "step";

/** What an action came to. */
export type Outcome =
  | { kind: "done"; incident: Incident }
  | { kind: "conflict"; message: string; current: Incident | null }
  | { kind: "refused"; status: number; message: string };

async function errorOf(response: Response): Promise<{ error: string; current?: Incident }> {
  try {
    const body = (await response.json()) as { error?: string; current?: Incident };
    return { error: body.error ?? response.statusText, current: body.current };
  } catch {
    return { error: `${response.status} ${response.statusText}` };
  }
}

export async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    throw new Error((await errorOf(response)).error);
  }
  return (await response.json()) as T;
}

export const me = (): Promise<Me> => getJson<Me>("/api/me");
export const detail = (id: string): Promise<Detail> =>
  getJson<Detail>(`/api/incidents/${encodeURIComponent(id)}`);
export const posts = (): Promise<{ posts: PostInfo[] }> => getJson("/api/posts");
export const record = (post: string): Promise<PostRecord> =>
  getJson<PostRecord>(`/api/posts/${encodeURIComponent(post)}/record`);

/** Milliseconds since the epoch of a `datetime-local` value, or null. */
export function msOf(local: string): string | null {
  const t = local ? Date.parse(local) : NaN;
  return Number.isFinite(t) ? String(t) : null;
}

/** The URL of one page of a post's history. */
export function historyUrl(post: string, from: string, to: string, categories: string, token: string): string {
  const q = new URLSearchParams();
  const f = msOf(from);
  const t = msOf(to);
  if (f) q.set("from_ms", f);
  if (t) q.set("to_ms", t);
  if (categories.trim()) q.set("categories", categories.trim());
  if (token) q.set("page_token", token);
  q.set("limit", "100");
  return `/api/posts/${encodeURIComponent(post)}/history?${q.toString()}`;
}

/** The URL of a report (JSON, or with `csv` the download); null without a period. */
export function reportUrl(from: string, to: string, posts: string, csv: boolean): string | null {
  const f = msOf(from);
  const t = msOf(to);
  if (!f || !t) return null;
  const q = new URLSearchParams({ from_ms: f, to_ms: t });
  if (posts.trim()) q.set("posts", posts.trim());
  if (csv) q.set("format", "csv");
  return `/api/report?${q.toString()}`;
}

/** `GET /api/emergency`: `emergency` is absent when the mode is off. */
export interface Emergency {
  emergency?: {
    post_ids?: string[];
    until?: string;
    reason: string;
    started_by: string;
    keep_priority: string;
  };
}
export const emergency = (): Promise<Emergency> => getJson<Emergency>("/api/emergency");

/**
 * Runs `action` on incident `id` as of `expectedVersion` (the version the
 * analyst saw when deciding). The header marks it as the console's own
 * request; the browser adds `Sec-Fetch-Site: same-origin`.
 */
export async function act(
  id: string,
  action: Action,
  expectedVersion: number,
  fields: Record<string, string | number> = {},
): Promise<Outcome> {
  let response: Response;
  try {
    response = await fetch(`/api/incidents/${encodeURIComponent(id)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Vigil-Action": "1" },
      body: JSON.stringify({ expected_version: expectedVersion, ...fields }),
    });
  } catch (e) {
    return { kind: "refused", status: 0, message: `network error: ${String(e)}` };
  }
  if (response.ok) {
    return { kind: "done", incident: (await response.json()) as Incident };
  }
  const error = await errorOf(response);
  if (response.status === 409) {
    return { kind: "conflict", message: error.error, current: error.current ?? null };
  }
  return { kind: "refused", status: response.status, message: error.error };
}
