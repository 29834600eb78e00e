-- tide.quant.quantize: a Hugging Face checkpoint -> a GGUF with the
-- per-tensor types of a scheme (tide.quant.scheme), written through
-- tide.model_gguf (llama.cpp's names and metadata).
--
--   local ok, info = require("tide.quant.quantize").run({ model = "models/dsv3-tiny",
--     scheme = "q4_0-imatrix", calib = "tests/data/val.txt", out = "/tmp/d.gguf" })
local S = require "tide.quant.scheme"
local IM = require "tide.quant.imatrix"

local M = {}

-- Calibration tokens of a text file (documents as tide ppl splits them).
function M.calib_tokens(model, file, max_tokens)
  local f = io.open(file, "rb")
  if not f then return nil, "cannot read " .. file end
  local text = f:read("*a")
  f:close()
  local P = require "tide.cmd.ppl"
  return P.token_stream(model, P.documents(text), max_tokens)
end

-- run(opts) -> true, info or nil, err. opts: model (folder), scheme (name,
-- file or table), calib (text file), calib_tokens (default 4096), ctx (256),
-- out (.gguf), log(msg).
function M.run(opts)
  local log = opts.log or function() end
  local scheme, se = S.load(opts.scheme or "q8_0")
  if not scheme then return nil, se end
  if type(opts.model) ~= "string" or opts.model:match("%.gguf$") then
    return nil, "--model must be a Hugging Face folder (config.json + safetensors)"
  end
  if type(opts.out) ~= "string" then return nil, "missing output path" end
  local tide = require "tide"
  local m, e = tide.load(opts.model, { mla = "naive", kv = { blocks = math.ceil((opts.ctx or 256) / 16) + 2 } })
  if not m then return nil, e end
  local nl = m.config.num_hidden_layers
  local method = scheme.method
  if method ~= "rtn" and not opts.calib then
    log("scheme " .. scheme.name .. " uses " .. method .. " but no --calib text was given: round to nearest")
    method = "rtn"
  end
  -- the types, decided up front (general.file_type, the report)
  local types = {}
  local function type_of(hf, t) return S.type_for(scheme, hf, t:shape(), nl, t:dtype()) end
  for name, t in pairs(m.tensors) do
    if t:ndim() >= 2 then types[name] = type_of(name, t) end
  end
  local stats, over, report
  if method ~= "rtn" then
    if not m.tokenizer then return nil, "calibration needs a tokenizer: " .. tostring(m.tokenizer_error) end
    local toks, te = M.calib_tokens(m, opts.calib, opts.calib_tokens or 4096)
    if not toks then return nil, te end
    log(string.format("calibration: %d tokens of %s", #toks, opts.calib))
    local err
    stats, err = IM.collect(m, toks, opts.ctx or 256)
    if not stats then return nil, "calibration: " .. tostring(err) end
    if method == "awq" then
      over, stats, report = require("tide.quant.awq").apply(m, stats, type_of)
      for _, r in ipairs(report) do
        log(string.format("awq %-48s alpha %.3f  weighted error %.4g -> %.4g", r.norm, r.alpha, r.err_rtn, r.err))
      end
    end
  end
  local gtypes = {}
  local function imat_of(hf)
    if not stats then return nil end
    if hf:find("*", 1, true) then
      local list, e0 = {}, 0
      while m.tensors[(hf:gsub("%*", tostring(e0)))] do
        local st = stats[(hf:gsub("%*", tostring(e0)))]
        list[e0 + 1] = st and st.mean or false
        e0 = e0 + 1
      end
      for i = 1, e0 do if list[i] == false then list[i] = nil end end
      return list
    end
    local st = stats[hf]
    return st and st.mean
  end
  local ok, we = require("tide.model_gguf").convert(opts.model, opts.out, {
    tensors = over,
    file_type = S.file_type(scheme, types),
    type_of = function(gname, hf, t)
      local d = type_of(hf or gname, t)
      gtypes[gname] = d
      return d
    end,
    quantize = method ~= "rtn" and function(_, hf, t, d)
      if not IM.supported(d) or not hf then return nil end
      return IM.quantize(t, d, imat_of(hf))
    end or nil,
  })
  if not ok then return nil, we end
  local count = {}
  for _, d in pairs(gtypes) do count[d] = (count[d] or 0) + 1 end
  local fh = io.open(opts.out, "rb")
  local size = fh and fh:seek("end") or 0
  if fh then fh:close() end
  return true, { scheme = scheme.name, method = method, types = gtypes, count = count, bytes = size, awq = report }
end

return M
