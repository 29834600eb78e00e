-- tide bench: the quantization speed cases (decode and prefill tokens/s per
-- synthetic preset and weight format) against the machine's limits measured
-- in the same run and against llama.cpp on the same GGUF. The measuring is
-- bench/quant_speed.lua's (probes, cases, llama.cpp runs); this command picks
-- defaults that finish in a few minutes and prints a table plus one JSON line
-- per case.
local M = {}

M.usage = [==[
usage: tide bench [--preset llama-1b[,dsv3-moe-1b]] [--formats q8_0,q4_0] [--threads 2] [--repeats 3]
                  [--prompt 128] [--gen 32] [--dir /tmp/tide-bench] [--no-llama-cpp] [--bw-mib 512]
                  [--json]

Decode and prefill speed of synthetic checkpoints (tide synth presets) in each
weight format, each case measured --repeats times (Tide, then llama.cpp on the
same GGUF with the same threads, then a read-bandwidth probe, interleaved, so
load from elsewhere falls on both sides); medians are reported:
  decode tok/s and its fraction of the bandwidth roofline (bytes read per
  token / read bandwidth probed in the same run), prefill tok/s and its
  fraction of the GEMM peak measured for that weight format, and Tide /
  llama.cpp ratios when node-llama-cpp is installed (TIDE_NODE_LLAMA_DIR or
  tests/node-llama), otherwise the llama.cpp columns say why they are empty.

  --preset P[,P]     presets of tide synth: llama-1b (default), dsv3-moe-1b, llama-tiny, dsv3-moe-tiny
  --formats F[,F]    bf16, q8_0, q4_0, q4_k (default q8_0,q4_0)
  --threads N        threads for Tide and llama.cpp (default 2; on a machine others are loading, use 1:
                     llama.cpp's spinning thread barrier collapses when its threads are descheduled)
  --repeats N        repeats per case, medians reported (default 3)
  --prompt N         prompt tokens (prefill; default 128)
  --gen N            generated tokens (decode; default 32)
  --dir DIR          where checkpoints are made once and reused (default /tmp/tide-bench; ~2.2 GB per 1B preset)
  --no-llama-cpp     skip the llama.cpp side
  --bw-mib N         size of the bandwidth probe buffer (default 512)
  --json             JSON lines only (no table)

The full issue benchmark (512-token prompt, 128 generated, both presets, all
formats) is `tide bench --preset llama-1b,dsv3-moe-1b --formats bf16,q8_0,q4_0,q4_k --prompt 512 --gen 128`
or `tide run bench/quant_speed.lua`.]==]

local spec = { preset = "string", presets = "string", formats = "string", types = "string", threads = "number",
  repeats = "number", prompt = "number", gen = "number", dir = "string", no_llama_cpp = "flag", bw_mib = "number",
  json = "flag" }

-- bench/quant_speed.lua next to the lua/ folder of this tide (or in the working directory).
local function speed_lib()
  local dirs = {}
  if package.tide_lua_dir then dirs[#dirs + 1] = package.tide_lua_dir .. "/../bench/quant_speed.lua" end
  dirs[#dirs + 1] = "bench/quant_speed.lua"
  for _, p in ipairs(dirs) do
    local f = io.open(p, "rb")
    if f then
      f:close()
      local chunk, e = loadfile(p)
      if not chunk then return nil, e end
      return chunk()
    end
  end
  return nil, "bench/quant_speed.lua not found (looked in " .. table.concat(dirs, ", ") .. ")"
end

local function list(s, default)
  local t = {}
  for x in (s or default):gmatch("[^,%s]+") do t[#t + 1] = x end
  return t
end

local KNOWN_FORMATS = { bf16 = true, q8_0 = true, q4_0 = true, q4_k = true }

-- The human-readable table (rows as B.run_case returns them).
function M.table(rows, bw, peak, threads, llama_why)
  local out = {}
  local function f(v, fmt) return v and string.format(fmt, v) or "-" end
  out[#out + 1] = string.format("read bandwidth %.1f GB/s (start of run), f32 GEMM peak %.1f GFLOP/s, %d thread%s", bw,
    peak.f32, threads, threads == 1 and "" or "s")
  out[#out + 1] = string.format("%-22s %10s %10s %12s %10s %12s %11s %11s %9s", "case", "decode t/s", "of roofline",
    "prefill t/s", "of peak", "llama dec/pp", "decode vs", "prefill vs", "cpu vs")
  for _, r in ipairs(rows) do
    out[#out + 1] = string.format("%-22s %10.2f %10s %12.1f %10s %12s %11s %11s %9s", r.case, r.decode_tps,
      f(r.decode_roofline_frac and 100 * r.decode_roofline_frac, "%.0f%%"), r.prefill_tps,
      f(r.prefill_peak_frac and 100 * r.prefill_peak_frac, "%.0f%%"),
      r.llama_decode_tps and string.format("%.1f/%.0f", r.llama_decode_tps, r.llama_prefill_tps) or "-",
      f(r.decode_vs_llama, "%.2fx"), f(r.prefill_vs_llama, "%.2fx"),
      r.cpu_decode_vs_llama and string.format("%.2f/%.2f", r.cpu_decode_vs_llama, r.cpu_prefill_vs_llama) or "-")
  end
  out[#out + 1] = "(medians; roofline = read bandwidth probed between repeats / bytes read per token; peak = GEMM"
    .. " GFLOP/s measured for the format; vs = Tide / llama.cpp tokens/s on the same GGUF and threads; cpu vs ="
    .. " the decode/prefill ratios in CPU seconds of each process, which a loaded machine disturbs less"
    .. (llama_why and ("; llama.cpp skipped: " .. llama_why) or "") .. ")"
  return table.concat(out, "\n")
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide bench: ", msg, "\n") return 1 end
  if not o then return fail(e .. " (see tide bench --help)") end
  local presets = list(o.preset or o.presets, "llama-1b")
  local formats = list(o.formats or o.types, "q8_0,q4_0")
  local S = require "tide.synth"
  for _, p in ipairs(presets) do
    if not S.presets[p] then return fail("unknown preset '" .. p .. "' (see tide bench --help)") end
  end
  for _, t in ipairs(formats) do
    if not KNOWN_FORMATS[t] then return fail("unknown format '" .. t .. "' (bf16, q8_0, q4_0, q4_k)") end
  end
  local TH, R = o.threads or 2, o.repeats or 3
  if TH < 1 or R < 1 or (o.prompt and o.prompt < 1) or (o.gen and o.gen < 2) then
    return fail("--threads, --repeats, --prompt must be >= 1 and --gen >= 2")
  end
  local B, le = speed_lib()
  if not B then return fail(le) end
  local T = require "tide.tensor"
  T.set_threads(TH)
  local dir = o.dir or "/tmp/tide-bench"
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  local have_node, why = B.node_ok(o.no_llama_cpp)
  if not have_node then io.stderr:write("tide bench: llama.cpp comparison skipped: ", why, "\n") end
  local bw_mib = o.bw_mib or 512
  local bw = B.probe_bw(bw_mib)
  local peak = { f32 = B.probe_gemm("f32", 256, 2048, 2048) }
  for _, ty in ipairs(formats) do
    if ty ~= "bf16" then peak[ty] = B.probe_gemm(ty, 256, 2048, 2048) end
  end
  print(A.json({ probe = "read_bw", threads = TH, gbps = bw, mib = bw_mib }))
  local keys = {}
  for k in pairs(peak) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    print(A.json({ probe = "gemm", wtype = k, threads = TH, gflops = peak[k], shape = "256x2048x2048" }))
  end
  io.stdout:flush()
  local rows = {}
  for _, preset in ipairs(presets) do
    for _, ty in ipairs(formats) do
      local ok, row = pcall(B.run_case, { dir = dir, preset = preset, type = ty, prompt = o.prompt or 128,
        gen = o.gen or 32, repeats = R, threads = TH, peak = peak, have_node = have_node, bw_mib = bw_mib })
      if not ok then return fail(preset .. "/" .. ty .. ": " .. tostring(row)) end
      row.bench = "quant_speed"
      print(A.json(row))
      io.stdout:flush()
      rows[#rows + 1] = row
    end
  end
  if not o.json then print(M.table(rows, bw, peak, TH, not have_node and why or nil)) end
  return 0
end

return M
