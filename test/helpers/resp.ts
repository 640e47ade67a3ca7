/**
 * A RESP2/RESP3 client that keeps every reply's wire type, for tests that compare two
 * servers reply by reply (the differential test) or check exact framing.
 */
import net from 'node:net';

/** One reply, as sent: its RESP type byte and its payload. */
export type Reply =
  | { t: '+' | '-' | ':' | ',' | '(' | '#'; v: string }
  | { t: '$' | '='; v: Buffer | null }
  | { t: '*' | '~' | '>'; v: Reply[] | null }
  | { t: '%'; v: [Reply, Reply][] }
  | { t: '_' };

/** Parses one reply at `at`; undefined when the buffer does not hold all of it yet. */
export function parseReply(buf: Buffer, at: number): { reply: Reply; end: number } | undefined {
  const cr = buf.indexOf('\r\n', at);
  if (cr < 0) return undefined;
  const type = String.fromCharCode(buf[at]!);
  const line = buf.toString('latin1', at + 1, cr);
  const next = cr + 2;
  switch (type) {
    case '+':
    case '-':
    case ':':
    case ',':
    case '(':
    case '#':
      return { reply: { t: type, v: line }, end: next };
    case '_':
      return { reply: { t: '_' }, end: next };
    case '$':
    case '=': {
      const n = Number(line);
      if (n < 0) return { reply: { t: type, v: null }, end: next };
      if (buf.length < next + n + 2) return undefined;
      return { reply: { t: type, v: buf.subarray(next, next + n) }, end: next + n + 2 };
    }
    case '*':
    case '~':
    case '>':
    case '%': {
      const n = Number(line);
      if (n < 0) return { reply: { t: type === '%' ? '*' : type, v: null }, end: next };
      const items: Reply[] = [];
      let p = next;
      for (let i = 0; i < (type === '%' ? 2 * n : n); i++) {
        const r = parseReply(buf, p);
        if (r === undefined) return undefined;
        items.push(r.reply);
        p = r.end;
      }
      if (type === '%') {
        const pairs: [Reply, Reply][] = [];
        for (let i = 0; i < items.length; i += 2) pairs.push([items[i]!, items[i + 1]!]);
        return { reply: { t: '%', v: pairs }, end: p };
      }
      return { reply: { t: type, v: items }, end: p };
    }
    default:
      throw new Error(
        `unexpected RESP type byte ${JSON.stringify(type)} in ${JSON.stringify(buf.toString('latin1', at, at + 80))}`,
      );
  }
}

/** A readable, exact rendering of a reply (types kept), for comparisons and messages. */
export function render(r: Reply): string {
  switch (r.t) {
    case '_':
      return '_';
    case '$':
    case '=':
      return r.v === null ? `${r.t}nil` : `${r.t}${JSON.stringify(r.v.toString('latin1'))}`;
    case '*':
    case '~':
    case '>':
      return r.v === null ? `${r.t}nil` : `${r.t}[${r.v.map(render).join(', ')}]`;
    case '%':
      return `%{${r.v.map(([k, v]) => `${render(k)}: ${render(v)}`).join(', ')}}`;
    case '+':
    case '-':
    case ':':
    case ',':
    case '(':
    case '#':
      return `${r.t}${r.v}`;
  }
}

/** Encodes a command as a RESP multibulk. */
export function encodeCommand(args: (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === 'string' ? Buffer.from(a, 'latin1') : a;
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'));
  }
  return Buffer.concat(parts);
}

/** A connection that sends commands and takes their replies in order. */
export class RespConnection {
  readonly socket: net.Socket;
  #buf: Buffer = Buffer.alloc(0);
  #waiters: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  #closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
      for (;;) {
        const r = parseReply(this.#buf, 0);
        if (r === undefined) break;
        this.#buf = this.#buf.subarray(r.end);
        const w = this.#waiters.shift();
        if (w === undefined) throw new Error(`unsolicited reply ${render(r.reply)}`);
        w.resolve(r.reply);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.#closed = true;
      for (const w of this.#waiters.splice(0)) w.reject(new Error('connection closed'));
    });
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RespConnection> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, host);
      s.once('connect', () => {
        s.off('error', reject);
        resolve(new RespConnection(s));
      });
      s.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends one command and resolves with its reply (rejects if the connection closes first). */
  command(args: (string | Buffer)[], timeoutMs = 10_000): Promise<Reply> {
    return this.pipeline([args], timeoutMs).then((r) => r[0]!);
  }

  /** Sends commands in one write and resolves with their replies. */
  pipeline(cmds: (string | Buffer)[][], timeoutMs = 10_000): Promise<Reply[]> {
    if (this.#closed) return Promise.reject(new Error('connection closed'));
    const replies = cmds.map(
      () =>
        new Promise<Reply>((resolve, reject) => {
          this.#waiters.push({ resolve, reject });
        }),
    );
    this.socket.write(Buffer.concat(cmds.map(encodeCommand)));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no reply within ${timeoutMs} ms`)), timeoutMs);
    });
    return Promise.race([Promise.all(replies), timeout]).finally(() => clearTimeout(timer));
  }

  close(): void {
    this.socket.destroy();
  }
}
