// WS-Kit 0.10 (TypeScript) on Bun: the third peer of `ws-kit-bench compare`, serving the frames
// of bench/src/servers.rs, written as a WS-Kit user would (zod schemas, validation on, Bun's
// native pub/sub through `bunPubSub`):
// - `PING {text}` (RPC) → `PONG {reply: "Got: <text>"}`, correlation id copied by `ctx.reply`;
// - `JOIN {topic}` (RPC) → subscribes, then `JOINED {topic}`;
// - `SAY {topic, text, sentUs, seq, from}` → `MSG {text, sentUs, seq, from}` to every subscriber
//   of the topic (the sender too, when subscribed);
// - on open, `WELCOME {message: "Connected"}`.
//
// Usage: bun server.ts [--port P]   (or PORT=P; 0 = any free port). Loopback only. Prints
// `listening on ws://127.0.0.1:PORT` once bound, as the Rust servers do.
//
// `serve()` of @ws-kit/bun takes no hostname (it binds every interface) and prints its own line,
// so this uses the documented low-level pair `createBunHandler` + `Bun.serve` instead, bound to
// 127.0.0.1, with the pub/sub adapter wired to that server.

import { bunPubSub, createBunHandler } from "@ws-kit/bun";
import { withPubSub } from "@ws-kit/pubsub";
import { createRouter, message, rpc, withZod, z } from "@ws-kit/zod";

const Ping = rpc("PING", { text: z.string() }, "PONG", { reply: z.string() });
const Join = rpc("JOIN", { topic: z.string() }, "JOINED", { topic: z.string() });
const Say = message("SAY", {
  topic: z.string(),
  text: z.string(),
  sentUs: z.number().int().nonnegative(),
  seq: z.number().int().nonnegative(),
  from: z.number().int().nonnegative(),
});
const Welcome = message("WELCOME", { message: z.string() });
const Msg = message("MSG", {
  text: z.string(),
  sentUs: z.number().int().nonnegative(),
  seq: z.number().int().nonnegative(),
  from: z.number().int().nonnegative(),
});

function port(): number {
  const args = process.argv.slice(2);
  const at = args.indexOf("--port");
  const raw = at >= 0 ? args[at + 1] : process.env.PORT;
  const n = Number(raw ?? 3000);
  if (!Number.isInteger(n) || n < 0 || n > 65535) {
    console.error(`bad port: ${raw}`);
    process.exit(2);
  }
  return n;
}

// The handlers reach the router lazily, so the server can be bound first and the Bun pub/sub
// adapter (which needs the server) plugged in before any connection arrives.
const base = createRouter().plugin(withZod());
const { fetch, websocket } = createBunHandler(base);
const server = Bun.serve({ hostname: "127.0.0.1", port: port(), fetch, websocket });
const router = base.plugin(withPubSub({ adapter: bunPubSub(server) }));

// Every connection is greeted, as in the Rust servers: the idle measurement counts a connection
// once its WELCOME arrived.
router.onOpen((ctx) => {
  ctx.send(Welcome, { message: "Connected" });
});

router.rpc(Ping, (ctx) => {
  ctx.reply({ reply: `Got: ${ctx.payload.text}` });
});

router.rpc(Join, async (ctx) => {
  await ctx.topics.subscribe(ctx.payload.topic);
  // WS-Kit 0.10 gap: with `bunPubSub`, `ctx.topics.subscribe` ends in `BunPubSub.subscribe`, a
  // no-op (it expects `ws.subscribe`, which nothing calls), so `ctx.publish` (Bun's
  // `server.publish`) would reach no one. Subscribing the native socket is the workaround.
  ctx.ws.subscribe(ctx.payload.topic);
  ctx.reply({ topic: ctx.payload.topic });
});

router.on(Say, async (ctx) => {
  const { topic, text, sentUs, seq, from } = ctx.payload;
  await ctx.publish(topic, Msg, { text, sentUs, seq, from });
});

console.log(`listening on ws://127.0.0.1:${server.port}`);
