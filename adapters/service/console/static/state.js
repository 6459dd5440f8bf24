// What the console knows: the calls and transfers of the last snapshot plus the changes since,
// and the recently finished transfers.  Applying a message only updates maps and marks what
// changed; drawing happens at most once per animation frame (app.js), so a burst of a thousand
// call changes costs one redraw, not a thousand.

export const HISTORY_SIZE = 100;
export const FINAL_STATES = new Set(["completed", "aborted"]);

export function isFinal(transfer) {
  return FINAL_STATES.has(transfer.state);
}

/** Channels a transfer involves (to find "the transfer of this call"). */
export function transferChannels(transfer) {
  return [transfer.transferor, transfer.transferee, transfer.target]
    .map((party) => party && party.channel_id)
    .filter(Boolean);
}

function parseTime(iso) {
  const at = iso ? Date.parse(iso) : NaN;
  return Number.isNaN(at) ? null : at;
}

export class LiveState {
  constructor() {
    this.calls = new Map(); // "pbx|call_id" → call record
    this.transfers = new Map(); // active transfers by id
    this.history = []; // finished transfers, newest first
    this.health = null;
    this.byChannel = new Map(); // channel id → active transfer id
    this.callOf = new Map(); // channel id → key of the call it is in (a leg is in one call)
    this.changed = new Set(); // "calls" | "transfers" | "history" | "health"
    this.snapshotAt = 0;
  }

  /** Replace everything with a snapshot message. */
  applySnapshot(message, now = Date.now()) {
    const previous = this.calls;
    this.calls = new Map();
    this.callOf = new Map();
    for (const call of message.calls || []) this.upsertCall(call, now, false, previous);
    this.transfers = new Map();
    for (const transfer of message.transfers || []) {
      if (isFinal(transfer)) this.remember(transfer);
      else this.transfers.set(transfer.id, transfer);
    }
    if (message.health) this.health = message.health;
    this.snapshotAt = now;
    this.reindex();
    this.changed.add("calls").add("transfers").add("history").add("health");
  }

  /** One stream change message. */
  apply(message, now = Date.now()) {
    if (message.kind === "call" && message.call) {
      const call = message.call;
      const key = `${call.pbx ?? ""}|${call.call_id}`;
      const live = (call.members || []).filter((m) => m.status !== "BYE");
      if (live.length === 0) this.dropCall(key);
      else this.upsertCall(call, now, true, this.calls);
      this.changed.add("calls");
    } else if (message.kind === "transfer" && message.transfer) {
      this.applyTransfer(message.transfer);
    } else if (message.kind === "health" && message.health) {
      this.health = message.health;
      this.changed.add("health");
    }
  }

  applyTransfer(transfer) {
    if (isFinal(transfer)) {
      this.transfers.delete(transfer.id);
      this.remember(transfer);
    } else {
      this.transfers.set(transfer.id, transfer);
    }
    this.reindex();
    this.changed.add("transfers").add("calls");
  }

  /** Seed the history with what the API has (GET /v1/transfers), keeping anything newer. */
  seedHistory(items) {
    for (const transfer of [...items].reverse()) {
      if (isFinal(transfer) && !this.history.some((t) => t.id === transfer.id)) this.remember(transfer);
    }
    this.history.sort((a, b) => String(b.updated_at).localeCompare(String(a.updated_at)));
    this.changed.add("history");
  }

  remember(transfer) {
    this.history = [transfer, ...this.history.filter((t) => t.id !== transfer.id)].slice(0, HISTORY_SIZE);
    this.changed.add("history");
  }

  /**
   * A call as the page shows it.  Durations: when the service says when a leg last changed
   * (`since`), that; otherwise the browser's own observation, marked inexact when the leg was
   * already there at the snapshot (the page then shows "≥").
   */
  upsertCall(call, now, observed, previousCalls) {
    const key = `${call.pbx ?? ""}|${call.call_id}`;
    const before = previousCalls.get(key);
    const legs = new Map();
    for (const member of call.members || []) {
      if (member.status === "BYE") continue;
      const old = before && before.legs.get(member.channel_id);
      const given = parseTime(member.since);
      let since;
      let exact;
      if (given !== null) {
        since = given;
        exact = true;
      } else if (old && old.status === member.status) {
        since = old.since;
        exact = old.exact;
      } else {
        since = now;
        exact = observed;
      }
      legs.set(member.channel_id, { ...member, since, exact });
    }
    // A leg that moved here (a consultation re-reports the transferor under its new call id)
    // leaves the call it was in: a channel is in one call only.
    for (const channel of legs.keys()) {
      const was = this.callOf.get(channel);
      if (was !== undefined && was !== key) {
        const other = this.calls.get(was);
        if (other) {
          other.legs.delete(channel);
          if (other.legs.size === 0) this.calls.delete(was);
        }
      }
      this.callOf.set(channel, key);
    }
    if (before) {
      for (const channel of before.legs.keys()) {
        if (!legs.has(channel) && this.callOf.get(channel) === key) this.callOf.delete(channel);
      }
    }
    const started = parseTime(call.started_at);
    this.calls.set(key, {
      key,
      pbx: call.pbx ?? "",
      call_id: call.call_id,
      legs,
      started: started ?? (before ? before.started : now),
      exact: started !== null ? true : before ? before.exact : observed,
    });
  }

  dropCall(key) {
    const call = this.calls.get(key);
    if (!call) return;
    for (const channel of call.legs.keys()) if (this.callOf.get(channel) === key) this.callOf.delete(channel);
    this.calls.delete(key);
  }

  reindex() {
    this.byChannel = new Map();
    for (const transfer of this.transfers.values()) {
      for (const channel of transferChannels(transfer)) this.byChannel.set(channel, transfer.id);
    }
  }

  /** The active transfer a call takes part in, if any. */
  transferOfCall(call) {
    for (const channel of call.legs.keys()) {
      const id = this.byChannel.get(channel);
      if (id) return this.transfers.get(id) ?? null;
    }
    return null;
  }

  /** A call one of whose legs is `channel`. */
  callOfChannel(channel) {
    const key = channel ? this.callOf.get(channel) : undefined;
    return key === undefined ? null : (this.calls.get(key) ?? null);
  }

  transfer(id) {
    return this.transfers.get(id) ?? this.history.find((t) => t.id === id) ?? null;
  }

  take() {
    const changed = this.changed;
    this.changed = new Set();
    return changed;
  }
}
