"""The ```python snippets of README.md, docs/*.md and docs/vendors/*.md: they parse, and what they use exists.

For each block (one test each, named ``file:line`` of its opening fence):

1. it parses (:mod:`ast`). Deliberate fragments are read by these rules, and only these:

   * ``...`` as a statement or a value, and a top-level ``await``, are Python as they are (an Ellipsis;
     ``ast.parse`` takes the ``await``); ``...`` after a ``,`` among a call's arguments stands for "the
     other arguments" and is read as ``**{}`` (it may follow keyword arguments);
   * a block whose last line opens a suite (``with DAG(...):``) is given the body ``...``;
   * a signature listing: a statement ``obj.method(params) -> Type`` is read as
     ``def method(params) -> Type: ...``, and its parameter names must be ``method``'s parameters on the
     class ``obj`` is an instance of (bound earlier in the block).

2. each call of a public class or function of the package (:func:`_public_names`: the modules of
   ``get_provider_info()``, ``options``, ``renditions``, ``credits``, ``forecast``; and whatever the block
   imports from the package), of a method of one (``RemovalOptions.create``, ``hook.remove_background``),
   of an operator's ``partial``/``expand``, passes only keyword arguments the callable accepts
   (:func:`accepted`: ``**kwargs`` followed down the class's ``__init__`` chain to ``BaseOperator``);
   ``**NAME`` of a ``dict(...)``/``{...}`` literal bound in the block counts as its keys. Literal values of
   the enum-like parameters in :data:`CHOICES` must be valid; so must the keys of literal mappings given
   for a typed model (:data:`MODEL_MAPPINGS`, ``vendor_options`` by vendor, each rendition and user
   preset: :class:`RenditionSpec`) and the renditions' ``preset`` names and ``format``.

3. each ``from airflow_provider_bgremoval... import X`` imports a name that exists and is not deprecated.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import tokenize
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import BaseOperator

from airflow_provider_bgremoval.credits import POOLING_CHOICES
from airflow_provider_bgremoval.get_provider_info import get_provider_info
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators import render
from airflow_provider_bgremoval.operators.bucket import ON_PENDING_CHOICES
from airflow_provider_bgremoval.operators.monitor import OBSERVED_AT_CHOICES, ON_LOW_CHOICES
from airflow_provider_bgremoval.operators.operations import VENDOR_OPTION_TYPES
from airflow_provider_bgremoval.operators.preflight import ON_INSUFFICIENT_CHOICES
from airflow_provider_bgremoval.options import OUTPUT_FORMATS
from airflow_provider_bgremoval.pipeline.accounts import DEFAULT_FAILOVER_ON, BreakerPolicy
from airflow_provider_bgremoval.pipeline.engine import ON_ERROR_CHOICES
from airflow_provider_bgremoval.renditions import PRESETS, RenditionSpec
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutImageTransform, PixelcutScene

PACKAGE = "airflow_provider_bgremoval"
ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted(ROOT.glob("docs/*.md")), *sorted(ROOT.glob("docs/vendors/*.md"))]
#: Any fenced block (so a python fence inside another block's text is never taken for one).
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL
)
#: The valid literal values of the enum-like parameters, as the package exposes them.
CHOICES: dict[str, tuple[str, ...]] = {
    "output_format": OUTPUT_FORMATS,
    "on_error": ON_ERROR_CHOICES,
    "on_pending": ON_PENDING_CHOICES,
    "on_insufficient": ON_INSUFFICIENT_CHOICES,
    "on_low": ON_LOW_CHOICES,
    "observed_at": OBSERVED_AT_CHOICES,
    "pooling": POOLING_CHOICES,
    "failover_on": DEFAULT_FAILOVER_ON,
    "scene": tuple(scene.value for scene in PixelcutScene),
}
#: The ``__init__``s whose ``**kwargs`` go no further: Airflow refuses unknown operator arguments; a hook's
#: are its ``conn_name_attr`` keyword (``pixian_conn_id=``).
_KWARGS_END: tuple[type, ...] = (BaseOperator, BackgroundRemovalHook)
#: Parameters a class takes through ``**kwargs`` and refuses (a render-only job sets its own conn_id).
_REFUSED: dict[type, frozenset[str]] = {render.RenderRenditionsOperator: frozenset(render._VENDOR_ONLY)}
#: The methods of an operator class that take the operator's own arguments (dynamic task mapping).
_MAPPING_METHODS = frozenset({"partial", "expand"})
#: Parameters given as a mapping of a typed model's fields.
MODEL_MAPPINGS: dict[str, type] = {
    "circuit_breaker": BreakerPolicy,
    "image_transform": PixelcutImageTransform,
}
#: ``vendor_options`` by vendor name: each vendor's typed options.
VENDOR_TYPES: dict[str, type] = {vendor: options for options, vendor in VENDOR_OPTION_TYPES.items()}
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Snippet:
    """
    One ```python block.

    :param path: the Markdown file.
    :param line: the line of its opening fence (the code's line ``n`` is the file's ``line + n``).
    :param source: the code, dedented to the fence.
    """

    path: Path
    line: int
    source: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def at(self, node: ast.AST) -> str:
        """Where ``node`` is in the Markdown file."""
        return f"{self.path.relative_to(ROOT)}:{self.line + getattr(node, 'lineno', 0)}"


def snippets(path: Path) -> Iterator[Snippet]:
    """The ```python blocks of ``path``."""
    text = path.read_text(encoding="utf-8")
    for match in _FENCE.finditer(text):
        if match["lang"].strip() == "python":
            indent = len(match["indent"])
            body = "".join(line[indent:] for line in match["body"].splitlines(keepends=True))
            yield Snippet(path, text.count("\n", 0, match.start()) + 1, body)


SNIPPETS = [snippet for path in DOCS for snippet in snippets(path)]


def _public_names() -> dict[str, Any]:
    """The package's public classes and functions by name (see the module docstring)."""
    info = get_provider_info()
    modules = {
        module
        for section in ("hooks", "operators", "sensors", "triggers")
        for entry in info[section]
        for module in entry["python-modules"]
    } | {f"{PACKAGE}.{name}" for name in ("options", "renditions", "credits", "forecast")}
    names: dict[str, Any] = {}
    for module_name in sorted(modules):
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", [name for name in vars(module) if not name.startswith("_")])
        for name in exported:
            value = getattr(module, name)
            if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__.startswith(PACKAGE):
                names[name] = value
    return names


PUBLIC = _public_names()


# -- rule 1: parsing, with the fragment rules ----------------------------------------------------------


def _logical_lines(source: str) -> Iterator[list[tokenize.TokenInfo]]:
    """The tokens of each logical line (comments and line breaks left out)."""
    skipped = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    statement: list[tokenize.TokenInfo] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NEWLINE:
            yield statement
            statement = []
        elif token.type not in skipped:
            statement.append(token)
    if statement:
        yield statement


def _signature_close(statement: Sequence[tokenize.TokenInfo]) -> int | None:
    """The index of the ``)`` of ``obj.method(...) -> Type`` (``None``: not a signature listing)."""
    head = [token.string for token in statement[:4]]
    if len(head) < 4 or statement[0].type != tokenize.NAME or head[1:4:2] != [".", "("]:
        return None
    depth = 0
    for index, token in enumerate(statement[3:], start=3):
        depth += {"(": 1, ")": -1}.get(token.string, 0) if token.type == tokenize.OP else 0
        if depth == 0:
            following = statement[index + 1 : index + 2]
            return index if following and following[0].string == "->" else None
    return None


def _ellipsis_arguments(statement: Sequence[tokenize.TokenInfo]) -> Iterator[tokenize.TokenInfo]:
    """The ``...`` tokens that follow a ``,`` among a call's arguments ("the other arguments")."""
    brackets: list[str] = []
    previous = ""
    for token in statement:
        if token.string in "([{" and token.type == tokenize.OP:
            brackets.append(token.string)
        elif token.string in ")]}" and token.type == tokenize.OP and brackets:
            brackets.pop()
        elif token.string == "..." and previous == "," and brackets[-1:] == ["("]:
            yield token
        previous = token.string


def _edits(statement: Sequence[tokenize.TokenInfo]) -> Iterator[tuple[int, int, int, str]]:
    """The rewrites of a logical line by the fragment rules: ``(row, start column, end column, text)``."""
    for token in _ellipsis_arguments(statement):
        yield (*token.start, token.end[1], "**{}")
    if _signature_close(statement) is not None:
        yield (*statement[-1].end, statement[-1].end[1], ": ...")
        yield (*statement[0].start, statement[2].start[1], "def ")


def read_fragments(source: str) -> tuple[str, dict[int, str]]:
    """
    ``source`` with the fragment rules' rewrites: each signature listing made a ``def`` (the listed
    object by the def's line is returned too), each ``...`` after a ``,`` among a call's arguments made
    ``**{}``.
    """
    lines = source.splitlines(keepends=True)
    objects: dict[int, str] = {}
    try:
        statements = list(_logical_lines(source))
    except (tokenize.TokenError, SyntaxError):
        return source, objects  # ast.parse reports it
    edits = sorted((edit for statement in statements for edit in _edits(statement)), reverse=True)
    for row, start, end, text in edits:
        lines[row - 1] = lines[row - 1][:start] + text + lines[row - 1][end:]
    for statement in statements:
        if _signature_close(statement) is not None:
            objects[statement[0].start[0]] = statement[0].string
    return "".join(lines), objects


def parse(snippet: Snippet) -> tuple[ast.Module, dict[int, str]]:
    """The snippet's tree by the fragment rules, and the signature listings' objects by line."""
    source, objects = read_fragments(snippet.source)
    last = source.rstrip().splitlines()[-1] if source.strip() else ""
    if last.split("#")[0].rstrip().endswith(":"):
        source = source.rstrip() + "\n" + last[: len(last) - len(last.lstrip())] + "    ...\n"
    return ast.parse(source, filename=str(snippet)), objects


# -- rule 2: what a callable accepts -------------------------------------------------------------------


def _named(signature: inspect.Signature) -> tuple[set[str], bool]:
    """The keyword-passable parameter names, and whether there are ``**kwargs`` too."""
    parameters = signature.parameters.values()
    names = {p.name for p in parameters if p.kind in _NAMED} - {"self", "cls"}
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def class_parameters(cls: type) -> set[str]:
    """What ``cls(...)`` takes: its ``__init__``'s parameters, ``**kwargs`` followed down the MRO."""
    names, forwards = _named(inspect.signature(cls))
    for klass in cls.__mro__ if forwards else ():
        if "__init__" not in vars(klass):
            continue
        own, forwards = _named(inspect.signature(vars(klass)["__init__"]))
        names |= own
        if klass in _KWARGS_END or not forwards:
            break
    conn_name = getattr(cls, "conn_name_attr", None)
    if isinstance(conn_name, str):
        names.add(conn_name)
    return names - _REFUSED.get(cls, frozenset())


def accepted(target: Any, owner: type | None = None) -> set[str] | None:
    """
    The keyword arguments ``target`` takes (``None``: any). A method of ``owner`` that takes only
    ``**kwargs`` takes ``owner``'s (``RemovalOptions.create``).

    :param target: a class or a function.
    :param owner: the class ``target`` is a method of.
    """
    if inspect.isclass(target):
        return class_parameters(target)
    names, forwards = _named(inspect.signature(target))
    if forwards and not names and owner is not None:
        return class_parameters(owner)
    return None if forwards else names


# -- the checks ----------------------------------------------------------------------------------------


def _literal_strings(node: ast.expr) -> list[str] | None:
    """The string(s) of a literal string or tuple/list of them (``None``: not a literal, or a template)."""
    items = node.elts if isinstance(node, (ast.Tuple, ast.List)) else [node]
    values = [item.value for item in items if isinstance(item, ast.Constant) and isinstance(item.value, str)]
    if len(values) != len(items) or any("{{" in value for value in values):
        return None
    return values


def _rendition_dicts(node: ast.expr | None) -> list[ast.Dict]:
    """The dict literals of a list of renditions (or of a dict of user presets by name)."""
    if isinstance(node, ast.Dict):
        items: list[ast.expr | None] = list(node.values)
    elif isinstance(node, (ast.List, ast.Tuple)):
        items = list(node.elts)
    else:
        return []
    return [item for item in items if isinstance(item, ast.Dict)]


def _string_items(node: ast.Dict) -> list[tuple[str, ast.expr]]:
    """The items of a dict literal with literal string keys."""
    pairs = zip(node.keys, node.values, strict=True)
    return [
        (key.value, value)
        for key, value in pairs
        if isinstance(key, ast.Constant) and isinstance(key.value, str)
    ]


def _user_presets(keywords: Mapping[str, ast.expr]) -> set[str]:
    node = keywords.get("presets", keywords.get("rendition_presets"))
    if not isinstance(node, ast.Dict):
        return set()
    return {key.value for key in node.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


class SnippetChecker(ast.NodeVisitor):
    """
    Rules 2 and 3 over one snippet's tree.

    :param snippet: the snippet (for locations).
    :param signatures: the signature listings' objects by the line of their ``def``.
    """

    def __init__(self, snippet: Snippet, signatures: Mapping[int, str]) -> None:
        self.snippet = snippet
        self.signatures = signatures
        self.known: dict[str, Any] = dict(PUBLIC)
        self.instances: dict[str, type] = {}
        self.dicts: dict[str, list[tuple[str, ast.expr]]] = {}
        self.problems: list[str] = []

    def problem(self, node: ast.AST, text: str) -> None:
        self.problems.append(f"{self.snippet.at(node)}: {text}")

    # rule 3 and the names the snippet brings in
    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not (node.module or "").startswith(PACKAGE):
            return
        try:
            module = importlib.import_module(str(node.module))
        except ImportError as exc:
            self.problem(node, f"cannot import {node.module}: {exc}")
            return
        for alias in node.names:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = getattr(module, alias.name, None)
            if value is None:
                self.problem(node, f"{node.module} has no {alias.name!r}")
            elif any(issubclass(warning.category, DeprecationWarning) for warning in caught):
                self.problem(node, f"{node.module}.{alias.name} is deprecated: {caught[0].message}")
            else:
                self.known[alias.asname or alias.name] = value

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.startswith(PACKAGE):
                try:
                    importlib.import_module(alias.name)
                except ImportError as exc:
                    self.problem(node, f"cannot import {alias.name}: {exc}")

    # bindings: instances of known classes, dict literals for ``**NAME``
    def visit_Assign(self, node: ast.Assign) -> None:
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            self._bind(node.targets[0].id, node.value)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            if isinstance(item.optional_vars, ast.Name):
                self._bind(item.optional_vars.id, item.context_expr)
        self.generic_visit(node)

    def _bind(self, name: str, value: ast.expr) -> None:
        if isinstance(value, ast.Dict):
            self.dicts[name] = _string_items(value)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
            self.dicts[name] = [(k.arg, k.value) for k in value.keywords if k.arg is not None]
        elif isinstance(value, ast.Call) and inspect.isclass(cls := self._class_of(value.func)):
            self.instances[name] = cls

    def _class_of(self, node: ast.expr) -> type | None:
        """The class ``node`` is or is an instance of (``X``, ``x = X(...)``, ``X.partial(...)``)."""
        if isinstance(node, ast.Name):
            value = self.instances.get(node.id, self.known.get(node.id))
            return value if inspect.isclass(value) else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _MAPPING_METHODS:
                return self._class_of(func.value)
            return self._class_of(func)
        return None

    def _target(self, func: ast.expr) -> tuple[str, Any, type | None] | None:
        """What a call calls: its name, the callable whose parameters count and its class."""
        if isinstance(func, ast.Name):
            value = self.known.get(func.id)
            return (func.id, value, None) if value is not None else None
        if not isinstance(func, ast.Attribute) or (owner := self._class_of(func.value)) is None:
            return None
        name = f"{owner.__name__}.{func.attr}"
        if func.attr in _MAPPING_METHODS and issubclass(owner, BaseOperator):
            return name, owner, None
        member = inspect.getattr_static(owner, func.attr, None)
        if member is None:
            self.problem(func, f"{owner.__name__} has no attribute {func.attr!r}")
            return None
        return name, getattr(owner, func.attr), owner

    def _keywords(self, node: ast.Call) -> list[tuple[str, ast.expr]]:
        """The call's keyword arguments, ``**NAME`` of a dict bound in the snippet as its keys."""
        found = []
        for keyword in node.keywords:
            if keyword.arg is not None:
                found.append((keyword.arg, keyword.value))
            elif isinstance(keyword.value, ast.Name):
                found.extend(self.dicts.get(keyword.value.id, []))
        return found

    def visit_Call(self, node: ast.Call) -> None:
        target = self._target(node.func)
        if target is not None:
            name, value, owner = target
            keywords = self._keywords(node)
            allowed = accepted(value, owner)
            for arg, given in keywords:
                if allowed is not None and arg not in allowed:
                    self.problem(given, f"{name}() takes no keyword argument {arg!r}")
                self._check_choice(arg, given)
                self._check_mappings(arg, given)
            first = node.args[0] if node.args and name == "parse_renditions" else None
            self._check_renditions(dict(keywords).get("renditions", first), dict(keywords))
        self.generic_visit(node)

    def _check_choice(self, arg: str, given: ast.expr) -> None:
        values = _literal_strings(given) if arg in CHOICES else None
        for value in values or ():
            if value.lower() not in CHOICES[arg]:
                self.problem(given, f"{arg}={value!r} is not one of {', '.join(CHOICES[arg])}")

    def _check_renditions(self, renditions: ast.expr | None, keywords: Mapping[str, ast.expr]) -> None:
        """Each rendition's (and user preset's) keys, ``preset`` name and ``format``."""
        presets = {*PRESETS, *_user_presets(keywords)}
        user = keywords.get("presets", keywords.get("rendition_presets"))
        for item in [*_rendition_dicts(renditions), *_rendition_dicts(user)]:
            self._check_keys(item, RenditionSpec, "a rendition")
            for key, value in _string_items(item):
                if key == "preset" and isinstance(value, ast.Constant) and value.value not in presets:
                    self.problem(value, f"no rendition preset {value.value!r} ({', '.join(sorted(presets))})")
                elif key == "format":
                    self._check_choice("output_format", value)

    def _check_mappings(self, arg: str, given: ast.expr) -> None:
        """The keys of a mapping given for a typed model (:data:`MODEL_MAPPINGS`, ``vendor_options``)."""
        if arg in MODEL_MAPPINGS and isinstance(given, ast.Dict):
            self._check_keys(given, MODEL_MAPPINGS[arg], arg)
        if arg != "vendor_options" or not isinstance(given, ast.Dict):
            return
        by_vendor = dict(_string_items(given))
        if by_vendor and set(by_vendor) <= set(VENDOR_TYPES):
            for vendor, options in by_vendor.items():
                if isinstance(options, ast.Dict):
                    self._check_keys(options, VENDOR_TYPES[vendor], f"vendor_options[{vendor!r}]")

    def _check_keys(self, node: ast.Dict, model: type, where: str) -> None:
        allowed = class_parameters(model)
        for key, value in _string_items(node):
            if key not in allowed:
                self.problem(
                    value, f"{where} has no field {key!r} ({model.__name__}: {', '.join(sorted(allowed))})"
                )

    # the signature listings
    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        obj = self.signatures.get(node.lineno)
        owner = self.instances.get(obj or "")
        if obj is None:
            self.generic_visit(node)
        elif owner is None:
            self.problem(
                node, f"signature listing of {obj}.{node.name}: {obj!r} is not bound to a known class"
            )
        elif (method := getattr(owner, node.name, None)) is None:
            self.problem(node, f"{owner.__name__} has no method {node.name!r}")
        else:
            arguments = node.args
            listed = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
            allowed = accepted(method, owner)
            for arg in listed:
                if allowed is not None and arg not in allowed:
                    self.problem(node, f"{owner.__name__}.{node.name}() has no parameter {arg!r}")


def problems(snippet: Snippet) -> list[str]:
    """Everything wrong with ``snippet`` (empty: nothing)."""
    try:
        tree, signatures = parse(snippet)
    except SyntaxError as exc:
        return [f"{snippet.path.relative_to(ROOT)}:{snippet.line + (exc.lineno or 0)}: {exc.msg}"]
    checker = SnippetChecker(snippet, signatures)
    checker.visit(tree)
    return checker.problems


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_snippet_is_right(snippet: Snippet) -> None:
    assert problems(snippet) == []


def test_every_doc_with_python_blocks_is_read() -> None:
    files = {snippet.path.relative_to(ROOT).as_posix() for snippet in SNIPPETS}
    assert {"README.md", "docs/pipeline.md", "docs/credits.md", "docs/vendors/pixian.md"} <= files
    assert len(SNIPPETS) >= 25


def _problems_of(source: str) -> list[str]:
    return problems(Snippet(ROOT / "README.md", 0, source))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("RemoveBackgroundOperator(task_id='t', format='png')", "takes no keyword argument 'format'"),
        ("RemoveBackgroundOperator(task_id='t', retries=2, on_error='fail_rate')", None),
        ("CreditsCheckOperator(task_id='t', on_error='continue')", "no keyword argument 'on_error'"),
        (
            "RenderRenditionsOperator(task_id='t', conn_id='x', renditions=[])",
            "no keyword argument 'conn_id'",
        ),
        ("CreditsSensor(task_id='t', poke_interval=5, min_credit=1)", "no keyword argument 'min_credit'"),
        (
            "PixianHook(pixian_conn_id='p').remove_background(b'', option=None)",
            "no keyword argument 'option'",
        ),
        ("PoofHook(pixian_conn_id='p')", "no keyword argument 'pixian_conn_id'"),
        ("RemovalOptions.create(output_format='gif')", "output_format='gif' is not one of"),
        ("RemovalOptions.create(format='png')", "no keyword argument 'format'"),
        ("B = dict(on_insufficent='skip')\nCreditsCheckOperator(task_id='t', **B)", "'on_insufficent'"),
        ("RemoveBackgroundOperator.partial(task_id='t', pol='p').expand(shard=[])", "'pol'"),
        ("RemoveBackgroundOperator(task_id='t', renditions=[{'preset': 'etsy'}])", "no rendition preset"),
        (
            "RemoveBackgroundOperator(task_id='t', renditions=[{'name': 'w', 'formats': 'png'}])",
            "no field 'formats'",
        ),
        (
            "RemoveBackgroundOperator(task_id='t', renditions=[{'name': 'w', 'format': 'tiff'}])",
            "'tiff' is not",
        ),
        ("parse_renditions([], presets={'p': {'preset': 'amazon_main', 'qualty': 1}})", "no field 'qualty'"),
        (
            "GenerateBackgroundOperator(task_id='t', image_transform={'x': 1})",
            "image_transform has no field 'x'",
        ),
        ("RemoveBackgroundOperator(task_id='t', circuit_breaker={'cooldown': 1})", "no field 'cooldown'"),
        ("RemoveBackgroundOperator(task_id='t', vendor_options={'poof': {'sise': 1}})", "no field 'sise'"),
        ("from airflow_provider_bgremoval.operators.bucket import CreditsSensor", "has no 'CreditsSensor'"),
        ("from airflow_provider_bgremoval.operators.credits import CreditsCheckOperator", "is deprecated"),
        ("hook = PixianHook()\nhook.get_balance(*, prob: bool = False) -> Balance", "no parameter 'prob'"),
        ("hook = PixianHook()\nhook.get_balance(*, probe: bool = False) -> Balance", None),
        ("with DAG(\n    ...,\n):", None),
        ("RemoveBackgroundOperator(task_id='t', ..., renditions=[...])", None),
        ("RemoveBackgroundOperator(task_id='t', ..., format='png')", "no keyword argument 'format'"),
        ("RemoveBackgroundOperator(\n    task_id='t'", "never closed"),
    ],
)
def test_the_checker_finds_what_is_wrong(source: str, expected: str | None) -> None:
    found = _problems_of(source)
    if expected is None:
        assert found == []
    else:
        assert any(expected in problem for problem in found), found
