"""order-priority, in Python: the same connector as plugins/order-priority (Rust)
and plugins/order-priority-js (JavaScript), held to one contract by
tests/tests/contract.rs.

Adds "priority" (high when data.total >= config threshold, default 100) to the
event data and as an extension; drops cancelled orders; data without a numeric
total fails permanently. With `tiers_url` set, the customer's tier is looked up
(GET {tiers_url}/{customer}) with `weft_http` (sdk/python, a small client over
wasi:http), which the host routes through its egress policy: gold customers
are always high.

Built into a component by componentize-py (tests/build.rs):
    componentize-py -d ../../wit -w weft:connector/transform componentize -p . -p ../../sdk/python app -o out.wasm
"""

import json
import re

import weft_http
import wit_world
from componentize_py_types import Err
from wit_world.imports import config, log
from wit_world.imports.weft_connector_types import (
    Event,
    TransformError_Permanent,
    TransformError_Retryable,
)

PLAIN_ID = re.compile(r"^[A-Za-z0-9_-]+$")


def permanent(reason: str) -> Err:
    return Err(TransformError_Permanent(reason))


def retryable(reason: str) -> Err:
    return Err(TransformError_Retryable(reason))


def lookup_tier(base: str, customer) -> str | None:
    """The customer's tier from the tier service; None when it has none."""
    if not isinstance(customer, str):
        return None
    if not PLAIN_ID.match(customer):
        raise permanent("customer is not a plain id")
    try:
        response = weft_http.request("GET", f"{base.rstrip('/')}/{customer}")
    except weft_http.HttpError:
        raise retryable("tier service unreachable")
    status, body = response.status, response.body
    if status == 200:
        try:
            tier = json.loads(body).get("tier")
        except (ValueError, AttributeError):
            tier = None
        if not isinstance(tier, str):
            raise permanent("tier service sent no tier")
        return tier
    if status == 404:
        return None
    if status in (408, 429) or 500 <= status <= 599:
        raise retryable(f"tier service answered {status}")
    raise permanent(f"tier service answered {status}")


class WitWorld(wit_world.WitWorld):
    def transform(self, event: Event) -> list[Event]:
        try:
            data = json.loads(event.data)
        except ValueError:
            raise permanent("data is not JSON")
        if not isinstance(data, dict):
            raise permanent("data is not a JSON object")
        if data.get("status") == "cancelled":
            return []
        total = data.get("total")
        if isinstance(total, bool) or not isinstance(total, (int, float)):
            raise permanent('data has no numeric "total"')
        threshold = float(config.get("threshold") or "100")
        tiers_url = config.get("tiers_url")
        tier = lookup_tier(tiers_url, data.get("customer")) if tiers_url is not None else None
        if tier is not None:
            data["tier"] = tier
        priority = "high" if tier == "gold" or total >= threshold else "normal"
        data["priority"] = priority
        log.log(log.Level.DEBUG, f"priority {priority}", [("event", event.id)])
        event.data = json.dumps(data, separators=(",", ":")).encode()
        event.datacontenttype = "application/json"
        event.extensions = [(k, v) for (k, v) in event.extensions if k != "priority"]
        event.extensions.append(("priority", priority))
        return [event]
