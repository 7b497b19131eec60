#!/usr/bin/env node
// ShareDB on PostgreSQL, for side-by-side figures against our server
// (BENCHMARKS.md, "ShareDB on PostgreSQL side by side (issue 15)"). The load
// tool speaks to it with `--protocol sharedb` (examples/examples/load/sharedb.rs).
//
//   node server.js --database-url postgres://… [--port 13040] [--pool-max N]
//
// Started by scripts/sharedb-server, which installs the packages pinned in
// package.json / package-lock.json beside this file into a temporary folder.
//
// What it is: one ShareDB backend with sharedb-postgres as its database (ops
// and snapshots in PostgreSQL; ShareDB's default in-process pub/sub) and the
// `ot-text-unicode` type registered; ShareDB clients connect over WebSocket at
// any path of ws://127.0.0.1:PORT (one JSON message per text frame).
// It listens on 127.0.0.1 only. On start it creates sharedb-postgres's tables
// (its structure.sql) in the database given, unless they exist already.
// Every ShareDB and adapter option is the default (pool size: node-postgres'
// default of 10 unless --pool-max). One adapter bug is worked around (see
// keepEmptyText below): sharedb-postgres 5.0.1 reads a stored empty text back
// as no data (`row.data || undefined`), after which ShareDB refuses every op on
// that document ("Invalid document snapshot: undefined"); a document that two
// concurrent deletes empty is lost for good without it. The wrapper gives the
// empty text back; it does nothing else and costs nothing measurable.
//
// HTTP on the same port:
//   GET /healthz                      200 "ok"
//   GET /text/{collection}/{id}       200 {"v": version, "type": uri|null, "data": text}
//                                     (the stored snapshot, read from PostgreSQL)
//   GET /stats                        200 {"submits", "failed", "retries"} since start:
//                                     submits that committed, submits answered with an
//                                     error, and commits retried after losing the
//                                     version race (ShareDB's 'timing' events)
'use strict';

const fs = require('fs');
const http = require('http');
const path = require('path');

const ShareDB = require('sharedb');
const PostgresDB = require('sharedb-postgres');
const textUnicode = require('ot-text-unicode');
const pg = require('pg');
const { WebSocketServer } = require('ws');
const WebSocketJSONStream = require('@teamwork/websocket-json-stream');

function usage(message) {
  if (message) console.error(`sharedb-server: ${message}`);
  console.error('usage: node server.js --database-url postgres://… [--port 13040] [--pool-max N]');
  process.exit(2);
}

function parseArgs(argv) {
  const args = { port: 13040, databaseUrl: process.env.DATABASE_URL, poolMax: null };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`${flag} needs a value`);
    if (flag === '--port') args.port = Number(value);
    else if (flag === '--database-url') args.databaseUrl = value;
    else if (flag === '--pool-max') args.poolMax = Number(value);
    else usage(`unknown flag ${flag}`);
    i++;
  }
  if (!args.databaseUrl) usage('no --database-url (or DATABASE_URL)');
  if (!Number.isInteger(args.port) || args.port <= 0 || args.port > 65535) usage('bad --port');
  if (args.poolMax !== null && !(Number.isInteger(args.poolMax) && args.poolMax > 0)) {
    usage('bad --pool-max');
  }
  return args;
}

function version(pkg) {
  const file = path.join(path.dirname(require.resolve(pkg)), 'package.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')).version;
  } catch (_) {
    // ot-text-unicode's main file is in dist/: its package.json is one level up.
    return JSON.parse(fs.readFileSync(path.join(path.dirname(file), '..', 'package.json'), 'utf8'))
      .version;
  }
}

// sharedb-postgres ships its schema as structure.sql; run it on a database
// that does not have the tables yet (its ALTERs are not all repeatable).
async function createTables(databaseUrl) {
  const sqlFile = path.join(path.dirname(require.resolve('sharedb-postgres')), 'structure.sql');
  const sql = fs.readFileSync(sqlFile, 'utf8');
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const found = await client.query("SELECT to_regclass('snapshots') AS s, to_regclass('ops') AS o");
    if (found.rows[0].s && found.rows[0].o) return false;
    await client.query(sql);
    return true;
  } finally {
    await client.end();
  }
}

// The workaround described at the top: a text-unicode snapshot that exists
// (it has a type) but came back without data held the empty text.
function keepEmptyText(db, typeUri) {
  const getSnapshot = db.getSnapshot.bind(db);
  db.getSnapshot = (collection, id, fields, options, callback) =>
    getSnapshot(collection, id, fields, options, (err, snapshot) => {
      if (!err && snapshot && snapshot.type === typeUri && snapshot.data === undefined) {
        snapshot.data = '';
      }
      callback(err, snapshot);
    });
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function httpHandler(backend, stats) {
  return (req, res) => {
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'GET only' });
    const url = new URL(req.url, 'http://127.0.0.1');
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      return res.end('ok');
    }
    if (url.pathname === '/stats') return sendJson(res, 200, stats);
    const parts = url.pathname.split('/').map(decodeURIComponent);
    // ['', 'text', collection, id]
    if (parts.length !== 4 || parts[1] !== 'text' || !parts[2] || !parts[3]) {
      return sendJson(res, 404, { error: 'GET /text/{collection}/{id}' });
    }
    backend.db.getSnapshot(parts[2], parts[3], null, null, (err, snapshot) => {
      if (err) return sendJson(res, 500, { error: String(err.message || err) });
      sendJson(res, 200, { v: snapshot.v, type: snapshot.type, data: snapshot.data ?? null });
    });
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const created = await createTables(args.databaseUrl);

  ShareDB.types.register(textUnicode.type);
  const dbOptions = { connectionString: args.databaseUrl };
  if (args.poolMax !== null) dbOptions.max = args.poolMax;
  const db = new PostgresDB(dbOptions);
  keepEmptyText(db, textUnicode.type.uri);
  const backend = new ShareDB({ db });

  const stats = { submits: 0, failed: 0, retries: 0 };
  backend.on('timing', (what) => {
    if (what === 'submit.total') stats.submits++;
    else if (what === 'submit.retry') stats.retries++;
  });
  backend.on('submitRequestEnd', (err) => {
    if (err) stats.failed++;
  });

  const server = http.createServer(httpHandler(backend, stats));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws, req) => {
    backend.listen(new WebSocketJSONStream(ws), req);
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(args.port, '127.0.0.1', resolve);
  });
  const versions = ['sharedb', 'sharedb-postgres', 'ot-text-unicode', 'pg', 'ws']
    .map((p) => `${p} ${version(p)}`)
    .join(', ');
  console.log(
    `sharedb-server: listening on ws://127.0.0.1:${args.port} (pid ${process.pid}; ` +
      `${versions}; node ${process.version}; tables ${created ? 'created' : 'already there'})`,
  );

  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const ws of wss.clients) ws.terminate();
    wss.close();
    server.close();
    backend.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error('sharedb-server:', err && err.stack ? err.stack : err);
  process.exit(1);
});
