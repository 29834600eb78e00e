-- EP4 on dsv3-tiny (DP-attention + expert parallelism over 4 rank threads):
-- the contiguous expert placement against EPLB's (4 redundant expert copies
-- placed from the expert loads measured on val.txt). The report shows the
-- all-to-all bytes of each arm and, per MoE layer, the rows each physical
-- slot served (slot_loads.svg: before/after EPLB) next to the logical
-- expert loads (expert_loads.svg).
--   tide ab recipes/trials/ep4-eplb-vs-none.lua [--repeats N] [--out DIR]
local function arm(name, eplb)
  return {
    name = name,
    model = "models/dsv3-tiny",
    mla = "absorb",
    threads = 1,
    kv = { block = 16, blocks = 64, dtype = "f32" },
    parallel = { ranks = 4, ep = 4, dp_attention = true, eplb = eplb, wire = "f32" },
  }
end
return {
  arms = {
    arm("EP4 contiguous", nil),
    arm("EP4 + EPLB (4 redundant)", { redundant = 4, loads = "tests/fixtures/dsv3-tiny.json" }),
  },
  workload = "chat",
  repeats = 10,
  out = "ab-ep4-eplb-vs-none",
}
