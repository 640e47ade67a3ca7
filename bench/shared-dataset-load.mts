// Load for bench/shared-dataset.mts: GET /item/:id at random ids over keep-alive
// connections for a fixed time, in a process of its own so that neither side of the
// comparison shares a heap or an event loop with the other. Prints {requests, rps}.
//
//   node --import tsx bench/shared-dataset-load.mts --port P --records R [--seconds 5] [--connections 16] [--warmup 1]
import http from 'node:http';
import { parseArgs } from 'node:util';
import { expectedItem, type Item } from '../examples/shared-dataset/dataset.mjs';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    records: { type: 'string' },
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '16' },
    warmup: { type: 'string', default: '1' },
  },
});
const port = Number(values.port);
const records = Number(values.records);
const connections = Number(values.connections);
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });

function get(id: number): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: `/item/${id}`, agent }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(chunks) : reject(new Error(`HTTP ${res.statusCode} for item ${id}`)),
        );
      })
      .on('error', reject);
  });
}

let x = 0x2545f491;
const nextId = () => {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return (x >>> 0) % records;
};

// One correct answer first: a fast wrong answer would make a fine figure.
const probe = nextId();
const got = JSON.parse(Buffer.concat(await get(probe)).toString()) as Item;
const want = expectedItem(probe);
if (got.id !== want.id || got.features.join() !== want.features.join())
  throw new Error(`wrong answer for item ${probe}`);

let counting = false;
let requests = 0;
let running = true;
const loop = async () => {
  while (running) {
    await get(nextId());
    if (counting) requests++;
  }
};
const loops = Array.from({ length: connections }, loop);
await new Promise((r) => setTimeout(r, Number(values.warmup) * 1000));
counting = true;
const t0 = performance.now();
await new Promise((r) => setTimeout(r, Number(values.seconds) * 1000));
counting = false;
const seconds = (performance.now() - t0) / 1000;
running = false;
await Promise.all(loops);
agent.destroy();
process.stdout.write(JSON.stringify({ requests, seconds, rps: requests / seconds }));
