"""Request bodies decoded through their declarations (proxy/api/bodies.py), refused in the contract's terms.

A body is decoded in one pass by msgspec's decoder for its struct. Only when that fails is the body read
again, with orjson (the parser the billed routes use), to name the first fault in one fixed order:

1. not JSON, nested past 1024 levels, or not an object: 400 `invalid_json`;
2. the first unknown field, in the order sent: 400 `invalid_value` naming it (a typo never silently
   leaves a value unchanged);
3. then each declared field in declaration order: absent (or null, where the struct says a null
   required field is missing) is 400 `missing_field`; a wrong type, size or shape, or a value outside
   its configured vocabulary, is 400 `invalid_value` with the field's `Rule` message.

msgspec's own error text is never shown or parsed: which field failed is found by converting each
field's value on its own, and what the client reads is the declaration's `Rule`. The second pass is
also the arbiter where the two parsers read a body differently (a duplicated key: orjson keeps the
last value; a number past 64 bits), so the answer is what the hand-written getters gave before.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgspec
import orjson
from starlette.requests import Request

from proxy.api.jsonapi import read_bytes
from proxy.errors import ProxyError

S = TypeVar("S", bound="Body")


@dataclass(frozen=True, slots=True)
class Rule:
    """How a declared request field is refused: 400 `invalid_value` with `message`, which may name
    `{name}` (the field) and any configured vocabulary (`{tiers}`: its values, sorted, comma-separated).

    `vocabulary` says the value must be one of the vocabulary of that name configured at start-up (the
    policy file's tiers and power levels); null passes where the field's type allows it. `test` says
    what msgspec's constraints cannot (an id exactly as proxy/directory/ids.py reads it, a non-zero
    amount); it sees the value only once its type is right. `trim`: the value is stored without its
    surrounding spaces (names, reasons, keys)."""

    message: str
    vocabulary: str | None = None
    test: Callable[[Any], bool] | None = None
    trim: bool = False


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The base of every request body: unknown fields are refused, fields are passed by name."""

    # a required field sent as null is `missing_field` (BYOK's store route), not `invalid_value`
    NULL_IS_MISSING: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    type: Any
    required: bool
    rule: Rule


@dataclass(frozen=True, slots=True)
class _Plan:
    decoder: msgspec.json.Decoder[Any]
    fields: tuple[_Field, ...]
    names: frozenset[str]
    checked: tuple[_Field, ...]  # the fields whose Rule does more than word the refusal


def rules(tp: Any) -> Iterator[Rule]:
    """The `Rule`s in a field's type, also inside `X | None` and `X | UnsetType`."""
    if typing.get_origin(tp) is typing.Annotated:
        yield from (meta for meta in tp.__metadata__ if isinstance(meta, Rule))
    for arg in typing.get_args(tp):
        yield from rules(arg)


def plan_fields(struct: type[Body]) -> tuple[_Field, ...]:
    """Each field of `struct` with its one `Rule` (a field without one is a declaration bug)."""
    planned = []
    for info in msgspec.structs.fields(struct):
        found = list(rules(info.type))
        if len(found) != 1:
            raise TypeError(f"{struct.__name__}.{info.name} needs exactly one Rule, has {len(found)}")
        planned.append(_Field(info.encode_name, info.type, info.required, found[0]))
    return tuple(planned)


class BodyReader:
    """Reads bounded request bodies into their declared structs, with the vocabularies the policy file
    configured (`tiers=...`, `power_levels=...`, `providers=...`). Decoders are built on first use."""

    def __init__(self, **vocabularies: Collection[str]) -> None:
        self._vocabularies = {name: frozenset(values) for name, values in vocabularies.items()}
        self._listed = {name: ", ".join(sorted(values)) for name, values in self._vocabularies.items()}
        self._plans: dict[type[Body], _Plan] = {}

    async def read(self, request: Request, struct: type[S]) -> S:
        """The body as `struct`; call it only once the caller is authenticated and allowed to send it."""
        return self.decode(await read_bytes(request), struct)

    def decode(self, raw: bytes, struct: type[S]) -> S:
        plan = self._plan(struct)
        try:
            body: S = plan.decoder.decode(raw)
        except msgspec.DecodeError:  # ValidationError included
            body = self._explain(raw, struct, plan)
        for field in plan.checked:
            value = getattr(body, field.name)
            self._check(field, value)
            if field.rule.trim and isinstance(value, str):
                setattr(body, field.name, value.strip())
        return body

    def _plan(self, struct: type[Body]) -> _Plan:
        plan = self._plans.get(struct)
        if plan is None:
            fields = plan_fields(struct)
            for field in fields:
                if field.rule.vocabulary is not None and field.rule.vocabulary not in self._vocabularies:
                    raise TypeError(f"{struct.__name__}.{field.name}: no vocabulary {field.rule.vocabulary!r}")
            checked = tuple(f for f in fields if f.rule.vocabulary or f.rule.test or f.rule.trim)
            plan = _Plan(msgspec.json.Decoder(struct), fields, frozenset(f.name for f in fields), checked)
            self._plans[struct] = plan
        return plan

    def _explain(self, raw: bytes, struct: type[S], plan: _Plan) -> S:
        """The first fault of a body msgspec refused, in the order of the module docstring; or the body,
        when orjson reads it as valid (a key sent twice, the last value good)."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProxyError.invalid_json() from None
        if not isinstance(data, dict):
            raise ProxyError.invalid_json("The request body must be a JSON object.")
        for name in data:
            if name not in plan.names:
                raise ProxyError.invalid_value(name[:64], f"Unknown field '{name[:64]}'.")
        for field in plan.fields:
            if field.required and (field.name not in data or (struct.NULL_IS_MISSING and data[field.name] is None)):
                raise ProxyError.missing_field(field.name)
            if field.name not in data:
                continue
            try:
                value = msgspec.convert(data[field.name], field.type)
            except msgspec.ValidationError:
                raise self._refusal(field) from None
            self._check(field, value)
        try:
            return msgspec.convert(data, struct)
        except msgspec.ValidationError:  # pragma: no cover - every field passed on its own just above
            raise ProxyError.invalid_value(None, "The request body is not valid.") from None

    def _check(self, field: _Field, value: Any) -> None:
        if value is None or value is msgspec.UNSET:
            return  # the type allowed it (null where nullable, absent where optional)
        vocabulary = field.rule.vocabulary
        if vocabulary is not None and value not in self._vocabularies[vocabulary]:
            raise self._refusal(field)
        if field.rule.test is not None and not field.rule.test(value):
            raise self._refusal(field)

    def _refusal(self, field: _Field) -> ProxyError:
        return ProxyError.invalid_value(field.name, field.rule.message.format(name=field.name, **self._listed))
