"""Griffe extension for the API reference: the docstrings' Sphinx roles (:class:`~a.B`, :func:`f`, :mod:`m`,
:data:`X`, :meth:`m`) shown as code spans (``B``, ``f``, ...) instead of raw role text; a ``~`` keeps the last name."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|mod|meth|data|attr|obj|exc):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
