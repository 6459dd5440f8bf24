// Drawing: the calls table, the active transfers, the history, the audit log and the detail
// panel of the selection.  Each function rebuilds one region from the state; app.js calls them
// at most once per animation frame.  Lists are paged (PAGE_SIZE rows in the DOM whatever the
// number of calls), so a thousand live calls cost the same redraw as fifty.

import { serverNow } from "./api.js";
import {
  $,
  KIND_LABELS,
  REASONS,
  clock,
  duration,
  fill,
  h,
  haystack,
  initiator,
  legPill,
  pill,
  stamp,
  statePill,
  targetPill,
} from "./dom.js";
import { isFinal } from "./state.js";

export const PAGE_SIZE = 50;
export const OP_LABELS = { complete: "Complete", abort: "Abort", swap: "Swap", threeway: "Three-way" };
export const OP_KEYS = { complete: "c", abort: "a", swap: "s", threeway: "3" };
export const CALL_ACTIONS = [
  { action: "listen", label: "Listen", key: "l" },
  { action: "whisper", label: "Whisper", key: "w" },
  { action: "barge", label: "Barge", key: "b" },
  { action: "park", label: "Park", key: "p" },
  { action: "hangup", label: "Hang up", key: "h" },
];

/** Ops a transfer accepts now: the service says (`allowed_ops`); an older one did not. */
export function allowedOps(transfer) {
  if (Array.isArray(transfer.allowed_ops)) return transfer.allowed_ops;
  if (isFinal(transfer) || transfer.state === "idle") return [];
  return ["complete", "abort", "swap", "threeway"];
}

// -- timers: "since" and countdown cells tick once a second without a redraw ---------------

/** A cell showing the time since `since` (ms); "≥" when the start was not observed. */
function since(at, exact, extra = "") {
  const text = (exact ? "" : "≥") + duration((Date.now() - at) / 1000);
  return h("span", { class: `since ${extra}`, dataset: { since: String(at), exact: exact ? "1" : "" } }, text);
}

/** The no-answer countdown: seconds until `iso` on the service's clock. */
function countdown(iso) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return null;
  return h(
    "span",
    { class: "countdown", dataset: { deadline: String(at) }, title: `no-answer timer fires at ${clock(iso)}` },
    countdownText(at),
  );
}

function countdownText(at) {
  const left = (at - serverNow()) / 1000;
  return left > 0 ? `no answer in ${duration(Math.ceil(left))}` : "no-answer timer due";
}

/** Update every ticking cell on the page (once a second). */
export function tick(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("[data-since]")) {
    el.textContent = (el.dataset.exact ? "" : "≥") + duration((now - Number(el.dataset.since)) / 1000);
  }
  for (const el of root.querySelectorAll("[data-deadline]")) {
    el.textContent = countdownText(Number(el.dataset.deadline));
  }
}

// -- calls ---------------------------------------------------------------------------

function legs(call) {
  return [...call.legs.values()];
}

function callHaystack(call, transfer) {
  const parts = [];
  for (const leg of call.legs.values()) parts.push(leg.number, leg.name, leg.channel_id);
  if (transfer) parts.push(transfer.target && transfer.target.number, transfer.id);
  return haystack(...parts);
}

/** The calls the filter lets through, newest first. */
export function visibleCalls(app) {
  const { state } = app;
  const query = app.filter.trim().toLowerCase();
  const out = [];
  for (const call of state.calls.values()) {
    if (query && !callHaystack(call, state.transferOfCall(call)).includes(query)) continue;
    out.push(call);
  }
  out.sort((a, b) => b.started - a.started || (a.key < b.key ? -1 : 1));
  return out;
}

function party(leg) {
  return h(
    "span",
    { class: `leg leg-${(leg.status || "").toLowerCase()}` },
    h("span", { class: "kind", title: leg.kind }, KIND_LABELS[leg.kind] ?? leg.kind),
    h("span", { class: "num" }, leg.number),
    leg.name ? h("span", { class: "name" }, leg.name) : null,
    leg.monitoring ? pill(leg.mode || "monitor", "info", `monitoring ${leg.monitoring}`) : null,
    legPill(leg.status),
  );
}

function holdCell(call) {
  const held = legs(call).filter((leg) => leg.status === "HOLD");
  if (!held.length) return "";
  const longest = held.reduce((a, b) => (a.since <= b.since ? a : b));
  return h("span", { class: "hold", title: "on hold for" }, h("span", { class: "pause", "aria-hidden": "true" }), since(longest.since, longest.exact));
}

export function renderCalls(app) {
  const calls = visibleCalls(app);
  const pages = Math.max(1, Math.ceil(calls.length / PAGE_SIZE));
  app.page = Math.min(app.page, pages - 1);
  const first = app.page * PAGE_SIZE;
  const shown = calls.slice(first, first + PAGE_SIZE);
  const selected = app.selection && app.selection.kind === "call" ? app.selection.key : null;
  const multiPbx = app.state.health && (app.state.health.pbxs || []).length > 1;
  const rows = shown.map((call) => {
    const transfer = app.state.transferOfCall(call);
    return h(
      "tr",
      {
        class: call.key === selected ? "selected" : "",
        "aria-selected": call.key === selected ? "true" : "false",
        dataset: { key: call.key },
        onclick: () => app.select({ kind: "call", key: call.key }),
      },
      h("td", { class: "parties" }, legs(call).map(party)),
      multiPbx ? h("td", { class: "pbx" }, call.pbx) : null,
      h("td", { class: "dur" }, since(call.started, call.exact)),
      h("td", { class: "dur" }, holdCell(call)),
      h(
        "td",
        { class: "xfer" },
        transfer
          ? [statePill(transfer.state), " ", h("span", { class: "muted" }, "→ "), transfer.target.number]
          : h("span", { class: "muted" }, "—"),
      ),
    );
  });
  if (!rows.length) {
    const empty = app.filter ? `No call matches “${app.filter}”.` : "No live calls.";
    rows.push(h("tr", { class: "empty" }, h("td", { colspan: multiPbx ? 5 : 4 }, empty)));
  }
  fill($("#calls-body"), rows);
  fill($("#calls-pbx-head"), multiPbx ? "PBX" : "");
  $("#calls-pbx-head").hidden = !multiPbx;
  const total = app.state.calls.size;
  fill($("#calls-count"), calls.length === total ? String(total) : `${calls.length} of ${total}`);
  pager($("#calls-pager"), app, calls.length, pages);
}

function pager(el, app, count, pages) {
  if (pages <= 1) {
    fill(el);
    el.hidden = true;
    return;
  }
  el.hidden = false;
  const first = app.page * PAGE_SIZE;
  fill(
    el,
    h(
      "button",
      { class: "btn btn-ghost", disabled: app.page === 0, onclick: () => app.turn(-1), title: "Previous page ([)" },
      "‹ Prev",
    ),
    h("span", null, `${first + 1}–${Math.min(count, first + PAGE_SIZE)} of ${count}`),
    h(
      "button",
      {
        class: "btn btn-ghost",
        disabled: app.page >= pages - 1,
        onclick: () => app.turn(1),
        title: "Next page (])",
      },
      "Next ›",
    ),
  );
}

// -- active transfers ----------------------------------------------------------------------

export function renderTransfers(app) {
  const transfers = [...app.state.transfers.values()].sort((a, b) =>
    String(b.created_at).localeCompare(String(a.created_at)),
  );
  const selectedId = app.selectedTransfer() && app.selectedTransfer().id;
  const rows = transfers.slice(0, PAGE_SIZE).map((t) =>
    h(
      "tr",
      {
        class: t.id === selectedId ? "selected" : "",
        dataset: { transfer: t.id },
        onclick: () => app.selectTransfer(t.id),
      },
      h("td", null, clock(t.created_at)),
      h("td", null, t.transferor.number || "?", h("span", { class: "muted" }, " → "), t.target.number),
      h("td", null, statePill(t.state)),
      h("td", null, targetPill(t.target.status), " ", t.no_answer_at ? countdown(t.no_answer_at) : null),
      h("td", { class: "muted" }, initiator(t.initiated_by)),
    ),
  );
  if (!rows.length) rows.push(h("tr", { class: "empty" }, h("td", { colspan: 5 }, "No transfer in progress.")));
  fill($("#transfers-body"), rows);
  fill($("#transfers-count"), String(transfers.length));
}

// -- history ---------------------------------------------------------------------------

function transferHaystack(t) {
  return haystack(
    t.id,
    t.transferor && t.transferor.number,
    t.transferee && t.transferee.number,
    t.target && t.target.number,
    t.initiated_by,
    t.reason,
  );
}

export function visibleHistory(app) {
  const query = app.filter.trim().toLowerCase();
  return app.state.history.filter((t) => !query || transferHaystack(t).includes(query));
}

export function renderHistory(app) {
  const items = visibleHistory(app);
  const selectedId = app.selectedTransfer() && app.selectedTransfer().id;
  const rows = items.map((t) => {
    const took = (Date.parse(t.updated_at) - Date.parse(t.created_at)) / 1000;
    return h(
      "tr",
      {
        class: t.id === selectedId ? "selected" : "",
        dataset: { transfer: t.id },
        onclick: () => app.selectTransfer(t.id),
      },
      h("td", null, stamp(t.updated_at)),
      h("td", null, t.type),
      h(
        "td",
        null,
        t.transferee.number || "?",
        h("span", { class: "muted" }, " via "),
        t.transferor.number || "?",
        h("span", { class: "muted" }, " → "),
        t.target.number,
      ),
      h("td", null, statePill(t.state), " ", h("span", { class: "muted" }, REASONS[t.reason] ?? t.reason ?? "")),
      h("td", { class: "muted" }, initiator(t.initiated_by)),
      h("td", { class: "dur" }, Number.isFinite(took) ? duration(took) : ""),
    );
  });
  if (!rows.length) rows.push(h("tr", { class: "empty" }, h("td", { colspan: 6 }, "No finished transfer yet.")));
  fill($("#history-body"), rows);
  fill($("#history-count"), String(items.length));
}

// -- audit -----------------------------------------------------------------------------

export function renderAudit(app) {
  const query = app.filter.trim().toLowerCase();
  const items = app.audit.filter(
    (e) => !query || haystack(e.actor, e.role, e.action, e.transfer_id, e.channel_id, e.outcome).includes(query),
  );
  const rows = items.map((e) =>
    h(
      "tr",
      {
        class: e.transfer_id ? "link" : "",
        onclick: e.transfer_id ? () => app.selectTransfer(e.transfer_id) : null,
      },
      h("td", null, stamp(e.at)),
      h("td", null, e.actor, " ", h("span", { class: "muted" }, e.role ? `(${e.role})` : "")),
      h("td", { class: "mono" }, e.action),
      h("td", { class: "mono" }, e.transfer_id ? e.transfer_id.slice(0, 8) : e.channel_id || ""),
      h("td", null, pill(String(e.status ?? ""), Number(e.status) < 400 ? "ok" : "bad")),
      h("td", null, e.outcome, e.detail ? h("div", { class: "muted small" }, e.detail) : null),
    ),
  );
  if (!rows.length) {
    rows.push(h("tr", { class: "empty" }, h("td", { colspan: 6 }, app.auditError || "No audit entry.")));
  }
  fill($("#audit-body"), rows);
}

// -- parked calls ----------------------------------------------------------------------

export function renderParked(app) {
  const section = $("#parked");
  const can = app.can("supervisor") && app.capable("parked");
  section.hidden = !can;
  if (!can) return;
  const rows = app.parked.map((p) =>
    h(
      "tr",
      null,
      h("td", { class: "mono" }, p.slot),
      h("td", null, p.parked_party),
      h("td", { class: "muted" }, `parked by ${p.parker}`),
      h("td", { class: "dur" }, p.parked_s === null || p.parked_s === undefined ? "" : duration(p.parked_s)),
      h(
        "td",
        { class: "actions" },
        app.capable("retrieve")
          ? h("button", { class: "btn btn-small", onclick: () => app.retrieveDialog(p) }, "Retrieve")
          : null,
      ),
    ),
  );
  if (!rows.length) rows.push(h("tr", { class: "empty" }, h("td", { colspan: 5 }, app.parkedError || "No parked call.")));
  fill($("#parked-body"), rows);
}

// -- detail of the selection ----------------------------------------------------------------

export function renderDetail(app) {
  const el = $("#detail");
  const selection = app.selection;
  if (!selection) {
    fill(
      el,
      h(
        "div",
        { class: "placeholder" },
        h("p", null, "Select a call or a transfer to see it here."),
        h("p", { class: "muted" }, "Keys: ", h("kbd", null, "j"), " / ", h("kbd", null, "k"), " to move, ", h("kbd", null, "?"), " for help."),
      ),
    );
    return;
  }
  if (selection.kind === "call") {
    const call = app.state.calls.get(selection.key);
    // A transfer this call just had stays shown once final: its outcome is what one looks for.
    const lastId = app.lastTransfer.get(selection.key);
    const last = lastId ? app.transferById(lastId) : null;
    if (!call) {
      fill(
        el,
        h("div", { class: "placeholder" }, h("p", null, "This call has ended.")),
        last ? transferCard(app, last) : null,
      );
      return;
    }
    const transfer = app.state.transferOfCall(call);
    if (transfer) app.lastTransfer.set(call.key, transfer.id);
    fill(
      el,
      callCard(app, call, transfer),
      transfer ? transferCard(app, transfer) : [last && isFinal(last) ? transferCard(app, last) : null, startCard(app, call)],
    );
    return;
  }
  const transfer = app.transferById(selection.id);
  if (!transfer) {
    fill(el, h("div", { class: "placeholder" }, h("p", null, "Loading the transfer…")));
    return;
  }
  const call = isFinal(transfer) ? null : app.state.callOfChannel(transfer.transferor.channel_id);
  fill(el, transferCard(app, transfer), call ? callCard(app, call, transfer) : null);
}

function callCard(app, call, transfer) {
  const acting = app.can("supervisor");
  const actions = CALL_ACTIONS.filter((a) => app.capable(a.action));
  return h(
    "section",
    { class: "card", "aria-label": "call" },
    h(
      "header",
      { class: "card-head" },
      h("h2", null, "Call"),
      h("span", { class: "muted mono small" }, call.call_id, call.pbx && call.pbx !== "default" ? ` · ${call.pbx}` : ""),
      h("span", { class: "spacer" }),
      since(call.started, call.exact, "big"),
    ),
    h(
      "table",
      { class: "legs" },
      legs(call).map((leg) =>
        h(
          "tbody",
          { dataset: { channel: leg.channel_id } },
          h(
            "tr",
            null,
            h("td", null, h("span", { class: "kind" }, KIND_LABELS[leg.kind] ?? leg.kind)),
            h(
              "td",
              null,
              h("div", { class: "num" }, leg.number, leg.name ? h("span", { class: "name" }, " ", leg.name) : null),
              h("div", { class: "muted mono small" }, leg.channel_id),
            ),
            h(
              "td",
              { class: "status" },
              legPill(leg.status),
              leg.monitoring ? [" ", pill(`${leg.mode || "monitor"}ing`, "info", `monitoring ${leg.monitoring}`)] : null,
              transfer ? roleTag(transfer, leg.channel_id) : null,
            ),
            h("td", { class: "dur" }, since(leg.since, leg.exact)),
          ),
          acting && actions.length
            ? h(
                "tr",
                { class: "leg-actions" },
                h(
                  "td",
                  { colspan: 4 },
                  actions.map((a) =>
                    h(
                      "button",
                      {
                        class: `btn btn-small ${a.action === "hangup" ? "btn-danger-ghost" : "btn-ghost"}`,
                        disabled: app.busy.has(`c:${leg.channel_id}`),
                        title: `${a.label} (${a.key})`,
                        dataset: { action: a.action },
                        onclick: () => app.callActionDialog(a.action, call, leg.channel_id),
                      },
                      a.label,
                    ),
                  ),
                ),
              )
            : null,
        ),
      ),
    ),
    app.errors.get(`c:${call.key}`) ? h("p", { class: "error", role: "alert" }, app.errors.get(`c:${call.key}`)) : null,
  );
}

function roleTag(transfer, channel) {
  for (const role of ["transferor", "transferee", "target"]) {
    if (transfer[role] && transfer[role].channel_id === channel) return [" ", pill(role, "role")];
  }
  return null;
}

function startCard(app, call) {
  if (!app.can("operator")) return null;
  const busy = app.busy.has(`new:${call.key}`);
  return h(
    "section",
    { class: "card card-quiet" },
    h(
      "div",
      { class: "row" },
      h("span", { class: "muted" }, "No transfer on this call."),
      h("span", { class: "spacer" }),
      h(
        "button",
        { class: "btn btn-primary", id: "start-transfer", disabled: busy, onclick: () => app.transferDialog(call) },
        "Transfer… ",
        h("kbd", null, "t"),
      ),
    ),
    app.errors.get(`new:${call.key}`) ? h("p", { class: "error", role: "alert" }, app.errors.get(`new:${call.key}`)) : null,
  );
}

export function transferCard(app, t) {
  const final = isFinal(t);
  const ops = allowedOps(t);
  const fallbacks = (t.policy && t.policy.fallback_numbers) || [];
  const busy = app.busy.has(`t:${t.id}`) || Boolean(t.in_flight);
  const error = app.errors.get(`t:${t.id}`);
  const rows = [
    ["Target", [h("b", null, t.target.number), " ", targetPill(t.target.status), " ", !final && t.no_answer_at ? countdown(t.no_answer_at) : null]],
    ["Transferor", t.transferor.number || "—"],
    ["Transferee", t.transferee.number || "—"],
  ];
  if (fallbacks.length) {
    const numbers = [t.target.number, ...fallbacks];
    rows.push([
      "Fallback",
      [
        `attempt ${t.attempt} of ${fallbacks.length + 1}: `,
        numbers.map((n, i) => h("span", { class: i + 1 === t.attempt ? "fallback current" : "fallback" }, n)),
      ],
    ]);
  }
  rows.push(["Started by", initiator(t.initiated_by)]);
  rows.push(["Started", `${stamp(t.created_at)}`]);
  if (final) rows.push(["Outcome", [statePill(t.state), " ", REASONS[t.reason] ?? t.reason ?? ""]]);
  if (t.in_flight) rows.push(["Sending", h("span", { class: "inflight" }, `${t.in_flight}…`)]);
  return h(
    "section",
    { class: "card", "aria-label": "transfer", dataset: { transfer: t.id, state: t.state } },
    h(
      "header",
      { class: "card-head" },
      h("h2", null, t.type === "blind" ? "Blind transfer" : "Attended transfer"),
      statePill(t.state),
      h("span", { class: "spacer" }),
      h("span", { class: "muted mono small", title: t.id }, t.id.slice(0, 8)),
    ),
    h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", null, k), h("dd", null, v)])),
    app.can("operator") && !final && ops.length
      ? h(
          "div",
          { class: "ops", role: "group", "aria-label": "transfer operations" },
          ops.map((op) =>
            h(
              "button",
              {
                class: `btn ${op === "complete" ? "btn-primary" : op === "abort" ? "btn-danger" : ""}`,
                disabled: busy,
                dataset: { op },
                title: `${OP_LABELS[op]} (${OP_KEYS[op]})`,
                onclick: () => app.operate(t.id, op),
              },
              OP_LABELS[op] ?? op,
              " ",
              h("kbd", null, OP_KEYS[op]),
            ),
          ),
        )
      : null,
    error ? h("p", { class: "error", role: "alert" }, error) : null,
    timeline(app, t),
  );
}

function timeline(app, t) {
  const known = app.timelines.get(t.id);
  app.wantTimeline(t);
  let entries;
  if (known && known.entries) {
    entries = known.entries;
  } else {
    // Until the service's story arrives: the state changes the resource itself lists.
    entries = (t.history || []).map((e) => ({ at: e.at, kind: "state", text: `${e.from} → ${e.to} (${e.trigger})` }));
  }
  return h(
    "details",
    { class: "timeline", open: true },
    h("summary", null, "Timeline"),
    h(
      "ol",
      null,
      entries.map((e) =>
        h(
          "li",
          { class: `tl tl-${String(e.kind || "").toLowerCase()}` },
          h("time", null, clock(e.at)),
          h("span", { class: "tl-kind" }, e.kind),
          // The transfer's full id is in the card's head: its first 8 characters say enough here.
          h("span", { class: "tl-text" }, String(e.text ?? "").replaceAll(t.id, t.id.slice(0, 8))),
        ),
      ),
    ),
  );
}

// -- top bar ---------------------------------------------------------------------------

export function renderHealth(app) {
  const health = app.state.health;
  const el = $("#links");
  if (!health) {
    fill(el, pill("PBX link unknown", "muted"));
    return;
  }
  const pbxs = health.pbxs && health.pbxs.length ? health.pbxs : [{ name: "", pbx: health.pbx, platform: health.platform, detail: health.detail }];
  fill(
    el,
    pbxs.map((p) => {
      const label = `${p.name && p.name !== "default" ? p.name + ": " : "PBX "}${p.pbx === "connected" ? "connected" : "down"}`;
      const detail = `${p.platform || ""} ${p.detail || ""}`.trim();
      // Without the stream the service itself is out of reach: its last word, greyed.
      if (!app.live) return pill(`${label}?`, "muted", `last known (the service is not reachable now): ${detail}`);
      return pill(label, p.pbx === "connected" ? "ok" : "bad", detail);
    }),
  );
}
