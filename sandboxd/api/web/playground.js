// The playground: pick a language, edit, run with stdin, judge against tests
// typed in the page, or run live in a terminal over the session WebSocket.
import { api, b64, bindToken, el, text, token } from "/web/common.js";

const $ = (id) => document.getElementById(id);
const EXAMPLES = {
  python3: "import sys\n\nfor line in sys.stdin:\n    print(line.strip()[::-1])\n",
  c:
    '#include <stdio.h>\n#include <ctype.h>\n\nint main(void) {\n    int c;\n' +
    "    while ((c = getchar()) != EOF) putchar(toupper(c));\n    return 0;\n}\n",
  javascript: 'process.stdin.on("data", (d) => process.stdout.write(d.toString().toUpperCase()));\n',
  bash: "while read -r line; do echo \"got: $line\"; done\n",
};
const drafts = {}; // language -> the source last edited in it

function setBusy(msg) {
  $("busy").textContent = msg;
  $("run").disabled = $("judge").disabled = Boolean(msg);
}

function kib(bytes) {
  return bytes ? `${Math.round(bytes / 1024)} KiB` : "-";
}

async function loadLanguages() {
  const select = $("lang");
  try {
    const langs = await api("GET", "/v1/languages");
    select.replaceChildren(...langs.map((l) => el("option", { value: l.id }, l.name || l.id)));
    const saved = localStorage.getItem("sandboxd.lang");
    if (saved && langs.some((l) => l.id === saved)) select.value = saved;
    showSource();
  } catch (e) {
    $("stderr").textContent = "languages: " + e.message;
  }
}

function showSource() {
  const lang = $("lang").value;
  localStorage.setItem("sandboxd.lang", lang);
  $("source").value = drafts[lang] ?? EXAMPLES[lang] ?? "";
}

function addTest(input = "", expected = "") {
  const row = el("div", { class: "test" });
  const inp = el("textarea", { class: "test-input", rows: "2", placeholder: "input", spellcheck: "false" });
  const exp = el("textarea", { class: "test-expected", rows: "2", placeholder: "expected output", spellcheck: "false" });
  inp.value = input;
  exp.value = expected;
  const rm = el("button", { class: "remove" }, "x");
  rm.addEventListener("click", () => row.remove());
  row.append(inp, exp, rm);
  $("tests").append(row);
}

function submission(tests) {
  return { lang: $("lang").value, source: b64($("source").value), tests };
}

function showCompile(res) {
  const c = res.compile;
  if (c && res.verdict === "CE") $("stderr").textContent = text(c, "stderr") + text(c, "stdout");
}

async function run() {
  setBusy("running...");
  for (const id of ["stdout", "stderr"]) $(id).textContent = "";
  try {
    const res = await api("POST", "/v1/submissions?text=1", submission([{ input: b64($("stdin").value) }]));
    const t = res.tests[0];
    $("verdict").textContent = res.verdict;
    $("status").textContent = t ? (t.signal ? `signal ${t.signal}` : `exit ${t.exit_code}`) : res.message || "-";
    $("time").textContent = t ? `${t.time.toFixed(3)} s cpu, ${t.wall_time.toFixed(3)} s wall` : "-";
    $("memory").textContent = kib(t ? t.memory : 0);
    if (t) {
      $("stdout").textContent = text(t, "stdout");
      $("stderr").textContent = text(t, "stderr");
    }
    showCompile(res);
  } catch (e) {
    $("verdict").textContent = "error";
    $("stderr").textContent = e.message;
  } finally {
    setBusy("");
  }
}

async function judge() {
  const rows = [...document.querySelectorAll("#tests .test")];
  if (!rows.length) {
    $("stderr").textContent = "Judge: add a test first (input and expected output).";
    return;
  }
  const tests = rows.map((r) => ({
    input: b64(r.querySelector(".test-input").value),
    expected: b64(r.querySelector(".test-expected").value),
  }));
  setBusy("judging...");
  const body = $("judge-table").tBodies[0];
  body.replaceChildren();
  try {
    const res = await api("POST", "/v1/submissions?text=1", submission(tests));
    $("verdict").textContent = res.verdict;
    $("status").textContent = res.message || `${res.tests.length} tests`;
    $("time").textContent = `${res.time.toFixed(3)} s cpu (max)`;
    $("memory").textContent = kib(res.memory);
    for (const t of res.tests) {
      const cells = [t.index, t.verdict, t.time.toFixed(3), kib(t.memory), t.message];
      body.append(el("tr", { class: "verdict-" + t.verdict }, ...cells.map((c) => el("td", {}, String(c)))));
    }
    showCompile(res);
  } catch (e) {
    $("verdict").textContent = "error";
    $("stderr").textContent = e.message;
  } finally {
    setBusy("");
  }
}

// --- the live terminal (docs/sessions.md) -----------------------------------

let ws = null;
const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };

function termWrite(s, cls) {
  const out = $("term-out");
  out.append(cls ? el("span", { class: cls }, s) : s);
  out.scrollTop = out.scrollHeight;
}

function termConnected(on) {
  $("term-in").disabled = $("term-eof").disabled = $("term-kill").disabled = !on;
  $("term-start").disabled = on;
  if (on) $("term-in").focus();
}

function onMessage(ev) {
  if (typeof ev.data !== "string") {
    const bytes = new Uint8Array(ev.data);
    const stream = bytes[0] === 2 ? 2 : 1;
    termWrite(decoders[stream].decode(bytes.subarray(1), { stream: true }), stream === 2 ? "err" : "");
    return;
  }
  const msg = JSON.parse(ev.data);
  if (msg.type === "started") $("term-state").textContent = "running";
  else if (msg.type === "compiled") $("term-state").textContent = "compiled";
  else if (msg.type === "result") {
    const r = msg.result || {};
    const how = r.signal ? `signal ${r.signal}` : `exit ${r.exit_code}`;
    const why = msg.reason && msg.reason !== "exit" ? ", " + msg.reason : ""; // (idle, max_session, ...)
    $("term-state").textContent = `finished: ${r.status} (${how})${why}`;
    if (r.status === "compile_error" || msg.verdict === "CE") termWrite(text(r, "stderr"), "err");
  } else if (msg.type === "error") {
    $("term-state").textContent = `error ${msg.code}: ${msg.message}`;
  }
}

function startSession() {
  $("term-out").replaceChildren();
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${proto}//${location.host}/v1/sessions`);
  ws.binaryType = "arraybuffer";
  $("term-state").textContent = "connecting...";
  ws.onopen = () => {
    const start = { type: "start", language: $("lang").value, source: $("source").value };
    if (token()) start.token = token();
    ws.send(JSON.stringify(start));
    termConnected(true);
  };
  ws.onmessage = onMessage;
  ws.onclose = (ev) => {
    termConnected(false);
    if ($("term-state").textContent === "connecting...") $("term-state").textContent = `closed (${ev.code})`;
    ws = null;
  };
}

function sendLine(ev) {
  if (ev.key !== "Enter" || !ws) return;
  const line = $("term-in").value + "\n";
  $("term-in").value = "";
  termWrite(line, "echo");
  ws.send(new TextEncoder().encode(line));
}

document.addEventListener("DOMContentLoaded", () => {
  bindToken($("token"));
  $("token").addEventListener("change", loadLanguages);
  $("lang").addEventListener("change", showSource);
  $("source").addEventListener("input", () => (drafts[$("lang").value] = $("source").value));
  $("run").addEventListener("click", run);
  $("judge").addEventListener("click", judge);
  $("add-test").addEventListener("click", () => addTest());
  $("term-start").addEventListener("click", startSession);
  $("term-in").addEventListener("keydown", sendLine);
  $("term-eof").addEventListener("click", () => ws && ws.send(JSON.stringify({ type: "eof" })));
  $("term-kill").addEventListener("click", () => ws && ws.send(JSON.stringify({ type: "kill" })));
  addTest("abc\n", "cba\n");
  loadLanguages();
});
