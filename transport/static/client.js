// threadline's JavaScript client: one dependency-free ES module (no build step), served by the
// server at /v1/client.js; its types are in client.d.ts beside it (/v1/client.d.ts). The same
// folder is the npm package `threadline-client` (package.json, README.md): in Node,
// `import { connect } from "threadline-client"` (Node >= 22, or a WebSocket given: see below).
//
//   import { connect } from "/v1/client.js";
//   const client = connect({ token, onstate: (state) => ..., onerror: (err) => ... });
//   // or tokens that expire, fetched from the app's backend (see "Tokens" below):
//   const client = connect({ getToken: () => fetch("/my/token").then((r) => r.text()) });
//   await client.join("main", { since: 0, onevent: (frame, run) => show(run.text) });
//   await client.send("main", "/stream 50");
//   // a tool call waiting for approval (PROTOCOL.md 1.1): run.approvals, thread.pendingApprovals
//   await client.decide("main", approval.runId, approval.callId, true);
//   // the conversation tree (PROTOCOL.md 1.1): edit, regenerate, the branch to show
//   await client.send("main", "the same, better", { parent: message.parent });  // an edit
//   await client.regenerate("main", message.id);
//   for (const { message, run, siblings, answers } of client.tree("main").branch()) show(...);
//   // attachments (PROTOCOL.md 1.1): upload first, then name them in a send
//   const file = await client.upload(input.files[0], { onProgress: ({ loaded, total }) => ... });
//   await client.send("main", "what is in this?", { attachments: [file.attachment_id] });
//   img.src = URL.createObjectURL(await client.download(message.attachments[0].attachment_id));
//   // tokens (PROTOCOL.md 1.1, "Usage and budgets"): a finished run's, and the user's per period
//   if (run.usage) show(run.usage.input_tokens + run.usage.output_tokens);
//   const { day, month } = await client.usage();  // GET /v1/usage: {input_tokens, output_tokens, budget}
//
// Invariants:
// - Requests (join, leave, send, regenerate, cancel, decide, threads, ping) carry a fresh integer `ref` and settle
//   with the frame that answers it; an `error` answer rejects with a ThreadlineError carrying
//   the protocol's `code`. A request made while no connection is open waits for one.
// - The connection is opened again after any loss except a close that would only repeat
//   (1000, 1007, 1008, 1009; 4001, token expired, with a static `token`), with exponential
//   backoff and jitter, bounded by `maxDelay`. Every joined thread is joined again with
//   `since` = the last seq seen, and an event whose seq is not above that is dropped: no gap, no duplicate. Requests written
//   before a loss are written again (send and regenerate are idempotent by their client_msg_id,
//   which the client makes up when not given) except `cancel` and `decide`, which reject with code "disconnected":
//   either may have been handled, and a second `decide` would be `unknown_call` (PROTOCOL.md,
//   "### `decide`": read the thread's events before deciding again). A request not yet written
//   when the connection was lost is written once it is back, after the joins.
// - A thread's last seen seq (Thread.lastSeq) only rises, but for one deliberate reset. A
//   `joined` is handled when its frame is read, before the frames read after it (not in a
//   promise callback, which would run after the rest of the same batch: a Node WebSocket hands
//   over every message of one TCP read in one go), and while a thread's join is unanswered its
//   events are dropped: those are of an earlier subscription, and the join's replay from
//   `since` brings them again. So the events that follow a `joined` are counted from its
//   answer, never before it.
// - The reset: a `joined` whose `created_at` differs from the one the client had (this
//   server's decision, PROTOCOL.md: the thread was deleted and created again while it was
//   away, however long the new one is), or whose `last_seq` is below the `since` asked (a
//   server without `created_at`, a store replaced), means the server's thread is not the one
//   the client held. PROTOCOL.md ("`join` with `since`"): drop the copy and join again from 0. The
//   client empties the Thread (runs gone, lastSeq 0), writes the join with `since: 0`, then
//   calls `onreset("replaced", thread)` so the app clears its view; the new thread's events
//   follow through `onevent` from seq 1. `join()` settles with that second `joined`. Told
//   apart from `onleft("deleted")`, which ends the subscription: after a reset the thread
//   stays joined.
// - A connection that fails before it opens is checked with GET /v1/auth/check (browsers hide
//   the handshake's HTTP status): a 401 ends the client with code "unauthorized" and the
//   server's message (with `getToken`: reported to onerror and retried, see below); anything
//   else is retried.
// - Tokens. A static `token` is used for every connection and HTTP call; once the server stops
//   accepting it (4001, or a handshake refused) the client ends. With `getToken` (a function
//   answering a token, or a promise of one) the client asks it for a token before it connects
//   (unless `token` gave the first), before every reconnect, and at once when the server closes
//   with 4001 (the token expired): then it reconnects with the new token at once, not after the
//   backoff, and joins with `since` as after any loss. It also refreshes ahead of time: it reads
//   the JWT's `exp` (the payload's base64url, not verified) and asks for a new token
//   `refreshBefore` ms (30 s) before it, not sooner than 1 s from now (or half the remaining life
//   when that is shorter; none for a token already past its `exp` by this clock, or without one;
//   getToken answering the same token again, e.g. from a cache: after half of what is left).
//   The protocol cannot give an open connection a new token, so the client reconnects with it at
//   a quiet moment: at once, unless a request that is not written again (cancel, decide) waits
//   for its answer; then right after that answer. The reconnect reports "reconnecting" with
//   reason "token refreshed" and loses nothing (join with since). One call of getToken at a
//   time: a refresh and a reconnect share it. HTTP calls (upload, download, usage) carry the
//   current token. A getToken that throws, rejects, answers no string or takes over `timeout`
//   ms is reported to onerror as a ThreadlineError "token_failed" whose message says so, and
//   retried with the backoff (a failed refresh too, while the current token is unexpired); a
//   token the server refuses is reported ("unauthorized", the server's reason) and a new one
//   asked after the backoff. With getToken the client never ends by itself over a token:
//   close() it.
// - No WebSocket: Node has a global WebSocket from version 22 (20.10 to 21: only with
//   --experimental-websocket). Without one, and none given as the `WebSocket` option (e.g. the
//   `ws` package's), connect() throws a ThreadlineError "no_websocket" that says so.
// - A run's answer is laid from `agent_delta` pieces: a piece is applied only when its
//   `offset` (in code points) equals the code points held, so a replay never duplicates text;
//   `agent_completed.text` is the final answer.
// - A run keeps its tool calls' approvals (Run.approvals, by call_id) as its events built them:
//   `approval_requested` makes one pending, `approval_decided` decides it, a terminal event
//   ends one left undecided ("ended": it needs no decision any more). Built from events only,
//   so the replay of a join from 0 (a reload) rebuilds a pending approval as it was.
// - The conversation tree (Thread.tree, client.tree(id)) is built from events only, each
//   applied once (the seq check above), so a join with `since` goes on growing it with no
//   duplicate and a reset empties it with the rest of the Thread. A `user_message` makes a
//   Message under its `parent` run (null: a root; a 1.0 server sends none: the newest run, as
//   the server's default is) and places its run as the message's first answer; an
//   `answer_requested` places its run as a further answer of `message_id`; `agent_started`
//   places a run whose asking event this copy never saw (joined after it). Children and answers
//   are in the order they were placed, which is seq order: siblings ordered by seq. Every node
//   keeps `newest`, the newest run of its subtree (every run placed is the newest so far, so
//   placing one sets it on its ancestors): the default branch leads to the newest run.
//   A copy joined after the start (a `since` above 0, or live only) holds what it saw: a message
//   whose parent it never saw is still a child of that run id, and a path stops where it knows
//   no more.
// - Attachments (PROTOCOL.md 1.1, "Attachments") go over HTTP beside the connection, with the
//   token in `Authorization: Bearer` (never in the URL: a download's address is shown, logged,
//   kept in history): `upload` POSTs the file's bytes as they are (its Content-Type, its name in
//   `?name=`) and settles with the server's record once it is stored; a refusal rejects with a
//   ThreadlineError carrying the server's code (too_large, unsupported_type, limit_reached, ...)
//   and message, and `status`. Where XMLHttpRequest exists (browsers) it uploads, so that the
//   upload's progress is reported as it goes; elsewhere (Node) fetch, and progress is reported
//   once, at the end. An upload is not a request of the connection: it neither waits for one
//   nor is repeated after a loss (an upload cut off is no attachment; upload again). An
//   <img src> cannot send the header, so `download` fetches an attachment as a Blob (the app
//   makes an object URL of it, and revokes it). A message's attachments are those its
//   `user_message` lists (Message.attachments), never the ids the app sent.
// - Usage (PROTOCOL.md 1.1, "Usage and budgets"): a run's tokens are its terminal event's
//   `usage` (Run.usage; null when the agent reported none), so a replay rebuilds them too.
//   `usage()` GETs /v1/usage the way `download` fetches (the token in `Authorization: Bearer`,
//   not a request of the connection). A `send` or `regenerate` refused because the user's
//   budget is spent rejects with code "budget_exceeded"; its message says when it refills.
// - JSON only (subprotocol threadline.v1.json): browsers parse JSON natively and fast, and a
//   chat's frames are mostly text, which msgpack would not make smaller.

export const SUBPROTOCOL = "threadline.v1.json";
export const TERMINAL_EVENTS = Object.freeze(["agent_completed", "agent_failed", "agent_cancelled"]);
const NO_RECONNECT = new Set([1000, 1007, 1008, 1009, 4001]);
const CLOSE_TOKEN_EXPIRED = 4001;
const MAX_TIMER_MS = 2 ** 31 - 1;  // setTimeout's longest wait (a longer one fires at once)

// state -> the states it may go to
const TRANSITIONS = Object.freeze({
  connecting: ["open", "reconnecting", "closed"],
  open: ["reconnecting", "closed"],
  reconnecting: ["open", "reconnecting", "closed"],
  closed: [],
});

export class ThreadlineError extends Error {
  constructor(code, message, frame = null) {
    super(message);
    this.name = "ThreadlineError";
    this.code = code;
    this.frame = frame;
  }
}

/** The length of `text` in Unicode code points, as PROTOCOL.md counts offsets. */
export function codePoints(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** A tool call's approval, as the run's events built it. */
export class Approval {
  constructor(runId, data) {
    this.runId = runId;
    this.callId = data.call_id;
    this.tool = data.tool;
    this.args = data.args;
    this.expiresAt = data.expires_at ?? null;  // seconds since the epoch, or null: no limit
    this.status = "pending";  // pending -> approved | denied | ended (the run ended undecided)
    this.approved = null;     // approval_decided's
    this.reason = null;       // approval_decided's reason (a denial's; "expired" by the server)
  }

  get pending() { return this.status === "pending"; }

  _take(data) {  // approval_decided (the client's, not the app's: client.decide sends one)
    this.approved = data.approved === true;
    this.reason = data.reason ?? null;
    this.status = this.approved ? "approved" : "denied";
  }
}

export class Run {
  constructor(id) {
    this.id = id;
    this.status = "queued";  // queued -> running -> completed | failed | cancelled
    this.message = null;     // the data of the user_message it answers (a regenerated run: that
                             // same message's)
    this.messageId = null;   // the message it answers, once placed in the tree
    this.seq = null;         // of the event that asked for it: its user_message or answer_requested
    this._asked = false;     // placed by that event (else by its agent_started: asked before this copy)
    this.children = [];      // the Messages that follow it, by seq
    this.newest = null;      // the newest run of its subtree (itself, or below), once placed
    this.text = "";          // the answer so far
    this.length = 0;         // codePoints(this.text)
    this.thinking = [];
    this.tools = new Map();  // call_id -> {callId, tool, args, result?, error?, done}
    this.approvals = new Map();  // call_id -> Approval, in the order they were asked
    this.error = null;       // agent_failed's error
    this.reason = null;      // agent_cancelled's reason
    this.usage = null;       // 1.1: the terminal event's usage {input_tokens, output_tokens,
                             // cached_input_tokens, model}, when the agent reported any
  }

  get done() { return this.status !== "queued" && this.status !== "running"; }

  /** The approvals that wait for a decision. */
  get pendingApprovals() { return [...this.approvals.values()].filter((a) => a.pending); }

  apply(event, data) {
    switch (event) {
      case "user_message": this.message = data; break;
      case "agent_started": this.status = "running"; break;
      case "agent_thinking": this.thinking.push(data.text); break;
      case "agent_delta":
        if (data.offset === this.length) {
          this.text += data.text;
          this.length += codePoints(data.text);
        }
        break;
      case "tool_executing":
        this.tools.set(data.call_id, { callId: data.call_id, tool: data.tool, args: data.args, done: false });
        break;
      case "tool_completed": {  // after a denial there was no tool_executing: args from the approval
        const args = this.tools.get(data.call_id)?.args ?? this.approvals.get(data.call_id)?.args;
        this.tools.set(data.call_id, { ...this.tools.get(data.call_id), callId: data.call_id, tool: data.tool,
                                       args, result: data.result, error: data.error, done: true });
        break;
      }
      case "approval_requested": this.approvals.set(data.call_id, new Approval(this.id, data)); break;
      case "approval_decided": this.approvals.get(data.call_id)?._take(data); break;
      case "agent_completed":
        this.status = "completed";
        this.text = data.text;
        this.length = codePoints(data.text);
        break;
      case "agent_failed": this.status = "failed"; this.error = data.error; break;
      case "agent_cancelled": this.status = "cancelled"; this.reason = data.reason; break;
    }
    if (TERMINAL_EVENTS.includes(event) && data?.usage !== null && typeof data?.usage === "object") {
      this.usage = data.usage;
    }
    if (this.done) for (const approval of this.approvals.values()) if (approval.pending) approval.status = "ended";
  }
}

/** A user's message in the conversation tree (PROTOCOL.md 1.1), from its `user_message`. */
export class Message {
  constructor(data, parent, seq, runId, answers) {
    this.id = data.message_id;
    this.text = data.text;
    this.parent = parent;    // the run it follows; null at a root
    this.seq = seq;          // of its user_message
    this.runId = runId;      // the run its user_message started (its first answer)
    this.clientMsgId = data.client_msg_id ?? null;
    // 1.1: [{attachment_id, name, content_type, size}] as its user_message listed them
    this.attachments = Array.isArray(data.attachments) ? data.attachments : [];
    this.data = data;        // the user_message's data as it came (attachments, ...)
    this.answers = answers;  // every Run answering it, by seq: the first, then regenerated ones
    this.newest = null;      // the newest run of its subtree
  }
}

/** Whether run `a` was asked after run `b` (or `b` is none): a run seen asked is newer than
 *  one seen only started (asked before this copy joined); else the later seq. */
/** The attachment types the server checks by their bytes and serves inline (HTTP.md). */
const INLINE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

function newer(a, b) {
  if (b === null || b === undefined || b === a) return b !== a;
  if (a._asked !== b._asked) return a._asked;
  return a.seq > b.seq;
}

/** A thread's conversation tree, as its events built it (see the header). */
export class Tree {
  constructor(runs) {
    this.runs = runs;            // the Thread's runs: run_id -> Run
    this.messages = new Map();   // message_id -> Message, by seq
    this.newest = null;          // the run of the latest user_message or answer_requested: the
                                 // parent a send without `parent` gets
    this._children = new Map();  // run_id (null: the roots) -> Message[]
    this._answers = new Map();   // message_id -> Run[]
  }

  /** The messages that start the conversation (parent null), by seq. */
  get roots() { return this.children(null); }

  /** The messages that follow run `runId` (null: the roots), by seq. */
  children(runId) { return this._children.get(runId) ?? []; }

  /** The runs answering message `messageId`, by seq. */
  answers(messageId) { return this._answers.get(messageId) ?? []; }

  /** The messages with the same parent as `messageId`, itself among them, by seq. */
  siblings(messageId) {
    const message = this.messages.get(messageId);
    return message === undefined ? [] : this.children(message.parent);
  }

  /** The runs answering the same message as `runId`, itself among them, by seq. */
  answerSiblings(runId) {
    const run = this.runs.get(runId);
    return run?.messageId == null ? [] : this.answers(run.messageId);
  }

  /** The branch from the root to run `runId` (a leaf, or any run): one Turn {message, run,
   * siblings, answers} per message, oldest first. What this copy knows of it: it stops where
   * a message or a run was not seen (a copy joined after it); [] for an unknown run. */
  path(runId) {
    const turns = [];
    for (let run = this.runs.get(runId); run?.messageId != null; ) {
      const message = this.messages.get(run.messageId);
      if (message === undefined) break;
      turns.push(this._turn(message, run));
      run = message.parent === null ? undefined : this.runs.get(message.parent);
    }
    return turns.reverse();
  }

  /** One branch from a root down to a leaf: at each fork (more than one message with the same
   * parent, or more than one answer to a message) `choose(fork)` names the child to follow;
   * when it names none of them (undefined, or an id not there), the child whose subtree holds
   * the newest run. `fork`: {kind: "message", parent (a run id, null for the roots), options:
   * Message[]} or {kind: "answer", messageId, options: Run[]}. With no `choose`: the branch
   * ending at the newest run. */
  branch(choose = () => undefined) {
    const turns = [];
    let parent = null;
    for (let options = this.roots; options.length > 0; ) {
      const message = pick(options, () => choose({ kind: "message", parent, options }));
      const answers = message.answers;
      if (answers.length === 0) break;
      const run = pick(answers, () => choose({ kind: "answer", messageId: message.id, options: answers }));
      turns.push(this._turn(message, run));
      parent = run.id;
      options = run.children;
    }
    return turns;
  }

  _turn(message, run) {
    return { message, run, siblings: this.children(message.parent), answers: message.answers };
  }

  _list(map, key) {
    let list = map.get(key);
    if (list === undefined) map.set(key, list = []);
    return list;
  }

  /** A Run of the thread seen for the first time. */
  _adopt(run) { run.children = this._list(this._children, run.id); }

  /** Apply an event frame (each once, in seq order) to the tree; `run` is its Run. */
  _take(frame, run) {
    const data = frame.data ?? {};
    switch (frame.event) {
      case "user_message": {
        if (this.messages.has(data.message_id)) break;
        // a 1.0 server sends no parent: the message follows the newest run, as there
        const parent = data.parent !== undefined ? data.parent : (this.newest?.id ?? null);
        const message = new Message(data, parent, frame.seq, run.id,
                                    this._list(this._answers, data.message_id));
        this.messages.set(message.id, message);
        this._list(this._children, parent).push(message);
        this._place(run, message.id, frame.seq, true);
        break;
      }
      case "answer_requested":
        this._place(run, data.message_id, frame.seq, true);
        run.message ??= this.messages.get(data.message_id)?.data ?? null;
        break;
      case "agent_started":  // a run whose asking event this copy did not see
        if (run.messageId === null && typeof data.message_id === "string") {
          this._place(run, data.message_id, frame.seq, false);
          run.message ??= this.messages.get(data.message_id)?.data ?? null;
        }
        break;
    }
  }

  /** Make `run` an answer of message `messageId`, asked at `seq` (`asked`: its
   *  user_message or answer_requested), or started at `seq` (not `asked`: this copy joined
   *  after the run was asked, so it was asked before every run this copy saw asked). */
  _place(run, messageId, seq, asked) {
    if (run.messageId !== null) return;
    run.messageId = messageId;
    run.seq = seq;
    run._asked = asked;
    const answers = this._list(this._answers, messageId);
    if (asked) answers.push(run);
    else {  // before the runs asked within this copy, after those placed as this one
      const at = answers.findIndex((other) => other._asked || other.seq > seq);
      answers.splice(at < 0 ? answers.length : at, 0, run);
    }
    if (newer(run, this.newest)) this.newest = run;
    // the newest run so far: the newest of every subtree holding it
    run.newest = run;
    for (let message = this.messages.get(messageId); message !== undefined; ) {
      if (!newer(run, message.newest)) break;
      message.newest = run;
      const parent = message.parent === null ? undefined : this.runs.get(message.parent);
      if (parent === undefined || !newer(run, parent.newest)) break;
      parent.newest = run;
      message = parent.messageId === null ? undefined : this.messages.get(parent.messageId);
    }
  }

  _clear() {
    this.messages.clear();
    this._children.clear();
    this._answers.clear();
    this.newest = null;
  }
}

/** The option whose id `chosen()` names, else the one whose subtree holds the newest run. */
function pick(options, chosen) {
  if (options.length === 1) return options[0];
  const id = chosen();
  const named = id === undefined ? undefined : options.find((option) => option.id === id);
  if (named !== undefined) return named;
  const newest = (option) => option.newest?.seq ?? option.seq ?? -1;
  return options.reduce((best, option) => (newest(option) > newest(best) ? option : best));
}

export class Thread {
  constructor(id, since, onevent, onleft, onreset) {
    this.id = id;
    this.lastSeq = null;   // the last seq seen; null until the first `joined`
    this.since = since;    // what the app asked for, until lastSeq is known
    this.runs = new Map(); // run_id -> Run, in the order their first event came
    this.onevent = onevent;
    this.onleft = onleft;
    this.onreset = onreset;
    this.joining = false;  // a join request is pending: events are dropped until its answer
    this.createdAt = null; // the thread's `joined.created_at`: which thread of this id is held
    this.joinedSeq = null; // the `last_seq` of the join this copy began with (see Thread in client.d.ts)
    this.tree = new Tree(this.runs);  // the conversation tree (PROTOCOL.md 1.1)
  }

  get activeRun() {
    for (const run of [...this.runs.values()].reverse()) if (run.status === "running") return run;
    return null;
  }

  /** Every approval waiting for a decision, of every run, oldest first. */
  get pendingApprovals() { return [...this.runs.values()].flatMap((run) => run.pendingApprovals); }

  /** Apply an event frame; its Run, or undefined when it was seen already (a replay meeting
   * what was had) and is dropped. */
  take(frame) {
    if (this.joining || frame.seq <= this.lastSeq) return undefined;
    this.lastSeq = frame.seq;
    let run = this.runs.get(frame.run_id);
    if (run === undefined) {
      this.runs.set(frame.run_id, run = new Run(frame.run_id));
      this.tree._adopt(run);
    }
    run.apply(frame.event, frame.data);
    this.tree._take(frame, run);
    return run;
  }

  /** Count seen events from `seq` on (a `joined`'s answer); never lowers lastSeq. */
  countFrom(seq) {
    if (this.lastSeq === null || seq > this.lastSeq) this.lastSeq = seq;
  }

  /** The one way down: what was held is void (see the header); nothing seen, no run. */
  reset() {
    this.lastSeq = 0;
    this.runs.clear();
    this.tree._clear();
    this.createdAt = null;
    this.joinedSeq = null;
  }
}

function randomId() {  // crypto.randomUUID needs a secure context; getRandomValues does not
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The HTTP address of `path` on the server of WebSocket address `url` (ws://HOST/v1/ws). */
function httpUrl(url, path) {
  const target = new URL(url);
  target.protocol = target.protocol === "wss:" ? "https:" : "http:";
  target.pathname = target.pathname.replace(/\/v1\/ws$/, "") + path;
  target.search = "";
  target.hash = "";
  return target;
}

/** The ThreadlineError of a refused HTTP request: the server's {code, message} when its body
 * has them, else one named by the status; `status` is the HTTP status. */
function httpError(status, text, what) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch { /* not JSON: a proxy's page, or nothing */ }
  const code = typeof body?.code === "string" ? body.code : HTTP_CODES[status] ?? "http_error";
  const message = typeof body?.message === "string" ? body.message : `${what}: HTTP ${status}`;
  const error = new ThreadlineError(code, message, body);
  error.status = status;
  return error;
}

const HTTP_CODES = Object.freeze({ 401: "unauthorized", 404: "not_found", 408: "timeout",
                                   413: "too_large", 415: "unsupported_type", 429: "limit_reached",
                                   500: "internal", 503: "unavailable" });

function failed(code, message) {
  const error = new ThreadlineError(code, message);
  error.status = 0;
  return error;
}

function aborted(what) { return failed("aborted", `${what} was aborted`); }

function blobName(file) {
  return typeof file?.name === "string" && file.name !== "" ? file.name : "file";
}

/** The `exp` claim of JWT `token` (seconds since the epoch), read without verifying it (the
 * server does); null when it has none or is no JWT. */
function tokenExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(payload + "=".repeat((4 - (payload.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(binary, (c) => c.charCodeAt(0))));
    return typeof claims?.exp === "number" && Number.isFinite(claims.exp) ? claims.exp : null;
  } catch {
    return null;
  }
}

/** What a getToken answered, in a message. */
function described(value) {
  if (value === "") return "an empty string";
  if (value === null || value === undefined) return String(value);
  return typeof value === "object" ? `an object (${Object.prototype.toString.call(value)})` : `a ${typeof value}`;
}

/** The error of a runtime with no WebSocket (Node 20 without --experimental-websocket). */
function noWebSocket() {
  const node = globalThis.process?.versions?.node;
  const here = node === undefined ? "this JavaScript runtime has no global WebSocket"
    : `Node ${node} has no global WebSocket (Node has one from version 22; 20.10 to 21 only `
      + "with --experimental-websocket)";
  const todo = node === undefined ? "pass" : "use Node >= 22, start node with --experimental-websocket, or pass";
  return new ThreadlineError("no_websocket", `threadline-client: ${here}. To connect, ${todo} a WebSocket `
    + "implementation as the `WebSocket` option, e.g. the ws package's: "
    + "import { WebSocket } from \"ws\"; connect({ WebSocket, url, token })");
}

function defaultUrl() {
  if (typeof location === "undefined") throw new TypeError("connect: give a url (ws://host:port/v1/ws)");
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
}

/** GET /v1/auth/check with `token`: null when the token is accepted or the check cannot tell,
 * else the ThreadlineError the server gave. */
export async function checkToken(url, token) {
  const check = new URL(url);
  check.protocol = check.protocol === "wss:" ? "https:" : "http:";
  check.pathname = check.pathname.replace(/\/ws$/, "/auth/check");
  check.search = "";
  check.searchParams.set("token", token);
  try {
    const response = await fetch(check, { cache: "no-store" });
    if (response.status !== 401) return null;
    const body = await response.json();
    return new ThreadlineError(body.code || "unauthorized", body.message || "unauthorized", body);
  } catch {
    return null;  // the server is unreachable (or speaks no auth check): retry the connection
  }
}

export class Client {
  constructor({ url = defaultUrl(), token, getToken, WebSocket: Socket = globalThis.WebSocket,
                minDelay = 250, maxDelay = 10000, timeout = 30000, refreshBefore = 30000,
                onstate = () => {}, onerror = (e) => console.error(e) } = {}) {
    if (getToken !== undefined && typeof getToken !== "function") {
      throw new TypeError("connect: getToken must be a function answering a token (or a promise of one)");
    }
    if (getToken === undefined ? typeof token !== "string" || token === ""
      : token !== undefined && (typeof token !== "string" || token === "")) {
      throw new TypeError("connect: give a token (a non-empty string) or getToken");
    }
    if (Socket === undefined || Socket === null) throw noWebSocket();
    if (typeof Socket !== "function") throw new TypeError("connect: WebSocket must be a WebSocket class");
    if (refreshBefore !== null && !(Number.isFinite(refreshBefore) && refreshBefore >= 0)) {
      throw new TypeError("connect: refreshBefore must be a number of ms (>= 0), or null");
    }
    this.url = url;
    this._token = token ?? null;  // the current token: of the next connection, and of HTTP calls
    this._getToken = getToken ?? null;
    this._refreshBefore = refreshBefore;
    this._Socket = Socket;
    this._delays = { min: minDelay, max: maxDelay };
    this.timeout = timeout;
    this.onstate = onstate;
    this.onerror = onerror;
    this.state = "connecting";
    this.attempt = 0;          // connection attempts that failed since the last open
    this._threads = new Map(); // thread_id -> Thread
    this._pending = new Map(); // ref -> {make, resolve, reject, timer, repeat, written, join, settled}
    this._refs = 0;
    this._ws = null;
    this._wsToken = null;      // the token the connection (this._ws) was opened with
    this._retryTimer = null;
    this._tokenTask = null;    // the call of getToken under way (one at a time)
    this._refreshTimer = null;
    this._refreshFailures = 0;
    if (this._token === null) {
      this._connect();
    } else {
      this._scheduleRefresh();
      this._open();
    }
  }

  thread(threadId) { return this._threads.get(threadId); }

  /** The conversation tree of joined thread `threadId` (its Thread's `tree`), or undefined. */
  tree(threadId) { return this._threads.get(threadId)?.tree; }

  join(threadId, { since, createdAt = null, onevent = () => {}, onleft = () => {},
                   onreset = () => {} } = {}) {
    const thread = new Thread(threadId, since, onevent, onleft, onreset);
    thread.createdAt = createdAt;  // a copy the app kept (with its `since`): which thread it is
    this._threads.set(threadId, thread);
    return this._join(thread);
  }

  leave(threadId) {
    this._threads.delete(threadId);
    return this._request(() => ({ type: "leave", thread_id: threadId }));
  }

  /** `parent` (1.1): the run the message follows (an edit: the edited message's parent), null
   * for a new root; not given: the thread's newest run, the server's default (PROTOCOL.md).
   * `attachments` (1.1): what `upload` gave (records or their ids), at most 10; none given, or
   * an empty list: the frame has no `attachments` (a 1.0 frame). */
  send(threadId, text, { clientMsgId = randomId(), strategy, parent, attachments } = {}) {
    const frame = { type: "send", thread_id: threadId, text, client_msg_id: clientMsgId };
    if (strategy !== undefined) frame.strategy = strategy;
    if (parent !== undefined) frame.parent = parent;
    if (attachments != null) {
      if (!Array.isArray(attachments)) {
        return Promise.reject(new TypeError("send: attachments must be an array of attachment ids"));
      }
      const ids = attachments.map((a) => (typeof a === "string" ? a : a?.attachment_id));
      if (ids.some((id) => typeof id !== "string")) {
        return Promise.reject(new TypeError("send: an attachment is neither an id nor an upload's record"));
      }
      if (ids.length > 0) frame.attachments = ids;
    }
    return this._request(() => frame);
  }

  /** Upload `file` (a File or Blob) as an attachment (PROTOCOL.md 1.1): settles with the
   * server's record {type: "attachment", attachment_id, name, content_type, size, sha256} once
   * it is stored. See the header. */
  upload(file, { name = blobName(file), contentType, onProgress = () => {}, signal } = {}) {
    if (this.state === "closed") return Promise.reject(new ThreadlineError("closed", "the client is closed"));
    if (typeof Blob === "undefined" || !(file instanceof Blob)) {
      return Promise.reject(new TypeError("upload: give a File or a Blob"));
    }
    if (signal?.aborted) return Promise.reject(aborted("the upload"));
    const target = httpUrl(this.url, "/v1/attachments");
    target.searchParams.set("name", name);
    const type = contentType ?? (file.type || "application/octet-stream");
    const progress = (loaded) => {
      try {
        onProgress({ loaded, total: file.size });
      } catch (error) {
        console.error(error);  // the app's callback failed: the upload goes on
      }
    };
    return this._authorized().then((token) => this._upload(file, target, type, token, progress, signal));
  }

  _upload(file, target, type, token, progress, signal) {
    if (signal?.aborted) return Promise.reject(aborted("the upload"));
    const headers = { Authorization: `Bearer ${token}`, "Content-Type": type };
    const done = (status, text) => {
      if (status !== 201 && status !== 200) throw httpError(status, text, "the upload");
      let record;
      try {
        record = JSON.parse(text);
      } catch {
        throw failed("bad_frame", "the server's answer to the upload is not JSON");
      }
      progress(file.size);
      return record;
    };
    if (typeof XMLHttpRequest === "function") {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", target.href);
        for (const [key, value] of Object.entries(headers)) xhr.setRequestHeader(key, value);
        xhr.upload.onprogress = (event) => progress(event.loaded);
        xhr.onload = () => {
          try {
            resolve(done(xhr.status, xhr.responseText));
          } catch (error) {
            reject(error);
          }
        };
        xhr.onerror = () => reject(failed("upload_failed", "the upload failed: the server could not be reached or closed the connection"));
        xhr.onabort = () => reject(aborted("the upload"));
        signal?.addEventListener("abort", () => xhr.abort(), { once: true });
        xhr.send(file);
      });
    }
    return fetch(target, { method: "POST", headers, body: file, signal, cache: "no-store" }).then(
      async (response) => done(response.status, await response.text()),
      (error) => {
        throw signal?.aborted ? aborted("the upload")
          : failed("upload_failed", `the upload failed: ${error?.cause?.message ?? error?.message ?? error}`);
      });
  }

  /** The address of attachment `attachmentId` (GET /v1/attachments/{id}). It needs the token
   * in the Authorization header: an <img> or a link cannot load it; `download` can. */
  attachmentUrl(attachmentId) {
    return httpUrl(this.url, `/v1/attachments/${encodeURIComponent(attachmentId)}`).href;
  }

  /** Attachment `attachmentId`'s bytes as a Blob (for an object URL): of its type for the four
   * image types, else `application/octet-stream` (see below); a
   * ThreadlineError "not_found" for one that is gone or not this user's. */
  async download(attachmentId, { signal } = {}) {
    if (this.state === "closed") throw new ThreadlineError("closed", "the client is closed");
    const token = await this._authorized();
    let response;
    try {
      response = await fetch(this.attachmentUrl(attachmentId), {
        headers: { Authorization: `Bearer ${token}` }, signal, cache: "no-store" });
    } catch (error) {
      throw signal?.aborted ? aborted("the download")
        : failed("download_failed", `the download failed: ${error?.cause?.message ?? error?.message ?? error}`);
    }
    if (response.status !== 200) throw httpError(response.status, await response.text(), "the download");
    // Only the image types the server checked keep their type: any other file (text/html
    // included) comes back as application/octet-stream, so that an object URL made of it can
    // never render as a page of the app's origin (the server's sandbox does not follow a blob).
    const blob = await response.blob();
    return INLINE_TYPES.has(blob.type) ? blob : new Blob([blob], { type: "application/octet-stream" });
  }

  /** The user's tokens this UTC day and this month and their budgets (GET /v1/usage, 1.1):
   * {type: "usage", day: {input_tokens, output_tokens, budget}, month: {...}}, `budget` null
   * when there is none. A refusal rejects with a ThreadlineError carrying the server's code
   * and message, and `status`; "request_failed" (status 0) when no answer came. */
  async usage({ signal } = {}) {
    if (this.state === "closed") throw new ThreadlineError("closed", "the client is closed");
    const token = await this._authorized();
    let response;
    try {
      response = await fetch(httpUrl(this.url, "/v1/usage"), {
        headers: { Authorization: `Bearer ${token}` }, signal, cache: "no-store" });
    } catch (error) {
      throw signal?.aborted ? aborted("the usage request")
        : failed("request_failed", `the usage request failed: ${error?.cause?.message ?? error?.message ?? error}`);
    }
    const text = await response.text();
    if (response.status !== 200) throw httpError(response.status, text, "the usage request");
    try {
      return JSON.parse(text);
    } catch {
      throw failed("bad_frame", "the server's answer to GET /v1/usage is not JSON");
    }
  }

  /** Another answer to message `messageId` (1.1): settles with the `accepted` of the new run
   * (its `seq` is that of the run's `answer_requested`); "not_found" for a message the thread
   * does not have. Idempotent by `clientMsgId` (made up when not given), so written again after
   * a loss like a send. */
  regenerate(threadId, messageId, { clientMsgId = randomId(), strategy } = {}) {
    const frame = { type: "regenerate", thread_id: threadId, message_id: messageId,
                    client_msg_id: clientMsgId };
    if (strategy !== undefined) frame.strategy = strategy;
    return this._request(() => frame);
  }

  cancel(threadId, runId) {
    const frame = { type: "cancel", thread_id: threadId };
    if (runId !== undefined) frame.run_id = runId;
    return this._request(() => frame, { repeat: false });
  }

  /** Decide a tool call waiting for approval (PROTOCOL.md 1.1): settles with the `ok` {thread_id,
   * run_id, call_id} once the decision is stored; `unknown_call` when the call waits no more
   * (decided first elsewhere, or its run ended). Never written twice (see the header). */
  decide(threadId, runId, callId, approved, reason) {
    if (typeof approved !== "boolean") {
      return Promise.reject(new TypeError("decide: approved must be true or false"));
    }
    const frame = { type: "decide", thread_id: threadId, run_id: runId, call_id: callId, approved };
    if (reason != null) frame.reason = reason;
    return this._request(() => frame, { repeat: false });
  }

  threads({ limit, cursor } = {}) {
    const frame = { type: "threads" };
    if (limit !== undefined) frame.limit = limit;
    if (cursor != null) frame.cursor = cursor;
    return this._request(() => frame);
  }

  ping() { return this._request(() => ({ type: "ping" })); }

  close() {
    this._end(new ThreadlineError("closed", "the client was closed"), false);
  }

  // -- requests ----------------------------------------------------------------------------

  _join(thread) {
    thread.joining = true;
    let since;  // of the frame written last (a join lost with its connection is written again)
    const frame = () => {
      since = thread.lastSeq ?? thread.since;
      return since === undefined ? { type: "join", thread_id: thread.id } : { type: "join", thread_id: thread.id, since };
    };
    let again = null;  // the join from 0 after a reset
    const settled = (answer) => {  // as the answer is read, before the frames after it
      thread.joining = false;
      if (answer.type === "joined") again = this._joined(thread, since, answer);
    };
    return this._request(frame, { join: true, settled }).then((answer) => again ?? answer);
  }

  /** `thread`'s join with `since` is answered: count its events from there, or reset it and
   * join again from 0 when the server's thread is behind what was asked (see the header).
   * Returns that second join, or null. */
  _joined(thread, since, answer) {
    if (this._threads.get(thread.id) !== thread) return null;  // left, or joined anew since
    const created = answer.created_at ?? null;
    const replaced = thread.createdAt !== null && created !== null && created !== thread.createdAt;
    if (!replaced) thread.createdAt = created ?? thread.createdAt;
    if (!replaced && thread.joinedSeq === null) thread.joinedSeq = answer.last_seq;
    if (since === undefined && !replaced) {
      thread.countFrom(answer.last_seq);  // live only: from what the server has
      return null;
    }
    if (!replaced && since <= answer.last_seq) {
      thread.countFrom(since);  // the replay brings since + 1 .. last_seq, then live events
      return null;
    }
    thread.reset();
    const again = this._join(thread);
    thread.onreset("replaced", thread);
    return again;
  }

  _request(make, { repeat = true, join = false, settled = () => {} } = {}) {
    if (this.state === "closed") return Promise.reject(new ThreadlineError("closed", "the client is closed"));
    const ref = ++this._refs;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._settle(ref, { type: "error", code: "timeout", message: `no answer in ${this.timeout} ms` });
      }, this.timeout);
      this._pending.set(ref, { make, resolve, reject, timer, repeat, join, settled, written: false });
      if (this.state === "open") this._write(ref);
    });
  }

  _write(ref) {
    const pending = this._pending.get(ref);
    pending.written = true;
    this._ws.send(JSON.stringify({ ...pending.make(), ref }));
  }

  _settle(ref, frame) {
    const pending = this._pending.get(ref);
    this._pending.delete(ref);
    clearTimeout(pending.timer);
    // a cancel or decide answered: the quiet moment a refreshed token may have waited for
    if (!pending.repeat && pending.written) queueMicrotask(() => this._maybeSwap());
    try {
      pending.settled(frame);  // an app callback it makes may throw: the request settles anyway
    } finally {
      if (frame.type === "error") pending.reject(new ThreadlineError(frame.code, frame.message, frame));
      else pending.resolve(frame);
    }
  }

  // -- tokens --------------------------------------------------------------------------------

  /** The token for an HTTP call: the current one; with getToken, a new one when there is none
   * yet or the current one is past its `exp`. */
  async _authorized() {
    if (this._getToken !== null) {
      const exp = this._token === null ? null : tokenExpiry(this._token);
      if (this._token === null || (exp !== null && exp * 1000 <= Date.now())) return this._fetchToken();
    }
    return this._token;
  }

  /** A token from getToken (it becomes the current token); one call at a time, shared. Rejects
   * with a ThreadlineError "token_failed" saying what went wrong. */
  _fetchToken() {
    this._tokenTask ??= this._callGetToken().finally(() => { this._tokenTask = null; });
    return this._tokenTask;
  }

  async _callGetToken() {
    let timer;
    let token;
    try {
      token = await Promise.race([
        (async (getToken) => getToken())(this._getToken),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no token in ${this.timeout} ms`)), this.timeout);
        }),
      ]);
    } catch (error) {
      const failure = new ThreadlineError("token_failed", `getToken failed: ${error?.message ?? error}`);
      failure.cause = error;
      throw failure;
    } finally {
      clearTimeout(timer);
    }
    if (typeof token !== "string" || token === "") {
      throw new ThreadlineError("token_failed", `getToken answered ${described(token)}, not a token (a non-empty string)`);
    }
    if (this.state !== "closed") {
      const same = token === this._token;
      this._token = token;
      this._scheduleRefresh(same);
      queueMicrotask(() => this._maybeSwap());
    }
    return token;
  }

  /** With getToken: ask for a new token `refreshBefore` ms before the current one's `exp` (see
   * the header). `same`: getToken answered the token it had (an app's cache): ask again when
   * half of what is left has passed (at least 1 s later), a few times at most. */
  _scheduleRefresh(same = false) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (this._getToken === null || this._refreshBefore === null || this.state === "closed") return;
    const exp = tokenExpiry(this._token);
    if (exp === null) return;
    const left = exp * 1000 - Date.now();
    if (left <= 0) return;  // past its exp here: the server tells (4001, or a refused handshake)
    const wait = same ? Math.max(left / 2, Math.min(left, 1000))
      : Math.max(left - this._refreshBefore, Math.min(left / 2, 1000));
    this._refreshAt(Date.now() + wait, () => this._refresh());
  }

  /** Call `then` at `due` (ms since the epoch), however far (setTimeout's limit is ~24.8 days). */
  _refreshAt(due, then) {
    this._refreshTimer = setTimeout(() => {
      if (Date.now() < due) this._refreshAt(due, then);
      else {
        this._refreshTimer = null;
        then();
      }
    }, Math.min(Math.max(due - Date.now(), 0), MAX_TIMER_MS));
  }

  async _refresh() {
    const before = this._token;
    try {
      await this._fetchToken();
      this._refreshFailures = 0;
    } catch (error) {
      if (this.state === "closed" || this._token !== before) return;  // a reconnect got one since
      this.onerror(error);
      if (this.state === "closed") return;
      const exp = tokenExpiry(this._token);
      if (exp === null || exp * 1000 <= Date.now()) return;  // a reconnect will ask again
      const ceiling = Math.min(this._delays.max, this._delays.min * 2 ** this._refreshFailures++);
      this._refreshAt(Date.now() + ceiling / 2 + Math.random() * ceiling / 2, () => this._refresh());
    }
  }

  /** Open the connection again with the current token, if it is not the one the connection
   * was opened with and no request that is not written again (cancel, decide) waits for its
   * answer: then a new token does not wait for the server's 4001, which could come while one
   * does. */
  _maybeSwap() {
    if (this.state !== "open" || this._ws === null || this._wsToken === this._token) return;
    for (const pending of this._pending.values()) if (pending.written && !pending.repeat) return;
    const ws = this._ws;
    this._ws = null;  // its events and close are no longer this client's
    try {
      ws.close(1000, "token refreshed");
    } catch { /* closing already */ }
    this._onclose({ code: 1000, reason: "token refreshed" }, true, { swap: true });
  }

  // -- the connection ----------------------------------------------------------------------

  _setState(next, detail = {}) {
    if (!TRANSITIONS[this.state].includes(next)) throw new Error(`threadline client: ${this.state} -> ${next}`);
    this.state = next;
    this.onstate(next, detail);
  }

  /** Connect: with getToken, ask it for a token first (unless `fresh`: just asked). */
  async _connect({ fresh = false } = {}) {
    if (this.state === "closed") return;  // closed from onstate
    if (this._getToken !== null && !fresh) {
      try {
        await this._fetchToken();
      } catch (error) {
        if (this.state === "closed") return;
        this.onerror(error);
        if (this.state !== "closed") this._retry({ error });  // unless closed from onerror
        return;
      }
    }
    if (this.state !== "closed") this._open();
  }

  /** Connect again after the backoff; `detail` for onstate ("reconnecting"). */
  _retry(detail) {
    const delay = this._nextDelay();
    this._setState("reconnecting", { attempt: this.attempt, delay, ...detail });
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._connect(); }, delay);
  }

  _open() {
    const url = new URL(this.url);
    url.searchParams.set("token", this._token);
    const ws = this._ws = new this._Socket(url.href, [SUBPROTOCOL]);
    this._wsToken = this._token;
    let opened = false;
    ws.onopen = () => { if (ws === this._ws) { opened = true; this._onopen(); } };
    ws.onmessage = (message) => { if (ws === this._ws) this._onmessage(message.data); };
    ws.onclose = (event) => { if (ws === this._ws) this._onclose(event, opened); };
    // A refused handshake fires error, then close (1006) in browsers; Node 20's WebSocket fires
    // only the error: that ends the attempt too.
    ws.onerror = () => { if (ws === this._ws && !opened) this._onclose({ code: 1006, reason: "" }, false); };
  }

  _onopen() {
    this.attempt = 0;
    for (const thread of this._threads.values()) {
      if (!thread.joining) this._join(thread).catch((error) => this.onerror(error));
    }
    // Joins first: a thread's send written again must come after its join (the server keeps
    // each thread's requests in order).
    const refs = [...this._pending.keys()];
    for (const ref of refs) if (this._pending.get(ref)?.join) this._write(ref);
    for (const ref of refs) if (this._pending.has(ref) && !this._pending.get(ref).written) this._write(ref);
    this._setState("open");  // last: what the app asks from onstate goes after the above
    if (this._wsToken !== this._token) queueMicrotask(() => this._maybeSwap());  // refreshed meanwhile
  }

  _onmessage(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.onerror(new ThreadlineError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    if (frame.type === "event") {
      const thread = this._threads.get(frame.thread_id);
      const run = thread?.take(frame);
      if (run !== undefined) thread.onevent(frame, run, thread);
    } else if (frame.ref !== undefined && this._pending.has(frame.ref)) {
      this._settle(frame.ref, frame);
    } else if (frame.type === "left" && frame.reason !== undefined) {
      const thread = this._threads.get(frame.thread_id);
      this._threads.delete(frame.thread_id);
      thread?.onleft(frame.reason, thread);
    } else if (frame.type === "error") {
      this.onerror(new ThreadlineError(frame.code, frame.message, frame));
    }
  }

  /** The connection ended (`opened`: after its handshake); `swap`: closed by the client to
   * open one with a refreshed token. */
  async _onclose(event, opened, { swap = false } = {}) {
    this._ws = null;
    for (const [ref, pending] of this._pending) {
      if (!pending.written) continue;
      if (pending.repeat) pending.written = false;
      else this._settle(ref, { type: "error", code: "disconnected", message: "the connection was lost before the answer" });
    }
    const used = this._wsToken;  // the token of the connection that ended
    const expired = event.code === CLOSE_TOKEN_EXPIRED;
    if (this._getToken !== null && (swap || expired)) {
      // at once, not after the backoff: with the token just refreshed, or a new one (4001)
      this._setState("reconnecting", { attempt: this.attempt, delay: 0, code: event.code, reason: event.reason });
      this._connect({ fresh: swap || this._token !== used });
      return;
    }
    if (NO_RECONNECT.has(event.code)) {
      const code = expired ? "token_expired" : "connection_closed";
      this._end(new ThreadlineError(code, `closed by the server (${event.code}): ${event.reason}`), true);
      return;
    }
    const delay = this._nextDelay();
    this._setState("reconnecting", { attempt: this.attempt, delay, code: event.code, reason: event.reason });
    if (!opened) {  // refused in the handshake: the browser cannot tell why, the server can
      const refused = await checkToken(this.url, used);
      if (this.state === "closed") return;
      if (refused !== null) {
        if (this._getToken === null) {
          this._end(refused, true);
          return;
        }
        this.onerror(refused);  // a new token is asked for after the backoff
        if (this.state === "closed") return;
      }
    }
    this._retryTimer = setTimeout(() => { this._retryTimer = null; this._connect(); }, delay);
  }

  _nextDelay() {
    const ceiling = Math.min(this._delays.max, this._delays.min * 2 ** this.attempt);
    this.attempt++;
    return ceiling / 2 + Math.random() * ceiling / 2;
  }

  _end(error, report) {
    if (this.state === "closed") return;
    clearTimeout(this._retryTimer);
    clearTimeout(this._refreshTimer);
    const ws = this._ws;
    this._ws = null;
    ws?.close(1000);
    for (const ref of [...this._pending.keys()]) this._settle(ref, { type: "error", code: error.code, message: error.message });
    this._setState("closed", { error });
    if (report) this.onerror(error);
  }
}

/** Open a client: it connects at once and keeps connected until close(). */
export function connect(options) {
  return new Client(options);
}
