"""``aptune demo``: APT against its alternatives on a laptop CPU, from a shipped pretrained backbone.

:mod:`~aptune.demo.run` trains and evaluates every method on the synthetic target task,
:mod:`~aptune.demo.prompt_cost` measures what prompts cost, :mod:`~aptune.demo.report`
writes the table, JSON and figures, and :mod:`~aptune.demo.reparam` is the optional
learning-rate study of APT's reparameterisation (``aptune demo --study reparam``).
"""

from aptune.demo.prompt_cost import PROMPT_COUNTS, prompt_cost
from aptune.demo.report import format_table, plot_demo, plot_prompt_cost, write_outputs
from aptune.demo.run import DEMO_METHODS, demo_recipe, method_config, run_demo, shipped_backbone

__all__ = [
    "DEMO_METHODS",
    "PROMPT_COUNTS",
    "demo_recipe",
    "format_table",
    "method_config",
    "plot_demo",
    "plot_prompt_cost",
    "prompt_cost",
    "run_demo",
    "shipped_backbone",
    "write_outputs",
]
