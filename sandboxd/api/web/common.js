// Shared by the pages: the token (kept in localStorage, sent as a bearer
// header), JSON calls to this origin's API, and base64 for bytes fields.
const KEY = "sandboxd.token";

export function token() {
  return localStorage.getItem(KEY) || "";
}

export function bindToken(input) {
  input.value = token();
  input.addEventListener("change", () => localStorage.setItem(KEY, input.value.trim()));
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = data.error || {};
    throw new Error(`${resp.status} ${e.code || ""}: ${e.message || resp.statusText}`);
  }
  return data;
}

// UTF-8 text -> base64 (the API's bytes fields in JSON).
export function b64(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

// A result's bytes field as text: with ?text=1 it is a string already unless
// `<field>_encoding` says base64.
export function text(obj, field) {
  const v = obj[field];
  if (v === undefined || v === null) return "";
  if (obj[field + "_encoding"] === "base64") {
    const bin = atob(v);
    return new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
  }
  return v;
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}
