"""fibervl: FIBER, ALBEF and VLMo vision-language models in plain PyTorch."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``fibervl.load`` without importing torch and the models on ``import fibervl``.
    if name == "load":
        from .predict.loading import load

        return load
    raise AttributeError(f"module 'fibervl' has no attribute {name!r}")
