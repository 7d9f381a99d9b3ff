// a refused chat request: which of the SDK's error classes it raises and what that error carries
import OpenAI from 'openai';
import { args, client, headersFor, out } from './lib.mjs';

try {
  await client.chat.completions.create(
    { model: args.model, messages: [{ role: 'user', content: 'hi' }], stream: Boolean(args.stream) },
    headersFor(args),
  );
  out({ raised: null });
} catch (err) {
  if (!(err instanceof OpenAI.APIError)) throw err;
  out({
    raised: err.constructor.name,
    isAuthenticationError: err instanceof OpenAI.AuthenticationError,
    status: err.status,
    code: err.code,
    type: err.type,
    param: err.param,
    error: err.error,
    message: err.message,
    requestID: err.requestID,
  });
}
