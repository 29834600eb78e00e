-- tide generate: generate text from a model, streamed to the terminal
-- (or one JSON object with --json).
local M = {}

M.usage = [[
usage: tide generate [--model PATH] --prompt TEXT [options]

  --model PATH        Hugging Face folder or .gguf (default models/dsv3-tiny)
  --prompt TEXT       the prompt
  --max-tokens N      tokens to generate (default 64)
  --temp T            temperature (default 0: greedy)
  --top-k K           keep the K most likely tokens
  --top-p P           nucleus sampling
  --min-p P           drop tokens below P * p_max
  --repeat-penalty R  repetition penalty (1: off)
  --seed S            random seed (default 0)
  --stop TEXT         stop when TEXT appears (may be given once)
  --chat              wrap the prompt in the model's chat template
  --mla MODE          auto | naive | absorb (DeepSeek-V3; auto: absorbed for
                      decode-sized steps, naive for prefill chunks)
  --numerics N        tide (default) | ggml: every op in llama.cpp's CPU arithmetic and
                      order (bit-for-bit comparisons with llama.cpp; slower)
  --threads N         compute threads
  --json              print {"prompt_ids", "ids", "text", "timings"} instead of streaming
  --recipe FILE       run the recipe's parallel plan (model, EP/DP/TP/PP; under mpirun one
                      rank per process, else threads); only rank 0 prints]]

local spec = { model = "string", prompt = "string", max_tokens = "number", temp = "number", top_k = "number",
  top_p = "number", min_p = "number", repeat_penalty = "number", seed = "number", stop = "string", chat = "flag",
  mla = "string", threads = "number", json = "flag", ignore_eos = "flag", recipe = "string", numerics = "string" }

local function fail(msg)
  io.stderr:write("tide generate: ", msg, "\n")
  return 1
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  if not o then return fail(e .. " (see tide generate --help)") end
  if not o.prompt then return fail("missing --prompt (see tide generate --help)") end
  if o.recipe then return require("tide.parallel.recipe").generate_cli(o) end
  local tide = require "tide"
  local m, le = tide.load(o.model or "models/dsv3-tiny", { mla = o.mla, threads = o.threads, numerics = o.numerics })
  if not m then return fail(le) end
  local tok = m.tokenizer
  if not tok then return fail(m.tokenizer_error or "the model has no tokenizer") end
  local ids
  local ok, r = pcall(function()
    if o.chat then
      local t, te = tok:apply_chat_template({ { role = "user", content = o.prompt } }, { add_generation_prompt = true })
      if type(t) == "table" then return t end
      if type(t) ~= "string" then error("chat template: " .. tostring(te), 0) end
      return tok:encode(t, { add_special = false })
    end
    return tok:encode(o.prompt, { add_special = true })
  end)
  if not ok then return fail("tokenizer: " .. tostring(r)) end
  ids = r
  local shown = ""
  local out_ids = {}
  local gopts = { max_tokens = o.max_tokens or 64, temperature = o.temp or 0, top_k = o.top_k, top_p = o.top_p,
    min_p = o.min_p, repetition_penalty = o.repeat_penalty, seed = o.seed or 0, stop = o.stop,
    ignore_eos = o.ignore_eos }
  if not o.json then
    gopts.on_token = function(id)
      out_ids[#out_ids + 1] = id
      local text = tok:decode(out_ids)
      -- print only what is new and complete (an incomplete UTF-8 tail waits)
      if #text > #shown and text:sub(1, #shown) == shown and not text:match("[\128-\255]$") then
        io.write(text:sub(#shown + 1))
        io.flush()
        shown = text
      end
    end
  end
  local new, info = m:generate(ids, gopts)
  if not new then return fail(info) end
  local text = info.stop_text or tok:decode(new)
  if o.json then
    local t = info.timings
    print(A.json({ prompt_ids = ids, ids = new, text = text, finish_reason = info.finish_reason,
      timings = { prefill_s = t.prefill_s, decode_s = t.decode_s, prompt_tokens = t.prompt_tokens,
        generated_tokens = t.generated_tokens,
        decode_tok_s = (t.decode_s > 0 and #new > 1) and (#new - 1) / t.decode_s or nil } }))
  else
    if #text > #shown and text:sub(1, #shown) == shown then io.write(text:sub(#shown + 1)) end
    io.write("\n")
  end
  return 0
end

return M
