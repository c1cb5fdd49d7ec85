// ioredis's Sentinel support pointed at the proxy's Sentinel face, as a Node application
// configured for Sentinel runs it: `sentinels: [...]`, `name`, then an INCR every few
// milliseconds until STOP_FILE exists. Usage: NODE_PATH=target/bullmq/node_modules node
// ioredis.js FACE_PORT STOP_FILE. Prints one JSON line: the INCRs acknowledged, the errors.
const fs = require("fs");
const Redis = require("ioredis");

const [face, stop] = [Number(process.argv[2]), process.argv[3]];
const errors = [];
const redis = new Redis({ sentinels: [{ host: "127.0.0.1", port: face }], name: "mymaster" });
redis.on("error", (e) => errors.push(`connection: ${e.message}`));

async function main() {
  let acked = 0;
  let last = 0;
  while (!fs.existsSync(stop)) {
    try {
      const value = await redis.incr("face:ioredis");
      if (value <= last) errors.push(`INCR went back: ${value} after ${last}`);
      last = value;
      acked += 1;
    } catch (e) {
      errors.push(`${e.name}: ${e.message}`);
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await redis.quit();
  console.log(JSON.stringify({ acked, last, errors: errors.slice(0, 5), error_count: errors.length }));
}

main().catch((e) => {
  console.log(JSON.stringify({ acked: 0, errors: [String(e)], error_count: 1 }));
  process.exit(1);
});
