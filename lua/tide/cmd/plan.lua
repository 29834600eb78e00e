-- tide plan: predict what a recipe does on hardware Tide cannot reach.
local M = {}

M.usage = [[
usage: tide plan RECIPE [--hardware NAME] [--nodes N] [--phase prefill|decode] [--batch N]
                 [--slo tpot=50ms,ttft=2s,speed=20] [--price USD] [--search] [--emit FILE]
                 [--arrival REQ_PER_S] [--json] [--explain] [--plot FILE.svg|-]

  RECIPE    an engine recipe (recipes/*.lua) or a plan (recipes/plans/*.lua)
  --hardware  a profile in recipes/hardware/ (h800, h100, h200, h20, ascend910b)
  --nodes     nodes available (for --search and the cost report)
  --batch     decode sequences / prefill tokens per device (default: the
              recipe's, else the largest batch that fits memory and the SLO)
  --slo       tpot (per output token), ttft, speed (tokens/s per user)
  --arrival   requests/s to the nodes of each phase (else the workload's
              `arrival`): prefill adds the queue wait (M/D/1) to TTFT,
              decode runs at the batch Little's law gives, or reports overload
  --search    try EP sizes, weight formats and batches under the SLO; prints
              the best prefill and decode configurations and the P:D split;
              --emit FILE writes the best decode configuration as a recipe
  --explain   per op: bound (compute, memory, link) and the formula's inputs
  --plot      throughput per node against latency (decode: TPOT over batch
              sizes; prefill: TTFT over tokens per device; --search: every
              candidate), the plan's point and the SLO marked: an SVG file,
              or - for a text plot after the table]]

local spec = { hardware = "string", nodes = "number", phase = "string", batch = "number", slo = "string",
  price = "number", arrival = "number", search = "flag", emit = "string", json = "flag", explain = "flag", plot = "string" }

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

function M.report(o, phase, x)
  local lines = {}
  local function p(...) lines[#lines + 1] = string.format(...) end
  p("%s on %s: EP%d (DP-attention %s, TP%d, PP%d), %s weights, %d redundant experts, overlap %s", phase, o.hardware,
    o.strategy.ep, tostring(o.strategy.dp_attention), o.strategy.tp, o.strategy.pp, o.strategy.wdtype,
    o.strategy.redundant, tostring(o.strategy.overlap or "none"))
  if phase == "decode" then
    local function n(v) return v == math.floor(v) and string.format("%d", v) or string.format("%.1f", v) end
    p("  batch %s seqs/device (%s tokens/step)  step %.2f ms  TPOT %.2f ms  %.1f tok/s per user%s", n(x.batch), n(x.tokens),
      x.step * 1e3, x.tpot * 1e3, x.user_tok_s, x.slo_ok and "" or "  (SLO NOT met)")
    p("  output %.0f tok/s per device, %.0f per node; $%.3f per M output tokens", x.out_tok_s, x.per_node.output_tok_s,
      x.usd_per_mtok)
  else
    p("  %d new tokens/device/batch (%.1f seqs)  step%s %.3f s%s", x.batch, x.seqs, x.queue and "" or " (TTFT)", x.step,
      x.slo_ok and "" or "  (SLO NOT met)")
    p("  input %.0f tok/s per device incl. cache hits, %.0f per node; $%.3f per M input tokens", x.in_tok_s,
      x.per_node.input_tok_s, x.usd_per_mtok)
  end
  local q = x.queue
  if q and phase == "decode" then
    if q.overloaded then
      p("  load %.3g req/s over %d devices: OVERLOADED, %.0f sequences in flight per device against a batch of %d",
        q.arrival, q.devices, q.concurrency, q.capacity.batch)
    else
      p("  load %.3g req/s over %d devices: %.1f sequences per device (Little), %.0f%% of the batch of %d (capacity %.0f tok/s per node)",
        q.arrival, q.devices, q.concurrency, 100 * q.utilization, q.capacity.batch, q.capacity.per_node.output_tok_s)
    end
  elseif q then
    if q.overloaded then
      p("  load %.3g req/s over %d devices: OVERLOADED, utilization %.2f", q.arrival, q.devices, q.utilization)
    else
      p("  load %.3g req/s over %d devices: utilization %.0f%%, queue wait %.3f s (M/D/1), TTFT %.3f s", q.arrival,
        q.devices, 100 * q.utilization, q.wait, x.ttft)
    end
  end
  p("  memory/device: weights %s + KV %s + act %s = %s of %s", fmt_bytes(x.memory.weights), fmt_bytes(x.memory.kv),
    fmt_bytes(x.memory.act), fmt_bytes(x.memory.total), fmt_bytes(x.memory.capacity))
  p("  time: compute-bound %.2f ms, memory-bound %.2f ms, communication %.2f ms (exposed %.2f ms)",
    x.split.compute * 1e3, x.split.memory * 1e3, x.split.comm * 1e3, x.split.exposed * 1e3)
  if (x.split.host or 0) > 0 then
    p("  host: engine work between kernels (measured on the model's shadow) %.3f ms", x.split.host * 1e3)
  end
  p("  imbalance: MoE (EPLB, static) %.3f, attention %.3f", x.imbalance.moe_static or 1, x.imbalance.attn or 1)
  return table.concat(lines, "\n")
end

-- the SLO as a vertical line of a phase's figure (TPOT in ms, TTFT in s), or nil
local function slo_line(ph, slo)
  slo = slo or {}
  if ph == "decode" and (slo.tpot or slo.speed) then
    local lim = slo.tpot and slo.tpot * 1e3 or 1e3 / slo.speed
    return { x = lim, label = string.format("SLO %.0f ms", lim) }
  elseif ph == "prefill" and slo.ttft then
    return { x = slo.ttft, label = string.format("SLO %.3g s", slo.ttft) }
  end
end

-- Figures for --plot: per phase, the curve over batch sizes with the plan's point
function M.figures(recipe, o, r, slo)
  local plan = require "tide.plan"
  local figs = {}
  for _, ph in ipairs({ "prefill", "decode" }) do
    local x = r[ph]
    if x then
      local q = { hardware = o.hardware, nodes = o.nodes, price = o.price, slo = slo, arrival = o.arrival }
      local pts = {}
      for _, p in ipairs(plan.curve(recipe, q, ph)) do
        if p.latency < math.huge then pts[#pts + 1] = { x = p.latency * (ph == "decode" and 1e3 or 1), y = p.per_node,
          tag = (ph == "decode" and "b" or "") .. (ph == "decode" and p.batch or (p.batch >= 1024 and (p.batch / 1024) .. "k" or p.batch)) } end
      end
      local lat = ph == "decode" and x.tpot * 1e3 or x.ttft
      local f = {
        title = string.format("%s on %s: EP%d, %s weights", ph, r.hardware, r.strategy.ep, r.strategy.wdtype),
        xlabel = ph == "decode" and "TPOT (ms per output token)" or (x.queue and "TTFT (s, queue wait included)" or "TTFT (s)"),
        ylabel = ph == "decode" and "output tok/s per node" or "input tok/s per node (incl. cache hits)",
        series = { { label = ph == "decode" and "sequences per device" or "tokens per device", points = pts } },
        mark = { x = lat, y = ph == "decode" and x.per_node.output_tok_s or x.per_node.input_tok_s,
          label = string.format("plan: %.0f", x.batch) },
      }
      f.vline = slo_line(ph, slo)
      figs[#figs + 1] = f
    end
  end
  return figs
end

-- Figures for --search --plot: every candidate (rate per node vs latency), by weight format
function M.search_figures(cands, best, gpn, slo)
  local figs = {}
  for _, ph in ipairs({ "prefill", "decode" }) do
    local by, order = {}, {}
    for _, c in ipairs(cands) do
      if c.phase == ph then
        local s = by[c.weights]
        if not s then s = { label = c.weights .. " weights", points = {}, line = false } by[c.weights] = s order[#order + 1] = s end
        s.points[#s.points + 1] = { x = ph == "decode" and c.tpot * 1e3 or c.ttft, y = c.rate * gpn,
          tag = string.format("EP%d/%d", c.ep, c.batch) }
      end
    end
    local b = best[ph]
    figs[#figs + 1] = { title = "search: " .. ph .. " candidates",
      xlabel = ph == "decode" and "TPOT (ms per output token)" or "TTFT (s)",
      ylabel = ph == "decode" and "output tok/s per node" or "input tok/s per node", series = order,
      mark = { x = ph == "decode" and b.tpot * 1e3 or b.ttft, y = b.rate * gpn, label = string.format("best: EP%d", b.ep) },
      vline = slo_line(ph, slo) }
  end
  return figs
end

-- write figures: "-" prints text plots, else an SVG page
local function emit_plot(path, figs)
  local plot = require "tide.plan.plot"
  io.stdout:flush()
  if path == "-" then
    for _, f in ipairs(figs) do print("") print(table.concat(plot.text(f), "\n")) end
    return true
  end
  local f, e = io.open(path, "w")
  if not f then return nil, e end
  f:write(plot.page(figs))
  f:close()
  io.stderr:write("tide plan: wrote ", path, "\n")
  return true
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
    if o.plot then
      local hw = require("tide.plan.hardware").load(o.hardware or recipe.hardware or "h800")
      local ok, pe = emit_plot(o.plot, M.search_figures(cands, best, hw.gpus_per_node, slo or recipe.slo))
      if not ok then return fail(pe) end
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
    phase = o.phase, price = o.price, arrival = o.arrival })
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
    if o.plot and o.plot ~= "-" then -- an SVG beside the JSON (a text plot would break it)
      local ok, pe = emit_plot(o.plot, M.figures(recipe, o, r, slo or recipe.slo))
      if not ok then return fail(pe) end
    end
    return 0
  end
  for _, ph in ipairs({ "prefill", "decode" }) do
    if r[ph] then
      print(M.report(r, ph, r[ph]))
      if o.explain then print(M.explain(r[ph])) end
    end
  end
  if o.plot then
    local ok, pe = emit_plot(o.plot, M.figures(recipe, o, r, slo or recipe.slo))
    if not ok then return fail(pe) end
  end
  return 0
end

return M
