"""Auto-class registration without importing the model code (``import eagle_hf`` stays cheap).

transformers' own models sit in its Auto tables as names, resolved on first use by its
``_LazyModule``. Registered models sit in each table's ``_extra_content`` dict as classes, which
would force ``import eagle_hf`` to import every expert, timm, the processors and torchvision. So
each table's ``_extra_content`` becomes a `LazyContent`: a dict that also holds *pending* entries
(key and value given by import path) and imports one only when a lookup asks for it. The
processor tables live in modules that are themselves expensive to import (image utilities,
torchvision); their entries are added when transformers imports them (`after_import`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable


def resolve(path: str):
    """``"package.module:Name"`` -> the object; values may also be ``{backend: path}`` dicts."""
    if isinstance(path, dict):
        return {k: resolve(v) for k, v in path.items()}
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _matches(key, key_path: str) -> bool:
    module, _, name = key_path.partition(":")
    if isinstance(key, str):  # AutoConfig's table is keyed by model_type
        return not module and key == name
    return getattr(key, "__module__", None) == module and getattr(key, "__qualname__", None) == name


class LazyContent(dict):
    """``_extra_content`` of a transformers Auto table with entries imported on first use."""

    def __init__(self, content: dict | None = None):
        super().__init__(content or {})
        self.pending: list[tuple[str, object]] = []  # (key path, value path)

    def add(self, key_path: str, value_path) -> None:
        self.pending.append((key_path, value_path))

    def _load(self, entry) -> None:
        self.pending.remove(entry)
        key_path, value_path = entry
        module, _, name = key_path.partition(":")
        key = name if not module else resolve(key_path)
        if not dict.__contains__(self, key):  # an explicit registration wins
            dict.__setitem__(self, key, resolve(value_path))

    def _resolve(self, key) -> None:
        for entry in [e for e in self.pending if _matches(key, e[0])]:
            self._load(entry)

    def _resolve_all(self) -> None:
        for entry in list(self.pending):
            self._load(entry)

    def __contains__(self, key) -> bool:
        self._resolve(key)
        return dict.__contains__(self, key)

    def __getitem__(self, key):
        self._resolve(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._resolve(key)
        return dict.get(self, key, default)

    def __setitem__(self, key, value) -> None:
        self.pending = [e for e in self.pending if not _matches(key, e[0])]
        dict.__setitem__(self, key, value)

    def __len__(self) -> int:
        return dict.__len__(self) + len(self.pending)

    def __iter__(self):
        self._resolve_all()
        return dict.__iter__(self)

    def keys(self):
        self._resolve_all()
        return dict.keys(self)

    def values(self):
        self._resolve_all()
        return dict.values(self)

    def items(self):
        self._resolve_all()
        return dict.items(self)


def lazy_content(mapping) -> LazyContent:
    """The mapping's ``_extra_content``, made a `LazyContent` (once; what it holds is kept)."""
    content = mapping._extra_content
    if not isinstance(content, LazyContent):
        content = mapping._extra_content = LazyContent(content)
    return content


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a named module has been executed (a post-import hook)."""

    def __init__(self):
        self.callbacks: dict[str, list[Callable]] = {}

    def find_spec(self, name, path, target=None):
        if name not in self.callbacks:
            return None
        sys.meta_path.remove(self)  # find the real spec without finding ourselves
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _Loader(spec.loader, self.callbacks.pop(name))
        return spec


class _Loader(importlib.abc.Loader):
    def __init__(self, loader, callbacks):
        self.loader, self.callbacks = loader, callbacks

    def __getattr__(self, name):  # get_source, get_resource_reader, ... (tracebacks show source)
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        for callback in self.callbacks:
            callback(module)


_HOOK = _AfterImport()


def after_import(module_name: str, callback: Callable) -> None:
    """``callback(module)`` now if ``module_name`` is imported, else right after it is."""
    if module_name in sys.modules:
        callback(sys.modules[module_name])
        return
    _HOOK.callbacks.setdefault(module_name, []).append(callback)
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
