"""SD2.x: OpenCLIP ViT-H/14 text encoder (GELU), penultimate layer with the final layer norm,
padded with token 0 (not the end token), as ComfyUI encodes it; UNet heads of dim 64.
768-px SD2 models predict v; the 512-px base and inpainting models predict eps (see detect.py)."""

from diffmesh.models.families.common import FamilySpec, TextEncoderSpec

CLIP_H = TextEncoderSpec(
    name="clip_h", prefix="cond_stage_model.model.", layout="open_clip", activation="gelu",
    layer=-2, layer_norm_hidden=True, pad_token=0, lora_names=("lora_te", "text_encoder"),
)

FAMILY = FamilySpec(name="sd2", prediction_type="eps", text_encoders=(CLIP_H,), pooled_from=0, fixed_heads=None)
FAMILY_V = FamilySpec(name="sd2v", prediction_type="v", text_encoders=(CLIP_H,), pooled_from=0, fixed_heads=None)
# SD2.1 unCLIP (v): the UNet's class embedding takes `models.unclip.unclip_adm` of the unCLIPConditioning entries
FAMILY_UNCLIP = FamilySpec(name="sd2unclip", prediction_type="v", text_encoders=(CLIP_H,), pooled_from=0,
                           fixed_heads=None, extra={"unclip": True})
