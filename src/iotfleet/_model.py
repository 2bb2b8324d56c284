"""The base of iotfleet's typed models: frozen, keyword-only, unknown fields refused, errors as ConfigError.

It sits at the bottom layer (with :mod:`iotfleet.errors`) so that :mod:`iotfleet.topics` and
:mod:`iotfleet.config` alike raise :class:`~iotfleet.errors.ConfigError` naming the model, the field and
the problem, never a bare pydantic ``ValidationError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from iotfleet.errors import ConfigError

__all__ = ["FrozenModel", "validation_problems"]


def validation_problems(model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem of ``exc``: ``Model: field: what is wrong (got value)``, joined by ``; ``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            what = f"unknown field; known: {', '.join(model.model_fields)}"
        elif kind == "missing":
            what = "required"
        else:
            what = str(error["msg"]).removeprefix("Value error, ")
            if kind != "value_error":
                what += f" (got {error['input']!r})"
        problems.append(f"{model.__name__}: {where + ': ' if where else ''}{what}")
    return "; ".join(problems)


class FrozenModel(BaseModel):
    """Frozen, keyword-only, unknown fields refused; invalid values raise :class:`ConfigError`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(validation_problems(type(self), exc)) from exc

    # Tell pydantic this __init__ only wraps its own (as RootModel does): validation as a field of another
    # model then keeps pydantic's per-field errors instead of calling this and nesting a ConfigError.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        raise ConfigError(
            f"{type(self).__name__} is frozen: build a new one, e.g. .model_copy(update={{{name!r}: ...}})"
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, validated like a new model (pydantic's own copy skips validation)."""
        if not update:
            return super().model_copy(deep=deep)
        return self.model_validate({**self.model_dump(exclude_unset=True), **update})

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise ConfigError(validation_problems(cls, exc)) from exc

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, **kwargs)
        except ValidationError as exc:
            raise ConfigError(validation_problems(cls, exc)) from exc
