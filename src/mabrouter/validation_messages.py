"""Validation errors as the operator reads them: about the file they wrote (`arms[1].prior.alpha`), not
about the pydantic models behind it (`arms.1.prior.BetaPriorDoc.alpha`, "instance of ExperimentDoc")."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

# The models of the documents' one union (an arm's prior): pydantic puts the member's class name in the
# error location. Names, not the classes, so that schema.py can import this module.
UNION_MEMBERS = frozenset({"BetaPriorDoc", "NormalPriorDoc"})


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the field path as the file spells it, e.g.
    `arms[1].prior.alpha: Input should be a valid number`."""
    lines: list[str] = []
    for problem in error.errors():
        where = _field_path(problem["loc"]) or "(document)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see docs/experiments.md)"
        elif problem["type"] in ("model_type", "model_attributes_type", "dict_type"):
            # pydantic names the model class here ("instance of ExperimentDoc"): not what the operator wrote
            message = f"expected a mapping of fields (key: value), got {_kind_of(problem['input'])}"
        line = f"{where}: {message}"
        if line not in lines:  # each member of a union (a prior's two shapes) repeats the same problem
            lines.append(line)
    return "\n".join(lines)


def _field_path(loc: tuple[int | str, ...]) -> str:
    """`arms[1].prior.alpha` from pydantic's ('arms', 1, 'prior', 'BetaPriorDoc', 'alpha'): union members
    appear in the location as their class name, which the file does not contain."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_union_tag(part):
            path += f".{part}" if path else part
    return path


def _is_union_tag(part: str) -> bool:
    # the prior is the documents' one union of models; "[" marks pydantic's validator tags
    return part in UNION_MEMBERS or "[" in part


def _kind_of(value: Any) -> str:
    kinds = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "nothing" if value is None else kinds.get(type(value), type(value).__name__)
