"""Imports a ComfyUI model loader that diffmesh's compatibility layer does not offer."""

from comfy.sd import load_checkpoint_guess_config  # noqa: F401


class NeverLoaded:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "run"

    def run(self):
        return ()


NODE_CLASS_MAPPINGS = {"NeverLoaded": NeverLoaded}
