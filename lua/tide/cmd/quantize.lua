-- tide quantize: a Hugging Face checkpoint -> GGUF with a scheme's per-tensor types.
local M = {}

M.usage = [[
usage: tide quantize --model PATH --scheme NAME|FILE.lua [--calib FILE] --out OUT.gguf
                     [--calib-tokens 4096] [--ctx 256] [--threads N] [--json]

  --model PATH        Hugging Face folder (config.json + safetensors)
  --scheme S          a scheme under recipes/quant (q8_0, q4_0, q4_k, q6_k, bf16, q4_0-imatrix,
                      q4_0-awq, mixed) or a .lua file returning one (see lua/tide/quant/scheme.lua)
  --calib FILE        calibration text for the imatrix / awq methods
  --calib-tokens N    calibration tokens (default 4096)
  --out OUT.gguf      the GGUF written (llama.cpp's tensor names and metadata)
  --json              print a JSON summary]]

local spec = { model = "string", scheme = "string", calib = "string", out = "string", calib_tokens = "number",
  ctx = "number", threads = "number", json = "flag", quiet = "flag" }

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide quantize: ", msg, "\n") return 1 end
  if not o then return fail(e .. " (see tide quantize --help)") end
  if not o.model or not o.out or not o.scheme then return fail("--model, --scheme and --out are required") end
  if o.threads then require("tide.tensor").set_threads(o.threads) end
  local t0 = os.time()
  local ok, info = require("tide.quant.quantize").run({ model = o.model, scheme = o.scheme, calib = o.calib,
    calib_tokens = o.calib_tokens, ctx = o.ctx, out = o.out,
    log = not o.quiet and function(msg) io.stderr:write("quantize: ", msg, "\n") end or nil })
  if not ok then return fail(info) end
  if o.json then
    print(A.json({ out = o.out, scheme = info.scheme, method = info.method, bytes = info.bytes, tensors = info.count }))
  else
    local parts = {}
    for d, n in pairs(info.count) do parts[#parts + 1] = d .. ":" .. n end
    table.sort(parts)
    print(string.format("wrote %s (%.2f MiB, scheme %s, method %s, tensors %s, %d s)", o.out, info.bytes / 2 ^ 20,
      info.scheme, info.method, table.concat(parts, " "), os.time() - t0))
  end
  return 0
end

return M
