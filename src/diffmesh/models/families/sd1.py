"""SD1.x: CLIP ViT-L/14 text encoder (quick-GELU), last layer, end-token padding; eps prediction;
UNet attention with 8 heads at every level (head dim = channels / 8)."""

from diffmesh.models.families.common import FamilySpec, TextEncoderSpec

END_TOKEN = 49407

CLIP_L = TextEncoderSpec(
    name="clip_l", prefix="cond_stage_model.transformer.", layout="hf", activation="quick_gelu",
    layer=-1, layer_norm_hidden=True, pad_token=END_TOKEN, lora_names=("lora_te", "text_encoder"),
)

FAMILY = FamilySpec(name="sd1", prediction_type="eps", text_encoders=(CLIP_L,), pooled_from=0, fixed_heads=8)
