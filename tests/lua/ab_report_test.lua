-- The trial folder's pictures and numbers: expert-load heatmaps, the
-- quality-vs-size scatter, bytes communicated by an EP arm, and the rendered
-- report checked in a headless-Chromium screenshot (skipped, and said so,
-- when chromium is not installed).
local ffi = require "ffi"
local H = require "helpers"
local ab = require "tide.ab"
local W = require "tide.ab.workload"
local shot = require "tide.ab.shot"

local TT = {}

local ARM = { name = "tiny", model = "models/dsv3-tiny", mla = "absorb", threads = 1,
  kv = { block = 16, blocks = 32 }, engine = { max_seqs = 4, max_batch_tokens = 64 } }
local WL = { name = "ci", requests = 4, prompt_len = { 6, 10 }, output_len = 5, arrival = { closed = 2 },
  text = "tests/data/val.txt", seed = 5 }
local TOP_K, N_MOE, N_EXPERT = 4, 3, 16 -- dsv3-tiny: 4 layers, the first dense; 16 routed experts, top-4

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- rows routed per MoE layer when every request's prompt and all but its last
-- new token go through the model
local function routed_rows()
  local m = assert(require("tide").load("models/dsv3-tiny", { kv = { blocks = 8 } }))
  local n = 0
  for _, q in ipairs(W.requests(assert(W.load(WL)), m)) do n = n + #q.ids + q.max_tokens - 1 end
  return TOP_K * n
end

local function row_sum(row)
  local s = 0
  for _, v in pairs(row) do s = s + v end
  return s
end

-- ---- PNG reading: a round trip through an encoder written here -------------------------

local function be32(n) return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256) end

-- encode(w, h, ch, pixel(x, y, c)) -> PNG bytes; row y uses filter y % 5 (all five kinds)
local function encode(w, h, ch, pixel)
  local z = assert(shot.zlib())
  local stride = w * ch
  local raw = {}
  local function P(x, y, c) if x < 0 or y < 0 then return 0 end return pixel(x, y, c) end
  for y = 0, h - 1 do
    local ft = y % 5
    raw[#raw + 1] = string.char(ft)
    for x = 0, w - 1 do
      for c = 0, ch - 1 do
        local v, a, b, d = P(x, y, c), P(x - 1, y, c), P(x, y - 1, c), P(x - 1, y - 1, c)
        local pred = 0
        if ft == 1 then pred = a elseif ft == 2 then pred = b elseif ft == 3 then pred = math.floor((a + b) / 2)
        elseif ft == 4 then
          local p = a + b - d
          local pa, pb, pc = math.abs(p - a), math.abs(p - b), math.abs(p - d)
          if pa <= pb and pa <= pc then pred = a elseif pb <= pc then pred = b else pred = d end
        end
        raw[#raw + 1] = string.char((v - pred) % 256)
      end
    end
  end
  local src = table.concat(raw)
  assert(#src == h * (stride + 1))
  local cap = #src + 1024
  local dst, n = ffi.new("uint8_t[?]", cap), ffi.new("unsigned long[1]", cap)
  assert(z.compress(dst, n, src, #src) == 0)
  local function chunk(typ, data)
    local crc = z.crc32(0, typ .. data, #typ + #data)
    return be32(#data) .. typ .. data .. be32(tonumber(crc))
  end
  local ctype = ({ [1] = 0, [2] = 4, [3] = 2, [4] = 6 })[ch]
  return "\137PNG\r\n\26\n" .. chunk("IHDR", be32(w) .. be32(h) .. string.char(8, ctype, 0, 0, 0))
    .. chunk("IDAT", ffi.string(dst, n[0])) .. chunk("IEND", "")
end

function TT.png_reader_round_trip_all_filters()
  local dir = H.tmpdir()
  for _, ch in ipairs({ 1, 2, 3, 4 }) do
    local w, h = 13, 11
    local function pixel(x, y, c) return (x * 37 + y * 101 + c * 59 + x * y * 7) % 256 end
    local path = dir .. "/t" .. ch .. ".png"
    local f = assert(io.open(path, "wb"))
    f:write(encode(w, h, ch, pixel))
    f:close()
    local img = assert(shot.read_png(path))
    H.eq(img.width, w)
    H.eq(img.height, h)
    H.eq(img.channels, ch)
    for y = 0, h - 1 do
      for x = 0, w - 1 do
        for c = 0, ch - 1 do
          H.eq(img.px[(y * w + x) * ch + c], pixel(x, y, c), string.format("channels %d: pixel (%d, %d)[%d]", ch, x, y, c))
        end
      end
    end
  end
  H.fails("not a PNG", shot.read_png("tests/data/val.txt"))
  os.execute("rm -rf " .. H.q(dir))
end

-- ---- the pictures and rows of a trial -----------------------------------------------------

function TT.heatmaps_scatter_and_comm_rows()
  local dir = H.tmpdir()
  local slow = require("tide.ab.runner").with(ARM, "extra_work", 0.5)
  slow.name = "tiny+work"
  local res = assert(ab.trial{ arms = { ARM, slow }, workload = WL, repeats = 2, warmup = 0, out = dir,
    quality = { base = "models/dsv3-tiny", tokens = 24, ctx = 24 } })
  local rows = routed_rows()
  for _, a in ipairs(res.arms) do
    H.eq(#a.expert_loads, N_MOE, "one row per MoE layer")
    for li = 1, N_MOE do
      H.eq(#a.expert_loads[li], N_EXPERT, "one column per routed expert")
      H.eq(row_sum(a.expert_loads[li]), 2 * rows, "top-k rows of every token, summed over 2 repeats")
    end
    H.eq(a.comm_bytes, 0, "one process communicates nothing")
    H.truthy(a.weights_bytes > 1e6, "weights size from the checkpoint files")
  end
  local md = read(dir .. "/report.md")
  H.truthy(md:find("| bytes communicated / run (all ranks) | 0 (one process) | 0 (one process) |", 1, true), md)
  H.truthy(md:find("![expert loads](expert_loads.svg)", 1, true) and md:find("![quality vs size](quality.svg)", 1, true))
  -- heatmap: one cell per (arm, layer, expert), coloured on one scale
  local svg = read(dir .. "/expert_loads.svg")
  H.truthy(svg:match("^<svg") and svg:find("</svg>", 1, true))
  local _, cells = svg:gsub("<rect x=\"%d+\" y=\"%d+\" width=\"%d+\" height=\"%d+\" fill=\"#%x+\" stroke=\"#fff\"", "")
  H.eq(cells, 2 * N_MOE * N_EXPERT, "cells")
  -- scatter: one point per arm at its size
  svg = read(dir .. "/quality.svg")
  local _, pts = svg:gsub("<circle", "")
  H.eq(pts, 2, "one point per arm")
  H.truthy(svg:find("mean KL divergence", 1, true) and svg:find("weights (MiB", 1, true))
  local js = require("cjson.safe").decode(read(dir .. "/report.json"))
  H.eq(js.arms[1].comm_bytes, 0)
  H.eq(#js.arms[2].expert_loads, N_MOE)
  H.truthy(read(dir .. "/report.html"):find("<svg", 1, true), "report.html holds the pictures inline")
  os.execute("rm -rf " .. H.q(dir))
end

-- An EP arm (4 rank threads, EPLB with 4 redundant slots) against the
-- in-process engine: all-to-all bytes counted, loads per expert and per slot.
function TT.ep_arm_counts_alltoall_bytes_and_slot_loads()
  local dir = H.tmpdir()
  local ep = { name = "ep4", model = "models/dsv3-tiny", mla = "absorb", threads = 1, kv = { block = 16, blocks = 32 },
    parallel = { ranks = 4, ep = 4, eplb = { redundant = 4, loads = "tests/fixtures/dsv3-tiny.json" } } }
  local res = assert(ab.trial{ arms = { ARM, ep }, workload = WL, repeats = 1, warmup = 0, out = dir })
  local a, b = res.arms[1], res.arms[2]
  H.eq(a.comm_bytes, 0)
  H.eq(b.ranks, 4)
  H.truthy(b.comm_bytes > 0 and b.comm.alltoallv > 0, "EP dispatch/combine go through all-to-all")
  H.truthy(b.comm.alltoallv <= b.comm_bytes)
  H.truthy(b.median.tok_s > 0)
  H.eq(#b.itl, 4 * (5 - 1), "every request's tokens timed on its rank")
  local rows = routed_rows()
  for li = 1, N_MOE do
    H.eq(row_sum(b.expert_loads[li]), rows, "EP: logical loads, summed over ranks")
    H.eq(row_sum(a.expert_loads[li]), rows, "in-process: the same rows")
    H.eq(#b.slot_loads[li], N_EXPERT + 4, "one column per physical slot (16 experts + 4 redundant)")
    H.eq(row_sum(b.slot_loads[li]), rows, "every routed row served by exactly one slot")
  end
  local md = read(dir .. "/report.md")
  H.truthy(md:find("4 (DP-attention + EP, EPLB +4 slots)", 1, true), md)
  H.truthy(md:find("EP rank load, max / mean", 1, true))
  H.truthy(md:find("| bytes by collective / run | n/a | alltoallv ", 1, true), "the all-to-all bytes, by name")
  -- the imbalance on a hand-made table: 2 ranks of 2 slots, rows {3,1 | 0,0} and {1,1 | 1,1}
  H.near(require("tide.ab.report").imbalance({ { 3, 1, 0, 0 }, { 1, 1, 1, 1 } }, 2), 2.0, 1e-12, "max/mean of 4 vs 0")
  H.truthy(md:find("![EP slot loads](slot_loads.svg)", 1, true))
  local svg = read(dir .. "/slot_loads.svg")
  local _, seps = svg:gsub('stroke="#d62728" stroke%-width="2"', "")
  H.eq(seps, 3, "rank boundaries drawn between 4 ranks")
  os.execute("rm -rf " .. H.q(dir))
end

-- ---- the rendered report --------------------------------------------------------------

function TT.report_screenshot_is_not_blank()
  if not shot.chromium() then print("  (skipped: chromium is not installed; scripts/deps.sh installs it)") return end
  if not shot.zlib() then print("  (skipped: libz.so.1 not found)") return end
  local dir = H.tmpdir()
  local slow = require("tide.ab.runner").with(ARM, "extra_work", 0.5)
  slow.name = "tiny+work"
  assert(ab.trial{ arms = { ARM, slow }, workload = WL, repeats = 2, warmup = 0, out = dir,
    quality = { base = "models/dsv3-tiny", tokens = 24, ctx = 24 } })
  local png = dir .. "/report.png"
  assert(shot.screenshot(dir .. "/report.html", png, { width = 1400, height = 2200 }))
  local img = assert(shot.read_png(png))
  H.eq(img.width, 1400)
  H.eq(img.height, 2200)
  local st = shot.stats(img)
  H.truthy(st.nonwhite > 0.02 * st.pixels, string.format("%.2f%% of the pixels are not white", 100 * st.nonwhite / st.pixels))
  H.truthy(st.colours >= 32, st.colours .. " distinct colours")
  -- the plots were drawn: the arms' series colours (legend squares are 12x12 solid)
  -- and the heatmap's darkest cell
  H.truthy((st.count[0x1f77b4] or 0) >= 100, "arm A's colour on screen")
  H.truthy((st.count[0xd62728] or 0) >= 100, "arm B's colour on screen")
  H.truthy((st.count[0x08306b] or 0) >= 100, "the heatmap's top colour on screen")
  os.execute("rm -rf " .. H.q(dir))
end

-- The SVG alone renders too.
function TT.svg_screenshot_is_not_blank()
  if not shot.chromium() then print("  (skipped: chromium is not installed; scripts/deps.sh installs it)") return end
  if not shot.zlib() then print("  (skipped: libz.so.1 not found)") return end
  local dir = H.tmpdir()
  local R = require "tide.ab.report"
  local f = assert(io.open(dir .. "/p.svg", "wb"))
  f:write(R.svg_plot{ title = "t", xlabel = "x", ylabel = "y", series = {
    { label = "a", points = { { 0, 0 }, { 1, 1 }, { 2, 4 } }, marks = true },
    { label = "b", points = { { 0, 1 }, { 1, 2 }, { 2, 2 } }, marks = true } } })
  f:close()
  assert(shot.screenshot(dir .. "/p.svg", dir .. "/p.png", { width = 640, height = 400 }))
  local st = shot.stats(assert(shot.read_png(dir .. "/p.png")))
  H.truthy(st.nonwhite > 0.01 * st.pixels and st.colours >= 8)
  H.truthy((st.count[0x1f77b4] or 0) >= 100 and (st.count[0xd62728] or 0) >= 100, "both series drawn")
  os.execute("rm -rf " .. H.q(dir))
end

return TT
