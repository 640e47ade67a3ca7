// Connection and transactions: networking.c and multi.c of Redis 7.0 (HELLO, RESET,
// CLIENT, MULTI/EXEC/WATCH), plus INFO, CONFIG, COMMAND and SHUTDOWN.
import { createHash, timingSafeEqual } from 'node:crypto';
import { infoText } from '../info.mjs';
import type { CacheServer, Client } from '../server.mjs';
import { globMatcher } from '../glob.mjs';
import type { Policy } from '../store.mjs';
import { E, intArg, lower, parseInt64, parseMemory, str, upper, type Argv, type Def } from './util.mjs';

/** The Redis version this server answers as (HELLO, INFO): the one whose behaviour it follows. */
export const REDIS_VERSION = '7.0.0';

function ping(c: Client, argv: Argv): void {
  if (argv.length > 2) return c.w.error(E.arity('ping'));
  if (argv.length === 2) c.w.bulk(argv[1]);
  else c.w.simple('PONG');
}

function select(c: Client, argv: Argv): void {
  const n = intArg(c, argv[1]!);
  if (n === undefined) return;
  if (n !== 0n) return c.w.error('ERR DB index is out of range');
  c.w.ok();
}

const sha256 = (b: Buffer | string): Buffer => createHash('sha256').update(b).digest();

/**
 * Compares digests of fixed length in constant time, so the time AUTH takes says nothing
 * about how much of a guess was right (a `!==` on the strings stops at the first
 * difference). Bytes as sent, against the password's UTF-8 bytes, as Redis compares them.
 */
function samePassword(given: Buffer, password: string): boolean {
  return timingSafeEqual(sha256(given), sha256(password));
}

/** Redis's ACLAuthenticateUser for the default user; replies with the error on failure. */
function checkAuth(c: Client, user: Buffer | null, pass: Buffer): boolean {
  const required = c.srv.config.requirepass;
  const ok = (user === null || str(user) === 'default') && (required === null ? false : samePassword(pass, required));
  if (!ok) c.w.error(E.wrongpass);
  return ok;
}

function auth(c: Client, argv: Argv): void {
  if (argv.length > 3) return c.w.error(E.syntax);
  if (c.srv.config.requirepass === null && argv.length === 2) {
    return c.w.error(
      'ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?',
    );
  }
  if (c.srv.config.requirepass === null) {
    // AUTH default <anything> succeeds when there is no password (the default user is nopass).
    if (str(argv[1]!) === 'default') {
      c.authenticate();
      return c.w.ok();
    }
    return c.w.error(E.wrongpass);
  }
  if (!checkAuth(c, argv.length === 3 ? argv[1]! : null, argv[argv.length - 1]!)) return;
  c.authenticate();
  c.w.ok();
}

/** Redis's validateClientName; an error text, or null. */
function badClientName(name: string): string | null {
  return /[^!-~]/.test(name) ? 'ERR Client names cannot contain spaces, newlines or special characters.' : null;
}

function hello(c: Client, argv: Argv): void {
  let ver = 0;
  let next = 1;
  if (argv.length >= 2) {
    const v = parseInt64(argv[next++]!);
    if (v === undefined) return c.w.error('ERR Protocol version is not an integer or out of range');
    if (v < 2n || v > 3n) return c.w.error('NOPROTO unsupported protocol version');
    ver = Number(v);
  }
  let user: Buffer | null = null;
  let pass: Buffer | null = null;
  let name: string | null = null;
  for (let j = next; j < argv.length; j++) {
    const more = argv.length - 1 - j;
    const opt = str(argv[j]!);
    if (opt.toUpperCase() === 'AUTH' && more >= 2) {
      user = argv[j + 1]!;
      pass = argv[j + 2]!;
      j += 2;
    } else if (opt.toUpperCase() === 'SETNAME' && more >= 1) {
      name = str(argv[j + 1]!);
      const bad = badClientName(name);
      if (bad !== null) return c.w.error(bad);
      j++;
    } else return c.w.error(`ERR Syntax error in HELLO option '${opt}'`);
  }
  if (user !== null && pass !== null) {
    if (c.srv.config.requirepass === null) {
      if (str(user) !== 'default') return c.w.error(E.wrongpass);
    } else if (!checkAuth(c, user, pass)) return;
    c.authenticate();
  }
  if (!c.authenticated) {
    return c.w.error(
      'NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time',
    );
  }
  if (name !== null) c.name = name === '' ? null : name;
  if (ver !== 0) c.w.resp3 = ver === 3;
  const w = c.w;
  w.map(7);
  w.bulkString('server');
  w.bulkString('redis');
  w.bulkString('version');
  w.bulkString(REDIS_VERSION);
  w.bulkString('proto');
  w.int(w.resp3 ? 3 : 2);
  w.bulkString('id');
  w.int(c.id);
  w.bulkString('mode');
  w.bulkString('standalone');
  w.bulkString('role');
  w.bulkString('master');
  w.bulkString('modules');
  w.array(0);
}

function reset(c: Client): void {
  c.discardMulti();
  c.srv.store.unwatchAll(c);
  c.w.resp3 = false;
  c.name = null;
  c.authenticated = c.srv.config.requirepass === null;
  c.parser.authenticated = c.authenticated;
  c.w.simple('RESET');
}

function quit(c: Client): void {
  c.w.ok();
  c.closeAfterReply();
}

// ---- Transactions ----

function multi(c: Client): void {
  if (c.multi !== null) return c.w.error('ERR MULTI calls can not be nested');
  c.multi = [];
  c.w.ok();
}

function exec(c: Client): void {
  if (c.multi === null) return c.w.error('ERR EXEC without MULTI');
  const store = c.srv.store;
  if (store.watchedKeyExpired(c)) c.dirty = true;
  if (c.multiError || c.dirty) {
    if (c.multiError) c.w.error('EXECABORT Transaction discarded because of previous errors.');
    else c.w.nilArray();
    c.discardMulti();
    store.unwatchAll(c);
    return;
  }
  const queued = c.multi;
  c.discardMulti();
  store.unwatchAll(c);
  c.w.array(queued.length);
  for (const argv of queued) c.execQueued(argv);
}

function discard(c: Client): void {
  if (c.multi === null) return c.w.error('ERR DISCARD without MULTI');
  c.discardMulti();
  c.srv.store.unwatchAll(c);
  c.w.ok();
}

function watch(c: Client, argv: Argv): void {
  if (c.multi !== null) return c.w.error('ERR WATCH inside MULTI is not allowed');
  // No point in watching once the client is dirty (Redis's watchCommand).
  if (!c.dirty) for (let i = 1; i < argv.length; i++) c.srv.store.watch(c, str(argv[i]!));
  c.w.ok();
}

function unwatch(c: Client): void {
  c.srv.store.unwatchAll(c);
  c.w.ok();
}

// ---- CLIENT ----

function clientLine(c: Client, x: Client): string {
  const now = Date.now();
  const flags = x.multi !== null ? 'x' : 'N';
  return (
    `id=${x.id} addr=${x.addr} laddr=${x.laddr} fd=-1 name=${x.name ?? ''} age=${Math.floor((now - x.since) / 1000)} ` +
    `idle=${Math.floor((now - x.lastActive) / 1000)} flags=${flags} db=0 sub=0 psub=0 ssub=0 ` +
    `multi=${x.multi === null ? -1 : x.multi.length} qbuf=${x.parser.pending} qbuf-free=0 argv-mem=0 multi-mem=0 ` +
    `rbs=0 rbp=0 obl=0 oll=0 omem=${x.socket.writableLength} tot-mem=0 events=r cmd=${x.lastCommand} ` +
    `user=default redir=-1 resp=${x.w.resp3 ? 3 : 2}` +
    (x === c ? '' : '')
  );
}

function clientSetname(c: Client, argv: Argv): void {
  const name = str(argv[2]!);
  const bad = badClientName(name);
  if (bad !== null) return c.w.error(bad);
  c.name = name === '' ? null : name;
  c.w.ok();
}

function clientList(c: Client, argv: Argv): void {
  let list = [...c.srv.clients];
  if (argv.length > 2) {
    const opt = upper(argv[2]!);
    if (opt === 'TYPE' && argv.length === 4) {
      const t = lower(argv[3]!);
      if (!['normal', 'master', 'replica', 'slave', 'pubsub'].includes(t)) {
        return c.w.error(`ERR Unknown client type '${str(argv[3]!)}'`);
      }
      if (t !== 'normal') list = [];
    } else if (opt === 'ID' && argv.length >= 4) {
      const ids = new Set<number>();
      for (let i = 3; i < argv.length; i++) {
        const n = parseInt64(argv[i]!);
        if (n === undefined || n <= 0n) return c.w.error('ERR Invalid client ID');
        ids.add(Number(n));
      }
      list = list.filter((x) => ids.has(x.id));
    } else return c.w.error(E.syntax);
  }
  c.w.verbatim(list.map((x) => `${clientLine(c, x)}\n`).join(''));
}

const CLIENT_HELP = [
  'CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:',
  'GETNAME',
  '    Return the name of the current connection.',
  'ID',
  '    Return the ID of the current connection.',
  'INFO',
  '    Return information about the current client connection.',
  'LIST [options ...]',
  '    Return information about client connections. Options:',
  '    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)',
  '      Return clients of specified type.',
  'SETNAME <name>',
  '    Assign the name <name> to the current connection.',
  'HELP',
  '    Prints this help.',
];

// ---- INFO, CONFIG, COMMAND, SHUTDOWN ----

function info(c: Client, argv: Argv): void {
  c.w.verbatim(
    infoText(
      c.srv,
      argv.slice(1).map((b) => str(b).toLowerCase()),
    ),
  );
}

interface ConfigParam {
  get: (s: CacheServer) => string;
  /** Returns an error text, or undefined once set. */
  set?: (s: CacheServer, v: string) => string | undefined;
}

/** CONFIG GET/SET: the parameters clients and redis-benchmark ask for, and the ones that can change. */
const CONFIG: Record<string, ConfigParam> = {
  maxmemory: {
    get: (s) => String(s.store.maxmemory),
    set: (s, v) => {
      const n = parseMemory(v);
      if (n === undefined) return 'argument must be a memory value';
      s.store.maxmemory = n;
      s.store.evict();
      return undefined;
    },
  },
  'maxmemory-policy': {
    get: (s) => s.store.policy,
    set: (s, v) => {
      const p = v.toLowerCase();
      if (!['allkeys-lru', 'volatile-lru', 'noeviction'].includes(p)) {
        return 'argument(s) must be one of the following: allkeys-lru, volatile-lru, noeviction';
      }
      s.store.policy = p as Policy;
      return undefined;
    },
  },
  maxclients: {
    get: (s) => String(s.config.maxclients),
    set: (s, v) => {
      if (!/^[1-9][0-9]{0,8}$/.test(v)) return 'argument must be between 1 and 1000000000 inclusive';
      s.config.maxclients = Number(v);
      return undefined;
    },
  },
  'proto-max-bulk-len': { get: (s) => String(s.config.protoMaxBulkLen) },
  'ksm-threshold': { get: (s) => String(s.store.threshold) },
  requirepass: { get: (s) => s.config.requirepass ?? '' },
  port: { get: (s) => String(s.config.port) },
  bind: { get: (s) => s.config.bind },
  databases: { get: () => '1' },
  save: { get: () => '' },
  appendonly: { get: () => 'no' },
  timeout: { get: () => '0' },
  'hash-max-listpack-entries': { get: () => '512' },
  'hash-max-listpack-value': { get: () => '64' },
  'set-max-intset-entries': { get: () => '512' },
};

function configGet(c: Client, argv: Argv): void {
  const out: string[] = [];
  for (const [name, param] of Object.entries(CONFIG)) {
    if (argv.slice(2).some((p) => globMatcher(p, true)(name))) out.push(name, param.get(c.srv));
  }
  c.w.map(out.length / 2);
  for (const s of out) c.w.bulkString(s);
}

function configSet(c: Client, argv: Argv): void {
  if (argv.length % 2 !== 0) return c.w.error(E.arity('config|set'));
  const pairs: [string, NonNullable<ConfigParam['set']>, string][] = [];
  for (let i = 2; i < argv.length; i += 2) {
    const name = str(argv[i]!).toLowerCase();
    const setter = CONFIG[name]?.set;
    if (setter === undefined)
      return c.w.error(`ERR Unknown option or number of arguments for CONFIG SET - '${str(argv[i]!)}'`);
    pairs.push([name, setter, str(argv[i + 1]!)]);
  }
  for (const [name, setter, value] of pairs) {
    const bad = setter(c.srv, value);
    if (bad !== undefined) return c.w.error(`ERR CONFIG SET failed (possibly related to argument '${name}') - ${bad}`);
  }
  c.w.ok();
}

function configResetstat(c: Client): void {
  c.srv.resetStats();
  c.w.ok();
}

function shutdown(c: Client, argv: Argv): void {
  for (let i = 1; i < argv.length; i++) {
    if (!['NOSAVE', 'SAVE', 'NOW', 'FORCE'].includes(upper(argv[i]!))) return c.w.error(E.syntax);
  }
  // As in Redis, a successful SHUTDOWN gets no reply: the connection just closes.
  c.srv.shutdown('SHUTDOWN');
}

export const CONNECTION_COMMANDS: Def[] = [
  ['ping', -1, ['fast'], [0, 0, 0], ping],
  ['echo', 2, ['fast'], [0, 0, 0], (c, argv) => c.w.bulk(argv[1])],
  ['select', 2, ['loading', 'stale', 'fast'], [0, 0, 0], select],
  ['auth', -2, ['noscript', 'loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], auth],
  ['hello', -1, ['noscript', 'loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], hello],
  ['reset', 1, ['noscript', 'loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], reset],
  ['quit', -1, ['loading', 'stale', 'fast', 'no_auth'], [0, 0, 0], quit],
  ['multi', 1, ['noscript', 'loading', 'stale', 'fast'], [0, 0, 0], multi],
  ['exec', 1, ['noscript', 'loading', 'stale'], [0, 0, 0], exec],
  ['discard', 1, ['noscript', 'loading', 'stale', 'fast'], [0, 0, 0], discard],
  ['watch', -2, ['noscript', 'loading', 'stale', 'fast'], [1, -1, 1], watch],
  ['unwatch', 1, ['noscript', 'loading', 'stale', 'fast'], [0, 0, 0], unwatch],
  ['info', -1, ['loading', 'stale'], [0, 0, 0], info],
  ['shutdown', -1, ['admin', 'loading', 'stale'], [0, 0, 0], shutdown],
  [
    'config',
    -2,
    [],
    [0, 0, 0],
    null,
    [
      ['get', -3, ['admin', 'loading', 'stale'], [0, 0, 0], configGet],
      ['set', -4, ['admin', 'loading', 'stale'], [0, 0, 0], configSet],
      ['resetstat', 2, ['admin', 'loading', 'stale'], [0, 0, 0], configResetstat],
    ],
  ],
  [
    'client',
    -2,
    [],
    [0, 0, 0],
    null,
    [
      ['setname', 3, ['loading', 'stale'], [0, 0, 0], clientSetname],
      ['getname', 2, ['loading', 'stale'], [0, 0, 0], (c) => (c.name === null ? c.w.nil() : c.w.bulkString(c.name))],
      ['id', 2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.int(c.id)],
      ['info', 2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.verbatim(`${clientLine(c, c)}\n`)],
      ['list', -2, ['admin', 'loading', 'stale'], [0, 0, 0], clientList],
      // Redis 7.2's (clients send it on connect and ignore an error; answering OK is kinder).
      ['setinfo', 4, ['loading', 'stale'], [0, 0, 0], (c) => c.w.ok()],
      [
        'help',
        2,
        ['loading', 'stale'],
        [0, 0, 0],
        (c) => {
          c.w.array(CLIENT_HELP.length);
          for (const l of CLIENT_HELP) c.w.simple(l);
        },
      ],
    ],
  ],
];
