// The dashboard: polls /v1/dashboard every second (a daemon: its pools and
// queues; a coordinator: every host with its load) and draws throughput and
// latency of the last minutes on canvases (a few lines of our own: two line
// plots do not need a plotting library).
import { api, bindToken, el } from "/web/common.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
let updates = 0;

function cells(tr, values) {
  tr.replaceChildren(...values.map((v) => el("td", {}, String(v))));
  return tr;
}

function table(id, rows) {
  $(id).tBodies[0].replaceChildren(...rows.map((r) => cells(el("tr"), r)));
}

function fmt(s) {
  return s === null || s === undefined ? "-" : `${(+s).toFixed(3)} s`;
}

// lines: [{points: [[t, v], ...], color}], x from t0 to t1.
function plot(canvas, lines, t0, t1) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  const all = lines.flatMap((l) => l.points.map((p) => p[1]));
  const top = Math.max(1e-9, ...all) * 1.1;
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, 4, w - pad - 4, h - pad);
  ctx.fillStyle = "#555";
  ctx.font = "11px sans-serif";
  ctx.fillText(top.toPrecision(3), 2, 14);
  ctx.fillText("0", 2, h - pad + 4);
  ctx.fillText(`-${Math.round((t1 - t0) / 60)} min`, pad, h - 8);
  ctx.fillText("now", w - 28, h - 8);
  const x = (t) => pad + ((t - t0) / (t1 - t0)) * (w - pad - 4);
  const y = (v) => 4 + (h - pad) * (1 - v / top);
  for (const line of lines) {
    ctx.strokeStyle = line.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    line.points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
  }
  canvas.dataset.points = String(Math.max(0, ...lines.map((l) => l.points.length)));
}

function draw(d) {
  const now = Math.floor(d.now);
  const series = d.series || [];
  // The window: back to the oldest second with runs, at least 2 and at most 10 minutes.
  const win = Math.min(600, Math.max(120, series.length ? now - series[0][0] + 10 : 0));
  const t0 = now - win;
  for (const w of document.querySelectorAll(".window")) w.textContent = String(Math.round(win / 60));
  const counts = new Map(series.map((b) => [b[0], b[1]]));
  const tput = [];
  for (let t = t0 + 1; t <= now; t++) tput.push([t, counts.get(t) || 0]);
  plot($("throughput"), [{ points: series.length ? tput : [], color: "#2a6" }], t0, now);
  plot($("latency"), [
    { points: series.map((b) => [b[0], b[2]]), color: "#26c" },
    { points: series.map((b) => [b[0], b[3]]), color: "#c42" },
  ], t0, now);
  $("runs").textContent = String(series.reduce((n, b) => n + b[1], 0));
  $("runs-min").textContent = String(series.filter((b) => b[0] > now - 60).reduce((n, b) => n + b[1], 0));
}

function showDaemon(d) {
  const pools = Object.entries(d.pools || {});
  table("pools", pools.map(([name, p]) => {
    const queued = Object.values(p.queued || {}).reduce((a, b) => a + b, 0);
    return [name, p.warm, p.busy, p.building, p.capacity, p.running, queued];
  }));
  const queues = [];
  for (const [name, p] of pools) {
    for (const [prio, n] of Object.entries(p.queued || {})) queues.push([name, prio, n]);
  }
  table("queues", queues.length ? queues : [["(all empty)", "-", 0]]);
  const r = d.recent_wall_time || {};
  $("p50").textContent = fmt(r.p50);
  $("p99").textContent = fmt(r.p99);
}

function showFleet(d) {
  $("hosts-box").hidden = false;
  $("pools-box").hidden = true;
  table("hosts", d.hosts.map((h) => [
    h.id, h.capacity, h.load, h.running, h.runs_last_min, `${h.heartbeat_age} s ago`, h.drained ? "yes" : "no",
  ]));
  const queues = [];
  for (const [q, v] of Object.entries(d.fleet_queues || {})) {
    const prios = Object.entries(v.priorities || {});
    for (const [prio, n] of prios) queues.push([q, prio, n]);
    const counted = prios.reduce((a, [, n]) => a + n, 0);
    if (v.depth > counted) queues.push([q, "(beyond the sample)", v.depth - counted]);
  }
  table("queues", queues.length ? queues : [["(all empty)", "-", 0]]);
  const s = d.series || [];
  const last = s.filter((b) => b[0] > d.now - 60);
  const n = last.reduce((a, b) => a + b[1], 0);
  $("p50").textContent = n ? fmt(last.reduce((a, b) => a + b[1] * b[2], 0) / n) : "-";
  $("p99").textContent = last.length ? fmt(Math.max(...last.map((b) => b[3]))) : "-";
}

async function tick() {
  try {
    const d = await api("GET", "/v1/dashboard");
    const fleet = Array.isArray(d.hosts);
    $("kind").textContent = fleet ? `coordinator: ${d.hosts.length} hosts` : "daemon";
    (fleet ? showFleet : showDaemon)(d);
    $("jobs").textContent = Object.entries(d.jobs || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
    draw(d);
    $("error").textContent = "";
    $("updates").textContent = String(++updates);
  } catch (e) {
    $("error").textContent = e.message;
  } finally {
    setTimeout(tick, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  bindToken($("token"));
  tick();
});
