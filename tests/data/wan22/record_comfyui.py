"""Record ComfyUI's numbers for the Wan 2.2 tests (run once, from a ComfyUI checkout; not run by CI).

    python tests/data/wan22/record_comfyui.py /path/to/ComfyUI  ->  tests/data/wan22/comfyui_wan22.safetensors

Inputs are diffmesh's tiny random test models (`make-test-model` wan22vae / wan21 tiny-ti2v, seed 0)
and seeded tensors; ComfyUI's own modules compute:
  - vae_decoded / vae_encoded: comfy.ldm.wan.vae2_2.WanVAE (the Wan 2.2 VAE at widths 8 / 12) decoding
    `vae_z` (1, 48, 3, 2, 3) and encoding `vae_x` (1, 3, 9, 32, 48) (mean of the posterior);
  - ti2v_out: comfy.ldm.wan.model.WanModel with the tiny TI2V weights (in/out 48) on `ti2v_x`,
    context `ti2v_ctx`, timestep `ti2v_t` (B,) turned into per-frame timesteps by
    model_base.WAN22.process_timestep's formula with the mask `ti2v_mask` (first latent frame 0).
  - wan22_mean / wan22_std / wan22_rgb: comfy.latent_formats.Wan22; metadata vae_keys: the key names
    and shapes of ComfyUI's Wan 2.2 VAE module at widths 8 / 12.
Recorded with ComfyUI 0.3.64 (/work/comfyui-src), CPU, fp32.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "src"))
sys.path.insert(1, sys.argv[1] if len(sys.argv) > 1 else "/work/comfyui-src")

import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.model_management  # noqa: E402,F401
import comfy.ops  # noqa: E402
from comfy import latent_formats  # noqa: E402
from comfy.ldm.wan import model as wan_model, vae2_2  # noqa: E402

from diffmesh.models import testmodels_dit  # noqa: E402


def main() -> None:
    out = {}
    g = torch.Generator().manual_seed(0)
    vae = vae2_2.WanVAE(dim=8, dec_dim=12, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                        temperal_downsample=[False, True, True]).eval()
    vae.load_state_dict(testmodels_dit.state_dict("wan22vae", "tiny"))          # strict: every key, every shape
    vae_keys = {k: list(v.shape) for k, v in vae.state_dict().items()}
    out["vae_z"] = torch.randn(1, 48, 3, 2, 3, generator=g)
    out["vae_x"] = torch.rand(1, 3, 9, 32, 48, generator=g) * 2 - 1
    with torch.no_grad():
        out["vae_decoded"] = vae.decode(out["vae_z"]).clamp(-1, 1)
        out["vae_encoded"] = vae.encode(out["vae_x"])

    c = testmodels_dit.WAN21["tiny-ti2v"]
    net = wan_model.WanModel(model_type="t2v", in_dim=48, out_dim=48, dim=c["dim"], ffn_dim=c["ffn"],
                             text_dim=c["text_dim"], num_heads=c["dim"] // 128, num_layers=c["layers"],
                             operations=comfy.ops.disable_weight_init).eval()
    net.load_state_dict(testmodels_dit.state_dict("wan21", "tiny-ti2v"))
    out["ti2v_x"] = torch.randn(2, 48, 3, 4, 6, generator=g)
    out["ti2v_ctx"] = torch.randn(2, 7, c["text_dim"], generator=g)
    out["ti2v_t"] = torch.tensor([900.0, 412.5])
    mask = torch.ones(2, 48, 3, 4, 6)
    mask[:, :, 0] = 0.0
    out["ti2v_mask"] = mask
    # model_base.WAN22.process_timestep (model_base imports torchvision, absent here): mean of the mask over
    # (channel, row, col) per frame times t
    t = (mask.mean(dim=(1, 3, 4), keepdim=True) * out["ti2v_t"].view(2, 1, 1, 1, 1)).reshape(2, -1)
    out["ti2v_frame_t"] = t
    with torch.no_grad():
        out["ti2v_out"] = net(out["ti2v_x"], t, out["ti2v_ctx"])
        out["ti2v_out_plain"] = net(out["ti2v_x"], out["ti2v_t"], out["ti2v_ctx"])
    fmt = latent_formats.Wan22()
    out["wan22_mean"], out["wan22_std"] = fmt.latents_mean.flatten(), fmt.latents_std.flatten()
    out["wan22_rgb"] = torch.tensor(fmt.latent_rgb_factors)
    save_file({k: v.contiguous().float() for k, v in out.items()}, str(HERE / "comfyui_wan22.safetensors"),
              metadata={"comfyui": "0.3.64", "device": "cpu", "dtype": "fp32",
                        "vae_keys": json.dumps(vae_keys, sort_keys=True)})


if __name__ == "__main__":
    main()
