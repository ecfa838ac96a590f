"""A pack in ComfyUI's V3 node schema (`comfy_api.latest`)."""

import torch
from comfy_api.latest import ComfyExtension, io, ui


class CompatSolidImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="CompatSolidImage",
            display_name="Solid image (V3)",
            category="compat",
            description="An image of one colour.",
            inputs=[
                io.Int.Input("width", default=48, min=8, max=4096, step=8),
                io.Int.Input("height", default=40, min=8, max=4096, step=8),
                io.Float.Input("value", default=0.5, min=0.0, max=1.0, display_mode=io.NumberDisplay.slider),
                io.Combo.Input("channel", options=["red", "green", "blue"], default="green"),
                io.String.Input("label", multiline=False, default="solid", optional=True),
            ],
            outputs=[io.Image.Output(display_name="image"), io.String.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, width, height):
        if width * height > 4096 * 1024:
            return "the image is too large"
        return True

    @classmethod
    def execute(cls, width, height, value, channel, label="solid") -> io.NodeOutput:
        image = torch.zeros(1, height, width, 3)
        image[..., ["red", "green", "blue"].index(channel)] = value
        text = f"{label} {width}x{height} from node {cls.hidden.unique_id}"
        return io.NodeOutput(image, text, ui=ui.PreviewText(text))


class CompatExtension(ComfyExtension):
    async def get_node_list(self):
        return [CompatSolidImage]


async def comfy_entrypoint():
    return CompatExtension()
