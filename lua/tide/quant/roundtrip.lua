-- tide.quant.roundtrip: GGUFs between Tide and llama.cpp, both ways, compared
-- by greedy tokens on the fixture prompts.
--
--   llama.cpp -> Tide: Tide writes an F32 GGUF of the checkpoint, llama.cpp's
--     own quantizer (llama_model_quantize in the prebuilt libllama of the npm
--     package @node-llama-cpp/linux-x64, driven by
--     tests/node-llama/llama_quantize.c) makes Q8_0 / Q4_K_M of it; Tide and
--     llama.cpp (node-llama-cpp, tests/node-llama/check_gguf.mjs) decode the
--     same prompts greedily.
--   Tide -> llama.cpp: `tide quantize` (scheme q8_0 / q4_k) writes the GGUF,
--     both decode it.
--
--   local R = require "tide.quant.roundtrip"
--   local env, why = R.env()          -- nil, reason when the packages are missing
--   local rows = R.run(env, { models = { "llama-tiny" }, formats = { "q8_0" }, n = 24, dir = "/tmp/x" })
--
-- A row: { model, format, direction = "llama.cpp->tide" | "tide->llama.cpp",
-- prompt (1-based), match (positions where both free-running greedy
-- sequences agree, of n), prefix (tokens agreeing before the first
-- difference), forced (positions where Tide, fed llama.cpp's tokens so far,
-- picks llama.cpp's next token: one near tie costs one token instead of the
-- rest of the sequence), gap (largest logit margin by which Tide preferred
-- another token at a forced position), n, tide = {...}, llama_cpp = {...} }.
local M = {}

-- llama.cpp's llama_ftype numbers for the formats compared.
M.FTYPE = { q8_0 = 7, q4_k = 15, q4_0 = 2 } -- q4_k: MOSTLY_Q4_K_M (llama-quantize's usual choice)

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() return true end
  return false
end

-- output (stdout + stderr) and exit code of a shell command
local function sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"__EXIT:$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__EXIT:(%d+)%s*$"))
  return (out:gsub("__EXIT:%d+%s*$", "")), code
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Where node-llama-cpp (the JS package, for decoding) and libllama (for
-- quantizing) are: $TIDE_NODE_LLAMA_DIR first, then tests/node-llama.
-- Returns env { node_dir, libllama } or nil, reason.
function M.env()
  local dirs = { os.getenv("TIDE_NODE_LLAMA_DIR"), "tests/node-llama" }
  local env = {}
  for _, d in pairs(dirs) do
    if not env.node_dir and exists(d .. "/node_modules/node-llama-cpp/dist/index.js") then env.node_dir = d end
    if not env.libllama then
      local out = sh("ls " .. q(d .. "/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64") .. " 2>/dev/null")
      local so = out:match("(libllama%.v[%w%.]*%.so)") or out:match("(libllama%.so)")
      if so then env.libllama = d .. "/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/" .. so end
    end
  end
  if select(2, sh("command -v node")) ~= 0 then return nil, "node is not installed" end
  if not env.node_dir then
    return nil, "node-llama-cpp is not installed (set TIDE_NODE_LLAMA_DIR to a folder with node_modules/node-llama-cpp)"
  end
  if not env.libllama then return nil, "libllama from @node-llama-cpp/linux-x64 not found" end
  if select(2, sh("command -v cc")) ~= 0 then return nil, "no C compiler (cc) for tests/node-llama/llama_quantize.c" end
  return env
end

-- True when this CPU has AVX-512 (F and DQ), so that llama.cpp's prebuilt CPU
-- build runs one of its AVX-512 backends, whose arithmetic numerics = "ggml"
-- reproduces.
function M.llama_cpp_avx512()
  local f = io.open("/proc/cpuinfo", "rb")
  if not f then return false end
  local s = f:read("*a")
  f:close()
  local flags = s:match("\nflags%s*:%s*([^\n]*)") or ""
  return (" " .. flags .. " "):find(" avx512f ", 1, true) ~= nil and (" " .. flags .. " "):find(" avx512dq ", 1, true) ~= nil
end

-- The fixture prompts (ids with BOS) of a model: tests/fixtures/<model>.json.
function M.prompts(model)
  local f = io.open("tests/fixtures/" .. model .. ".json", "rb")
  if not f then return nil, "no fixture for " .. model end
  local d = require("cjson.safe").decode(f:read("*a"))
  f:close()
  if not d or not d.public then return nil, "bad fixture for " .. model end
  local out = {}
  for i, p in ipairs(d.public) do
    local ids = type(p.ids) == "string" and require("cjson.safe").decode(p.ids) or p.ids
    out[i] = ids
  end
  return out
end

-- Greedy tokens of llama.cpp for each prompt: a list of lists, or nil, err.
-- kv: llama.cpp's KV cache type; "F32" (the default here) with flash
-- attention off computes attention in f32 as Tide does (Tide's default KV
-- dtype); "default" keeps llama.cpp's own defaults (F16 KV, flash attention
-- auto), whose rounding moves logits by ~0.1 and flips near ties.
function M.llama_cpp_greedy(env, path, prompts, n, kv)
  local parts = {}
  for i, p in ipairs(prompts) do parts[i] = table.concat(p, ",") end
  kv = kv or "F32"
  local kvenv = kv == "default" and "" or ("TIDE_LLAMA_KV=" .. q(kv) .. " TIDE_LLAMA_FA=0 ")
  local out, code = sh(kvenv .. "TIDE_NODE_LLAMA_DIR=" .. q(env.node_dir) .. " node tests/node-llama/check_gguf.mjs " .. q(path) ..
    " " .. q(table.concat(parts, ";")) .. " " .. n)
  local line = out:match('(%{"ok":true.-%})%s*$') or out:match('(%{"ok".*%})')
  local d = line and require("cjson.safe").decode(line)
  if code ~= 0 or not d or not d.ok then return nil, "llama.cpp: " .. out:sub(-400) end
  return d.all
end

-- Greedy tokens of Tide for each prompt (model loaded from path); also the model.
-- DeepSeek-V3 runs MLA in its naive form (latent decompressed through kv_b),
-- which is what llama.cpp runs on a GGUF that has attn_kv_b (and no split
-- attn_k_b / attn_v_b): the absorbed form multiplies the same weights in
-- another order, with activations quantized at other points, and on the
-- tiny random models every such difference flips near ties.
-- numerics: "tide" (Tide's kernels) or "ggml" (llama.cpp's arithmetic, see tide.load).
function M.tide_greedy(path, prompts, n, kv, numerics)
  local m, e = require("tide").load(path, { kv = kv and { dtype = kv } or nil, mla = "naive", numerics = numerics })
  if not m then return nil, e end
  local all = {}
  for i, p in ipairs(prompts) do
    local toks, ge = m:generate(p, { max_tokens = n, temperature = 0 })
    if not toks then return nil, ge end
    all[i] = toks
  end
  return all, m
end

-- Teacher-forced agreement: Tide scores prompt .. toks in one pass; at each
-- of the n generated positions, does its argmax equal the token the other
-- side chose there? Returns the count and the smallest logit gap by which
-- Tide preferred another token where they differ (0 when none).
function M.forced(m, prompt, toks, n)
  local ids = {}
  for _, t in ipairs(prompt) do ids[#ids + 1] = t end
  for i = 1, n - 1 do ids[#ids + 1] = toks[i] end
  local lg, e = m:forward(ids)
  if not lg then return nil, e end
  local V, d = m.n_vocab, lg:data_ptr()
  local agree, worst = 0, 0
  for i = 1, n do
    local r = (#prompt - 1 + i - 1) * V
    local best, bi = -math.huge, -1
    for v = 0, V - 1 do
      if d[r + v] > best then best, bi = d[r + v], v end
    end
    if bi == toks[i] then
      agree = agree + 1
    else
      local gap = best - d[r + toks[i]]
      if gap > worst then worst = gap end
    end
  end
  return agree, worst
end

-- Positions where a and b agree (of n), and the common prefix.
function M.compare(a, b, n)
  local match, prefix, diverged = 0, 0, false
  for i = 1, n do
    if a[i] ~= nil and a[i] == b[i] then
      match = match + 1
      if not diverged then prefix = prefix + 1 end
    else
      diverged = true
    end
  end
  return match, prefix
end

local function quantizer(env, dir)
  local exe = dir .. "/llama_quantize"
  if not exists(exe) then
    local out, code = sh("cc -O2 -o " .. q(exe) .. " tests/node-llama/llama_quantize.c -ldl")
    if code ~= 0 then return nil, "building llama_quantize: " .. out end
  end
  return exe
end

-- Quantize in.gguf to out.gguf with llama.cpp's quantizer (format q8_0 | q4_k | q4_0).
function M.llama_cpp_quantize(env, dir, inp, out, format)
  local exe, e = quantizer(env, dir)
  if not exe then return nil, e end
  local o, code = sh(q(exe) .. " " .. q(env.libllama) .. " " .. q(inp) .. " " .. q(out) .. " " .. M.FTYPE[format])
  if code ~= 0 then return nil, "llama_model_quantize: " .. o:sub(-600) end
  return true
end

-- opts: models (names under models/), formats, n (24), dir (scratch folder),
-- directions ({ "llama.cpp->tide", "tide->llama.cpp" }), llama_kv (llama.cpp's
-- KV type, see llama_cpp_greedy; "F32"), tide_kv (Tide's KV dtype, "f32"), numerics (Tide's:
-- "tide" or "ggml", see tide.load), log(msg).
-- Returns rows (see the top) or nil, err.
function M.run(env, opts)
  local n, dir = opts.n or 24, assert(opts.dir, "roundtrip: dir")
  local log = opts.log or function() end
  local dirs = opts.directions or { "llama.cpp->tide", "tide->llama.cpp" }
  local rows = {}
  for _, model in ipairs(opts.models or { "llama-tiny", "dsv3-tiny" }) do
    local prompts, pe = M.prompts(model)
    if not prompts then return nil, pe end
    local base = dir .. "/" .. model .. "-f32.gguf"
    for _, format in ipairs(opts.formats or { "q8_0", "q4_k" }) do
      for _, direction in ipairs(dirs) do
        local path = dir .. "/" .. model .. "-" .. format .. (direction == "llama.cpp->tide" and "-llamacpp" or "-tide") ..
          ".gguf"
        if direction == "llama.cpp->tide" then
          if not exists(base) then
            local ok, e = require("tide.model_gguf").convert("models/" .. model, base, { dtype = "f32" })
            if not ok then return nil, "f32 gguf of " .. model .. ": " .. tostring(e) end
          end
          local ok, e = M.llama_cpp_quantize(env, dir, base, path, format)
          if not ok then return nil, e end
        else
          local ok, e = require("tide.quant.quantize").run({ model = "models/" .. model, scheme = format, out = path })
          if not ok then return nil, "tide quantize " .. model .. " " .. format .. ": " .. tostring(e) end
        end
        log(string.format("%s %s %s: %s", model, format, direction, path))
        local ours, m = M.tide_greedy(path, prompts, n, opts.tide_kv, opts.numerics)
        if not ours then return nil, "tide on " .. path .. ": " .. tostring(m) end
        local theirs, le = M.llama_cpp_greedy(env, path, prompts, n, opts.llama_kv)
        if not theirs then return nil, le end
        for i = 1, #prompts do
          local match, prefix = M.compare(ours[i], theirs[i] or {}, n)
          local forced, gap = M.forced(m, prompts[i], theirs[i] or {}, n)
          if not forced then return nil, "tide forward: " .. tostring(gap) end
          rows[#rows + 1] = { model = model, format = format, direction = direction, prompt = i, match = match,
            prefix = prefix, forced = forced, gap = gap, n = n, tide = ours[i], llama_cpp = theirs[i] }
        end
      end
    end
  end
  return rows
end

return M
