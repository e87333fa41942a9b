"""The web demo (``fibervl demo``): upload an image, see what the library's predictors make of it.

:mod:`.models` picks the model of each task from the ``--model`` directories and answers
without a web page (:class:`DemoModels`); :mod:`.app` is the Gradio page over it; :mod:`.cli`
the command. Only :mod:`.app` needs gradio (``pip install 'fibervl[demo]'``).
"""

from .models import DEMO_TASKS, RUN_STAGES, Answer, DemoModels, find_models

__all__ = ["DEMO_TASKS", "RUN_STAGES", "Answer", "DemoModels", "find_models"]
