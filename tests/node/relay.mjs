// A loopback TCP relay in front of a server whose connections a test can cut at once (each
// socket destroyed with a TCP reset), as a network that drops does. It can also refuse new
// connections for a while (a network that stays down), and hold what the server sends, then
// hand it over in one write (the frames the server wrote apart reach the client in one read) or
// drop it (the server's answer lost with the connection).
import net from "node:net";

export async function openRelay(targetPort) {
  const pairs = new Set();
  let refusing = false;
  let holding = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.on("error", () => {});
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = { sockets: [client, upstream], held: [] };
    pairs.add(pair);
    for (const socket of pair.sockets) {
      socket.on("error", () => {});
      socket.on("close", () => { pairs.delete(pair); client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.on("data", (chunk) => { if (holding) pair.held.push(chunk); else client.write(chunk); });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      const count = pairs.size;
      for (const pair of pairs) for (const socket of pair.sockets) socket.resetAndDestroy();
      return count;
    },
    /** While refusing, a new connection is reset as soon as it is accepted. */
    refuse(on) { refusing = on; },
    /** Keep what the server sends from now on, until release(). */
    hold() { holding = true; },
    /** What is held, as text (a server's WebSocket frames are not masked). */
    heldText() {
      return [...pairs].map((pair) => Buffer.concat(pair.held).toString("latin1")).join("");
    },
    /** Write what each connection held to its client in one write, and hold no more. */
    release() {
      holding = false;
      for (const pair of pairs) {
        if (pair.held.length > 0) pair.sockets[0].write(Buffer.concat(pair.held));
        pair.held = [];
      }
    },
    /** Throw away what is held, and hold no more (after a cut: what the server wrote to the
     * connections cut never reaches a client). */
    drop() {
      holding = false;
      for (const pair of pairs) pair.held = [];
    },
    close() { this.cut(); server.close(); },
  };
}
