-- tide plan: predict what a recipe does on hardware Tide cannot reach.
local M = {}

M.usage = [[
usage: tide plan RECIPE [--hardware NAME] [--nodes N] [--phase prefill|decode] [--batch N]
                 [--slo tpot=50ms,ttft=2s,speed=20] [--price USD] [--search] [--emit FILE]
                 [--json] [--explain]

  RECIPE    an engine recipe (recipes/*.lua) or a plan (recipes/plans/*.lua)
  --hardware  a profile in recipes/hardware/ (h800, h100, h200, h20, ascend910b)
  --nodes     nodes available (for --search and the cost report)
  --batch     decode sequences / prefill tokens per device (default: the
              recipe's, else the largest batch that fits memory and the SLO)
  --slo       tpot (per output token), ttft, speed (tokens/s per user)
  --search    try EP sizes, weight formats and batches under the SLO; prints
              the best prefill and decode configurations and the P:D split;
              --emit FILE writes the best decode configuration as a recipe
  --explain   per op: bound (compute, memory, link) and the formula's inputs]]

local spec = { hardware = "string", nodes = "number", phase = "string", batch = "number", slo = "string",
  price = "number", search = "flag", emit = "string", json = "flag", explain = "flag" }

local function parse_time(v)
  local n, unit = v:match("^([%d%.]+)%s*(%a*)$")
  n = tonumber(n)
  if not n then return nil end
  if unit == "ms" then return n / 1e3 elseif unit == "us" then return n / 1e6 elseif unit == "s" or unit == "" then return n end
  return nil
end

function M.parse_slo(s)
  local slo = {}
  if not s then return slo end
  for item in s:gmatch("[^,]+") do
    local k, v = item:match("^%s*(%w+)%s*=%s*(.-)%s*$")
    if not k then return nil, "bad --slo item '" .. item .. "'" end
    if k == "speed" then slo.speed = tonumber(v)
    elseif k == "tpot" or k == "ttft" then slo[k] = parse_time(v)
    else return nil, "unknown SLO '" .. k .. "' (tpot, ttft, speed)" end
    if slo[k] == nil then return nil, "bad value in --slo " .. item end
  end
  return slo
end

local function fmt_bytes(b) return string.format("%.2f GB", b / 1e9) end

local function short(op)
  return (op.name:gsub("^L%d+%.", ""):gsub("^mtp(%d)%.", "mtp%1."))
end

-- Per op kind (layer prefix dropped): count, total time, bound, and the
-- inputs of one instance.
function M.explain(r)
  local agg, order = {}, {}
  for _, op in ipairs(r.ops) do
    local k = short(op)
    local a = agg[k]
    if not a then a = { n = 0, t = 0, op = op } agg[k] = a order[#order + 1] = k end
    a.n, a.t = a.n + 1, a.t + op.t
  end
  table.sort(order, function(x, y) return agg[x].t > agg[y].t end)
  local lines = { string.format("%-24s %4s %10s %-8s  %s", "op", "n", "total ms", "bound", "inputs (one instance)") }
  for _, k in ipairs(order) do
    local a = agg[k]
    local op, i = a.op, a.op.info or {}
    local inputs
    if op.bound == "link" then
      inputs = string.format("%.3g B on %s; %s", op.comm_bytes, i.link or "?", i.formula or "")
    elseif i.formula then -- a calibrated CPU profile: measured kernel rates at the op's shape class
      inputs = i.formula .. (i.shared and (" " .. i.shared) or "")
    else
      inputs = string.format("%.3g flop / (%.3g peak %s x %.3f eff) = %.3g us | %.3g B / %.3g B/s = %.3g us",
        i.flops, i.peak, i.dtype, i.eff, i.tc * 1e6, i.bytes, i.bw, i.tm * 1e6)
      if op.m then inputs = inputs .. string.format(" | m=%.0f n=%d k=%d", op.m, op.n, op.k) end
      if op.imbalance then inputs = inputs .. string.format(" | imbalance %.3f", op.imbalance) end
    end
    lines[#lines + 1] = string.format("%-24s %4d %10.3f %-8s  %s", k, a.n, a.t * 1e3, op.bound, inputs)
  end
  return table.concat(lines, "\n")
end

local function report(o, phase, x)
  local lines = {}
  local function p(...) lines[#lines + 1] = string.format(...) end
  p("%s on %s: EP%d (DP-attention %s, TP%d, PP%d), %s weights, %d redundant experts, overlap %s", phase, o.hardware,
    o.strategy.ep, tostring(o.strategy.dp_attention), o.strategy.tp, o.strategy.pp, o.strategy.wdtype,
    o.strategy.redundant, tostring(o.strategy.overlap or "none"))
  if phase == "decode" then
    p("  batch %d seqs/device (%d tokens/step)  step %.2f ms  TPOT %.2f ms  %.1f tok/s per user%s", x.batch, x.tokens,
      x.step * 1e3, x.tpot * 1e3, x.user_tok_s, x.slo_ok and "" or "  (SLO NOT met)")
    p("  output %.0f tok/s per device, %.0f per node; $%.3f per M output tokens", x.out_tok_s, x.per_node.output_tok_s,
      x.usd_per_mtok)
  else
    p("  %d new tokens/device/batch (%.1f seqs)  step (TTFT) %.3f s%s", x.batch, x.seqs, x.step,
      x.slo_ok and "" or "  (SLO NOT met)")
    p("  input %.0f tok/s per device incl. cache hits, %.0f per node; $%.3f per M input tokens", x.in_tok_s,
      x.per_node.input_tok_s, x.usd_per_mtok)
  end
  p("  memory/device: weights %s + KV %s + act %s = %s of %s", fmt_bytes(x.memory.weights), fmt_bytes(x.memory.kv),
    fmt_bytes(x.memory.act), fmt_bytes(x.memory.total), fmt_bytes(x.memory.capacity))
  p("  time: compute-bound %.2f ms, memory-bound %.2f ms, communication %.2f ms (exposed %.2f ms)",
    x.split.compute * 1e3, x.split.memory * 1e3, x.split.comm * 1e3, x.split.exposed * 1e3)
  p("  imbalance: MoE (EPLB, static) %.3f, attention %.3f", x.imbalance.moe_static or 1, x.imbalance.attn or 1)
  return table.concat(lines, "\n")
end

local function strip(x)
  local t = {}
  for k, v in pairs(x) do if k ~= "ops" then t[k] = v end end
  return t
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide plan: ", msg, "\n") return 1 end
  if not o then return fail(rest .. " (see tide plan --help)") end
  if #rest ~= 1 then return fail("expected one RECIPE (see tide plan --help)") end
  local plan = require "tide.plan"
  local recipe, e = plan.load_recipe(rest[1])
  if not recipe then return fail(e) end
  local slo, se = M.parse_slo(o.slo)
  if not slo then return fail(se) end
  if not o.slo then slo = nil end
  if o.search then
    local best, err, cands = plan.search(recipe, { hardware = o.hardware or recipe.hardware, nodes = o.nodes or 1,
      slo = slo or recipe.slo })
    if not best then return fail(err .. " (" .. #(cands or {}) .. " candidates)") end
    if o.json then
      print(A.json({ prefill = strip(best.prefill), decode = strip(best.decode), prefill_share = best.prefill_share,
        requests_per_s = best.requests_per_s }))
    else
      for _, ph in ipairs({ "prefill", "decode" }) do
        local c = best[ph]
        print(string.format("best %s: EP%d, %s weights, %d redundant, batch %d: %.0f tok/s per device", ph, c.ep,
          c.weights, c.redundant, c.batch, c.rate))
      end
      print(string.format("P:D split %.0f%% prefill devices; %.2f requests/s per node", 100 * best.prefill_share,
        best.per_node_requests_per_s))
      print(plan.to_recipe(recipe, best, "decode"))
    end
    if o.emit then
      local f, fe = io.open(o.emit, "w")
      if not f then return fail(fe) end
      f:write(plan.to_recipe(recipe, best, "decode"))
      f:close()
    end
    return 0
  end
  local r, err = plan.evaluate(recipe, { hardware = o.hardware, nodes = o.nodes, slo = slo, batch = o.batch,
    phase = o.phase, price = o.price })
  if not r then return fail(err) end
  if o.json then
    local out = { hardware = r.hardware, nodes = r.nodes, devices = r.devices }
    for _, ph in ipairs({ "prefill", "decode" }) do
      if r[ph] then
        out[ph] = strip(r[ph])
        if o.explain then
          out[ph].ops = {}
          for _, op in ipairs(r[ph].ops) do
            out[ph].ops[#out[ph].ops + 1] = { name = op.name, layer = op.layer, bound = op.bound, t = op.t,
              flops = op.flops, bytes = op.w_bytes + op.a_bytes + op.kv_bytes, comm_bytes = op.comm_bytes }
          end
        end
      end
    end
    print(A.json(out))
    return 0
  end
  for _, ph in ipairs({ "prefill", "decode" }) do
    if r[ph] then
      print(report(r, ph, r[ph]))
      if o.explain then print(M.explain(r[ph])) end
    end
  end
  return 0
end

return M
