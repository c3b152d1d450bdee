// The official MCP TypeScript SDK's client against Horace: run by scripts/sdk_ts from the
// folder where the SDK is installed. Usage: node sdk_ts_client.mjs http URL
//                                             node sdk_ts_client.mjs stdio PYTHON
// (stdio: `PYTHON -m horace mcp` with this process's environment, HORACE_STORAGE_PATH included)
// Prints one line per check ("ok" or "FAIL") and exits 1 when one failed.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [mode, ...rest] = process.argv.slice(2);
const transport =
  mode === "http"
    ? new StreamableHTTPClientTransport(new URL(rest[0]))
    : new StdioClientTransport({
        command: rest[0],
        args: ["-m", "horace", "mcp"],
        env: process.env,
        stderr: "ignore",
      });
const client = new Client({ name: "horace-sdk-ts-check", version: "1.0.0" });
let failed = 0;
function check(name, passed, detail) {
  if (!passed) failed += 1;
  console.log(`${passed ? "ok  " : "FAIL"} ${mode} ${name}${passed ? "" : `: ${detail}`}`);
}
const body = (result) => JSON.parse(result.content[0].text);
const shown = (value) => JSON.stringify(value).slice(0, 400);

try {
  await client.connect(transport);
  check("initialize", client.getServerVersion()?.name === "horace", shown(client.getServerVersion()));
  const { tools } = await client.listTools();
  check("tools/list: 17 tools, each with an outputSchema", tools.length === 17 && tools.every((t) => t.outputSchema), tools.length);
  // A success: the SDK checks its structuredContent against the tool's outputSchema.
  const registered = await client.callTool({ name: "horace_register_file", arguments: { file_path: "user/ts.txt" } });
  const fileId = registered.structuredContent?.file_id;
  check("horace_register_file: a result", !registered.isError && registered.structuredContent.file.file_path === "user/ts.txt", shown(registered));
  const info = await client.callTool({ name: "horace_get_file_info", arguments: { file_id: fileId, include_versions: true } });
  check("horace_get_file_info: its one version", !info.isError && info.structuredContent.versions.length === 1, shown(info));
  const found = await client.callTool({ name: "horace_search_files", arguments: { path: "user/*" } });
  check("horace_search_files: found, no next page", found.structuredContent.total_count === 1 && found.structuredContent.next_cursor === null, shown(found));
  // A tool error is a result the caller sees, not an exception.
  const missing = await client.callTool({ name: "horace_get_file_info", arguments: { file_id: "00000000-0000-0000-0000-000000000000" } });
  check("a tool error is an isError result", missing.isError === true && body(missing).error_code === "NOT_CATALOGED", shown(missing));
  const gone = await client.callTool({ name: "horace_delete_collection", arguments: { name: "nope" } });
  check("another tool error", gone.isError === true && body(gone).error_code === "COLLECTION_NOT_FOUND", shown(gone));
  // Arguments the inputSchema refuses: a tool error too in MCP 2025-11-25.
  const wrong = await client.callTool({ name: "horace_restore_version", arguments: { file_id: fileId, version: "one" } });
  check("arguments refused: an INVALID_ARGUMENT tool error", wrong.isError === true && body(wrong).error_code === "INVALID_ARGUMENT", shown(wrong));
  try {
    await client.callTool({ name: "horace_nope", arguments: {} });
    check("an unknown tool: a JSON-RPC error", false, "no error");
  } catch (error) {
    check("an unknown tool: a JSON-RPC error", String(error).includes("-32602"), String(error));
  }
  const read = await client.readResource({ uri: `horace://files/${fileId}/versions/1` });
  check("resources/read: version 1", read.contents[0].text === "from the TypeScript SDK\n", shown(read));
  await client.close();
} catch (error) {
  check("the session", false, error?.stack ?? String(error));
}
process.exit(failed ? 1 : 0);
