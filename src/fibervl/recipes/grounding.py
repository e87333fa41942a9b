"""``fibervl finetune|evaluate|predict ground``: Phrase grounding (Flickr30k Entities protocol, R@1/5/10).

See :mod:`fibervl.recipes.fine_tasks` for the commands' arguments.
"""

from .fine_tasks import commands

COMMANDS = commands("ground")
