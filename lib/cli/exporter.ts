/**
 * `node-ksm exporter`: serves this host's KSM metrics at /metrics for Prometheus. Every
 * host of a fleet runs one; Prometheus aggregates (deploy/prometheus/ has the rules,
 * deploy/grafana/ the dashboard, deploy/systemd/ the unit). Loopback only unless --host
 * says otherwise: the figures tell other tenants what this machine holds.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type * as PromClient from 'prom-client';
import type * as KsmPrometheus from '../prometheus';
import { KsmError } from '../errors';

function loadPromClient(): { prom: typeof PromClient; ksm: typeof KsmPrometheus } {
  try {
    // Loaded only here, so the other commands work without the optional peer dependency.
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a lazy, synchronous load is the point
    return { prom: require('prom-client') as typeof PromClient, ksm: require('../prometheus') as typeof KsmPrometheus };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') {
      throw new KsmError(
        'The exporter needs prom-client, an optional peer dependency: npm install prom-client',
        'ERR_KSM_UNSUPPORTED',
      );
    }
    throw err;
  }
}

export async function startExporter(
  host: string,
  port: number,
): Promise<{ server: http.Server; url: string; address: AddressInfo }> {
  const { prom, ksm } = loadPromClient();
  const registry = new prom.Registry();
  // The exporter's own process figures would describe the exporter, not the host; what
  // the host's processes save is exported per group (command and cgroup) instead.
  ksm.collectKsmMetrics(registry, { process: false, groups: true });
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
    } else if (path === '/metrics') {
      registry.metrics().then(
        (text) =>
          res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`),
      );
    } else if (path === '/') {
      res
        .writeHead(200, { 'content-type': 'text/html' })
        .end('<html><body><h1>node-ksm exporter</h1><a href="/metrics">/metrics</a></body></html>\n');
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not found: try /metrics\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        err.code === 'EADDRINUSE'
          ? new KsmError(`Port ${port} on ${host} is in use: pick another with --port`, 'EADDRINUSE')
          : err.code === 'EACCES'
            ? new KsmError(`Not allowed to listen on port ${port}: use a port above 1023 or run as root`, 'EACCES')
            : new KsmError(`Cannot listen on ${host}:${port}: ${err.message}`, err.code ?? 'EIO'),
      ),
    );
    server.listen(port, host, resolve);
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return { server, address, url: `http://${shown}:${address.port}/metrics` };
}
