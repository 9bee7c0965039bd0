"""The actor protocol: every message class is a frozen attrs class that survives pickling, with a unique name."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import pkgutil
import types
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest

import actors.messages

MESSAGES_DIR = Path(actors.messages.__file__).parent
MODULES = [importlib.import_module(f"actors.messages.{info.name}")
           for info in pkgutil.iter_modules([str(MESSAGES_DIR)])]

EXPORTED = sorted(
    (getattr(actors.messages, name) for name in actors.messages.__all__
     if inspect.isclass(getattr(actors.messages, name))),
    key=lambda cls: cls.__name__,
)
DEFINED = sorted(
    {cls for module in MODULES for _, cls in inspect.getmembers(module, inspect.isclass)
     if cls.__module__ == module.__name__},
    key=lambda cls: cls.__name__,
)


def sample(tp: Any) -> Any:
    """A simple, picklable, comparable value of type ``tp``."""
    if tp is Any or tp is object:
        return "actor-address"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)))
    if origin is tuple:
        return (sample(args[0]),) if args and args[-1] is Ellipsis else tuple(sample(a) for a in args)
    if origin is dict:
        return {"k": sample(args[1])} if args else {}
    if origin is frozenset:
        return frozenset({sample(args[0])}) if args else frozenset()
    if origin is list:
        return [sample(args[0])] if args else []
    simple = {str: "x", int: 7, float: 1.5, bool: True, bytes: b"{}"}
    if tp in simple:
        return simple[tp]
    if attrs.has(tp):
        return build(tp)
    raise AssertionError(f"no sample value for {tp!r}")


def build(cls: type, *, all_fields: bool = False) -> Any:
    """An instance with every required field (and with ``all_fields``, every field) set to a sample value."""
    attrs.resolve_types(cls)
    kwargs = {
        field.alias or field.name: sample(field.type)
        for field in attrs.fields(cls)
        if all_fields or field.default is attrs.NOTHING
    }
    return cls(**kwargs)


def test_all_lists_only_names_the_package_defines():
    for name in actors.messages.__all__:
        assert hasattr(actors.messages, name), name
    assert len(actors.messages.__all__) == len(set(actors.messages.__all__))
    assert len(EXPORTED) > 40


@pytest.mark.parametrize("cls", EXPORTED, ids=lambda cls: cls.__name__)
def test_every_exported_message_is_a_frozen_attrs_class(cls):
    assert attrs.has(cls)
    instance = build(cls)
    field = attrs.fields(cls)[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, field, None)


@pytest.mark.parametrize("cls", EXPORTED, ids=lambda cls: cls.__name__)
def test_every_exported_message_survives_a_pickle_round_trip(cls):
    for instance in (build(cls), build(cls, all_fields=True)):
        copy = pickle.loads(pickle.dumps(instance, protocol=pickle.HIGHEST_PROTOCOL))
        assert copy == instance
        assert type(copy) is cls


@pytest.mark.parametrize("cls", DEFINED, ids=lambda cls: cls.__name__)
def test_every_class_defined_in_the_package_is_a_picklable_frozen_attrs_class(cls):
    """Covers the classes not re-exported from the package too (RestoreRegistry, StopAccepted)."""
    assert attrs.has(cls)
    instance = build(cls, all_fields=True)
    assert pickle.loads(pickle.dumps(instance)) == instance
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(instance, attrs.fields(cls)[0].name, None)


def test_class_names_are_unique_across_the_message_modules():
    seen: dict[str, str] = {}
    duplicates = []
    for path in sorted(MESSAGES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                if node.name in seen:
                    duplicates.append((node.name, seen[node.name], path.name))
                seen[node.name] = path.name
    assert duplicates == []
    assert len(seen) >= len(EXPORTED)


def test_the_message_modules_import_neither_actors_nor_system():
    for path in sorted(MESSAGES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("system"), (path.name, name)
                assert not (name.startswith("actors") and not name.startswith("actors.messages")), (path.name, name)


def test_every_message_class_has_a_docstring():
    for cls in DEFINED:
        assert cls.__doc__ and cls.__doc__.strip(), cls.__name__
