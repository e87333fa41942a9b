"""Typed experiment configs: dataclasses loaded from YAML plus ``key=value`` overrides.

General-purpose: any project config is a (nested) dataclass. Loading is strict:

* an unknown key (in YAML or an override) raises :class:`ConfigError` naming the full dotted key
  and listing the valid keys at that level;
* every value is checked against the field's type annotation (``int``, ``float``, ``bool``,
  ``str``, ``Path``, ``Optional[...]``, ``Literal[...]``, ``list[...]``, ``tuple[...]``,
  ``dict[str, ...]`` and nested dataclasses) and converted where that is lossless
  (``"1e-4"`` -> ``1e-4`` for a float field, ``3`` -> ``3.0``);
* a field without a default that is given no value is an error;
* a nested section given in part keeps the rest of the field's own default (its
  ``default_factory``), not the section class's defaults.

A boolean field may declare a command-line switch, ``field(default=False, metadata={"switch":
"--skip-bad-records"})``: :func:`parse_cli` then takes ``--skip-bad-records`` for
``data.skip_bad_records=true`` in every config that holds the field. Any field may declare an
option, ``metadata={"option": "--eval-data"}``: ``--eval-data VALUE`` sets it to the string
VALUE (not parsed as YAML); with ``"repeat": True`` the option may be given several times and
the field, a list, gets every value in order (``--train-data A --train-data B``). A section
class with a ``from_config_string(text)`` classmethod may be given as one string and still have
one field overridden (``data.eval=SPEC data.eval.split=val2014``).

Overrides are ``dotted.key=value`` strings; the value is parsed as YAML (so ``true``, ``null``,
``[1, 2]`` and ``{heads.: 5.0}`` work) and then type-checked like a YAML value. Once a dotted key
reaches a ``dict`` field the rest of the key, dots included, is the dictionary key:
``optim.lr_multipliers.heads.=5`` sets ``lr_multipliers["heads."] = 5.0``.

Example::

    @dataclass
    class Exp:
        train: TrainConfig = field(default_factory=TrainConfig)
        model_name: str = "fiber-base"

    cfg = load_config(Exp, "exp.yaml", ["train.optim.lr=2e-4", "train.max_steps=1000"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from ..errors import ConfigError

T = TypeVar("T")


def _fmt_key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (possibly converted) or raise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is Union or (types.UnionType is not None and origin is types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}': null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': {value!r} matches none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
    if value is None:
        raise ConfigError(f"config key '{key}': null is not allowed (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(f"config key '{key}': expected a boolean, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "1e-4" (no dot) as a string; accept any float literal.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"config key '{key}': expected a path, got {value!r}")
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        kt, vt = (args if args else (Any, Any))
        return {_coerce(k, kt, f"{key}.<key>"): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported annotation {tp!r}")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: Mapping[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly (see module docstring)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, got {data!r}")
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{_fmt_key(prefix, str(unknown[0]))}'; "
            f"valid keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    missing = []
    for name, (f, tp) in fields.items():
        if name in data:
            kwargs[name] = _coerce(_over_section_default(f, tp, data[name]), tp, _fmt_key(prefix, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing.append(_fmt_key(prefix, name))
    if missing:
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"invalid config{' section ' + repr(prefix) if prefix else ''}: {e}") from e


def _over_section_default(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A nested section given in part starts from the field's own default: ``train.batch_size=8``
    for a section declared ``field(default_factory=lambda: TrainConfig(max_steps=100))`` keeps
    ``max_steps=100`` instead of falling back to the class defaults of ``TrainConfig``. Keys the
    section's class lists together in ``ALTERNATIVE_KEYS`` are one setting: ``epochs=8`` given
    alone there resets ``max_steps`` to its class default (None)."""
    if not (dataclasses.is_dataclass(tp) and isinstance(value, Mapping)) or f.default_factory is dataclasses.MISSING:
        return value
    try:
        default = f.default_factory()
    except (ValueError, TypeError):  # a section that has no valid default of its own
        return value
    if not dataclasses.is_dataclass(default):
        return value
    merged = to_dict(default)
    # A section's one-of keys (TrainConfig's max_steps / epochs): setting one drops the default's
    # value of the others, so that ``epochs: 8`` over a default of ``max_steps: 100`` trains 8
    # epochs instead of being silently outranked by the default.
    defaults = {field_.name: field_.default for field_ in dataclasses.fields(tp)}
    for group in getattr(tp, "ALTERNATIVE_KEYS", ()):
        if any(key in value for key in group):
            merged.update({key: defaults[key] for key in group if key not in value})
    for key, sub in value.items():
        if isinstance(sub, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **sub}
        else:
            merged[key] = sub
    return merged


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain YAML-safe structure (paths become strings, tuples lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def _split_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the string, the type check decides
    return key, value


def apply_overrides(cls: type, data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to the raw mapping ``data`` (modified and returned).

    Keys are resolved against the dataclass fields of ``cls`` so that an unknown key is reported
    with the valid alternatives, and so that the part of a key below a ``dict`` field is taken
    verbatim (it may contain dots).
    """
    for item in overrides:
        key, value = _split_override(item)
        parts = key.split(".")
        node_cls: Any = cls
        node = data
        prefix = ""
        i = 0
        while True:
            name = parts[i]
            fields = _fields(node_cls)
            if name not in fields:
                raise ConfigError(
                    f"unknown config key '{_fmt_key(prefix, name)}' in override {item!r}; "
                    f"valid keys{' under ' + repr(prefix) if prefix else ''}: {', '.join(sorted(fields))}"
                )
            tp = fields[name][1]
            # unwrap Optional[Dataclass] / Optional[dict], and a union holding one dataclass
            # (Optional[Source | str]) whose fields are set one by one
            if typing.get_origin(tp) in (Union, getattr(types, "UnionType", None)):
                non_none = [a for a in typing.get_args(tp) if a is not type(None)]
                sections = [a for a in non_none if dataclasses.is_dataclass(a)]
                if len(non_none) == 1:
                    tp = non_none[0]
                elif len(sections) == 1 and parts[i + 1:]:
                    tp = sections[0]
            rest = parts[i + 1 :]
            if not rest:
                node[name] = value
                break
            if dataclasses.is_dataclass(tp):
                sub = node.get(name)
                if isinstance(sub, str) and hasattr(tp, "from_config_string"):
                    # a section written as one string (a data source's SPEC): set a field of it
                    sub = to_dict(tp.from_config_string(sub))
                    node[name] = sub
                if not isinstance(sub, dict):
                    sub = {}
                    node[name] = sub
                node, node_cls, prefix = sub, tp, _fmt_key(prefix, name)
                i += 1
                continue
            if typing.get_origin(tp) in (dict, Mapping) or tp is dict:
                sub = node.get(name)
                if not isinstance(sub, dict):
                    # start from the default so that one entry can be overridden alone
                    f = fields[name][0]
                    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    sub = dict(default) if isinstance(default, Mapping) else {}
                    node[name] = sub
                sub[".".join(rest)] = value
                break
            raise ConfigError(f"config key '{_fmt_key(prefix, name)}' is not a section; cannot set {key!r}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Load ``cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        with open(p, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    data = apply_overrides(cls, data, overrides)
    return from_dict(cls, data)


def dump_config(cfg: Any) -> str:
    """YAML text of a config dataclass (keys in declaration order)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the YAML snapshot of ``cfg`` to ``path`` (atomically: temp file then rename)."""
    import os

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def config_keys(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """Every ``key=value`` a config class takes, flattened: ``[(dotted key, type, default)]``
    (default ``"(required)"`` where there is none). Nested dataclasses are walked by type, so
    a section whose own constructor validates (``train``) is listed without being built."""
    rows = []
    for name, (f, tp) in _fields(cls).items():
        key = _fmt_key(prefix, name)
        if dataclasses.is_dataclass(tp):
            rows.extend(config_keys(tp, key))
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(to_dict(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default))
    return rows


def _fields_declaring(cls: type, what: str, prefix: str = ""):
    """(dotted key, field, type) of every field of ``cls`` and its sections whose metadata has ``what``."""
    for name, (f, tp) in _fields(cls).items():
        key = _fmt_key(prefix, name)
        if dataclasses.is_dataclass(tp):
            yield from _fields_declaring(tp, what, key)
        elif what in f.metadata:
            yield key, f, tp


def config_switches(cls: type) -> dict[str, str]:
    """``{"--switch": "dotted.key"}``: the boolean keys of ``cls`` whose field declares a
    command-line switch (``metadata={"switch": "--name"}``); the switch sets the key to true."""
    switches = {}
    for key, f, tp in _fields_declaring(cls, "switch"):
        if tp is not bool:
            raise TypeError(f"config key '{key}': only a bool field can have a switch")
        switches[f.metadata["switch"]] = key
    return switches


def config_options(cls: type) -> dict[str, tuple[str, bool]]:
    """``{"--option": ("dotted.key", repeatable)}``: the fields of ``cls`` that declare a
    command-line option (``metadata={"option": "--name"}``, ``"repeat": True`` for a list)."""
    return {f.metadata["option"]: (key, bool(f.metadata.get("repeat"))) for key, f, _ in _fields_declaring(cls, "option")}


def cli_help(cls: type, usage: str, aliases: Mapping[str, str] | None = None, resume: bool = True) -> str:
    """The ``-h`` text of a config-driven command: its usage, its options (``--resume`` when the
    command trains) and every key with its default."""
    rows = config_keys(cls)
    width = max(len(k) for k, _, _ in rows)
    options = [("--config FILE", "a YAML or JSON config (keys below); key=value overrides it")]
    if resume:
        options.append(("--resume [PATH]", "continue from the newest checkpoint of train.run_dir, or from PATH"))
    options += [(f"{alias} V", f"{key}=V") for alias, key in (aliases or {}).items()]
    options += [(switch, f"{key}=true") for switch, key in config_switches(cls).items()]
    options += [(f"{option} V", f"{key}=V" + (" (repeatable: a list)" if repeat else ""))
                for option, (key, repeat) in config_options(cls).items()]
    name_width = max(len(name) for name, _ in options)
    lines = [f"usage: {usage}", "", "options:"] + [f"  {name:<{name_width}}  {what}" for name, what in options]
    lines += ["", "keys (key=value, dotted for sections):"]
    lines += [f"  {k:<{width}}  {d}  ({t})" for k, t, d in rows]
    return "\n".join(lines)


def parse_cli(cls: type[T], argv: Sequence[str], aliases: Mapping[str, str] | None = None
              ) -> tuple[T, dict[str, Any]]:
    """Parse ``[--config FILE] [--resume [PATH]] [--SWITCH ...] key=value ...`` into ``(cfg, flags)``.

    ``flags`` holds ``config`` (path or None) and ``resume`` (None, ``"auto"`` for a bare
    ``--resume``, or the given path). A switch of :func:`config_switches` is the override
    ``its.key=true``; an option of :func:`config_options` sets its key to the string given
    (a repeatable one to the list of every value given, replacing the config file's list).
    ``aliases`` (``{"--init": "model.init"}``) are a command's own friendly options:
    ``--init RUN`` or ``--init=RUN`` is the override ``model.init=RUN``.
    ``-h`` / ``--help`` prints :func:`cli_help` and exits 0. Any other ``--option`` is an error.
    """
    aliases = dict(aliases or {})
    if "-h" in argv or "--help" in argv:
        print(cli_help(cls, "fibervl VERB NAME [--config FILE] [--resume [PATH]] key=value ...", aliases))
        raise SystemExit(0)
    config_path = None
    resume = None
    overrides: list[str] = []
    switches = config_switches(cls)
    options = config_options(cls)
    given: dict[str, list[str]] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if not eq and (name in options or name in aliases):  # "--name VALUE": the value is the next argument
            if i + 1 >= len(args):
                raise ConfigError(f"{name} needs a value")
            value = args[i + 1]
            i += 1
        if name in options:
            if name not in given:  # the option takes its place among the overrides where first given
                given[name] = []
                overrides.append(name)
            given[name].append(value)
            i += 1
        elif a == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a file name")
            config_path = args[i + 1]
            i += 2
        elif a.startswith("--config="):
            config_path = a.split("=", 1)[1]
            i += 1
        elif a == "--resume":
            if i + 1 < len(args) and not args[i + 1].startswith("-") and "=" not in args[i + 1]:
                resume = args[i + 1]
                i += 2
            else:
                resume = "auto"
                i += 1
        elif a.startswith("--resume="):
            resume = a.split("=", 1)[1]
            i += 1
        elif name in aliases:
            overrides.append(f"{aliases[name]}={value}")
            i += 1
        elif a in switches:
            overrides.append(f"{switches[a]}=true")
            i += 1
        elif a.startswith("-"):
            extra = "".join(f", {s}" for s in [*aliases, *switches, *options])
            raise ConfigError(f"unknown option {a!r} (use --config FILE, --resume [PATH]{extra} or key=value)")
        else:
            overrides.append(a)
            i += 1
    for name, values in given.items():
        key, repeat = options[name]
        if not repeat and len(values) > 1:
            raise ConfigError(f"{name} was given {len(values)} times; it takes one value")
        # JSON is YAML: the override carries the strings exactly as given
        overrides[overrides.index(name)] = f"{key}={json.dumps(values if repeat else values[0])}"
    cfg = load_config(cls, config_path, overrides)
    return cfg, {"config": config_path, "resume": resume}
