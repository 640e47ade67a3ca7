// RESP2: an incremental request parser over Buffers and a reply writer.
//
// The parser never concatenates per byte and never holds more than one incomplete frame:
// complete arguments are subarrays of the chunk they arrived in, and a large bulk (the
// value of a SET, typically) is copied once, as it arrives, into a buffer allocated for
// it up front -- from the node-ksm Arena when it is large enough to live there, so a
// stored value costs exactly one copy from the socket and no garbage.
import type { Socket } from 'node:net';

/** Limits from Redis (server.h / networking.c). */
export const PROTO_INLINE_MAX_SIZE = 64 * 1024;
export const PROTO_MBULK_MAX = 1024 * 1024;
/** Before AUTH, Redis accepts only tiny frames, so an anonymous peer cannot make it allocate. */
const UNAUTH_MBULK_MAX = 10;
const UNAUTH_BULK_MAX = 16384;
/** Bulks at least this large are streamed into their own buffer instead of waiting to be contiguous. */
export const STREAM_MIN = 16 * 1024;

export class ProtocolError extends Error {}

/** What RespParser.fast() found: a plain `GET key` or `SET key value`. */
export const FAST_GET = 1;
export const FAST_SET = 2;

const CR = 13;
const LF = 10;
const EMPTY = Buffer.alloc(0);

/**
 * Redis's string2ll for protocol headers: optional '-', digits, no '+', no spaces.
 * Returns NaN for anything else (and for values beyond 2^53, far over every limit).
 */
function parseHeaderInt(buf: Buffer, from: number, to: number): number {
  if (from >= to) return NaN;
  let neg = false;
  let i = from;
  if (buf[i] === 45) {
    neg = true;
    i++;
    if (i === to) return NaN;
  }
  if (to - i > 15) return NaN;
  let n = 0;
  for (; i < to; i++) {
    const d = buf[i]! - 48;
    if (d < 0 || d > 9) return NaN;
    n = n * 10 + d;
  }
  return neg ? -n : n;
}

export interface RespParserOptions {
  /** proto-max-bulk-len */
  maxBulkLen: number;
  /**
   * Buffer for a bulk of at least STREAM_MIN bytes (or whatever the owner decides); the
   * owner learns which buffers these were via `large`.
   */
  allocLarge: (len: number) => Buffer;
}

export class RespParser {
  maxBulkLen: number;
  allocLarge: (len: number) => Buffer;
  authenticated = true;
  buf: Buffer = EMPTY;
  pos = 0;
  /** The command being assembled. */
  argv: Buffer[] | null = null;
  argc = 0;
  /** Length of the bulk whose payload is awaited, or -1 while its `$` header is. */
  bulkLen = -1;
  /** Streaming target of a large bulk. */
  target: Buffer | null = null;
  targetPos = 0;
  /** Bytes of CRLF still to skip after a streamed bulk. */
  skip = 0;
  /** Buffers from allocLarge handed out with commands and not yet claimed by the owner. */
  large: Buffer[] = [];
  /** Bytes of the arguments so far of the command being assembled (see `held`). */
  argvBytes = 0;
  /**
   * Set when allocLarge threw (the Arena's mmap failing with ENOMEM, say) for a bulk of the
   * command next() returns: the bulk's bytes were skipped and an empty argument stands in
   * for it, so the stream stays in step, and the owner answers that command with this
   * error instead of running it. The owner resets it to null.
   */
  failure: unknown = null;
  /** Byte ranges in buf of the key and value fast() found. */
  keyStart = 0;
  keyEnd = 0;
  valueStart = 0;
  valueEnd = 0;

  constructor({ maxBulkLen, allocLarge }: RespParserOptions) {
    this.maxBulkLen = maxBulkLen;
    this.allocLarge = allocLarge;
  }

  feed(chunk: Buffer): void {
    if (this.pos >= this.buf.length) this.buf = chunk;
    else this.buf = Buffer.concat([this.buf.subarray(this.pos), chunk]);
    this.pos = 0;
  }

  /**
   * Where the next socket read should land: the rest of the large bulk being streamed,
   * once everything received before it is parsed (so bytes stay in order), or null for
   * the reader's own buffer. Reading there saves the copy #stream() would make.
   */
  readTarget(): Buffer | null {
    return this.target !== null && this.pos >= this.buf.length ? this.target.subarray(this.targetPos) : null;
  }

  /** `n` bytes were read straight into readTarget(); next() completes the bulk. */
  filled(n: number): void {
    this.targetPos += n;
  }

  /**
   * `shared` (a read buffer fed in part) is about to be reused: copy what this parser still
   * holds of it -- the unparsed rest, and the arguments so far of a command not complete yet.
   */
  unshare(shared: Buffer): void {
    const ab = shared.buffer;
    if (this.buf.buffer === ab) {
      this.buf = this.pos < this.buf.length ? Buffer.from(this.buf.subarray(this.pos)) : EMPTY;
      this.pos = 0;
    }
    const argv = this.argv;
    if (argv !== null)
      for (let i = 0; i < argv.length; i++) if (argv[i]!.buffer === ab) argv[i] = Buffer.from(argv[i]!);
  }

  /** Bytes received and not yet parsed (an incomplete frame). */
  get pending(): number {
    return this.buf.length - this.pos + (this.target ? this.targetPos : 0);
  }

  /**
   * What this client's input holds in memory: bytes not yet parsed, plus the arguments
   * so far of a command not complete yet (a large bulk counted as far as it has arrived),
   * as Redis's client-query-buffer-limit counts its query buffer and parsed arguments.
   */
  get held(): number {
    return this.buf.length - this.pos + this.argvBytes + (this.target ? this.targetPos : 0);
  }

  /**
   * The next complete command, or null when more data is needed. Empty commands
   * (blank inline lines, `*0`) are skipped as Redis skips them.
   */
  next(): Buffer[] | null {
    if (this.argv === null && this.skip === 0) {
      const argv = this.#whole();
      if (argv !== undefined) return argv;
    }
    for (;;) {
      const buf = this.buf;
      if (this.skip > 0) {
        // The CRLF after a streamed bulk (not checked, as Redis does not check it).
        const k = Math.min(this.skip, buf.length - this.pos);
        this.pos += k;
        this.skip -= k;
        if (this.skip > 0) return null;
      }
      if (this.argv === null) {
        if (this.pos >= buf.length) return null;
        if (buf[this.pos] !== 42 /* '*' */) {
          const argv = this.#inline();
          if (argv === null) return null;
          if (argv.length > 0) return argv;
          continue;
        }
        const cr = buf.indexOf(CR, this.pos);
        if (cr < 0 || cr + 1 >= buf.length) {
          if (buf.length - this.pos > PROTO_INLINE_MAX_SIZE) throw new ProtocolError('too big mbulk count string');
          return null;
        }
        const n = parseHeaderInt(buf, this.pos + 1, cr);
        if (!(n <= (this.authenticated ? PROTO_MBULK_MAX : UNAUTH_MBULK_MAX))) {
          throw new ProtocolError(
            !this.authenticated && n > UNAUTH_MBULK_MAX
              ? 'unauthenticated multibulk length'
              : 'invalid multibulk length',
          );
        }
        this.pos = cr + 2;
        if (n <= 0) continue;
        this.argv = [];
        this.argc = n;
      }
      // Arguments of the multibulk in progress.
      const args = this.argv;
      while (args.length < this.argc) {
        if (this.target !== null) {
          if (!this.#stream()) return null;
          continue;
        }
        if (this.skip > 0) {
          const k = Math.min(this.skip, buf.length - this.pos);
          this.pos += k;
          this.skip -= k;
          if (this.skip > 0) return null;
        }
        if (this.bulkLen < 0) {
          if (this.pos >= buf.length) return null;
          const cr = buf.indexOf(CR, this.pos);
          if (cr < 0 || cr + 1 >= buf.length) {
            if (buf.length - this.pos > PROTO_INLINE_MAX_SIZE) throw new ProtocolError('too big bulk count string');
            return null;
          }
          if (buf[this.pos] !== 36 /* '$' */) {
            throw new ProtocolError(`expected '$', got '${String.fromCharCode(buf[this.pos]!)}'`);
          }
          const len = parseHeaderInt(buf, this.pos + 1, cr);
          if (!(len >= 0 && len <= this.maxBulkLen)) throw new ProtocolError('invalid bulk length');
          if (!this.authenticated && len > UNAUTH_BULK_MAX) throw new ProtocolError('unauthenticated bulk length');
          this.pos = cr + 2;
          this.bulkLen = len;
          if (len >= STREAM_MIN) {
            let target: Buffer;
            try {
              target = this.allocLarge(len);
            } catch (err) {
              // Skip the payload and its CRLF; the command is answered with the error.
              this.failure ??= err;
              this.skip = len + 2;
              this.bulkLen = -1;
              args.push(EMPTY);
              continue;
            }
            this.target = target;
            this.targetPos = 0;
            continue;
          }
        }
        if (buf.length - this.pos < this.bulkLen + 2) return null;
        args.push(buf.subarray(this.pos, this.pos + this.bulkLen));
        this.argvBytes += this.bulkLen;
        this.pos += this.bulkLen + 2;
        this.bulkLen = -1;
      }
      this.argv = null;
      this.argvBytes = 0;
      return args;
    }
  }

  /**
   * `GET key` or `SET key value` -- exactly that, the name in any letter case, small
   * arguments, the whole frame already received -- parsed without building an argument
   * list: most of a cache's traffic. Returns FAST_GET or FAST_SET with the key (and
   * value) as byte ranges of `buf` (keyStart..keyEnd, valueStart..valueEnd), or 0 with
   * nothing consumed, for next() to parse. Accepts only frames next() reads the same way.
   */
  fast(): number {
    if (this.argv !== null || this.skip !== 0 || !this.authenticated) return 0;
    const buf = this.buf;
    const end = buf.length;
    let p = this.pos;
    // *2\r\n$3\r\nGET\r\n or *3\r\n$3\r\nSET\r\n (CRLF after a bulk is skipped unchecked, as next() does)
    if (
      end - p < 16 ||
      buf[p] !== 42 ||
      buf[p + 2] !== CR ||
      buf[p + 4] !== 36 ||
      buf[p + 5] !== 51 ||
      buf[p + 6] !== CR
    )
      return 0;
    if ((buf[p + 9]! | 0x20) !== 0x65 || (buf[p + 10]! | 0x20) !== 0x74) return 0;
    const n = buf[p + 1];
    const c0 = buf[p + 8]! | 0x20;
    const kind = n === 50 && c0 === 0x67 ? FAST_GET : n === 51 && c0 === 0x73 ? FAST_SET : 0;
    if (kind === 0) return 0;
    p += 13;
    for (let arg = 0; arg < kind; arg++) {
      if (p >= end || buf[p] !== 36) return 0;
      let len = 0;
      let c = 0;
      const digits = ++p;
      for (; p < end && (c = buf[p]!) >= 48 && c <= 57; p++) {
        len = len * 10 + c - 48;
        if (len >= STREAM_MIN) return 0;
      }
      if (p === digits || c !== CR || p + 1 >= end) return 0;
      p += 2;
      if (end - p < len + 2) return 0;
      if (arg === 0) {
        this.keyStart = p;
        this.keyEnd = p + len;
      } else {
        this.valueStart = p;
        this.valueEnd = p + len;
      }
      p += len + 2;
    }
    this.pos = p;
    return kind;
  }

  /**
   * The common case on one pass with local variables: a whole multibulk of small
   * arguments (`*N` and `$len` headers of plain digits, every bulk below STREAM_MIN)
   * already in the buffer. Anything else -- incomplete, inline, large, malformed, over a
   * limit -- is left untouched (undefined) for the general parser below, which decides
   * exactly as before.
   */
  #whole(): Buffer[] | undefined {
    const buf = this.buf;
    const end = buf.length;
    let p = this.pos;
    if (p >= end || buf[p] !== 42 /* '*' */) return undefined;
    let n = 0;
    let c = 0;
    for (p++; p < end && (c = buf[p]!) >= 48 && c <= 57; p++) {
      n = n * 10 + c - 48;
      if (n > 1024) return undefined;
    }
    if (n === 0 || c !== CR || p + 1 >= end || (!this.authenticated && n > UNAUTH_MBULK_MAX)) return undefined;
    p += 2;
    const argv: Buffer[] = [];
    for (let i = 0; i < n; i++) {
      if (p >= end || buf[p] !== 36 /* '$' */) return undefined;
      let len = 0;
      const digits = ++p;
      for (; p < end && (c = buf[p]!) >= 48 && c <= 57; p++) {
        len = len * 10 + c - 48;
        if (len >= STREAM_MIN) return undefined;
      }
      if (p === digits || c !== CR || p + 1 >= end) return undefined;
      p += 2;
      if (end - p < len + 2) return undefined;
      argv.push(buf.subarray(p, p + len));
      p += len + 2;
    }
    this.pos = p;
    return argv;
  }

  /** Copies what has arrived of a large bulk into its target; true once it is complete. */
  #stream(): boolean {
    const t = this.target!;
    const k = Math.min(t.length - this.targetPos, this.buf.length - this.pos);
    this.buf.copy(t, this.targetPos, this.pos, this.pos + k);
    this.targetPos += k;
    this.pos += k;
    if (this.targetPos < t.length) return false;
    this.large.push(t);
    this.argv!.push(t);
    this.argvBytes += t.length;
    this.target = null;
    this.bulkLen = -1;
    this.skip = 2;
    return true;
  }

  #inline(): Buffer[] | null {
    const buf = this.buf;
    const nl = buf.indexOf(LF, this.pos);
    if (nl < 0) {
      if (buf.length - this.pos > PROTO_INLINE_MAX_SIZE) throw new ProtocolError('too big inline request');
      return null;
    }
    let end = nl;
    if (end > this.pos && buf[end - 1] === CR) end--;
    const line = buf.toString('latin1', this.pos, end);
    this.pos = nl + 1;
    const args = splitArgs(line);
    if (args === null) throw new ProtocolError('unbalanced quotes in request');
    return args.map((a) => Buffer.from(a, 'latin1'));
  }

  /** Buffers this parser allocated and still holds (a bulk being streamed), for cleanup. */
  dispose(): Buffer | null {
    const held = this.target;
    this.target = null;
    this.argv = null;
    return held;
  }
}

const ESCAPES: Record<string, string> = { n: '\n', r: '\r', t: '\t', b: '\b', a: '\x07' };
const isSpace = (c: string | undefined): boolean =>
  c === ' ' || c === '\n' || c === '\r' || c === '\t' || c === '\v' || c === '\f';
const isHex = (c: string): boolean => /^[0-9a-fA-F]$/.test(c);

/** Redis's sdssplitargs: whitespace-separated, "double" quotes with escapes, 'single' quotes. Null if unbalanced. */
export function splitArgs(line: string): string[] | null {
  const out: string[] = [];
  let i = 0;
  for (;;) {
    while (i < line.length && isSpace(line[i])) i++;
    if (i >= line.length) return out;
    let cur = '';
    let inq = false;
    let insq = false;
    for (;;) {
      const c = line[i];
      if (inq) {
        if (c === undefined) return null;
        if (c === '\\' && line[i + 1] === 'x' && isHex(line[i + 2] ?? '') && isHex(line[i + 3] ?? '')) {
          cur += String.fromCharCode(parseInt(line.slice(i + 2, i + 4), 16));
          i += 3;
        } else if (c === '\\' && i + 1 < line.length) {
          i++;
          cur += ESCAPES[line[i]!] ?? line[i];
        } else if (c === '"') {
          // The closing quote must be followed by a space or nothing.
          if (i + 1 < line.length && !isSpace(line[i + 1])) return null;
          i++;
          break;
        } else cur += c;
      } else if (insq) {
        if (c === undefined) return null;
        if (c === '\\' && line[i + 1] === "'") {
          i++;
          cur += "'";
        } else if (c === "'") {
          if (i + 1 < line.length && !isSpace(line[i + 1])) return null;
          i++;
          break;
        } else cur += c;
      } else {
        if (c === undefined || isSpace(c)) break;
        if (c === '"') inq = true;
        else if (c === "'") insq = true;
        else cur += c;
      }
      i++;
    }
    out.push(cur);
  }
}

const CHUNK = 64 * 1024;
/**
 * Replies larger than this are sent by reference instead of copied into the shared buffer.
 * Smaller ones are copied before the command returns, so no reply refers to them later
 * (what lets the store overwrite such a value in place: Entry.exclusive).
 */
export const OWN_BUFFER = 16 * 1024;

/**
 * Reply writer. Replies are appended to a 64 KiB buffer and sent once per batch of
 * commands. While the socket still holds some of it (a write the kernel has not taken
 * yet), the bytes already sent are never written again: the next batch appends after
 * them. Once the socket holds nothing (`writableLength` 0: every write went straight
 * into the kernel, the usual case), the next batch starts at the beginning again, so a
 * connection reuses one buffer and allocates nothing per reply.
 *
 * Large values are sent by reference, not copied. Plain Buffers are immutable once
 * stored. Values from the Arena are not: a later DEL or SET gives their pages back (the
 * Buffer is detached, or its pages reused), and a reply built before that but written
 * after it -- later in the batch, or while the socket holds the write -- would then send
 * someone else's bytes. So the writer pins them (Store.pin) from the reply until its
 * write is done, and the store defers giving back a pinned buffer. GET of 64 KiB values,
 * 50 clients, pipeline 1, 3 runs: 14.8-24.8k req/s, against 10.3-14.2k copying each one.
 */
/** Keeps Arena buffers from being given back while a reply refers to them (Store). */
export interface Pinner {
  pin(b: Buffer): void;
  unpin(bufs: Buffer[]): void;
}

export class Writer {
  socket: Socket;
  buf: Buffer = Buffer.allocUnsafeSlow(CHUNK);
  start = 0;
  len = 0;
  parts: Buffer[] = [];
  queued = 0;
  pinner: Pinner;
  /** Arena buffers in `parts`, pinned until their write is done. */
  pinned: Buffer[] = [];
  /** Bytes of buffers allocated since the owner last took this (garbage to come). */
  fresh = 0;
  /** The connection speaks RESP3 (HELLO 3): nulls, maps, sets and verbatim strings have types of their own. */
  resp3 = false;

  constructor(socket: Socket, pinner: Pinner) {
    this.socket = socket;
    this.pinner = pinner;
  }

  /** Drops what was not sent (the connection is gone), and its pins. */
  discard(): void {
    const pinned = this.pinned;
    this.parts = [];
    this.queued = 0;
    this.pinned = [];
    if (pinned.length > 0) this.pinner.unpin(pinned);
  }

  /** Bytes appended since the last flush. */
  get size(): number {
    return this.queued + this.len - this.start;
  }

  // Where the writer stood before the command being run (see mark()); fields, so that
  // marking allocates nothing.
  #markBuf: Buffer = this.buf;
  #markStart = 0;
  #markLen = 0;
  #markParts = 0;
  #markQueued = 0;
  #markPinned = 0;

  /** Remembers the end of the replies so far: a command that fails can take back its half-written reply. */
  mark(): void {
    this.#markBuf = this.buf;
    this.#markStart = this.start;
    this.#markLen = this.len;
    this.#markParts = this.parts.length;
    this.#markQueued = this.queued;
    this.#markPinned = this.pinned.length;
  }

  /**
   * Drops everything appended since mark() (no flush happens in between: the owner flushes
   * only between commands), so that an error reply does not land in the middle of a
   * half-written array and put the client out of step.
   */
  rollback(): void {
    this.buf = this.#markBuf;
    this.start = this.#markStart;
    this.len = this.#markLen;
    this.parts.length = this.#markParts;
    this.queued = this.#markQueued;
    if (this.pinned.length > this.#markPinned) this.pinner.unpin(this.pinned.splice(this.#markPinned));
  }

  #room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    this.#cut();
    this.buf = Buffer.allocUnsafeSlow(Math.max(CHUNK, n));
    this.fresh += this.buf.length;
    this.start = this.len = 0;
  }

  #cut(): void {
    if (this.len > this.start) {
      this.parts.push(this.buf.subarray(this.start, this.len));
      this.queued += this.len - this.start;
      this.start = this.len;
    }
  }

  raw(b: Buffer): void {
    const n = b.length;
    if (n >= OWN_BUFFER) {
      this.#cut();
      this.parts.push(b);
      this.queued += n;
      return;
    }
    this.#room(n);
    this.buf.set(b, this.len);
    this.len += n;
  }

  /** Appends `<type><n>\r\n` at `at` of buf (which has room); returns the new end. */
  static #header(buf: Buffer, at: number, type: number, n: number): number {
    buf[at++] = type;
    let digits = 1;
    for (let m = n; m >= 10; m = Math.floor(m / 10)) digits++;
    at += digits;
    for (let i = at - 1; i >= at - digits; i--, n = Math.floor(n / 10)) buf[i] = 48 + (n % 10);
    buf[at++] = 13;
    buf[at++] = 10;
    return at;
  }

  ascii(s: string): void {
    this.#room(s.length);
    this.len += this.buf.write(s, this.len, 'latin1');
  }

  /** Five fixed bytes without a copy call: `+OK\r\n`, `$-1\r\n`. */
  #bytes5(a: number, b: number, c: number, d: number, e: number): void {
    this.#room(5);
    const buf = this.buf;
    const at = this.len;
    buf[at] = a;
    buf[at + 1] = b;
    buf[at + 2] = c;
    buf[at + 3] = d;
    buf[at + 4] = e;
    this.len = at + 5;
  }

  ok(): void {
    this.#bytes5(43, 79, 75, 13, 10); // +OK\r\n
  }
  /** A null bulk string: `$-1` (RESP2), `_` (RESP3). */
  nil(): void {
    if (this.resp3) this.ascii('_\r\n');
    else this.#bytes5(36, 45, 49, 13, 10); // $-1\r\n
  }
  simple(s: string): void {
    this.ascii(`+${s}\r\n`);
  }
  /** `msg` starts with the error code ("ERR ...", "WRONGPASS ..."); CR/LF become spaces as in Redis. */
  error(msg: string): void {
    this.ascii(`-${msg.replace(/[\r\n]/g, ' ')}\r\n`);
  }
  int(n: number | bigint): void {
    if (typeof n === 'number' && n >= 0 && n < 1e15 && Number.isInteger(n)) {
      this.#room(24);
      this.len = Writer.#header(this.buf, this.len, 58 /* : */, n);
    } else this.ascii(`:${n}\r\n`);
  }
  array(n: number): void {
    this.ascii(`*${n}\r\n`);
  }
  /** A null array: `*-1` (RESP2), `_` (RESP3). */
  nilArray(): void {
    this.ascii(this.resp3 ? '_\r\n' : '*-1\r\n');
  }
  /** A map of `n` pairs (RESP3), or a flat array of 2n elements (RESP2). */
  map(n: number): void {
    this.ascii(this.resp3 ? `%${n}\r\n` : `*${n * 2}\r\n`);
  }
  /** A set of `n` elements (RESP3), or an array (RESP2). */
  set(n: number): void {
    this.ascii(this.resp3 ? `~${n}\r\n` : `*${n}\r\n`);
  }
  /** A double (RESP3), or its text as a bulk string (RESP2), as Redis's addReplyDouble. */
  double(text: string): void {
    if (this.resp3) this.ascii(`,${text}\r\n`);
    else this.bulkString(text);
  }
  /** Text with a format (RESP3 verbatim string, `txt`), or a bulk string (RESP2), as Redis's addReplyVerbatim. */
  verbatim(s: string): void {
    if (!this.resp3) return this.bulkText(s);
    const b = Buffer.from(s, 'utf8');
    this.ascii(`=${b.length + 4}\r\ntxt:`);
    this.raw(b);
    this.ascii('\r\n');
  }
  /** `volatile`: b is an Arena buffer, so pin it (see the class comment). */
  bulk(b: Buffer | null | undefined, volatile = false): void {
    if (b == null) return this.nil();
    const n = b.length;
    if (n < OWN_BUFFER) {
      // Header, value and CRLF in one go: the common small reply.
      this.#room(n + 24);
      const buf = this.buf;
      let at = Writer.#header(buf, this.len, 36 /* $ */, n);
      buf.set(b, at);
      at += n;
      buf[at] = 13;
      buf[at + 1] = 10;
      this.len = at + 2;
      return;
    }
    this.#room(24);
    this.len = Writer.#header(this.buf, this.len, 36 /* $ */, n);
    this.#cut();
    if (volatile) {
      this.pinner.pin(b);
      this.pinned.push(b);
    }
    this.parts.push(b);
    this.queued += n;
    this.#room(2);
    this.buf[this.len] = 13;
    this.buf[this.len + 1] = 10;
    this.len += 2;
  }
  /** A bulk reply of a JS string, latin1 (one char per byte, as keys are kept). */
  bulkString(s: string): void {
    const n = Buffer.byteLength(s, 'latin1');
    this.#room(n + 16);
    this.len += this.buf.write(`$${n}\r\n`, this.len, 'latin1');
    this.len += this.buf.write(s, this.len, 'latin1');
    this.len += this.buf.write('\r\n', this.len, 'latin1');
  }
  /** Text (INFO): UTF-8. */
  bulkText(s: string): void {
    this.bulk(Buffer.from(s, 'utf8'));
  }

  /** Sends everything appended so far; false when the socket asks to wait for 'drain'. */
  flush(): boolean {
    this.#cut();
    const parts = this.parts;
    if (parts.length === 0) return true;
    this.parts = [];
    this.queued = 0;
    // The pins go when the last part is written: writes complete in order, and a socket
    // destroyed before then calls back too (with an error).
    let done: (() => void) | undefined;
    if (this.pinned.length > 0) {
      const pinned = this.pinned;
      this.pinned = [];
      done = () => this.pinner.unpin(pinned);
    }
    const s = this.socket;
    if (s.destroyed) {
      done?.();
      return true;
    }
    let ok: boolean;
    if (parts.length === 1) ok = s.write(parts[0]!, done);
    else {
      s.cork();
      ok = true;
      const last = parts.length - 1;
      for (let i = 0; i < last; i++) ok = s.write(parts[i]!) && ok;
      ok = s.write(parts[last]!, done) && ok;
      s.uncork();
    }
    // Everything went into the kernel: nothing refers to the buffer any more.
    if (s.writableLength === 0) this.start = this.len = 0;
    return ok;
  }
}
