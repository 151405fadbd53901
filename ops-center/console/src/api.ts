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
  | "replay";

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

/** `GET /api/incidents/{id}`. */
export interface Detail {
  incident: Incident;
  events: StoredEvent[];
  notes: Note[];
  audit: AuditEntry[];
  post: PostInfo | null;
}

export type Action = "acknowledge" | "assign" | "escalate" | "resolve" | "reopen" | "note";

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
  fields: Record<string, string> = {},
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
