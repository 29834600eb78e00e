// llama.cpp side of bench/serve.lua: N_SEQ sequences batched in one context
// (node-llama-cpp `sequences: N_SEQ`; its batcher puts every sequence's next
// token into one llama_decode call), each prefilled with its own N_PROMPT
// tokens and then decoding N_GEN tokens greedily, on THREADS threads. The
// decode is timed from the moment every sequence has its first token; it is
// cut into WINDOWS equal windows of token indices (a window ends when every
// sequence has produced its last token of the window), so the caller can take
// a median. One JSON line:
//   {"ok":true,"n_seq":16,"prefill_s":...,"decode_s":...,"decode_tokens":...,
//    "window_tps":[...],"window_tps_cpu":[...],"generated":...}
// window_tps_cpu: tokens / (process CPU seconds / THREADS) per window (the
// rate with the threads' cores to itself; llama.cpp's threads poll while
// waiting, so on a loaded machine this is a lower bound).
// usage: node bench_batched.mjs MODEL.gguf N_SEQ N_PROMPT N_GEN THREADS [SEED] [WINDOWS]
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
const [modelPath, ns, np, ng, th, seedArg, winArg] = process.argv.slice(2);
const nSeq = Number(ns || 16), nPrompt = Number(np || 32), nGen = Number(ng || 32), threads = Number(th || 1);
const nWin = Math.max(1, Number(winArg || 1));
let s = Number(seedArg || 1) >>> 0 || 1;
const rnd = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return s; };
try {
  const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  const ctx = await model.createContext({
    sequences: nSeq, contextSize: nPrompt + nGen + 16, batchSize: Math.max(512, nSeq), threads,
  });
  const seqs = [];
  const prompts = [];
  for (let i = 0; i < nSeq; i++) {
    seqs.push(ctx.getSequence());
    const p = [];
    for (let j = 0; j < nPrompt; j++) p.push(3 + (rnd() % 8000));
    prompts.push(p);
  }
  // prefill all but the last prompt token of every sequence, batched
  let t0 = performance.now();
  await Promise.all(seqs.map((q, i) => q.evaluateWithoutGeneratingNewTokens(prompts[i].slice(0, nPrompt - 1))));
  const prefill = (performance.now() - t0) / 1000;
  // decode: the last prompt token, then nGen - 1 more steps; times of each token index
  const stamps = seqs.map(() => []);
  const cpuAt = new Map(); // token index -> process CPU seconds when every sequence has it
  const have = new Array(nGen).fill(0);
  await Promise.all(seqs.map(async (q, i) => {
    for await (const tok of q.evaluate([prompts[i][nPrompt - 1]], { temperature: 0 })) {
      void tok;
      stamps[i].push(performance.now());
      const k = stamps[i].length - 1;
      if (++have[k] === nSeq) { const u = process.cpuUsage(); cpuAt.set(k, (u.user + u.system) / 1e6); }
      if (stamps[i].length >= nGen) break;
    }
  }));
  const done = (k) => Math.max(...stamps.map((t) => t[k])); // every sequence has token index k
  const generated = stamps.reduce((a, t) => a + t.length, 0);
  const per = Math.floor((nGen - 1) / nWin);
  const window_tps = [], window_tps_cpu = [];
  for (let w = 0; w < nWin; w++) {
    const a = w * per, b = (w + 1) * per;
    window_tps.push((nSeq * (b - a)) / ((done(b) - done(a)) / 1000));
    window_tps_cpu.push((nSeq * (b - a)) / ((cpuAt.get(b) - cpuAt.get(a)) / threads));
  }
  const decode_s = (done(nWin * per) - done(0)) / 1000;
  console.log(JSON.stringify({ ok: true, n_seq: nSeq, threads, prompt: nPrompt, prefill_s: prefill, decode_s,
    decode_tokens: nSeq * nWin * per, window_tps, window_tps_cpu, generated }));
  await ctx.dispose(); await model.dispose(); await llama.dispose();
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  process.exit(1);
}
