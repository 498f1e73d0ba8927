// distill-guard console. Plain JavaScript, no dependencies: it reads the
// admin API with the token kept in this tab's sessionStorage (never in a
// URL) and builds every element with textContent, never from HTML strings.
"use strict";

const TOKEN_KEY = "distill-guard-admin-token";
const POLL_MS = 2000;
const DETAIL_MS = 3000;
const LIVE_KEEP = 200;
const SVG_NS = "http://www.w3.org/2000/svg";
const LEVEL_COLOURS = {
  allow: "#8a94a3", slow: "#d4a017", degrade: "#e07b1f", throttle: "#d2452d", block: "#8f1d1d",
};
const PALETTE = ["#2458c6", "#2f7d4f", "#b04ad1", "#d2452d", "#0f8b8d", "#e07b1f", "#6b4f2a",
  "#d4a017", "#5b6abf", "#c2185b", "#558b2f", "#00838f", "#8d6e63", "#7b1fa2", "#37474f"];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  lastSeq: 0,
  gen: 0, // polling loops of an older generation stop
  view: null, // {kind: "cluster"|"account", id}
  graphFor: null,
};

class AuthError extends Error {}

// ------------------------------------------------------------------ helpers

function $(id) { return document.getElementById(id); }

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function badge(word) {
  return el("span", { class: "badge " + (word || "") }, word || "–");
}

function fmt(x, digits = 2) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (Math.abs(x) >= 1000) return x.toFixed(0);
  return x.toFixed(digits);
}

function clock(ms) {
  const d = new Date(ms);
  return d.toTimeString().slice(0, 8);
}

function idLink(kind, id) {
  if (!id) return "–";
  return el("a", { class: "id", href: `#${kind}/${id}`, "data-kind": kind, "data-id": id }, id);
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function clearTimers() {
  state.gen += 1;
}

/** Run `f` now and then every `ms` after it finishes, until the timers are cleared. */
function every(ms, f) {
  const gen = state.gen;
  const run = async () => {
    if (gen !== state.gen) return;
    try {
      await f();
    } catch (e) {
      if (e instanceof AuthError) return showLogin("The token was refused: log in again.");
      console.warn(e);
    }
    if (gen === state.gen) setTimeout(run, ms);
  };
  setTimeout(run, 0);
}

// ------------------------------------------------------------------ API

async function api(path, options = {}) {
  const headers = {};
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const r = await fetch(path, { method: options.method || "GET", headers, cache: "no-store" });
  if (r.status === 401) throw new AuthError("unauthorized");
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

// ------------------------------------------------------------------ login

function showLogin(message) {
  clearTimers();
  $("app").hidden = true;
  $("nav").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

async function login(event) {
  event.preventDefault();
  state.token = $("token").value.trim();
  try {
    await api("/admin/summary");
  } catch (e) {
    state.token = "";
    $("login-error").textContent = e instanceof AuthError ? "Wrong token." : String(e.message || e);
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token").value = "";
  start();
}

function logout() {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  showLogin("Logged out.");
}

// ------------------------------------------------------------------ overview

async function refreshSummary() {
  const s = await api("/admin/summary");
  const r = s.requests || {};
  const parts = [
    ["allowed", r.allow], ["slowed", r.slow], ["degraded", r.degrade],
    ["throttled", r.throttle], ["blocked", r.block],
    ["accounts", s.accounts], ["clusters", s.clusters],
  ];
  const items = parts.map(([k, v]) => el("span", {}, k + " ", el("b", {}, v ?? 0)));
  items.push(el("span", {}, "detection ", el("b", {}, s.detection)));
  if (s.clock_speed && s.clock_speed !== 1) items.push(el("span", {}, "engine clock ", el("b", {}, `×${s.clock_speed}`)));
  $("summary").replaceChildren(...items);
}

async function refreshClusters() {
  const { clusters } = await api("/admin/clusters?by=score&limit=15");
  $("clusters-empty").hidden = clusters.length > 0;
  const rows = clusters.map((c) => el("tr", {
    class: "link", "data-id": c.id, "data-members": c.members,
    onclick: () => go("cluster", c.id),
  },
  el("td", { class: "mono" }, c.id),
  el("td", { class: "num" }, c.members),
  el("td", {}, (c.links || []).join(", ")),
  el("td", {}, c.strength),
  el("td", { class: "num" }, fmt(c.score && c.score.value)),
  el("td", {}, badge(c.score && c.score.level)),
  el("td", {}, c.manual ? badge(c.manual) : "")));
  replaceRows(document.querySelector("#clusters tbody"), rows);
}

async function refreshAccounts() {
  const { accounts } = await api("/admin/top?by=score");
  const rows = accounts.filter((a) => a.score > 0).slice(0, 12).map((a) => el("tr", {
    class: "link", "data-id": a.id, onclick: () => go("account", a.id),
  },
  el("td", { class: "mono" }, a.id),
  el("td", { class: "num" }, a.requests),
  el("td", { class: "mono" }, a.cluster || "–"),
  el("td", { class: "num" }, fmt(a.score)),
  el("td", {}, badge(a.level))));
  replaceRows(document.querySelector("#accounts tbody"), rows);
}

/** One line saying why, from an audit record's reasons. */
function why(d) {
  const r = d.reasons || [];
  if (d.kind === "manual_decision") {
    return `${d.mode}: ${d.decision} ${d.cluster ? "cluster" : "account"}`;
  }
  const parts = [];
  for (const x of r) {
    if (x.manual_block) parts.push(`manual block (${x.manual_block})`);
    else if (x.limit) parts.push(`${x.scope} ${x.limit} limit, retry ${x.retry_after_s} s`);
    else if (x.score !== undefined) parts.push(`score ${fmt(x.score)} (${x.scope}, ${x.enforced_level} enforced)`);
    else if (x.signal) parts.push(`${x.signal} ${fmt(x.contribution)}`);
  }
  return parts.slice(0, 4).join(" · ");
}

async function refreshLive() {
  if ($("pause").checked) return;
  const { last, decisions } = await api(`/admin/decisions?after=${state.lastSeq}&limit=200`);
  if (last < state.lastSeq) state.lastSeq = 0; // the proxy restarted
  if (!decisions.length) return;
  state.lastSeq = decisions[decisions.length - 1].seq;
  const list = $("live");
  for (const d of decisions) {
    const li = el("li", {
      "data-seq": d.seq, "data-decision": d.decision, "data-kind": d.kind,
      "data-account": d.account, "data-cluster": d.cluster, "data-request-id": d.request_id,
    },
    el("span", { class: "when" }, clock(d.time_unix_ms)),
    badge(d.decision), " ",
    d.account ? ["account ", idLink("account", d.account), " "] : null,
    d.cluster ? ["cluster ", idLink("cluster", d.cluster)] : null,
    el("span", { class: "why" }, why(d)));
    list.prepend(li);
  }
  while (list.children.length > LIVE_KEEP) list.lastChild.remove();
}

// ------------------------------------------------------------------ detail

function go(kind, id) {
  location.hash = `#${kind}/${id}`;
}

function route() {
  const m = /^#(cluster|account)\/([0-9a-f]{16})$/.exec(location.hash);
  state.view = m ? { kind: m[1], id: m[2] } : null;
  state.graphFor = null;
  $("overview").hidden = !!state.view;
  $("detail").hidden = !state.view;
  $("confirm").hidden = true;
  $("action-result").textContent = "";
  if (state.view) {
    $("detail-title").textContent = `${state.view.kind} ${state.view.id}`;
    $("graph-block").hidden = state.view.kind !== "cluster";
    for (const id of ["graph", "history", "graph-legend", "history-legend"]) $(id).replaceChildren();
    for (const t of ["signals", "admin-actions", "recent", "audit"]) document.querySelector(`#${t} tbody`).replaceChildren();
    renderActions();
  }
  window.scrollTo(0, 0);
}

function fact(name, value) {
  return el("div", {}, el("dt", {}, name), el("dd", {}, value));
}

function renderActions() {
  const { kind } = state.view;
  const buttons = [
    ["block", "Block", "danger"], ["unblock", "Unblock", ""], ["allow", "Allow", "ok"],
  ].map(([action, label, cls]) => el("button", {
    type: "button", class: cls, "data-action": action, onclick: () => confirmAction(action),
  }, `${label} ${kind}`));
  $("actions").replaceChildren(...buttons);
}

const ACTION_TEXT = {
  block: (k) => k === "cluster"
    ? "Every member's requests will be refused with 403 while it is in this cluster."
    : "Its requests will be refused with 403.",
  unblock: () => "Removes the manual decision (block or allow); the policy decides again.",
  allow: (k) => k === "cluster"
    ? "Members skip the cluster budget and cluster scoring."
    : "The account skips detection and is never linked.",
};

function confirmAction(action) {
  const { kind, id } = state.view;
  const box = $("confirm");
  box.replaceChildren(
    el("strong", {}, `${action} ${kind} ${id}?`), " ", ACTION_TEXT[action](kind),
    el("button", { type: "button", class: "danger confirm", onclick: () => doAction(action) }, `Confirm ${action}`),
    el("button", { type: "button", class: "cancel", onclick: () => { box.hidden = true; } }, "Cancel"),
  );
  box.hidden = false;
}

async function doAction(action) {
  const { kind, id } = state.view;
  $("confirm").hidden = true;
  try {
    const r = await api(`/admin/${kind}s/${id}/${action}`, { method: "POST" });
    $("action-result").textContent =
      `${action}: done (${r.persisted ? "persisted in the state file" : "in memory; no state_path"}), recorded in the audit log.`;
  } catch (e) {
    if (e instanceof AuthError) return showLogin("The token was refused: log in again.");
    $("action-result").textContent = `${action} failed: ${e.message}`;
  }
  await refreshDetail();
}

async function refreshDetail() {
  const v = state.view;
  if (!v) return;
  const base = `/admin/${v.kind}s/${v.id}`;
  const facts = [];
  let info = null;
  try {
    info = await api(base);
  } catch (e) {
    if (e instanceof AuthError) throw e;
    $("detail-facts").replaceChildren(fact("state", e.message));
  }
  if (info && v.kind === "cluster") {
    facts.push(fact("members", info.members), fact("manual", info.manual ? badge(info.manual) : "none"));
    if (!info.dissolved) {
      facts.push(
        fact("strength", info.strength), fact("links", (info.links || []).join(", ")),
        fact("level", badge(info.score && info.score.level)), fact("score", fmt(info.score && info.score.value)),
        fact("formed", `${info.formed_seconds_ago} s ago (engine clock)`),
        fact("shares a budget", info.shares_budget ? `yes, ×${fmt(info.budget_multiplier)}` : "no"));
    } else {
      facts.push(fact("state", "dissolved"));
    }
  } else if (info) {
    const b = info.budgets || {};
    facts.push(
      fact("manual", info.manual ? badge(info.manual) : "none"),
      fact("level", badge(info.score && info.score.level)), fact("score", fmt(info.score && info.score.value)),
      fact("cluster", info.cluster ? idLink("cluster", info.cluster.id) : "none"),
      fact("tier", b.tier || "–"), fact("requests left", fmt(b.requests_remaining, 0)),
      fact("output tokens left", fmt(b.output_tokens_remaining, 0)), fact("in flight", b.in_flight ?? "–"),
      fact("first seen", b.first_seen_seconds_ago !== undefined ? `${b.first_seen_seconds_ago} s ago` : "–"));
  }
  if (info && info.score) {
    // Why a score is low although signals are high: too little evidence yet.
    facts.push(fact("evidence", `${fmt(info.score.evidence)} (${fmt(info.score.requests, 1)} requests in the window)`));
  }
  if (info) $("detail-facts").replaceChildren(...facts);
  $("detail").dataset.manual = (info && info.manual) || "";

  const q = `${v.kind}=${v.id}`;
  const [hist, recent, audit, actions] = await Promise.all([
    api(`${base}/history`), api(`/admin/decisions?${q}&limit=30`), api(`/admin/audit?${q}&limit=30`),
    api(`/admin/audit?${q}&kind=manual_decision&limit=10`),
  ]);
  if (state.view !== v) return;
  renderHistory(hist);
  renderSignals(hist.current);
  replaceRows(document.querySelector("#recent tbody"), recent.decisions.slice().reverse().map((d) => el("tr", {},
    el("td", {}, clock(d.time_unix_ms)), el("td", {}, badge(d.decision)),
    el("td", {}, idLink("account", d.account)), el("td", {}, d.mode), el("td", {}, why(d)))));
  replaceRows(document.querySelector("#admin-actions tbody"), actions.lines.slice().reverse().map((d) => el("tr", {},
    el("td", {}, clock(d.time_unix_ms)), el("td", {}, badge(d.decision)),
    el("td", {}, d.cluster ? ["cluster ", idLink("cluster", d.cluster)] : ["account ", idLink("account", d.account)]),
    el("td", {}, d.mode), el("td", {}, (d.reasons[0] || {}).persisted ? "yes" : "no"))));
  $("audit-note").textContent = audit.path ? `(${audit.path})` : `(${audit.note || "no audit log"})`;
  replaceRows(document.querySelector("#audit tbody"), audit.lines.slice().reverse().map((d) => el("tr", {},
    el("td", {}, clock(d.time_unix_ms)), el("td", {}, d.kind), el("td", {}, badge(d.decision)),
    el("td", {}, idLink("account", d.account)), el("td", {}, idLink("cluster", d.cluster)),
    el("td", {}, d.mode), el("td", {}, why(d)))));
  if (v.kind === "cluster" && state.graphFor !== v.id && info && !info.dissolved) {
    state.graphFor = v.id;
    await drawGraph(v.id);
  }
}

function renderSignals(current) {
  const rows = ((current && current.signals) || []).map((s) => el("tr", {},
    el("td", {}, s.signal), el("td", { class: "num" }, fmt(s.value, 3)), el("td", {}, s.unit || ""),
    el("td", { class: "num" }, fmt(s.normalised)), el("td", { class: "num" }, fmt(s.weight)),
    el("td", { class: "num" }, fmt(s.contribution, 3))));
  replaceRows(document.querySelector("#signals tbody"), rows);
}

// ------------------------------------------------------------------ history chart

function renderHistory(h) {
  const points = h.points || [];
  $("history-note").textContent =
    `(sampled every ${h.interval_seconds} s; ${points.length} points; time on the engine clock)`;
  if (points.length < 2) {
    $("history").replaceChildren(el("p", { class: "empty" }, "Not enough samples yet."));
    $("history-legend").replaceChildren();
    return;
  }
  const W = 900, H = 260, L = 40, R = 10, T = 10, B = 28;
  const t0 = points[0].engine_ms, t1 = points[points.length - 1].engine_ms;
  const span = Math.max(1, t1 - t0);
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const ymax = Math.max(0.05, ...points.map((p) => p.score));
  const y = (v) => T + (1 - v / ymax) * (H - T - B);
  const names = [];
  for (const p of points) {
    for (const [name, s] of Object.entries(p.signals)) {
      if (s.contribution > 0.001 && !names.includes(name)) names.push(name);
    }
  }
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "score and signal contributions over time" });
  for (const v of [0, ymax / 2, ymax]) {
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6eb" }),
      svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end", "font-size": 10, fill: "#6b7380" }, fmt(v)));
  }
  for (const f of [0, 0.5, 1]) {
    const t = t0 + f * span;
    const mins = (t - t1) / 60000;
    chart.append(svg("text", { x: x(t), y: H - 8, "text-anchor": "middle", "font-size": 10, fill: "#6b7380" },
      f === 1 ? "latest" : `${mins.toFixed(1)} min`));
  }
  const line = (values, colour, width, label) => {
    const d = values.map((v, i) => `${i ? "L" : "M"}${x(points[i].engine_ms).toFixed(1)},${y(v).toFixed(1)}`).join("");
    return svg("path", { d, fill: "none", stroke: colour, "stroke-width": width, "data-signal": label },
      svg("title", {}, label));
  };
  const legend = [];
  names.forEach((name, i) => {
    const colour = PALETTE[i % PALETTE.length];
    chart.append(line(points.map((p) => (p.signals[name] ? p.signals[name].contribution : 0)), colour, 1.5, name));
    legend.push(el("span", {}, swatch(colour), name));
  });
  chart.append(line(points.map((p) => p.score), "#1d2430", 3, "score"));
  legend.unshift(el("span", {}, swatch("#1d2430"), "score (sum of contributions)"));
  $("history").replaceChildren(chart);
  $("history-legend").replaceChildren(...legend);
}

function swatch(colour, dot) {
  const s = svg("svg", { width: dot ? 10 : 22, height: 10, class: "swatch-svg" });
  s.append(dot ? svg("circle", { cx: 5, cy: 5, r: 5, fill: colour })
    : svg("rect", { x: 0, y: 3, width: 22, height: 4, rx: 2, fill: colour }));
  return s;
}

// ------------------------------------------------------------------ graph

const STRENGTH_WIDTH = { strong: 2.6, medium: 1.6, weak: 1 };

/**
 * A force-directed layout (Fruchterman–Reingold): linked accounts attract,
 * all repel, a little gravity keeps loose parts near; then the drawing is
 * fitted into the W×H frame. Deterministic: it starts from a sunflower
 * spiral, not from random points.
 */
function layout(n, edges, W, H) {
  const k = 30;
  const pos = [];
  for (let i = 0; i < n; i++) {
    const r = k * Math.sqrt(i + 0.5);
    const a = i * 2.399963;
    pos.push({ x: r * Math.cos(a), y: r * Math.sin(a), dx: 0, dy: 0 });
  }
  let heat = k * Math.sqrt(n) / 4;
  for (let round = 0; round < 300; round++) {
    for (const p of pos) {
      p.dx = -p.x * 0.01;
      p.dy = -p.y * 0.01;
    }
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        const dx = pos[i].x - pos[j].x, dy = pos[i].y - pos[j].y;
        const d2 = Math.max(dx * dx + dy * dy, 0.01);
        const f = (2 * k * k) / d2;
        pos[i].dx += dx * f; pos[i].dy += dy * f;
        pos[j].dx -= dx * f; pos[j].dy -= dy * f;
      }
    }
    for (const [a, b] of edges) {
      const dx = pos[a].x - pos[b].x, dy = pos[a].y - pos[b].y;
      const f = Math.sqrt(dx * dx + dy * dy) / k;
      pos[a].dx -= dx * f; pos[a].dy -= dy * f;
      pos[b].dx += dx * f; pos[b].dy += dy * f;
    }
    for (const p of pos) {
      const m = Math.sqrt(p.dx * p.dx + p.dy * p.dy) || 1;
      const step = Math.min(m, heat);
      p.x += (p.dx / m) * step;
      p.y += (p.dy / m) * step;
    }
    heat = Math.max(heat * 0.985, 0.3);
  }
  const pad = 24;
  const xs = pos.map((p) => p.x), ys = pos.map((p) => p.y);
  const minX = Math.min(...xs), minY = Math.min(...ys);
  const scale = Math.min((W - 2 * pad) / Math.max(Math.max(...xs) - minX, 1),
    (H - 2 * pad) / Math.max(Math.max(...ys) - minY, 1));
  const offX = (W - scale * (Math.max(...xs) - minX)) / 2, offY = (H - scale * (Math.max(...ys) - minY)) / 2;
  for (const p of pos) {
    p.x = offX + (p.x - minX) * scale;
    p.y = offY + (p.y - minY) * scale;
  }
  return pos;
}

async function drawGraph(id) {
  const g = await api(`/admin/clusters/${id}/graph`);
  if (!state.view || state.view.id !== id) return;
  const index = new Map(g.nodes.map((n, i) => [n.id, i]));
  const edges = g.edges.filter((e) => index.has(e.from) && index.has(e.to));
  const W = 900, H = 560;
  const pos = layout(g.nodes.length, edges.map((e) => [index.get(e.from), index.get(e.to)]), W, H);
  const chart = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img", "aria-label": `cluster ${id}: ${g.nodes.length} accounts, ${edges.length} links`,
  });
  // One colour per combination of attribute kinds; width by strength.
  const kinds = [];
  const counts = new Map();
  for (const e of edges) {
    const k = e.kinds.join("+");
    if (!kinds.includes(k)) kinds.push(k);
    counts.set(`${k}|${e.strength}`, (counts.get(`${k}|${e.strength}`) || 0) + 1);
  }
  const colour = (k) => PALETTE[kinds.indexOf(k) % PALETTE.length];
  const edgeLayer = svg("g", { class: "edges" });
  for (const e of edges) {
    const a = pos[index.get(e.from)], b = pos[index.get(e.to)];
    const k = e.kinds.join("+");
    const label = `${k} · ${e.strength}`;
    edgeLayer.append(svg("g", {
      class: "edge", "data-from": e.from, "data-to": e.to, "data-kinds": k, "data-strength": e.strength,
    },
    svg("line", {
      x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1),
      stroke: colour(k), "stroke-width": STRENGTH_WIDTH[e.strength] || 1,
      "stroke-dasharray": e.strength === "weak" ? "4 3" : null, "stroke-opacity": 0.8,
    }),
    svg("title", {}, `${e.from} – ${e.to}\n${label}\nrules: ${e.rules.join(", ")}\n${e.seconds_ago} s ago`),
    svg("text", {
      class: "edge-label", x: ((a.x + b.x) / 2).toFixed(1), y: ((a.y + b.y) / 2).toFixed(1), "text-anchor": "middle",
    }, label)));
  }
  const nodeLayer = svg("g", { class: "nodes" });
  g.nodes.forEach((n, i) => {
    const p = pos[i];
    const level = n.level || "allow";
    nodeLayer.append(svg("g", {
      class: "node" + (n.manual ? " manual" : ""), "data-id": n.id, "data-level": level,
      onclick: () => go("account", n.id),
    },
    svg("circle", { cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: 6, fill: LEVEL_COLOURS[level] || LEVEL_COLOURS.allow }),
    svg("title", {}, `account ${n.id}\n${level}, score ${fmt(n.score)}${n.manual ? `\nmanual: ${n.manual}` : ""}`)));
  });
  chart.append(edgeLayer, nodeLayer);
  $("graph").classList.toggle("many", edges.length > 40);
  $("graph").replaceChildren(chart);
  $("graph-note").textContent = `(${g.nodes_shown} of ${g.members} accounts, ${edges.length} links; `
    + "edges are the links that joined accounts: colour = attribute kinds, width = strength, dashed = weak)";
  const legend = [];
  for (const k of kinds) {
    for (const s of ["strong", "medium", "weak"]) {
      const c = counts.get(`${k}|${s}`);
      if (c) legend.push(el("span", { class: "edge-kind" }, swatch(colour(k)), `${k} · ${s} (${c})`));
    }
  }
  for (const level of Object.keys(LEVEL_COLOURS)) {
    legend.push(el("span", {}, swatch(LEVEL_COLOURS[level], true), ` ${level}`));
  }
  $("graph-legend").replaceChildren(...legend);
}

// ------------------------------------------------------------------ export

async function exportIndicators() {
  const headers = state.token ? { Authorization: "Bearer " + state.token } : {};
  const r = await fetch("/admin/export/indicators", { headers, cache: "no-store" });
  if (r.status === 401) return showLogin("The token was refused: log in again.");
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: `distill-guard-indicators-${Date.now()}.json` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ------------------------------------------------------------------ start

function start() {
  clearTimers();
  $("login").hidden = true;
  $("app").hidden = false;
  $("nav").hidden = false;
  route();
  every(POLL_MS, refreshSummary);
  every(POLL_MS, refreshLive);
  every(POLL_MS, async () => { if (!state.view) await Promise.all([refreshClusters(), refreshAccounts()]); });
  every(DETAIL_MS, refreshDetail);
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("export").addEventListener("click", () => exportIndicators().catch((e) => console.warn(e)));
  $("back").addEventListener("click", (e) => { e.preventDefault(); location.hash = ""; });
  $("redraw").addEventListener("click", () => { if (state.view) drawGraph(state.view.id); });
  window.addEventListener("hashchange", () => { route(); refreshDetail().catch(() => {}); });
  // A listener without a token (loopback only) needs no login.
  try {
    await api("/admin/summary");
    start();
  } catch (e) {
    showLogin(state.token && e instanceof AuthError ? "The saved token was refused." : "");
  }
});
