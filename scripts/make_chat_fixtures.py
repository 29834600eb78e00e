#!/usr/bin/env python3
"""Reference outputs for the tokenizer tests, made with Hugging Face
transformers/tokenizers (run on a machine where they are installed):

  python3 scripts/make_chat_fixtures.py OUTDIR [--jinja-only]

writes OUTDIR/chat_template_cases.json (-> tests/fixtures/), the Rust
library's ids for tests/data/multilingual.json (multilingual_deepseek_v3_ids.json),
regex split references (regex_cases.json), the Rust regex engine's
membership of each Unicode class (unicode_probe.json) and Jinja feature
cases rendered like transformers renders chat templates (jinja_cases.json).
"""
import json, os, sys, time

out = sys.argv[1] if len(sys.argv) > 1 else "."
TOK_DIR = "models/tokenizers/deepseek-v3"

def tool_call(name, args):
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

CONVS = [
    ("user_only", [{"role": "user", "content": "Hello!"}]),
    ("system_user", [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is 2+2?"}]),
    ("multi_turn", [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Name a colour."},
                    {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": "Another one?"}]),
    ("two_systems", [{"role": "system", "content": "First rule."},
                     {"role": "user", "content": "Hi"},
                     {"role": "system", "content": "Second rule."},
                     {"role": "assistant", "content": "Hello."}]),
    ("ends_with_assistant", [{"role": "user", "content": "Say yes."},
                             {"role": "assistant", "content": "Yes."}]),
    ("unicode_and_newlines", [{"role": "user", "content": "  多行\n文本\t🙂 <b>tags</b> {{ not jinja }} {% raw %}\n"},
                              {"role": "assistant", "content": "Привет\n\n```python\nprint('x')\n```"},
                              {"role": "user", "content": ""}]),
    ("tool_calls", [{"role": "system", "content": "You can call tools."},
                    {"role": "user", "content": "Weather in Paris and Rome?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        tool_call("get_weather", {"city": "Paris"}),
                        tool_call("get_weather", {"city": "Rome"})]},
                    {"role": "tool", "content": "{\"temp\": 18}"},
                    {"role": "tool", "content": "{\"temp\": 24}"},
                    {"role": "assistant", "content": "Paris 18, Rome 24."},
                    {"role": "user", "content": "Thanks"}]),
    ("single_tool_call_pending", [{"role": "user", "content": "Time?"},
                                  {"role": "assistant", "content": None, "tool_calls": [tool_call("now", {})]},
                                  {"role": "tool", "content": "12:00"}]),
    ("empty", []),
]

def render_cases():
    cases, how = [], None
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(TOK_DIR)
        render = lambda m, g: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g)
        import transformers
        how = "transformers %s apply_chat_template" % transformers.__version__
    except Exception as e:  # noqa
        print("AutoTokenizer failed:", repr(e), file=sys.stderr)
        raise
    for name, msgs in CONVS:
        for gen in (True, False):
            try:
                text = render(msgs, gen)
                cases.append({"name": name, "messages": msgs, "add_generation_prompt": gen, "expected": text})
            except Exception as e:  # noqa
                cases.append({"name": name, "messages": msgs, "add_generation_prompt": gen, "error": repr(e)})
    return {"generator": how, "template_source": TOK_DIR + "/tokenizer_config.json", "cases": cases}

def main():
    os.makedirs(out, exist_ok=True)
    import tokenizers
    from tokenizers import Tokenizer, Regex, pre_tokenizers
    with open(os.path.join(out, "chat_template_cases.json"), "w", encoding="utf-8") as f:
        json.dump(render_cases(), f, ensure_ascii=False, indent=1)

    tk = Tokenizer.from_file(TOK_DIR + "/tokenizer.json")
    paras = json.load(open("tests/data/multilingual.json", encoding="utf-8"))
    ids = [tk.encode(p, add_special_tokens=False).ids for p in paras]
    text = open("tests/data/val.txt", encoding="utf-8").read()
    t0 = time.perf_counter(); tk.encode(text, add_special_tokens=False); dt = time.perf_counter() - t0
    with open(os.path.join(out, "multilingual_deepseek_v3_ids.json"), "w") as f:
        json.dump({"note": "tokenizers %s, Tokenizer.from_file(%s/tokenizer.json).encode(p, add_special_tokens=False) "
                   "for each paragraph of tests/data/multilingual.json" % (tokenizers.__version__, TOK_DIR),
                   "ids": ids, "val_txt_single_call_MBps": len(text.encode()) / dt / 1e6}, f)

    # regex split references: Split(pattern, behavior) on tricky strings
    pats = [
        ("gpt2", r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"),
        ("llama3", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ("dsv3", r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
        ("lazy", r"a+?b|x*?y|\d{2,}?"),
        ("bounded", r"\p{N}{1,3}|[a-c]{2}|z{2,}"),
        ("lookahead", r"\w+(?=!)|\s+(?!\w)|[^\w\s]"),
        ("groups", r"(?:ab|a)(?:bc|c)|(x|xy)z|q?"),
    ]
    strs = ["Hello  world!!  \n\n  x", "I'M can't WE'LL they've 12345678 x1y22", "a\u0085 b\u2028c \u00a0d   \r\n\r\n e",
            "  leading and trailing  ", "tab\tsep\t\tend\t", "abc abbc xxy xy y 1234567", "abbc abc ac xz xyz xxyz qq",
            "word! other!! 多语言 text, 123\n", "\u0661\u0662\u0663 \u00bd \u2167 x\u0301y", "emoji 👍🏽 ok!", ""]
    behaviors = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
    rcases = []
    for name, p in pats:
        for beh in behaviors:
            for inv in (False, True):
                sp = pre_tokenizers.Split(Regex(p), behavior=beh, invert=inv)
                for s in strs:
                    rcases.append({"pattern": p, "name": name, "behavior": beh, "invert": inv, "input": s,
                                   "pieces": [x[0] for x in sp.pre_tokenize_str(s)]})
    with open(os.path.join(out, "regex_cases.json"), "w", encoding="utf-8") as f:
        json.dump({"note": "tokenizers %s pre_tokenizers.Split(Regex(pattern), behavior, invert).pre_tokenize_str(input)"
                   % tokenizers.__version__, "cases": rcases}, f, ensure_ascii=False)

    # Unicode class membership as the Rust library's regex engine sees it
    cps = [c for c in range(0x110000) if not (0xD800 <= c <= 0xDFFF)]
    allchars = "".join(map(chr, cps))
    probe = {}
    for cls in [r"\p{L}", r"\p{N}", r"\p{P}", r"\p{S}", r"\p{M}", r"\s", r"\w", r"\d", r"\p{Lu}", r"\p{Ll}", r"\p{Nd}", r"\p{Z}", r"\p{C}"]:
        sp = pre_tokenizers.Split(Regex(cls), behavior="removed")
        pieces = [x[0] for x in sp.pre_tokenize_str(allchars)]
        matched = []
        pos = 0
        for pc in pieces:
            i = allchars.find(pc, pos)
            matched.append((pos, i))
            pos = i + len(pc)
        matched.append((pos, len(allchars)))
        ranges = []
        for a, b in matched:
            if b > a:
                lo, hi = cps[a], cps[b - 1]
                # cps skips surrogates: split a run spanning them
                if lo < 0xD800 and hi > 0xDFFF:
                    ranges.append([lo, 0xD7FF]); ranges.append([0xE000, hi])
                else:
                    ranges.append([lo, hi])
        probe[cls] = ranges
    with open(os.path.join(out, "unicode_probe.json"), "w") as f:
        json.dump({"note": "tokenizers %s: code points each class matches (surrogates excluded)" % tokenizers.__version__,
                   "classes": probe}, f)
    print("done")



# ---- Jinja feature cases: hand-written templates rendered the way
# transformers renders chat templates (jinja2 sandbox, trim_blocks,
# lstrip_blocks, loopcontrols, its tojson). Written to OUTDIR/jinja_cases.json.

LLAMA3_LIKE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
               "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
               "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
               "{{ content }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

QWEN_LIKE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

MISTRAL_LIKE = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}
"""

FEATURES = """{% for m in messages %}
  {% if loop.first %}first {% endif %}{{ loop.index }}/{{ loop.length }}:{{ m.role|upper }}={{ m.content|length }}
  {# a comment #}
{% endfor %}
{% set ns = namespace(total=0) %}
{% for m in messages %}{% set ns.total = ns.total + m.content|length %}{% endfor %}
total={{ ns.total }}
{{ "a,b,,c".split(",") }} {{ " x "|trim }}|{{ "Hello"[1:4] }}|{{ "abc"[::-1] }}|{{ [1,2,3][-1] }}
{{ "x" if messages|length > 2 else "y" }} {{ none is none }} {{ undefined_var is defined }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 3 }}
{{ "abc".startswith("ab") and not "abc".endswith("x") }} {{ "b" in "abc" }} {{ 3 in [1, 2] }} {{ ("a" ~ 1 ~ true) }}
{% for k, v in {"a": 1, "b": 2}.items() %}{{ k }}={{ v }};{% endfor %}
{{ [3,1,2]|sort|join("-") }} {{ ["x","y"]|first }}{{ ["x","y"]|last }} {{ range(3)|list }} {{ messages|map(attribute="role")|join(",") }}
{%- for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}[{{ i }}]{% endfor %}
{{ {"a": {"b": 1.5}, "z": [1, "two", none, true]}|tojson }} {{ {"k": "v"}|tojson(indent=2) }}
{% macro greet(name, punct="!") %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet("Bob") }} {{ greet("Al", punct="?") }}
{{ messages[0].get("missing", "dflt") }} {{ "Title case words"|title }} {{ "  pad"|replace(" ", "_") }}
{%- raw %} {{ not rendered }} {% endraw %}
{{ messages|selectattr("role", "equalto", "user")|list|length }} {{ "a\\tb\\u00e9"|tojson }} {{ 10 / 4 }} {{ -3|abs }} {{ 1.5 }} {{ [1, 'a', none] }}
    {% if true %}
    indented block tag line
    {% endif %}
{{ "x" ~ none }} {{ messages|length is even }} {% for x in [] %}no{% else %}empty{% endfor %} {{ "a-b-c".split("-", 1) }} {{ "%s"|length }}
"""

def jinja_cases():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    how = None
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
        compile_ = _compile_jinja_template
        how = "transformers.utils.chat_template_utils._compile_jinja_template"
    except Exception:  # noqa
        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)
        def compile_(src):
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
            env.filters["tojson"] = tojson
            env.globals["raise_exception"] = raise_exception
            return env.from_string(src)
        how = "jinja2 %s sandbox with transformers' settings" % jinja2.__version__
    convs = {
        "basic": [{"role": "system", "content": "Sys."}, {"role": "user", "content": " Hi there "},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
        "user_only": [{"role": "user", "content": "Only me"}],
        "tools": [{"role": "system", "content": "Tools ok."}, {"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
                  {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"},
                  {"role": "assistant", "content": "Sunny and warm."}],
        "bad_alternation": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    }
    tools = [{"type": "function", "function": {"description": "Get weather", "name": "get_weather",
              "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"], "type": "object"}}}]
    cases = []
    for tname, src in [("llama3_like", LLAMA3_LIKE), ("qwen_like", QWEN_LIKE), ("mistral_like", MISTRAL_LIKE),
                       ("features", FEATURES)]:
        tpl = compile_(src)
        for cname, msgs in convs.items():
            for gen in (True, False):
                ctx = {"messages": msgs, "add_generation_prompt": gen, "bos_token": "<s>", "eos_token": "</s>"}
                if cname == "tools":
                    ctx["tools"] = tools
                case = {"template": tname, "conversation": cname, "context": ctx}
                try:
                    case["expected"] = tpl.render(**ctx)
                except Exception as e:  # noqa
                    case["error"] = str(e)
                cases.append(case)
    return {"generator": how, "templates": {"llama3_like": LLAMA3_LIKE, "qwen_like": QWEN_LIKE,
                                           "mistral_like": MISTRAL_LIKE, "features": FEATURES}, "cases": cases}


if __name__ == "__main__":
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "jinja_cases.json"), "w", encoding="utf-8") as f:
        json.dump(jinja_cases(), f, ensure_ascii=False, indent=1)
    if "--jinja-only" not in sys.argv:
        main()
