"""The merge recipe: mergekit-style YAML or dict, parsed into a typed, checked config.

Users already have mergekit YAML files, so the keys are mergekit's. What we refuse,
we refuse early and by name: an unknown method, a parameter the method does not
take, a `t` outside [0, 1], or a model that is not a local folder (we never download;
a name that is not a local path is a hub id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import methods
from .schedule import all_numbers

TOP_LEVEL_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
                  "tokenizer_source", "name", "chat_template", "tokenizer"}
DTYPES = {"bfloat16", "float16", "float32", "float64"}
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}


class ConfigError(ValueError):
    """A merge configuration that cannot be run; the message says which key and why."""


class MergeError(RuntimeError):
    """A merge that cannot go on (another run owns the output, a worker died, NaN with
    fail_on_nonfinite, an output folder that would destroy an input); the message says
    what happened and what is kept."""


@dataclass
class ModelSpec:
    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    layer_range: tuple[int, int] | None = None


@dataclass
class MergeConfig:
    method: str
    base: Path | None
    models: list[ModelSpec]
    parameters: dict[str, Any]
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: Path | None
    raw: dict
    tokenizer_union: bool = False  # tokenizer_source: union (parents whose vocabularies differ by appended tokens)
    slice_parameters: dict[str, Any] = field(default_factory=dict)  # slices[0].parameters (between model and top level)

    @property
    def parents(self) -> list[Path]:
        """Every distinct input folder, base first."""
        paths = ([self.base] if self.base else []) + [m.path for m in self.models]
        return list(dict.fromkeys(paths))

    def others(self) -> list[ModelSpec]:
        """The models that are not the base, in config order."""
        return [m for m in self.models if m.path != self.base]

    def contributors(self, method: methods.MergeMethod | None = None) -> list[ModelSpec]:
        """The models the method's per-model parameters are for: every model for a method without
        a base, else the models besides the base (config order either way)."""
        method = method or methods.get(self.method)
        return self.models if method.base is None else self.others()


def load_config(config: dict | str | Path) -> MergeConfig:
    """Parse a mergekit-style dict, or a YAML file, into a MergeConfig."""
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{path}: merge config file not found")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the merge config must be a mapping")
        return parse_config(raw, config_dir=path.resolve().parent)
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a dict or a YAML path, got {type(config).__name__}")
    return parse_config(config, config_dir=None)


def parse_config(raw: dict, config_dir: Path | None) -> MergeConfig:
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    try:
        spec = methods.get(raw.get("merge_method"))
    except methods.UnknownMethod as error:
        raise ConfigError(str(error)) from None
    method = spec.name
    if "models" in raw and "slices" in raw:
        raise ConfigError("give either 'models' or 'slices', not both")
    models, slice_parameters = _parse_models(raw, config_dir)
    base = resolve_model_path(raw["base_model"], config_dir, "base_model") if raw.get("base_model") else None
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"parameters must be a mapping, got {parameters!r}")
    parameters = dict(parameters)
    global_keys, model_keys = {p.name for p in spec.shared}, {p.name for p in spec.per_model}
    for where, given in (("parameters", parameters), ("slices[0].parameters", slice_parameters)):
        bad = set(given) - global_keys - model_keys
        if bad:
            takes = ", ".join(sorted(global_keys | model_keys)) or "none"
            raise ConfigError(f"{where}: {method} takes no parameter(s) {', '.join(sorted(bad))} (it takes {takes})")
    for model in models:
        bad = set(model.parameters) - model_keys
        if bad:
            shared = bad & global_keys
            hint = (f" ({', '.join(sorted(shared))} applies to the whole merge: give it under the top-level parameters)"
                    if shared else "")
            raise ConfigError(f"model {model.path}: {method} takes no per-model parameter(s) "
                              f"{', '.join(sorted(bad))}{hint}")
    for dtype_key in ("dtype", "out_dtype"):
        if raw.get(dtype_key) is not None and raw[dtype_key] not in DTYPES:
            raise ConfigError(f"{dtype_key}: {raw[dtype_key]!r} is not one of {', '.join(sorted(DTYPES))}")
    config = MergeConfig(
        method=method,
        base=base,
        models=models,
        parameters=parameters,
        dtype=raw.get("dtype"),
        out_dtype=raw.get("out_dtype"),
        tokenizer_source=_tokenizer_source(raw, base, models, config_dir),
        raw=raw,
        tokenizer_union=raw.get("tokenizer_source") == "union",
        slice_parameters=slice_parameters,
    )
    _check_method_shape(config, spec)
    return config


def _parse_models(raw: dict, config_dir: Path | None) -> tuple[list[ModelSpec], dict]:
    slice_parameters: dict = {}
    if "slices" in raw:
        slices = raw["slices"]
        if not isinstance(slices, list) or len(slices) != 1:
            raise ConfigError("slices: exactly one slice covering all layers is supported "
                              "(layer stacking is not a merge)")
        sources = slices[0].get("sources") if isinstance(slices[0], dict) else None
        if not isinstance(sources, list) or not sources:
            raise ConfigError("slices[0].sources must be a non-empty list of {model, layer_range}")
        entries = sources
        slice_parameters = dict(slices[0].get("parameters") or {})
    elif "models" in raw:
        entries = raw["models"]
        if not isinstance(entries, list) or not entries:
            raise ConfigError("models must be a non-empty list")
    else:
        raise ConfigError("the config needs 'models' or 'slices'")
    models = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"model": entry}
        if not isinstance(entry, dict) or "model" not in entry:
            raise ConfigError(f"model entry {i} needs a 'model' key, got {entry!r}")
        layer_range = entry.get("layer_range")
        if layer_range is not None:
            pair = isinstance(layer_range, list) and len(layer_range) == 2
            if not (pair and all(isinstance(x, int) for x in layer_range)):
                raise ConfigError(f"model entry {i}: layer_range must be [start, end], got {layer_range!r}")
            layer_range = tuple(layer_range)
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ConfigError(f"model entry {i}: parameters must be a mapping, got {parameters!r}")
        path = resolve_model_path(entry["model"], config_dir, f"model entry {i}")
        models.append(ModelSpec(path, dict(parameters), layer_range))
    return models, slice_parameters


def _tokenizer_source(raw: dict, base: Path | None, models: list[ModelSpec], config_dir: Path | None) -> Path | None:
    """Where chat template, generation config and (without union) the tokenizer come from."""
    source = raw.get("tokenizer_source", "base")
    if source in (None, "base", "union"):
        return base or (models[0].path if models else None)
    return resolve_model_path(source, config_dir, "tokenizer_source")


def _check_method_shape(config: MergeConfig, method: methods.MergeMethod) -> None:
    """The models and parameters `method` needs, as its registry entry declares them."""
    name, listed = method.name, [m.path for m in config.models]
    if method.base is not None and config.base is None:
        raise ConfigError(f"{name} needs base_model ({method.base})")
    if method.base is None and config.base is not None and config.base not in listed:
        required = [p.name for p in method.per_model if p.required]
        needing = f" (needing a {' and a '.join(required)})" if required else ""
        with_its = " with its " + " and ".join(required) if required else ""
        raise ConfigError(f"{name}: base_model is not among the models; mergekit would add it as one more "
                          f"input{needing}, so list it under models{with_its}, or drop base_model")
    base_unlisted = method.base and config.base not in listed
    if method.models is not None and (len(config.parents) != method.models or base_unlisted):
        count = _NUMBER_WORDS.get(method.models, method.models)
        one_base = ", one of them base_model" if method.base else ""
        raise ConfigError(f"{name} merges exactly {count} models{one_base}; got {', '.join(map(str, config.parents))}")
    if method.base is not None and config.base not in listed:
        config.models.append(ModelSpec(config.base))  # as mergekit does: the base is an input whether listed or not
    contributors = config.contributors(method)
    if not contributors:
        raise ConfigError(f"{name} needs at least one model besides the base")
    shared_scopes = (config.parameters, config.slice_parameters)
    for parameter in method.shared:
        if parameter.required and not any(parameter.name in scope for scope in shared_scopes):
            raise ConfigError(f"{name} needs parameters.{parameter.name} "
                              "(a number, a gradient list, or filter entries)")
        for value in all_numbers([scope.get(parameter.name, []) for scope in shared_scopes]):
            if not parameter.accepts(value):
                raise ConfigError(f"parameters.{parameter.name}: {value} is outside {parameter.interval}")
    for model in contributors:
        scopes = (model.parameters, config.slice_parameters, config.parameters)
        for parameter in method.per_model:
            if parameter.required and not any(parameter.name in scope for scope in scopes):
                raise ConfigError(f"model {model.path}: {name} needs parameter '{parameter.name}' "
                                  "(mergekit has no default for it either)")
            for scope in scopes:
                for value in all_numbers(scope.get(parameter.name, [])):
                    if not parameter.accepts(value):
                        raise ConfigError(f"model {model.path}: {parameter.name} {value} "
                                          f"is outside {parameter.interval}")


def resolve_model_path(value: Any, config_dir: Path | None, what: str) -> Path:
    """A local folder for `value`: as given, or relative to the config's folder, or to cwd."""
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"{what}: expected a path, got {value!r}")
    text = str(value)
    if Path(text).is_absolute():
        candidates = [Path(text)]
    else:
        candidates = [c for c in ((config_dir / text) if config_dir else None, Path.cwd() / text) if c]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(
        f"{what}: {text!r} is not a local model folder (looked at {tried}); a name that is not a local path "
        "is a Hugging Face hub id, and this merger never downloads — fetch it first and give its folder"
    )
