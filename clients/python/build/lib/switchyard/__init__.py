"""asyncio client for Switchyard, the priority event router (wire protocol v1,
docs/protocol.md): publish with a bounded window, subscribe as an async iterator, ack and
nack, reconnect with backoff over several nodes, and resume without skipping events.

```python
import asyncio
from switchyard import Client

async def main():
    async with Client("ws://127.0.0.1:9090/ws") as client:
        sub = await client.subscribe(patterns=["task.>"], ack=True)
        print(await client.publish({"topic": "task.created", "priority": "high"}))
        async for event in sub:
            print(event.topic, event.priority, event.payload)
            await event.ack()

asyncio.run(main())
```
"""
from .backoff import Backoff
from .client import Client
from .errors import (ClientClosed, ClientFailed, ConnectionLost, Forbidden, Internal,
                     InvalidCondition, InvalidEvent, InvalidJson, InvalidPattern,
                     InvalidSubscription, PayloadTooLarge, ProtocolViolation, RateLimited,
                     RequestTimeout, ServerError, SwitchyardError, TooManySubscriptions,
                     Unauthorized, Unavailable, UnknownCommand, UnknownEvent,
                     UnknownSubscription, UnsupportedFrame)
from .subscription import Delivery, Dropped, Event, Gap, Notice, Published, ReplayComplete, Subscription

__version__ = "0.1.0"

__all__ = [
    "Backoff", "Client", "Subscription", "Event", "Published", "ReplayComplete", "Dropped",
    "Gap", "Notice", "Delivery",
    "SwitchyardError", "ServerError", "ClientClosed", "ClientFailed", "ConnectionLost",
    "RequestTimeout", "ProtocolViolation",
    "InvalidJson", "UnknownCommand", "InvalidEvent", "InvalidSubscription", "InvalidPattern",
    "InvalidCondition", "UnknownSubscription", "UnknownEvent", "UnsupportedFrame",
    "PayloadTooLarge", "RateLimited", "TooManySubscriptions", "Unauthorized", "Forbidden",
    "Internal", "Unavailable",
]
