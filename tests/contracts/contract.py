"""What the contract tests share: vendored JSON schemas checked in a closed world, and a
walker that holds AWS bodies (XML or JSON) and boto3 dicts against botocore's shapes.

Closed world: the providers' schemas mostly leave `additionalProperties` unset (Swagger 2.0
and OpenAPI object schemas are open by default), so a fake could invent a field and still
"validate". `closed()` sets `additionalProperties: false` on every object schema that lists
`properties` and says nothing about extra ones, so a field the schema does not define is a
violation, as is a missing `required` one.

botocore's parsers ignore elements and keys they do not know, so parsing alone proves nothing
about invented fields: `ec2_xml_problems`, `json_problems` and `value_problems` walk the raw
body (or the dict) member by member against the operation's output shape instead.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape
from jsonschema import Draft4Validator  # type: ignore[import-untyped]
from jsonschema.validators import validator_for  # type: ignore[import-untyped]

SCHEMAS = Path(__file__).parent / "schemas"

# ------------------------------------------------------------------ JSON schemas


@cache
def _load(name: str) -> str:
    return (SCHEMAS / name).read_text()


def load_schema(name: str) -> dict[str, Any]:
    """A vendored schema document from `schemas/` (a fresh copy each call)."""
    doc: dict[str, Any] = json.loads(_load(name))
    return doc


def closed(schema: Any) -> Any:
    """A copy of `schema` in which no object schema accepts properties it does not list."""
    out = copy.deepcopy(schema)
    _close(out)
    return out


def _close(node: Any) -> None:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            combined = {"allOf", "anyOf", "oneOf"} & node.keys()
            if combined:  # closing one branch would reject the other branches' properties
                raise ValueError(f"cannot close a schema combined with {sorted(combined)}")
            node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


def schema_problems(
    document: Mapping[str, Any], target: Mapping[str, Any], instance: Any
) -> list[str]:
    """Every violation of `target` (a schema whose `$ref`s point into `document`'s `$defs` /
    `definitions`) by `instance`, closed-world, as "path: message" lines."""
    root: dict[str, Any] = {
        k: document[k] for k in ("$schema", "$defs", "definitions") if k in document
    }
    root.update(target)
    root = closed(root)
    # Swagger 2.0 documents carry no `$schema`: their Schema Object is JSON Schema draft 4.
    cls = validator_for(root, default=Draft4Validator)
    cls.check_schema(root)
    errors = cls(root).iter_errors(instance)
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors
    )


# ------------------------------------------------------------------ botocore shapes


@cache
def service_model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def output_shape(service: str, operation: str) -> StructureShape:
    shape = service_model(service).operation_model(operation).output_shape
    assert isinstance(shape, StructureShape), f"{service} {operation} has no output shape"
    return shape


def _xml_name(member: Shape, name: str) -> str:
    return str(member.serialization.get("name", name))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _enum_problem(
    shape: Shape, text: str, path: str, enum_exempt: Collection[tuple[str, str]]
) -> list[str]:
    allowed = getattr(shape, "enum", None) or []
    if allowed and text not in allowed and (shape.name, text) not in enum_exempt:
        return [f"{path}: {text!r} is not one of {shape.name}'s {len(allowed)} values"]
    return []


def _scalar_problem(shape: Shape, text: str, path: str) -> list[str]:
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            int(text)
        elif kind in ("double", "float"):
            float(text)
        elif kind == "boolean" and text not in ("true", "false"):
            raise ValueError(text)
        elif kind == "timestamp":
            datetime.fromisoformat(text)
    except ValueError:
        return [f"{path}: {text!r} is not a {kind} ({shape.name})"]
    return []


def xml_problems(
    shape: Shape,
    elem: ET.Element,
    path: str,
    *,
    enum_exempt: Collection[tuple[str, str]] = (),
) -> list[str]:
    """`elem` (query/ec2-protocol XML) against `shape`: unknown elements, missing required
    members, list items under another tag, scalars that do not parse as the shape's type."""
    problems: list[str] = []
    if isinstance(shape, StructureShape):
        by_tag = {_xml_name(m, n): (n, m) for n, m in shape.members.items()}
        seen: set[str] = set()
        for child in elem:
            tag = _local(child.tag)
            if tag not in by_tag:
                problems.append(f"{path}: <{tag}> is not a member of {shape.name}")
                continue
            name, member = by_tag[tag]
            seen.add(name)
            problems += xml_problems(member, child, f"{path}/{tag}", enum_exempt=enum_exempt)
        problems += [
            f"{path}: required member {n} of {shape.name} is missing"
            for n in shape.required_members
            if n not in seen
        ]
    elif isinstance(shape, ListShape):
        item = _xml_name(shape.member, "member")
        for i, child in enumerate(elem):
            if _local(child.tag) != item:
                problems.append(f"{path}: <{_local(child.tag)}> in a list of <{item}>")
                continue
            problems += xml_problems(shape.member, child, f"{path}[{i}]", enum_exempt=enum_exempt)
    elif isinstance(shape, MapShape):
        problems.append(f"{path}: maps are not walked ({shape.name})")
    else:
        if len(elem):
            problems.append(f"{path}: scalar {shape.name} has child elements")
        text = elem.text or ""
        problems += _scalar_problem(shape, text, path)
        problems += _enum_problem(shape, text, path, enum_exempt)
    return problems


def ec2_xml_problems(
    operation: str, body: bytes, *, enum_exempt: Collection[tuple[str, str]] = ()
) -> list[str]:
    """An EC2 (ec2 protocol) success body against `operation`'s output shape. The root is
    `<{operation}Response>`; `requestId` is protocol metadata, not a member."""
    root = ET.fromstring(body)
    if _local(root.tag) != f"{operation}Response":
        return [f"<root>: <{_local(root.tag)}> is not <{operation}Response>"]
    problems: list[str] = []
    shape = output_shape("ec2", operation)
    stripped = ET.Element(root.tag)
    for child in root:
        if _local(child.tag) == "requestId":
            continue
        stripped.append(child)
    if root.find("{*}requestId") is None:
        problems.append("<root>: no <requestId>")
    problems += xml_problems(shape, stripped, operation, enum_exempt=enum_exempt)
    return problems


def json_problems(
    shape: Shape,
    value: Any,
    path: str,
    *,
    enum_exempt: Collection[tuple[str, str]] = (),
) -> list[str]:
    """A decoded JSON-protocol body (or part of it) against `shape`: unknown keys, missing
    required members, values of the wrong JSON type."""
    problems: list[str] = []
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where {shape.name} (an object) belongs"]
        by_key = {_xml_name(m, n): (n, m) for n, m in shape.members.items()}
        for key, item in value.items():
            if key not in by_key:
                problems.append(f"{path}: {key!r} is not a member of {shape.name}")
                continue
            problems += json_problems(
                by_key[key][1], item, f"{path}/{key}", enum_exempt=enum_exempt
            )
        problems += [
            f"{path}: required member {n} of {shape.name} is missing"
            for n in shape.required_members
            if _xml_name(shape.members[n], n) not in value
        ]
    elif isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__} where {shape.name} (a list) belongs"]
        for i, item in enumerate(value):
            problems += json_problems(shape.member, item, f"{path}[{i}]", enum_exempt=enum_exempt)
    elif isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__} where {shape.name} (a map) belongs"]
        for key, item in value.items():
            problems += json_problems(shape.key, key, f"{path}<key>", enum_exempt=enum_exempt)
            problems += json_problems(shape.value, item, f"{path}/{key}", enum_exempt=enum_exempt)
    else:
        problems += _json_scalar_problem(shape, value, path)
        if isinstance(value, str):
            problems += _enum_problem(shape, value, path, enum_exempt)
    return problems


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "long": (int,),
    "double": (int, float),
    "float": (int, float),
    "boolean": (bool,),
    "timestamp": (int, float, str),
}


def _json_scalar_problem(shape: Shape, value: Any, path: str) -> list[str]:
    kinds = _JSON_TYPES.get(shape.type_name)
    if kinds is None:
        return [f"{path}: {shape.type_name} members are not walked ({shape.name})"]
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds):
        return [f"{path}: {value!r} is not a {shape.type_name} ({shape.name})"]
    return []


def value_problems(
    shape: Shape,
    value: Any,
    path: str,
    *,
    enum_exempt: Collection[tuple[str, str]] = (),
) -> list[str]:
    """A boto3-style dict (member names, Python values: what a fixture holds or what botocore
    parsed) against `shape`."""
    if shape.type_name == "timestamp":
        if isinstance(value, datetime):
            return []
        return [f"{path}: {value!r} is not a datetime ({shape.name})"]
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        problems: list[str] = []
        for key, item in value.items():
            if key not in shape.members:
                problems.append(f"{path}: {key!r} is not a member of {shape.name}")
                continue
            problems += value_problems(
                shape.members[key], item, f"{path}/{key}", enum_exempt=enum_exempt
            )
        problems += [
            f"{path}: required member {n} of {shape.name} is missing"
            for n in shape.required_members
            if n not in value
        ]
        return problems
    if isinstance(shape, ListShape) and isinstance(value, list):
        out: list[str] = []
        for i, item in enumerate(value):
            out += value_problems(shape.member, item, f"{path}[{i}]", enum_exempt=enum_exempt)
        return out
    return json_problems(shape, value, path, enum_exempt=enum_exempt)
