"""The MCP server, by job:

- ``front``: the port's HTTP front: each connection's requests (keep-alive), health,
  WebSocket upgrades, the rest of / and /mcp to Streamable HTTP;
- ``httpio``: one HTTP/1.1 connection read and written with h11;
- ``admission``: counts of connections and sessions against the limits, token and Origin;
- ``websocket``: MCP over a WebSocket connection (reading, sending, idle and send timeouts);
- ``stdio``: MCP over stdin/stdout, one session for the process (``horace mcp``);
- ``http``: MCP over Streamable HTTP (POST, GET, DELETE; JSON or SSE answers);
  ``httpsession``: one Streamable HTTP session (its calls, its answers, its end);
  ``sse``: server-sent events and the answers kept for a client that resumes;
- ``mcp``: one MCP session whatever the transport (methods, limits, cancellation);
- ``jsonrpc``: JSON-RPC 2.0 checks and texts; ``runner``: one tool call under its scope;
- ``observer``: what the logs and the conversation sink learn of a call;
- ``tools``: the tool table; ``resources``: history as MCP resources;
- ``sinks``: which log sinks run and what they learn of calls; ``sinkprocess``: the child
  process they run in (by default);
- ``lifecycle``: listen, sessions, health, graceful shutdown;
- ``serving``: ``serve`` puts them together with the log sinks (``log_sinks``: a child
  process, or supervised children of the same nursery) and the background tasks;
  ``serve_stdio`` does the same for one stdio session, without the background tasks and
  the port.

This package imports none of them: the sink process imports only its own part."""
