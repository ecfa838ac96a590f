"""`folder_paths` over the runtime's `Paths`: model folders by key, input/output/temp/user folders,
annotated names ("x.png [output]"), `get_save_image_path`. Folders a pack adds (with
`add_model_folder_path` or by assigning `folder_names_and_paths[key]`) go into `Paths`, so
`/models/<key>` lists them too. Lists returned are copies: changing them changes nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Iterator

from diffmesh.compat.modules import new_module
from diffmesh.config.paths import ANNOTATIONS, LEGACY_KEYS, MODEL_EXTENSIONS


class FolderTable(MutableMapping):
    """`folder_names_and_paths`: key -> ([folders], extensions), read from and written to `Paths`."""

    def __init__(self, paths):
        self._paths = paths

    def __getitem__(self, key: str):
        key = LEGACY_KEYS.get(key, key)
        exts = self._paths.extensions.get(key)
        return [str(f) for f in self._paths.models[key]], set(exts) if exts else set()

    def __setitem__(self, key: str, value) -> None:
        folders, exts = value
        key = LEGACY_KEYS.get(key, key)
        self._paths.models[key] = [Path(f) for f in folders]
        self._paths.extensions[key] = frozenset(exts) if exts else None   # ComfyUI: no extensions = any file

    def __delitem__(self, key: str) -> None:
        del self._paths.models[key]
        self._paths.extensions.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._paths.models))

    def __len__(self) -> int:
        return len(self._paths.models)


def _annotated(paths, name: str) -> tuple[str, str | None]:
    for suffix, kind in ANNOTATIONS.items():
        if name.endswith(suffix.strip()):
            return name[: -len(suffix.strip())].rstrip(), str(paths.type_dir(kind))
    return name, None


def _within(directory: str, target: str) -> bool:
    directory, target = os.path.abspath(directory), os.path.abspath(target)
    return os.path.commonpath([directory, target]) == directory


def _save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0, image_height: int = 0):
    """(full folder, file name, next counter, subfolder, prefix) as ComfyUI's SaveImage names files."""
    if "%" in filename_prefix:
        now = time.localtime()
        for key, value in (("%width%", image_width), ("%height%", image_height), ("%year%", now.tm_year),
                           ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                           ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                           ("%second%", f"{now.tm_sec:02d}")):
            filename_prefix = filename_prefix.replace(key, str(value))
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    filename = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if not _within(output_dir, folder):
        raise ValueError(f"Saving image outside the output folder is not allowed: {filename_prefix!r}")
    os.makedirs(folder, exist_ok=True)
    counters = [0]
    for entry in os.listdir(folder):
        head, _, rest = entry.partition(filename + "_")
        if head == "" and rest and os.path.normcase(entry[:len(filename)]) == os.path.normcase(filename):
            digits = rest.split(".")[0].split("_")[0]
            counters.append(int(digits) if digits.isdigit() else 0)
    return folder, filename, max(counters) + 1, subfolder, filename_prefix


def build(layer):
    paths = layer.paths
    module = new_module("folder_paths", "ComfyUI's folder_paths over diffmesh's Paths.")
    table = FolderTable(paths)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        key = LEGACY_KEYS.get(folder_name, folder_name)
        if key not in paths.models:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")    # no way out of the folder
        for folder in paths.models[key]:
            candidate = os.path.join(folder, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    def get_full_path_or_raise(folder_name: str, filename: str) -> str:
        found = get_full_path(folder_name, filename)
        if found is None:
            raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
        return found

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        key = LEGACY_KEYS.get(folder_name, folder_name)
        new = key not in paths.models
        folder = Path(full_folder_path)
        if is_default and folder in paths.models.get(key, []):
            paths.models[key].remove(folder)
        paths.add(key, folder, first=is_default)
        if new:
            paths.extensions[key] = None

    def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
        name, base = _annotated(paths, name)
        base = base or default_dir or str(paths.input_dir)
        full = os.path.abspath(os.path.join(base, name))
        if not _within(base, full):
            raise ValueError(f"Invalid file path: {name!r}")
        return full

    def exists_annotated_filepath(name: str) -> bool:
        name, base = _annotated(paths, name)
        base = base or str(paths.input_dir)
        full = os.path.abspath(os.path.join(base, name))
        return _within(base, full) and os.path.exists(full)

    def get_directory_by_type(type_name: str) -> str | None:
        return str(paths.type_dir(type_name)) if type_name in ("input", "output", "temp") else None

    names: dict[str, Any] = {
        "supported_pt_extensions": set(MODEL_EXTENSIONS),
        "base_path": str(paths.base),
        "models_dir": str(layer.models_dir),
        "output_directory": str(paths.output_dir),
        "input_directory": str(paths.input_dir),
        "temp_directory": str(paths.temp_dir),
        "user_directory": str(paths.user_dir),
        "folder_names_and_paths": table,
        "get_output_directory": lambda: str(paths.output_dir),
        "get_input_directory": lambda: str(paths.input_dir),
        "get_temp_directory": lambda: str(paths.temp_dir),
        "get_user_directory": lambda: str(paths.user_dir),
        "get_directory_by_type": get_directory_by_type,
        "get_filename_list": lambda folder_name: list(paths.list(folder_name)),
        "get_folder_paths": lambda folder_name: list(table[folder_name][0]),
        "get_full_path": get_full_path,
        "get_full_path_or_raise": get_full_path_or_raise,
        "add_model_folder_path": add_model_folder_path,
        "annotated_filepath": lambda name: _annotated(paths, name),
        "get_annotated_filepath": get_annotated_filepath,
        "exists_annotated_filepath": exists_annotated_filepath,
        "get_save_image_path": _save_image_path,
        "filter_files_extensions": lambda files, extensions: sorted(
            f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions),
    }
    for key, value in names.items():
        setattr(module, key, value)
    return module
