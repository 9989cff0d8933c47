"""An OpenAI-compatible mock upstream: a real aiohttp HTTP server for tests, benchmarks and demos.

It serves `GET /v1/models` and `POST /v1/chat/completions` (JSON and Server-Sent Events) with
deterministic token counts (`openai_chat`), and can misbehave on purpose: latency, 429 with
Retry-After, 500, hanging requests, streams cut mid-way, and lying about usage. Behaviours come
either from random rates in `MockConfig` or from a queue of one-shot behaviours posted to
`/_mock/enqueue` (`behaviours`); the control endpoints live under `/_mock/` (`control`).

Hostile one-shot behaviours (for the broker's upstream-trust rules), each counted in
`by_outcome` under its name:

* `{"redirect": true}` answers 302 to `/_mock/elsewhere/...` on `localhost` (another origin
  than 127.0.0.1); `{"redirect": "<url>"}` to any URL. Hits there are counted in the stats'
  `elsewhere` (with how many carried an Authorization header).
* `{"status": 401, "echo_headers": true}` answers an error whose message, code and type
  echo the request's headers, Authorization included.
* `{"oversize_bytes": n}` pads a JSON answer to at least n bytes, or sends one SSE event of at
  least n bytes in a stream (then the rest of the stream as usual).
* `{"malformed": true}` answers 200 with a truncated JSON body.
* `{"usage": ...}` reports that object instead of the real usage ("absent" leaves it out);
  `{"trailing_zero_usage": true}` sends a second, all-zero usage chunk after a stream's real one.

`/_mock/stats` token sums are what the mock would bill, whatever usage it reports; it also shows
`last_messages`, the messages of the last chat request as received. Scripted replies:
`POST /_mock/reply {"text": ..., "refusal": ..., "tool_arguments": ..., "chunk_chars": 3}` makes
every chat answer carry exactly that text until `{"text": null}` or a reset;
`GET /_mock/last_request` is the last chat body as received; `GET /_mock/last_headers` its
headers (credentials left out).

Modules: `config` (knobs), `behaviours` (one-shot queue and rates), `state` (stats, script),
`script`, `http` (shared HTTP helpers), `faults` (misbehaviour common to every protocol),
`openai_api` and `openai_chat` (protocols), `control` (`/_mock/*`), `server` (app and CLI).
`gemini` and `gemini_wire`: Google's generateContent, with the same switches.
A new protocol is one module with `routes(state)`, listed in `server.PROTOCOLS`.

Run it with `python -m bradax_cli.mock --port 8090` (or `bradax mock-openai`, or
`python -m bradax_cli.mock_openai`).
"""
