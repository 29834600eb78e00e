-- tide.jinja: chat templates rendered exactly as Hugging Face transformers
-- renders them. Fixtures made on the device machine by
-- scripts/make_chat_fixtures.py (transformers' apply_chat_template and its
-- compiled jinja2 environment).
local H = require "helpers"
local jinja = require "tide.jinja"
local TK = require "tide.tokenizer"

local T = {}

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- acceptance 3: the DeepSeek-V3 template from tokenizer_config.json
function T.deepseek_v3_chat_template_matches_transformers()
  local d = assert(jinja.json_decode(read("tests/fixtures/chat_template_cases.json")))
  local tok = assert(TK.load("models/tokenizers/deepseek-v3"))
  local n = 0
  for _, c in ipairs(d.cases) do
    if c.expected then
      local got, err = tok:apply_chat_template(c.messages, { add_generation_prompt = c.add_generation_prompt })
      H.eq(err, nil, c.name .. " error")
      H.eq(got, c.expected, string.format("%s (add_generation_prompt=%s)", c.name, tostring(c.add_generation_prompt)))
      n = n + 1
    end
  end
  H.truthy(n >= 16, "cases compared")
end

-- templates in the style of other model families, and a feature soup
function T.feature_templates_match_jinja2()
  local d = assert(jinja.json_decode(read("tests/fixtures/jinja_cases.json")))
  local compiled = {}
  for name, src in pairs(d.templates) do compiled[name] = assert(jinja.compile(src)) end
  for _, c in ipairs(d.cases) do
    local label = string.format("%s/%s gen=%s", c.template, c.conversation, tostring(c.context.add_generation_prompt))
    local got, err = compiled[c.template]:render(c.context)
    if c.expected then
      H.eq(err, nil, label .. " error")
      H.eq(got, c.expected, label)
    else
      H.fails(c.error, got, err)
    end
  end
end

function T.whitespace_control()
  -- trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it
  H.eq(jinja.render("{% if true %}\nA\n{% endif %}\nB", {}), "A\nB", "trim_blocks")
  H.eq(jinja.render("x\n    {% if true %}y{% endif %}", {}), "x\ny", "lstrip_blocks")
  H.eq(jinja.render("x  {{- 'y' -}}  z", {}), "xyz", "minus markers")
  H.eq(jinja.render("a {%+ if true %}b{% endif %}", {}), "a b", "plus marker keeps spaces")
  H.eq(jinja.render("{{ 'a' }}\n{{ 'b' }}", {}), "a\nb", "no trimming after expressions")
  H.eq(jinja.render("a\n", {}), "a", "one trailing newline is dropped")
end

function T.values_and_scoping()
  H.eq(jinja.render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{% endfor %}{{ x }}", {}), "1",
    "set inside a loop does not leak")
  H.eq(jinja.render("{% set ns = namespace(x=1) %}{% for i in [1] %}{% set ns.x = 2 %}{% endfor %}{{ ns.x }}", {}),
    "2", "namespace attributes do")
  H.eq(jinja.render("{{ a.b is defined }} {{ a is none }} {{ c }}", { a = jinja.none }), "False True ", "none/undefined")
  H.eq(jinja.render("{{ d|tojson }}", { d = jinja.ordered({ z = 1, a = 2 }, { "z", "a" }) }), '{"z": 1, "a": 2}',
    "key order kept by jinja.ordered")
  local v = assert(jinja.json_decode('{"b": [1, {"y": null, "x": "\\u00e9"}], "a": true}'))
  H.eq(jinja.render("{{ v|tojson }}", { v = v }), '{"b": [1, {"y": null, "x": "\195\169"}], "a": true}',
    "json_decode keeps key order")
end

function T.errors_name_the_problem()
  H.fails("unclosed tag", jinja.compile("{{ x"))
  H.fails("expected else or endfor", jinja.compile("{% for x in y %}"))
  H.fails("unsupported tag \"include\"", jinja.compile("{% include 'x' %}"))
  local t = assert(jinja.compile("{{ x|nosuchfilter }}"))
  H.fails("unknown filter \"nosuchfilter\"", t:render({ x = 1 }))
  H.fails("boom", jinja.render("{{ raise_exception('boom') }}", {}))
end

return T
