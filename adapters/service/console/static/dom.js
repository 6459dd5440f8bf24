// DOM helpers and formatting.  Every value from the PBX or the API reaches the page through
// h() / text nodes, never parsed as HTML: a caller's "name" is text, whatever it contains.

/**
 * Build an element: h("td", {class: "num", title: x}, "text", childNode, [more, children]).
 * Attributes starting with "on" are event listeners; `dataset` sets data-* attributes;
 * `false`, `null` and `undefined` attributes and children are skipped.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "dataset") {
        Object.assign(el.dataset, value);
      } else if (key === "class") {
        el.className = value;
      } else if (value === true) {
        el.setAttribute(key, "");
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace every child of `el` with `children` (text or nodes). */
export function fill(el, ...children) {
  const fragment = document.createDocumentFragment();
  append(fragment, children);
  el.replaceChildren(fragment);
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** "1:02:03" / "2:03" / "0:05" for a number of seconds. */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

/** A local wall-clock time ("14:03:27") for an ISO instant. */
export function clock(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** Date and time, for the audit log and the history. */
export function stamp(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  if (Number.isNaN(at.getTime())) return String(iso);
  const today = new Date().toDateString() === at.toDateString();
  return today ? clock(iso) : `${at.toLocaleDateString()} ${clock(iso)}`;
}

/** A pill: h("span", {class: "pill pill-<tone>"}, label). */
export function pill(label, tone, title) {
  return h("span", { class: `pill pill-${tone}`, title }, label);
}

const LEG_TONES = {
  ANSWER: "ok",
  ANSWERED: "ok",
  RING: "warn",
  ALERT: "warn",
  EARLYMEDIA: "warn",
  HOLD: "hold",
  BYE: "muted",
};
const LEG_LABELS = {
  ANSWER: "talking",
  ANSWERED: "talking",
  RING: "ringing",
  ALERT: "calling",
  EARLYMEDIA: "ringing",
  HOLD: "on hold",
  BYE: "gone",
};

/** A leg's PBX status as a person says it. */
export function legPill(status) {
  return pill(LEG_LABELS[status] ?? status.toLowerCase(), LEG_TONES[status] ?? "muted", status);
}

const STATE_TONES = {
  idle: "muted",
  consulting: "warn",
  swapped: "hold",
  threeway: "info",
  completed: "ok",
  aborted: "bad",
};

export function statePill(state) {
  return pill(state === "threeway" ? "three-way" : state, STATE_TONES[state] ?? "muted");
}

const TARGET_TONES = { dialing: "warn", ringing: "warn", answered: "ok", held: "hold", gone: "muted" };

export function targetPill(status) {
  return status ? pill(status, TARGET_TONES[status] ?? "muted") : pill("—", "muted");
}

export const REASONS = {
  operator: "by an operator",
  policy: "by policy (target answered)",
  transferor_hangup: "the transferor hung up",
  blind: "blind transfer",
  no_answer: "the target did not answer",
  target_busy: "the target was busy or declined",
  target_hangup: "the target hung up",
  transferee_hangup: "the transferee hung up",
  pbx_error: "the PBX refused a request",
  lost: "the calls vanished",
};

export const KIND_LABELS = { extension: "ext", inbound: "in", outbound: "out" };

/** "console:sue" → "sue (console)"; "rule:vip" → "rule vip"; "api:admin" → "admin (API)". */
export function initiator(value) {
  if (!value) return "—";
  const [how, ...rest] = String(value).split(":");
  const who = rest.join(":");
  if (!who) return how;
  if (how === "console") return `${who} (console)`;
  if (how === "api") return `${who} (API)`;
  if (how === "rule") return `rule ${who}`;
  return String(value);
}

/** Lowercase text a filter matches against. */
export function haystack(...parts) {
  return parts
    .filter((p) => p !== null && p !== undefined)
    .join(" ")
    .toLowerCase();
}
