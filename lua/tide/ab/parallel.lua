-- tide.ab.parallel: arms with a parallel plan (recipe.parallel = { ranks = N,
-- ep = N, ... } for DP-attention + EP, or { ranks = N, tp = N }), run on N
-- rank threads in this process by tide.comm.launch, one launch per run.
--
-- Each rank loads the model and applies the plan, then serves a warm-up
-- round (its first request, 4 tokens: JIT and workspaces, like the warm-up
-- runs of an in-process arm), drains, meets the others at a barrier, resets
-- the communicator's counters and the expert-load counters, and serves the
-- timed round. With EP the requests are spread over the ranks (request i on
-- rank (i - 1) % N) and each rank runs its own one after another (so the
-- arm is a closed loop at concurrency N); with TP every rank runs every
-- request. The run's wall time is from the barrier to the end of the last
-- rank's last request; TTFT and inter-token gaps come from per-token clock
-- reads on the rank that owns the request (CLOCK_MONOTONIC: one clock for
-- every rank of one machine). Each run reports the bytes every rank handed
-- to the communicator (tide.comm stats, summed over ranks, by op) and, for
-- EP, the logical expert loads and each rank's slot loads per MoE layer.
local R = require "tide.parallel.recipe"

local M = {}

function M.is_parallel(r)
  return type(r) == "table" and type(r.parallel) == "table" and (r.parallel.ranks or 1) > 1
end

-- open(recipe) -> arm (its model loaded here too: tokenizer and request list)
function M.open(r)
  local p = r.parallel
  if not p.ep and (p.tp or 1) <= 1 then
    return nil, "arm " .. tostring(r.name) .. ": parallel arms support ep (DP-attention + EP) or tp"
  end
  local ok, err = R.check(r, p.ranks)
  if not ok then return nil, "arm " .. tostring(r.name) .. ": " .. err end
  local model, me = require("tide").load(r.model, { mla = r.mla, kv = r.kv, max_ctx = r.max_ctx })
  if not model then return nil, "arm " .. tostring(r.name) .. ": " .. tostring(me) end
  local red = p.eplb and p.eplb.redundant or 0
  local plan = p.ep and ("DP-attention + EP" .. (red > 0 and (", EPLB +" .. red .. " slots") or "")) or "TP"
  return { recipe = r, name = r.name or "arm", model = model, parallel = true, ranks = p.ranks, plan = plan }
end

-- run(arm, reqs) -> the same fields as tide.ab.runner.run, plus comm_bytes,
-- comm (bytes by op, all ranks), expert_loads, slot_loads.
function M.run(arm, reqs)
  local comm = require "tide.comm"
  local runner = require "tide.ab.runner"
  local r = arm.recipe
  local list = {}
  for i, q in ipairs(reqs) do
    list[i] = { ids = q.ids, max_tokens = q.max_tokens, sampling = q.sampling }
  end
  local job = { recipe = r, requests = list, warmup_tokens = r.warmup_tokens or 4 }
  local file = package.searchpath("tide.ab.parallel_rank", package.path)
  if not file then return { error = "tide.ab.parallel_rank not found on package.path", errors = #reqs } end
  local has_peak = runner.reset_peak()
  local res, err = comm.launch(file, { ranks = arm.ranks, arg = R.ser(job), threads = true, timeout = r.parallel.timeout })
  if not res or not res[1] or res[1] == "" then
    return { error = tostring(err or "no result from rank 0"), errors = #reqs, requests = #reqs, out_tokens = 0,
      ttft = {}, itl = {}, wall_s = 0, req_s = 0, tok_s = 0 }
  end
  local ranks = R.deser(res[1])
  local t0, t1 = math.huge, -math.huge
  local ttft, itl, out_tokens, errors = {}, {}, 0, 0
  local bytes, by_op, kv_bytes, kv_tok = 0, {}, 0, nil
  local slot_loads = {}
  for _, rk in ipairs(ranks) do
    t0, t1 = math.min(t0, rk.t0), math.max(t1, rk.t1)
    -- TP: every rank runs every request; rank 0's clock reads stand for them
    for _, q in pairs((r.parallel.ep or rk.rank == 0) and rk.reqs or {}) do
      if q.error then
        errors = errors + 1
      elseif #q.times > 0 then
        ttft[#ttft + 1] = q.times[1] - q.t_add
        for j = 2, #q.times do itl[#itl + 1] = q.times[j] - q.times[j - 1] end
        out_tokens = out_tokens + #q.times
      end
    end
    for op, s in pairs(rk.comm) do
      by_op[op] = (by_op[op] or 0) + s.bytes
      bytes = bytes + s.bytes
    end
    kv_bytes = kv_bytes + (rk.kv_bytes or 0)
    kv_tok = kv_tok or rk.kv_bytes_per_token
    if rk.slot_loads then
      for li, row in ipairs(rk.slot_loads) do
        slot_loads[li] = slot_loads[li] or {}
        for j, v in ipairs(row) do slot_loads[li][rk.rank * #row + j] = v end
      end
    end
  end
  local wall = math.max(t1 - t0, 1e-9)
  return {
    wall_s = wall, requests = #reqs, errors = errors, out_tokens = out_tokens,
    req_s = #reqs / wall, tok_s = out_tokens / wall, ttft = ttft, itl = itl,
    peak_rss = has_peak and runner.proc_status("VmHWM") or nil, peak_rss_process = runner.proc_status("VmHWM"),
    kv_bytes = kv_bytes, kv_bytes_per_token = kv_tok,
    comm_bytes = bytes, comm = by_op, expert_loads = ranks[1].expert_loads,
    slot_loads = #slot_loads > 0 and slot_loads or nil, ranks = #ranks,
  }
end

return M
