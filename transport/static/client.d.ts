// Types of threadline's JavaScript client (/v1/client.js; the npm package threadline-client),
// protocol v1 over JSON.
// Kept in step with client.js: tests/node/test_client.py checks that every name this file
// declares as exported is exported by client.js, and the reverse.

export declare const SUBPROTOCOL: "threadline.v1.json";
export declare const TERMINAL_EVENTS: readonly ["agent_completed", "agent_failed", "agent_cancelled"];

/** closed is for good: close(), an unauthorized or expired static `token` (with `getToken` the
 * client asks for a new one instead), or a close code that reconnecting would only repeat
 * (1000, 1007, 1008, 1009). */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface StateDetail {
  /** reconnecting: failed attempts since the last open, and the wait before the next (ms); 0
   * after a 4001 or a token refresh with `getToken` (reconnected at once) */
  attempt?: number;
  delay?: number;
  /** reconnecting: the close code and reason of the connection that ended (the client's own
   * close after a token refresh: 1000, "token refreshed") */
  code?: number;
  reason?: string;
  /** closed: why; reconnecting: the getToken failure ("token_failed") that delays the next try */
  error?: ThreadlineError;
}

/** The protocol's error codes, and the client's own. */
export type ErrorCode =
  | "bad_frame" | "not_joined" | "busy" | "unknown_run" | "rate_limited" | "limit_reached"
  | "internal" | "unauthorized"
  /** 1.1: `decide` of a tool call that does not wait for approval (any more): decided first
   * elsewhere (another tab, HTTP), never asked, or its run ended */
  | "unknown_call"
  /** 1.1: `regenerate` of a message the thread does not have; a `send` whose `parent` is not a
   * run of the thread */
  | "not_found"
  /** 1.1: a `send` or `regenerate` while the user's token budget (per UTC day or month) is
   * spent: nothing was stored; the message says when it refills, e.g. "the token budget for
   * this day (20 tokens) is spent; it refills at 2026-12-08T00:00:00Z". Also a run stopped
   * between model calls for it: `agent_failed` with `error` "budget_exceeded" (Run.error) */
  | "budget_exceeded"
  /** 1.1, upload (HTTP 413): the file is over the server's size limit (20 MiB by default) */
  | "too_large"
  /** 1.1, upload (HTTP 415): a type the server does not take, or an image whose bytes are not
   * of its declared type (an HTML file sent as image/png) */
  | "unsupported_type"
  /** upload, download, usage: the server could not be reached, or closed the connection
   * before it answered (status 0) */
  | "upload_failed" | "download_failed" | "request_failed"
  /** upload, download, usage: its `signal` was aborted */
  | "aborted"
  /** a request written before the connection was lost, not repeated (cancel, decide): it may
   * have been handled; for a decide, the thread's events tell (approval_decided, or the
   * approval still pending once the thread is joined again) */
  | "disconnected"
  /** no answer within `timeout` ms */
  | "timeout"
  /** the server closed the connection with 4001 (a static `token`; with `getToken` the client
   * reconnects with a new token) */
  | "token_expired"
  /** `getToken` threw, rejected, answered no non-empty string, or no answer within `timeout`
   * ms: the message says which (the thrown error is `cause`); retried after the backoff */
  | "token_failed"
  /** connect() in a runtime with no WebSocket (Node < 22 without --experimental-websocket) and
   * none given as the `WebSocket` option */
  | "no_websocket"
  /** the server closed with 1000, 1007, 1008 or 1009 */
  | "connection_closed"
  /** the client was closed */
  | "closed"
  | (string & {});

export declare class ThreadlineError extends Error {
  readonly name: "ThreadlineError";
  readonly code: ErrorCode;
  /** the server's error frame (or auth-check body, or an HTTP error's body), when there was one */
  readonly frame: ErrorFrame | null;
  /** upload, download (1.1): the HTTP status of the refusal; 0 when there was no answer */
  readonly status?: number;
}

/** 1.1: an attachment as a `user_message` lists it (PROTOCOL.md, "Attachments"). */
export interface AttachmentInfo {
  attachment_id: string;
  /** the file's name, as uploaded (`?name=`) */
  name: string;
  content_type: string;
  /** bytes */
  size: number;
}

/** 1.1: the answer to an upload (POST /v1/attachments, 201): the attachment stored. */
export interface AttachmentRecord extends AttachmentInfo {
  type: "attachment";
  /** hex SHA-256 of the bytes */
  sha256: string;
}

/** An upload's progress: bytes of the body sent so far, of `total` (the file's size). */
export interface UploadProgress { loaded: number; total: number }

export interface UploadOptions {
  /** the attachment's name (`?name=`); default: the File's name, "file" for a Blob without one */
  name?: string;
  /** default: the Blob's `type`, or application/octet-stream when it has none (which the
   * server's default list refuses: 415 unsupported_type) */
  contentType?: string;
  /** as the body goes up (XMLHttpRequest's upload progress; with fetch, as in Node: once, at
   * the end); the last call has loaded === total, before the upload settles */
  onProgress?: (progress: UploadProgress) => void;
  /** abort the upload: it rejects with code "aborted" */
  signal?: AbortSignal;
}

export type EventName =
  | "user_message" | "agent_started" | "agent_thinking" | "agent_delta" | "tool_executing"
  | "tool_completed" | "agent_completed" | "agent_failed" | "agent_cancelled"
  /** 1.1 */
  | "approval_requested" | "approval_decided" | "answer_requested";

export interface EventFrame {
  type: "event";
  thread_id: string;
  seq: number;
  event: EventName;
  run_id: string;
  ts: number;
  data: Record<string, unknown>;
}

/** 1.1: the tokens a run used (PROTOCOL.md, "Usage and budgets"): its terminal event's `usage`,
 * the model's own counts summed over the run's model calls (a cancelled run's: those counted
 * before it stopped). */
export interface Usage {
  input_tokens: number;
  output_tokens: number;
  /** part of input_tokens (read from the model's cache), not beside them */
  cached_input_tokens: number;
  /** the model last reported; null when the agent named none */
  model: string | null;
}

/** A run's terminal event (one of TERMINAL_EVENTS), its data typed; `usage` (1.1) when the
 * agent reported any. agent_failed's `error` "budget_exceeded" (1.1): the run was stopped
 * between model calls because the user's token budget is spent. */
export type TerminalEventFrame = EventFrame & (
  | { event: "agent_completed"; data: { text: string; usage?: Usage } }
  | { event: "agent_failed"; data: { error: string; usage?: Usage } }
  | { event: "agent_cancelled"; data: { reason: string; usage?: Usage } });

/** 1.1: one period of GET /v1/usage: tokens used in it, and its budget (null: none). */
export interface UsagePeriod {
  input_tokens: number;
  output_tokens: number;
  /** tokens (input plus output) allowed in the period; null when there is no budget */
  budget: number | null;
}

/** 1.1: the answer to GET /v1/usage (client.usage()): the user's tokens this UTC day and month. */
export interface UsageReport { type: "usage"; day: UsagePeriod; month: UsagePeriod }

export interface ErrorFrame { type: "error"; code: ErrorCode; message: string; ref?: number }
export interface Joined { type: "joined"; thread_id: string; last_seq: number; created_at?: number; ref: number }
export interface Left { type: "left"; thread_id: string; ref: number }
/** `send`'s and `regenerate`'s answer: the message (a regenerate's: the message answered again)
 * and the run that answers it; `seq`: of its user_message (a regenerate's: answer_requested) */
export interface Accepted { type: "accepted"; thread_id: string; message_id: string; run_id: string; seq: number; ref: number }
export interface Ok { type: "ok"; thread_id: string; run_id: string; ref: number }
/** `decide`'s answer: the decision is stored (its approval_decided event comes to every
 * connection joined to the thread, this one too) */
export interface Decided extends Ok { call_id: string }
export interface Pong { type: "pong"; ref: number }
export interface ThreadInfo {
  thread_id: string; last_seq: number; created_at: number; updated_at: number;
  /** 1.1: the first 80 code points of the thread's first message; null when it has none */
  title?: string | null;
}
export interface ThreadsPage { type: "threads"; threads: ThreadInfo[]; next_cursor: string | null; ref: number }

export interface ToolCall {
  callId: string;
  tool: string;
  args?: Record<string, unknown>;
  result?: unknown;
  error?: string;
  /** tool_completed seen */
  done: boolean;
}

export type ApprovalStatus =
  /** approval_requested seen, no decision yet, the run goes on: decide() may answer it */
  | "pending"
  /** approval_decided {approved: true}: the tool runs (tool_executing, tool_completed) */
  | "approved"
  /** approval_decided {approved: false}: the tool never runs; tool_completed's error is
   * "denied: " + reason (reason "expired": the server decided when expiresAt passed) */
  | "denied"
  /** the run ended (cancelled, interrupted, failed) with no decision: none is needed any more */
  | "ended";

/** A tool call that needs a person's approval (PROTOCOL.md 1.1, "Tool approval"), as the run's
 * events built it: a replay (a join from 0, e.g. after a reload) rebuilds it as it was. */
export declare class Approval {
  /** the run it belongs to: with callId, what decide() takes */
  readonly runId: string;
  readonly callId: string;
  readonly tool: string;
  readonly args: Record<string, unknown>;
  /** seconds since the epoch after which the server denies it ("expired"); null: no limit */
  readonly expiresAt: number | null;
  readonly status: ApprovalStatus;
  /** status === "pending" */
  readonly pending: boolean;
  /** approval_decided's `approved`; null until decided */
  readonly approved: boolean | null;
  /** approval_decided's `reason` (a denial's, or "expired"); null when none was given */
  readonly reason: string | null;
}

export type RunStatus = "queued" | "running" | "completed" | "failed" | "cancelled";

/** One run of a thread, as its events built it. */
export declare class Run {
  readonly id: string;
  readonly status: RunStatus;
  /** a terminal event was seen */
  readonly done: boolean;
  /** the data of the user_message it answers: {message_id, text, client_msg_id?, parent?}
   * (1.1: a regenerated run's is that same message's) */
  readonly message: { message_id: string; text: string; client_msg_id?: string; parent?: string | null;
                      attachments?: AttachmentInfo[] } | null;
  /** 1.1: the message it answers (agent_started.message_id), once the tree placed it */
  readonly messageId: string | null;
  /** 1.1: seq of the event that asked for it (its user_message, or a regenerate's
   * answer_requested): the order of the answers to one message */
  readonly seq: number | null;
  /** 1.1: the messages that follow it (their `parent` is this run), by seq */
  readonly children: readonly Message[];
  /** 1.1: the newest run of its subtree (itself when nothing follows it) */
  readonly newest: Run | null;
  /** the answer so far: agent_delta pieces laid at their offsets; agent_completed's text at the end */
  readonly text: string;
  /** text's length in code points */
  readonly length: number;
  readonly thinking: readonly string[];
  /** tool_executing/tool_completed by call_id; a denied call has only its tool_completed (its
   * args taken from the approval) */
  readonly tools: ReadonlyMap<string, ToolCall>;
  /** 1.1: the tool calls that asked approval, by call_id, in the order they were asked */
  readonly approvals: ReadonlyMap<string, Approval>;
  /** the approvals still waiting for a decision (a run waits while it has one) */
  readonly pendingApprovals: readonly Approval[];
  /** agent_failed's error ("budget_exceeded" (1.1): stopped between model calls because the
   * user's token budget is spent) */
  readonly error: string | null;
  readonly reason: string | null;
  /** 1.1: the tokens the run used, from its terminal event's `usage`; null while it runs, or
   * when the agent reported none */
  readonly usage: Usage | null;
}

/** A joined thread. */
export declare class Thread {
  readonly id: string;
  /** the last seq seen, null until joined; it only rises, except to 0 by a reset (onreset) */
  readonly lastSeq: number | null;
  /** which thread of this id is held: the server's `joined.created_at` (seconds since the
   * epoch), null until joined */
  readonly createdAt: number | null;
  /** in the order of their first event (a run's user_message) */
  readonly runs: ReadonlyMap<string, Run>;
  /** the last run that is running, if any */
  readonly activeRun: Run | null;
  /** every run's pending approvals, oldest run first */
  readonly pendingApprovals: readonly Approval[];
  /** the `last_seq` of the join this copy began with (the first join, or the join from 0 after a
   * reset); null until joined. Events with a seq up to it are the history the join replayed,
   * those above it came after (e.g. what a page shows as new: another tab's edit) */
  readonly joinedSeq: number | null;
  /** 1.1: the conversation tree, built from the events seen (client.tree(id) is the same) */
  readonly tree: Tree;
}

/** 1.1: a user's message in the conversation tree, from its `user_message` event. */
export declare class Message {
  readonly id: string;
  readonly text: string;
  /** the run it follows; null at a root */
  readonly parent: string | null;
  /** of its user_message: siblings are ordered by it */
  readonly seq: number;
  /** the run its user_message started: its first answer */
  readonly runId: string;
  readonly clientMsgId: string | null;
  /** 1.1: the attachments its user_message lists, in the order sent; [] when none */
  readonly attachments: readonly AttachmentInfo[];
  /** the user_message's data as it came (attachments, ...) */
  readonly data: Record<string, unknown> & { message_id: string; text: string };
  /** every run answering it, by seq: the first, then the regenerated ones */
  readonly answers: readonly Run[];
  /** the newest run of its subtree */
  readonly newest: Run | null;
}

/** One step of a branch: a message, the answer followed, and the siblings of each (for
 * "< k / n >": k is the 1-based index of message in siblings, or of run in answers). */
export interface Turn {
  message: Message;
  run: Run;
  /** the messages with the same parent, message among them, by seq */
  siblings: readonly Message[];
  /** the runs answering message, run among them, by seq */
  answers: readonly Run[];
}

/** A fork met by Tree.branch: where more than one child could be followed. */
export type Fork =
  | { kind: "message"; /** the run the messages follow; null: the roots */ parent: string | null; options: readonly Message[] }
  | { kind: "answer"; messageId: string; options: readonly Run[] };

/** 1.1: a thread's conversation tree (PROTOCOL.md, "The conversation tree"), as the events seen
 * built it. Complete when the thread was joined from 0 (since: 0); a copy joined later holds
 * what it saw (a path stops where it knows no more). It keeps growing across reconnects (the
 * join with since) and is emptied by a reset (onreset). */
export declare class Tree {
  /** message_id -> Message, by seq */
  readonly messages: ReadonlyMap<string, Message>;
  /** run_id -> Run (the Thread's runs) */
  readonly runs: ReadonlyMap<string, Run>;
  /** the run of the latest user_message or answer_requested: the parent the server gives a send
   * without one; null before any */
  readonly newest: Run | null;
  /** the messages starting the conversation (parent null), by seq */
  readonly roots: readonly Message[];
  /** the messages following run `runId` (null: the roots), by seq */
  children(runId: string | null): readonly Message[];
  /** the runs answering message `messageId`, by seq */
  answers(messageId: string): readonly Run[];
  /** the messages with the same parent as `messageId` (itself among them), by seq; [] unknown */
  siblings(messageId: string): readonly Message[];
  /** the runs answering the same message as `runId` (itself among them), by seq; [] unknown */
  answerSiblings(runId: string): readonly Run[];
  /** the branch from the root down to run `runId`, oldest turn first; [] for an unknown run */
  path(runId: string): Turn[];
  /** a branch from a root to a leaf: at each fork, the child `choose` names, else (undefined,
   * or an id not among the options) the one whose subtree holds the newest run. Without
   * `choose`: the branch ending at the newest run. */
  branch(choose?: (fork: Fork) => string | undefined): Turn[];
}

export interface JoinOptions {
  /** replay every stored event with seq > since first (0: the whole history); default: live only */
  since?: number;
  /** with `since`, for a copy the app kept across page loads: the `createdAt` of the thread it
   * holds, so that a thread deleted and created again meanwhile is reset (onreset) even when
   * the new one is longer than `since` */
  createdAt?: number | null;
  /** each new event, once, in seq order, after it was applied to its run */
  onevent?: (frame: EventFrame, run: Run, thread: Thread) => void;
  /** the server ended the subscription; reason "deleted": the thread was deleted (not rejoined) */
  onleft?: (reason: string, thread: Thread) => void;
  /** what the client held of the thread is void, and the thread stays joined. Reason
   * "replaced": a join (again, after a reconnect) was answered with another `created_at` than
   * the thread had, or a join with `since` (the last seq seen, or the app's own `since`) with
   * a lower `last_seq`: the thread was deleted and created again while the client was away
   * (or the server's store was replaced). The client has already emptied `thread` (no runs,
   * lastSeq 0) and joined again with since 0: clear what the app shows of it; the new thread's
   * events follow through onevent from seq 1. (PROTOCOL.md, "`join` with `since`".) */
  onreset?: (reason: "replaced" | (string & {}), thread: Thread) => void;
}

export interface SendOptions {
  /** idempotency key; made up when not given (so a send written again after a loss is one message) */
  clientMsgId?: string;
  strategy?: "enqueue" | "interrupt" | "reject";
  /** 1.1: the run the message follows; null: a new root. An edit of message m: m.parent (the new
   * message is m's sibling). Not given: the thread's newest run (the server's default), or a root
   * when there is none, as in 1.0 */
  parent?: string | null;
  /** 1.1: attachments uploaded by this user (upload's records, or their attachment_id), at most
   * 10, not sent with another thread's message; one that is not the user's (or gone): the send
   * rejects "not_found" and nothing is stored. Empty or not given: the frame has none */
  attachments?: ReadonlyArray<string | Pick<AttachmentRecord, "attachment_id">>;
}

export interface RegenerateOptions {
  /** idempotency key; made up when not given (written again after a loss: one new run) */
  clientMsgId?: string;
  strategy?: "enqueue" | "interrupt" | "reject";
}

/** What the client needs of a WebSocket (the browser's, Node >= 22's, the ws package's): it
 * also sets `onopen`, `onmessage` (reading `event.data`, a string), `onclose` (reading
 * `event.code` and `event.reason`) and `onerror`. */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** A WebSocket class: `new WebSocket(url, [subprotocol])`. */
export type WebSocketClass = new (url: string, protocols: string[]) => WebSocketLike;

/** Gives a token (a JWT the server accepts), or a promise of one. */
export type TokenSource = () => string | Promise<string>;

export interface CommonConnectOptions {
  /** ws://HOST:PORT/v1/ws; default: the page's own host */
  url?: string;
  /** the WebSocket class; default globalThis.WebSocket. Node has one from version 22 (20.10 to
   * 21: with --experimental-websocket); elsewhere pass one, e.g. `import { WebSocket } from
   * "ws"`. None at all: connect() throws a ThreadlineError "no_websocket" */
  WebSocket?: WebSocketClass;
  /** with getToken: how long before the token's `exp` (the JWT's payload, read unverified) a new
   * token is asked for, ms (default 30000; not sooner than 1 s from then, or half the remaining
   * life when that is shorter); then the client reconnects with it at a quiet moment (at once,
   * or after a pending cancel or decide is answered). null: never ahead of time (only on 4001,
   * a refused handshake and reconnects) */
  refreshBefore?: number | null;
  /** reconnect backoff, ms: min * 2^attempt, capped at max, with jitter (half to all of it) */
  minDelay?: number;
  maxDelay?: number;
  /** ms a request may wait for its answer, including while reconnecting (default 30000) */
  timeout?: number;
  onstate?: (state: ConnectionState, detail: StateDetail) => void;
  /** errors that belong to no request: an unauthorized token (checked with /v1/auth/check when a
   * handshake fails), a close for good, an error frame without a ref, a failed rejoin, a failed
   * getToken ("token_failed") */
  onerror?: (error: ThreadlineError) => void;
}

/** A static `token`, or `getToken` (or both: `token` is the first, getToken gives the next). */
export type ConnectOptions = CommonConnectOptions & (
  | {
      /** the server's token (sent as ?token=, and as Authorization: Bearer over HTTP). Alone,
       * it is used for every connection: once the server stops accepting it (4001, 401) the
       * client ends. With getToken: the first token (getToken gives the next ones) */
      token: string;
      getToken?: TokenSource;
    }
  | {
      token?: string;
      /** asked for a token before the client connects (unless `token` is given), before every
       * reconnect, at once on a 4001 (then the client reconnects with it without waiting for
       * the backoff), and `refreshBefore` ms before the token's `exp`. One call at a time. A
       * failure is reported to onerror ("token_failed") and asked again after the backoff; a
       * token the server refuses is reported ("unauthorized") and a new one asked: with
       * getToken the client only ends when closed. HTTP calls use the latest token */
      getToken: TokenSource;
    });

export declare class Client {
  readonly url: string;
  readonly state: ConnectionState;
  readonly attempt: number;
  timeout: number;
  thread(threadId: string): Thread | undefined;
  /** 1.1: the conversation tree of joined thread `threadId` (its Thread's tree) */
  tree(threadId: string): Tree | undefined;
  /** settles with the `joined` answer; after a reset (onreset), with that of the join from 0 */
  join(threadId: string, options?: JoinOptions): Promise<Joined>;
  leave(threadId: string): Promise<Left>;
  send(threadId: string, text: string, options?: SendOptions): Promise<Accepted>;
  /** 1.1: another answer to message `messageId`: a new run beside its earlier answers. Settles
   * with its `accepted` (message_id: that message; run_id: the new run; seq: its
   * answer_requested); rejects "not_found" for a message the thread does not have, "busy" with
   * strategy "reject" while a run is active. Written again after a loss (idempotent by
   * clientMsgId). */
  regenerate(threadId: string, messageId: string, options?: RegenerateOptions): Promise<Accepted>;
  /** the active run, or runId; written at most once (a loss after writing: "disconnected") */
  cancel(threadId: string, runId?: string): Promise<Ok>;
  /** 1.1: approve or deny the tool call `callId` of run `runId` (an Approval's runId and
   * callId), with an optional reason (at most 1 KiB of UTF-8). Settles with `ok` once the
   * decision is stored. Rejects with code "unknown_call" when the call waits no more (another
   * connection decided first, or the run ended): not a failure, the thread's events show what
   * happened; "not_joined" when the thread is not joined; a TypeError when `approved` is not a
   * boolean. Written at most once: a connection lost after it was written rejects with
   * "disconnected" (it may have been stored; the thread's events tell, once joined again). */
  decide(threadId: string, runId: string, callId: string, approved: boolean,
         reason?: string | null): Promise<Decided>;
  /** 1.1: upload `file` as an attachment (POST /v1/attachments, the token in the Authorization
   * header): settles with its record once the server stored it, for send's `attachments`.
   * Rejects with a ThreadlineError carrying the server's code and message, and `status`:
   * "too_large" (413), "unsupported_type" (415), "limit_reached" (429: the user's storage
   * quota, or too many requests at once), "unauthorized" (401); "upload_failed" (status 0)
   * when no answer came; "aborted" after `signal` aborted; "closed" once the client is; a
   * TypeError for anything but a Blob. Never repeated after a loss. */
  upload(file: Blob, options?: UploadOptions): Promise<AttachmentRecord>;
  /** 1.1: the HTTP address of an attachment (GET /v1/attachments/{id}). It needs the token in
   * the Authorization header, which an <img> or a link cannot send: use download() there */
  attachmentUrl(attachmentId: string): string;
  /** 1.1: an attachment's bytes, as a Blob (for URL.createObjectURL; revoke it when it is no
   * longer shown): of its content type for png, jpeg, gif and webp, else
   * application/octet-stream, so that an object URL of it never renders as a page. Rejects "not_found" for one that is gone or another
   * user's; "download_failed" when no answer came; "aborted" after `signal` aborted */
  download(attachmentId: string, options?: { signal?: AbortSignal }): Promise<Blob>;
  /** 1.1: the user's tokens this UTC day and this month and their budgets (GET /v1/usage, the
   * token in the Authorization header). Rejects with a ThreadlineError carrying the server's
   * code, message and `status` ("unauthorized" (401), ...); "request_failed" (status 0) when no
   * answer came; "aborted" after `signal` aborted; "closed" once the client is */
  usage(options?: { signal?: AbortSignal }): Promise<UsageReport>;
  threads(options?: { limit?: number; cursor?: string | null }): Promise<ThreadsPage>;
  ping(): Promise<Pong>;
  close(): void;
}

/** A client that connects at once and stays connected (reconnecting) until close(). */
export declare function connect(options: ConnectOptions): Client;

/** GET /v1/auth/check: null when the token is accepted or the server cannot be asked. */
export declare function checkToken(url: string, token: string): Promise<ThreadlineError | null>;

/** Length in Unicode code points (PROTOCOL.md's offsets). */
export declare function codePoints(text: string): number;
