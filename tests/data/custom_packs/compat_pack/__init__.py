"""A V1 pack that uses ComfyUI's modules the way published packs use them."""

import os
import time

import torch
from aiohttp import web

import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
import nodes
from comfy.comfy_types import IO, ComfyNodeABC, InputTypeDict
from server import PromptServer

WEB_DIRECTORY = "./js"

# the pack's own model folder, as IPAdapter-style packs register theirs
folder_paths.add_model_folder_path("compat_models", os.path.join(folder_paths.models_dir, "compat_models"))


@PromptServer.instance.routes.get("/compat_pack/echo/{name}")
async def echo(request):
    return web.json_response({"name": request.match_info["name"], "x": request.query.get("x"),
                              "models": folder_paths.get_filename_list("compat_models")})


@PromptServer.instance.routes.post("/compat_pack/store")
async def store(request):
    body = await request.json()
    if "value" not in body:
        raise web.HTTPBadRequest(text="value is missing")
    return web.json_response({"stored": body["value"]}, status=201)


class CompatReadModel(ComfyNodeABC):
    @classmethod
    def INPUT_TYPES(cls) -> InputTypeDict:
        return {"required": {"model_name": (folder_paths.get_filename_list("compat_models"),),
                             "sampler": (comfy.samplers.KSampler.SAMPLERS,),
                             "scheduler": (comfy.samplers.KSampler.SCHEDULERS,)},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = (IO.STRING,)
    FUNCTION = "read"
    OUTPUT_NODE = True
    CATEGORY = "compat"

    def read(self, model_name, sampler, scheduler, unique_id):
        path = folder_paths.get_full_path_or_raise("compat_models", model_name)
        with open(path) as handle:
            text = handle.read().strip()
        pbar = comfy.utils.ProgressBar(3)
        for _ in range(3):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update(1)
        PromptServer.instance.send_sync("compat.hello", {"node": unique_id, "text": text, "sampler": sampler},
                                        PromptServer.instance.client_id)
        summary = f"{text}|{sampler}|{scheduler}"
        return {"ui": {"text": [summary]}, "result": (summary,)}


class CompatResize:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "width": ("INT", {"default": 64, "min": 1, "max": nodes.MAX_RESOLUTION}),
                             "height": ("INT", {"default": 64, "min": 1, "max": nodes.MAX_RESOLUTION})}}

    RETURN_TYPES = ("IMAGE", "LATENT")
    FUNCTION = "resize"
    CATEGORY = "compat"

    def resize(self, image, width, height):
        samples = image.movedim(-1, 1)                          # (B, C, H, W)
        resized = comfy.utils.common_upscale(samples, width, height, "bilinear", "disabled").movedim(1, -1)
        latent = nodes.EmptyLatentImage().generate(width, height, image.shape[0])[0]   # a core node, called
        return (resized.to(comfy.model_management.intermediate_device()), latent)


class CompatWaitForInterrupt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 20.0})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "wait"
    OUTPUT_NODE = True
    CATEGORY = "compat"

    def wait(self, seconds):
        steps = int(seconds / 0.05)
        pbar = comfy.utils.ProgressBar(steps)
        for step in range(steps):
            if comfy.model_management.processing_interrupted():
                raise comfy.model_management.InterruptProcessingException()
            pbar.update_absolute(step + 1, steps)
            time.sleep(0.05)
        return {"ui": {"text": ["not interrupted"]}, "result": ("not interrupted",)}


class CompatDevice:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "device"
    OUTPUT_NODE = True
    CATEGORY = "compat"

    def device(self):
        tensor = torch.zeros(1, device=comfy.model_management.get_torch_device())
        comfy.model_management.soft_empty_cache()
        return {"ui": {"text": [str(tensor.device)]}, "result": (str(tensor.device),)}


NODE_CLASS_MAPPINGS = {"CompatReadModel": CompatReadModel, "CompatResize": CompatResize,
                       "CompatWaitForInterrupt": CompatWaitForInterrupt, "CompatDevice": CompatDevice}
NODE_DISPLAY_NAME_MAPPINGS = {"CompatReadModel": "Read a compat model"}
