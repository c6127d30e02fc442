// A socket.io room server that speaks Plaza's JSON messages, so that
// `plaza-load` can drive it with the same simulated users and the same
// accounting as a Plaza server, for side-by-side capacity numbers.
//
// It is what a team would write first with socket.io, in two variants:
//   --mode relay  every pose goes straight to the others in the room
//                 (`socket.to(room).emit`), one message per pose per member;
//   --mode batch  poses are kept per room and the room's changed avatars go
//                 out every 1/tick-hz seconds, on a fixed grid, as one
//                 message to the whole room (`io.to(room).emit`); the client
//                 skips its own avatar.
//
// Wire: socket.io v4 over its WebSocket transport only. Every message is the
// event "m" whose one argument is a Plaza JSON message (docs/protocol.md):
// hello → welcome, join → joined (+ a delta with `joined` to the others),
// pose → delta, chat → chat_ack + chat to the room, ping → pong.
// HTTP: POST /api/v1/auth/guest (a token that is the name; no security, this
// is a baseline, not a server), POST /api/v1/rooms (the id is the name),
// GET /health, GET /metrics (process CPU and
// RSS under Plaza's names, read by plaza-load).
//
// Usage: node server.js [--port 0] [--mode relay|batch] [--tick-hz 20]
// Prints one line `listening <port>` on stdout when ready.

"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const opts = { port: 0, mode: "relay", tickHz: 20, host: "127.0.0.1" };
  for (let i = 2; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    const need = () => {
      if (value === undefined) fail(`${flag} needs a value`);
      i++;
      return value;
    };
    switch (flag) {
      case "--port": {
        const port = Number(need());
        if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be 0–65535, not ${value}`);
        opts.port = port;
        break;
      }
      case "--host":
        opts.host = need();
        break;
      case "--mode": {
        const mode = need();
        if (mode !== "relay" && mode !== "batch") fail(`--mode must be relay or batch, not ${mode}`);
        opts.mode = mode;
        break;
      }
      case "--tick-hz": {
        const hz = Number(need());
        if (!Number.isFinite(hz) || hz < 1 || hz > 120) fail(`--tick-hz must be 1–120, not ${value}`);
        opts.tickHz = hz;
        break;
      }
      case "--help":
      case "-h":
        process.stdout.write("usage: node server.js [--port N] [--host ADDR] [--mode relay|batch] [--tick-hz HZ]\n");
        process.exit(0);
        break;
      default:
        fail(`unknown flag ${flag}; flags: --port --host --mode --tick-hz`);
    }
  }
  return opts;
}

function fail(message) {
  process.stderr.write(`plaza-peer-socketio: ${message}\n`);
  process.exit(2);
}

const opts = parseArgs(process.argv);
const tickMs = 1000 / opts.tickHz;
const startedAt = Date.now();
const tickNow = () => Math.floor((Date.now() - startedAt) / tickMs);

// room name → { avatars: Map<id, {id, user, name, p, r, t}>, nextId, dirty: Set<id> }
const rooms = new Map();

function room(name) {
  let r = rooms.get(name);
  if (!r) {
    r = { avatars: new Map(), nextId: 1, dirty: new Set() };
    rooms.set(name, r);
  }
  return r;
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function readBody(req, limit, done) {
  let size = 0;
  const chunks = [];
  req.on("data", (c) => {
    size += c.length;
    if (size > limit) {
      req.destroy();
      return;
    }
    chunks.push(c);
  });
  req.on("end", () => done(Buffer.concat(chunks).toString("utf8")));
}

function metricsText() {
  const cpu = process.cpuUsage();
  const seconds = (cpu.user + cpu.system) / 1e6;
  return (
    "# TYPE process_cpu_seconds_total gauge\n" +
    `process_cpu_seconds_total ${seconds}\n` +
    "# TYPE process_resident_memory_bytes gauge\n" +
    `process_resident_memory_bytes ${process.memoryUsage.rss()}\n` +
    "# TYPE plaza_ws_connections gauge\n" +
    `plaza_ws_connections ${io ? io.engine.clientsCount : 0}\n`
  );
}

const httpServer = http.createServer((req, res) => {
  if (req.method === "POST" && req.url === "/api/v1/auth/guest") {
    readBody(req, 4096, (text) => {
      let name;
      try {
        name = JSON.parse(text).name;
      } catch {
        return sendJson(res, 400, { error: "bad_request", message: "the body must be JSON {\"name\": …}" });
      }
      if (typeof name !== "string" || name.length < 1 || name.length > 64) {
        return sendJson(res, 400, { error: "bad_request", message: "name must be a string of 1–64 characters" });
      }
      sendJson(res, 200, { access_token: name, refresh_token: name, token_type: "Bearer", expires_in: 86400 });
    });
    return;
  }
  if (req.method === "POST" && req.url === "/api/v1/rooms") {
    // Rooms here have no capacity; naming one is all creating it means.
    readBody(req, 4096, (text) => {
      let body;
      try {
        body = JSON.parse(text);
      } catch {
        return sendJson(res, 400, { error: "bad_request", message: "the body must be JSON {\"name\": …, \"capacity\": …}" });
      }
      if (typeof body.name !== "string" || body.name.length < 1 || body.name.length > 64) {
        return sendJson(res, 400, { error: "bad_request", message: "name must be a string of 1–64 characters" });
      }
      sendJson(res, 201, { id: body.name, name: body.name, users: 0, capacity: Number(body.capacity) || 0 });
    });
    return;
  }
  if (req.method === "GET" && req.url === "/health") return sendJson(res, 200, { status: "ok" });
  if (req.method === "GET" && req.url === "/metrics") {
    const text = metricsText();
    res.writeHead(200, { "content-type": "text/plain; version=0.0.4" });
    return res.end(text);
  }
  sendJson(res, 404, { error: "not_found", message: `${req.method} ${req.url}` });
});

const io = new Server(httpServer, { transports: ["websocket"], serveClient: false, maxHttpBufferSize: 64 * 1024 });

io.on("connection", (socket) => {
  let user = null; // the token, which is the name
  let joined = null; // { name, id }

  const reply = (msg) => socket.emit("m", msg);
  const error = (code, message) => reply({ type: "error", code, message });

  socket.on("m", (msg) => {
    if (msg === null || typeof msg !== "object" || typeof msg.type !== "string") {
      return error("bad_message", "every message is an object with a string `type`");
    }
    switch (msg.type) {
      case "hello":
        user = String(msg.token || "");
        return reply({ type: "welcome", user_id: user, session: socket.id, server_time: Date.now(), tick_hz: opts.mode === "batch" ? opts.tickHz : 0 });
      case "join": {
        if (user === null) return error("not_authenticated", "send hello first");
        if (joined) return error("already_joined", "leave first");
        const name = String(msg.room || "");
        const r = room(name);
        const me = { id: r.nextId++, user, name: user, p: [0, 0, 0], r: [0, 0, 0, 1], t: null };
        const others = [...r.avatars.values()].map(({ id, user, name, p, r }) => ({ id, user, name, p, r }));
        r.avatars.set(me.id, me);
        joined = { name, id: me.id };
        socket.join(name);
        reply({ type: "joined", room: name, room_name: name, you: me.id, tick: tickNow(), avatars: others });
        socket.to(name).emit("m", { type: "delta", tick: tickNow(), avatars: [], joined: [{ id: me.id, user, name: user, p: me.p, r: me.r }], left: [] });
        return;
      }
      case "pose": {
        if (!joined) return;
        const r = rooms.get(joined.name);
        const me = r.avatars.get(joined.id);
        me.p = msg.p;
        me.r = msg.r;
        me.t = msg.t;
        if (opts.mode === "relay") {
          socket.to(joined.name).emit("m", { type: "delta", tick: tickNow(), avatars: [{ id: me.id, t: me.t, p: me.p, r: me.r }], joined: [], left: [] });
        } else {
          r.dirty.add(me.id);
        }
        return;
      }
      case "chat": {
        if (!joined) return error("not_in_room", "join a room first");
        reply({ type: "chat_ack", id: msg.id });
        io.to(joined.name).emit("m", { type: "chat", id: msg.id, room: joined.name, from: user, name: user, text: msg.text, ts: Date.now() });
        return;
      }
      case "ping":
        return reply({ type: "pong", t: msg.t, server_time: Date.now() });
      case "refresh":
      case "voice":
        return;
      case "leave":
        return leave();
      default:
        return error("bad_message", `unknown type ${msg.type}`);
    }
  });

  function leave() {
    if (!joined) return;
    const r = rooms.get(joined.name);
    r.avatars.delete(joined.id);
    r.dirty.delete(joined.id);
    socket.leave(joined.name);
    io.to(joined.name).emit("m", { type: "delta", tick: tickNow(), avatars: [], joined: [], left: [joined.id] });
    if (r.avatars.size === 0) rooms.delete(joined.name);
    joined = null;
  }

  socket.on("disconnect", leave);
});

if (opts.mode === "batch") {
  // Ticks on a fixed grid (startedAt + n × tickMs), as Plaza's rooms do, so
  // clients can learn it and send just before each tick: setInterval
  // reschedules from when its callback ran and drifts by its lateness,
  // about a millisecond a tick, which no client could follow.
  const batch = () => {
    const tick = tickNow();
    for (const [name, r] of rooms) {
      if (r.dirty.size === 0) continue;
      const avatars = [];
      for (const id of r.dirty) {
        const a = r.avatars.get(id);
        if (a) avatars.push({ id: a.id, t: a.t, p: a.p, r: a.r });
      }
      r.dirty.clear();
      io.to(name).emit("m", { type: "delta", tick, avatars, joined: [], left: [] });
    }
    // The next grid point (a late tick skips the ones it missed).
    setTimeout(batch, Math.max(0, startedAt + (tick + 1) * tickMs - Date.now()));
  };
  setTimeout(batch, tickMs);
}

httpServer.listen(opts.port, opts.host, () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    io.close();
    httpServer.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
