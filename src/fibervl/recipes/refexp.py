"""``fibervl finetune|evaluate|predict refexp``: Referring expression comprehension (top-1 box, accuracy at IoU >= 0.5).

See :mod:`fibervl.recipes.fine_tasks` for the commands' arguments.
"""

from .fine_tasks import commands

COMMANDS = commands("refexp")
