// client.embeddings.create with a list of inputs
import { args, client, creditHeaders, headersFor, out } from './lib.mjs';

const { data, response } = await client.embeddings
  .create({ model: args.model, input: args.input }, headersFor(args))
  .withResponse();
out({
  count: data.data.length,
  dimensions: data.data.map((item) => item.embedding.length),
  usage: data.usage,
  headers: creditHeaders(response),
});
