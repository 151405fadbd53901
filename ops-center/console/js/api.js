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
