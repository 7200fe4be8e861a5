"""The admin API's view of the replicas: who leads the rollout, and every replica's record.

    GET  /admin/leader      {"replica_id": …, "since": …, "fencing_token": …} (nulls: none)
    GET  /admin/replicas    {"replica_id": <this one>, "store_reachable": …, "replicas": […]}

Authenticated as every admin endpoint (`auth.require_admin`, before the method is looked
at). Who leads is the store's to say: while it is out `/admin/leader` answers 503
`state_unavailable`, while `/admin/replicas` still answers, with this replica's own record
only, `stale`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from proxy import jsoncodec
from proxy.admin.auth import require_admin
from proxy.asgi import ALL_METHODS
from proxy.cutover.store import StateError
from proxy.errors import JSON, AdminError
from proxy.runtime import Runtime

NO_LEADER = {"replica_id": None, "since": None, "fencing_token": None}


def _authorized_get(request: Request) -> Runtime:
    require_admin(request)
    if request.method != "GET":
        raise AdminError(405, "method_not_allowed", "use GET", (("allow", "GET"),))
    runtime: Runtime = request.state.runtime
    return runtime


async def leader(request: Request) -> Response:
    runtime = _authorized_get(request)
    try:
        lease = await runtime.cutover.leader()
    except StateError as exc:
        raise AdminError(503, "state_unavailable", str(exc)) from None
    body = NO_LEADER if lease is None else lease.to_json()
    return Response(jsoncodec.dumps(body), media_type=JSON)


async def replicas(request: Request) -> Response:
    runtime = _authorized_get(request)
    records, reachable = await runtime.cutover.presence.fleet()
    # This process as the list names it (with workers, `<id>#<pid>`).
    body = {
        "replica_id": runtime.cutover.replica_id,
        "store_reachable": reachable,
        "replicas": records,
    }
    return Response(jsoncodec.dumps(body), media_type=JSON)


def routes() -> list[Route]:
    """Every method reaches the handler, so that without a token each answers 404."""
    return [
        Route("/admin/leader", leader, methods=ALL_METHODS),
        Route("/admin/replicas", replicas, methods=ALL_METHODS),
    ]
