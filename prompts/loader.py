"""Load, validate and expand WinCLIP prompt ensembles stored as YAML.

File layout (see ``prompts/default.yaml``): top-level lists ``normal_states``,
``anomalous_states``, ``templates`` and an optional ``categories`` mapping of per-category
overrides (``name``, ``extra_normal_states``, ``extra_anomalous_states``, ``normal_states``,
``anomalous_states``, ``templates``). Every state and template holds exactly one ``{}``.

An entry repeated within one list is a warning, not an error: it is kept (and so counted twice
in the prototype's mean), which reproduces published ensembles exactly (anomalib's WinCLIP
list repeats ``"a jpeg corrupted photo of the {}."``). ``check`` returns errors and warnings,
``PromptSet.duplicates`` holds the warnings of a loaded file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from fsiad.fewshot.errors import FsiadError

__all__ = [
    "PromptError", "PromptSet", "ClassPrompts", "default_prompts_path", "validate", "check", "check_text",
    "load_prompts",
]
log = logging.getLogger(__name__)

LIST_KEYS = ("normal_states", "anomalous_states", "templates")
CATEGORY_KEYS = ("name", "extra_normal_states", "extra_anomalous_states", *LIST_KEYS)
TOP_KEYS = (*LIST_KEYS, "categories")
_FIELD = re.compile(r"\{[^{}]*\}")


#: Prompt files are short YAML lists (the packaged ensemble is about 4 KB); anything far larger
#: is refused before it is parsed, so a huge or wrong file cannot take minutes or gigabytes.
MAX_PROMPT_FILE_BYTES = 1 << 20


class PromptError(FsiadError, ValueError):
    """A prompt file is invalid; ``errors`` holds the ``file:line: message`` strings."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def default_prompts_path() -> Path:
    """The packaged default ensemble ``prompts/default.yaml``."""
    return Path(__file__).with_name("default.yaml")


@dataclass(frozen=True)
class ClassPrompts:
    """Expanded prompts for one category.

    Attributes:
        class_name: words substituted for the object (alias applied).
        normal: ``len(normal_states) * len(templates)`` prompts.
        anomalous: ``len(anomalous_states) * len(templates)`` prompts.
    """

    class_name: str
    normal: list[str]
    anomalous: list[str]


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt ensemble (global lists plus per-category overrides)."""

    normal_states: list[str]
    anomalous_states: list[str]
    templates: list[str]
    categories: dict[str, dict] = field(default_factory=dict)
    source: str = "<memory>"
    #: ``file:line: message`` warnings of repeated entries (kept); empty for a clean file
    duplicates: list[str] = field(default_factory=list)

    def class_name(self, category: str) -> str:
        """Alias of ``category`` (``name`` override) or the key with ``_`` replaced by spaces."""
        return str(self.categories.get(category, {}).get("name") or category.replace("_", " "))

    def lists(self, category: str) -> tuple[list[str], list[str], list[str]]:
        """``(normal_states, anomalous_states, templates)`` of ``category``, overrides applied."""
        over = self.categories.get(category, {})
        normal = list(over.get("normal_states", self.normal_states)) + list(over.get("extra_normal_states", []))
        anomalous = list(over.get("anomalous_states", self.anomalous_states)) + list(
            over.get("extra_anomalous_states", []))
        return normal, anomalous, list(over.get("templates", self.templates))

    def expand(self, category: str) -> ClassPrompts:
        """All prompts of ``category``: ``template.format(state.format(name))`` state-major."""
        name = self.class_name(category)
        normal, anomalous, templates = self.lists(category)
        return ClassPrompts(name, compose(normal, templates, name), compose(anomalous, templates, name))


def compose(states: list[str], templates: list[str], name: str) -> list[str]:
    """Prompts ``template.format(state.format(name))``, state-major (row ``i * len(templates) + j``)."""
    return [t.replace("{}", s.replace("{}", name), 1) for s in states for t in templates]


# -- validation ----------------------------------------------------------------------------
def _check_list(node: yaml.Node, key: str, where: str, errs: list[str], warns: list[str], loc) -> None:
    if not isinstance(node, yaml.SequenceNode):
        errs.append(f"{loc(node)}: '{key}'{where} must be a list of strings")
        return
    if not node.value:
        errs.append(f"{loc(node)}: '{key}'{where} is an empty list")
        return
    seen: dict[str, tuple[int, int]] = {}
    for pos, item in enumerate(node.value, start=1):
        if not isinstance(item, yaml.ScalarNode) or item.tag != "tag:yaml.org,2002:str":
            errs.append(f"{loc(item)}: '{key}'{where} entries must be strings")
            continue
        text = item.value
        fields = _FIELD.findall(text)
        if "{}" not in fields:
            errs.append(f"{loc(item)}: {text!r} in '{key}'{where} has no '{{}}' placeholder")
        elif len(fields) > 1:
            errs.append(f"{loc(item)}: {text!r} in '{key}'{where} has {len(fields)} placeholders (exactly one '{{}}' allowed)")
        if text in seen:
            first, line = seen[text]
            warns.append(f"{loc(item)}: {text!r} (entry {pos} of '{key}'{where}) repeats entry {first} "
                         f"(line {line}); kept: its prompts count twice in the mean")
        else:
            seen[text] = (pos, item.start_mark.line + 1)


def _check_mapping(node: yaml.MappingNode, allowed: tuple[str, ...], where: str, errs: list[str], loc) -> dict:
    out: dict[str, yaml.Node] = {}
    for knode, vnode in node.value:
        key = knode.value if isinstance(knode, yaml.ScalarNode) else str(knode)
        if key not in allowed:
            errs.append(f"{loc(knode)}: unknown key '{key}'{where}; allowed: {', '.join(allowed)}")
        elif key in out:
            errs.append(f"{loc(knode)}: key '{key}'{where} given twice")
        else:
            out[key] = vnode
    return out


def check_text(text: str, label: str) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of prompt-file text, each ``label:line: message``, sorted by line."""
    errs: list[str] = []
    warns: list[str] = []
    errs += _validate_text(text, label, warns)

    def line(e: str) -> int:
        return int(e[len(label) + 1 :].split(":", 1)[0])

    return sorted(errs, key=line), sorted(warns, key=line)


def _validate_text(text: str, label: str, warns: list[str]) -> list[str]:
    def loc(node: yaml.Node | None) -> str:
        return f"{label}:{node.start_mark.line + 1}" if node is not None else f"{label}:1"

    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        return [f"{label}:{line}: YAML syntax error: {getattr(exc, 'problem', None) or exc}"]
    if root is None:
        return [f"{label}:1: empty prompt file (needs {', '.join(LIST_KEYS)})"]
    if not isinstance(root, yaml.MappingNode):
        return [f"{loc(root)}: top level must be a mapping with keys {', '.join(TOP_KEYS)}"]
    errs: list[str] = []
    top = _check_mapping(root, TOP_KEYS, "", errs, loc)
    for key in LIST_KEYS:
        if key not in top:
            errs.append(f"{label}:1: missing required key '{key}'")
        else:
            _check_list(top[key], key, "", errs, warns, loc)
    cats = top.get("categories")
    if cats is not None and not (isinstance(cats, yaml.ScalarNode) and cats.value in ("", "null", "~")):
        if not isinstance(cats, yaml.MappingNode):
            errs.append(f"{loc(cats)}: 'categories' must be a mapping of category -> overrides")
        else:
            for knode, vnode in cats.value:
                where = f" (category '{knode.value}')"
                if not isinstance(vnode, yaml.MappingNode):
                    errs.append(f"{loc(vnode)}: overrides{where} must be a mapping")
                    continue
                sub = _check_mapping(vnode, CATEGORY_KEYS, where, errs, loc)
                for key, node in sub.items():
                    if key == "name":
                        if not isinstance(node, yaml.ScalarNode) or not node.value.strip():
                            errs.append(f"{loc(node)}: 'name'{where} must be a non-empty string")
                        elif "{" in node.value or "}" in node.value:
                            errs.append(f"{loc(node)}: 'name'{where} must not contain braces")
                    else:
                        _check_list(node, key, where, errs, warns, loc)
    return errs


def check(path: str | Path) -> tuple[list[str], list[str]]:
    """Check a prompt file: ``(errors, warnings)`` as ``"file:line: message"`` strings.

    Warnings (repeated entries, kept) do not make the file invalid.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROMPT_FILE_BYTES:
            return [f"{path}:1: {size:,} bytes is not a prompt file (at most {MAX_PROMPT_FILE_BYTES:,} bytes; "
                    "prompt files are short YAML lists)"], []
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}:1: cannot read prompt file: {exc}"], []
    return check_text(text, str(path))


def validate(path: str | Path) -> list[str]:
    """Check a prompt file; returns its errors as ``"file:line: message"`` (empty list = valid).

    Warnings (see ``check``) are not included.
    """
    return check(path)[0]


def load_prompts(path: str | Path | None = None) -> PromptSet:
    """Load and validate a prompt file (``None`` = the packaged default).

    Raises:
        PromptError: the file is invalid (all problems listed with line numbers).

    Repeated entries are kept; they are logged as one warning (logger ``fsiad.prompts.loader``)
    and listed in ``PromptSet.duplicates``.
    """
    path = Path(path) if path is not None else default_prompts_path()
    errs, warns = check(path)
    if errs:
        raise PromptError(errs)
    if warns:
        log.warning("%s: %d repeated entr%s kept, each repeat counts again in the mean (fsiad prompts "
                    "validate lists them)", path, len(warns), "y" if len(warns) == 1 else "ies")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cats = {str(k): dict(v) for k, v in (data.get("categories") or {}).items()}
    return PromptSet(list(data["normal_states"]), list(data["anomalous_states"]), list(data["templates"]),
                     cats, str(path), warns)


def format_expanded(ps: PromptSet, category: str) -> str:
    """``fsiad prompts show``: the expanded prompts of ``category`` with counts and repeats."""
    out: list[str] = []
    cp = ps.expand(category)
    out.append(f"# file: {ps.source}")
    out.append(f"# category: {category} -> class name {cp.class_name!r}")
    for label, items in (("normal", cp.normal), ("anomalous", cp.anomalous)):
        repeats = len(items) - len(set(items))
        out.append(f"## {label}: {len(items)} prompts" + (f" ({repeats} repeated)" if repeats else ""))
        for text in items:
            out.append(f"  {text}")
    out.append(f"# total: {len(cp.normal)} normal + {len(cp.anomalous)} anomalous = "
               f"{len(cp.normal) + len(cp.anomalous)} prompts")
    if ps.duplicates:
        out.append(f"# {len(ps.duplicates)} repeated entr{'y' if len(ps.duplicates) == 1 else 'ies'} kept "
                   "(each repeat counts again in the mean):")
        for w in ps.duplicates:
            out.append(f"#   {w}")
    return "\n".join(out)
