// The console's side of the HTTP API (ops-center/src/console/mod.rs): the
// shapes of what it sends, in the proto3 JSON mapping of the .proto files
// (field names as there, enums by name, times in RFC 3339), and the calls.
async function errorOf(response) {
    try {
        const body = (await response.json());
        return { error: body.error ?? response.statusText, current: body.current };
    }
    catch {
        return { error: `${response.status} ${response.statusText}` };
    }
}
export async function getJson(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) {
        throw new Error((await errorOf(response)).error);
    }
    return (await response.json());
}
export const me = () => getJson("/api/me");
export const detail = (id) => getJson(`/api/incidents/${encodeURIComponent(id)}`);
export const posts = () => getJson("/api/posts");
export const record = (post) => getJson(`/api/posts/${encodeURIComponent(post)}/record`);
/** Milliseconds since the epoch of a `datetime-local` value, or null. */
export function msOf(local) {
    const t = local ? Date.parse(local) : NaN;
    return Number.isFinite(t) ? String(t) : null;
}
/** The URL of one page of a post's history. */
export function historyUrl(post, from, to, categories, token) {
    const q = new URLSearchParams();
    const f = msOf(from);
    const t = msOf(to);
    if (f)
        q.set("from_ms", f);
    if (t)
        q.set("to_ms", t);
    if (categories.trim())
        q.set("categories", categories.trim());
    if (token)
        q.set("page_token", token);
    q.set("limit", "100");
    return `/api/posts/${encodeURIComponent(post)}/history?${q.toString()}`;
}
/** The URL of a report (JSON, or with `csv` the download); null without a period. */
export function reportUrl(from, to, posts, csv) {
    const f = msOf(from);
    const t = msOf(to);
    if (!f || !t)
        return null;
    const q = new URLSearchParams({ from_ms: f, to_ms: t });
    if (posts.trim())
        q.set("posts", posts.trim());
    if (csv)
        q.set("format", "csv");
    return `/api/report?${q.toString()}`;
}
export const emergency = () => getJson("/api/emergency");
/**
 * Runs `action` on incident `id` as of `expectedVersion` (the version the
 * analyst saw when deciding). The header marks it as the console's own
 * request; the browser adds `Sec-Fetch-Site: same-origin`.
 */
export async function act(id, action, expectedVersion, fields = {}) {
    let response;
    try {
        response = await fetch(`/api/incidents/${encodeURIComponent(id)}/${action}`, {
            method: "POST",
            headers: { "Content-Type": "application/json", "X-Vigil-Action": "1" },
            body: JSON.stringify({ expected_version: expectedVersion, ...fields }),
        });
    }
    catch (e) {
        return { kind: "refused", status: 0, message: `network error: ${String(e)}` };
    }
    if (response.ok) {
        return { kind: "done", incident: (await response.json()) };
    }
    const error = await errorOf(response);
    if (response.status === 409) {
        return { kind: "conflict", message: error.error, current: error.current ?? null };
    }
    return { kind: "refused", status: response.status, message: error.error };
}
