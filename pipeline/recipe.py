"""Recipes: load the YAML keeping line marks, validate against the schema, apply defaults, freeze.

Nothing past `load()` sees a raw dict: stages get typed, immutable specs.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from pipeline import userfiles
from pipeline.errors import RecipeError
from pipeline.stages import ORDER, REGISTRY
from pipeline.stages.serialize import InputProfile
from pipeline.stages.stage import frozen
from pipeline.units import size_value

KeyPath = tuple[str | int, ...]

MAX_FILE_BYTES = 1 << 20  # 1 MiB: a recipe is a few KiB; anything this big is the wrong file, or hostile
MAX_DEPTH = 64  # lists and mappings nested in each other; a recipe needs about 8
MAX_NODES = 10_000  # values (scalars, lists, mappings); a recipe has about 50. Bounds the parse to ~0.1 s


# ---------------------------------------------------------------- frozen types


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float


@dataclass(frozen=True)
class ValidateSpec:
    reference: str = "onnxruntime"
    atol: float = 1e-3
    rtol: float = 1e-3
    outputs: Mapping[str, Tolerance] = field(default_factory=lambda: MappingProxyType({}))
    shapes: tuple[str, ...] = ("opt",)
    seed: int = 0

    def tolerance(self, output: str) -> Tolerance:
        return self.outputs.get(output, Tolerance(self.atol, self.rtol))


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str
    name: str
    version: str
    model_path: Path
    model_sha256: str | None
    backend: str
    targets: tuple[str, ...]
    stages: Mapping[str, Any]  # stage name -> spec, in recipe order
    validate: ValidateSpec | None
    marks: Mapping[KeyPath, tuple[int, int]] = field(repr=False, compare=False)
    damaged: frozenset[str] = field(default=frozenset(), repr=False, compare=False)  # see _salvage
    # Where each of `targets` stands in the recipe's own list (salvage drops bad and repeated entries); () = in order
    target_indices: tuple[int, ...] = field(default=(), repr=False, compare=False)
    # Where each of `stages` stands in the recipe's list, when salvage dropped a malformed item; {} = in order
    stage_indices: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}), repr=False, compare=False)

    def spec(self, stage: str) -> Any:
        """The spec of a stage, or the defaults when the recipe leaves an optional stage out."""
        if stage in self.stages:
            return self.stages[stage]
        return REGISTRY[stage].spec()

    def where(self, path: KeyPath) -> str:
        """'recipes/x.yaml:14:7' for the closest marked key path."""
        return _position(self.path, self.marks, path)

    def problem(self, path: KeyPath, message: str) -> str:
        return f"{self.where(path)}: {dotted(path)}: {message}"

    def io_problems(self, inputs: Mapping[str, list], outputs: Mapping[str, list]) -> list[str]:
        """What the recipe says about the model's inputs and outputs that the model's declared ones contradict."""
        return check_model_io(self, inputs, outputs)

    def target_index(self, position: int) -> int:
        """The index in the recipe's targets list of `targets[position]` (they differ past a damaged entry)."""
        return self.target_indices[position] if self.target_indices else position

    def stage_path(self, stage: str, *rest: str | int) -> KeyPath:
        index = list(self.stages).index(stage) if stage in self.stages else 0
        index = self.stage_indices.get(stage, index)
        return ("stages", index, stage, *rest)


# ---------------------------------------------------------------- loading


def load(path: str | Path, schema_checked: bool = False) -> Recipe:
    """Read, validate (every problem at once) and freeze a recipe. Raises RecipeError. `schema_checked`: these
    very bytes passed the JSON Schema check before (plan.remembered_plan knows), so it is not run again.
    A recipe with problems is still checked past them where the parts it needs are intact (stage order, profiles);
    the error then carries the recipe frozen with the damaged parts left at their defaults (`Recipe.damaged`), so
    later checks (targets, model) can add theirs."""
    path = Path(path)
    data, marks, raw, problems, bad = _checked(path, None if schema_checked else schema(), "recipe")
    data, damaged = _salvage(data, bad)
    semantic = _order_problems(path, data, marks) if "stage-list" not in damaged else []
    recipe = _freeze(path, raw, data, marks, frozenset(damaged))
    intact = [name for name in recipe.stages if f"stage:{name}" not in damaged]  # a damaged one is at defaults
    semantic += (_profile_problems(recipe) if "serialize" in intact else []) + \
        [problem for name in intact if REGISTRY[name].check for problem in REGISTRY[name].check(recipe)]
    if problems or semantic:  # 'semantic': the stages load, but do not agree (the model is then checked less)
        raise RecipeError(problems + semantic,
                          recipe=dataclasses.replace(recipe, damaged=recipe.damaged | ({"semantic"} if semantic else set())))
    return recipe


def load_checked(path: Path, schema_: dict | None, what: str = "recipe") -> tuple[dict, dict[KeyPath, tuple[int, int]],
                                                                                bytes]:
    """Read a YAML file keeping line marks and check it against a JSON Schema: (data, marks, raw bytes), or a
    RecipeError with every problem as 'FILE:LINE:COL: key.path: message'. `what` names the file when it cannot
    be read; an empty file is an empty mapping when the schema requires no key. No schema: no check."""
    data, marks, raw, problems, _ = _checked(path, schema_, what)
    if problems:
        raise RecipeError(problems)
    return data, marks, raw


def _checked(path: Path, schema_: dict | None, what: str) -> tuple[dict, dict[KeyPath, tuple[int, int]], bytes,
                                                                   list[str], list[KeyPath]]:
    """load_checked's work without raising for duplicate keys and schema problems: (data, marks, raw, problems,
    the key paths of the problems)."""
    node, data, raw = parse_yaml(path, what)
    marks: dict[KeyPath, tuple[int, int]] = {}
    duplicates = list(_walk(node, (), marks))
    problems = [f"{path}:{line}:{col}: {dotted(p)}: duplicate key" for p, (line, col) in duplicates]
    schema_ = schema_ or {}
    data = {} if data is None and not schema_.get("required") else data
    if not isinstance(data, dict):
        keys = ", ".join(schema_.get("required") or schema_.get("properties", {}))
        raise RecipeError([f"{path}:1:1: (top): expected a mapping with {keys}"])
    found = _schema_problems(path, data, marks, schema_) if schema_ else []
    return data, marks, raw, problems + [text for _, text in found], [p for p, _ in duplicates + found]


def _salvage(data: dict, bad: list[KeyPath]) -> tuple[dict, set[str]]:
    """The recipe's data with every part a problem is in replaced by something loadable, and the names of those
    parts ('name', 'version', 'backend', 'model', 'targets', 'stages', 'stage-list', 'validate'): later checks
    skip what depends on a damaged part. 'stages': some stage is damaged: 'stage:NAME' when a stage's settings
    are wrong (that stage alone is left at its defaults, the others keep theirs); 'stage-list' when the list
    itself is (a malformed item is left out; no order check either). `load` adds 'semantic' when the stages
    load but do not agree (order, profile ranks): the model's inputs and outputs are then not checked."""
    data, damaged = dict(data), set()
    for key_path in bad:
        top = key_path[0] if key_path else "stages"
        if key_path[:2] == ("model", "sha256"):
            data["model"] = {k: v for k, v in data["model"].items() if k != "sha256"}
            continue
        damaged.add(str(top))
        if top == "stages" and len(key_path) > 2 and key_path[2] in REGISTRY:
            damaged.add(f"stage:{key_path[2]}")
        elif top == "stages":
            damaged.add("stage-list")
    placeholders = {"name": "?", "version": "0.0.0", "backend": "auto", "model": {"path": "."}}
    data.update({key: value for key, value in placeholders.items() if key in damaged})
    data.pop("validate", None) if "validate" in damaged else None
    if "targets" in damaged:
        targets = data.get("targets") if isinstance(data.get("targets"), list) else []
        kept: dict[str, int] = {}  # name -> its first index in the recipe's list
        for index, target in enumerate(targets):
            if isinstance(target, str) and _TARGET.search(target):
                kept.setdefault(target, index)
        data["targets"] = list(kept)
        data[_TARGET_INDICES] = tuple(kept.values())
    if "stages" in damaged:
        items = data.get("stages") if isinstance(data.get("stages"), list) else []
        stages: dict[str, tuple[int, Any]] = {}  # name -> (its index in the recipe's list, its settings)
        for index, item in enumerate(items):
            if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in REGISTRY:
                (name, body), = item.items()
                stages.setdefault(name, (index, {} if f"stage:{name}" in damaged else body))
        data["stages"] = [{name: body} for name, (_, body) in stages.items()]
        data[_STAGE_INDICES] = {name: index for name, (index, _) in stages.items()}
    return data, damaged


_TARGET = re.compile(r"^(local|sm[0-9]{2,3})\Z")  # the schema's targets pattern
_STAGE_INDICES = "<stage indices>"  # the same for the kept stages
_TARGET_INDICES = "<target indices>"  # _salvage -> _freeze: where the kept targets stood (not a recipe key)


def parse_yaml(path: Path, what: str = "recipe") -> tuple[yaml.Node | None, Any, bytes]:
    """(node, data, raw bytes) of a YAML file, or a RecipeError with the one problem. Hostile input is refused in
    bounded time and memory: a file that is not regular or over MAX_FILE_BYTES is not parsed; an anchor, an alias,
    nesting deeper than MAX_DEPTH or more than MAX_NODES values stop the parse where they appear."""
    raw = _read(path, what)
    text = raw.decode("utf-8", errors="replace")
    try:
        node, data = _compose(text)
    except _Refused as error:
        mark = error.mark
        raise RecipeError([f"{path}:{mark.line + 1}:{mark.column + 1}: {dotted(error.key_path)}: {error}"]) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise RecipeError([f"{where}: invalid YAML: {error.problem or error.context}"]) from None
    except yaml.reader.ReaderError as error:  # a character YAML does not allow
        line, col = text.count("\n", 0, error.position) + 1, error.position - text.rfind("\n", 0, error.position)
        raise RecipeError([f"{path}:{line}:{col}: invalid YAML: unacceptable character #x{error.character:04x}: "
                           f"{error.reason}"]) from None
    except yaml.YAMLError as error:
        raise RecipeError([f"{path}: invalid YAML: {' '.join(str(error).split())}"]) from None
    return node, data, raw


def _read(path: Path, what: str) -> bytes:
    """The file's bytes: a regular file of at most MAX_FILE_BYTES (a FIFO or /dev/zero is never read on)."""
    try:
        raw = userfiles.read_regular(path, MAX_FILE_BYTES)
    except OSError as error:
        raise RecipeError([f"{path}: cannot read {what}: {error.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        size = path.stat().st_size
        raise RecipeError([f"{path}: expected a {what} of at most 1 MiB ({MAX_FILE_BYTES} bytes), got {size} bytes; "
                           f"a {what} is a few KiB: is this the right file?"])
    return raw


class _Refused(Exception):
    """A construct recipes never need, found while composing: where, at which key path, and why."""

    def __init__(self, mark: yaml.Mark, key_path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.mark, self.key_path = mark, key_path


class _GuardedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that stops at the first anchor, alias, collection nested deeper than MAX_DEPTH, or value past
    MAX_NODES, before composing it: an alias bomb is never expanded, deep nesting never reaches the recursive
    composer, and the pure-Python parser stops within a fraction of a second."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.key_path: list[str | int | None] = []  # None: composing a mapping's key (or the top)
        self.nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        part = index  # an item's index; None for a mapping's key (or the top)
        if isinstance(index, yaml.Node):  # a mapping's value: `index` is its key
            part = index.value if isinstance(index, yaml.ScalarNode) else "?"
        self.key_path.append(part)
        try:
            self._check(self.peek_event())
            return super().compose_node(parent, index)
        finally:
            self.key_path.pop()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Every plain key is the text written: tensors are often named '7', and `{7: ...}` names one (a
        number there would be an int that no name matches); a position still finds it, as marks use the text."""
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep)

    def _check(self, event: yaml.Event) -> None:
        where = tuple(part for part in self.key_path if part is not None)
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(event.start_mark, where, f"expected a value, got an alias '*{event.anchor}'; {_NO_ANCHORS}")
        if event.anchor is not None:
            raise _Refused(event.start_mark, where, f"expected a value, got an anchor '&{event.anchor}'; {_NO_ANCHORS}")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(event.start_mark, where, f"expected at most {MAX_NODES} values in a file, got more; "
                                                    "a recipe has about 50")
        if isinstance(event, yaml.CollectionStartEvent) and len(self.key_path) > MAX_DEPTH:
            raise _Refused(event.start_mark, where, f"expected lists and mappings nested at most {MAX_DEPTH} deep, "
                                                    "got deeper; a recipe needs fewer than 10 levels")


_NO_ANCHORS = "recipes do not use YAML anchors and aliases: write the value out"


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """yaml.compose and yaml.safe_load in one parse, guarded (_GuardedLoader): (node, data)."""
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()


def _walk(node: yaml.Node | None, path: KeyPath, marks: dict) -> Iterator[tuple[KeyPath, tuple[int, int]]]:
    """Record (line, col) of every value; yield duplicate keys."""
    if node is None:
        return
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            child = (*path, key.value)
            key_mark = (key.start_mark.line + 1, key.start_mark.column + 1)
            if key.value in seen:
                yield child, key_mark
            seen.add(key.value)
            yield from _walk(value, child, marks)
            marks[(*child, "<key>")] = key_mark
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _walk(item, (*path, index), marks)


def dotted(path: KeyPath) -> str:
    """('stages', 2, 'memory-pool', 'workspace') -> 'stages[2].memory-pool.workspace'."""
    text = ""
    for part in path:
        part = part if isinstance(part, int) or str(part).isprintable() else repr(part)  # a key with a newline ...
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top)"


def _position(path: Path, marks: Mapping, key_path: KeyPath, at_key: bool = False) -> str:
    probe = (*key_path, "<key>") if at_key else key_path
    while probe not in marks and probe:
        probe = probe[:-1]
    line, col = marks.get(probe, (1, 1))
    return f"{path}:{line}:{col}"


# ---------------------------------------------------------------- schema


def schema_text() -> str:
    return resources.files("pipeline").joinpath("recipe.schema.json").read_text()


def schema() -> dict:
    return json.loads(schema_text())


def _schema_problems(path: Path, data: dict, marks: Mapping, schema_: dict) -> list[tuple[KeyPath, str]]:
    """Every schema problem as (key path, 'FILE:LINE:COL: key.path: message'), sorted by place."""
    validator = _validator_class()(schema_)
    found: dict[str, tuple[tuple[int, int], KeyPath]] = {}
    for error in validator.iter_errors(data):
        for key_path, message, at_key in _explain(error):
            where = _position(path, marks, key_path, at_key)
            line, col = (int(x) for x in where.rsplit(":", 2)[1:])
            found.setdefault(f"{where}: {dotted(key_path)}: {message}", ((line, col), key_path))
    return [(key_path, text) for text, (_, key_path) in sorted(found.items(), key=lambda item: (item[1][0], item[0]))]


@functools.lru_cache(maxsize=1)
def _validator_class() -> Any:
    """Draft 2020-12 with `maxBytes` (a size's bound, in bytes), `pattern` with JSON Schema's (ECMA-262's) `$`,
    a uniqueItems that takes linear time (the stock one compares every pair when items do not sort, minutes for a
    few thousand), and integers that are ints: JSON Schema counts 1.0 as one, but a float reaches the freezers."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    ints = base.TYPE_CHECKER.redefine("integer", lambda checker, value: type(value) is int)
    return jsonschema.validators.extend(base, {"maxBytes": _max_bytes, "pattern": _pattern,
                                               "uniqueItems": _unique_items}, type_checker=ints)


def _pattern(validator: Any, pattern: str, instance: Any, schema_: dict) -> Iterator[Any]:
    from jsonschema import ValidationError

    if isinstance(instance, str) and not _python_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _python_regex(pattern: str) -> re.Pattern:
    """A JSON Schema pattern compiled for Python: its `$` is the end of the string, as in ECMA-262 (Python's `$`
    also matches before a final newline, so '^[a-z]+$' would accept 'evil\\n'). Escapes and classes kept."""
    out, index, in_class = [], 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            out.append(pattern[index:index + 2])
            index += 2
            continue
        in_class = (in_class or char == "[") and not (in_class and char == "]")
        out.append(r"\Z" if char == "$" and not in_class else char)
        index += 1
    return re.compile("".join(out))


def _max_bytes(validator: Any, bound: int, instance: Any, schema_: dict) -> Iterator[Any]:
    from jsonschema import ValidationError

    nbytes = instance if type(instance) is int else size_value(instance) if isinstance(instance, str) else None
    if nbytes is None:
        return  # not a size: `type` and `pattern` say so (inf, for 400 digits, is refused here too)
    if nbytes > bound:
        yield ValidationError(f"{instance!r} is more than {bound} bytes")


def _unique_items(validator: Any, unique: bool, instance: Any, schema_: dict) -> Iterator[Any]:
    from jsonschema import ValidationError

    if unique and isinstance(instance, list) and len({_hashable(item) for item in instance}) < len(instance):
        yield ValidationError(f"{_show(instance)} has non-unique elements")


def _hashable(value: Any) -> Any:
    """A hashable stand-in equal for values JSON Schema calls equal (1 == 1.0, but true != 1)."""
    if isinstance(value, dict):
        return ("object", frozenset((key, _hashable(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_hashable(item) for item in value))
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    try:
        hash(value)
    except TypeError:  # e.g. a set from YAML's !!set: compared by identity, which never hides a problem
        return ("other", id(value))
    return ("number" if isinstance(value, (int, float)) else type(value).__name__, value)


def _explain(error: Any) -> list[tuple[KeyPath, str, bool]]:
    """Turn one jsonschema error into (key path, message, point-at-key) triples users can act on."""
    key_path: KeyPath = tuple(error.absolute_path)
    schema_: dict = error.schema if isinstance(error.schema, dict) else {}
    kind, value = error.validator, error.instance
    if kind == "additionalProperties":
        known = sorted(schema_.get("properties", {}))
        extra = [k for k in value if k not in schema_.get("properties", {})]
        return [((*key_path, str(k)), _unknown_key(str(k), known), True) for k in extra]  # `1:` is a key too
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return [((*key_path, k), "required key is missing", False) for k in missing]
    if "x-expected" in schema_ and kind in {"pattern", "type", "minimum", "maximum", "minProperties", "maxProperties"}:
        return [(key_path, f"expected {schema_['x-expected']}, got {_show(value)}", False)]
    messages = {
        "type": lambda: f"expected {_types(error.validator_value)}, got {_show(value)}",
        "enum": lambda: f"expected one of {', '.join(map(repr, error.validator_value))}, got {_show(value)}",
        "minimum": lambda: f"expected a number >= {error.validator_value}, got {_show(value)}",
        "maximum": lambda: f"expected a number <= {error.validator_value}, got {_show(value)}",
        "maxBytes": lambda: f"expected a size of at most {error.validator_value // 1024**4}TiB ({error.validator_value} "
                            f"bytes), got {_show(value)}",
        "minItems": lambda: f"expected at least {error.validator_value} item(s), got {len(value)}",
        "uniqueItems": lambda: f"expected unique items, got {_show(value)}",
        "minLength": lambda: "expected a non-empty string",
        "minProperties": lambda: f"expected at least {error.validator_value} key(s)",
    }
    return [(key_path, messages.get(kind, lambda: error.message)(), False)]


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key{hint}; expected one of {', '.join(known)}"


def _types(names: str | list[str]) -> str:
    words = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
             "number": "a number", "boolean": "true or false", "null": "nothing"}
    names = [names] if isinstance(names, str) else names
    return " or ".join(words.get(n, n) for n in names)


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- semantic checks


def _order_problems(path: Path, data: dict, marks: Mapping) -> list[str]:
    """The five stages, each once, in pipeline order; graph-cleanup may be left out."""
    names = [next(iter(item)) for item in data["stages"]]
    problems = []
    for index, name in enumerate(names):
        if names.index(name) != index:
            where = _position(path, marks, ("stages", index), False)
            problems.append(f"{where}: stages[{index}]: stage '{name}' appears twice; each stage runs once")
    if problems:
        return problems
    expected = [s for s in ORDER if s in names or not REGISTRY[s].optional]
    missing = [s for s in expected if s not in names]
    if missing:
        where = _position(path, marks, ("stages",), True)
        return [f"{where}: stages: missing stage(s) {', '.join(missing)}; order is {_order_text()}"]
    for index, (got, want) in enumerate(zip(names, expected)):
        if got != want:
            where = _position(path, marks, ("stages", index), False)
            return [f"{where}: stages[{index}]: expected stage '{want}' here, got '{got}'; order is {_order_text()}"]
    return []


def _order_text() -> str:
    return " -> ".join(f"{s} (optional)" if REGISTRY[s].optional else s for s in ORDER)


def _profile_problems(recipe: Recipe) -> list[str]:
    problems = []
    for p, profile in enumerate(recipe.spec("serialize").profiles):
        for item in profile:
            at = recipe.stage_path("serialize", "profiles", p, item.name)
            if not len(item.min) == len(item.opt) == len(item.max):
                problems.append(recipe.problem(at, f"min, opt and max must have the same rank, got "
                                                   f"{len(item.min)}, {len(item.opt)}, {len(item.max)}"))
            elif not all(a <= b <= c for a, b, c in zip(item.min, item.opt, item.max)):
                problems.append(recipe.problem(at, f"expected min <= opt <= max in every dimension, got "
                                                   f"min {list(item.min)}, opt {list(item.opt)}, max {list(item.max)}"))
    return problems


def check_model_io(recipe: Recipe, inputs: Mapping[str, list], outputs: Mapping[str, list]) -> list[str]:
    """Problems where the recipe names inputs/outputs the model does not have, or shapes of the wrong rank.

    `inputs`/`outputs` map names to shapes as the model declares them (str for symbolic dims).
    """
    problems = []

    def unknown(at: KeyPath, name: str, known: Mapping[str, list], what: str) -> None:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(recipe.problem(at, f"model has no {what} '{name}'{hint}; its {what}s are "
                                           f"{', '.join(known) or 'none'}"))

    cleanup = recipe.spec("graph-cleanup")
    # The shapes the network will see: frozen inputs are gone, overridden ones are static.
    shapes = {name: list(cleanup.override_shapes.get(name, shape)) for name, shape in inputs.items()
              if name not in cleanup.freeze_inputs}
    covered = set()
    for p, profile in enumerate(recipe.spec("serialize").profiles):
        for item in profile:
            at = recipe.stage_path("serialize", "profiles", p, item.name)
            covered.add(item.name)
            if item.name in cleanup.freeze_inputs:
                problems.append(recipe.problem(at, f"input '{item.name}' is frozen by graph-cleanup.freeze_inputs; "
                                                   "it needs no profile"))
            elif item.name not in inputs:
                unknown(at, item.name, inputs, "input")
            elif len(shapes[item.name]) != len(item.min):
                problems.append(recipe.problem(at, f"input '{item.name}' has rank {len(shapes[item.name])} "
                                                   f"{shapes[item.name]}, profile shapes have rank {len(item.min)}"))
            else:
                problems += _static_mismatch(recipe, at, item, shapes[item.name])
    dynamic = [n for n, shape in shapes.items() if n not in covered and not all(isinstance(d, int) for d in shape)]
    if dynamic and covered <= set(inputs):  # an unknown profile name is most likely the missing one, misspelt
        problems.append(recipe.problem(recipe.stage_path("serialize", "profiles"),
                                       f"input(s) {', '.join(f'{n} {shapes[n]}' for n in dynamic)} have dynamic "
                                       "dimensions but no optimization profile; add "
                                       "'- NAME: {min: [...], opt: [...], max: [...]}'"))
    for key in ("freeze_inputs", "override_shapes"):
        for name in getattr(cleanup, key):
            if name not in inputs:
                unknown(recipe.stage_path("graph-cleanup", key, name), name, inputs, "input")
    if recipe.validate:
        for name in recipe.validate.outputs:
            if name not in outputs:
                unknown(("validate", "outputs", name), name, outputs, "output")
    return problems


def _static_mismatch(recipe: Recipe, at: KeyPath, item: InputProfile, shape: list) -> list[str]:
    """A profile may only vary the dimensions the model (after override_shapes) leaves dynamic."""
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and not item.min[axis] == item.opt[axis] == item.max[axis] == dim:
            dynamic = [d for d in shape if not isinstance(d, int)]
            kind = f"shape {shape}, dynamic in {', '.join(map(repr, dynamic))} only" if dynamic else \
                f"static shape {shape}"
            return [recipe.problem(at, f"input '{item.name}' has {kind}: dimension {axis} is {dim}, "
                                       f"but the profile gives min {list(item.min)}, opt {list(item.opt)}, "
                                       f"max {list(item.max)}")]
    return []


# ---------------------------------------------------------------- freezing


def _freeze(path: Path, raw: bytes, data: dict, marks: dict, damaged: frozenset[str] = frozenset()) -> Recipe:
    base = path.resolve().parent
    stages = {}
    for item in data["stages"]:
        (name, body), = item.items()
        stages[name] = REGISTRY[name].freeze(body or {}, base)
    validate = None
    if "validate" in data:
        body = dict(data["validate"])
        outputs = body.pop("outputs", {})
        atol, rtol = body.get("atol", 1e-3), body.get("rtol", 1e-3)
        validate = ValidateSpec(
            **{k: frozen(v) for k, v in body.items()},
            outputs=MappingProxyType({n: Tolerance(t.get("atol", atol), t.get("rtol", rtol)) for n, t in outputs.items()}),
        )
    model = data["model"]
    return Recipe(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        name=data["name"],
        version=data["version"],
        model_path=userfiles.absolute(base, model["path"]),
        model_sha256=model.get("sha256"),
        backend=data.get("backend", "auto"),
        targets=tuple(data["targets"]),
        target_indices=data.get(_TARGET_INDICES, ()),
        stage_indices=MappingProxyType(data.get(_STAGE_INDICES, {})),
        stages=MappingProxyType(stages),
        validate=validate,
        marks=MappingProxyType(marks),
        damaged=damaged,
    )
