// Reads `count` messages of `topic` from the beginning with kafkajs (the client n8n's Kafka
// trigger uses; it has no lz4 codec unless one is registered) and prints each value on a line.
// Exits 1 with the client's error when it cannot read them (for example an lz4 batch), 2 when
// fewer arrive within the timeout.
//
//   node read-json-alerts.mjs <bootstrap> <topic> <count> [timeout_ms]
import { Kafka, logLevel } from "kafkajs";

const [bootstrap, topic, countText, timeoutText] = process.argv.slice(2);
const count = Number(countText);
const kafka = new Kafka({ clientId: "abm-node-test", brokers: bootstrap.split(","), logLevel: logLevel.NOTHING });
const consumer = kafka.consumer({ groupId: `abm-node-test-${process.pid}-${Date.now()}` });
const seen = [];
let failure = null;
const timer = setTimeout(() => finish(2, `only ${seen.length} of ${count} messages within the timeout`), Number(timeoutText ?? 30000));

let finishing = false;
async function finish(code, message) {
  if (finishing) return;
  finishing = true;
  clearTimeout(timer);
  if (message) console.error(message);
  // A consumer that crashed may not disconnect: leave after 2 s whatever it does.
  setTimeout(() => process.exit(code), 2000).unref();
  try { await consumer.disconnect(); } catch (_) { /* leaving anyway */ }
  process.exit(code);
}

consumer.on(consumer.events.CRASH, (event) => { failure = event.payload.error; finish(1, `kafkajs: ${failure}`); });
try {
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message }) => {
      seen.push(message.value.toString("utf8"));
      if (seen.length >= count) {
        for (const line of seen) console.log(line);
        await finish(0);
      }
    },
  });
} catch (error) {
  await finish(1, `kafkajs: ${error}`);
}
