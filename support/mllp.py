"""A real HL7 v2 MLLP receiver on 127.0.0.1 (python-hl7's asyncio server), as a RIS's interface engine would
listen, for the tests and the benchmarks: it keeps every message it is sent and answers as ``mode`` says: ``AA``,
``AE`` or ``AR`` (an acknowledgement with that code), ``drop`` (closes the connection unanswered) or ``silent``
(never answers)."""

import asyncio
import threading

from net import free_port


class MllpReceiver:
    """``MllpReceiver("AA").start()``; ``messages`` holds the texts received, ``mode`` may change while it runs."""

    def __init__(self, mode: str = "AA"):
        self.mode, self.messages, self.port = mode, [], free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="mllp-receiver", daemon=True)
        self._ready = threading.Event()
        self._server = None

    def start(self) -> "MllpReceiver":
        self._thread.start()
        assert self._ready.wait(10), "the MLLP receiver did not start"
        return self

    def stop(self) -> None:
        """Close the server and every connection, then the loop."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def _run(self) -> None:
        from hl7.mllp import start_hl7_server

        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            start_hl7_server(self._handle, "127.0.0.1", self.port, encoding="utf-8")
        )
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                self.messages.append(str(message))
                if self.mode == "drop":
                    break
                if self.mode == "silent":
                    await asyncio.sleep(3600)
                writer.writemessage(message.create_ack(self.mode))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass
