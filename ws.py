import asyncio, base64, json, os
import websockets
async def main():
    token = os.environ["HORACE_AUTH_TOKEN"]
    offered = "bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    async with websockets.connect("ws://127.0.0.1:18932/mcp", subprotocols=["mcp", offered]) as ws:
        print(ws.subprotocol)
        await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        print(await ws.recv())
asyncio.run(main())
