"""The built-in model families: one module each, holding everything core_eval knows about it.

A family module defines ``FAMILY`` (a :class:`~core_eval.adapters.Family`): where the LM's decoder
layers live, its region rule (image patches -> LM visual tokens, in the order the LM sees them),
the LM's own attention-mask kind, the config / processor fields it reads, and its offline tiny
test recipe. Adding a built-in family is adding one module here; every module in this package is
imported and registered (alphabetically, ``text`` last). Families from outside the package come
through ``family=pkg.module:obj`` or the ``core_eval.families`` entry-point group (see README).
"""

from __future__ import annotations

import importlib
import pkgutil

from core_eval.adapters.base import mark_builtins, register_family

_names = sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")),
                key=lambda n: (n == "text", n))
for _name in _names:
    _module = importlib.import_module(f"{__name__}.{_name}")
    register_family(_module.FAMILY)
mark_builtins()
del _name, _module
