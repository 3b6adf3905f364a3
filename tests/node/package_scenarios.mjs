// The npm package threadline-client (transport/static/), installed into a fresh project, under
// Node: tests/node/test_package.py copies this file into that project (so that the bare name
// resolves to its node_modules) and runs one scenario per process:
// `node [--experimental-websocket] package_scenarios.mjs NAME URL SECRET`. It mints its own
// tokens (HS256 with the tests' secret), prints one JSON line of what it saw, exits 1 on an error.
import { createHmac } from "node:crypto";
import * as threadline from "threadline-client";

const { connect } = threadline;
const [name, url, secret] = process.argv.slice(2);
const TIMEOUT_MS = 30000;

/** A token for `sub` that expires `ttl` seconds from now (exp a float, as the server allows). */
function mint(sub, ttl) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = Date.now() / 1000;
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iat: Math.floor(now), exp: now + ttl })}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

/** Poll `check` every 10 ms until it is truthy (at most `ms`); its value. */
async function until(check, what, ms = 20000) {
  const deadline = Date.now() + ms;
  for (let value = check(); ; value = check()) {
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const tick = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A WebSocket class (of `Base`) that records each connection's token and the frames sent. */
function recordingSocket(connections, Base = globalThis.WebSocket) {
  return class extends Base {
    constructor(address, protocols) {
      super(address, protocols);
      const record = { token: new URL(address).searchParams.get("token"), sent: [] };
      connections.push(record);
      const send = this.send.bind(this);
      this.send = (data) => { record.sent.push(JSON.parse(data)); send(data); };
    }
  };
}

/** fetch, recording each request's Authorization header. */
function recordingFetch(headers) {
  const original = globalThis.fetch;
  globalThis.fetch = (input, init = {}) => {
    headers.push(new Headers(init.headers).get("authorization"));
    return original(input, init);
  };
}

/** Joins "main" from 0 and records its events. */
async function joined(client, events) {
  await client.join("main", { since: 0, onevent: (frame) => events.push(frame) });
}

/** `text` sent on "main", once its run completed in `events`; the run's answer. */
async function turn(client, events, text) {
  const { run_id: runId } = await client.send("main", text);
  await until(() => events.some((f) => f.run_id === runId && f.event === "agent_completed"),
              `the answer to ${text}`);
  return client.thread("main").runs.get(runId).text;
}

const userTexts = (events) => events.filter((f) => f.event === "user_message").map((f) => f.data.text);
const joinsOf = (connections) =>
  connections.map(({ sent }) => sent.filter((f) => f.type === "join").map((f) => f.since ?? null));
const errorOf = (error) => ({ name: error.name, code: error.code ?? null, message: error.message,
                              isError: error instanceof Error });

const scenarios = {
  /** Imported by name: a send and its answer with a static token, and GET /v1/usage. */
  async turn() {
    const errors = [];
    const client = connect({ url, token: mint("ada", 3600), onerror: (e) => errors.push(errorOf(e)) });
    const events = [];
    await joined(client, events);
    const answer = await turn(client, events, "hello");
    const usage = await client.usage();
    client.close();
    return { resolved: import.meta.resolve("threadline-client"), exports: Object.keys(threadline).sort(),
             answer, usage: usage.type, errors };
  },

  /** The server closes with 4001 (its leeway is 0, the first token lives 3 s, no refresh
   * ahead of time): getToken is asked again at once, and while it answers another client of
   * the user writes to the thread; the client reconnects with the new token (not after the
   * backoff: minDelay is a minute) and joins with since: every event once. */
  async expiry() {
    const writer = connect({ url, token: mint("ada", 3600) });
    const written = [];
    await joined(writer, written);
    const log = [];
    const tokens = [];
    const errors = [];
    const connections = [];
    let away = false;
    const getToken = async () => {
      log.push(["getToken"]);
      if (tokens.length === 0) {
        tokens.push(mint("ada", 3));
      } else {
        if (!away) {  // the 4001's: the thread goes on without this client
          away = true;
          log.push(["away", await turn(writer, written, "while away")]);
        }
        tokens.push(mint("ada", 3600));
      }
      return tokens.at(-1);
    };
    const client = connect({
      url, getToken, refreshBefore: null, minDelay: 60000, maxDelay: 60000,
      WebSocket: recordingSocket(connections),
      onstate: (state, detail) => log.push(["state", state, detail.code ?? null, detail.delay ?? null]),
      onerror: (e) => errors.push(errorOf(e)),
    });
    const events = [];
    await joined(client, events);
    const first = await turn(client, events, "one");
    await until(() => log.some(([kind, , code]) => kind === "state" && code === 4001), "the 4001");
    await until(() => client.state === "open", "open again");
    const after = await turn(client, events, "after");
    const headers = [];
    recordingFetch(headers);
    await client.usage();
    client.close();
    writer.close();
    return { log, tokens, connections: connections.map((c) => c.token), joins: joinsOf(connections),
             seqs: events.map((f) => f.seq), writerSeqs: written.map((f) => f.seq),
             texts: userTexts(events), answers: [first, after], errors, usageAuth: headers };
  },

  /** The first token lives 32 s (the server's leeway is 0): the client asks for a new one
   * 30 s before its exp and reconnects with it ("token refreshed"), long before a 4001. */
  async refresh() {
    const log = [];
    const tokens = [];
    const errors = [];
    const connections = [];
    const getToken = () => {
      log.push(["getToken"]);
      tokens.push(mint("ada", tokens.length === 0 ? 32 : 3600));
      return tokens.at(-1);
    };
    const client = connect({
      url, getToken, minDelay: 60000, maxDelay: 60000, WebSocket: recordingSocket(connections),
      onstate: (state, detail) => log.push(["state", state, detail.code ?? null, detail.delay ?? null,
                                            detail.reason ?? null]),
      onerror: (e) => errors.push(errorOf(e)),
    });
    const events = [];
    await joined(client, events);
    const one = await turn(client, events, "one");
    await until(() => connections.length === 2 && client.state === "open", "the refreshed connection");
    const two = await turn(client, events, "two");
    const headers = [];
    recordingFetch(headers);
    await client.usage();
    client.close();
    return { log, tokens, connections: connections.map((c) => c.token), joins: joinsOf(connections),
             seqs: events.map((f) => f.seq), texts: userTexts(events), answers: [one, two], errors,
             usageAuth: headers };
  },

  /** A refreshed token waits for a quiet moment: with a decide written and unanswered (it is
   * not written again after a loss), the client keeps its connection; once the decide is
   * answered it reconnects with the new token. A fake server (a WebSocket class given). */
  async quiet() {
    const sockets = [];
    class FakeSocket {
      constructor(address) {
        this.token = new URL(address).searchParams.get("token");
        this.sent = [];
        this.closed = null;
        sockets.push(this);
        setTimeout(() => this.onopen?.({}), 0);
      }

      send(data) {
        const frame = JSON.parse(data);
        this.sent.push(frame);
        if (frame.type === "join") {
          this.answer({ type: "joined", thread_id: frame.thread_id, last_seq: 0, created_at: 1, ref: frame.ref });
        }
      }

      answer(frame) { setTimeout(() => this.onmessage?.({ data: JSON.stringify(frame) }), 0); }

      close(code, reason) {
        this.closed = [code, reason];
        setTimeout(() => this.onclose?.({ code, reason }), 0);
      }
    }
    const tokens = [];
    const getToken = () => {  // the first lives 31 s: asked again after 1 s
      tokens.push(mint("ada", tokens.length === 0 ? 31 : 3600));
      return tokens.at(-1);
    };
    const states = [];
    const client = connect({ url, getToken, WebSocket: FakeSocket, onstate: (s, d) => states.push([s, d.reason ?? null]) });
    await client.join("t", { since: 0 });
    const decided = client.decide("t", "r1", "c1", true);
    await until(() => tokens.length === 2, "the refresh");
    await tick(100);  // a reconnect would be under way by now
    const whileWaiting = sockets.length;
    const [decide] = sockets[0].sent.filter((f) => f.type === "decide");
    sockets[0].answer({ type: "ok", thread_id: "t", run_id: "r1", call_id: "c1", ref: decide.ref });
    const answer = await decided;
    await until(() => sockets.length === 2 && client.state === "open", "the new connection");
    client.close();
    return { whileWaiting, answer: answer.type, closed: sockets[0].closed, tokens,
             sockets: sockets.map((s) => s.token), joins: sockets.map((s) => s.sent.filter((f) => f.type === "join").length),
             states };
  },

  /** getToken throws, then answers no string, then a token the server refuses (expired): each
   * reported to onerror and asked again after the backoff; then a good one. */
  async tokenErrors() {
    const errors = [];
    const states = [];
    let calls = 0;
    const getToken = async () => {
      calls++;
      if (calls === 1) throw new Error("no session yet");
      if (calls === 2) return 42;
      if (calls === 3) return mint("ada", -120);
      return mint("ada", 3600);
    };
    const client = connect({ url, getToken, minDelay: 20, maxDelay: 100,
                             onstate: (s, d) => states.push([s, d.error?.code ?? null]),
                             onerror: (e) => errors.push({ ...errorOf(e), cause: e.cause?.message ?? null }) });
    const events = [];
    await joined(client, events);
    const answer = await turn(client, events, "hello");
    client.close();
    return { calls, errors, states, answer };
  },

  /** No global WebSocket (deleted here; Node 20 without --experimental-websocket has none):
   * connect() throws the clear error; given as the `WebSocket` option, it connects. */
  async noWebSocket() {
    const Given = globalThis.WebSocket;
    delete globalThis.WebSocket;
    let error = null;
    try {
      connect({ url, token: mint("ada", 3600) });
    } catch (e) {
      error = errorOf(e);
    }
    let withOption = null;
    if (Given !== undefined) {
      const client = connect({ url, token: mint("ada", 3600), WebSocket: Given });
      withOption = (await client.ping()).type;
      client.close();
    }
    return { hadGlobal: Given !== undefined, node: process.versions.node, error, withOption };
  },
};

const timer = setTimeout(() => { console.error(`scenario ${name} timed out`); process.exit(1); }, TIMEOUT_MS * 2);
try {
  const seen = await scenarios[name]();
  clearTimeout(timer);
  console.log(JSON.stringify(seen));
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
