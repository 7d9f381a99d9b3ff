// What every script shares: the client pointed at the gateway (CG_BASE_URL, CG_API_KEY from the pytest
// test that runs it), the scenario's arguments (one JSON object, argv[2]) and one JSON line on stdout.
import OpenAI from 'openai';

export const args = JSON.parse(process.argv[2] ?? '{}');

export const client = new OpenAI({ baseURL: process.env.CG_BASE_URL, apiKey: process.env.CG_API_KEY, maxRetries: 0 });

// the request's own headers: the id the test settles by and the power level it is charged at
export function headersFor(a) {
  const headers = { 'X-Request-Id': a.requestId };
  if (a.powerLevel) headers['X-Power-Level'] = a.powerLevel;
  return { headers };
}

// the gateway's headers the tests assert on (absent ones are null)
export function creditHeaders(response) {
  const names = ['x-request-id', 'x-credits-held', 'x-credits-charged', 'x-credits-remaining'];
  return Object.fromEntries(names.map((name) => [name, response.headers.get(name)]));
}

export function out(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}
