// The JavaScript client state machine (server/web/ot.js), with the same
// scenarios as ot-core's client.rs unit tests, plus a randomised
// convergence check of two clients and a server history in memory.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Client, apply, replaceRange, transform, cpLen } from "../../server/web/ot.js";

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
    const inbox = [[], []]; // server → client messages, FIFO
    const outbox = [[], []]; // client → server ops
    const receive = (i, out) => {
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
