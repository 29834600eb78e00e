-- tide.tokenizer: Hugging Face tokenizer.json (BPE models) in Lua + C.
--
--   local tok = assert(require("tide.tokenizer").load("models/dsv3-tiny"))
--   local ids = tok:encode("Hello", { add_special = true })
--   local s = tok:decode(ids, { skip_special = false })
--   local prompt = tok:apply_chat_template(messages, { add_generation_prompt = true })
--
-- Pipeline (as in the Rust `tokenizers` library): added tokens are split off
-- first, the rest is normalized, pre-tokenized (Split regexes compiled to
-- LPeg by tide.regex), each word goes through the BPE merge loop in C
-- (src/bpe.c) behind a word cache, then the post-processor adds special
-- tokens. Byte-level models keep text as raw bytes all along: their vocab is
-- mapped back from the GPT-2 byte alphabet to bytes when loaded. When the
-- pre-tokenizer chain ends in an isolating Split (DeepSeek, Llama 3, GPT-2),
-- the last Split yields word offsets and one C call per piece encodes all its
-- words through the C word cache; other chains use a Lua word cache.
--
-- Semantics follow the Rust library: add_special applies the
-- post-processor of tokenizer.json (transformers' Llama-style classes add a
-- BOS of their own when tokenizer_config.json says add_bos_token; see
-- tok.add_bos_token, tok.bos_token_id, tok.eos_token_id). Special tokens
-- written in the text are always recognized. Invalid UTF-8 is not rejected:
-- each bad byte is one character of no Unicode class, encoded byte-level,
-- and decode returns the raw bytes (the Rust library would return U+FFFD).
-- In chat messages, a JSON null (Python None) is jinja.none or cjson.null;
-- a missing key is undefined, as in Python.
--
-- Known differences: Unicode classes come from Debian's Unicode 15.0 data
-- while the Rust library's regex engine has 16.0 (only code points that 15.0
-- leaves unassigned differ; tests/lua/regex_test.lua checks this); the
-- Lowercase normalizer uses utf8proc's simple case mapping (Rust: full).
local lpeg = require "lpeg"
local cjson = require "cjson"
local F = require "tide.ffi"
local regex = require "tide.regex"
local ffi, C = F.ffi, F.C

local M = {}

local Tokenizer = {}
Tokenizer.__index = Tokenizer
M.Tokenizer = Tokenizer

local function fail(fmt, ...) error({ msg = string.format(fmt, ...) }, 0) end

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

local function is_dir(path)
  local f = io.open(path .. "/.", "rb")
  if f then f:close() return true end
  return false
end

---------------------------------------------------------------------------
-- GPT-2 byte <-> unicode alphabet

local byte_to_char, char_to_byte = {}, {}
do
  local n = 0
  for b = 0, 255 do
    local cp
    if (b >= 33 and b <= 126) or (b >= 161 and b <= 172) or (b >= 174 and b <= 255) then cp = b
    else cp = 256 + n; n = n + 1 end
    local ch = regex.utf8_encode(cp)
    byte_to_char[b] = ch
    char_to_byte[ch] = string.char(b)
  end
end
M.byte_to_char = byte_to_char

local UTF8CHAR = "[%z\1-\127\194-\244][\128-\191]*"

-- token in the byte alphabet -> raw bytes, or nil if a char is outside it
local function unbyte(tok)
  local ok = true
  local s = tok:gsub(UTF8CHAR, function(c)
    local b = char_to_byte[c]
    if not b then ok = false return c end
    return b
  end)
  if not ok then return nil end
  return s
end

---------------------------------------------------------------------------
-- Normalizers: each is a function(string) -> string

local function c_normalize(form)
  local out = ffi.new("char *[1]")
  local olen = ffi.new("size_t[1]")
  return function(s)
    if s == "" then return s end
    local rc = C.tide_bpe_normalize(s, #s, form, out, olen, F.err)
    if rc ~= 0 then
      -- invalid UTF-8: normalize nothing (byte-level input is kept as is)
      return s
    end
    local r = ffi.string(out[0], olen[0])
    C.tide_bpe_free(out[0])
    return r
  end
end

local function pattern_of(spec, what)
  if type(spec) ~= "table" then fail("%s: pattern must be {String=...} or {Regex=...}", what) end
  if spec.String ~= nil then return regex.literal(spec.String) end
  if spec.Regex ~= nil then
    local r, err = regex.compile(spec.Regex)
    if not r then fail("%s: %s", what, err) end
    return r
  end
  fail("%s: pattern must be {String=...} or {Regex=...}", what)
end

local function replace_all(r, s, content)
  local m = r:find_all(s)
  if #m == 0 then return s end
  local parts, prev = {}, 1
  for i = 1, #m, 2 do
    parts[#parts + 1] = s:sub(prev, m[i] - 1)
    parts[#parts + 1] = content
    prev = m[i + 1]
  end
  parts[#parts + 1] = s:sub(prev)
  return table.concat(parts)
end

local normalizer_builders
local function build_normalizer(spec)
  if spec == nil or spec == cjson.null then return nil end
  local b = normalizer_builders[spec.type]
  if not b then fail("unsupported normalizer type %q", tostring(spec.type)) end
  return b(spec)
end

normalizer_builders = {
  Sequence = function(spec)
    local fs = {}
    for _, n in ipairs(spec.normalizers or {}) do
      local f = build_normalizer(n)
      if f then fs[#fs + 1] = f end
    end
    if #fs == 0 then return nil end
    if #fs == 1 then return fs[1] end
    return function(s) for _, f in ipairs(fs) do s = f(s) end return s end
  end,
  NFC = function() return c_normalize(0) end,
  NFD = function() return c_normalize(1) end,
  NFKC = function() return c_normalize(2) end,
  NFKD = function() return c_normalize(3) end,
  Lowercase = function() return c_normalize(4) end,
  Prepend = function(spec)
    local p = spec.prepend or ""
    return function(s) if s == "" then return s end return p .. s end
  end,
  Replace = function(spec)
    local r = pattern_of(spec.pattern, "Replace normalizer")
    local content = spec.content or ""
    return function(s) return replace_all(r, s, content) end
  end,
  Strip = function(spec)
    local l, r = spec.strip_left ~= false, spec.strip_right ~= false
    local ws = regex.compile("\\s+")
    return function(s)
      if l then local e = ws:match_at(s, 1); if e then s = s:sub(e) end end
      if r then
        local m = ws:find_all(s)
        if #m > 0 and m[#m] == #s + 1 then s = s:sub(1, m[#m - 1] - 1) end
      end
      return s
    end
  end,
}

---------------------------------------------------------------------------
-- Pre-tokenizers: each is function(pieces, first_flags) -> pieces, where
-- pieces is a list of strings (first_flags[i]: piece i starts the text).

local SNAKE = { Isolated = "isolated", Removed = "removed", MergedWithPrevious = "merged_with_previous",
  MergedWithNext = "merged_with_next", Contiguous = "contiguous" }

local GPT2_RE = [['s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+]]

-- For the last pre-tokenizer of a chain, when it is an isolating Split, the
-- tokenizer skips making word strings: span_pattern[fn] gives the start
-- offsets of the pieces, and the words go to C in one call per piece.
local span_pattern = setmetatable({}, { __mode = "k" })
local seq_parts = setmetatable({}, { __mode = "k" })

local function split_each(r, behavior, invert)
  local pieces_p = (behavior == "isolated" and not invert) and r.pieces or nil
  local match = lpeg.match
  local fn
  fn = function(pieces)
    local out, n = {}, 0
    for i = 1, #pieces do
      local p = pieces[i]
      local parts = pieces_p and match(pieces_p, p) or r:split(p, behavior, invert)
      for j = 1, #parts do n = n + 1; out[n] = parts[j] end
    end
    return out
  end
  if pieces_p and r.gap then
    span_pattern[fn] = lpeg.Ct((lpeg.Cp() * (r.patt + r.gap)) ^ 0)
  end
  return fn
end

local pretok_builders
local function build_pretok(spec, ctx)
  if spec == nil or spec == cjson.null then return nil end
  local b = pretok_builders[spec.type]
  if not b then fail("unsupported pre-tokenizer type %q", tostring(spec.type)) end
  return b(spec, ctx)
end

pretok_builders = {
  Sequence = function(spec, ctx)
    local fs = {}
    for _, p in ipairs(spec.pretokenizers or {}) do
      local f = build_pretok(p, ctx)
      if f then fs[#fs + 1] = f end
    end
    if #fs == 0 then return nil end
    if #fs == 1 then return fs[1] end
    local f = function(pieces, first) for _, f in ipairs(fs) do pieces = f(pieces, first) end return pieces end
    seq_parts[f] = fs
    return f
  end,
  Split = function(spec)
    local r = pattern_of(spec.pattern, "Split pre-tokenizer")
    local beh = SNAKE[spec.behavior]
    if not beh then fail("unsupported Split behavior %q", tostring(spec.behavior)) end
    return split_each(r, beh, spec.invert == true)
  end,
  ByteLevel = function(spec, ctx)
    ctx.byte_level = true
    local prefix = spec.add_prefix_space == true
    local inner
    if spec.use_regex ~= false then
      inner = split_each(assert(regex.compile(GPT2_RE)), "isolated", false)
    end
    if not prefix and not inner then return nil end
    if not prefix then return inner end -- a plain isolating Split: keeps the batched path
    return function(pieces)
      if prefix then
        local out = {}
        for i = 1, #pieces do
          local p = pieces[i]
          out[i] = (p:sub(1, 1) == " ") and p or (" " .. p)
        end
        pieces = out
      end
      if inner then pieces = inner(pieces) end
      return pieces
    end
  end,
  Digits = function(spec)
    local r = assert(regex.compile(spec.individual_digits and "\\p{N}" or "\\p{N}+"))
    return split_each(r, "isolated", false)
  end,
  Whitespace = function()
    local r = assert(regex.compile("\\w+|[^\\w\\s]+"))
    return split_each(r, "removed", true)
  end,
  WhitespaceSplit = function()
    return split_each(assert(regex.compile("\\s+")), "removed", false)
  end,
  Punctuation = function(spec)
    local beh = SNAKE[spec.behavior or "Isolated"]
    if not beh then fail("unsupported Punctuation behavior %q", tostring(spec.behavior)) end
    return split_each(assert(regex.compile("[\\p{P}!-/:-@\\[-`{-~]")), beh, false)
  end,
  BertPreTokenizer = function()
    local ws = split_each(assert(regex.compile("\\s+")), "removed", false)
    local pu = split_each(assert(regex.compile("[\\p{P}!-/:-@\\[-`{-~]")), "isolated", false)
    return function(pieces) return pu(ws(pieces)) end
  end,
  Metaspace = function(spec, ctx)
    local rep = spec.replacement or "\226\150\129"
    local scheme = spec.prepend_scheme or ((spec.add_prefix_space == false) and "never" or "always")
    local do_split = spec.split ~= false
    local space = regex.literal(" ")
    local repl = regex.literal(rep)
    ctx.metaspace = true
    return function(pieces, first_flags)
      local out = {}
      for i = 1, #pieces do
        local p = replace_all(space, pieces[i], rep)
        if scheme == "always" or (scheme == "first" and first_flags and first_flags[i]) then
          if p:sub(1, #rep) ~= rep then p = rep .. p end
        end
        if do_split then
          for _, q in ipairs(repl:split(p, "merged_with_next", false)) do out[#out + 1] = q end
        else
          out[#out + 1] = p
        end
      end
      return out
    end
  end,
}

---------------------------------------------------------------------------
-- Decoders: function(tokens) -> tokens (strings)

local decoder_builders
local function build_decoder(spec)
  if spec == nil or spec == cjson.null then return nil end
  local b = decoder_builders[spec.type]
  if not b then fail("unsupported decoder type %q", tostring(spec.type)) end
  return b(spec)
end

decoder_builders = {
  Sequence = function(spec)
    local fs = {}
    for _, d in ipairs(spec.decoders or {}) do
      local f = build_decoder(d)
      if f then fs[#fs + 1] = f end
    end
    return function(toks) for _, f in ipairs(fs) do toks = f(toks) end return toks end, fs
  end,
  ByteLevel = function()
    return function(toks)
      local out = {}
      for i, t in ipairs(toks) do out[i] = unbyte(t) or t end
      return { table.concat(out) }
    end
  end,
  Metaspace = function(spec)
    local rep = spec.replacement or "\226\150\129"
    local scheme = spec.prepend_scheme or ((spec.add_prefix_space == false) and "never" or "always")
    local r = regex.literal(rep)
    return function(toks)
      local out = {}
      for i, t in ipairs(toks) do
        local s = replace_all(r, t, " ")
        if i == 1 and scheme ~= "never" and s:sub(1, 1) == " " then s = s:sub(2) end
        out[i] = s
      end
      return out
    end
  end,
  Replace = function(spec)
    local r = pattern_of(spec.pattern, "Replace decoder")
    local content = spec.content or ""
    return function(toks)
      local out = {}
      for i, t in ipairs(toks) do out[i] = replace_all(r, t, content) end
      return out
    end
  end,
  ByteFallback = function()
    return function(toks)
      local out, pending = {}, {}
      local function flush()
        if #pending == 0 then return end
        local s = table.concat(pending)
        if regex.VALID and lpeg.match((regex.VALID) ^ 0 * -1, s) then out[#out + 1] = s
        else for _ = 1, #pending do out[#out + 1] = "\239\191\189" end end
        pending = {}
      end
      for _, t in ipairs(toks) do
        local h = t:match("^<0x(%x%x)>$")
        if h then pending[#pending + 1] = string.char(tonumber(h, 16))
        else flush(); out[#out + 1] = t end
      end
      flush()
      return out
    end
  end,
  Fuse = function() return function(toks) return { table.concat(toks) } end end,
  Strip = function(spec)
    local ch, start, stop = spec.content or " ", spec.start or 0, spec.stop or 0
    return function(toks)
      local out = {}
      for i, t in ipairs(toks) do
        local a, b = 1, #t
        for _ = 1, start do if t:sub(a, a + #ch - 1) == ch then a = a + #ch else break end end
        for _ = 1, stop do if b - #ch + 1 >= a and t:sub(b - #ch + 1, b) == ch then b = b - #ch else break end end
        out[i] = t:sub(a, b)
      end
      return out
    end
  end,
}

---------------------------------------------------------------------------
-- Post-processors: function(ids) -> ids (with special tokens)

local post_builders
local function build_post(spec, tok)
  if spec == nil or spec == cjson.null then return nil end
  local b = post_builders[spec.type]
  if not b then fail("unsupported post-processor type %q", tostring(spec.type)) end
  return b(spec, tok)
end

local function wrap(prefix, suffix)
  return function(ids)
    if #prefix == 0 and #suffix == 0 then return ids end
    local out = {}
    for _, v in ipairs(prefix) do out[#out + 1] = v end
    for _, v in ipairs(ids) do out[#out + 1] = v end
    for _, v in ipairs(suffix) do out[#out + 1] = v end
    return out
  end
end

post_builders = {
  ByteLevel = function() return nil end,
  TemplateProcessing = function(spec)
    local specials = spec.special_tokens or {}
    local prefix, suffix, seen = {}, {}, false
    for _, item in ipairs(spec.single or {}) do
      if item.Sequence then
        if seen then fail("TemplateProcessing: two sequences in the single template") end
        seen = true
      elseif item.SpecialToken then
        local st = specials[item.SpecialToken.id]
        if not st then fail("TemplateProcessing: unknown special token %q", tostring(item.SpecialToken.id)) end
        local dst = seen and suffix or prefix
        for _, id in ipairs(st.ids) do dst[#dst + 1] = id end
      else
        fail("TemplateProcessing: unsupported template item")
      end
    end
    return wrap(prefix, suffix)
  end,
  BertProcessing = function(spec) return wrap({ spec.cls[2] }, { spec.sep[2] }) end,
  RobertaProcessing = function(spec) return wrap({ spec.cls[2] }, { spec.sep[2] }) end,
  Sequence = function(spec, tok)
    local fs = {}
    for _, p in ipairs(spec.processors or {}) do
      local f = build_post(p, tok)
      if f then fs[#fs + 1] = f end
    end
    if #fs == 0 then return nil end
    return function(ids) for _, f in ipairs(fs) do ids = f(ids) end return ids end
  end,
}

---------------------------------------------------------------------------
-- Added tokens: a byte trie compiled to LPeg, leftmost-longest

local function trie_pattern(strings)
  -- strings: list of byte strings; returns pattern matching the longest one
  local root = {}
  for _, s in ipairs(strings) do
    local node = root
    for i = 1, #s do
      local b = s:byte(i)
      node[b] = node[b] or {}
      node = node[b]
    end
    node.final = true
  end
  local function build(node)
    local alts = {}
    local keys = {}
    for k in pairs(node) do if type(k) == "number" then keys[#keys + 1] = k end end
    table.sort(keys)
    for _, k in ipairs(keys) do alts[#alts + 1] = lpeg.P(string.char(k)) * build(node[k]) end
    local p
    if #alts > 0 then
      local function bal(lo, hi)
        if lo == hi then return alts[lo] end
        local mid = math.floor((lo + hi) / 2)
        return bal(lo, mid) + bal(mid + 1, hi)
      end
      p = bal(1, #alts)
    end
    if node.final then p = p and (p + lpeg.P(true)) or lpeg.P(true) end
    return p
  end
  local first = {}
  for k in pairs(root) do if type(k) == "number" then first[#first + 1] = string.char(k) end end
  return build(root), lpeg.S(table.concat(first))
end

local WS = regex.compile("\\s")
local WORDCH = regex.compile("[\\p{L}\\p{N}_]")

local function added_matcher(list)
  -- list: added tokens {content, id, lstrip, rstrip, single_word}
  if #list == 0 then return nil end
  local by_content, contents = {}, {}
  for _, a in ipairs(list) do
    if a.content ~= "" then
      if not by_content[a.content] then contents[#contents + 1] = a.content end
      by_content[a.content] = a
    end
  end
  if #contents == 0 then return nil end
  local trie, firstset = trie_pattern(contents)
  local Cp = lpeg.Cp
  local scan = lpeg.Ct((Cp() * trie * Cp() + (1 - firstset) ^ 1 + 1) ^ 0)
  -- returns list of segments: strings (text) and tables (added token)
  return function(text)
    local m = lpeg.match(scan, text)
    if #m == 0 then return nil end
    local segs, prev = {}, 1
    for i = 1, #m, 2 do
      local s, e = m[i], m[i + 1]
      local a = by_content[text:sub(s, e - 1)]
      local ok = s >= prev
      if ok and a.single_word then
        local before = s > 1 and WORDCH:match_at(text:sub(s - 4 > 0 and s - 4 or 1, s - 1):match(UTF8CHAR .. "$") or "", 1)
        local after = WORDCH:match_at(text, e)
        if before or after then ok = false end
      end
      if ok then
        if a.lstrip then
          while s > prev do
            local ch = text:sub(1, s - 1):match(UTF8CHAR .. "$")
            if ch and WS:match_at(ch, 1) then s = s - #ch else break end
          end
        end
        if a.rstrip then
          while true do
            local e2 = WS:match_at(text, e)
            if e2 then e = e2 else break end
          end
        end
        if s > prev then segs[#segs + 1] = text:sub(prev, s - 1) end
        segs[#segs + 1] = a
        prev = e
      end
    end
    if prev <= #text then segs[#segs + 1] = text:sub(prev) end
    return segs
  end
end

---------------------------------------------------------------------------
-- Loading

local function as_list(merge)
  if type(merge) == "table" then return merge[1], merge[2] end
  local a, b = merge:match("^(.-) (.*)$")
  return a, b
end

function M.from_json(t, config)
  local ok, res = pcall(function()
    local self = setmetatable({ config = config or {}, cache = {}, cache_n = 0 }, Tokenizer)
    if type(t) ~= "table" then fail("tokenizer.json: not a JSON object") end
    local model = t.model
    if type(model) ~= "table" then fail("tokenizer.json: missing model") end
    local mtype = model.type
    if mtype == nil and model.merges then mtype = "BPE" end
    if mtype ~= "BPE" then fail("unsupported model type %q (only BPE is supported)", tostring(mtype)) end
    if type(model.vocab) ~= "table" then fail("tokenizer.json: BPE model without vocab") end
    for _, k in ipairs({ "continuing_subword_prefix", "end_of_word_suffix" }) do
      if model[k] ~= nil and model[k] ~= cjson.null and model[k] ~= "" then
        fail("unsupported BPE option %s", k)
      end
    end
    if model.dropout ~= nil and model.dropout ~= cjson.null and model.dropout ~= 0 then
      fail("unsupported BPE option dropout")
    end

    local ctx = {}
    self.normalize = build_normalizer(t.normalizer)
    self.pretokenize = build_pretok(t.pre_tokenizer, ctx)
    self.byte_level = ctx.byte_level or false
    -- fast path: the chain ends in an isolating Split
    if self.pretokenize then
      local parts = seq_parts[self.pretokenize] or { self.pretokenize }
      local sp = span_pattern[parts[#parts]]
      if sp then
        self.spans_pat = sp
        if #parts > 1 then
          local head = {}
          for i = 1, #parts - 1 do head[i] = parts[i] end
          self.pre_head = function(pieces, first) for _, f in ipairs(head) do pieces = f(pieces, first) end return pieces end
        end
      end
    end
    self.decoder = build_decoder(t.decoder)
    self.decoder_spec = t.decoder
    self.post = build_post(t.post_processor, self)

    -- vocab
    local vocab = model.vocab
    local id_to_token = {}
    local max_id = -1
    for tok, id in pairs(vocab) do
      id_to_token[id] = tok
      if id > max_id then max_id = id end
    end
    local unk_id = -1
    if model.unk_token ~= nil and model.unk_token ~= cjson.null then
      unk_id = vocab[model.unk_token] or -1
    end
    local flags = 0
    if self.byte_level then flags = flags + C.TIDE_BPE_BYTE_LEVEL end
    if model.byte_fallback == true then flags = flags + C.TIDE_BPE_BYTE_FALLBACK end
    if model.ignore_merges == true then flags = flags + C.TIDE_BPE_IGNORE_MERGES end
    if model.fuse_unk == true then flags = flags + C.TIDE_BPE_FUSE_UNK end
    local pb = ffi.new("tide_bpe_t *[1]")
    if C.tide_bpe_new(flags, unk_id, pb, F.err) ~= 0 then fail("%s", F.errmsg()) end
    self.bpe = ffi.gc(pb[0], C.tide_bpe_release)
    local bpe = self.bpe
    local byte_level = self.byte_level
    for tok, id in pairs(vocab) do
      local key = tok
      if byte_level then key = unbyte(tok) end
      if key then
        if C.tide_bpe_add_token(bpe, key, #key, id, F.err) ~= 0 then fail("%s", F.errmsg()) end
      end
    end
    -- merges
    local merges = model.merges or {}
    local rows = ffi.new("int32_t[?]", 3 * math.max(#merges, 1))
    for i, mg in ipairs(merges) do
      local a, b = as_list(mg)
      if not a then fail("tokenizer.json: malformed merge #%d", i) end
      local ia, ib, im = vocab[a], vocab[b], vocab[a .. b]
      if not (ia and ib and im) then
        fail("tokenizer.json: merge #%d (%s %s) uses a token that is not in the vocab", i, a, b)
      end
      rows[3 * (i - 1)], rows[3 * (i - 1) + 1], rows[3 * (i - 1) + 2] = ia, ib, im
    end
    if C.tide_bpe_add_merges(bpe, rows, #merges, 0, F.err) ~= 0 then fail("%s", F.errmsg()) end

    -- added tokens
    local raw, norm = {}, {}
    self.special = {}
    self.added_content = {}
    for _, a in ipairs(t.added_tokens or {}) do
      if type(a.id) ~= "number" or type(a.content) ~= "string" then fail("tokenizer.json: malformed added token") end
      id_to_token[a.id] = a.content
      if a.id > max_id then max_id = a.id end
      self.added_content[a.id] = a.content
      if a.special == true then self.special[a.id] = true end
      local entry = { content = a.content, id = a.id, lstrip = a.lstrip == true, rstrip = a.rstrip == true,
        single_word = a.single_word == true }
      if a.normalized == true and self.normalize then norm[#norm + 1] = entry else raw[#raw + 1] = entry end
    end
    self.match_raw = added_matcher(raw)
    self.match_norm = added_matcher(norm)
    self.id_to_token = id_to_token
    self.vocab_size = max_id + 1
    self.out = ffi.new("int32_t[?]", 256)
    self.out_cap = 256
    self.out_n = ffi.new("size_t[1]")
    self.bounds = ffi.new("int32_t[?]", 256)
    self.bounds_cap = 256
    return self
  end)
  if ok then
    -- ids of the special tokens named by tokenizer_config.json (nil if none)
    local c = res.config
    local function tid(v)
      if type(v) == "table" then v = v.content end
      if type(v) ~= "string" then return nil end
      return res:token_to_id(v)
    end
    res.bos_token_id, res.eos_token_id, res.pad_token_id = tid(c.bos_token), tid(c.eos_token), tid(c.pad_token)
    -- transformers' Llama-style classes add BOS themselves when add_bos_token
    -- is set; the Rust library (and encode) follow tokenizer.json only
    res.add_bos_token = c.add_bos_token == true
    return res
  end
  if type(res) == "table" then return nil, res.msg end
  return nil, tostring(res)
end

-- Load a tokenizer.json file or a model folder (tokenizer.json plus
-- tokenizer_config.json for the chat template and special tokens).
function M.load(path, opts)
  if type(path) ~= "string" then return nil, "tokenizer: path must be a string" end
  local file, cfg_file = path, nil
  if is_dir(path) then
    file = path .. "/tokenizer.json"
    cfg_file = path .. "/tokenizer_config.json"
  else
    cfg_file = (path:match("^(.*)/[^/]*$") or ".") .. "/tokenizer_config.json"
  end
  local text, err = read_file(file)
  if not text then return nil, "tokenizer: cannot read " .. file .. ": " .. tostring(err) end
  local ok, t = pcall(cjson.decode, text)
  if not ok then return nil, "tokenizer: " .. file .. " is not valid JSON: " .. tostring(t) end
  local config = {}
  local ctext = read_file(cfg_file)
  if ctext then
    local ok2, c = pcall(cjson.decode, ctext)
    if ok2 and type(c) == "table" then config = c end
  end
  if opts and opts.config then config = opts.config end
  local tok, e = M.from_json(t, config)
  if not tok then return nil, "tokenizer " .. file .. ": " .. e end
  tok.path = file
  return tok
end

---------------------------------------------------------------------------
-- Encoding

local CACHE_MAX = 200000

function Tokenizer:bpe_word(w)
  local n = #w
  if n > self.out_cap then
    self.out_cap = n
    self.out = ffi.new("int32_t[?]", n)
  end
  local rc = C.tide_bpe_encode_word(self.bpe, w, n, self.out, self.out_cap, self.out_n, F.err)
  if rc ~= 0 then F.raise(2) end
  local cnt = tonumber(self.out_n[0])
  local out = self.out
  local r
  if cnt == 1 then r = out[0]
  else
    r = {}
    for i = 1, cnt do r[i] = out[i - 1] end
  end
  if self.cache_n >= CACHE_MAX then self.cache = {}; self.cache_n = 0 end
  self.cache[w] = r
  self.cache_n = self.cache_n + 1
  return r
end

local lpeg_match = lpeg.match

-- fast path: pieces -> word bounds -> ids, one C call per piece
local function encode_spans(self, text, ids, first)
  local pieces = self.pre_head and self.pre_head({ text }, { first }) or { text }
  local sp, bpe, err, nout = self.spans_pat, self.bpe, F.err, self.out_n
  local n = #ids
  for pi = 1, #pieces do
    local p = pieces[pi]
    local len = #p
    local st = lpeg_match(sp, p)
    local nw = #st
    if nw + 1 > self.bounds_cap then
      self.bounds_cap = nw + 1
      self.bounds = ffi.new("int32_t[?]", nw + 1)
    end
    if len > self.out_cap then
      self.out_cap = len
      self.out = ffi.new("int32_t[?]", len)
    end
    local bounds, out = self.bounds, self.out
    for i = 1, nw do bounds[i - 1] = st[i] - 1 end
    bounds[nw] = len
    if C.tide_bpe_encode_words(bpe, p, len, bounds, nw, out, self.out_cap, nout, err) ~= 0 then F.raise(2) end
    for i = 0, tonumber(nout[0]) - 1 do
      n = n + 1
      ids[n] = out[i]
    end
  end
end

-- append the ids of a text segment with no added tokens in it
local function encode_plain(self, text, ids, first)
  if text == "" then return end
  if self.normalize and not self._normalized then text = self.normalize(text) end
  if self.spans_pat then return encode_spans(self, text, ids, first) end
  local words
  if self.pretokenize then
    words = self.pretokenize({ text }, { first })
  else
    words = { text }
  end
  local cache = self.cache
  local n = #ids
  for i = 1, #words do
    local w = words[i]
    local c = cache[w]
    if c == nil then
      c = self:bpe_word(w)
      cache = self.cache
    end
    if type(c) == "number" then
      n = n + 1; ids[n] = c
    else
      for j = 1, #c do n = n + 1; ids[n] = c[j] end
    end
  end
end

function Tokenizer:encode(text, opts)
  if type(text) ~= "string" then error("tokenizer:encode: text must be a string", 2) end
  local add_special = true
  if opts and opts.add_special == false then add_special = false end
  local ids = {}
  local segs = self.match_raw and self.match_raw(text)
  if not segs then segs = { text } end
  for si, seg in ipairs(segs) do
    if type(seg) == "table" then
      ids[#ids + 1] = seg.id
    else
      if self.match_norm then
        local norm = self.normalize(seg)
        local sub = self.match_norm(norm) or { norm }
        self._normalized = true
        for sj, s2 in ipairs(sub) do
          if type(s2) == "table" then ids[#ids + 1] = s2.id
          else encode_plain(self, s2, ids, si == 1 and sj == 1) end
        end
        self._normalized = false
      else
        encode_plain(self, seg, ids, si == 1)
      end
    end
  end
  if add_special and self.post then ids = self.post(ids) end
  return ids
end

-- Forget every cached word (Lua and C caches).
function Tokenizer:clear_cache()
  self.cache, self.cache_n = {}, 0
  C.tide_bpe_cache_clear(self.bpe)
  return self
end

-- Token string of an id (as in tokenizer.json), or nil.
function Tokenizer:id_to_token(id) return self.id_to_token[id] end

-- Id of a token string (as in tokenizer.json), or nil.
function Tokenizer:token_to_id(s)
  if not self._token_to_id then
    local m = {}
    for id, t in pairs(self.id_to_token) do m[t] = id end
    self._token_to_id = m
  end
  return self._token_to_id[s]
end

---------------------------------------------------------------------------
-- Decoding

local function byte_level_only(spec)
  if spec == nil or spec == cjson.null then return false end
  if spec.type == "ByteLevel" then return true end
  if spec.type == "Sequence" then
    for _, d in ipairs(spec.decoders or {}) do
      if not byte_level_only(d) then return false end
    end
    return #(spec.decoders or {}) > 0
  end
  return false
end

function Tokenizer:decode(ids, opts)
  local skip = opts and opts.skip_special
  local toks = {}
  local i2t, special = self.id_to_token, self.special
  local fast = self._fast_decode
  if fast == nil then
    fast = byte_level_only(self.decoder_spec)
    self._fast_decode = fast
    self._bytes = {}
  end
  if fast then
    local bytes = self._bytes
    local n = 0
    for _, id in ipairs(ids) do
      if not (skip and special[id]) then
        local b = bytes[id]
        if not b then
          local t = i2t[id]
          if not t then error("tokenizer:decode: unknown id " .. tostring(id), 2) end
          b = unbyte(t) or t
          bytes[id] = b
        end
        n = n + 1; toks[n] = b
      end
    end
    return table.concat(toks)
  end
  for _, id in ipairs(ids) do
    if not (skip and special[id]) then
      local t = i2t[id]
      if not t then error("tokenizer:decode: unknown id " .. tostring(id), 2) end
      toks[#toks + 1] = t
    end
  end
  if self.decoder then toks = self.decoder(toks) end
  return table.concat(toks)
end

---------------------------------------------------------------------------
-- Chat templates

local function token_text(v)
  if type(v) == "table" then return v.content end
  if v == cjson.null then return nil end
  return v
end

function Tokenizer:chat_template()
  local tpl = self.config.chat_template
  if type(tpl) == "table" then
    -- list of {name, template}: use "default"
    for _, t in ipairs(tpl) do if t.name == "default" then return t.template end end
    return tpl[1] and tpl[1].template
  end
  if type(tpl) ~= "string" then return nil end
  return tpl
end

function Tokenizer:apply_chat_template(messages, opts)
  opts = opts or {}
  local tpl = opts.template or self:chat_template()
  if not tpl then return nil, "tokenizer has no chat_template" end
  if not self._tpl or self._tpl_src ~= tpl then
    local jinja = require "tide.jinja"
    local t, err = jinja.compile(tpl)
    if not t then return nil, err end
    self._tpl, self._tpl_src = t, tpl
  end
  local c = self.config
  local env = {
    messages = messages,
    add_generation_prompt = opts.add_generation_prompt and true or false,
    bos_token = token_text(c.bos_token) or "",
    eos_token = token_text(c.eos_token) or "",
    unk_token = token_text(c.unk_token),
    pad_token = token_text(c.pad_token),
    tools = opts.tools,
    documents = opts.documents,
  }
  if opts.vars then for k, v in pairs(opts.vars) do env[k] = v end end
  return self._tpl:render(env)
end

---------------------------------------------------------------------------
-- GGUF tokenizer metadata (tokenizer.ggml.*)

-- Split regexes of llama.cpp's pre-tokenizer types (tokenizer.ggml.pre).
local GGUF_PRE = {
  ["deepseek-v3"] = {
    "\\p{N}{1,3}",
    "[\228\184\128-\233\190\165\227\129\128-\227\130\159\227\130\160-\227\131\191]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
  },
  ["llama-bpe"] = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  },
  qwen2 = {
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
  },
  ["gpt-2"] = { GPT2_RE },
  ["default"] = { GPT2_RE },
}
M.GGUF_PRE = GGUF_PRE
GGUF_PRE.llama3 = GGUF_PRE["llama-bpe"]
GGUF_PRE.gpt2 = GGUF_PRE["gpt-2"]

-- md: table of GGUF metadata (key -> value; arrays as Lua lists, or the
-- typed values of tide.gguf's writer helpers).
function M.from_gguf_metadata(md)
  if type(md) ~= "table" then return nil, "gguf tokenizer: metadata must be a table" end
  local plain = {}
  for k, v in pairs(md) do
    if type(v) == "table" and v.type ~= nil and v.value ~= nil then v = v.value end
    if type(v) == "cdata" then v = tonumber(v) end
    plain[k] = v
  end
  md = plain
  local model = md["tokenizer.ggml.model"]
  if model ~= "gpt2" then
    return nil, "gguf tokenizer: unsupported tokenizer.ggml.model " .. string.format("%q", tostring(model))
      .. " (only gpt2-style byte-level BPE is supported)"
  end
  local tokens, merges = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"]
  if type(tokens) ~= "table" or type(merges) ~= "table" then
    return nil, "gguf tokenizer: missing tokenizer.ggml.tokens or tokenizer.ggml.merges"
  end
  local pre = md["tokenizer.ggml.pre"] or "default"
  local regs = GGUF_PRE[pre]
  if not regs then return nil, "gguf tokenizer: unsupported tokenizer.ggml.pre " .. string.format("%q", pre) end
  local types = md["tokenizer.ggml.token_type"] or {}
  local vocab, added = {}, {}
  for i, t in ipairs(tokens) do
    local id = i - 1
    vocab[t] = id
    local ty = types[i]
    if ty == 3 or ty == 4 then -- control / user defined
      added[#added + 1] = { id = id, content = t, special = ty == 3, lstrip = false, rstrip = false,
        normalized = false, single_word = false }
    end
  end
  local seq = {}
  for _, r in ipairs(regs) do
    seq[#seq + 1] = { type = "Split", pattern = { Regex = r }, behavior = "Isolated", invert = false }
  end
  seq[#seq + 1] = { type = "ByteLevel", add_prefix_space = false, use_regex = false }
  local post
  local bos = md["tokenizer.ggml.bos_token_id"]
  local add_bos = md["tokenizer.ggml.add_bos_token"]
  if bos and add_bos ~= false and tokens[bos + 1] then
    local name = tokens[bos + 1]
    post = { type = "TemplateProcessing", single = { { SpecialToken = { id = name } }, { Sequence = { id = "A" } } },
      special_tokens = { [name] = { id = name, ids = { bos }, tokens = { name } } } }
  end
  local t = {
    model = { type = "BPE", vocab = vocab, merges = merges },
    added_tokens = added,
    pre_tokenizer = { type = "Sequence", pretokenizers = seq },
    decoder = { type = "ByteLevel" },
    post_processor = post,
  }
  local config = {
    chat_template = md["tokenizer.chat_template"],
    bos_token = bos and tokens[bos + 1],
    eos_token = md["tokenizer.ggml.eos_token_id"] and tokens[md["tokenizer.ggml.eos_token_id"] + 1],
  }
  return M.from_json(t, config)
end

return M
