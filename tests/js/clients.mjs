// Drives the official JavaScript clients (openai, ollama; versions in package.json)
// against a running Locara server: `node clients.mjs URL`. Each check prints one JSON
// line {"check": name, "ok": bool, "value"| "error": ...}; tests/test_clients_js.py
// asserts on them. Nothing here reaches the network beyond URL.
import OpenAI from "openai";
import { Ollama } from "ollama";

const base = process.argv[2];
const MODEL = "smollm2-135m-instruct";
const EMBED = "all-minilm-l6-v2";
const oai = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
const oll = new Ollama({ host: base });
const CAPITAL = [{ role: "user", content: "Name the capital city of France." }];
const LONG = Array.from({ length: 50 }, (_, i) =>
  `Paragraph ${i}: the river runs through the old town, past the market and the bridge.`).join(" ");
const PERSON = {
  type: "object",
  properties: { name: { type: "string" }, age: { type: "integer" } },
  required: ["name", "age"],
};

async function check(name, fn) {
  try {
    console.log(JSON.stringify({ check: name, ok: true, value: await fn() }));
  } catch (err) {
    console.log(JSON.stringify({ check: name, ok: false, error: `${err.status ?? err.name}: ${err.message}` }));
  }
}

// -- openai ---------------------------------------------------------------------------
await check("openai.models", async () => (await oai.models.list()).data.map((m) => m.id));
await check("openai.retrieve", async () => (await oai.models.retrieve(MODEL)).id);
await check("openai.chat", async () => {
  const r = await oai.chat.completions.create({ model: MODEL, messages: CAPITAL, max_tokens: 12, temperature: 0 });
  return { message: r.choices[0].message, usage: r.usage };
});
await check("openai.history", async () => {
  // The assistant message goes back into the history as the client returned it.
  const first = await oai.chat.completions.create({ model: MODEL, messages: CAPITAL, max_tokens: 8 });
  const r = await oai.chat.completions.create({
    model: MODEL, max_tokens: 8,
    messages: [...CAPITAL, first.choices[0].message, { role: "user", content: "And of Italy?" }],
  });
  return r.choices[0].message.content;
});
await check("openai.stream", async () => {
  const s = await oai.chat.completions.create({
    model: MODEL, messages: CAPITAL, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  let text = "", usage = null, finish = null;
  for await (const c of s) {
    text += c.choices[0]?.delta?.content ?? "";
    finish = c.choices[0]?.finish_reason ?? finish;
    usage = c.usage ?? usage;
  }
  return { text, usage, finish };
});
await check("openai.abort", async () => {
  // A client that stops reading mid-stream; the server must answer the next request.
  const ctl = new AbortController();
  const s = await oai.chat.completions.create(
    { model: MODEL, messages: [{ role: "user", content: "Tell a long story." }], max_tokens: 400, stream: true },
    { signal: ctl.signal });
  let n = 0;
  try { for await (const _ of s) if (++n === 3) ctl.abort(); } catch (err) { if (err.name !== "APIUserAbortError") throw err; }
  const r = await oai.chat.completions.create({ model: MODEL, messages: CAPITAL, max_tokens: 4 });
  return { chunks_before_abort: n, next: r.choices[0].finish_reason };
});
await check("openai.json_schema", async () => {
  const r = await oai.chat.completions.create({
    model: MODEL, max_tokens: 60, messages: [{ role: "user", content: "Invent a person." }],
    response_format: { type: "json_schema", json_schema: { name: "person", schema: PERSON, strict: true } },
  });
  return JSON.parse(r.choices[0].message.content);
});
await check("openai.completions", async () =>
  (await oai.completions.create({ model: MODEL, prompt: "The sky is", max_tokens: 5 })).choices[0].text);
await check("openai.embeddings", async () => {
  // The JS client asks for base64 by default and decodes it itself.
  const r = await oai.embeddings.create({ model: EMBED, input: ["hello", "world"] });
  return { n: r.data.length, dims: r.data[0].embedding.length, norm: Math.hypot(...r.data[0].embedding) };
});
await check("openai.embeddings_too_long", async () =>
  (await oai.embeddings.create({ model: EMBED, input: LONG })).data.length);

// -- ollama ---------------------------------------------------------------------------
await check("ollama.list", async () => (await oll.list()).models.map((m) => m.name));
await check("ollama.show", async () => (await oll.show({ model: MODEL })).capabilities);
await check("ollama.chat", async () =>
  (await oll.chat({ model: MODEL, messages: CAPITAL, options: { temperature: 0, num_predict: 12 } })).message);
await check("ollama.generate_stream", async () => {
  let text = "", done = null;
  for await (const p of await oll.generate({ model: MODEL, prompt: "Say hello.", stream: true, options: { num_predict: 8 } })) {
    text += p.response;
    if (p.done) done = { reason: p.done_reason, eval_count: p.eval_count };
  }
  return { text, done };
});
await check("ollama.format", async () =>
  JSON.parse((await oll.chat({ model: MODEL, messages: [{ role: "user", content: "Invent a person." }], format: PERSON, options: { num_predict: 60 } })).message.content));
await check("ollama.embed", async () => {
  // Longer than all-MiniLM's context: Ollama (and Locara) cut it by default.
  const r = await oll.embed({ model: EMBED, input: ["a short one", LONG] });
  return { n: r.embeddings.length, dims: r.embeddings[1].length };
});
await check("ollama.embeddings", async () => (await oll.embeddings({ model: EMBED, prompt: "hello" })).embedding.length);
await check("ollama.ps", async () => (await oll.ps()).models.map((m) => m.name));
await check("ollama.abort", async () => {
  const s = await oll.chat({ model: MODEL, messages: [{ role: "user", content: "Tell a long story." }], stream: true, options: { num_predict: 400 } });
  let n = 0;
  try { for await (const _ of s) if (++n === 3) s.abort(); } catch (err) { if (err.name !== "AbortError") throw err; }
  const r = await oll.chat({ model: MODEL, messages: CAPITAL, options: { num_predict: 4 } });
  return { parts_before_abort: n, next: r.done_reason };
});
await check("ollama.missing_model", async () => {
  try { await oll.show({ model: "no-such-model" }); return "no error"; } catch (err) { return { status: err.status_code, error: err.error }; }
});
