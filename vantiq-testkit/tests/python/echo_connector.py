"""The echo contract (vantiq-connector/src/echo.rs) on the published Python SDK
(`pip install vantiqconnectorsdk`): a client no one here wrote. Used by
vantiq-testkit/tests/python_sdk.rs (interop with the test server) and by the benchmark
harness (bench/, scripts/bench.sh).

Run it in a directory holding serverConfig/server.config:
  * on connect with configuration C: notification {"connected": true, "config": C};
  * publish {"burst": N, "payload": P}: N notifications {"seq": i, "payload": P} in order;
    any other publish O: one notification equal to O;
  * query {"rows": N, "chunk": K}: rows {"i": 0}.. as partial (100) replies of K rows, the
    last chunk as the final (200) reply; without chunk one 200 reply with all rows;
    N = 0: an empty (204) reply;
  * query {"error": M}: error reply echo.error, "Echo error: {0}", parameters [M].

The harness's server.config for this connector has no sendPings key (the SDK turns pings on
when the key is present at all).
"""

import asyncio

from vantiqconnectorsdk import (
    VantiqConnector,
    VantiqConnectorSet,
    setup_logging,
)

connector_set = None
_background = set()


def connection_for(ctx):
    return connector_set.get_connection_for_source(ctx[VantiqConnector.SOURCE_NAME])


async def handle_close(ctx):
    pass


async def handle_connect(ctx, config):
    conn = connection_for(ctx)
    # The SDK marks the connection ready only after this handler returns, and
    # send_notification waits for that: send from a task of its own.
    task = asyncio.get_running_loop().create_task(
        conn.send_notification({"connected": True, "config": config})
    )
    _background.add(task)
    task.add_done_callback(_background.discard)


async def handle_publish(ctx, message):
    conn = connection_for(ctx)
    if isinstance(message, dict) and isinstance(message.get("burst"), int):
        payload = message.get("payload")
        for seq in range(message["burst"]):
            await conn.send_notification({"seq": seq, "payload": payload})
    else:
        await conn.send_notification(message)


async def handle_query(ctx, params):
    conn = connection_for(ctx)
    params = params or {}
    if "error" in params:
        await conn.send_query_error(ctx, {
            VantiqConnector.ERROR_CODE: "echo.error",
            VantiqConnector.ERROR_TEMPLATE: "Echo error: {0}",
            VantiqConnector.ERROR_PARAMETERS: [params["error"]],
        })
        return
    total = int(params.get("rows") or 0)
    if total == 0:
        await conn.send_query_response(ctx, VantiqConnector.QUERY_EMPTY, None)
        return
    chunk = int(params.get("chunk") or 0)
    if chunk <= 0:
        chunk = total
    start = 0
    while start + chunk < total:
        rows = [{"i": i} for i in range(start, start + chunk)]
        await conn.send_query_response(ctx, VantiqConnector.QUERY_PARTIAL, rows)
        start += chunk
    rows = [{"i": i} for i in range(start, total)]
    await conn.send_query_response(ctx, VantiqConnector.QUERY_COMPLETE, rows)


async def main():
    global connector_set
    setup_logging()  # must come before VantiqConnectorSet()
    connector_set = VantiqConnectorSet()
    connector_set.configure_handlers_for_all(
        handle_close, handle_connect, handle_publish, handle_query
    )
    await connector_set.run_connectors()


if __name__ == "__main__":
    asyncio.run(main())
