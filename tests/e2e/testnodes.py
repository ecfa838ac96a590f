"""The custom-node module the protocol tests install into a server's `<base>/custom_nodes/`:
ComfyUI V1 node classes, loaded by the real custom-node loader and run by the real executor.

`Sleep` is an output node that waits and reports four progress steps (with a small preview image)
through `diffmesh.nodes.custom.ProgressBar`; `Fail` raises. `install(base)` writes this file.
"""

import time
from pathlib import Path

from diffmesh.nodes.custom import ProgressBar, check_interrupt


class Sleep:
    STEPS = 4

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {},
                "optional": {"seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0}),
                             "preview_size": ("INT", {"default": 8, "min": 8, "max": 1024})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "sleep"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    @classmethod
    def IS_CHANGED(cls, seconds=0.0, preview_size=8):
        return float("nan")                          # always run, never from the cache

    def sleep(self, unique_id, seconds=0.0, preview_size=8):
        from PIL import Image

        bar = ProgressBar(self.STEPS)
        for step in range(self.STEPS):
            deadline = time.monotonic() + seconds / self.STEPS
            while time.monotonic() < deadline:
                check_interrupt()
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            if preview_size > 8:   # noise: a JPEG as large as real previews (the slow-client test)
                preview = Image.effect_noise((preview_size, preview_size), 100).convert("RGB")
            else:
                preview = Image.new("RGB", (8, 8), (step * 60, 0, 0))
            bar.update_absolute(step + 1, self.STEPS, ("JPEG", preview, 512))
        return {"ui": {"text": [f"{unique_id} done"]}, "result": ()}


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "fail"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def fail(self):
        raise ValueError("this node always fails")


NODE_CLASS_MAPPINGS = {"Sleep": Sleep, "Fail": Fail}
NODE_DISPLAY_NAME_MAPPINGS = {"Sleep": "Sleep"}


def install(base: Path, name: str = "diffmesh_test_nodes") -> Path:
    """Copy this module into `base/custom_nodes/<name>.py`."""
    folder = Path(base) / "custom_nodes"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.py"
    target.write_text(Path(__file__).read_text())
    return target
