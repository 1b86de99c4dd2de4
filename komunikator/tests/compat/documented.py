"""Checks what a Socket.IO client receives against docs/asyncapi.yaml, so
that an event or acknowledgement changed without its document fails the
compatibility tests.

A payload must match the schema of the message the document names for it
and carry no field the document does not list: the document stays open to
additions for clients (docs/protocol.md, "Versioning"), but here every
object is closed, so an addition must be documented before it ships.
"""
import copy
import pathlib

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "asyncapi.yaml"
URI = "urn:komunikator:asyncapi"


def _closed(node):
    """`node` with `additionalProperties: false` on every object schema
    that lists its properties and says nothing about others."""
    if isinstance(node, dict):
        node = {key: _closed(value) for key, value in node.items()}
        if isinstance(node.get("properties"), dict):
            node.setdefault("additionalProperties", False)
        return node
    if isinstance(node, list):
        return [_closed(item) for item in node]
    return node


DOC = yaml.safe_load(PATH.read_text())
_REGISTRY = Registry().with_resource(
    URI, Resource.from_contents(_closed(copy.deepcopy(DOC)), default_specification=DRAFT202012))


def _key(ref):
    """The message key a `#/channels/socket/messages/<key>` or
    `#/components/messages/<key>` reference names."""
    return ref["$ref"].rsplit("/", 1)[1]


def _validator(key):
    return Draft202012Validator({"$ref": f"{URI}#/components/messages/{key}/payload"},
                                registry=_REGISTRY)


# The socket's operations: what the server sends (event name -> message
# key), and for each client event that may ask for one, its possible acks.
_OPERATIONS = [op for op in DOC["operations"].values()
               if _key(op["channel"]) == "socket"]
SENT = {DOC["components"]["messages"][_key(m)]["name"]: _key(m)
        for op in _OPERATIONS if op["action"] == "send" for m in op["messages"]}
ACKS = {DOC["components"]["messages"][_key(op["messages"][0])]["name"]:
        [_key(m) for m in op["reply"]["messages"]]
        for op in _OPERATIONS if op["action"] == "receive" and "reply" in op}
_VALIDATORS = {key: _validator(key) for key in DOC["components"]["messages"]}


def _first_error(key, payload):
    error = next(iter(_VALIDATORS[key].iter_errors(payload)), None)
    return None if error is None else f"{key}: {error.message} at {list(error.absolute_path)}"


def event_problem(event, payload):
    """Why `payload` of the received `event` is not what the document says,
    or None when it is."""
    if event not in SENT:
        return f"{event!r} is not an event docs/asyncapi.yaml says the server sends"
    problem = _first_error(SENT[event], payload)
    return None if problem is None else f"{event} {payload!r}: {problem}"


def ack_problem(event, payload):
    """Why `payload`, the acknowledgement of `event`, matches none of the
    replies the document gives that event, or None when one matches."""
    if event not in ACKS:
        return f"{event!r} has no acknowledgement in docs/asyncapi.yaml"
    problems = [_first_error(key, payload) for key in ACKS[event]]
    if any(problem is None for problem in problems):
        return None
    return f"ack of {event} {payload!r}: " + "; ".join(problems)


def check_event(event, payload):
    problem = event_problem(event, payload)
    assert problem is None, problem
    return payload


def check_ack(event, payload):
    problem = ack_problem(event, payload)
    assert problem is None, problem
    return payload
