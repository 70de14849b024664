"""Flat spellings of the nested method options: ``r = 4``, ``pissa_niter = 2`` or ``vbll = {...}`` beside
``adapter = "lora"`` in a config file, the keyword ``fit(r=4)``, and every ``config.json`` written before the
options were nested (0.1 and 0.2 run folders).

A FitConfig holds the chosen adapter's options in ``adapter`` and the uncertainty method's in ``uq``, each a
:class:`~polar_vbll.fields.MethodConfig`. :func:`nest_flat_options` moves flat keys there:

- a key named like one of the chosen method's fields (``r``, ``alpha``, ``target_modules``, ``theta``);
- ``<method>_<field>`` (``pissa_niter``, ``lisa_layers``, ``ensemble_size``, ``blob_samples``, ``vbll_prior_scale``);
- the renamed ones in :data:`RENAMED` (``mc_samples``, ``la_subset``, ``corda_task``);
- ``vbll = {...}`` (the VBLL head's table);
- ``laplace = true`` / ``temperature_scaling = true``, which become post-hoc steps.

A flat key of a method that was not chosen is dropped when it holds that method's default (old ``config.json``
files list every method's options) and refused otherwise, since it would have no effect.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from .errors import PolarVBLLError
from .fields import ConfigFieldError, MethodConfig

#: flat names whose method field is spelled differently: name -> (section, method, field)
RENAMED: dict[str, tuple[str, str, str]] = {
    "mc_samples": ("uq", "mc_dropout", "samples"),
    "la_subset": ("uq", "laplace", "subset"),
    "corda_task": ("adapter", "corda", "covariance_task"),
}
#: flat booleans that ask for a post-hoc step
POST_HOC_FLAGS = {"laplace": "last_layer_laplace", "temperature_scaling": "temperature"}


def field_default(cls: type, name: str) -> Any:
    """The default of ``cls``'s field ``name`` (``MISSING`` when it has no such field)."""
    f = next((f for f in fields(cls) if f.name == name), None)
    if f is None:
        return MISSING
    return f.default_factory() if f.default_factory is not MISSING else f.default


def flat_names(section: str, method: str, cls: type, shared: bool) -> dict[str, str]:
    """{flat key: field} of one method's options; ``shared``: its fields are also spelled without the prefix."""
    names = {f"{method}_{f.name}": f.name for f in fields(cls)}
    if shared:
        names.update({f.name: f.name for f in fields(cls)})
    names.update({flat: name for flat, (sec, meth, name) in RENAMED.items() if sec == section and meth == method})
    return names


def nest_flat_options(data: dict, top_level: set[str], sections: dict[str, tuple[Any, str]]) -> dict:
    """``data`` with its flat method options moved into the ``adapter`` / ``uq`` tables and its post-hoc flags into
    ``post_hoc``. ``top_level``: FitConfig's own fields (never moved); ``sections``: {"adapter": (ADAPTERS,
    default method), "uq": (UQ_METHODS, default method)}, each registry entry with a ``config`` class."""
    data = dict(data)
    for section, (registry, default) in sections.items():
        chosen = data.get(section, default)
        if isinstance(chosen, MethodConfig):  # a config object: flat keys cannot add to it
            method, table = chosen.method, {}
        else:
            table = _as_table(chosen, section)
            method = table.pop("method")
        for name in registry:  # a table named after a method: [vbll] beside uq = "vbll" (0.1 / 0.2 files)
            if isinstance(data.get(name), dict | MethodConfig) and name not in top_level:
                _move(section, name, registry, data.pop(name), method, table, named_table=True)
        shared = section == "adapter"
        for name in [method, *(m for m in registry if m != method)]:  # the chosen method's spellings first
            flat = flat_names(section, name, registry.get(name).config, shared)
            given = {key: data.pop(key) for key in list(flat) if key in data and key not in top_level}
            _move(
                section,
                name,
                registry,
                {flat[key]: value for key, value in given.items()},
                method,
                table,
                spelled={flat[key]: key for key in given},
            )
        if isinstance(chosen, MethodConfig):
            if table:
                raise PolarVBLLError(
                    f"FitConfig.{section}: {type(chosen).__name__} given, set {', '.join(table)} on it"
                )
        else:
            data[section] = {"method": method, **table}
    asked = [step for flag, step in POST_HOC_FLAGS.items() if data.pop(flag, None)]
    if asked:
        steps = list(data.get("post_hoc") or [])
        data["post_hoc"] = steps + [step for step in asked if step not in steps]
    return data


def _move(section, owner, registry, values, chosen, table, named_table=False, spelled=None) -> None:
    """Put ``values`` (fields of method ``owner``) into the chosen method's ``table``; those of another method are
    dropped when they hold its defaults (old files list every method's options) and refused otherwise. A flat key
    (a command-line flag) wins over the table; a named table (``[vbll]``) does not."""
    if isinstance(values, MethodConfig):
        values = {k: v for k, v in values.to_dict().items() if k != "method"}
    values = {k: v for k, v in values.items() if v is not None and k != "method"}
    if owner == chosen:
        table.update({**values, **table} if named_table else values)
        return
    cls = registry.get(owner).config
    changed = [name for name, value in values.items() if value != field_default(cls, name)]
    if changed:
        key = owner if named_table else (spelled or {}).get(changed[0], changed[0])
        raise ConfigFieldError("FitConfig", key, f"not an option of {section} '{chosen}'")


def _as_table(value: Any, section: str) -> dict:
    if isinstance(value, str):
        return {"method": value}
    if isinstance(value, dict):
        if not isinstance(value.get("method"), str):
            raise ConfigFieldError("FitConfig", section, f'a table needs method = "<name>", got {value!r:.80}')
        return dict(value)
    raise ConfigFieldError("FitConfig", section, f"expected a method name or a table of options, got {value!r:.80}")
