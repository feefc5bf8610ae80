// Publish throughput of the client with its window: N single-event publishes from one
// tight loop (each awaits a window slot), three runs, median. Not a test: run by hand.
//   node --experimental-websocket bench/publish.js [events] [window]
// Starts its own server (SWITCHYARD_BIN, default target/debug/switchyard).

import { Client } from "../src/index.js";
import { Server } from "../test/server.js";

const total = Number(process.argv[2] || 20000);
const windowSize = Number(process.argv[3] || 64);
const server = await Server.start();
const rates = [];
try {
  for (let run = 0; run < 3; run++) {
    const c = new Client({ url: server.url, publishWindow: windowSize });
    await c.connected();
    const started = performance.now();
    const inFlight = [];
    for (let i = 0; i < total; i++) {
      inFlight.push(c.publish({ topic: "bench.tick", payload: { i } }));
      if (inFlight.length >= windowSize * 4) await inFlight.shift();
    }
    await Promise.all(inFlight);
    const rate = total / ((performance.now() - started) / 1000);
    rates.push(rate);
    console.log(`run ${run + 1}: ${Math.round(rate)} events/s`);
    c.close();
  }
  rates.sort((a, b) => a - b);
  console.log(`median of 3: ${Math.round(rates[1])} events/s (${total} events, window ${windowSize})`);
} finally {
  await server.close();
}
