// The supervisor console: login, the live view, actions and keys.
//
// Data flow: LiveStream → LiveState (maps, "what changed") → one redraw per animation frame
// (views.js).  Actions go through the control API only (api.js); while a request is in flight
// its buttons are disabled, and a refusal shows the API's own sentence next to them.
// Buttons a role may not use are not drawn at all — and the API refuses them anyway.

import { ApiError, api, channelPath, whenExpired } from "./api.js";
import { $, fill, h } from "./dom.js";
import { LiveState, isFinal } from "./state.js";
import { LiveStream } from "./stream.js";
import {
  CALL_ACTIONS,
  OP_LABELS,
  PAGE_SIZE,
  allowedOps,
  renderAudit,
  renderCalls,
  renderDetail,
  renderHealth,
  renderHistory,
  renderParked,
  renderTransfers,
  tick,
  visibleCalls,
  visibleHistory,
} from "./views.js";

const RANK = { viewer: 0, operator: 1, supervisor: 2, admin: 3 };
const TABS = ["live", "history", "audit"];

const app = {
  me: null,
  state: new LiveState(),
  stream: null,
  live: false, // the stream is up (what the page shows is current)
  tab: "live",
  selection: null, // {kind: "call", key} | {kind: "transfer", id}
  filter: "",
  page: 0,
  busy: new Set(), // "t:<transfer>", "c:<channel>", "new:<call key>": a request in flight
  errors: new Map(), // same keys → the API's sentence of the last refusal
  timelines: new Map(), // transfer id → {updated_at, entries | null, loading}
  fetched: new Map(), // transfers read by id (an audit entry's), not in the live state
  lastTransfer: new Map(), // call key → the transfer last shown on it (kept once final)
  audit: [],
  auditError: "",
  parked: [],
  parkedError: "",
  dirty: new Set(),
  frame: 0,
  timers: [],

  can(role) {
    return Boolean(this.me) && RANK[this.me.role] >= RANK[role];
  },

  /** Whether every PBX link offers `what` (healthz capabilities); unknown health: yes. */
  capable(what) {
    const health = this.state.health;
    if (!health || !Array.isArray(health.capabilities)) return true;
    return health.capabilities.includes(what);
  },

  redraw(...parts) {
    for (const part of parts) this.dirty.add(part);
    if (!this.frame) this.frame = requestAnimationFrame(() => draw());
  },

  select(selection) {
    this.selection = selection;
    this.redraw("calls", "transfers", "history", "detail");
  },

  selectTransfer(id) {
    const transfer = this.transferById(id);
    if (!transfer) this.fetchTransfer(id);
    this.select({ kind: "transfer", id });
  },

  selectedTransfer() {
    const s = this.selection;
    if (!s) return null;
    if (s.kind === "transfer") return this.transferById(s.id);
    const call = this.state.calls.get(s.key);
    return call ? this.state.transferOfCall(call) : null;
  },

  transferById(id) {
    return this.state.transfer(id) ?? this.fetched.get(id) ?? null;
  },

  async fetchTransfer(id) {
    try {
      this.fetched.set(id, await api("GET", `/v1/transfers/${encodeURIComponent(id)}`));
    } catch (error) {
      toast(error.detail || String(error), "bad");
    }
    this.redraw("detail");
  },

  turn(delta) {
    this.page = Math.max(0, this.page + delta);
    this.redraw("calls");
  },

  wantTimeline(t) {
    const known = this.timelines.get(t.id);
    if (known && (known.loading || known.updated_at === t.updated_at)) return;
    const entry = { updated_at: t.updated_at, entries: known ? known.entries : null, loading: true };
    this.timelines.set(t.id, entry);
    api("GET", `/v1/transfers/${encodeURIComponent(t.id)}/timeline`)
      .then((body) => {
        entry.entries = Array.isArray(body && body.entries) ? body.entries : entry.entries;
      })
      .catch(() => {}) // the resource's own history stays shown
      .finally(() => {
        entry.loading = false;
        this.redraw("detail");
      });
  },

  operate,
  transferDialog,
  callActionDialog,
  retrieveDialog,
};

// -- drawing -------------------------------------------------------------------------

/** Forget the oldest entries of a Map beyond `size` (a console stays open for a whole shift). */
function cap(map, size) {
  for (const key of map.keys()) {
    if (map.size <= size) break;
    map.delete(key);
  }
}

function draw() {
  app.frame = 0;
  cap(app.timelines, 200);
  cap(app.fetched, 200);
  cap(app.lastTransfer, 2000);
  cap(app.errors, 200);
  const changed = app.state.take();
  for (const part of app.dirty) changed.add(part);
  app.dirty.clear();
  if (!app.me) return;
  const all = changed.has("all");
  if (all || changed.has("health")) {
    renderHealth(app);
    changed.add("detail").add("parked");
  }
  if (app.tab === "live") {
    if (all || changed.has("calls") || changed.has("transfers")) renderCalls(app);
    if (all || changed.has("transfers")) renderTransfers(app);
    if (all || changed.has("parked")) renderParked(app);
  } else if (app.tab === "history") {
    if (all || changed.has("history") || changed.has("transfers")) renderHistory(app);
  } else if (app.tab === "audit") {
    if (all || changed.has("audit")) renderAudit(app);
  }
  if (all || changed.size) renderDetail(app);
}

// -- the stream ------------------------------------------------------------------------

function startStream() {
  app.stream = new LiveStream({
    onSnapshot(message) {
      app.state.applySnapshot(message);
      app.redraw("all");
      loadHistory();
      loadParked();
    },
    onMessage(message) {
      app.state.apply(message);
      if (app.state.changed.size) app.redraw();
    },
    onStatus(status) {
      banner(status);
    },
    async onClosed() {
      try {
        await api("GET", "/console/me");
        return true;
      } catch (error) {
        return !(error instanceof ApiError && error.status === 401);
      }
    },
  });
  app.stream.start();
}

let bannerTimer = 0;

function banner(status) {
  const el = $("#banner");
  const streamStatus = $("#stream-status");
  clearInterval(bannerTimer);
  document.body.classList.toggle("stale", status.state === "reconnecting");
  const live = status.state === "live";
  if (live !== app.live) {
    app.live = live;
    app.redraw("health"); // the link status is only known while the stream is
  }
  if (status.state === "live") {
    el.hidden = true;
    fill(streamStatus, h("span", { class: "dot dot-ok" }), "Live");
    streamStatus.title = "receiving live updates";
    return;
  }
  fill(
    streamStatus,
    h("span", { class: "dot dot-warn" }),
    status.state === "connecting" ? "Connecting" : "Reconnecting",
  );
  if (status.state !== "reconnecting") return;
  el.hidden = false;
  const paint = () => {
    const left = status.retryAt ? Math.max(0, Math.ceil((status.retryAt - Date.now()) / 1000)) : 0;
    fill(
      el,
      h("strong", null, "Reconnecting to the live stream…"),
      ` The view may be out of date. Attempt ${status.attempt}`,
      left ? `, next try in ${left} s. ` : ". ",
      h("button", { class: "btn btn-small", onclick: () => app.stream.now() }, "Retry now"),
    );
  };
  paint();
  bannerTimer = setInterval(paint, 1000);
}

async function loadHistory() {
  try {
    const body = await api("GET", "/v1/transfers?limit=100");
    app.state.seedHistory(body.items || []);
    app.redraw("history");
  } catch {
    /* the history fills from the stream */
  }
}

async function loadParked() {
  if (!app.can("supervisor") || !app.capable("parked")) return;
  try {
    app.parked = (await api("GET", "/v1/parked")).items || [];
    app.parkedError = "";
  } catch (error) {
    app.parkedError = error.detail || String(error);
  }
  app.redraw("parked");
}

async function loadAudit() {
  if (!app.can("supervisor")) return;
  try {
    app.audit = (await api("GET", "/v1/audit?limit=200")).items || [];
    app.auditError = "";
  } catch (error) {
    app.auditError = error.detail || String(error);
  }
  app.redraw("audit");
}

/** Whether the session still holds; a 401 shows the login view (api.js). */
async function checkSession() {
  try {
    await api("GET", "/console/me");
  } catch {
    /* 401 is handled by api.js; anything else: the stream's banner says it */
  }
}

async function loadHealth() {
  try {
    const response = await fetch("/healthz", { cache: "no-store" });
    const body = await response.json();
    app.state.health = body;
    app.state.changed.add("health");
    app.redraw();
  } catch {
    /* the stream's snapshot has it too */
  }
}

// -- actions -------------------------------------------------------------------------

/** Run `request` with `key` marked busy (buttons disabled); its refusal sentence under `key`. */
async function guarded(key, request, success) {
  if (app.busy.has(key)) return false;
  app.busy.add(key);
  app.errors.delete(key);
  app.redraw("detail");
  try {
    const answer = await request();
    if (success) toast(success(answer), "ok");
    return true;
  } catch (error) {
    const sentence = error instanceof ApiError ? error.detail : String(error);
    app.errors.set(key, sentence);
    toast(sentence, "bad");
    return false;
  } finally {
    app.busy.delete(key);
    app.redraw("detail");
    if (app.tab === "audit") loadAudit();
  }
}

async function operate(id, op) {
  const transfer = app.transferById(id);
  if (!transfer || !app.can("operator")) return;
  if (app.busy.has(`t:${id}`) || transfer.in_flight) return; // one request at a time
  if (!allowedOps(transfer).includes(op)) {
    toast(`${OP_LABELS[op]} is not possible now (transfer ${transfer.state})`, "bad");
    return;
  }
  await guarded(
    `t:${id}`,
    async () => {
      const resource = await api("POST", `/v1/transfers/${encodeURIComponent(id)}/${op}`);
      if (resource && resource.id) app.state.applyTransfer(resource);
      return resource;
    },
    () => `${OP_LABELS[op]}: sent`,
  );
}

function extensionLeg(call) {
  const legs = [...call.legs.values()].filter((l) => !l.monitoring);
  return legs.find((l) => l.kind === "extension" && ["ANSWER", "ANSWERED"].includes(l.status)) ??
    legs.find((l) => l.kind === "extension") ?? legs[0];
}

function otherLeg(call, leg) {
  const legs = [...call.legs.values()].filter((l) => !l.monitoring && l !== leg);
  return legs[0] ?? leg;
}

function legOptions(call) {
  return [...call.legs.values()].map((l) => ({
    value: l.channel_id,
    label: `${l.number}${l.name ? " " + l.name : ""} (${l.kind}, ${l.status.toLowerCase()})`,
  }));
}

function transferDialog(call) {
  if (!app.can("operator") || !call) return;
  if (app.state.transferOfCall(call)) {
    toast("This call already has a transfer in progress", "bad");
    return;
  }
  const agent = extensionLeg(call);
  const capable = ["attended", "blind"].filter((t) => app.capable(t));
  dialog({
    title: "Transfer call",
    submit: "Start transfer",
    fields: [
      { name: "number", label: "Target number or extension", type: "text", required: true, autofocus: true, pattern: "\\S+", placeholder: "e.g. 2005", autocomplete: "off" },
      {
        name: "type",
        label: "Type",
        type: "radio",
        value: capable[0] ?? "attended",
        options: capable.map((t) => ({ value: t, label: t === "attended" ? "Attended (consult first)" : "Blind" })),
      },
      { name: "party", label: "Transferor's leg (attended) / the party to move (blind)", type: "select", value: agent && agent.channel_id, options: legOptions(call), hint: "Left as is, a blind transfer moves the party the extension talks to." },
    ],
    async onSubmit(values) {
      let channel = values.party;
      if (values.type === "blind" && agent && channel === agent.channel_id) channel = otherLeg(call, agent).channel_id;
      const body = { type: values.type, channel_id: channel, number: values.number.trim() };
      if (call.pbx) body.pbx = call.pbx;
      let failure = null;
      const ok = await guarded(
        `new:${call.key}`,
        async () => {
          try {
            const resource = await api("POST", "/v1/transfers", body);
            if (resource && resource.id) app.state.applyTransfer(resource);
            return resource;
          } catch (error) {
            failure = error;
            throw error;
          }
        },
        () => `Transfer to ${body.number} started`,
      );
      if (!ok && failure) throw failure;
    },
  });
}

function callActionDialog(action, call, channel) {
  if (!app.can("supervisor") || !call) return;
  if (!app.capable(action)) {
    toast(`This PBX cannot ${action}`, "bad");
    return;
  }
  const agent = extensionLeg(call);
  const label = CALL_ACTIONS.find((a) => a.action === action).label;
  const fields = [];
  const defaultLeg = channel ?? (action === "park" ? otherLeg(call, agent) : agent).channel_id;
  fields.push({ name: "channel", label: action === "park" ? "Leg to park (the party who waits)" : "Leg", type: "select", value: defaultLeg, options: legOptions(call) });
  if (["listen", "whisper", "barge"].includes(action)) {
    fields.push({ name: "monitor", label: "Your extension (its phone rings)", type: "text", required: true, autofocus: true, pattern: "\\+?[0-9]+", value: sessionStorage.getItem("xferd.monitor") || "", placeholder: "e.g. 2001", autocomplete: "off" });
  } else if (action === "park") {
    fields.push({ name: "slot", label: "Slot (empty: the PBX picks one)", type: "text", pattern: "[0-9]*", placeholder: "e.g. 6000", autocomplete: "off" });
  }
  dialog({
    title: action === "hangup" ? "Hang up a leg" : `${label} — call ${call.call_id}`,
    submit: action === "hangup" ? "Hang up" : label,
    danger: action === "hangup",
    fields,
    async onSubmit(values) {
      let path;
      let body;
      if (action === "hangup") {
        path = `/v1/calls/${channelPath(values.channel)}/hangup`;
      } else if (action === "park") {
        path = `/v1/calls/${channelPath(values.channel)}/park`;
        body = values.slot ? { slot: values.slot } : {};
      } else {
        sessionStorage.setItem("xferd.monitor", values.monitor);
        path = `/v1/calls/${channelPath(values.channel)}/monitor`;
        body = { mode: action, monitor: values.monitor };
      }
      let failure = null;
      const ok = await guarded(
        `c:${values.channel}`,
        async () => {
          try {
            return await api("POST", path, body);
          } catch (error) {
            failure = error;
            throw error;
          }
        },
        (answer) =>
          action === "park"
            ? `Parked in slot ${answer && answer.slot ? answer.slot : "?"}`
            : action === "hangup"
              ? "Hung up"
              : `${label}: extension ${values.monitor} rings`,
      );
      if (!ok && failure) throw failure;
      if (action === "park") loadParked();
    },
  });
}

function retrieveDialog(parked) {
  if (!app.can("supervisor")) return;
  dialog({
    title: `Retrieve slot ${parked.slot}`,
    submit: "Retrieve",
    fields: [
      { name: "extension", label: "Extension that picks it up", type: "text", required: true, autofocus: true, pattern: "\\+?[0-9]+", value: sessionStorage.getItem("xferd.monitor") || "", autocomplete: "off" },
    ],
    async onSubmit(values) {
      const body = { extension: values.extension };
      if (parked.pbx) body.pbx = parked.pbx;
      await api("POST", `/v1/parked/${encodeURIComponent(parked.slot)}/retrieve`, body);
      toast(`Slot ${parked.slot}: extension ${values.extension} rings`, "ok");
      loadParked();
    },
  });
}

// -- the dialog ------------------------------------------------------------------------

function dialog({ title, submit, fields, onSubmit, danger }) {
  const el = $("#dialog");
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const button = h("button", { class: `btn ${danger ? "btn-danger" : "btn-primary"}`, type: "submit" }, submit);
  const form = h(
    "form",
    { method: "dialog", novalidate: false },
    h("h2", null, title),
    fields.map(field),
    error,
    h(
      "div",
      { class: "dialog-buttons" },
      h("button", { class: "btn btn-ghost", type: "button", onclick: () => el.close() }, "Cancel ", h("kbd", null, "Esc")),
      button,
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (button.disabled) return;
    button.disabled = true;
    error.hidden = true;
    try {
      await onSubmit(Object.fromEntries(new FormData(form)));
      el.close();
    } catch (failure) {
      fill(error, failure instanceof ApiError ? failure.detail : String(failure));
      error.hidden = false;
      button.disabled = false;
    }
  });
  fill(el, form);
  el.showModal();
  const first = form.querySelector("[autofocus]") || form.querySelector("input, select");
  if (first) first.focus();
}

let fieldIds = 0;

function field(f) {
  const id = `f${++fieldIds}`;
  if (f.type === "radio") {
    return h(
      "fieldset",
      { class: "field" },
      h("legend", null, f.label),
      f.options.map((o) =>
        h(
          "label",
          { class: "radio" },
          h("input", { type: "radio", name: f.name, value: o.value, checked: o.value === f.value }),
          " ",
          o.label,
        ),
      ),
    );
  }
  const control =
    f.type === "select"
      ? h(
          "select",
          { id, name: f.name },
          f.options.map((o) => h("option", { value: o.value, selected: o.value === f.value }, o.label)),
        )
      : h("input", {
          id,
          name: f.name,
          type: "text",
          value: f.value || "",
          required: f.required,
          pattern: f.pattern,
          placeholder: f.placeholder,
          autocomplete: f.autocomplete,
          autofocus: f.autofocus,
          spellcheck: "false",
        });
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, f.label),
    control,
    f.hint ? h("small", { class: "muted" }, f.hint) : null,
  );
}

// -- toasts ----------------------------------------------------------------------------

function toast(text, tone) {
  const el = h("div", { class: `toast toast-${tone}`, role: tone === "bad" ? "alert" : "status" }, text);
  $("#toasts").appendChild(el);
  setTimeout(() => el.remove(), tone === "bad" ? 8000 : 4000);
}

// -- keys ------------------------------------------------------------------------------

let goPending = false;

function move(delta) {
  if (app.tab === "live") {
    // Computed now, not the last drawn list: a key may come before the next frame is drawn.
    const list = visibleCalls(app);
    if (!list.length) return;
    const at = app.selection && app.selection.kind === "call" ? list.findIndex((c) => c.key === app.selection.key) : -1;
    // Nothing selected yet: start at the top of the page on screen.
    const next = Math.max(0, Math.min(list.length - 1, at < 0 ? app.page * PAGE_SIZE : at + delta));
    app.page = Math.floor(next / PAGE_SIZE);
    app.select({ kind: "call", key: list[next].key });
  } else if (app.tab === "history") {
    const list = visibleHistory(app);
    if (!list.length) return;
    const at = app.selection && app.selection.kind === "transfer" ? list.findIndex((t) => t.id === app.selection.id) : -1;
    const next = Math.max(0, Math.min(list.length - 1, at < 0 ? 0 : at + delta));
    app.select({ kind: "transfer", id: list[next].id });
  }
  requestAnimationFrame(() => {
    const row = document.querySelector("tr.selected");
    if (row) row.scrollIntoView({ block: "nearest" });
  });
}

function selectedCall() {
  const s = app.selection;
  if (!s) return null;
  if (s.kind === "call") return app.state.calls.get(s.key) ?? null;
  const t = app.transferById(s.id);
  return t && !isFinal(t) ? app.state.callOfChannel(t.transferor.channel_id) : null;
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || !app.me) return;
  const target = event.target;
  if (target instanceof HTMLElement && target.closest("input, select, textarea")) {
    if (event.key === "Escape" && target.id === "search") {
      target.blur();
    }
    return;
  }
  if ($("#dialog").open || $("#help").open) return; // dialogs have their own keys (Esc closes)
  const key = event.key;
  if (goPending) {
    goPending = false;
    const tab = { l: "live", h: "history", a: "audit" }[key];
    if (tab) {
      showTab(tab);
      event.preventDefault();
    }
    return;
  }
  const ops = { c: "complete", a: "abort", s: "swap", 3: "threeway" };
  const actions = { l: "listen", w: "whisper", b: "barge", p: "park", h: "hangup" };
  if (key === "j" || key === "ArrowDown") move(1);
  else if (key === "k" || key === "ArrowUp") move(-1);
  else if (key === "/") $("#search").focus();
  else if (key === "?") $("#help").showModal();
  else if (key === "g") goPending = true;
  else if (key === "]") app.turn(1);
  else if (key === "[") app.turn(-1);
  else if (key === "r") refresh();
  else if (key === "Escape") app.select(null);
  else if (key === "t") app.transferDialog(selectedCall());
  else if (key in ops) {
    const t = app.selectedTransfer();
    if (t) app.operate(t.id, ops[key]);
  } else if (key in actions) {
    const call = selectedCall();
    if (call) app.callActionDialog(actions[key], call, null);
  } else return;
  event.preventDefault();
}

function refresh() {
  checkSession();
  if (app.tab === "audit") loadAudit();
  loadParked();
  loadHealth();
}

// -- views -----------------------------------------------------------------------------

function showTab(tab) {
  if (tab === "audit" && !app.can("supervisor")) return;
  app.tab = tab;
  for (const name of TABS) {
    $(`#view-${name}`).hidden = name !== tab;
    const button = $(`#tab-${name}`);
    button.setAttribute("aria-selected", name === tab ? "true" : "false");
  }
  if (tab === "audit") loadAudit();
  if (tab === "live") loadParked();
  app.redraw("all");
}

async function boot() {
  whenExpired(() => expired());
  document.addEventListener("keydown", onKey);
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#search").addEventListener("input", (event) => {
    app.filter = event.target.value;
    app.page = 0;
    app.redraw("calls", "history", "audit");
  });
  $("#search").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      event.target.blur();
      const first = app.tab === "live" ? visibleCalls(app)[0] : null;
      if (first) app.select({ kind: "call", key: first.key });
    }
  });
  for (const name of TABS) $(`#tab-${name}`).addEventListener("click", () => showTab(name));
  $("#help-open").addEventListener("click", () => $("#help").showModal());
  $("#audit-refresh").addEventListener("click", () => loadAudit());
  try {
    const me = await api("GET", "/console/me");
    signedIn(me);
  } catch {
    showLogin("");
  }
}

function showLogin(message) {
  $("#app-view").hidden = true;
  $("#login-view").hidden = false;
  const note = $("#login-error");
  fill(note, message);
  note.hidden = !message;
  const token = $("#login-token");
  token.value = "";
  token.focus();
}

async function login(event) {
  event.preventDefault();
  const button = $("#login-submit");
  const note = $("#login-error");
  button.disabled = true;
  try {
    await api("POST", "/console/login", { token: $("#login-token").value.trim() });
    signedIn(await api("GET", "/console/me"));
  } catch (error) {
    let text = "Login failed.";
    if (error instanceof ApiError && error.status === 429) {
      text = `Too many failed attempts. Try again in ${error.retryAfter ?? 60} s.`;
    } else if (error instanceof ApiError && error.status !== 401) {
      text = error.detail;
    }
    fill(note, text);
    note.hidden = false;
    $("#login-token").select();
  } finally {
    button.disabled = false;
  }
}

function signedIn(me) {
  app.me = me;
  app.state = new LiveState();
  app.selection = null;
  app.errors.clear();
  document.body.dataset.role = me.role;
  fill($("#me"), h("span", { class: "who" }, me.name), " ", h("span", { class: "pill pill-role" }, me.role));
  $("#tab-audit").hidden = !app.can("supervisor");
  $("#login-view").hidden = true;
  $("#app-view").hidden = false;
  fill($("#key-actions"), keyHelp());
  showTab("live");
  startStream();
  loadHealth();
  app.timers.push(setInterval(() => tick(), 1000));
  app.timers.push(setInterval(loadHealth, 15000));
  // The parked list is not in the stream and reading it asks the PBX: now and then, and on "r".
  app.timers.push(setInterval(() => app.tab === "live" && loadParked(), 30000));
  app.timers.push(setInterval(checkSession, 60000)); // an expired session goes back to the login
}

/** The help overlay's rows for what this role may do. */
function keyHelp() {
  const rows = [];
  if (app.can("operator")) {
    rows.push(["t", "transfer the selected call (type the target)"]);
    rows.push(["c / a / s / 3", "complete / abort / swap / three-way the selected transfer"]);
  }
  if (app.can("supervisor")) {
    rows.push(["l / w / b", "listen / whisper / barge into the selected call"]);
    rows.push(["p / h", "park / hang up a leg of the selected call"]);
    rows.push(["g a", "the audit log"]);
  }
  if (!rows.length) rows.push(["", "your role (viewer) can watch only"]);
  return rows.map(([k, text]) => h("tr", null, h("td", null, k ? k.split(" ").map((p) => (p === "/" ? " / " : h("kbd", null, p))) : ""), h("td", null, text)));
}

function stopAll() {
  if (app.stream) app.stream.stop();
  app.stream = null;
  app.live = false;
  clearInterval(bannerTimer);
  $("#banner").hidden = true;
  document.body.classList.remove("stale");
  for (const timer of app.timers) clearInterval(timer);
  app.timers = [];
  if ($("#dialog").open) $("#dialog").close();
  app.me = null;
}

function expired() {
  if (!app.me) return;
  stopAll();
  showLogin("Your session has ended. Log in again.");
}

async function logout() {
  try {
    await api("POST", "/console/logout");
  } catch {
    /* the cookie is going either way */
  }
  stopAll();
  showLogin("");
}

// For the browser tests and for debugging: read-only access to what the page knows.
window.xferdConsole = { app, draw };

boot();
