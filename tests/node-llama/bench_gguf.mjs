// llama.cpp side of bench/quant_speed.lua: prefill N_PROMPT tokens, then
// decode N_GEN tokens greedily, on THREADS threads; one JSON line:
//   {"ok":true,"prefill_s":...,"decode_s":...,"prompt":N,"generated":M,"cpu_prefill_s":...,"cpu_decode_s":...}
// (cpu_*: CPU seconds of the whole process over the same spans, for comparisons on a shared machine)
// usage: node bench_gguf.mjs MODEL.gguf N_PROMPT N_GEN THREADS [SEED]
// node-llama-cpp: $TIDE_NODE_LLAMA_DIR/node_modules or next to this script.
import path from "node:path";
import fs from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
let entry = null;
for (const d of [process.env.TIDE_NODE_LLAMA_DIR, here].filter(Boolean)) {
  const p = path.join(d, "node_modules", "node-llama-cpp", "dist", "index.js");
  if (fs.existsSync(p)) { entry = p; break; }
}
if (!entry) {
  console.log(JSON.stringify({ ok: false, skip: true, error: "node-llama-cpp not installed" }));
  process.exit(0);
}
const [modelPath, np, ng, th, seedArg] = process.argv.slice(2);
const nPrompt = Number(np || 512), nGen = Number(ng || 128), threads = Number(th || 1);
let s = Number(seedArg || 1) >>> 0 || 1;
// CPU seconds (user + system, all threads of the process) of a process.cpuUsage() difference
const cpuSec = (u) => (u.user + u.system) / 1e6;
const rnd = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s; };
try {
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  const ctx = await model.createContext({ contextSize: nPrompt + nGen + 16, batchSize: nPrompt, threads });
  const seq = ctx.getSequence();
  const prompt = [];
  for (let i = 0; i < nPrompt; i++) prompt.push(3 + (rnd() % 8000));
  let t0 = performance.now(), c0 = process.cpuUsage();
  await seq.evaluateWithoutGeneratingNewTokens(prompt);
  const prefill = (performance.now() - t0) / 1000, cpuPrefill = cpuSec(process.cpuUsage(c0));
  let n = 0;
  t0 = performance.now();
  c0 = process.cpuUsage();
  for await (const tok of seq.evaluate([prompt[nPrompt - 1]], { temperature: 0 })) {
    n++;
    if (n >= nGen) break;
  }
  const decode = (performance.now() - t0) / 1000, cpuDecode = cpuSec(process.cpuUsage(c0));
  console.log(JSON.stringify({ ok: true, prefill_s: prefill, decode_s: decode, prompt: nPrompt, generated: n,
    cpu_prefill_s: cpuPrefill, cpu_decode_s: cpuDecode }));
  await ctx.dispose(); await model.dispose(); await llama.dispose();
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  process.exit(1);
}
