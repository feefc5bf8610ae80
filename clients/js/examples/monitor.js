// A monitor: follows events matching a pattern (and a CEL condition), printing one line
// each: what is stored first, then live; reconnects and resumes by itself.
//   node --experimental-websocket examples/monitor.js 'task.>' 'priority != "low"'
// SWITCHYARD_URL (default ws://127.0.0.1:9090/ws) and SWITCHYARD_TOKEN as for the CLI.

import { Client } from "../src/index.js";

const [pattern = ">", condition] = process.argv.slice(2);
const client = new Client({
  url: process.env.SWITCHYARD_URL || "ws://127.0.0.1:9090/ws",
  token: process.env.SWITCHYARD_TOKEN,
  onState: ({ state, delayMs }) =>
    console.error(state === "reconnecting" ? `reconnecting in ${delayMs} ms` : state),
});
const sub = await client.subscribe({ patterns: [pattern], condition, fromCursor: 0 });
for await (const event of sub.events()) {
  const time = event.timestamp.slice(11, 23);
  console.log(`${time} ${event.priority.padEnd(8)} ${event.topic} #${event.cursor} ${JSON.stringify(event.payload)}`);
}
