// A loopback TCP relay in front of a server whose connections a test can cut at once (each
// socket destroyed with a TCP reset), as a network that drops does.
import net from "node:net";

export async function openRelay(targetPort) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair = [client, upstream];
    pairs.add(pair);
    for (const socket of pair) {
      socket.on("error", () => {});
      socket.on("close", () => { pairs.delete(pair); client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      const count = pairs.size;
      for (const pair of pairs) for (const socket of pair) socket.resetAndDestroy();
      return count;
    },
    close() { this.cut(); server.close(); },
  };
}
