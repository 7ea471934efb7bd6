// Type-checked with the generated modules (tests/tests/typescript.rs copies it into generated/):
// the definitions are real WS-Kit ones, and their types are the Rust structs' shapes.
import { createRouter, withZod } from "@ws-kit/zod";
import { JoinRoom, type JoinRoomPayload, UserJoined } from "./chat.js";
import { Countdown, Ping } from "./rpc.js";
import { type ShowcasePayload, Traced, TracedCall } from "./showcase.js";

const ok: JoinRoomPayload = { roomId: "0190f3a4-8a4e-7cc0-9a3e-2f1f0d1c2b3a", username: "ada" };
// @ts-expect-error: a key the Rust struct does not have
const extra: JoinRoomPayload = { roomId: "x", username: "a", extra: 1 };
// @ts-expect-error: a number where the Rust field is a String
const wrong: JoinRoomPayload = { roomId: "x", username: 1 };

// WS-Kit's own typed router takes the generated definitions: payloads and replies are typed.
const router = createRouter()
  .plugin(withZod())
  .on(JoinRoom, (ctx) => {
    const name: string = ctx.payload.username;
    void name;
  })
  .rpc(Countdown, (ctx) => {
    const from: number = ctx.payload.from;
    ctx.reply({ n: from, done: true });
  });
// Optional fields may be left out; the nested struct is typed too.
const showcase: ShowcasePayload = { name: "a", motto: "a", home: { city: "Oslo" } };
// Declared meta travels in `meta`, typed.
const traced: Traced = { type: "TRACED", meta: { traceId: "t1" }, payload: { text: "hi" } };
void [ok, extra, wrong, router, UserJoined, Ping, showcase, traced, TracedCall];
