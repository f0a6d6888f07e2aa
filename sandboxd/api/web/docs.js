// /docs: the OpenAPI document (/openapi.json) as a page: every operation with
// its parameters, body, responses and example; every schema with its fields.
// A page of our own, not a vendored renderer: ~100 lines instead of ~1 MB.
import { api, bindToken, el } from "/web/common.js";

const $ = (id) => document.getElementById(id);
const METHODS = ["get", "post", "put", "delete"];

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function typeOf(s) {
  if (!s) return "";
  if (s.$ref) return refName(s);
  if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
  if (s.type === "array") return `${typeOf(s.items)}[]`;
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  return s.type || (s.const !== undefined ? JSON.stringify(s.const) : "any");
}

function link(name) {
  return name ? el("a", { href: `#schema-${name}` }, name) : "";
}

function operation(path, method, op) {
  const id = `op-${method}-${path.replace(/[^a-z0-9]+/gi, "-")}`;
  const box = el("section", { class: "op", id });
  box.append(el("h3", {}, el("span", { class: `method ${method}` }, method.toUpperCase()), " ", el("code", {}, path)));
  box.append(el("p", {}, op.summary || ""));
  if (op.description) box.append(el("p", { class: "muted" }, op.description));
  const params = op.parameters || [];
  if (params.length) {
    const rows = params.map((p) =>
      el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, typeOf(p.schema)),
        el("td", {}, p.description || "")));
    box.append(el("table", {}, el("thead", {}, el("tr", {}, ...["parameter", "in", "type", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows)));
  }
  const body = op.requestBody && op.requestBody.content;
  if (body) {
    const json = body["application/json"] || Object.values(body)[0];
    box.append(el("p", {}, "Body: ", link(refName(json.schema)) || typeOf(json.schema)));
    const ex = json.example !== undefined ? json.example : (json.examples && Object.values(json.examples)[0].value);
    if (ex !== undefined) box.append(el("pre", { class: "example" }, JSON.stringify(ex, null, 2)));
  }
  if (op["x-websocket"]) {
    box.append(el("p", {}, "WebSocket: the client sends these text messages, in order:"));
    box.append(el("pre", { class: "example" }, op["x-websocket"].map((m) => JSON.stringify(m)).join("\n")));
  }
  const resp = Object.entries(op.responses || {}).map(([code, r]) => {
    const c = r.content && Object.values(r.content)[0];
    return el("li", {}, el("code", {}, code), " ", r.description || "", " ", c ? link(refName(c.schema)) : "");
  });
  box.append(el("ul", { class: "responses" }, ...resp));
  for (const r of Object.values(op.responses || {})) {
    for (const [media, c] of Object.entries(r.content || {})) if (c["x-events"]) box.append(...eventStream(media, c));
  }
  return [box, el("a", { href: `#${id}` }, `${method.toUpperCase()} ${path}`)];
}

// A streamed response (text/event-stream): its events, each with its data's schema, and an example.
function eventStream(media, c) {
  const items = Object.entries(c["x-events"]).map(([name, s]) =>
    el("li", {}, el("code", {}, name), " ", link(refName(s)) || typeOf(s)));
  const out = [el("p", {}, el("code", {}, media), ": ", (c.schema && c.schema.description) || ""),
    el("ul", { class: "responses" }, ...items)];
  if (c.example) out.push(el("pre", { class: "example" }, c.example));
  return out;
}

function schema(name, s) {
  const box = el("section", { class: "schema", id: `schema-${name}` }, el("h3", {}, name));
  if (s.description) box.append(el("p", {}, s.description));
  const required = new Set(s.required || []);
  const rows = Object.entries(s.properties || {}).map(([f, p]) =>
    el("tr", {}, el("td", {}, el("code", {}, f), required.has(f) ? " *" : ""), el("td", {}, typeOf(p)),
      el("td", {}, p.description || "", p.default !== undefined ? ` (default ${JSON.stringify(p.default)})` : "")));
  if (rows.length) box.append(el("table", {}, el("tbody", {}, ...rows)));
  return box;
}

async function main() {
  const doc = await api("GET", "/openapi.json");
  $("info").textContent = `${doc.info.title} ${doc.info.version}: ${doc.info.description}`;
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      const [box, entry] = operation(path, m, item[m]);
      $("ops").append(box);
      $("toc").append(entry, " ");
    }
  }
  for (const [name, s] of Object.entries(doc.components.schemas)) $("schemas").append(schema(name, s));
}

document.addEventListener("DOMContentLoaded", () => {
  bindToken($("token"));
  $("token").addEventListener("change", () => location.reload());
  main().catch((e) => ($("info").textContent = "could not load /openapi.json: " + e.message));
});
