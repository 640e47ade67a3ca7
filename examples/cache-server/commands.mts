// The command table, in Redis's shape (name, arity, flags, key positions), and lookup.
// The commands themselves live in commands/, one file per family.
import type { Client } from './server.mjs';
import { CONNECTION_COMMANDS } from './commands/connection.mjs';
import { HASH_COMMANDS } from './commands/hash.mjs';
import { KEYSPACE_COMMANDS } from './commands/keyspace.mjs';
import { LIST_COMMANDS } from './commands/list.mjs';
import { SET_COMMANDS } from './commands/set.mjs';
import { STRING_COMMANDS } from './commands/strings.mjs';
import { E, str, type Argv, type Def, type Impl } from './commands/util.mjs';

export { E, parseMemory } from './commands/util.mjs';

export interface Command {
  name: string;
  arity: number;
  flags: string[];
  keys: [number, number, number];
  fn: Impl | null;
  noauth: boolean;
  denyoom: boolean;
  write: boolean;
  subcommands: Record<string, Command> | null;
}

function commandInfo(c: Client, cmd: Command | undefined): void {
  if (cmd === undefined) return c.w.nilArray();
  const w = c.w;
  w.array(10);
  w.bulkString(cmd.name);
  w.int(cmd.arity);
  w.array(cmd.flags.length);
  for (const f of cmd.flags) w.simple(f);
  w.int(cmd.keys[0]);
  w.int(cmd.keys[1]);
  w.int(cmd.keys[2]);
  for (let i = 0; i < 3; i++) w.array(0); // ACL categories, tips, key specs
  const subs = cmd.subcommands ? [...new Set(Object.values(cmd.subcommands))] : [];
  w.array(subs.length);
  for (const s of subs) commandInfo(c, s);
}

function commandAll(c: Client): void {
  const all = [...new Set(TABLE.values())];
  c.w.array(all.length);
  for (const cmd of all) commandInfo(c, cmd);
}

/**
 * [name, arity, flags, [first key, last key, step], implementation, subcommands?].
 * Arity as in Redis: n exactly, -n at least n (the name counts).
 */
const DEFS: Def[] = [
  ...STRING_COMMANDS,
  ...KEYSPACE_COMMANDS,
  ...HASH_COMMANDS,
  ...LIST_COMMANDS,
  ...SET_COMMANDS,
  ...CONNECTION_COMMANDS,
  [
    'command',
    -1,
    ['loading', 'stale'],
    [0, 0, 0],
    commandAll,
    [
      ['count', 2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.int(new Set(TABLE.values()).size)],
      [
        'info',
        -2,
        ['loading', 'stale'],
        [0, 0, 0],
        (c, argv) => {
          c.w.array(argv.length - 2);
          for (const n of argv.slice(2)) commandInfo(c, TABLE.get(str(n).toLowerCase()));
        },
      ],
      // Empty docs: redis-cli then uses the help compiled into it.
      ['docs', -2, ['loading', 'stale'], [0, 0, 0], (c) => c.w.map(0)],
      [
        'list',
        -2,
        ['loading', 'stale'],
        [0, 0, 0],
        (c) => {
          const names = [...new Set(TABLE.values())].map((x) => x.name);
          c.w.array(names.length);
          for (const n of names) c.w.bulkString(n);
        },
      ],
    ],
  ],
];

function makeCommand([name, arity, flags, keys, fn, subs]: Def, parent?: string): Command {
  const cmd: Command = {
    name: parent ? `${parent}|${name}` : name,
    arity,
    flags,
    keys,
    fn,
    noauth: flags.includes('no_auth'),
    denyoom: flags.includes('denyoom'),
    write: flags.includes('write'),
    subcommands: null,
  };
  if (subs) {
    const table: Record<string, Command> = Object.create(null) as Record<string, Command>;
    for (const s of subs) table[s[0]] = makeCommand(s, name);
    cmd.subcommands = table;
  }
  return cmd;
}

/** Command by lowercase name (and by uppercase, which redis-benchmark sends, to skip a toLowerCase). */
export const TABLE = new Map<string, Command>();
for (const def of DEFS) {
  const cmd = makeCommand(def);
  TABLE.set(cmd.name, cmd);
  TABLE.set(cmd.name.toUpperCase(), cmd);
}

const GET = TABLE.get('get')!;
const SET = TABLE.get('set')!;
const arityOk = (arity: number, n: number): boolean => (arity >= 0 ? n === arity : n >= -arity);

/**
 * Looks a command up as Redis's processCommand does: unknown command or subcommand,
 * then arity. Returns the command, or an error text.
 */
export function resolve(argv: Argv): Command | string {
  const a = argv[0]!;
  // GET and SET, in either case, without making a string of the name: they are most of the traffic.
  if (a.length === 3 && (a[1]! | 0x20) === 0x65 && (a[2]! | 0x20) === 0x74) {
    const c0 = a[0]! | 0x20;
    const cmd = c0 === 0x67 ? GET : c0 === 0x73 ? SET : undefined;
    if (cmd !== undefined) return arityOk(cmd.arity, argv.length) ? cmd : E.arity(cmd.name);
  }
  const name = str(a);
  const cmd = TABLE.get(name) ?? TABLE.get(name.toLowerCase());
  if (cmd === undefined) {
    let args = '';
    for (let i = 1; i < argv.length && args.length < 128; i++)
      args += `'${str(argv[i]!).slice(0, 128 - args.length)}' `;
    return `ERR unknown command '${name.slice(0, 128)}', with args beginning with: ${args}`;
  }
  if (cmd.subcommands !== null && argv.length >= 2) {
    const sub = cmd.subcommands[str(argv[1]!).toLowerCase()];
    if (sub === undefined) {
      return `ERR unknown subcommand '${str(argv[1]!).slice(0, 128)}'. Try ${cmd.name.toUpperCase()} HELP.`;
    }
    return arityOk(sub.arity, argv.length) ? sub : E.arity(sub.name);
  }
  if (!arityOk(cmd.arity, argv.length) || cmd.fn === null) return E.arity(cmd.name);
  return cmd;
}
