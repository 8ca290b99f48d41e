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

/** A JSON message (of the server or a control message), or null for text
 * that is not a JSON object. */
function parseMessage(text) {
  try {
    const message = JSON.parse(text);
    return message !== null && typeof message === "object" ? message : null;
  } catch {
    return null;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The URLs of `url`: an array, or one string with URLs separated by
 * commas. */
function urlList(url) {
  const list = Array.isArray(url) ? url : String(url).split(",");
  return list.map((u) => String(u).trim()).filter((u) => u.length > 0);
}

/** First wait before reconnecting to signaling, and the longest. */
const RECONNECT_INITIAL_MS = 200;
const RECONNECT_MAX_MS = 10000;

/** Opens a WebSocket to `url` and registers. Resolves to the socket and
 * the `registered` message; rejects with a `FogError` (kind "refused",
 * with the server's error code, when it answered with an error).
 */
function register(url, id, token) {
  return new Promise((resolve, reject) => {
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      reject(new FogError(`bad signaling URL ${url}: ${e.message}`));
      return;
    }
    let settled = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      ws.close();
      reject(new FogError(`no answer from the signaling server at ${url}`));
    }, REQUEST_TIMEOUT_MS);
    const fail = (error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(error);
    };
    ws.onerror = () => fail(new FogError(`cannot reach the signaling server at ${url}`));
    ws.onclose = (event) => fail(new FogError(`the signaling server at ${url} closed the session (${event.code})`));
    ws.onopen = () => ws.send(JSON.stringify({ type: "register", version: PROTOCOL_VERSION, id, token }));
    ws.onmessage = (event) => {
      const message = parseMessage(event.data);
      if (!message || settled) return;
      settled = true;
      clearTimeout(timer);
      if (message.type === "registered") {
        resolve({ ws, registered: message });
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

/** Whether a registration failure would be the same on every server: a
 * bad or expired token, another protocol version. */
function terminal(error) {
  return error.kind === "refused" && (error.code === 2 || error.code === 8);
}

/** Signs in to a signaling server. Resolves to a `Session` once
 * registered.
 *
 * @param {{id: string, token: string, url?: string | string[]}} options
 *   `url` defaults to the `/ws` endpoint of the server that served the
 *   page. Several servers of one signaling cluster are an array, or one
 *   string with the URLs separated by commas: the first that answers is
 *   used, and the session moves on to the next when its server is lost
 *   (its connections are not touched).
 */
export async function signIn({ id, token, url = defaultUrl() }) {
  const urls = urlList(url);
  if (urls.length === 0) throw new FogError("no signaling URL given");
  let last = null;
  for (let i = 0; i < urls.length; i++) {
    try {
      const { ws, registered } = await register(urls[i], id, token);
      return new Session(ws, registered, { urls, current: i, token });
    } catch (error) {
      if (terminal(error)) throw error;
      last = error;
    }
  }
  throw last;
}

/** A registered signaling session.
 *
 * Events: `presence` (detail `{id, online}`); `signaling` (detail
 * `{state: "lost", reason}` when the server is lost, then `{state: "up",
 * url}` once registered again with the next one; requests waiting when it
 * was lost fail, open connections go on); `closed` (detail `{reason}`:
 * signed out, or replaced by a newer session of the id).
 */
export class Session extends EventTarget {
  constructor(ws, registered, { urls = [], current = 0, token = "" } = {}) {
    super();
    this.id = registered.id;
    this._urls = urls;
    this._current = current;
    this._token = token;
    /** ICE servers for connections: the server's STUN servers and its
     * TURN relays with credentials issued for this id. */
    this.iceServers = [
      ...(registered.stun || []).map((url) => ({ urls: url })),
      ...(registered.relays || []).map((r) => ({ urls: r.url, username: r.username, credential: r.password })),
    ];
    this._lists = [];
    this._connects = new Map();
    this._closed = false;
    this._attach(ws);
    this._ping = setInterval(() => this._send({ type: "ping", nonce: Date.now() }), PING_INTERVAL_MS);
  }

  /** Uses `ws` (registered) from now on. */
  _attach(ws) {
    this._ws = ws;
    ws.onmessage = (event) => this._receive(event.data);
    ws.onclose = () => this._lost(ws, "the signaling session closed");
    ws.onerror = () => this._lost(ws, "the signaling session failed");
    this._send({ type: "subscribe" });
  }

  /** The server of `ws` is lost: waiting requests fail, and the session
   * registers again with the next server (each attempt after a jittered,
   * growing delay) until it is closed. */
  async _lost(ws, reason) {
    if (this._closed || ws !== this._ws || this._reconnecting) return;
    this._reconnecting = true;
    this._failWaiting(reason);
    this.dispatchEvent(new CustomEvent("signaling", { detail: { state: "lost", reason } }));
    let delay = RECONNECT_INITIAL_MS;
    while (!this._closed) {
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random() / 2)));
      if (this._closed) break;
      this._current = (this._current + 1) % Math.max(this._urls.length, 1);
      const url = this._urls[this._current];
      if (url === undefined) break;
      try {
        const { ws: fresh } = await register(url, this.id, this._token);
        if (this._closed) {
          fresh.close();
          break;
        }
        this._reconnecting = false;
        this._attach(fresh);
        this.dispatchEvent(new CustomEvent("signaling", { detail: { state: "up", url } }));
        return;
      } catch (error) {
        if (terminal(error)) {
          this._reconnecting = false;
          this._end(`registration refused: ${error.message}`);
          return;
        }
        delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      }
    }
    this._reconnecting = false;
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
  }

  _send(message) {
    if (this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(message));
  }

  _failWaiting(reason) {
    for (const waiter of this._lists.splice(0)) waiter(null, new FogError(reason));
    for (const pending of [...this._connects.values()]) pending.failed(new FogError(reason));
  }

  _end(reason) {
    if (this._closed) return;
    this._closed = true;
    clearInterval(this._ping);
    this._failWaiting(reason);
    this._ws.close();
    this.dispatchEvent(new CustomEvent("closed", { detail: { reason } }));
  }

  _receive(text) {
    const message = parseMessage(text);
    if (!message) return;
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
    this._closeDetail = null;
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

  /** The path the connection takes now: the selected candidate pair
   * (`local` and `remote`, each `{type, address, port, protocol,
   * relayProtocol}`; type `host`, `srflx`, `prflx` or `relay`), whether it
   * is relayed, and the round-trip time in milliseconds. */
  async path() {
    const report = await this._pc.getStats();
    let pair = null;
    report.forEach((entry) => {
      if (entry.type === "transport" && entry.selectedCandidatePairId) pair = report.get(entry.selectedCandidatePairId);
    });
    if (!pair) {
      report.forEach((entry) => {
        if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") pair = entry;
      });
    }
    if (!pair) return null;
    const candidate = (id) => {
      const c = report.get(id) || {};
      return { type: c.candidateType, address: c.address, port: c.port, protocol: c.protocol, relayProtocol: c.relayProtocol };
    };
    const local = candidate(pair.localCandidateId);
    const remote = candidate(pair.remoteCandidateId);
    return {
      local,
      remote,
      relayed: local.type === "relay" || remote.type === "relay",
      rttMs: pair.currentRoundTripTime === undefined ? null : pair.currentRoundTripTime * 1000,
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

  /** How it ended (`{error, reason}`, as the `close` event told), or
   * `null` while open. */
  get closeDetail() {
    return this._closeDetail;
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
    const message = parseMessage(text);
    if (message && message.type === "close") this._ended(Boolean(message.error), message.message || "", false);
  }

  _ended(error, reason, drain = false) {
    if (this._closed) return;
    this._closed = true;
    this._closeDetail = { error, reason };
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

// ---------------------------------------------------------------------
// Stream sessions: a connection to a service served by a stream plugin
// carries stream messages, one per connection message: `kind` (1 byte),
// `id` (4 bytes, big endian), then the body (the node's stream protocol,
// proto/src/stream.rs).

const KIND_OPEN = 0x01;
const KIND_TALK = 0x02;
const KIND_ACCEPTED = 0x03;
const KIND_REFUSED = 0x04;
const KIND_DATA = 0x05;
const KIND_END = 0x06;
const KIND_COMMAND = 0x07;
const KIND_REPLY = 0x08;
const KIND_REPLY_ERROR = 0x09;

/** The largest command or reply (the node's limit). */
export const MAX_COMMAND_BYTES = 16 * 1024;

function streamMessage(kind, id, body = new Uint8Array(0)) {
  const bytes = typeof body === "string" ? encoder.encode(body) : new Uint8Array(body);
  const message = new Uint8Array(5 + bytes.byteLength);
  message[0] = kind;
  new DataView(message.buffer).setUint32(1, id >>> 0);
  message.set(bytes, 5);
  return message;
}

/** The application side of a stream service over a `Connection`: ask for
 * streams and read their data, talk back, send commands and answer the
 * device's.
 *
 * Events: `command` (detail `{id, data, text(), reply(data), fail(reason)}`:
 * answer every one), `close` (the connection's close detail).
 */
export class StreamSession extends EventTarget {
  /** @param {Connection} conn a connection to a stream service */
  constructor(conn) {
    super();
    this.connection = conn;
    this._nextStream = 1;
    this._nextCommand = 1;
    this._streams = new Map();
    this._opening = new Map();
    this._commands = new Map();
    conn.addEventListener("message", (e) => this._receive(e.detail.bytes));
    conn.addEventListener("close", (e) => {
      const reason = e.detail.reason || "connection closed";
      for (const [, pending] of this._opening) pending.reject(new FogError(`connection closed: ${reason}`, 0, "closed"));
      for (const [, pending] of this._commands) pending.reject(new FogError(`connection closed: ${reason}`, 0, "closed"));
      for (const [, stream] of this._streams) stream._ended(reason);
      this._opening.clear();
      this._commands.clear();
      this._streams.clear();
      this.dispatchEvent(new CustomEvent("close", { detail: e.detail }));
    });
  }

  /** Asks the device for a stream with `params` (for its plugin's
   * `send-init`, e.g. `action=live&bitrate=800000`). Resolves to a
   * `MediaStream` once accepted; rejects with the plugin's reason. */
  open(params) {
    return this._start(KIND_OPEN, params, (id) => new MediaStream(this, id));
  }

  /** Opens a talk-back stream to the device with `params` (for its
   * plugin's `recv-init`). Resolves to a `TalkStream`. */
  talk(params) {
    return this._start(KIND_TALK, params, (id) => new TalkStream(this, id));
  }

  /** Sends a command; resolves to the reply's bytes (a `Message`), rejects
   * with the device's reason or after `timeoutMs`. */
  command(data, { timeoutMs = 10000 } = {}) {
    const body = typeof data === "string" ? encoder.encode(data) : data;
    if (body.byteLength > MAX_COMMAND_BYTES) {
      return Promise.reject(new FogError(`${body.byteLength} bytes exceed the command limit`, 0, "too-large"));
    }
    const id = this._nextCommand++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._commands.delete(id);
        reject(new FogError(`no reply within ${timeoutMs} ms`, 0, "timeout"));
      }, timeoutMs);
      this._commands.set(id, {
        resolve: (reply) => { clearTimeout(timer); resolve(reply); },
        reject: (error) => { clearTimeout(timer); reject(error); },
      });
      this._send(KIND_COMMAND, id, body);
    });
  }

  /** Counts the `command` listeners: without any, the device's commands
   * are refused at once. */
  addEventListener(type, listener, options) {
    if (type === "command") this._commandHandlers = (this._commandHandlers || 0) + 1;
    super.addEventListener(type, listener, options);
  }

  removeEventListener(type, listener, options) {
    if (type === "command") this._commandHandlers = Math.max(0, (this._commandHandlers || 0) - 1);
    super.removeEventListener(type, listener, options);
  }

  _start(kind, params, make) {
    const id = this._nextStream++;
    return new Promise((resolve, reject) => {
      this._opening.set(id, { make, resolve, reject });
      this._send(kind, id, params);
    });
  }

  _send(kind, id, body) {
    this.connection.send(streamMessage(kind, id, body));
  }

  _receive(bytes) {
    if (bytes.byteLength < 5) return;
    const kind = bytes[0];
    const id = new DataView(bytes.buffer, bytes.byteOffset, 5).getUint32(1);
    const body = bytes.subarray(5);
    switch (kind) {
      case KIND_ACCEPTED: {
        const pending = this._opening.get(id);
        if (!pending) return;
        this._opening.delete(id);
        const stream = pending.make(id);
        this._streams.set(id, stream);
        pending.resolve(stream);
        break;
      }
      case KIND_REFUSED: {
        const pending = this._opening.get(id);
        if (!pending) return;
        this._opening.delete(id);
        pending.reject(new FogError(decoder.decode(body), 0, "refused"));
        break;
      }
      case KIND_DATA: {
        const stream = this._streams.get(id);
        if (stream instanceof MediaStream) stream._data(body);
        break;
      }
      case KIND_END: {
        const stream = this._streams.get(id);
        if (!stream) return;
        this._streams.delete(id);
        stream._ended(decoder.decode(body));
        break;
      }
      case KIND_COMMAND: {
        let answered = false;
        const answer = (replyKind, data) => {
          if (answered || this.connection.closed) return;
          answered = true;
          this._send(replyKind, id, data);
        };
        const detail = {
          id,
          data: body,
          text: () => decoder.decode(body),
          reply: (data) => answer(KIND_REPLY, data),
          fail: (reason) => answer(KIND_REPLY_ERROR, reason),
        };
        if (this._commandHandlers) this.dispatchEvent(new CustomEvent("command", { detail }));
        else detail.fail("no command handler");
        break;
      }
      case KIND_REPLY:
      case KIND_REPLY_ERROR: {
        const pending = this._commands.get(id);
        if (!pending) return;
        this._commands.delete(id);
        if (kind === KIND_REPLY) pending.resolve(new Message(body));
        else pending.reject(new FogError(`the device refused the command: ${decoder.decode(body)}`, 0, "remote"));
        break;
      }
      default:
        break;
    }
  }
}

/** A stream from the device. Events: `data` (detail `Uint8Array`), `end`
 * (detail `{reason}`). `bytes` and `chunks` count what arrived. */
export class MediaStream extends EventTarget {
  constructor(session, id) {
    super();
    this.id = id;
    this.bytes = 0;
    this.chunks = 0;
    this.ended = false;
    this._session = session;
  }

  /** Asks the device to stop the stream; `end` follows. */
  stop(reason = "stopped by the application") {
    if (!this.ended) this._session._send(KIND_END, this.id, reason);
  }

  _data(chunk) {
    this.bytes += chunk.byteLength;
    this.chunks += 1;
    this.dispatchEvent(new CustomEvent("data", { detail: chunk }));
  }

  _ended(reason) {
    if (this.ended) return;
    this.ended = true;
    this.dispatchEvent(new CustomEvent("end", { detail: { reason } }));
  }
}

/** A talk-back stream to the device. Events: `end` (detail `{reason}`). */
export class TalkStream extends EventTarget {
  constructor(session, id) {
    super();
    this.id = id;
    this.ended = false;
    this._session = session;
  }

  /** Sends one chunk. */
  send(chunk) {
    if (this.ended) throw new FogError("talk-back stream ended", 0, "closed");
    this._session._send(KIND_DATA, this.id, chunk);
  }

  /** Ends the stream. */
  end(reason = "") {
    if (this.ended) return;
    this.ended = true;
    this._session._send(KIND_END, this.id, reason);
  }

  _ended(reason) {
    if (this.ended) return;
    this.ended = true;
    this.dispatchEvent(new CustomEvent("end", { detail: { reason } }));
  }
}
