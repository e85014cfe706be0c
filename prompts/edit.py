"""Per-category overrides edited in a prompt file's text, keeping the user's comments.

``set_category`` rewrites (or appends) only the ``categories: <category>:`` block of a prompt
file; everything else in the file (comments, order, quoting) is left byte for byte. The result
is validated before it is returned, so a caller that writes it never writes an invalid file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from fsiad.fewshot.errors import OptionError
from fsiad.prompts.loader import _FIELD, PromptError, check_text

__all__ = ["set_category"]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def _key(text: str) -> str:
    plain = _PLAIN_KEY.match(text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)


def _check_state(option: str, state: str) -> None:
    fields = _FIELD.findall(state)
    if fields != ["{}"]:
        raise OptionError(f"{option} {state!r}: a state needs exactly one '{{}}' where the object name goes "
                          f"(e.g. 'bent {{}}' or '{{}} with a scratch')")


def _leaf_end(node: yaml.Node) -> int:
    """Text index just after the last scalar / flow collection inside ``node``."""
    if isinstance(node, yaml.MappingNode) and node.value:
        return _leaf_end(node.value[-1][1])
    if isinstance(node, yaml.SequenceNode) and node.value and not node.flow_style:
        return _leaf_end(node.value[-1])
    return node.end_mark.index


def set_category(text: str, category: str, *, name: str | None = None, extra_normal: Sequence[str] = (),
                 extra_anomalous: Sequence[str] = (), label: str = "<prompts>") -> tuple[str, list[str]]:
    """Add or update the override of ``category`` in prompt-file ``text``.

    ``name`` replaces the class-name alias; ``extra_*`` states are appended to the category's
    ``extra_normal_states`` / ``extra_anomalous_states`` (a state the category already uses is
    skipped). Other keys of an existing override are kept.

    Returns:
        ``(new_text, changes)``: ``changes`` lists what was added (empty: nothing to do).

    Raises:
        OptionError: a state without exactly one ``{}``, a name with braces, an empty category.
        PromptError: ``text`` is invalid to begin with (the edit is refused), or the result is.
    """
    if not category.strip():
        raise OptionError("--category: give a category name (e.g. metal_nut)")
    if name is not None and (not name.strip() or "{" in name or "}" in name):
        raise OptionError(f"--name {name!r}: a non-empty object name without braces")
    for opt, states in (("--extra-normal", extra_normal), ("--extra-anomalous", extra_anomalous)):
        for s in states:
            _check_state(opt, s)
    errs, _ = check_text(text, label)
    if errs:
        raise PromptError(errs)
    data = yaml.safe_load(text)
    cats = data.get("categories") or {}
    current = dict(cats.get(category) or {})
    changes: list[str] = []
    if name is not None and current.get("name") != name:
        current["name"] = name
        changes.append(f"name: {name!r}")
    normal_now = list(current.get("normal_states", data["normal_states"])) + list(current.get("extra_normal_states", []))
    anom_now = list(current.get("anomalous_states", data["anomalous_states"])) + list(
        current.get("extra_anomalous_states", []))
    for key, states, now in (("extra_normal_states", extra_normal, normal_now),
                             ("extra_anomalous_states", extra_anomalous, anom_now)):
        for s in states:
            if s in now:
                continue
            current[key] = [*current.get(key, []), s]
            now.append(s)
            changes.append(f"{key} += {s!r}")
    if not changes:
        return text, []
    new_text = _splice(text, category, current)
    errs, _ = check_text(new_text, label)
    if errs:  # pragma: no cover - the inputs were checked above; a bug would show here
        raise PromptError(errs)
    return new_text, changes


def _block(category: str, values: dict, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    lines = [f"{pad}{_key(category)}:"]
    order = ["name", "extra_normal_states", "extra_anomalous_states", "normal_states", "anomalous_states", "templates"]
    for key in sorted(values, key=lambda k: order.index(k) if k in order else len(order)):
        lines.append(f"{inner}{key}: {json.dumps(values[key], ensure_ascii=False)}")
    return "\n".join(lines)


def _splice(text: str, category: str, values: dict) -> str:
    """``text`` with the ``category`` block replaced by / extended with ``values``."""
    root = yaml.compose(text)
    cats_node = None
    for k, v in root.value:
        if k.value == "categories":
            cats_node = v
    if cats_node is None or (isinstance(cats_node, yaml.ScalarNode) and not cats_node.value.strip()):
        body = "\n".join(["categories:", _block(category, values, 2)])
        if cats_node is not None:  # "categories:" present but empty: fill it in place
            start = [k for k, _ in root.value if k.value == "categories"][0].start_mark.index
            end = cats_node.end_mark.index
            return text[:start] + body + text[end:]
        return text.rstrip("\n") + "\n\n" + body + "\n"
    if not isinstance(cats_node, yaml.MappingNode) or cats_node.flow_style:
        # flow-style mapping ("categories: {...}"): rewrite that mapping as a block, in place
        data = yaml.safe_load(text).get("categories") or {}
        data = {**data, category: values}
        body = "\n".join(_block(str(c), dict(v), 2) for c, v in data.items())
        start, end = cats_node.start_mark.index, cats_node.end_mark.index
        return text[:start].rstrip(" ") + "\n" + body + text[end:]
    for k, v in cats_node.value:
        if k.value == category:
            indent = k.start_mark.column
            return text[: k.start_mark.index - indent] + _block(category, values, indent) + text[_leaf_end(v):]
    last_k, last_v = cats_node.value[-1]
    indent = last_k.start_mark.column
    end = _leaf_end(last_v)
    return text[:end] + "\n" + _block(category, values, indent) + text[end:]


def init_prompts(directory: str | Path, *, force: bool = False, category: str | None = None,
                 name: str | None = None, extra_normal: Sequence[str] = (),
                 extra_anomalous: Sequence[str] = ()) -> tuple[Path, str, list[str]]:
    """``fsiad prompts init``: write ``DIRECTORY/prompts.yaml`` (a copy of the default ensemble)
    and/or set one category's override in it (edited in place, validated before writing).

    Returns:
        ``(path, verb, changes)``: ``verb`` is ``wrote``, ``updated`` or ``unchanged``.
    """
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.fileio import atomic_write_text
    from fsiad.prompts.loader import default_prompts_path

    dst = Path(directory) / "prompts.yaml"
    if category is None and (name is not None or extra_normal or extra_anomalous):
        raise OptionError("--name / --extra-normal / --extra-anomalous need --category CATEGORY")
    exists = dst.exists()
    if exists and category is None and not force:
        raise OptionError(f"{dst}: already exists (use --force to overwrite, or --category to edit an override)")
    text = dst.read_text(encoding="utf-8") if exists and not force else default_prompts_path().read_text(encoding="utf-8")
    changes: list[str] = []
    if category is not None:
        text, changes = set_category(text, category, name=name, extra_normal=extra_normal,
                                     extra_anomalous=extra_anomalous, label=str(dst))
    if exists and not force and not changes:
        return dst, "unchanged", changes
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, text)
    return dst, "updated" if exists and not force else "wrote", changes
