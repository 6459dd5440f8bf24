// The live stream: /v1/stream?snapshot=1 over a websocket authenticated by the session cookie.
// The first message is a snapshot of everything; later ones are changes.  When the socket closes
// the console says so at once (the "reconnecting" banner: what is on screen may be stale), then
// reconnects with exponential backoff and jitter and starts again from a fresh snapshot, so it
// never has to guess what it missed.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class LiveStream {
  /**
   * @param {object} handlers
   *   onSnapshot(message), onMessage(message): the stream's messages;
   *   onStatus({state: "connecting"|"live"|"reconnecting", attempt, retryAt}): for the banner;
   *   onClosed(): asked whether to go on (return false to stop, e.g. when the session expired).
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
  }

  url() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    return `${scheme}://${location.host}/v1/stream?snapshot=1`;
  }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onclose = null;
      socket.close(1000);
    }
  }

  open() {
    if (this.stopped) return;
    this.handlers.onStatus({ state: this.attempt ? "reconnecting" : "connecting", attempt: this.attempt });
    let socket;
    try {
      socket = new WebSocket(this.url());
    } catch {
      this.retry();
      return;
    }
    this.socket = socket;
    let snapshotSeen = false;
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return; // not ours to interpret
      }
      if (message.kind === "snapshot") {
        snapshotSeen = true;
        this.attempt = 0; // a full start: the next drop begins the backoff again
        this.handlers.onSnapshot(message);
        this.handlers.onStatus({ state: "live" });
      } else if (snapshotSeen) {
        this.handlers.onMessage(message);
      }
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.retry();
    };
    socket.onerror = () => {}; // onclose follows and does the work
  }

  async retry() {
    if (this.stopped) return;
    this.attempt += 1;
    const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (this.attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.handlers.onStatus({ state: "reconnecting", attempt: this.attempt, retryAt: Date.now() + delay });
    // A socket refused at the handshake looks like any other close: ask whether the session
    // is still good, and stop if it is not (the login view takes over).
    const goOn = await this.handlers.onClosed();
    if (!goOn || this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  /** Reconnect now (the "retry now" link of the banner). */
  now() {
    if (this.stopped || this.socket) return;
    clearTimeout(this.timer);
    this.open();
  }
}
