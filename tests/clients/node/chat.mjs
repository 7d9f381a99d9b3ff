// client.chat.completions.create, non-stream or stream (with or without stream_options.include_usage)
import { args, client, creditHeaders, headersFor, out } from './lib.mjs';

const body = { model: args.model, messages: [{ role: 'user', content: args.content }] };
if (!args.stream) {
  const { data, response } = await client.chat.completions.create(body, headersFor(args)).withResponse();
  out({ content: data.choices[0].message.content, usage: data.usage, headers: creditHeaders(response) });
} else {
  if (args.includeUsage) body.stream_options = { include_usage: true };
  const { data: stream, response } = await client.chat.completions
    .create({ ...body, stream: true }, headersFor(args))
    .withResponse();
  let content = '';
  let chunks = 0;
  const usageChunks = [];
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices) content += choice.delta?.content ?? '';
    if (chunk.usage) usageChunks.push({ choices: chunk.choices.length, usage: chunk.usage });
  }
  out({ content, chunks, usageChunks, headers: creditHeaders(response) });
}
