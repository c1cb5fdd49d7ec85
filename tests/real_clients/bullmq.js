// A BullMQ queue and worker (ioredis underneath) through the proxy, as a Node application runs
// them: a job added every few milliseconds for at least SECONDS, a worker of concurrency 4 that
// completes them (BullMQ moves jobs with Lua scripts and waits for them with BZPOPMIN), then a
// wait for every job. Usage: NODE_PATH=target/bullmq/node_modules node bullmq.js PORT JOBS
// SECONDS. Prints one JSON line: sent, done, lost, errors.
const { Queue, Worker } = require("bullmq");

const [port, jobs, seconds] = process.argv.slice(2).map(Number);
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const name = `proxytest-${port}`;
const errors = [];
const note = (what) => (e) => errors.push(`${what}: ${e && e.message ? e.message : e}`);

async function main() {
  const queue = new Queue(name, { connection });
  queue.on("error", note("queue"));
  const done = new Set();
  const worker = new Worker(name, async (job) => job.data.i * 2, { connection, concurrency: 4 });
  worker.on("error", note("worker"));
  worker.on("failed", (job, e) => note(`job ${job && job.data.i}`)(e));
  worker.on("completed", (job, value) => {
    if (value === job.data.i * 2) done.add(job.data.i);
    else errors.push(`job ${job.data.i}: wrong result ${value}`);
  });
  await worker.waitUntilReady();
  const until = Date.now() + seconds * 1000;
  let sent = 0;
  while (sent < jobs || Date.now() < until) {
    try {
      await queue.add("double", { i: sent }, { removeOnComplete: true });
    } catch (e) {
      note(`add ${sent}`)(e);
    }
    sent += 1;
    await new Promise((r) => setTimeout(r, 5));
  }
  const deadline = Date.now() + 60000;
  while (done.size < sent && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
  }
  await worker.close();
  await queue.close();
  const lost = sent - done.size;
  console.log(JSON.stringify({ sent, done: done.size, lost, errors: errors.slice(0, 5), error_count: errors.length }));
}

main().then(
  () => process.exit(0),
  (e) => {
    console.log(JSON.stringify({ fatal: String(e && e.stack ? e.stack : e) }));
    process.exit(1);
  },
);
