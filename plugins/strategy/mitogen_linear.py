"""Ansible's linear strategy, its tasks run through Mitogen: one Python interpreter per host,
kept for the whole run, instead of a module shipped and a Python started for every task.

The kit's default (ansible.cfg, and the molecule scenarios' own configuration), as
`stackkit.kit.mitogen_linear`. It needs the `mitogen` package that pyproject.toml pins; run
with ANSIBLE_STRATEGY=linear to do without it.
"""

from __future__ import annotations

import ansible_mitogen.loaders
import ansible_mitogen.strategy

DOCUMENTATION = r"""
name: mitogen_linear
short_description: Ansible's linear strategy, its tasks run through Mitogen
description:
  - The same task order as C(ansible.builtin.linear); each host's modules run in one Python
    process that Mitogen starts once per host and run, over the same SSH connection settings.
  - Needs the C(mitogen) Python package on the controller.
author: stackkit
"""

_Linear = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, _Linear):
    pass
