/* smegmesh dashboard: plain JS, no build step. Data comes from the /v1 API of
 * smegd (session cookie, and the session's key in X-Smeg-CSRF on every request:
 * signin.js kept it in this origin's storage); live updates from the SSE
 * stream /v1/events (any event for a mesh re-fetches that mesh, debounced);
 * while the stream is unavailable the page polls. Every string from the mesh is
 * put into the page with textContent (never as HTML): aliases, descriptions and
 * services come from other nodes. */
"use strict";

const SESSION_KEY = "smeg-session";
const CSRF = (() => { try { return localStorage.getItem(SESSION_KEY) || ""; } catch (e) { return ""; } })();
if (!CSRF) window.location.replace("login");
const POLL_MS = 4000;
/* Traffic counters and handshake ages change without events: re-read them this
 * often even while the stream is live. */
const REFRESH_MS = 15000;
const DEBOUNCE_MS = 250;
const EVENT_TYPES = [
  "member.joined", "member.left", "member.pruned", "member.evicted", "member.returned",
  "member.changed", "route.changed", "exit.changed", "client.reassigned", "tunnel.dead", "tunnel.blackhole",
  "handshake.up",
  "handshake.down", "wg.peer_added", "wg.peer_removed", "mesh.joined", "mesh.left", "mesh.evicted",
  "stream.dropped", "config.reloaded", "message",
];

const state = {
  meshes: new Map(),        // mesh id -> MeshDetail
  selected: null,           // {mesh, key}
  query: "",
  live: false,
  evict: null,              // {path, field} when the API has an evict route
  lastUpdate: 0,
};
window.smeg = state;        // for tests and the curious

// ------------------------------------------------------------------ helpers
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtBytes(n) {
  if (!n) return "0 B";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fmtAge(s) {
  if (s === null || s === undefined) return "never";
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function shortKey(k) { return k ? k.slice(0, 8) + "…" : ""; }
function nodeName(n) { return n.alias || shortKey(n.public_key); }
function isExit(n) { return (n.routes || []).some((r) => r.destination === "::/0"); }

function bridges() {
  // a peer in two meshes or more: it can carry traffic across (a node advertises
  // nothing into a mesh where it is a client: docs/ROUTING.md)
  const seen = new Map();   // key -> set of mesh ids where it is a peer
  for (const [mid, m] of state.meshes) {
    for (const n of m.nodes) {
      if (n.role !== "peer") continue;
      if (!seen.has(n.public_key)) seen.set(n.public_key, new Set());
      seen.get(n.public_key).add(mid);
    }
  }
  return new Map([...seen].filter(([, s]) => s.size > 1));
}

function matches(n, q) {
  if (!q) return true;
  q = q.toLowerCase();
  return (n.alias || "").toLowerCase().includes(q) ||
    (n.overlay_address || "").toLowerCase().includes(q) ||
    (n.public_key || "").toLowerCase().startsWith(q) ||
    (n.node_id || "").toLowerCase().startsWith(q);
}

function banner(msg) {
  const b = $("#banner");
  b.hidden = !msg;
  b.textContent = msg || "";
}

// ------------------------------------------------------------------ API
async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { "X-Smeg-CSRF": CSRF } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch(path, opts);
  if (resp.status === 401) {
    window.location.href = "login";
    throw new Error("signed out");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const msg = data && data.error ? data.error.message : `HTTP ${resp.status}`;
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return data;
}

const enc = encodeURIComponent;

async function loadMesh(id) {
  try {
    const m = await api("GET", `/v1/meshes/${enc(id)}`);
    state.meshes.set(id, m);
  } catch (e) {
    if (e.status === 404) state.meshes.delete(id);
    else throw e;
  }
}

async function loadAll() {
  const list = await api("GET", "/v1/meshes");
  const ids = new Set(list.map((m) => m.mesh_id));
  for (const id of [...state.meshes.keys()]) if (!ids.has(id)) state.meshes.delete(id);
  await Promise.all([...ids].map(loadMesh));
  state.lastUpdate = Date.now();
  banner("");
  render();
}

const pending = new Set();
let debounceTimer = null;
let fullPending = false;
function scheduleRefresh(meshId) {
  if (meshId && state.meshes.has(meshId)) pending.add(meshId);
  else fullPending = true;
  if (debounceTimer) return;
  debounceTimer = setTimeout(async () => {
    debounceTimer = null;
    const ids = [...pending];
    const full = fullPending;
    pending.clear();
    fullPending = false;
    try {
      if (full) await loadAll();
      else {
        await Promise.all(ids.map(loadMesh));
        state.lastUpdate = Date.now();
        render();
      }
    } catch (e) {
      banner(`Cannot reach smegd: ${e.message}`);
    }
  }, DEBOUNCE_MS);
}

async function findEvictRoute() {
  try {
    const doc = await fetch("/openapi.json", { credentials: "same-origin", headers: { "X-Smeg-CSRF": CSRF } }).then((r) => r.json());
    for (const [path, ops] of Object.entries(doc.paths || {})) {
      if (/^\/v1\/meshes\/\{[^}]+\}\/evict$/.test(path) && ops.post) {
        let field = "node";
        const ref = (((ops.post.requestBody || {}).content || {})["application/json"] || {}).schema;
        const name = ref && ref.$ref ? ref.$ref.split("/").pop() : null;
        const schema = name ? ((doc.components || {}).schemas || {})[name] : ref;
        if (schema && schema.properties && !schema.properties.node) {
          field = (schema.required || Object.keys(schema.properties))[0] || field;
        }
        state.evict = { path, field };
      }
    }
  } catch (e) {
    state.evict = null;
  }
}

// ------------------------------------------------------------------ live updates
let source = null;
let pollTimer = null;
function setLive(on, text) {
  state.live = on;
  const p = $("#live");
  p.className = "pill " + (on ? "pill-on" : "pill-off");
  p.textContent = text;
}

function startPolling() {
  if (pollTimer) return;
  pollTimer = setInterval(() => scheduleRefresh(null), POLL_MS);
}
function stopPolling() {
  if (pollTimer) clearInterval(pollTimer);
  pollTimer = null;
}

function connectEvents() {
  if (!window.EventSource) { setLive(false, "polling"); startPolling(); return; }
  source = new EventSource(`/v1/events?session=${encodeURIComponent(CSRF)}`);
  source.onopen = () => {
    setLive(true, "live");
    stopPolling();
    scheduleRefresh(null);   // whatever happened while we were away
  };
  const onEvent = (ev) => {
    let data = {};
    try { data = JSON.parse(ev.data); } catch (e) { data = {}; }
    const t = data.type || ev.type;
    if (t === "mesh.joined" || t === "mesh.left" || t === "stream.dropped" || !data.mesh) {
      scheduleRefresh(null);
    } else {
      scheduleRefresh(data.mesh);
    }
  };
  for (const t of EVENT_TYPES) source.addEventListener(t, onEvent);
  source.onerror = async () => {
    setLive(false, "reconnecting…");
    startPolling();
    if (source.readyState === EventSource.CLOSED) {
      // the browser gave up (e.g. an older smegd without /v1/events): poll only
      setLive(false, "polling");
      source = null;
      setTimeout(connectEvents, 30000);
    }
  };
}

// ------------------------------------------------------------------ graph
let cy = null;
function graphStyle() {
  return [
    { selector: "node", style: {
      "label": "data(label)", "text-wrap": "wrap", "font-size": 11, "color": "#1d2733",
      "text-valign": "bottom", "text-margin-y": 4, "width": 34, "height": 34,
      "background-color": "#2f6fd6", "border-width": 0,
      "text-background-color": "#ffffff", "text-background-opacity": 0.8,
      "text-background-padding": 1 } },
    { selector: "node.peer", style: { "shape": "round-rectangle" } },
    { selector: "node.client", style: {
      "shape": "ellipse", "background-color": "#169c8c", "width": 24, "height": 24 } },
    { selector: "node.self", style: { "border-width": 4, "border-color": "#e0a100" } },
    { selector: "node.exit", style: {
      "border-width": 4, "border-style": "double", "border-color": "#8e44ad" } },
    { selector: "node.self.exit", style: { "border-color": "#e0a100" } },
    { selector: "node.suspect", style: {
      "border-width": 3, "border-style": "dashed", "border-color": "#d64545",
      "background-opacity": 0.45 } },
    { selector: "node.mesh", style: {
      "shape": "round-rectangle", "background-color": "#eef3fb", "background-opacity": 1,
      "border-width": 1, "border-color": "#c9d6ea", "label": "data(label)",
      "text-valign": "top", "text-halign": "center", "font-size": 12, "font-weight": "bold",
      "color": "#47607f", "padding": 18, "text-margin-y": -4,
      "text-background-opacity": 0, "min-width": 150 } },
    { selector: "node.dim", style: { "opacity": 0.18 } },
    { selector: "node.hit", style: { "overlay-color": "#e0a100", "overlay-opacity": 0.25 } },
    { selector: "node:selected", style: { "overlay-color": "#2f6fd6", "overlay-opacity": 0.2 } },
    { selector: "edge", style: {
      "width": 1.5, "line-color": "#b9c6d6", "curve-style": "bezier" } },
    { selector: "edge.client", style: { "line-color": "#8fd1c8", "width": 1.5 } },
    { selector: "edge.bridge", style: {
      "line-color": "#e67e22", "width": 3, "line-style": "dashed" } },
    { selector: "edge.dim", style: { "opacity": 0.12 } },
  ];
}

function graphElements() {
  const els = [];
  const br = bridges();
  const nodeId = (mid, key) => `${mid}|${key}`;
  for (const [mid, m] of state.meshes) {
    els.push({ group: "nodes", data: { id: `mesh|${mid}`, label: `mesh ${mid}` },
      classes: "mesh" });
    const keys = new Set(m.nodes.map((n) => n.public_key));
    const peers = m.nodes.filter((n) => n.role === "peer");
    for (const n of m.nodes) {
      const cls = [n.role, n.is_self ? "self" : "", n.status === "suspect" ? "suspect" : "",
        isExit(n) ? "exit" : "", br.has(n.public_key) ? "bridge" : ""].filter(Boolean).join(" ");
      const label = `${nodeName(n)}${isExit(n) ? " ⇱ exit" : ""}`;
      els.push({ group: "nodes", classes: cls,
        data: { id: nodeId(mid, n.public_key), parent: `mesh|${mid}`, label, mesh: mid,
          key: n.public_key } });
    }
    // peers are all connected to each other (full mesh); draw it while it stays readable
    if (peers.length <= 10) {
      for (let i = 0; i < peers.length; i++) {
        for (let j = i + 1; j < peers.length; j++) {
          const a = nodeId(mid, peers[i].public_key), b = nodeId(mid, peers[j].public_key);
          els.push({ group: "edges", data: { id: `${a}~${b}`, source: a, target: b } });
        }
      }
    }
    for (const n of m.nodes) {
      if (n.role === "client" && n.assigned_peer && keys.has(n.assigned_peer)) {
        const a = nodeId(mid, n.assigned_peer), b = nodeId(mid, n.public_key);
        els.push({ group: "edges", classes: "client", data: { id: `${a}~${b}`, source: a, target: b } });
      }
    }
  }
  for (const [key, mids] of br) {
    const list = [...mids].sort();
    for (let i = 0; i + 1 < list.length; i++) {
      const a = nodeId(list[i], key), b = nodeId(list[i + 1], key);
      els.push({ group: "edges", classes: "bridge", data: { id: `bridge|${a}~${b}`, source: a, target: b } });
    }
  }
  return els;
}

/* Our own layout, stable from one update to the next: per mesh, its peers on a
 * circle (this node on top), each client further out on the ray of its peer;
 * meshes side by side. */
function layoutPositions() {
  const pos = {};
  let x0 = 0;
  for (const [mid, m] of [...state.meshes].sort(([a], [b]) => a.localeCompare(b))) {
    const peers = m.nodes.filter((n) => n.role !== "client")
      .sort((a, b) => (b.is_self - a.is_self) || nodeName(a).localeCompare(nodeName(b)));
    const clients = m.nodes.filter((n) => n.role === "client");
    const r = peers.length <= 1 ? 0 : Math.max(80, peers.length * 26);
    const byPeer = new Map();
    for (const c of clients) {
      const k = peers.some((p) => p.public_key === c.assigned_peer) ? c.assigned_peer : "";
      if (!byPeer.has(k)) byPeer.set(k, []);
      byPeer.get(k).push(c);
    }
    const maxClients = Math.max(0, ...[...byPeer.values()].map((l) => l.length));
    const outer = r + (maxClients ? 80 : 0);
    const cx = x0 + outer + 60;
    const angle = (j) => -Math.PI / 2 + (2 * Math.PI * j) / Math.max(1, peers.length);
    peers.forEach((p, j) => {
      const a = angle(j);
      pos[`${mid}|${p.public_key}`] = { x: cx + r * Math.cos(a), y: r * Math.sin(a) };
      (byPeer.get(p.public_key) || []).forEach((c, k, list) => {
        const spread = (k - (list.length - 1) / 2) * 0.32;
        const d = (r || 0) + 80 + (list.length > 3 ? (k % 2) * 40 : 0);
        const b = peers.length <= 1 ? Math.PI / 2 + spread * 2 : a + spread;
        pos[`${mid}|${c.public_key}`] = { x: cx + d * Math.cos(b), y: d * Math.sin(b) };
      });
    });
    (byPeer.get("") || []).forEach((c, k, list) => {
      const b = -Math.PI / 2 + (2 * Math.PI * (k + 0.5)) / list.length;
      pos[`${mid}|${c.public_key}`] = { x: cx + (r + 120) * Math.cos(b), y: (r + 120) * Math.sin(b) };
    });
    x0 = cx + outer + 60 + 80;
  }
  return (node) => pos[node.id()] || { x: 0, y: 0 };
}

function renderGraph() {
  if (!window.cytoscape) return;
  const els = graphElements();
  if (!cy) {
    cy = window.cytoscape({
      container: $("#graph"), elements: [], style: graphStyle(),
      wheelSensitivity: 0.3, minZoom: 0.2, maxZoom: 1.8,
    });
    // the side panel opening or closing changes the graph's width: fit again
    if (window.ResizeObserver) {
      new ResizeObserver(() => { cy.resize(); cy.fit(undefined, 30); }).observe($("#graph"));
    }
    cy.on("tap", "node", (ev) => {
      const d = ev.target.data();
      if (d.key) select(d.mesh, d.key);
    });
    state.cy = cy;
  }
  const want = new Map(els.map((e) => [e.data.id, e]));
  let changed = false;
  cy.batch(() => {
    cy.elements().forEach((e) => {
      if (!want.has(e.id())) { cy.remove(e); changed = true; }
    });
    for (const e of els) {
      const cur = cy.getElementById(e.data.id);
      if (cur.nonempty()) {
        cur.data(e.data);
        cur.classes(e.classes || "");
      } else {
        cy.add(e);
        changed = true;
      }
    }
  });
  applySearchToGraph();
  if (changed) {
    cy.layout({ name: "preset", positions: layoutPositions(), fit: true, padding: 30 }).run();
  }
}

function applySearchToGraph() {
  if (!cy) return;
  const q = state.query;
  cy.batch(() => {
    cy.nodes().removeClass("dim hit");
    cy.edges().removeClass("dim");
    if (!q) return;
    cy.nodes().forEach((node) => {
      const d = node.data();
      if (!d.key) return;
      const m = state.meshes.get(d.mesh);
      const n = m && m.nodes.find((x) => x.public_key === d.key);
      node.addClass(n && matches(n, q) ? "hit" : "dim");
    });
    cy.edges().addClass("dim");
  });
}

// ------------------------------------------------------------------ tables
function roleTags(n, br) {
  const tags = [el("span", { class: `tag tag-${n.role}` }, n.role)];
  if (n.is_self) tags.push(el("span", { class: "tag tag-self" }, "this node"));
  if (n.status === "suspect") tags.push(el("span", { class: "tag tag-suspect" }, "suspect"));
  if (isExit(n)) tags.push(el("span", { class: "tag tag-exit" }, "exit"));
  if (br.has(n.public_key)) tags.push(el("span", { class: "tag tag-bridge" }, "bridge"));
  return tags;
}

function meshSection(mid, m, br) {
  const me = m.nodes.find((n) => n.is_self);
  const byKey = new Map(m.nodes.map((n) => [n.public_key, n]));
  const nodes = [...m.nodes].sort((a, b) =>
    (b.is_self - a.is_self) || a.role.localeCompare(b.role) || nodeName(a).localeCompare(nodeName(b)));
  const shown = nodes.filter((n) => matches(n, state.query));
  const rows = shown.map((n) => {
    const sel = state.selected && state.selected.mesh === mid && state.selected.key === n.public_key;
    const via = n.role === "client" && n.assigned_peer && byKey.get(n.assigned_peer);
    return el("tr", {
      class: [n.is_self ? "self" : "", sel ? "selected" : ""].filter(Boolean).join(" "),
      dataset: { key: n.public_key, alias: n.alias || "", address: n.overlay_address, role: n.role },
      onclick: () => select(mid, n.public_key),
    },
    el("td", {}, el("strong", {}, nodeName(n)), via ? el("div", { class: "muted" }, `via ${nodeName(via)}`) : null),
    el("td", { class: "mono" }, n.overlay_address),
    el("td", {}, roleTags(n, br)),
    el("td", { class: "nowrap" }, n.is_self ? "—" : (n.wg_peer ? fmtAge(n.handshake_age_s) : "—")),
    el("td", { class: "nowrap" }, n.is_self ? "—" : `↓ ${fmtBytes(n.rx_bytes)} · ↑ ${fmtBytes(n.tx_bytes)}`),
    el("td", {}, Object.keys(n.services || {}).sort().join(", ") || el("span", { class: "muted" }, "—")));
  });
  const leader = m.leader && byKey.get(m.leader);
  return el("section", { class: "mesh", dataset: { mesh: mid } },
    el("div", { class: "mesh-head" },
      el("h2", {}, "mesh ", el("span", { class: "mono" }, mid)),
      el("span", { class: "muted mono" }, m.prefix),
      el("span", { class: "muted" }, `${m.nodes.length} node${m.nodes.length === 1 ? "" : "s"}`),
      me ? el("span", { class: "muted" }, `this node: ${nodeName(me)} (${m.role || me.role})`) : null,
      leader ? el("span", { class: "muted" }, `leader: ${nodeName(leader)}`) : null,
      el("div", { class: "actions" },
        el("button", { class: "small ghost", type: "button", "data-action": "alias", onclick: () => editAlias(mid) }, "Set my alias"),
        el("button", { class: "small ghost", type: "button", "data-action": "description", onclick: () => editDescription(mid) }, "Set my description"),
        el("button", { class: "small ghost", type: "button", "data-action": "service", onclick: () => editService(mid) }, "Services"),
        el("button", { class: "small", type: "button", "data-action": "invite", onclick: () => invite(mid) }, "Invite…"))),
    shown.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["Node", "Address", "Role", "Handshake", "Traffic", "Services"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)) :
      el("p", { class: "empty" }, state.query ? "No node matches the search." : "No nodes."));
}

function render() {
  const br = bridges();
  const box = $("#meshes");
  box.replaceChildren(...[...state.meshes].sort(([a], [b]) => a.localeCompare(b))
    .map(([mid, m]) => meshSection(mid, m, br)));
  if (!state.meshes.size) {
    box.append(el("p", { class: "empty" },
      "This node is in no mesh yet: smegctl new-mesh, or smegctl join-mesh --token TOKEN."));
  }
  const selves = [...state.meshes.values()].map((m) => m.nodes.find((n) => n.is_self)).filter(Boolean);
  $("#whoami").textContent = selves.length ?
    `${nodeName(selves[0])} · ${state.meshes.size} mesh${state.meshes.size === 1 ? "" : "es"}` : "";
  renderGraph();
  renderPanel();
}

// ------------------------------------------------------------------ side panel
function select(mesh, key) {
  state.selected = { mesh, key };
  if (cy) { cy.nodes().unselect(); cy.getElementById(`${mesh}|${key}`).select(); }
  render();
}

function renderPanel() {
  const panel = $("#panel");
  const s = state.selected;
  const m = s && state.meshes.get(s.mesh);
  const n = m && m.nodes.find((x) => x.public_key === s.key);
  if (!n) {
    panel.hidden = true;
    if (s && m) {
      // the selected node went away (pruned, left, evicted)
      state.selected = null;
    }
    return;
  }
  panel.hidden = false;
  panel.dataset.key = n.public_key;
  $("#panel-title").textContent = nodeName(n);
  const br = bridges();
  const byKey = new Map(m.nodes.map((x) => [x.public_key, x]));
  const f = [
    ["Alias", n.alias || "—"],
    ["Address", n.overlay_address],
    ["Role", roleTags(n, br)],
    ["Public key", el("span", { class: "mono" }, n.public_key)],
    ["Mesh", el("span", { class: "mono" }, s.mesh)],
    ["Status", n.status || "live"],
    ["Last seen", n.seen_via
      ? `via ${nodeName(byKey.get(n.seen_via) || { public_key: n.seen_via })}`
      : (n.last_seen ? fmtAge(Date.now() / 1000 - n.last_seen) : "—")],
    ["Handshake", n.is_self ? "— (this node)" : (n.wg_peer ? fmtAge(n.handshake_age_s) : "no direct WireGuard peer")],
    ["Traffic", n.is_self ? "—" : `received ${fmtBytes(n.rx_bytes)}, sent ${fmtBytes(n.tx_bytes)}`],
    ["Endpoint", n.wg_endpoint || "—"],
    ["Description", n.description || "—"],
  ];
  if (n.assigned_peer) f.push(["Peer", nodeName(byKey.get(n.assigned_peer) || { public_key: n.assigned_peer })]);
  if (br.has(n.public_key)) f.push(["Bridges", [...br.get(n.public_key)].sort().join(", ")]);
  const svc = Object.entries(n.services || {}).sort();
  f.push(["Services", svc.length ? el("div", {}, svc.map(([k, v]) => el("div", {}, el("strong", {}, k), " = ", v))) : "—"]);
  if ((n.routes || []).length) f.push(["Routes", el("div", { class: "mono" }, n.routes.map((r) => el("div", {}, r.destination)))]);
  if (n.keepalive_s) f.push(["Keepalive", `${n.keepalive_s} s`]);
  $("#panel-fields").replaceChildren(...f.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const actions = [];
  if (n.is_self) {
    actions.push(el("button", { class: "small ghost", type: "button", onclick: () => editAlias(s.mesh) }, "Set alias"));
    actions.push(el("button", { class: "small ghost", type: "button", onclick: () => editDescription(s.mesh) }, "Set description"));
    actions.push(el("button", { class: "small ghost", type: "button", onclick: () => editService(s.mesh) }, "Services"));
  } else if (state.evict) {
    actions.push(el("button", { class: "small danger", type: "button", "data-action": "evict", onclick: () => evict(s.mesh, n) }, "Evict…"));
  }
  $("#panel-actions").replaceChildren(...actions);
}

// ------------------------------------------------------------------ dialogs (each action is confirmed)
/* ask({title, fields, confirm(values) -> text, run(values) -> Promise<result>, done(result)}):
 * the first click shows what will happen, the second does it. */
function ask(spec) {
  const dlg = $("#dialog");
  const body = $("#dialog-body");
  const confirmP = $("#dialog-confirm");
  const errP = $("#dialog-error");
  const ok = $("#dialog-ok");
  $("#dialog-title").textContent = spec.title;
  body.replaceChildren(...(spec.fields || []).flatMap((fd) => [
    el("label", { for: `f-${fd.name}` }, fd.label),
    fd.textarea ?
      el("textarea", { id: `f-${fd.name}`, name: fd.name, rows: 3, maxlength: fd.max || 1024 }) :
      el("input", { id: `f-${fd.name}`, name: fd.name, type: fd.type || "text", maxlength: fd.max || 1024 }),
  ]), ...(spec.extra ? [spec.extra] : []));
  for (const fd of spec.fields || []) {
    const inp = body.querySelector(`[name="${fd.name}"]`);
    if (fd.value !== undefined) inp.value = fd.value;
  }
  confirmP.hidden = true;
  errP.hidden = true;
  ok.textContent = "Continue";
  ok.disabled = false;
  ok.className = spec.danger ? "danger" : "";
  let stage = "edit";
  const values = () => Object.fromEntries((spec.fields || []).map((fd) =>
    [fd.name, body.querySelector(`[name="${fd.name}"]`).value]));
  $("#dialog-cancel").onclick = () => dlg.close();
  $("#dialog-form").onsubmit = async (ev) => {
    ev.preventDefault();
    errP.hidden = true;
    if (stage === "edit") {
      confirmP.textContent = spec.confirm(values());
      confirmP.hidden = false;
      for (const i of body.querySelectorAll("input, textarea")) i.readOnly = true;
      ok.textContent = "Confirm";
      stage = "confirm";
      return;
    }
    if (stage === "done") { dlg.close(); return; }
    ok.disabled = true;
    try {
      const res = await spec.run(values());
      scheduleRefresh(spec.mesh);
      if (spec.done) {
        spec.done(res, body);
        confirmP.hidden = true;
        ok.textContent = "Close";
        ok.disabled = false;
        stage = "done";
      } else {
        dlg.close();
      }
    } catch (e) {
      errP.textContent = e.message;
      errP.hidden = false;
      ok.disabled = false;
      stage = "edit";
      ok.textContent = "Continue";
      confirmP.hidden = true;
      for (const i of body.querySelectorAll("input, textarea")) i.readOnly = false;
    }
  };
  dlg.showModal();
}

function selfOf(mid) {
  const m = state.meshes.get(mid);
  return m && m.nodes.find((n) => n.is_self);
}

function editAlias(mid) {
  const me = selfOf(mid) || {};
  ask({
    title: "Set this node's alias", mesh: mid,
    fields: [{ name: "alias", label: "Alias (DNS label: letters, digits, '-')", value: me.alias || "", max: 63 }],
    confirm: (v) => `Set the alias of this node in mesh ${mid} to “${v.alias}”? Every member will see it.`,
    run: (v) => api("PUT", `/v1/meshes/${enc(mid)}/alias`, { alias: v.alias }),
  });
}

function editDescription(mid) {
  const me = selfOf(mid) || {};
  ask({
    title: "Set this node's description", mesh: mid,
    fields: [{ name: "description", label: "Description", value: me.description || "", textarea: true }],
    confirm: () => `Replace the description of this node in mesh ${mid}?`,
    run: (v) => api("PUT", `/v1/meshes/${enc(mid)}/description`, { description: v.description }),
  });
}

function editService(mid) {
  const me = selfOf(mid) || {};
  const svc = Object.entries(me.services || {}).sort();
  const list = el("div", { class: "svc-list" },
    el("label", {}, "Current services"),
    svc.length ? svc.map(([k, v]) => el("div", {}, el("strong", {}, k), ` = ${v} `,
      el("button", { class: "small ghost", type: "button", onclick: () => { $("#dialog").close(); deleteService(mid, k); } }, "delete"))) :
      el("div", { class: "muted" }, "none"));
  ask({
    title: "Services of this node", mesh: mid, extra: list,
    fields: [{ name: "key", label: "Service name (to add or change)", max: 64 }, { name: "value", label: "Value" }],
    confirm: (v) => `Set service “${v.key}” = “${v.value}” on this node in mesh ${mid}?`,
    run: (v) => api("PUT", `/v1/meshes/${enc(mid)}/services/${enc(v.key)}`, { value: v.value }),
  });
}

function deleteService(mid, key) {
  ask({
    title: "Delete a service", mesh: mid, danger: true,
    confirm: () => `Delete service “${key}” from this node in mesh ${mid}?`,
    run: () => api("DELETE", `/v1/meshes/${enc(mid)}/services/${enc(key)}`),
  });
}

function invite(mid) {
  ask({
    title: "Invite a node", mesh: mid,
    fields: [{ name: "hours", label: "Valid for (hours)", value: "24", type: "number" },
      { name: "uses", label: "Number of joins it admits", value: "1", type: "number" }],
    confirm: (v) => `Issue a token that lets ${v.uses} node(s) join mesh ${mid} during ${v.hours} h? Anyone holding it can join.`,
    run: (v) => api("POST", `/v1/meshes/${enc(mid)}/invites`,
      { ttl_s: Math.round(Number(v.hours) * 3600), uses: Math.round(Number(v.uses)) }),
    done: (res, body) => {
      body.replaceChildren(
        el("label", { for: "invite-token" }, "Token (smegctl join-mesh --token …)"),
        el("textarea", { id: "invite-token", rows: 4, readonly: true }, res.token),
        el("button", { class: "small ghost", type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(res.token) }, "Copy"));
    },
  });
}

function evict(mid, n) {
  ask({
    title: `Evict ${nodeName(n)}`, mesh: mid, danger: true,
    confirm: () => `Evict ${nodeName(n)} (${n.overlay_address}) from mesh ${mid}? It loses access to the mesh.`,
    run: () => api("POST", state.evict.path.replace(/\{[^}]+\}/, enc(mid)), { [state.evict.field]: n.public_key }),
  });
}

// ------------------------------------------------------------------ start
$("#search").addEventListener("input", (e) => {
  state.query = e.target.value.trim();
  render();
});
$("#panel-close").addEventListener("click", () => { state.selected = null; render(); });
$("#logout").addEventListener("click", async () => {
  try { await fetch("logout", { method: "POST", headers: { "X-Smeg-CSRF": CSRF }, credentials: "same-origin" }); }
  finally {
    try { localStorage.removeItem(SESSION_KEY); } catch (e) { /* nothing kept */ }
    window.location.href = "login";
  }
});

(async () => {
  try {
    await Promise.all([loadAll(), findEvictRoute()]);
    renderPanel();
  } catch (e) {
    banner(`Cannot reach smegd: ${e.message}`);
  }
  connectEvents();
  setInterval(() => { if (state.live) scheduleRefresh(null); }, REFRESH_MS);
})();
