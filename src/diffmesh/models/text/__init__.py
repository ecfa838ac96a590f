"""Text encoders of the diffusion-transformer families: T5-XXL (Flux.1), Qwen3-4B (Z-Image),
Qwen2.5-VL-7B's language model (Qwen-Image), with ComfyUI's tokenization, templates, layers,
masks and prompt weighting.

files.py       which encoder a file holds (key suffixes), and under which prefix
tokenizers.py  shipped vocabularies through transformers' tokenizers; ComfyUI's token rules
language.py    transformers' T5EncoderModel / Qwen3Model / Qwen2Model from shipped configs
encoders.py    FluxTextEncoder, LLMTextEncoder: prompt -> CONDITIONING
load.py        CLIP types, file checks for the loader nodes, the `clip` builder for these handles
"""
