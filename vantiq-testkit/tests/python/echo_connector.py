"""A small connector on the published Python SDK (`pip install vantiqconnectorsdk`), used by
vantiq-testkit/tests/python_sdk.rs to prove the test server against a client no one here wrote.

Run it in a directory holding serverConfig/server.config. It:
  * on connect, notifies {"connected": true, "config": <the configuration received>};
  * on publish, notifies {"echo": <the published object>};
  * on query, answers according to the WITH parameters:
      {"fail": X}            -> query error (code io.vantiq.testkit.echo.failed, parameters [X])
      {"rows": N, "chunk": M} -> rows {"i": 0} .. {"i": N-1}, in partial (100) replies of M rows
                                 and a final (200) reply; N = 0 -> an empty (204) reply
"""

import asyncio
import sys

from vantiqconnectorsdk import (
    VantiqConnector,
    VantiqConnectorSet,
    setup_logging,
)

connector_set = None


def log(*args):
    print("echo_connector:", *args, file=sys.stderr, flush=True)


def connection_for(ctx):
    return connector_set.get_connection_for_source(ctx[VantiqConnector.SOURCE_NAME])


async def handle_close(ctx):
    log("closed", ctx)


async def handle_connect(ctx, config):
    log("connected", ctx, config)
    conn = connection_for(ctx)
    # The SDK marks the connection ready only after this handler returns, and
    # send_notification waits for that: send from a separate task.
    asyncio.get_running_loop().create_task(
        conn.send_notification({"connected": True, "config": config})
    )


async def handle_publish(ctx, message):
    await connection_for(ctx).send_notification({"echo": message})


async def handle_query(ctx, params):
    conn = connection_for(ctx)
    params = params or {}
    if "fail" in params:
        await conn.send_query_error(ctx, {
            VantiqConnector.ERROR_CODE: "io.vantiq.testkit.echo.failed",
            VantiqConnector.ERROR_TEMPLATE: "The query failed: {0}",
            VantiqConnector.ERROR_PARAMETERS: [params["fail"]],
        })
        return
    total = int(params.get("rows", 0))
    chunk = max(1, int(params.get("chunk", total or 1)))
    if total == 0:
        await conn.send_query_response(ctx, VantiqConnector.QUERY_EMPTY, None)
        return
    rows = [{"i": i} for i in range(total)]
    while len(rows) > chunk:
        await conn.send_query_response(ctx, VantiqConnector.QUERY_PARTIAL, rows[:chunk])
        rows = rows[chunk:]
    await conn.send_query_response(ctx, VantiqConnector.QUERY_COMPLETE, rows)


async def main():
    global connector_set
    setup_logging()  # mandatory before VantiqConnectorSet() (SDK bug B10)
    connector_set = VantiqConnectorSet()
    connector_set.configure_handlers_for_all(
        handle_close, handle_connect, handle_publish, handle_query
    )
    log("starting for sources", connector_set.get_sources())
    await connector_set.run_connectors()


if __name__ == "__main__":
    asyncio.run(main())
