// Trader page: live signals over a websocket, re-synced over HTTP on any gap.
//
// Contract with the server:
// - the websocket at /ws/signals/ pushes {"type": "signal", "seq": n, "signal": {...}}, one per change;
// - seq grows by one per change; a jump (seq > lastSeq + 1) means messages were missed, so the page asks
//   GET /api/signals/?since_seq=<lastSeq> (oldest change first) and continues from "last_seq";
// - a message with seq <= lastSeq is still applied when it is newer for its signal (per-signal sequence).
// Approvals and rejections go over HTTP only, never over the websocket.
(function () {
  "use strict";

  const boot = JSON.parse(document.getElementById("trader-bootstrap").textContent);
  const csrf = document.querySelector("input[name=csrfmiddlewaretoken]").value;
  const signals = new Map();
  const automations = new Map();
  let lastSeq = boot.last_seq || 0;
  let resyncing = null;
  let retryMs = 1000;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "onclick") node.addEventListener("click", v);
      else node.setAttribute(k, v);
    }
    for (const child of children || []) node.appendChild(child);
    return node;
  }

  async function api(method, url, body) {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = { detail: response.statusText }; }
    if (!response.ok) {
      const detail = data && data.detail !== undefined ? data.detail : JSON.stringify(data);
      throw new Error(Array.isArray(detail) ? detail.join(" ") : String(detail));
    }
    return data;
  }

  // --- signals -----------------------------------------------------------------------------

  function applySignal(signal) {
    const known = signals.get(signal.id);
    if (known && known.sequence > signal.sequence) return; // An older copy arriving late.
    signals.set(signal.id, signal);
    renderSignals();
  }

  async function resync() {
    if (resyncing) return resyncing;
    resyncing = (async () => {
      let url = "/api/signals/?since_seq=" + lastSeq + "&limit=500";
      let newest = lastSeq;
      while (url) {
        const page = await api("GET", url);
        page.results.forEach(applySignal);
        newest = Math.max(newest, page.last_seq);
        url = page.next;
      }
      lastSeq = newest;
    })().finally(() => { resyncing = null; });
    return resyncing;
  }

  async function onMessage(message) {
    if (message.type !== "signal") return;
    if (message.seq > lastSeq + 1) {
      await resync();
    }
    applySignal(message.signal);
    lastSeq = Math.max(lastSeq, message.seq);
  }

  function regimeCell(regime) {
    const cell = el("td", { class: "regime" });
    for (const key of ["volatility", "trend", "liquidity"]) {
      if (regime && regime[key]) cell.appendChild(el("span", { title: key, text: regime[key] }));
    }
    return cell;
  }

  function actionsCell(signal) {
    const cell = el("td");
    const id = signal.id;
    const result = el("span", { id: "signal-result-" + id, "data-testid": "signal-result-" + id, role: "status" });
    cell.appendChild(el("button", { id: "depth-" + id, "data-testid": "depth-" + id, text: "Depth",
                                    onclick: () => showDepth(id) }));
    if (signal.status === "pending_approval" && boot.can_operate) {
      const otp = el("input", { id: "approve-otp-" + id, "data-testid": "approve-otp-" + id, class: "small",
                                placeholder: "OTP", inputmode: "numeric", autocomplete: "one-time-code" });
      const reason = el("input", { id: "reject-reason-" + id, "data-testid": "reject-reason-" + id, class: "small",
                                   placeholder: "Reason" });
      cell.append(otp, el("button", { id: "approve-" + id, "data-testid": "approve-" + id, text: "Approve",
                                      onclick: () => decide(id, "approve", { otp: otp.value.trim() }, result) }),
                  reason, el("button", { id: "reject-" + id, "data-testid": "reject-" + id, text: "Reject",
                                         onclick: () => decide(id, "reject", { reason: reason.value.trim() }, result) }));
    }
    cell.appendChild(result);
    return cell;
  }

  async function decide(id, action, body, resultNode) {
    resultNode.className = "";
    resultNode.textContent = action === "approve" ? "approving…" : "rejecting…";
    try {
      const signal = await api("POST", "/api/signals/" + id + "/" + action, body);
      applySignal(signal);
      const fresh = document.getElementById("signal-result-" + id);
      if (fresh) { fresh.className = "result-ok"; fresh.textContent = signal.status; }
      refreshAutomations();
    } catch (error) {
      const node = document.getElementById("signal-result-" + id) || resultNode;
      node.className = "result-error";
      node.textContent = error.message;
    }
  }

  function renderSignals() {
    const body = document.getElementById("signals-body");
    const rows = [...signals.values()].sort((a, b) => b.id - a.id).slice(0, 200);
    const results = new Map();
    body.querySelectorAll("[id^=signal-result-]").forEach((n) => results.set(n.id, [n.className, n.textContent]));
    body.replaceChildren(...rows.map((s) => {
      const row = el("tr", { id: "signal-row-" + s.id, "data-testid": "signal-row-" + s.id, class: "st-" + s.status,
                             "data-status": s.status }, [
        el("td", { text: String(s.id) }),
        el("td", { text: (s.created_at || "").replace("T", " ").slice(0, 19) }),
        el("td", { text: s.automation_name }),
        el("td", { text: s.side }),
        el("td", { text: s.quantity + " @ " + s.limit_price }),
        el("td", { text: (s.bid || "–") + " / " + (s.ask || "–") }),
        el("td", { text: s.spread_bps === null ? "–" : s.spread_bps.toFixed(2) }),
        regimeCell(s.regime),
        el("td", { "data-testid": "signal-status-" + s.id, title: s.status_reason, text: s.status }),
        actionsCell(s),
      ]);
      return row;
    }));
    for (const [id, [cls, text]] of results) {
      const node = document.getElementById(id);
      if (node && text && !node.textContent) { node.className = cls; node.textContent = text; }
    }
    const pending = [...signals.values()].filter((s) => s.status === "pending_approval").length;
    document.getElementById("counter-pending").textContent = String(pending);
  }

  async function showDepth(id) {
    const panel = document.getElementById("depth-panel");
    const title = document.getElementById("depth-title");
    panel.hidden = false;
    try {
      const detail = await api("GET", "/api/signals/" + id + "/");
      const snap = detail.snapshot;
      if (!snap) { title.textContent = "Signal " + id + ": no order-book snapshot"; Plotly.purge("depth-chart"); return; }
      title.textContent = "Signal " + id + ": book at " + snap.ts + " (" + snap.levels + " levels, " +
        (snap.verified ? "hash verified" : "NOT verified: " + snap.error) + ")";
      const cumulative = (levels) => {
        let total = 0;
        return levels.map(([p, s]) => { total += parseFloat(s); return [parseFloat(p), total]; });
      };
      const bids = cumulative(snap.bids), asks = cumulative(snap.asks);
      Plotly.react("depth-chart", [
        { x: bids.map((l) => l[0]), y: bids.map((l) => l[1]), name: "bids", type: "scatter", line: { shape: "hv", color: "#12783a" }, fill: "tozeroy" },
        { x: asks.map((l) => l[0]), y: asks.map((l) => l[1]), name: "asks", type: "scatter", line: { shape: "hv", color: "#b42318" }, fill: "tozeroy" },
      ], { margin: { t: 10, r: 10, b: 40, l: 50 }, xaxis: { title: "price" }, yaxis: { title: "cumulative size" } },
      { displayModeBar: false, responsive: true });
    } catch (error) {
      title.textContent = "Signal " + id + ": " + error.message;
    }
  }

  // --- automations, counters, kill switch --------------------------------------------------------

  function renderAutomations() {
    const body = document.getElementById("automations-body");
    let approved = 0, automatic = 0;
    body.replaceChildren(...[...automations.values()].map((a) => {
      approved += a.approved_trade_count;
      automatic += a.automatic_trade_count;
      const result = el("span", { id: "automation-result-" + a.id, "data-testid": "automation-result-" + a.id, role: "status" });
      const actions = el("td");
      if (boot.can_operate) {
        const reason = el("input", { id: "automation-reason-" + a.id, "data-testid": "automation-reason-" + a.id,
                                     class: "small", placeholder: "Reason" });
        const action = a.status === "active" ? "pause" : "resume";
        actions.append(reason, el("button", {
          id: "automation-" + action + "-" + a.id, "data-testid": "automation-" + action + "-" + a.id,
          text: action === "pause" ? "Pause" : "Resume",
          onclick: async () => {
            try {
              const updated = await api("POST", "/api/automations/" + a.id + "/" + action, { reason: reason.value.trim() });
              automations.set(a.id, Object.assign({}, a, updated));
              renderAutomations();
              const node = document.getElementById("automation-result-" + a.id);
              node.className = "result-ok"; node.textContent = updated.status;
            } catch (error) {
              result.className = "result-error"; result.textContent = error.message;
            }
          },
        }));
      }
      actions.appendChild(result);
      return el("tr", { id: "automation-row-" + a.id, "data-testid": "automation-row-" + a.id, "data-status": a.status }, [
        el("td", { text: a.name }), el("td", { text: a.symbol }), el("td", { text: a.strategy }), el("td", { text: a.mode }),
        el("td", { "data-testid": "automation-status-" + a.id, text: a.status }),
        el("td", { text: a.approved_trade_count + " / " + a.automatic_trade_count + " (first " + a.approval_threshold + " gated)" }),
        el("td", { text: String(a.pending_count === undefined ? "" : a.pending_count) }),
        actions,
      ]);
    }));
    document.getElementById("counter-approved").textContent = String(approved);
    document.getElementById("counter-automatic").textContent = String(automatic);
  }

  async function refreshAutomations() {
    try {
      const list = await api("GET", "/api/automations/");
      list.forEach((a) => automations.set(a.id, Object.assign({}, automations.get(a.id) || {}, a)));
      renderAutomations();
    } catch (error) { /* The next signal or action refreshes again. */ }
  }

  document.getElementById("killswitch-engage").addEventListener("click", async () => {
    const reason = document.getElementById("killswitch-reason").value.trim();
    const result = document.getElementById("killswitch-result");
    if (!reason) { result.className = "result-error"; result.textContent = "a reason is required"; return; }
    if (!window.confirm("Engage the kill switch? Every automation halts and open orders are cancelled.")) return;
    try {
      const data = await api("POST", "/api/risk/kill-switch/engage/", { reason });
      result.className = "result-ok";
      result.textContent = "kill switch " + (data.engaged === false ? "released" : "ENGAGED");
      refreshAutomations();
    } catch (error) {
      result.className = "result-error"; result.textContent = error.message;
    }
  });

  // --- websocket -----------------------------------------------------------------------------

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + boot.ws_path);
    const status = document.getElementById("ws-status");
    socket.onopen = () => {
      retryMs = 1000;
      status.className = "status-on"; status.textContent = "live";
      resync().catch(() => {});
    };
    socket.onmessage = (event) => { onMessage(JSON.parse(event.data)).catch(() => {}); };
    socket.onclose = (event) => {
      status.className = "status-off";
      status.textContent = event.code === 4401 || event.code === 4403 ? "refused: sign in again" : "reconnecting…";
      if (event.code === 4401 || event.code === 4403) return;
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  boot.signals.forEach((s) => signals.set(s.id, s));
  boot.automations.forEach((a) => automations.set(a.id, a));
  renderSignals();
  renderAutomations();
  connect();
  window.fpTrader = { onMessage, resync, state: () => ({ lastSeq, signals }) };
})();
