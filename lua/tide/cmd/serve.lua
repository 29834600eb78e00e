-- tide serve: the OpenAI-compatible HTTP server (lua/tide/serve.lua).
local M = {}

M.usage = [[
usage: tide serve [--model PATH|RECIPE] [options]

  --model PATH          Hugging Face folder, .gguf, or a recipe .lua returning
                        { model = PATH, mla =, kv =, engine = { max_batch_tokens,
                        max_seqs, chunk, policy, preempt, prefix_cache,
                        prefix_spill = { dir, max_bytes }, speculative } }
                        (default models/dsv3-tiny)
  --host H              address to bind (default 127.0.0.1)
  --port N              port (default 8080; 0 = any free port, printed)
  --api-key KEY         require "Authorization: Bearer KEY" on every endpoint
                        but /health (or set TIDE_API_KEY)
  --name NAME           model id reported by /v1/models (default: the folder name)
  --max-body BYTES      largest request body (default 1048576)
  --timeout-ms MS       time for a request to arrive / idle keep-alive (default 10000)
  --max-conns N         open connections (default 2048)
  --max-batch-tokens N  tokens per engine step (default 256)
  --max-seqs N          sequences per step (default 16)
  --chunk N             prefill chunk per request per step (default max-batch-tokens)
  --policy P            fcfs | priority (default fcfs)
  --no-prefix-cache     turn prefix caching off
  --prefix-spill DIR    evicted prefix-cache blocks go to DIR compressed with
                        zstd and come back on a hit
  --prefix-spill-max-bytes N  disk budget of the spill (default 1 GiB)
  --speculative mtp     MTP speculative decoding for greedy requests (models
                        with an MTP layer; one draft token per step)
  --kv-blocks N         KV cache blocks (default: 4 contexts' worth)
  --max-ctx N           context length
  --threads N           compute threads
  --grace-s S           on SIGINT/SIGTERM, time to finish in-flight work (default 5)
  --recipe R            a parallel recipe (tide.parallel.recipe: EP, TP, PP);
                        under mpirun rank 0 serves and every rank steps the
                        model (lua/tide/parallel/serve.lua)]]

local spec = { model = "string", host = "string", port = "number", api_key = "string", name = "string",
  max_body = "number", timeout_ms = "number", max_conns = "number", max_batch_tokens = "number",
  max_seqs = "number", chunk = "number", policy = "string", no_prefix_cache = "flag", kv_blocks = "number",
  max_ctx = "number", threads = "number", grace_s = "number", mla = "string", recipe = "string",
  prefix_spill = "string", prefix_spill_max_bytes = "number", speculative = "string" }

local function fail(msg)
  io.stderr:write("tide serve: ", msg, "\n")
  return 1
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  if not o then return fail(e .. " (see tide serve --help)") end
  if o.recipe then return require("tide.parallel.serve").main(o) end
  local path = o.model or "models/dsv3-tiny"
  local lopts = { threads = o.threads, max_ctx = o.max_ctx, mla = o.mla }
  local recipe_engine
  if path:match("%.lua$") then
    -- a recipe: a Lua file returning { model = PATH, kv = {...}, ... } (the operator's own file)
    local chunk, le = loadfile(path)
    if not chunk then return fail(le) end
    local ok, r = pcall(chunk)
    if not ok or type(r) ~= "table" or type(r.model) ~= "string" then
      return fail("recipe " .. path .. " must return a table with a 'model' path")
    end
    for k, v in pairs(r) do if k ~= "model" and k ~= "engine" and lopts[k] == nil then lopts[k] = v end end
    path = r.model
    recipe_engine = type(r.engine) == "table" and r.engine or nil
  end
  if o.kv_blocks then lopts.kv = { blocks = o.kv_blocks } end
  local tide = require "tide"
  local m, le = tide.load(path, lopts)
  if not m then return fail(le) end
  local key = o.api_key or os.getenv("TIDE_API_KEY")
  local S = require "tide.serve"
  local srv, se = S.new(m, {
    host = o.host, port = o.port, api_key = key, max_body = o.max_body, timeout_ms = o.timeout_ms,
    max_conns = o.max_conns, grace_s = o.grace_s, name = o.name or path:match("([^/]+)/*$"),
    engine = {
      max_batch_tokens = o.max_batch_tokens or (recipe_engine and recipe_engine.max_batch_tokens),
      max_seqs = o.max_seqs or (recipe_engine and recipe_engine.max_seqs),
      chunk = o.chunk or (recipe_engine and recipe_engine.chunk),
      policy = o.policy or (recipe_engine and recipe_engine.policy),
      preempt = recipe_engine and recipe_engine.preempt,
      prefix_cache = not o.no_prefix_cache and not (recipe_engine and recipe_engine.prefix_cache == false),
      prefix_spill = o.prefix_spill and { dir = o.prefix_spill, max_bytes = o.prefix_spill_max_bytes }
        or (recipe_engine and recipe_engine.prefix_spill),
      speculative = o.speculative and { method = o.speculative } or (recipe_engine and recipe_engine.speculative),
    },
  })
  if not srv then return fail(se) end
  io.stdout:write(string.format("tide serve: %s on http://%s:%d\n", tostring(m), o.host or "127.0.0.1", srv.port))
  io.stdout:flush()
  local rc = srv:run()
  io.stdout:write("tide serve: stopped\n")
  io.stdout:flush()
  return rc
end

return M
