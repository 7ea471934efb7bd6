// Reads a JSON array of cases `{module, type, payload?}` on stdin; answers a JSON array of
// `{ok, canonical, error}`: whether the compiled module's WS-Kit definition for `type` accepts
// the envelope `{type, payload}` (no `payload` key when the case has none), and the payload as
// `JSON.stringify` writes it (what a front end would send; the server judges that text).
import { readFileSync } from "node:fs";

const cases = JSON.parse(readFileSync(0, "utf8"));
const modules = new Map();
const answers = [];
for (const c of cases) {
  if (!modules.has(c.module)) {
    modules.set(c.module, await import(`./out/${c.module}.js`));
  }
  const mod = modules.get(c.module);
  const name = Object.keys(mod.MessageTypes).find((k) => mod.MessageTypes[k] === c.type);
  if (!name) throw new Error(`${c.module}: no definition for ${c.type}`);
  const envelope = "payload" in c ? { type: c.type, payload: c.payload } : { type: c.type };
  const result = mod[name].safeParse(envelope);
  answers.push({
    ok: result.success,
    canonical: "payload" in c ? JSON.stringify(c.payload) : null,
    error: result.success ? null : result.error.issues[0]?.message ?? "invalid",
  });
}
process.stdout.write(JSON.stringify(answers));
