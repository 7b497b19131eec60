// The JavaScript client state machine (server/web/ot.js), with the same
// scenarios as ot-core's client.rs unit tests, plus a randomised
// convergence check of two clients and a server history in memory.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  Client,
  apply,
  replaceRange,
  transform,
  compose,
  cpLen,
  split,
  fits,
  effectiveLimits,
  opLimits,
  isNoop,
  DEFAULT_OP_LIMITS,
} from "../../server/web/ot.js";

const ins = (len, pos, text) => replaceRange(len, pos, 0, text);

test("awaiting ack, then buffer, then flush", () => {
  const c = new Client("me", 0, "", 0);
  const first = c.localEdit(ins(0, 0, "ab"));
  assert.deepEqual([first.seq, first.base_rev], [1, 0]);
  assert.equal(c.localEdit(ins(2, 2, "c")), null);
  assert.equal(c.localEdit(ins(3, 0, "🙂")), null);
  const out = c.remoteOp(1, ins(0, 0, "X"), "other", 1);
  assert.deepEqual(out, { applied: ins(4, 4, "X") });
  assert.equal(c.text, "🙂abcX");
  assert.equal(c.synced, "X");
  assert.equal(c.ack(2, 7).acknowledged, false);
  const r = c.ack(2, 1);
  assert.ok(r.acknowledged);
  assert.deepEqual([r.next.seq, r.next.base_rev], [2, 2]);
  assert.equal(apply("abX", r.next.op), "🙂abcX");
  assert.equal(c.allSaved(), false);
  assert.deepEqual(c.ack(3, 2), { acknowledged: true, next: null });
  assert.ok(c.allSaved());
  assert.equal(c.synced, "🙂abcX");
});

test("a no-op buffer uses no seq", () => {
  const c = new Client("me", 0, "x", 0);
  c.localEdit(ins(1, 1, "a"));
  c.localEdit(ins(2, 0, "b"));
  c.localEdit(replaceRange(3, 0, 1, ""));
  assert.deepEqual(c.ack(1, 1), { acknowledged: true, next: null });
  assert.equal(c.nextSeq, 2);
  assert.equal(c.localEdit([2]), null);
});

test("resume resends byte for byte or takes the own op as the ack", () => {
  const c = new Client("me", 5, "hello", 3);
  const sent = c.localEdit(ins(5, 5, "!"));
  assert.equal(sent.seq, 4);
  c.localEdit(ins(6, 0, ">"));
  assert.deepEqual(c.resumed(5, 3), sent);
  const saved = JSON.parse(JSON.stringify(c.state()));
  const d = Client.fromState(saved);
  assert.equal(d.resumed(5, 4), null);
  d.remoteOp(6, ins(5, 0, "A"), "other", 9);
  const r = d.remoteOp(7, ins(6, 6, "!"), "me", 4);
  assert.ok(r.acknowledged);
  assert.equal(r.next.seq, 5);
  assert.equal(d.text, ">Ahello!");
  assert.equal(d.synced, "Ahello!");
  const e = Client.fromState(saved);
  assert.throws(() => e.resumed(5, 9), { code: "stale_state" });
  assert.throws(() => e.resumed(4, 3), { code: "resume_mismatch" });
  assert.throws(() => e.remoteOp(8, [5], "x", 1), { code: "revision_gap" });
});

test("snapshot rebases or keeps a conflict copy", () => {
  let c = new Client("me", 2, "ab", 1);
  c.localEdit(ins(2, 2, "c"));
  let out = c.snapshot(7, "ab", 1);
  assert.equal(out.conflictCopy, null);
  assert.deepEqual([out.send.seq, out.send.base_rev], [2, 7]);
  assert.equal(c.text, "abc");

  c = new Client("me", 2, "ab", 1);
  c.localEdit(ins(2, 2, "c"));
  c.localEdit(ins(3, 3, "d"));
  out = c.snapshot(3, "abc", 2);
  assert.equal(out.conflictCopy, null);
  assert.equal(out.send.seq, 3);
  assert.equal(c.text, "abcd");

  c = new Client("me", 2, "ab", 1);
  c.localEdit(ins(2, 2, "c"));
  out = c.snapshot(9, "zz", 1);
  assert.equal(out.conflictCopy, "abc");
  assert.equal(out.send, null);
  assert.equal(c.text, "zz");
  assert.ok(c.allSaved());
  assert.equal(c.nextSeq, 2);
});

test("state round-trips through JSON and corrupt state is detected", () => {
  const c = new Client("me", 0, "é", 0);
  c.localEdit(ins(1, 1, "漢"));
  c.localEdit(ins(2, 0, "🙂"));
  const d = Client.fromState(JSON.parse(JSON.stringify(c.state())));
  assert.equal(d.text, "🙂é漢");
  assert.deepEqual(d.pendingResend(), c.pendingResend());
  const bad = c.state();
  bad.synced_text += "x";
  assert.throws(() => Client.fromState(bad), { code: "corrupt_state" });
});

test("remote ranges map through pending edits", () => {
  const c = new Client("me", 0, "abc", 0);
  c.localEdit(ins(3, 0, "12"));
  c.localEdit(ins(5, 5, "z"));
  assert.deepEqual(c.transformRemoteRanges([[1, 3]]), [[3, 6]]);
});

test("random concurrent edits converge (two clients, one server)", () => {
  let seed = 12345;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const pieces = ["a", "🙂", "e\u0301", "漢", "\n", "👍🏽"];
  for (let round = 0; round < 200; round++) {
    // Server: a list of [op, client, seq]; text.
    const log = [];
    let serverText = "";
    const lastSeq = new Map();
    const clients = [new Client("A", 0, "", 0), new Client("B", 0, "", 0)];
    // Every other round with small limits: edits split and queue, and every
    // op the server receives must fit them.
    const limits = round % 2 ? { max_op_len: 1 + (round % 3), max_op_components: 3 + (round % 2) } : DEFAULT_OP_LIMITS;
    for (const c of clients) c.setLimits(limits);
    const inbox = [[], []]; // server → client messages, FIFO
    const outbox = [[], []]; // client → server ops
    const receive = (i, out) => {
      assert.ok(fits(out.op, limits), `op ${JSON.stringify(out.op)} beyond ${JSON.stringify(limits)}`);
      // Transform past everything after its base revision (incoming op is `a`).
      let op = out.op;
      for (let r = out.base_rev; r < log.length; r++) op = transform(op, log[r][0])[0];
      serverText = apply(serverText, op);
      log.push([op, clients[i].clientId, out.seq]);
      lastSeq.set(clients[i].clientId, out.seq);
      const rev = log.length;
      inbox[i].push({ type: "ack", rev, seq: out.seq });
      inbox[1 - i].push({ type: "op", rev, op, client: clients[i].clientId, seq: out.seq });
    };
    const deliver = (i) => {
      const m = inbox[i].shift();
      const c = clients[i];
      const r = m.type === "ack" ? c.ack(m.rev, m.seq) : c.remoteOp(m.rev, m.op, m.client, m.seq);
      if (r.next) outbox[i].push(r.next);
    };
    for (let step = 0; step < 40; step++) {
      const i = rnd(2);
      const c = clients[i];
      switch (rnd(4)) {
        case 0: {
          const len = cpLen(c.text);
          const pos = rnd(len + 1);
          const del = rnd(Math.min(2, len - pos) + 1);
          const out = c.localEdit(replaceRange(len, pos, del, pieces[rnd(pieces.length)]));
          if (out) outbox[i].push(out);
          break;
        }
        case 1:
          if (outbox[i].length) receive(i, outbox[i].shift());
          break;
        default:
          if (inbox[i].length) deliver(i);
      }
    }
    for (;;) {
      let moved = false;
      for (const i of [0, 1]) {
        while (outbox[i].length) {
          receive(i, outbox[i].shift());
          moved = true;
        }
        while (inbox[i].length) {
          deliver(i);
          moved = true;
        }
      }
      if (!moved) break;
    }
    for (const c of clients) {
      assert.ok(c.allSaved());
      assert.equal(c.text, serverText);
      assert.equal(c.revision, log.length);
    }
  }
});

const small = (len, comps) => ({ max_op_len: len, max_op_components: comps });
const ackNext = (c) => {
  const r = c.ack(c.revision + 1, c.outstanding.seq);
  assert.ok(r.acknowledged);
  return r.next;
};

test("split cuts a long insert like ot-core", () => {
  const op = ins(2, 1, "abcdefg🙂");
  const pieces = split(op, small(3, 10));
  assert.deepEqual(pieces, [[1, "abc", 1], [4, "def", 1], [7, "g🙂", 1]]);
  assert.deepEqual(pieces.reduce((a, b) => compose(a, b)), op);
  assert.deepEqual(split([5], small(1, 3)), [[5]]);
});

test("split: pieces compose to the original, fit, and apply like it (random)", () => {
  let seed = 777;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
  const pieces = ["a", "🙂", "e\u0301", "漢", "\n", "👍🏽"];
  for (let round = 0; round < 500; round++) {
    let text = "";
    for (let k = rnd(12); k > 0; k--) text += pieces[rnd(pieces.length)];
    // A bigger op: several random edits composed.
    let op = cpLen(text) > 0 ? [cpLen(text)] : [];
    let cur = text;
    for (let k = 1 + rnd(5); k > 0; k--) {
      const len = cpLen(cur);
      const pos = rnd(len + 1);
      const del = rnd(Math.min(3, len - pos) + 1);
      let ins = "";
      for (let j = rnd(4); j > 0; j--) ins += pieces[rnd(pieces.length)];
      const e = replaceRange(len, pos, del, ins);
      cur = apply(cur, e);
      op = compose(op, e);
    }
    const limits = small(rnd(7), rnd(7));
    const got = split(op, limits);
    let t = text;
    for (const p of got) {
      assert.ok(fits(p, effectiveLimits(limits)), JSON.stringify({ p, limits }));
      if (got.length > 1) assert.ok(!isNoop(p));
      t = apply(t, p);
    }
    assert.equal(t, cur);
    assert.deepEqual(got.reduce((a, b) => compose(a, b)), op);
  }
});

test("edits queue within the limits and leave one per ack", () => {
  const c = new Client("me", 0, "", 0);
  c.setLimits(small(3, 10));
  const first = c.localEdit(ins(0, 0, "abcdefgh"));
  assert.deepEqual(first.op, ["abc"]);
  assert.equal(c.unacknowledged(), 3);
  assert.equal(c.localEdit(ins(8, 8, "i")), null);
  assert.equal(c.localEdit(ins(9, 9, "j")), null);
  assert.deepEqual(c.queue, [[3, "def"], [6, "ghi"], [9, "j"]]);
  const seqs = [first.seq];
  let synced = apply("", first.op);
  for (let next = ackNext(c); next; next = ackNext(c)) {
    assert.ok(fits(next.op, c.limits));
    assert.equal(next.base_rev, c.revision);
    seqs.push(next.seq);
    synced = apply(synced, next.op);
  }
  assert.deepEqual(seqs, [1, 2, 3, 4]);
  assert.equal(synced, "abcdefghij");
  assert.ok(c.allSaved());
});

test("remote ops transform through every queued op", () => {
  const c = new Client("me", 0, "xy", 0);
  c.setLimits(small(2, 10));
  const sent = c.localEdit(ins(2, 1, "abcd"));
  assert.deepEqual(sent.op, [1, "ab", 1]);
  c.localEdit(ins(6, 6, "ef"));
  assert.equal(c.unacknowledged(), 3);
  const r = c.remoteOp(1, ["<", 2, ">"], "other", 1);
  assert.equal(apply("xabcdyef", r.applied), "<xabcdyef>");
  assert.equal(c.text, "<xabcdyef>");
  const second = ackNext(c);
  assert.equal(second.base_rev, 2);
  let server = apply("<xaby>", second.op);
  for (let next = ackNext(c); next; next = ackNext(c)) server = apply(server, next.op);
  assert.equal(server, "<xabcdyef>");
  assert.equal(c.synced, server);
});

test("shrinking limits split the queue but resend the outstanding op as it is", () => {
  const c = new Client("me", 0, "", 0);
  const sent = c.localEdit(ins(0, 0, "abcdef"));
  c.localEdit(ins(6, 6, "ghijkl"));
  assert.equal(c.setLimits(opLimits({ max_op_len: 4, max_op_components: 10, max_doc_len: 99 })), true);
  assert.equal(c.setLimits(small(4, 10)), false);
  assert.deepEqual(c.resumed(0, 0), sent);
  assert.deepEqual(c.queue, [[6, "ghij"], [10, "kl"]]);
  // A server that does not announce max_op_components: the default.
  assert.deepEqual(opLimits({ max_op_len: 7 }), { max_op_len: 7, max_op_components: 10000 });
});

test("a transformed queued op beyond the limits is split when it leaves", () => {
  const c = new Client("me", 0, "abcdef", 0);
  c.setLimits(small(10, 4));
  c.localEdit(ins(6, 0, "!"));
  c.localEdit(replaceRange(7, 2, 4, ""));
  c.remoteOp(1, [2, "X", 1, "Y", 3], "other", 1);
  assert.equal(c.queue[0].length, 7);
  let server = "!abXcYdef";
  let sent = 0;
  for (let next = ackNext(c); next; next = ackNext(c)) {
    assert.ok(fits(next.op, small(10, 4)), JSON.stringify(next.op));
    server = apply(server, next.op);
    sent += 1;
  }
  assert.ok(sent >= 2);
  assert.equal(server, "!aXYf");
  assert.equal(c.text, server);
});

test("snapshot rebases a queue", () => {
  let c = new Client("me", 2, "ab", 1);
  c.setLimits(small(1, 10));
  c.localEdit(ins(2, 2, "cde"));
  assert.equal(c.unacknowledged(), 3);
  let out = c.snapshot(7, "ab", 1);
  assert.equal(out.conflictCopy, null);
  assert.deepEqual([out.send.seq, out.send.base_rev], [2, 7]);
  assert.equal(c.text, "abcde");
  assert.equal(c.unacknowledged(), 3);

  c = new Client("me", 2, "ab", 1);
  c.setLimits(small(1, 10));
  c.localEdit(ins(2, 2, "cde"));
  out = c.snapshot(3, "abc", 2);
  assert.equal(out.conflictCopy, null);
  assert.deepEqual(out.send.op, [3, "d"]);
  assert.equal(c.text, "abcde");
  assert.equal(c.unacknowledged(), 2);

  c = new Client("me", 2, "ab", 1);
  c.setLimits(small(1, 10));
  c.localEdit(ins(2, 2, "cde"));
  out = c.snapshot(5, "abcZ", 2);
  assert.equal(out.conflictCopy, "abcde");
  assert.ok(c.allSaved());
});

test("a state saved with a single buffer loads (and is written back as a queue)", () => {
  // What the page saved before the queue (field names of ot-core's ClientState).
  const old = {
    client_id: "me",
    next_seq: 2,
    revision: 3,
    synced_text: "ab",
    outstanding: { seq: 1, base_rev: 3, sent: [2, "c"], current: [2, "c"] },
    buffer: [3, "defg"],
  };
  const c = Client.fromState(JSON.parse(JSON.stringify(old)));
  assert.equal(c.text, "abcdefg");
  assert.equal(c.unacknowledged(), 2);
  c.setLimits(small(2, 10));
  const saved = JSON.parse(JSON.stringify(c.state()));
  assert.deepEqual(saved.queue, [[3, "de"], [5, "fg"]]);
  assert.equal("buffer" in saved, false);
  assert.deepEqual(saved.limits, small(2, 10));
  const d = Client.fromState(saved);
  assert.deepEqual(d.limits, small(2, 10));
  assert.equal(d.text, "abcdefg");
  const next = ackNext(c);
  assert.deepEqual([next.seq, next.base_rev], [2, 4]);
  assert.throws(() => Client.fromState({ ...old, outstanding: null, buffer: [2, "x"] }), { code: "corrupt_state" });
});

test("the page's default op limits are the server's (the fixture's limits)", async () => {
  const fs = await import("node:fs");
  const fixture = JSON.parse(fs.readFileSync(new URL("../../protocol/fixtures/protocol.json", import.meta.url), "utf8"));
  const find = (v) => {
    if (v === null || typeof v !== "object") return null;
    if (v.limits) return v.limits;
    for (const x of Object.values(v)) {
      const found = find(x);
      if (found) return found;
    }
    return null;
  };
  const limits = find(fixture);
  assert.ok(limits, "the fixture announces limits");
  assert.deepEqual(opLimits(limits), DEFAULT_OP_LIMITS);
  assert.deepEqual(opLimits(undefined), DEFAULT_OP_LIMITS);
});
