import asyncio
import websockets
import json

async def test():
    async with websockets.connect("ws://<your-ip>:3030") as ws:
        # Register
        await ws.send(json.dumps({"type": "register", "agent_id": "test-agent"}))
        print(await ws.recv())  # Should get {"type": "registered"}

        # Subscribe
        await ws.send(json.dumps({"type": "subscribe", "topic": "orchestrator"}))
        print(await ws.recv())  # Should get {"type": "subscribed"}

        # Send message
        await ws.send(json.dumps({
            "type": "send",
            "topic": "orchestrator",
            "content": "Hello from remote!",
            "from_agent": "test-agent",
            "to_agent": "board"
        }))

        # Listen for responses
        async for message in ws:
            print(f"Received: {message}")

asyncio.run(test())
