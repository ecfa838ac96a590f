"""ComfyUI's folder layout: model folders by key, input/output/temp/user folders, and
`extra_model_paths.yaml` (spec §8.1–8.2). One `Paths` object is built by the CLI and passed down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from diffmesh.errors import ConfigError, ModelError

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})

# (key, default folders under models/, extensions); order is GET /models order.
FOLDER_KEYS: tuple[tuple[str, tuple[str, ...], frozenset[str] | None], ...] = (
    ("checkpoints", ("checkpoints",), MODEL_EXTENSIONS),
    ("configs", ("configs",), frozenset({".yaml"})),
    ("loras", ("loras",), MODEL_EXTENSIONS),
    ("vae", ("vae",), MODEL_EXTENSIONS),
    ("text_encoders", ("text_encoders", "clip"), MODEL_EXTENSIONS),
    ("diffusion_models", ("unet", "diffusion_models"), MODEL_EXTENSIONS),
    ("clip_vision", ("clip_vision",), MODEL_EXTENSIONS),
    ("style_models", ("style_models",), MODEL_EXTENSIONS),
    ("embeddings", ("embeddings",), MODEL_EXTENSIONS),
    ("diffusers", ("diffusers",), frozenset()),
    ("vae_approx", ("vae_approx",), MODEL_EXTENSIONS),
    ("controlnet", ("controlnet", "t2i_adapter"), MODEL_EXTENSIONS),
    ("gligen", ("gligen",), MODEL_EXTENSIONS),
    ("upscale_models", ("upscale_models",), MODEL_EXTENSIONS),
    ("latent_upscale_models", ("latent_upscale_models",), MODEL_EXTENSIONS),
    ("custom_nodes", (), None),
    ("hypernetworks", ("hypernetworks",), MODEL_EXTENSIONS),
    ("photomaker", ("photomaker",), MODEL_EXTENSIONS),
    ("classifiers", ("classifiers",), frozenset({""})),
    ("model_patches", ("model_patches",), MODEL_EXTENSIONS),
    ("audio_encoders", ("audio_encoders",), MODEL_EXTENSIONS),
)
LEGACY_KEYS = {"clip": "text_encoders", "unet": "diffusion_models"}
# A file name may end in one of these to pick the folder it lives in (ComfyUI's annotated names).
ANNOTATIONS = {" [output]": "output", " [input]": "input", " [temp]": "temp"}


class UnsafePath(ValueError):
    """A requested path would leave its folder, or is not a plain relative name."""


def safe_join(root: Path, *parts: str) -> Path:
    """`root/parts…` resolved (symlinks too); UnsafePath if it is absolute, odd, or leaves `root`."""
    root = Path(root).resolve()
    rel: list[str] = []
    for part in parts:
        if part is None or part == "":
            continue
        if "\x00" in part or part.startswith(("/", "\\")) or (len(part) > 1 and part[1] == ":"):
            raise UnsafePath(f"path {part!r} must be relative to its folder")
        for piece in part.replace("\\", "/").split("/"):
            if piece in ("", "."):
                continue
            if piece == "..":
                raise UnsafePath(f"path {part!r} must not contain '..'")
            rel.append(piece)
    candidate = root.joinpath(*rel).resolve() if rel else root
    if candidate != root and root not in candidate.parents:
        raise UnsafePath(f"path {'/'.join(rel)!r} resolves outside its folder")
    return candidate


def safe_name(name: str) -> str:
    """A plain file name (no folders, no control characters)."""
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", "..") or any(ord(c) < 32 for c in base):
        raise UnsafePath(f"file name {name!r} is not a plain file name")
    return base


def split_annotation(name: str, default: str) -> tuple[str, str]:
    """("x.png [output]", d) -> ("x.png", "output"); a name without annotation keeps `default`."""
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, default


@dataclass
class Paths:
    """Where models, inputs, outputs, temp files and user data live."""

    base: Path
    models: dict[str, list[Path]] = field(default_factory=dict)
    extensions: dict[str, frozenset[str] | None] = field(default_factory=dict)
    input_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    user_dir: Path | None = None

    @classmethod
    def build(cls, base_directory: str | os.PathLike | None = None, *, models_dir: str | None = None,
              input_directory: str | None = None, output_directory: str | None = None,
              temp_directory: str | None = None, user_directory: str | None = None,
              extra_model_paths: list[str] | None = None) -> "Paths":
        base = Path(base_directory or os.getcwd()).expanduser().resolve()
        models_root = Path(models_dir).expanduser().resolve() if models_dir else base / "models"
        paths = cls(base=base)
        for key, folders, exts in FOLDER_KEYS:
            paths.extensions[key] = exts
            if key == "custom_nodes":
                paths.models[key] = [base / "custom_nodes"]
            else:
                paths.models[key] = [models_root / f for f in folders]
        paths.input_dir = Path(input_directory).resolve() if input_directory else base / "input"
        paths.output_dir = Path(output_directory).resolve() if output_directory else base / "output"
        paths.temp_dir = (Path(temp_directory).resolve() / "temp") if temp_directory else base / "temp"
        paths.user_dir = Path(user_directory).resolve() if user_directory else base / "user"
        for key in ("checkpoints", "clip", "vae", "diffusion_models", "loras"):
            paths.add(key, paths.output_dir / key)
        for config_file in extra_model_paths or []:
            paths.load_extra_config(config_file)
        return paths

    def add(self, key: str, folder: Path, first: bool = False) -> None:
        key = LEGACY_KEYS.get(key, key)
        folder = Path(folder)
        entries = self.models.setdefault(key, [])
        self.extensions.setdefault(key, MODEL_EXTENSIONS)
        if folder in entries:
            return
        if first:
            entries.insert(0, folder)
        else:
            entries.append(folder)

    def load_extra_config(self, config_file: str | os.PathLike) -> None:
        """Add the folders of an `extra_model_paths.yaml` (spec §8.2)."""
        import yaml

        # Absolute first (ComfyUI: os.path.abspath): folders resolve under the yaml's own folder,
        # never under <yaml dir>/<yaml dir>/ when the file was given by a relative path.
        config_path = Path(config_file).expanduser().absolute()
        if not config_path.is_file():
            raise ConfigError(f"extra model paths file not found: {config_path}", where="--extra-model-paths-config",
                              fix="pass the path of an existing YAML file")
        try:
            data = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse {config_path}: {exc}", where="--extra-model-paths-config") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{config_path} must map section names to folder settings", where="--extra-model-paths-config")
        for section, entries in data.items():
            if not isinstance(entries, dict):
                raise ConfigError(f"section {section!r} of {config_path} must be a mapping", where="--extra-model-paths-config")
            base = entries.get("base_path")
            first = bool(entries.get("is_default", False))
            root = Path(os.path.expandvars(os.path.expanduser(str(base)))) if base else config_path.parent
            if not root.is_absolute():
                root = config_path.parent / root
            for key, value in entries.items():
                if key in ("base_path", "is_default") or value is None:
                    continue
                for line in str(value).splitlines():
                    if line.strip():
                        self.add(key, (root / line.strip()).resolve(), first=first)

    def folder_keys(self) -> list[str]:
        return list(self.models)

    def list(self, key: str) -> list[str]:
        """Relative file names under every folder of `key`, sorted, de-duplicated (spec §8.1)."""
        key = LEGACY_KEYS.get(key, key)
        if key not in self.models:
            raise KeyError(key)
        exts = self.extensions.get(key)
        names: set[str] = set()
        for folder in self.models[key]:
            if not folder.is_dir():
                continue
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = [d for d in dirs if d != ".git"]
                for name in files:
                    if exts is not None and os.path.splitext(name)[1].lower() not in exts:
                        continue
                    names.add(os.path.relpath(os.path.join(root, name), folder))
        return sorted(names)

    def resolve(self, key: str, name: str) -> Path:
        """The file `name` of folder `key`; a clear error if it is missing or escapes its folder."""
        key = LEGACY_KEYS.get(key, key)
        for folder in self.models.get(key, []):
            # Checked lexically, not after resolving links: users symlink model files into their
            # folders, while a name with `..` or an absolute path must never leave the folder.
            candidate = Path(os.path.normpath(folder / name))
            if os.path.isabs(name) or not candidate.is_relative_to(Path(os.path.normpath(folder))):
                continue
            if candidate.is_file():
                return candidate
        raise ModelError(f"Model in folder '{key}' with filename '{name}' not found.", where=key,
                         fix=f"put the file in one of: {', '.join(str(f) for f in self.models.get(key, []))}")

    def type_dir(self, kind: str) -> Path:
        """The folder of a file type: "input", "output" or "temp" (KeyError for anything else)."""
        return Path({"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}[kind])

    def ensure_dirs(self) -> None:
        for folder in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            folder.mkdir(parents=True, exist_ok=True)
