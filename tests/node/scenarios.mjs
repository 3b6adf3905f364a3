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

/** Poll `check` every 10 ms until it is truthy (at most `ms`); its value. */
async function until(check, what, ms = 10000) {
  const deadline = Date.now() + ms;
  for (let value = check(); ; value = check()) {
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** A client through a relay on loopback (which a scenario cuts, holds or refuses), with short
 * reconnect delays, recording its sockets (`connections`) and its states. */
async function relayedClient() {
  const relay = await openRelay(Number(new URL(url).port));
  const connections = [];
  const states = [];
  const client = connect({
    url: `ws://127.0.0.1:${relay.port}/v1/ws`, token, WebSocket: recordingSocket(connections),
    minDelay: 20, maxDelay: 200, onstate: (state) => states.push(state),
    onerror: (e) => console.error("onerror", e.code, e.message),
  });
  return { relay, connections, states, client };
}

/** A client straight to the server (no relay): joins `threadId` from 0 and records its events. */
async function directClient(threadId) {
  const client = connect({ url, token, onerror: (e) => console.error("onerror", e.code, e.message) });
  const events = [];
  await client.join(threadId, { since: 0, onevent: (frame) => events.push(frame) });
  return { client, events };
}

/** `text` sent by `client` on `threadId`, once its run completed in `events`. */
async function exchange(client, events, threadId, text) {
  const { run_id: runId } = await client.send(threadId, text);
  await until(() => events.some((f) => f.run_id === runId && f.event === "agent_completed"),
              `the answer to ${text}`);
}

const joinsOf = (connections) =>
  connections.map((sent) => sent.filter((f) => f.type === "join").map((f) => f.since ?? null));

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
    joins: joinsOf(connections),
  };
  return { client, relay, report, connections };
}

// Deleted and created again while the client is away: `away` exchanged then, `live` after.
async function replacedWhileAway(away, live) {
  const writer = await directClient("main");
  await exchange(writer.client, writer.events, "main", "old one");
  await exchange(writer.client, writer.events, "main", "old two");  // seq 1-8
  const { relay, connections, states, client } = await relayedClient();
  const seen = [];    // [seq, event, user text] of each event, and "reset" where it was reset
  const resets = [];
  await client.join("main", {
    since: 0,
    onevent: (frame) => seen.push([frame.seq, frame.event, frame.data.text ?? null]),
    onreset(reason, thread) {
      resets.push({ reason, lastSeq: thread.lastSeq, runs: thread.runs.size,
                    messages: thread.tree.messages.size, roots: thread.tree.roots.length,
                    same: thread === client.thread("main") });
      seen.push("reset");
    },
    onleft: (reason) => console.error("onleft", reason),
  });
  await until(() => seen.length === 8, "the old thread's 8 events");
  relay.refuse(true);
  relay.cut();
  await until(() => states.includes("reconnecting"), "the client away");
  const base = new URL(url);
  const deleted = await fetch(`http://${base.host}/v1/threads/main`, {
    method: "DELETE", headers: { Authorization: `Bearer ${token}` },
  });
  writer.client.close();
  const creator = await directClient("main");  // the id is free: a new thread from seq 1
  for (const text of away) await exchange(creator.client, creator.events, "main", text);
  relay.refuse(false);
  await until(() => seen.some((e) => e[2] === away.at(-1) && e[1] === "agent_completed"),
              "the new thread's answers while away");
  await exchange(creator.client, creator.events, "main", live);  // live
  await until(() => seen.some((e) => e[2] === live && e[1] === "agent_completed"),
              "the new thread's live answer");
  const thread = client.thread("main");
  const report = {
    status: deleted.status, resets, seen, joins: joinsOf(connections), lastSeq: thread.lastSeq,
    runs: [...thread.runs.values()].map((run) => [run.message?.text, run.status, run.text]),
    tree: branchOf(thread.tree.branch()).map(([text]) => text),
    roots: thread.tree.roots.map((m) => m.text),
  };
  client.close();
  creator.client.close();
  relay.close();
  return report;
}

/** What an app can read of an Approval. */
const approvalOf = (a) => a && {
  runId: a.runId, callId: a.callId, tool: a.tool, args: a.args, expiresAt: a.expiresAt,
  status: a.status, pending: a.pending, approved: a.approved, reason: a.reason,
};

/** The pending approvals of `client`'s thread `threadId`, once there is one (at most 10 s). */
const pendingOf = (client, threadId, what) =>
  until(() => { const p = client.thread(threadId)?.pendingApprovals; return p?.length ? p : null; }, what);

const decideFrames = (connections) => connections.flat().filter((f) => f.type === "decide");

/** `promise`'s value as {ok} or its rejection as {code, name}. */
const outcome = (promise) => promise.then(
  (ok) => ({ ok }), (error) => ({ code: error.code ?? null, name: error.name, message: error.message }));

/** What a Tree holds, in plain JSON: every message and run with their places. */
function treeOf(tree) {
  return {
    roots: tree.roots.map((m) => m.id),
    newest: tree.newest?.id ?? null,
    messages: [...tree.messages.values()].map((m) => ({
      id: m.id, text: m.text, parent: m.parent, seq: m.seq, runId: m.runId,
      answers: m.answers.map((r) => r.id), newest: m.newest?.id ?? null,
    })),
    runs: [...tree.runs.values()].map((r) => ({
      id: r.id, messageId: r.messageId, seq: r.seq, status: r.status, text: r.text,
      message: r.message?.text ?? null, children: r.children.map((m) => m.id),
      newest: r.newest?.id ?? null,
    })),
  };
}

/** A branch as [message text, run id, "k/n" among siblings, "k/n" among answers] per turn. */
const branchOf = (turns) => turns.map(({ message, run, siblings, answers }) => [
  message.text, run.id, `${siblings.indexOf(message) + 1}/${siblings.length}`,
  `${answers.indexOf(run) + 1}/${answers.length}`]);

/** `client`'s `threadId` once run `runId` is done there; the run. */
const doneIn = (client, threadId, runId, what) =>
  until(() => { const run = client.thread(threadId)?.runs.get(runId); return run?.done && run; }, what);

/** GET `path` of the HTTP API as `token`'s user: the JSON body. */
async function httpGet(path) {
  const base = new URL(url);
  const response = await fetch(`http://${base.host}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status !== 200) throw new Error(`GET ${path}: ${response.status} ${await response.text()}`);
  return response.json();
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
      status: deleted.status, leftWith, afterLeft, again, joins: joinsOf(connections),
    };
  },

  // `joined`, the replay and live events reach the client in one read (the relay holds what
  // the server writes, then hands it over in one write): the seq the client counts from must be
  // the last it applied, not the `joined`'s last_seq, or its next join repeats events.
  async batched() {
    const writer = await directClient("main");
    await exchange(writer.client, writer.events, "main", "one");  // seq 1-4
    const relay = await openRelay(Number(new URL(url).port));
    const connections = [];
    const client = connect({
      url: `ws://127.0.0.1:${relay.port}/v1/ws`, token, WebSocket: recordingSocket(connections),
      minDelay: 20, maxDelay: 200, onerror: (e) => console.error("onerror", e.code, e.message),
    });
    await within(client.ping(), "connected");
    relay.hold();
    const seqs = [];
    const joining = client.join("main", { since: 0, onevent: (frame) => seqs.push(frame.seq) });
    await until(() => relay.heldText().includes('"type":"joined"'), "joined held by the relay");
    await exchange(writer.client, writer.events, "main", "two");  // seq 5-8, live
    await until(() => relay.heldText().includes('"seq":8,'), "seq 8 held by the relay");
    relay.release();
    const joined = await within(joining, "joined");
    const lastSeqAfterJoin = client.thread("main").lastSeq;
    relay.cut();
    await exchange(writer.client, writer.events, "main", "three");  // seq 9-12
    await until(() => seqs.includes(12), "seq 12 after the reconnect");
    const lastSeq = client.thread("main").lastSeq;
    client.close();
    writer.client.close();
    relay.close();
    return { joinedLastSeq: joined.last_seq, lastSeqAfterJoin, seqs, lastSeq, joins: joinsOf(connections) };
  },

  // The thread is deleted and created again while the client is away (the relay refuses it):
  // joined again with since 8, the server answers last_seq 4; the client resets its copy, tells
  // the app, joins from 0 and gets the new thread's events from seq 1.
  async replaced() {
    return replacedWhileAway(["new one"], "new two");
  },

  // The same, but the new thread is longer than the old one when the client comes back
  // (last_seq 12 > since 8): only `joined.created_at` tells it is another thread.
  async replacedLonger() {
    return replacedWhileAway(["new one", "new two", "new three"], "new four");
  },

  // The app's own `since` is beyond what the server has (it kept a copy of a thread the server
  // no longer has): the same reset, and join() settles with the join from 0.
  async sinceAhead() {
    const resets = [];
    const connections = [];
    const client = connect({ url, token, WebSocket: recordingSocket(connections),
                             onerror: (e) => console.error("onerror", e.code, e.message) });
    const joined = await within(client.join("fresh", {
      since: 5, onreset: (reason, thread) => resets.push({ reason, lastSeq: thread.lastSeq }),
    }), "joined");
    const lastSeq = client.thread("fresh").lastSeq;
    client.close();
    return { joined, resets, lastSeq, joins: joinsOf(connections) };
  },

  // An app restores a copy it kept (since 8 and the thread's createdAt) after the thread was
  // deleted and made again, longer: the first join already tells it apart.
  async restoredCopy() {
    const old = await directClient("kept");
    await exchange(old.client, old.events, "kept", "old one");
    await exchange(old.client, old.events, "kept", "old two");  // seq 1-8
    const createdAt = old.client.thread("kept").createdAt;
    old.client.close();
    const base = new URL(url);
    await fetch(`http://${base.host}/v1/threads/kept`, {
      method: "DELETE", headers: { Authorization: `Bearer ${token}` },
    });
    const creator = await directClient("kept");
    for (const text of ["new one", "new two", "new three"]) {
      await exchange(creator.client, creator.events, "kept", text);  // seq 1-12
    }
    creator.client.close();
    const resets = [];
    const seen = [];
    const connections = [];
    const client = connect({ url, token, WebSocket: recordingSocket(connections),
                             onerror: (e) => console.error("onerror", e.code, e.message) });
    await within(client.join("kept", {
      since: 8, createdAt,
      onevent: (frame) => seen.push(frame.seq),
      onreset: (reason) => resets.push(reason),
    }), "joined");
    await until(() => seen.length === 12, "the new thread's 12 events");
    client.close();
    return { resets, seen, joins: joinsOf(connections), createdAt };
  },

  // Tool approval (PROTOCOL.md 1.1): two clients ("tabs") on one thread; the echo agent's
  // `/confirm 6*7` asks approval; both hold it pending, one approves, both see it decided and
  // the answer 42; the other's decide then is unknown_call. Then a denial with a reason.
  async approval() {
    const connections = [];
    const onerror = (e) => console.error("onerror", e.code, e.message);
    const a = connect({ url, token, WebSocket: recordingSocket(connections), onerror });
    const b = connect({ url, token, onerror });
    const eventsA = [];
    const eventsB = [];
    await a.join("main", { since: 0, onevent: (f) => eventsA.push(f.event) });
    await b.join("main", { since: 0, onevent: (f) => eventsB.push(f.event) });
    const accepted = await a.send("main", "/confirm 6*7");
    const [pendingA] = await pendingOf(a, "main", "a's pending approval");
    const [pendingB] = await pendingOf(b, "main", "b's pending approval");
    const asked = { a: approvalOf(pendingA), b: approvalOf(pendingB) };
    const runWhileWaiting = a.thread("main").runs.get(accepted.run_id).status;
    const notBoolean = await outcome(a.decide("main", pendingA.runId, pendingA.callId, "true"));
    const approved = await within(a.decide("main", pendingA.runId, pendingA.callId, true), "ok");
    const runA = a.thread("main").runs.get(accepted.run_id);
    const runB = b.thread("main").runs.get(accepted.run_id);
    await until(() => runA.done && runB.done, "both runs' ends");
    const tooLate = await outcome(b.decide("main", pendingB.runId, pendingB.callId, false, "too late"));
    const decided = { a: approvalOf(runA.approvals.get(pendingA.callId)),
                      b: approvalOf(runB.approvals.get(pendingB.callId)) };

    await a.join("deny", { since: 0 });
    const denial = await a.send("deny", "/confirm 6*7");
    const [toDeny] = await pendingOf(a, "deny", "the approval to deny");
    const denied = await within(a.decide("deny", toDeny.runId, toDeny.callId, false, "not today"), "ok");
    const deniedRun = a.thread("deny").runs.get(denial.run_id);
    await until(() => deniedRun.done, "the denied run's end");

    await a.join("cancel", { since: 0 });  // a waiting run cancelled: its approval needs no decision
    const cancelling = await a.send("cancel", "/confirm 1+1");
    const [toCancel] = await pendingOf(a, "cancel", "the approval of the run to cancel");
    await within(a.cancel("cancel"), "cancel's ok");
    const cancelledRun = a.thread("cancel").runs.get(cancelling.run_id);
    await until(() => cancelledRun.done, "the cancelled run's end");
    const afterCancel = await outcome(a.decide("cancel", toCancel.runId, toCancel.callId, true));
    const report = {
      accepted, asked, runWhileWaiting, notBoolean, approved, tooLate, decided,
      answers: { a: [runA.status, runA.text], b: [runB.status, runB.text] },
      tools: [...runA.tools.values()], eventsA, eventsB,
      pendingAfter: [a.thread("main").pendingApprovals.length, b.thread("main").pendingApprovals.length],
      decideFrames: decideFrames(connections),
      denied, deniedApproval: approvalOf(deniedRun.approvals.get(toDeny.callId)),
      deniedAnswer: [deniedRun.status, deniedRun.text], deniedTools: [...deniedRun.tools.values()],
      cancelled: { status: cancelledRun.status, approval: approvalOf(toCancel), decide: afterCancel,
                   pending: a.thread("cancel").pendingApprovals.length },
    };
    a.close();
    b.close();
    return report;
  },

  // The client is away (the relay refuses it) when a run asks approval: joined again with
  // since, the replay rebuilds the pending approval. Its decide is written, the server stores
  // it, and the connection is lost before the answer (the relay holds it, then drops it with
  // the cut): the decide rejects "disconnected" and is not written again; the replay after the
  // reconnect shows it decided and the answer 42.
  async approvalReconnect() {
    const writer = await directClient("main");
    await exchange(writer.client, writer.events, "main", "hello");  // seq 1-4
    const { relay, connections, states, client } = await relayedClient();
    await client.join("main", { since: 0 });
    await until(() => client.thread("main").lastSeq === 4, "the first exchange");
    relay.refuse(true);
    relay.cut();
    await until(() => states.includes("reconnecting"), "the client away");
    const { run_id: runId } = await writer.client.send("main", "/confirm 6*7");
    await until(() => writer.events.some((f) => f.event === "approval_requested"), "asked while away");
    const pendingWhileAway = client.thread("main").pendingApprovals.length;
    relay.refuse(false);
    const [rebuilt] = await pendingOf(client, "main", "the approval rebuilt by the replay");
    const rebuiltApproval = approvalOf(rebuilt);
    relay.hold();
    const deciding = outcome(client.decide("main", rebuilt.runId, rebuilt.callId, true));
    await until(() => relay.heldText().includes('"event":"approval_decided"'),
                "the decision stored, its answer held by the relay");
    relay.cut();
    relay.drop();
    const lost = await within(deciding, "the decide's end");
    const run = client.thread("main").runs.get(runId);
    await until(() => run.done, "the run's end after the reconnect");
    await within(client.ping(), "pong");
    const report = {
      runId, pendingWhileAway, rebuilt: rebuiltApproval, lost, joins: joinsOf(connections),
      decideFrames: decideFrames(connections).length, states,
      approval: approvalOf(run.approvals.get(rebuilt.callId)), answer: [run.status, run.text],
      pendingAfter: client.thread("main").pendingApprovals.length,
      writerAnswer: writer.events.find((f) => f.run_id === runId && f.event === "agent_completed")?.data.text,
    };
    client.close();
    writer.client.close();
    relay.close();
    return report;
  },

  // The conversation tree (PROTOCOL.md 1.1) built by the client from the events of one thread
  // made of: a message, a follow-up, an edit of the follow-up (a sibling), a regenerate of the
  // edit, a message under the edit's first answer, a second root. Also: the frames written (a
  // send without `parent` has none: a 1.0 server sees a 1.0 frame), a regenerate retried with
  // its client_msg_id (one run), not_found for an unknown message and an unknown parent.
  async tree() {
    const connections = [];
    const client = connect({ url, token, WebSocket: recordingSocket(connections),
                             onerror: (e) => console.error("onerror", e.code, e.message) });
    const events = [];
    await client.join("t", { since: 0, onevent: (f) => events.push(f) });
    const done = (accepted, what) => doneIn(client, "t", accepted.run_id, what);
    const one = await client.send("t", "one");
    await done(one, "one");
    const two = await client.send("t", "two");  // follows the newest run: one's
    await done(two, "two");
    const twoB = await client.send("t", "two b", { parent: one.run_id });  // an edit of two
    await done(twoB, "two b");
    const again = await client.regenerate("t", twoB.message_id, { clientMsgId: "again-1" });
    const againRetry = await client.regenerate("t", twoB.message_id, { clientMsgId: "again-1" });
    await done(again, "two b again");
    const three = await client.send("t", "three", { parent: twoB.run_id });  // under the first answer
    await done(three, "three");
    const root = await client.send("t", "root two", { parent: null });
    await done(root, "root two");
    const notFound = await outcome(client.regenerate("t", "no-such-message"));
    const badParent = await outcome(client.send("t", "orphan", { parent: "no-such-run" }));
    await within(client.ping(), "pong");
    const tree = client.tree("t");
    const runIdOf = (run) => run.id;
    const report = {
      accepted: { one, two, twoB, again, againRetry, three, root },
      tree: treeOf(tree),
      same: tree === client.thread("t").tree,
      branchDefault: branchOf(tree.branch()),
      branchOne: branchOf(tree.branch((f) => (f.kind === "message" && f.parent === null ? one.message_id : undefined))),
      branchOneAgain: branchOf(tree.branch((f) => (f.kind === "message" && f.parent === null ? one.message_id
                                                   : f.kind === "answer" ? again.run_id : undefined))),
      branchTwo: branchOf(tree.branch((f) => (f.kind === "message" ? (f.parent === null ? one.message_id : two.message_id)
                                              : undefined))),
      branchUnknownChoice: branchOf(tree.branch(() => "nothing-of-the-kind")),
      pathThree: branchOf(tree.path(three.run_id)),
      pathUnknown: tree.path("no-such-run"),
      siblings: tree.siblings(twoB.message_id).map((m) => m.id),
      answerSiblings: tree.answerSiblings(again.run_id).map(runIdOf),
      children: tree.children(one.run_id).map((m) => m.id),
      answers: tree.answers(twoB.message_id).map(runIdOf),
      eventsAsked: events.filter((f) => f.event === "answer_requested").map((f) => ({ seq: f.seq, run_id: f.run_id, data: f.data })),
      startedOfAgain: events.find((f) => f.event === "agent_started" && f.run_id === again.run_id)?.data ?? null,
      userMessages: events.filter((f) => f.event === "user_message").map((f) => f.data),
      seqs: events.map((f) => f.seq),
      notFound, badParent,
      frames: connections.flat().filter((f) => f.type === "send" || f.type === "regenerate"),
    };
    client.close();
    return report;
  },

  // The tree across a reconnect: a client joined from 0 behind a relay is cut off (refused)
  // while another client edits, regenerates and follows up; it asks a regenerate of its own
  // while away (written once the connection is back, after its join). Joined again with
  // `since`, its tree goes on growing from the replay, each event once: it ends equal to the
  // writer's and to a third client's that joined from 0 at the end.
  async treeResume() {
    const writer = await directClient("r");
    const first = await writer.client.send("r", "first");
    await doneIn(writer.client, "r", first.run_id, "first");
    const second = await writer.client.send("r", "second");
    await doneIn(writer.client, "r", second.run_id, "second");
    const { relay, connections, states, client } = await relayedClient();
    const seqs = [];
    const resets = [];
    await client.join("r", { since: 0, onevent: (f) => seqs.push(f.seq), onreset: (reason) => resets.push(reason) });
    await until(() => client.thread("r").lastSeq === 8, "the first two exchanges");
    const before = treeOf(client.tree("r"));
    relay.refuse(true);
    relay.cut();
    await until(() => states.includes("reconnecting"), "the client away");
    const edit = await writer.client.send("r", "second, edited", { parent: first.run_id });
    await doneIn(writer.client, "r", edit.run_id, "the edit");
    const regen = await writer.client.regenerate("r", first.message_id);
    await doneIn(writer.client, "r", regen.run_id, "the regenerate");
    const follow = await writer.client.send("r", "after the edit", { parent: edit.run_id });
    await doneIn(writer.client, "r", follow.run_id, "the follow-up");
    const awayRegenerate = client.regenerate("r", second.message_id, { clientMsgId: "away-1" });
    relay.refuse(false);
    const mine = await within(awayRegenerate, "the regenerate asked while away");
    await doneIn(client, "r", mine.run_id, "its answer");
    await doneIn(writer.client, "r", mine.run_id, "its answer, for the writer");
    await within(client.ping(), "pong");
    const fresh = await directClient("r");
    await until(() => fresh.client.thread("r").lastSeq === writer.client.thread("r").lastSeq, "the fresh copy");
    const report = {
      before, resets, seqs, states, joins: joinsOf(connections),
      regenerateFrames: connections.flat().filter((f) => f.type === "regenerate").length,
      ids: { first, second, edit, regen, follow, mine },
      resumed: treeOf(client.tree("r")),
      writer: treeOf(writer.client.tree("r")),
      fresh: treeOf(fresh.client.tree("r")),
      branch: branchOf(client.tree("r").branch()),
      lastSeq: client.thread("r").lastSeq,
    };
    for (const c of [client, writer.client, fresh.client]) c.close();
    relay.close();
    return report;
  },

  // The client's tree against the server's own reading of it (GET /v1/threads/{id}/turns): for
  // every run, the message it answers, that message's parent, and both sibling positions.
  async treeVersusTurns() {
    const { client } = await directClient("h");
    const done = (a, what) => doneIn(client, "h", a.run_id, what);
    const a = await client.send("h", "a");
    await done(a, "a");
    const b = await client.send("h", "b");
    await done(b, "b");
    const b2 = await client.send("h", "b2", { parent: a.run_id });
    await done(b2, "b2");
    const b3 = await client.send("h", "b3", { parent: a.run_id });
    await done(b3, "b3");
    const b2again = await client.regenerate("h", b2.message_id);
    await done(b2again, "b2 again");
    const c = await client.send("h", "c", { parent: b2.run_id });
    await done(c, "c");
    const r2 = await client.send("h", "r2", { parent: null });
    await done(r2, "r2");
    const tree = client.tree("h");
    const mine = [...tree.runs.values()].sort((x, y) => x.seq - y.seq).map((run) => {
      const message = tree.messages.get(run.messageId);
      const siblings = tree.siblings(message.id);
      return {
        run_id: run.id, message_id: message.id, parent: message.parent, seq: run.seq,
        message_seq: message.seq, text: message.text, answer: run.text, outcome: run.status,
        sibling_index: siblings.indexOf(message), sibling_count: siblings.length,
        answer_index: message.answers.indexOf(run), answer_count: message.answers.length,
      };
    });
    const served = await httpGet("/v1/threads/h/turns?after=0&limit=1000");
    client.close();
    return { mine, served };
  },

  // Attachments (PROTOCOL.md 1.1): a PNG (arg: its bytes in base64) and a text file uploaded
  // (their progress, their records), refusals (an HTML file declared image/png, a type not
  // allowed, a body over 20 MiB) with the server's code and message, a send naming both (the
  // frame written, the user_message's attachments in the client's state, the echo's answer),
  // the bytes downloaded again as Blobs, another client of the user seeing the message from a
  // replay, and another user (process.argv[6]: their token) refused the download and the send.
  async attachments() {
    const otherToken = process.argv[6];
    const connections = [];
    const client = connect({ url, token, WebSocket: recordingSocket(connections),
                             onerror: (e) => console.error("onerror", e.code, e.message) });
    const events = [];
    await client.join("att", { since: 0, onevent: (f) => events.push(f) });
    const pngBytes = Buffer.from(arg, "base64");
    const progress = { png: [], text: [] };
    const png = await client.upload(new Blob([pngBytes], { type: "image/png" }), {
      name: "dot.png", onProgress: (p) => progress.png.push(p) });
    const textBytes = new TextEncoder().encode("a,b\n1,2\n");
    const text = await client.upload(new File([textBytes], "table.csv", { type: "text/csv" }), {
      onProgress: (p) => progress.text.push(p) });
    const errorOf = (e) => ({ name: e.name, code: e.code, status: e.status, message: e.message,
                              frame: e.frame });
    const refusal = async (promise) => { try { return { resolved: await promise }; } catch (e) { return errorOf(e); } };
    const disguised = await refusal(client.upload(
      new Blob(["<!doctype html><script>alert(1)</script>"], { type: "image/png" }), { name: "evil.png" }));
    const exe = await refusal(client.upload(
      new Blob([new Uint8Array([0x4d, 0x5a, 0x90, 0])], { type: "application/x-msdownload" }), { name: "run.exe" }));
    const tooLarge = await refusal(client.upload(
      new Blob([new Uint8Array(20 * 1024 * 1024 + 1)], { type: "text/plain" }), { name: "big.txt" }));
    const notBlob = await refusal(client.upload("just a string"));
    const aborter = new AbortController();
    aborter.abort();
    const abortedUpload = await refusal(client.upload(new Blob(["x"], { type: "text/plain" }), { signal: aborter.signal }));

    const accepted = await client.send("att", "look at these", { attachments: [png, text.attachment_id] });
    const run = await doneIn(client, "att", accepted.run_id, "the answer with attachments");
    const message = client.tree("att").messages.get(accepted.message_id);
    const plain = await client.send("att", "no files", { attachments: [] });
    await doneIn(client, "att", plain.run_id, "the answer without attachments");
    const badType = await refusal(client.send("att", "x", { attachments: "nope" }));

    const downloaded = await client.download(png.attachment_id);
    const downloadedText = await client.download(text.attachment_id);
    const missing = await refusal(client.download("no-such-attachment"));

    const other = connect({ url, token: otherToken, onerror: (e) => console.error("onerror", e.code, e.message) });
    await other.join("att", { since: 0 });
    const otherDownload = await refusal(other.download(png.attachment_id));
    const otherSend = await refusal(other.send("att", "mine now", { attachments: [png.attachment_id] }));
    other.close();

    const replay = await directClient("att");
    await until(() => replay.client.tree("att").messages.has(accepted.message_id), "the replayed message");
    const replayed = replay.client.tree("att").messages.get(accepted.message_id);
    const report = {
      png, text, progress, disguised, exe, tooLarge, notBlob, abortedUpload, badType,
      accepted, frames: connections.flat().filter((f) => f.type === "send"),
      userMessage: events.find((f) => f.event === "user_message" && f.data.message_id === accepted.message_id)?.data,
      messageAttachments: message.attachments, runMessage: run.message,
      answer: [run.status, run.text],
      plainAttachments: client.tree("att").messages.get(plain.message_id).attachments,
      plainUserMessage: events.find((f) => f.event === "user_message" && f.data.message_id === plain.message_id)?.data,
      downloaded: { type: downloaded.type, base64: Buffer.from(await downloaded.arrayBuffer()).toString("base64") },
      downloadedText: { type: downloadedText.type, text: await downloadedText.text() },
      missing, otherDownload, otherSend,
      attachmentUrl: client.attachmentUrl(png.attachment_id),
      replayed: replayed.attachments,
    };
    client.close();
    replay.client.close();
    return report;
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
