// The JavaScript client (transport/static/client.js) under Node against a real server, one
// scenario per run: `node --experimental-websocket scenarios.mjs NAME URL TOKEN [ARG]`. Prints one
// JSON line of what it saw, for tests/node/test_client.py to check; exits 1 on an error.
import { connect, codePoints } from "../../transport/static/client.js";
import { openRelay } from "./relay.mjs";

const [name, url, token, arg] = process.argv.slice(2);
const TIMEOUT_MS = 30000;

/** A WebSocket that records every frame the client sends, per connection. */
function recordingSocket(connections) {
  return class extends WebSocket {
    constructor(...args) {
      super(...args);
      const sent = [];
      connections.push(sent);
      const send = this.send.bind(this);
      this.send = (data) => { sent.push(JSON.parse(data)); send(data); };
    }
  };
}

function within(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), TIMEOUT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Send `text` to thread "main" (joined from seq 0) through a relay; cut every connection at
 * the `cutAt`-th agent_delta; wait for the run's end. */
async function streamWithCut(text, cutAt) {
  const relay = await openRelay(Number(new URL(url).port));
  const connections = [];
  const states = [];
  const seqs = [];
  const pieces = [];  // [offset, code points] of each agent_delta delivered
  let assembled = null;
  let cuts = 0;
  let finished;
  const done = new Promise((resolve) => { finished = resolve; });
  const client = connect({
    url: `ws://127.0.0.1:${relay.port}/v1/ws`, token, WebSocket: recordingSocket(connections),
    minDelay: 20, maxDelay: 200, onstate: (state) => states.push(state),
    onerror: (error) => console.error("onerror", error.code, error.message),
  });
  await client.join("main", {
    since: 0,
    onevent(frame, run) {
      seqs.push(frame.seq);
      if (frame.event === "agent_delta") {
        pieces.push([frame.data.offset, codePoints(frame.data.text)]);
        assembled = run.text;
        if (pieces.length === cutAt) cuts += relay.cut();
      }
      if (run.done) finished({ run, frame });
    },
  });
  const accepted = await client.send("main", text);
  const { run, frame } = await within(done, "the run's end");
  const report = {
    accepted_run: accepted.run_id, run: run.id, status: run.status, text: run.text,
    completed_text: frame.data.text, assembled, pieces, seqs, cuts, states: [...states],
    joins: connections.map((sent) => sent.filter((f) => f.type === "join").map((f) => f.since ?? null)),
  };
  return { client, relay, report, connections };
}

const scenarios = {
  async stream() {
    const { client, relay, report } = await streamWithCut(`/stream ${arg}`, 3);
    client.close();
    relay.close();
    return report;
  },

  async unicode() {
    const { client, relay, report } = await streamWithCut("unicode", 2);
    client.close();
    relay.close();
    return report;
  },

  // A send made while the connection is down is written once it is back, once.
  async sendWhileDown() {
    const relay = await openRelay(Number(new URL(url).port));
    const states = [];
    const client = connect({
      url: `ws://127.0.0.1:${relay.port}/v1/ws`, token, minDelay: 200, maxDelay: 400,
      onstate: (state) => states.push(state), onerror: (e) => console.error("onerror", e.code),
    });
    const messages = [];
    await client.join("main", {
      since: 0,
      onevent(frame) { if (frame.event === "user_message") messages.push(frame.data.text); },
    });
    relay.cut();
    const sending = client.send("main", "hello", { clientMsgId: "m-1" });
    const stateAtSend = client.state;
    const accepted = await within(sending, "accepted");
    const again = await within(client.send("main", "hello", { clientMsgId: "m-1" }), "accepted again");
    await within(client.ping(), "pong");
    client.close();
    relay.close();
    return { stateAtSend, states, accepted, again, messages };
  },

  // The thread is deleted (over HTTP) while an answer streams: the client drops it and is told,
  // and does not join it again after a reconnect; joined anew, it starts from seq 1.
  async deleted() {
    const relay = await openRelay(Number(new URL(url).port));
    const connections = [];
    let told;
    const left = new Promise((resolve) => { told = resolve; });
    let streaming;
    const started = new Promise((resolve) => { streaming = resolve; });
    const client = connect({
      url: `ws://127.0.0.1:${relay.port}/v1/ws`, token, WebSocket: recordingSocket(connections),
      minDelay: 20, maxDelay: 200, onerror: (e) => console.error("onerror", e.code, e.message),
    });
    await client.join("main", {
      since: 0,
      onevent(frame) { if (frame.event === "agent_delta") streaming(); },
      onleft: (reason, thread) => told({ reason, lastSeq: thread.lastSeq }),
    });
    await client.send("main", "/stream 5000");
    await within(started, "the answer streaming");
    const base = new URL(url);
    const deleted = await fetch(`http://${base.host}/v1/threads/main`, {
      method: "DELETE", headers: { Authorization: `Bearer ${token}` },
    });
    const leftWith = await within(left, "left");
    const afterLeft = client.thread("main") === undefined;
    relay.cut();
    await within(client.ping(), "pong after a reconnect");
    const again = await within(client.join("main", { since: 0 }), "joined anew");
    client.close();
    relay.close();
    return {
      status: deleted.status, leftWith, afterLeft, again,
      joins: connections.map((sent) => sent.filter((f) => f.type === "join").map((f) => f.since ?? null)),
    };
  },

  async unauthorized() {
    const errors = [];
    const states = [];
    let joinError = null;
    const client = connect({
      url, token, minDelay: 20, onstate: (state) => states.push(state),
      onerror: (error) => errors.push({ code: error.code, message: error.message }),
    });
    try {
      await within(client.join("main"), "the join's answer");
    } catch (error) {
      joinError = { code: error.code, message: error.message };
    }
    return { errors, states, joinError, state: client.state };
  },
};

try {
  console.log(JSON.stringify(await within(scenarios[name](), name)));
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
