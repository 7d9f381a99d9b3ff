// client.responses.create, non-stream or stream
import { args, client, creditHeaders, headersFor, out } from './lib.mjs';

const body = { model: args.model, input: args.input };
if (args.instructions) body.instructions = args.instructions;
if (!args.stream) {
  const { data, response } = await client.responses.create(body, headersFor(args)).withResponse();
  out({ id: data.id, status: data.status, text: data.output_text, usage: data.usage, headers: creditHeaders(response) });
} else {
  const { data: stream, response } = await client.responses
    .create({ ...body, stream: true }, headersFor(args))
    .withResponse();
  const types = [];
  let text = '';
  let completed = null;
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  out({ types, text, status: completed?.status, usage: completed?.usage, headers: creditHeaders(response) });
}
