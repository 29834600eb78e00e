// The official openai client against a running `tide serve`:
//   node chat.js PORT KEY  -> prints {"plain": "...", "streamed": "...", "chunks": N}
const OpenAI = require("openai");

async function main() {
  const [port, key] = process.argv.slice(2);
  const client = new OpenAI({ apiKey: key, baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0, timeout: 30000 });
  const messages = [{ role: "user", content: "Tell me a story." }];
  const r = await client.chat.completions.create({ model: "dsv3-tiny", messages, max_tokens: 10, temperature: 0 });
  const stream = await client.chat.completions.create({
    model: "dsv3-tiny", messages, max_tokens: 10, temperature: 0, stream: true,
  });
  let text = "";
  let chunks = 0;
  for await (const c of stream) {
    chunks++;
    text += (c.choices[0] && c.choices[0].delta && c.choices[0].delta.content) || "";
  }
  let unauthorized = false;
  try {
    await new OpenAI({ apiKey: "wrong", baseURL: `http://127.0.0.1:${port}/v1`, maxRetries: 0 }).models.list();
  } catch (e) {
    unauthorized = e.status === 401;
  }
  console.log(JSON.stringify({ plain: r.choices[0].message.content, streamed: text, chunks, unauthorized,
    finish: r.choices[0].finish_reason }));
}

main().catch((e) => {
  console.error(String(e && e.stack || e));
  process.exit(1);
});
