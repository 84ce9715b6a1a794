// A tiny raw AMQP 0-9-1 reader, for tests only: basic.get without ack and
// report the *wire type tags* of a message's headers. amqplib decodes every
// integer and float type to a JS number, so it cannot tell whether
// leveret-retry-count arrived as an integer ('b', 's', 'I', 'l', ...) or a
// double ('d'); this reads the bytes the broker sends. The connection is
// dropped afterwards, so the broker requeues whatever was fetched.

import net from "node:net";

const FIXED = { t: 1, b: 1, B: 1, s: 2, u: 2, I: 4, i: 4, f: 4, l: 8, d: 8, T: 8, D: 5, V: 0 };
const FRAME_END = 0xce;

const u8 = (n) => Buffer.from([n]);
const u16 = (n) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
};
const u32 = (n) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};
const shortstr = (s) => Buffer.concat([u8(Buffer.byteLength(s)), Buffer.from(s)]);
const longstr = (s) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);

function frame(type, channel, payload) {
  return Buffer.concat([u8(type), u16(channel), u32(payload.length), payload, u8(FRAME_END)]);
}

const method = (classId, methodId, args) => Buffer.concat([u16(classId), u16(methodId), ...args]);

/** Read frames off a socket, one promise at a time. */
function frames(socket) {
  let buffered = Buffer.alloc(0);
  const ready = [];
  const waiting = [];
  let failure = null;
  const flush = () => {
    while (waiting.length && (ready.length || failure)) {
      const { resolve, reject } = waiting.shift();
      if (ready.length) resolve(ready.shift());
      else reject(failure);
    }
  };
  socket.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 7) {
      const size = buffered.readUInt32BE(3);
      if (buffered.length < size + 8) break;
      const f = { type: buffered[0], channel: buffered.readUInt16BE(1), payload: buffered.subarray(7, 7 + size) };
      buffered = buffered.subarray(size + 8);
      if (f.type !== 8) ready.push(f); // skip heartbeats
    }
    flush();
  });
  const fail = (err) => {
    failure ??= err;
    flush();
  };
  socket.on("error", fail);
  socket.on("close", () => fail(new Error("connection closed")));
  return () => new Promise((resolve, reject) => {
    waiting.push({ resolve, reject });
    flush();
  });
}

/** Parse a field table: {name: {tag, value}} (values decoded for the simple types). */
export function parseTable(buf, offset = 0) {
  const end = offset + 4 + buf.readUInt32BE(offset);
  let at = offset + 4;
  const out = {};
  while (at < end) {
    const keyLength = buf[at];
    const key = buf.toString("utf8", at + 1, at + 1 + keyLength);
    at += 1 + keyLength;
    const tag = String.fromCharCode(buf[at]);
    at += 1;
    let value;
    if (tag in FIXED) {
      value = { b: () => buf.readInt8(at), s: () => buf.readInt16BE(at), I: () => buf.readInt32BE(at), l: () => Number(buf.readBigInt64BE(at)), d: () => buf.readDoubleBE(at) }[tag]?.();
      at += FIXED[tag];
    } else {
      const length = buf.readUInt32BE(at);
      if (tag === "S") value = buf.toString("utf8", at + 4, at + 4 + length);
      at += 4 + length;
    }
    out[key] = { tag, value };
  }
  return { table: out, end };
}

function parseProperties(payload) {
  const flags = payload.readUInt16BE(12);
  let at = 14;
  const props = {};
  const readShort = () => {
    const s = payload.toString("utf8", at + 1, at + 1 + payload[at]);
    at += 1 + payload[at];
    return s;
  };
  const bit = (n) => flags & (1 << n);
  if (bit(15)) props.contentType = readShort();
  if (bit(14)) props.contentEncoding = readShort();
  if (bit(13)) {
    const { table, end } = parseTable(payload, at);
    props.headers = table;
    at = end;
  }
  if (bit(12)) props.deliveryMode = payload[at++];
  if (bit(11)) props.priority = payload[at++];
  if (bit(10)) props.correlationId = readShort();
  if (bit(9)) props.replyTo = readShort();
  if (bit(8)) props.expiration = readShort();
  if (bit(7)) props.messageId = readShort();
  return props;
}

/**
 * Find the message with `messageId` in `queue` and return its headers as
 * {name: {tag, value}}, or null if it is not among the first `max` messages.
 */
export async function peekHeaders(url, queue, messageId, { max = 200 } = {}) {
  const u = new URL(url);
  const socket = net.connect(Number(u.port || 5672), u.hostname);
  const next = frames(socket);
  const send = (channel, payload) => socket.write(frame(1, channel, payload));
  const expect = async (classId, ...methodIds) => {
    const f = await next();
    const got = [f.payload.readUInt16BE(0), f.payload.readUInt16BE(2)];
    if (f.type !== 1 || got[0] !== classId || !methodIds.includes(got[1])) {
      throw new Error(`unexpected frame ${f.type} ${got.join(".")}: ${f.payload.subarray(4).toString("latin1")}`);
    }
    return { methodId: got[1], args: f.payload.subarray(4) };
  };
  try {
    await new Promise((resolve, reject) => socket.once("connect", resolve).once("error", reject));
    socket.write(Buffer.from("AMQP\x00\x00\x09\x01", "latin1"));
    await expect(10, 10); // connection.start
    const user = decodeURIComponent(u.username || "guest");
    const pass = decodeURIComponent(u.password || "guest");
    send(0, method(10, 11, [u32(0), shortstr("PLAIN"), longstr(`\0${user}\0${pass}`), shortstr("en_US")]));
    const tune = await expect(10, 30);
    send(0, method(10, 31, [tune.args.subarray(0, 2), tune.args.subarray(2, 6), u16(0)]));
    const vhost = decodeURIComponent(u.pathname.slice(1)) || "/";
    send(0, method(10, 40, [shortstr(vhost), shortstr(""), u8(0)]));
    await expect(10, 41);
    send(1, method(20, 10, [shortstr("")]));
    await expect(20, 11);
    for (let i = 0; i < max; i++) {
      send(1, method(60, 70, [u16(0), shortstr(queue), u8(0)])); // basic.get, no-ack false
      const { methodId } = await expect(60, 71, 72);
      if (methodId === 72) return null; // get-empty
      const header = await next();
      let remaining = Number(header.payload.readBigUInt64BE(4));
      while (remaining > 0) remaining -= (await next()).payload.length;
      const props = parseProperties(header.payload);
      if (props.messageId === messageId) return props.headers ?? {};
    }
    return null;
  } finally {
    socket.destroy();
  }
}
