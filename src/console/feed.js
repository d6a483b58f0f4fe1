// The live feed (`GET /api/v1/ws`, README "Live feed"): authenticated by the subprotocols
// `tally.v1, tally.bearer.<token>` (a browser cannot set headers), one event per message.
// It keeps the cursor of the last event it handled and reconnects with `?after=<cursor>`, so a
// dropped connection loses nothing and repeats nothing; the delay doubles from 0.5 s to 15 s.

const DELAY_MIN_MS = 500;
const DELAY_MAX_MS = 15000;

/**
 * Opens the feed for the session `token()` gives and calls `onEvent(event)` for each event and
 * `onState(state, detail)` with "connecting", "live", "reconnecting" or "closed".
 * Returns `{close()}`.
 */
export function openFeed({ token, onEvent, onState }) {
  let socket = null;
  let cursor = null;
  let delay = DELAY_MIN_MS;
  let timer = null;
  let closed = false;

  const connect = () => {
    const access = token();
    if (closed || !access) return;
    onState(cursor ? "reconnecting" : "connecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const after = cursor ? `?after=${encodeURIComponent(cursor)}` : "";
    socket = new WebSocket(`${scheme}//${location.host}/api/v1/ws${after}`, ["tally.v1", `tally.bearer.${access}`]);
    socket.addEventListener("open", () => {
      delay = DELAY_MIN_MS;
      onState("live");
    });
    socket.addEventListener("message", (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      cursor = event.cursor;
      onEvent(event);
    });
    socket.addEventListener("close", (close) => {
      socket = null;
      if (closed) return;
      // The server names where to resume in the close reason ("...; after=<cursor>").
      const named = /after=([0-9]+\.[0-9]+)/.exec(close.reason || "");
      if (named) cursor = named[1];
      onState("reconnecting", close.reason);
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, DELAY_MAX_MS);
    });
  };

  connect();
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
      onState("closed");
    },
  };
}
