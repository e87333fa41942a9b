"""``fibervl finetune|evaluate|predict detect``: object detection as grounding over class-name
prompts (COCO AP; zero-shot AP on held-out names).

See :mod:`fibervl.recipes.fine_tasks` for the commands' arguments.
"""

from .fine_tasks import commands

COMMANDS = commands("detect")
