// fogconnect.js: reach fogconnect devices from a web page.
//
// An ES module with no dependencies and no build step. A page imports it
// from its signaling server (`import * as fog from "/fogconnect.js"`),
// signs in with an id and a token like any node, sees who is online, and
// opens connections to a device's services over WebRTC DataChannels:
// peer to peer whenever the NATs allow it, through the TURN relays the
// server hands out otherwise.
//
//   const session = await fog.signIn({ id: "web-1", token });
//   session.addEventListener("presence", (e) => console.log(e.detail));
//   const peers = await session.peers();
//   const conn = await session.connect("dev-a", 1);
//   conn.addEventListener("message", (e) => console.log(e.detail.text()));
//   conn.addEventListener("close", (e) => console.log(e.detail.reason));
//   conn.send("I am fog data!");
//
// The signaling protocol is documented in PROTOCOL.md (messages
// `register`, `list`, `subscribe`, `rtc-connect`, `rtc-candidate`, and the
// server's `rtc-answered`, `rejected`, `presence`).

/** The signaling protocol version this module speaks. */
export const PROTOCOL_VERSION = 1;

/** The transport code of a browser connection in a convention number. */
export const TRANSPORT_RTC = 0;

/** The largest message a connection carries (what browsers accept). */
export const MAX_MESSAGE_BYTES = 256 * 1024;

/** How long `connect` waits by default for the channel to open. */
export const CONNECT_TIMEOUT_MS = 15000;

/** How often the session pings the server (its idle timeout is 60 s). */
const PING_INTERVAL_MS = 20000;

/** How long a request to the server waits for its answer. */
const REQUEST_TIMEOUT_MS = 10000;

/** Refuse codes a node answers a connect with (PROTOCOL.md). */
export const REFUSE_CODES = {
  1: "no-such-service",
  2: "reserved-bits",
  3: "unsupported-transport",
  4: "version-mismatch",
  5: "service-unavailable",
  6: "bad-request",
};

/** An error of signaling or of a connect, with the code the server or the
 * node gave (`code`) and its name (`name`). */
export class FogError extends Error {
  constructor(message, code = 0, name = "error") {
    super(message);
    this.code = code;
    this.kind = name;
  }
}

/** The convention number of `service` over a browser connection. */
export function convention(service) {
  if (!Number.isInteger(service) || service < 0 || service > 255) {
    throw new FogError(`service must be an integer 0..255, got ${service}`, 0, "bad-request");
  }
  return (service << 4) | TRANSPORT_RTC;
}

function randomRequestId() {
  const words = new Uint32Array(2);
  crypto.getRandomValues(words);
  // 53 bits: exact as a JavaScript number.
  return (words[0] & 0x1fffff) * 0x100000000 + words[1];
}

function defaultUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Signs in to a signaling server. Resolves to a `Session` once
 * registered.
 *
 * @param {{id: string, token: string, url?: string}} options `url`
 *   defaults to the `/ws` endpoint of the server that served the page.
 */
export function signIn({ id, token, url = defaultUrl() }) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let settled = false;
    ws.onerror = () => {
      if (!settled) {
        settled = true;
        reject(new FogError(`cannot reach the signaling server at ${url}`));
      }
    };
    ws.onclose = (event) => {
      if (!settled) {
        settled = true;
        reject(new FogError(`the signaling server closed the session (${event.code})`));
      }
    };
    ws.onopen = () => ws.send(JSON.stringify({ type: "register", version: PROTOCOL_VERSION, id, token }));
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (settled) return;
      settled = true;
      if (message.type === "registered") {
        resolve(new Session(ws, message));
      } else if (message.type === "error") {
        ws.close();
        reject(new FogError(message.message, message.code, "refused"));
      } else {
        ws.close();
        reject(new FogError(`unexpected first message ${message.type}`));
      }
    };
  });
}

/** A registered signaling session.
 *
 * Events: `presence` (detail `{id, online}`), `closed` (detail `{reason}`).
 */
export class Session extends EventTarget {
  constructor(ws, registered) {
    super();
    this.id = registered.id;
    /** ICE servers for connections: the server's STUN servers and its
     * TURN relays with credentials issued for this id. */
    this.iceServers = [
      ...(registered.stun || []).map((url) => ({ urls: url })),
      ...(registered.relays || []).map((r) => ({ urls: r.url, username: r.username, credential: r.password })),
    ];
    this._ws = ws;
    this._lists = [];
    this._connects = new Map();
    this._closed = false;
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = () => this._end("the signaling session closed");
    ws.onerror = () => this._end("the signaling session failed");
    this._ping = setInterval(() => this._send({ type: "ping", nonce: Date.now() }), PING_INTERVAL_MS);
    this._send({ type: "subscribe" });
  }

  /** The ids online, sorted. */
  peers() {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        const i = this._lists.indexOf(waiter);
        if (i >= 0) this._lists.splice(i, 1);
        reject(new FogError("no answer to list"));
      }, REQUEST_TIMEOUT_MS);
      const waiter = (peers, error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve(peers);
      };
      this._lists.push(waiter);
      this._send({ type: "list" });
    });
  }

  /** Opens a connection to `service` (0..255) of the device `peerId`.
   * Resolves to a `Connection` once its DataChannel is open; rejects with
   * a `FogError` carrying the node's refuse code (e.g. 1,
   * "no-such-service") or a timeout.
   *
   * @param {string} peerId
   * @param {number} service
   * @param {{timeoutMs?: number}} options
   */
  connect(peerId, service, { timeoutMs = CONNECT_TIMEOUT_MS } = {}) {
    const requestId = randomRequestId();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    const channel = pc.createDataChannel("fogconnect", { ordered: true });
    channel.binaryType = "arraybuffer";
    const started = performance.now();
    return new Promise((resolve, reject) => {
      let done = false;
      const fail = (error) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this._connects.delete(requestId);
        pc.close();
        reject(error);
      };
      const timer = setTimeout(
        () => fail(new FogError(`no connection to ${peerId} within ${timeoutMs} ms`, 0, "timeout")),
        timeoutMs,
      );
      this._connects.set(requestId, {
        peer: peerId,
        answered: (sdp) => pc.setRemoteDescription({ type: "answer", sdp }).catch((e) => fail(new FogError(`bad answer: ${e.message}`))),
        refused: (code, message) => fail(new FogError(message, code, REFUSE_CODES[code] || "refused")),
        failed: (error) => fail(error),
      });
      pc.onicecandidate = (event) => {
        const candidate = event.candidate ? event.candidate.candidate : "";
        this._send({ type: "rtc-candidate", request_id: requestId, to: peerId, candidate });
      };
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed") fail(new FogError(`no path to ${peerId} (ICE failed)`, 0, "unreachable"));
      };
      channel.onopen = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this._connects.delete(requestId);
        resolve(new Connection(pc, channel, peerId, service, performance.now() - started));
      };
      pc.createOffer()
        .then((offer) => pc.setLocalDescription(offer))
        .then(() => {
          const sdp = pc.localDescription.sdp;
          this._send({ type: "rtc-connect", request_id: requestId, to: peerId, convention: convention(service), sdp });
        })
        .catch((e) => fail(new FogError(`cannot make an offer: ${e.message}`)));
    });
  }

  /** Ends the session (open connections stay open). */
  close() {
    this._end("signed out");
    this._ws.close();
  }

  _send(message) {
    if (this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  _end(reason) {
    if (this._closed) return;
    this._closed = true;
    clearInterval(this._ping);
    for (const waiter of this._lists.splice(0)) waiter(null, new FogError(reason));
    for (const pending of [...this._connects.values()]) pending.failed(new FogError(reason));
    this.dispatchEvent(new CustomEvent("closed", { detail: { reason } }));
  }

  _receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    const pending = this._connects.get(message.request_id);
    switch (message.type) {
      case "peers": {
        const waiter = this._lists.shift();
        if (waiter) waiter(message.peers);
        break;
      }
      case "presence":
        this.dispatchEvent(new CustomEvent("presence", { detail: { id: message.id, online: message.online } }));
        break;
      case "rtc-answered":
        if (pending && pending.peer === message.from) pending.answered(message.sdp);
        break;
      case "rejected":
        if (pending && pending.peer === message.from) pending.refused(message.code, message.message);
        break;
      case "error":
        if (pending) pending.refused(0, message.message);
        else console.warn(`fogconnect: signaling error ${message.code}: ${message.message}`);
        break;
      case "replaced":
        this._end(message.message);
        break;
      default:
        break;
    }
  }
}

/** A received message: its bytes, and its text when it is UTF-8. */
export class Message {
  constructor(bytes) {
    /** @type {Uint8Array} */
    this.bytes = bytes;
  }

  /** The message as UTF-8 text. */
  text() {
    return decoder.decode(this.bytes);
  }
}

/** A connection to a device's service over a DataChannel.
 *
 * Events: `message` (detail a `Message`), `close` (detail
 * `{error, reason}`; exactly once), `bufferedamountlow`.
 */
export class Connection extends EventTarget {
  constructor(pc, channel, peer, service, connectMs) {
    super();
    this.peer = peer;
    this.service = service;
    /** Milliseconds from `connect` to the open channel. */
    this.connectMs = connectMs;
    this._pc = pc;
    this._channel = channel;
    this._closed = false;
    channel.bufferedAmountLowThreshold = 256 * 1024;
    channel.onmessage = (event) => {
      if (typeof event.data === "string") {
        this._control(event.data);
      } else {
        this.dispatchEvent(new CustomEvent("message", { detail: new Message(new Uint8Array(event.data)) }));
      }
    };
    channel.onbufferedamountlow = () => this.dispatchEvent(new Event("bufferedamountlow"));
    channel.onclose = () => this._ended(true, "the channel closed");
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this._ended(true, "the device stopped answering");
      }
    };
  }

  /** Bytes queued in the channel and not yet sent. */
  get bufferedAmount() {
    return this._channel.bufferedAmount;
  }

  /** Whether the connection has ended. */
  get closed() {
    return this._closed;
  }

  /** Sends one message: a string (as UTF-8), an ArrayBuffer or a typed
   * array. Throws a `FogError` when closed or over the maximum size. */
  send(data) {
    if (this._closed) throw new FogError("connection closed", 0, "closed");
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const length = bytes.byteLength;
    if (length > MAX_MESSAGE_BYTES) {
      throw new FogError(`message of ${length} bytes exceeds ${MAX_MESSAGE_BYTES}`, 0, "too-large");
    }
    this._channel.send(bytes);
  }

  /** Ends the connection; the device's service sees `reason`. */
  close(reason = "") {
    if (this._closed) return;
    try {
      this._channel.send(JSON.stringify({ type: "close", error: false, message: reason }));
    } catch {
      // The channel is gone already.
    }
    this._ended(false, "local", true);
  }

  _control(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if (message.type === "close") this._ended(Boolean(message.error), message.message || "", false);
  }

  _ended(error, reason, drain = false) {
    if (this._closed) return;
    this._closed = true;
    const shut = () => this._pc.close();
    if (drain && this._channel.bufferedAmount > 0) {
      // Let the close message leave before the connection goes.
      const started = performance.now();
      const wait = () => {
        if (this._channel.bufferedAmount === 0 || performance.now() - started > 2000) shut();
        else setTimeout(wait, 20);
      };
      wait();
    } else {
      setTimeout(shut, 100);
    }
    this.dispatchEvent(new CustomEvent("close", { detail: { error, reason } }));
  }
}
