-- tide synth: write a random-weight Hugging Face checkpoint with a real shape.
local M = {}

M.usage = [[
usage: tide synth --arch llama|deepseek_v3 --preset NAME --out DIR [--dtype bf16|f16|f32] [--seed N] [--std X]

  presets: llama-1b, dsv3-moe-1b (the benchmark shapes), llama-tiny, dsv3-moe-tiny (tests)
  Weights N(0, std) (default 0.02), norms 1; the same seed gives the same files.
  The tokenizer (8192 tokens) is copied from models/dsv3-tiny; the config keeps
  the preset's vocabulary size (ids the tokenizer never produces are unused).]]

local spec = { arch = "string", preset = "string", out = "string", dtype = "string", seed = "number", std = "number",
  tokenizer = "string", quiet = "flag" }

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide synth: ", msg, "\n") return 1 end
  if not o then return fail(e .. " (see tide synth --help)") end
  if not o.preset or not o.out then return fail("--preset and --out are required (see tide synth --help)") end
  local S = require "tide.synth"
  local t0 = os.clock()
  local ok, info = S.write({ arch = o.arch, preset = o.preset, out = o.out, dtype = o.dtype, seed = o.seed,
    std = o.std, tokenizer = o.tokenizer,
    progress = not o.quiet and function(msg) io.stderr:write("synth: ", msg, "\n") end or nil })
  if not ok then return fail(info) end
  print(string.format("wrote %s: %.1fM params, %.0f MiB in %d shards (%.1f s cpu)", o.out, info.params / 1e6,
    info.bytes / 2 ^ 20, info.shards, os.clock() - t0))
  return 0
end

return M
